"""Optimizers with built-in pruning, and the registry that builds them from a RunSpec.

Imported lazily (PEP 562): `lib.catalogue` reads the entries under `optimizers/entries/`
without importing torch.
"""

import importlib

_EXPORTS = {
    "AdamWPrune": "optimizers.adamwprune",
    "AdamWSPAM": "optimizers.spam",
    "MaskedAdam": "optimizers.masked",
    "MaskedAdamW": "optimizers.masked",
    "MaskedAdamWSPAM": "optimizers.masked",
    "MaskedSGD": "optimizers.masked",
    "PruningMixin": "optimizers.masked",
    "build_optimizer": "optimizers.registry",
    "check_combination": "optimizers.registry",
    "parameter_groups": "optimizers.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'optimizers' has no attribute {name!r}")
