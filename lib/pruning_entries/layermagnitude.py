"""Layer-wise magnitude pruning: score |w| with every prunable layer pruned to the target on
its own (lib/pruning.py's Pruner, scope "layerwise"), beside global magnitude pruning in the
same matrix: ShrinkBench's second baseline (Blalock et al. 2020)."""

from pathlib import Path

from lib.catalogue import PruningEntry

ENTRY = PruningEntry(
    name="layermagnitude",
    display="layer-wise magnitude",
    kconfig=Path(__file__).resolve().with_name("Kconfig.layermagnitude"),
    score="magnitude",
    scope="layerwise",
)
