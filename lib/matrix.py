"""Plan a test matrix: Config -> list of RunSpec. A pure function; the same .config always
plans the same runs with the same ids, in the same order.

Axes: model x optimizer x pruning method x sparsity x seed, with the validity rules of the
method catalogue (lib/catalogue.py):
- a pruning method an optimizer implements itself (its `owner`) only with that optimizer;
- the generic methods with every optimizer that takes pruning;
- the unpruned baseline appears once per optimizer (and seed), not once per sparsity.

With the tuning axis on (CONFIG_TUNING, lib/tuning.py), the seed axis becomes studies x
trials: each (optimizer, method, sparsity) is planned as the same number of trials, each an
ordinary run with the hyperparameters the search drew for it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lib import catalogue, tuning
from lib.config import Config, ConfigError
from lib.spec import RunSpec


def combines(optimizer: catalogue.OptimizerEntry, method: catalogue.PruningEntry) -> bool:
    """Whether `method` can prune `optimizer`'s runs: the one rule of the catalogue."""
    if method.owner is not None:
        return method.owner == optimizer.name
    return optimizer.takes_pruning


def methods_for(optimizer: str, selected: tuple[str, ...]) -> tuple[str, ...]:
    """The selected pruning methods that are valid for `optimizer`, in menu order."""
    cat = catalogue.catalogue()
    entry = cat.optimizer(optimizer)
    return tuple(m for m in selected if m == "none" or combines(entry, cat.pruning_method(m)))


def _validity_text() -> str:
    """What the catalogue's combination rules are, in words: `state pruning needs AdamWPrune,
    magnitude and movement need another optimizer`."""
    cat = catalogue.catalogue()
    owned = [
        f"{m.name} pruning needs {cat.optimizers[m.owner].display}"
        for m in cat.pruning.values()
        if m.owner in cat.optimizers
    ]
    generic = [m.name for m in cat.pruning.values() if m.owner is None]
    if generic:
        verb = "needs" if len(generic) == 1 else "need"
        owned.append(f"{' and '.join(generic)} {verb} another optimizer")
    return ", ".join(owned)


def plan(config: Config) -> list[RunSpec]:
    matrix_dir = Path(config.matrix.results_dir) / config.matrix.name
    specs: list[RunSpec] = []
    for opt in config.optimizers:
        train = config.train_for(opt)
        for method in methods_for(opt.name, config.pruning_methods):
            levels = (0.0,) if method == "none" else config.sparsities
            for sparsity in levels:
                pruning = config.pruning_for(method, sparsity)
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
                    runs = tuning.trial_specs(config, spec, opt) if config.tuning else [spec]
                    specs += [replace(s, out_dir=str(matrix_dir / s.run_id)) for s in runs]
    if not specs:
        raise ConfigError(
            "the configuration plans no runs: the selected pruning methods "
            f"({', '.join(config.pruning_methods)}) are not valid for the selected optimizers "
            f"({', '.join(o.label for o in config.optimizers)}); {_validity_text()}"
        )
    ids = [s.run_id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:  # a bug in id derivation would merge two experiments' results
        raise ConfigError(f"two planned runs share the id {duplicates[0]}")
    return specs
