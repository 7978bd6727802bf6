"""Optimizers with built-in pruning, and the registry that builds them from a RunSpec."""

from optimizers.adamwprune import AdamWPrune
from optimizers.masked import MaskedAdam, MaskedAdamW, MaskedAdamWSPAM, MaskedSGD, PruningMixin
from optimizers.registry import build_optimizer, check_combination, parameter_groups
from optimizers.spam import AdamWSPAM

__all__ = [
    "AdamWPrune",
    "AdamWSPAM",
    "MaskedAdam",
    "MaskedAdamW",
    "MaskedAdamWSPAM",
    "MaskedSGD",
    "PruningMixin",
    "build_optimizer",
    "check_combination",
    "parameter_groups",
]
