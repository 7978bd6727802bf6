"""Random pruning: ShrinkBench's control (Blalock et al. 2020). Every mask update draws a
fresh uniform score for each kept weight, so the weights pruned at each step are a uniform
random subset of the kept ones; lib/pruning.py's Pruner does the rest (schedule, exact count,
monotone masks). The draw comes from torch's generator of the weight's device, which the run's
seed sets and every checkpoint saves, so a resumed run prunes as an uninterrupted one."""

from pathlib import Path

from lib.catalogue import PruningEntry


def random_score(weight, state):
    import torch  # here: reading the catalogue must not import torch

    return torch.rand(weight.shape, device=weight.device)


ENTRY = PruningEntry(
    name="random",
    display="random",
    kconfig=Path(__file__).resolve().with_name("Kconfig.random"),
    score=random_score,
)
