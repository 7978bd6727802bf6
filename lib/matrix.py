"""Plan a test matrix: Config -> list of RunSpec. A pure function; the same .config always
plans the same runs with the same ids, in the same order.

Axes: model x optimizer x pruning method x sparsity x seed, with the validity rules:
- state pruning only with AdamWPrune; magnitude and movement with every other optimizer;
- the unpruned baseline appears once per optimizer (and seed), not once per sparsity.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lib.config import Config, ConfigError
from lib.spec import RunSpec


def methods_for(optimizer: str, selected: tuple[str, ...]) -> tuple[str, ...]:
    """The selected pruning methods that are valid for `optimizer`, in menu order."""
    valid = ("none", "state") if optimizer == "adamwprune" else ("none", "magnitude", "movement")
    return tuple(m for m in selected if m in valid)


def plan(config: Config) -> list[RunSpec]:
    matrix_dir = Path(config.matrix.results_dir) / config.matrix.name
    specs: list[RunSpec] = []
    for opt in config.optimizers:
        train = config.train_for(opt)
        for method in methods_for(opt.name, config.pruning_methods):
            levels = (0.0,) if method == "none" else config.sparsities
            for sparsity in levels:
                pruning = replace(config.pruning, method=method, sparsity=sparsity)
                for seed in config.matrix.seeds:
                    spec = RunSpec(
                        matrix=config.matrix.name,
                        model=config.model,
                        data=config.data,
                        train=train,
                        optimizer=opt,
                        pruning=pruning,
                        seed=seed,
                        tracking=config.tracking,
                    )
                    specs.append(replace(spec, out_dir=str(matrix_dir / spec.run_id)))
    if not specs:
        raise ConfigError(
            "the configuration plans no runs: the selected pruning methods "
            f"({', '.join(config.pruning_methods)}) are not valid for the selected optimizers "
            f"({', '.join(o.label for o in config.optimizers)}); state pruning needs AdamWPrune, "
            "magnitude and movement need another optimizer"
        )
    ids = [s.run_id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:  # a bug in id derivation would merge two experiments' results
        raise ConfigError(f"two planned runs share the id {duplicates[0]}")
    return specs
