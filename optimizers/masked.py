"""Optimizers that prune while they step: the base optimizer plus a `lib.pruning.Pruner`.

`PruningMixin` puts the shared pruning machinery into `step()` and `state_dict()`, so the
training loop sees one ordinary `torch.optim.Optimizer` (GradScaler, LR schedulers and
checkpoints work unchanged). `MaskedSGD`, `MaskedAdam`, `MaskedAdamW` and `MaskedAdamWSPAM` carry
magnitude or movement pruning; `AdamWPrune` uses the same mixin with its state-based scores.
"""

from __future__ import annotations

from typing import Any

import torch

from lib.pruning import Pruner
from optimizers.spam import AdamWSPAM


class PruningMixin:
    """Mix in before a torch optimizer class: `class MaskedAdam(PruningMixin, torch.optim.Adam)`.

    One `step()`: accumulate scores and zero pruned gradients, take the base step, then on the
    schedule update the masks and zero pruned weights and all their optimizer state.
    `pruner=None` makes the class behave exactly like its base.
    """

    def __init__(self, *args: Any, pruner: Pruner | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A fused torch Adam asks GradScaler to hand it still-scaled gradients and to skip
        # inf steps inside the kernel; the pruner must see unscaled gradients and count only
        # steps taken, so the scaler keeps its ordinary unscale-check-step path here.
        self._step_supports_amp_scaling = False
        self._attach_pruner(pruner)

    def _attach_pruner(self, pruner: Pruner | None) -> None:
        if pruner is not None:
            held = {id(p) for group in self.param_groups for p in group["params"]}
            if any(id(p) not in held for p in pruner.params):
                raise ValueError("prunable: contains parameters this optimizer does not update")
        self.pruner = pruner

    def _dense_step(self) -> None:
        super().step()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.pruner is not None:
            self.pruner.before_step()
        self._dense_step()
        if self.pruner is not None:
            self.pruner.after_step(self.state)
        return loss

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        if self.pruner is not None:
            state_dict["pruning"] = self.pruner.state_dict()
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        pruning = state_dict.pop("pruning", None)
        if self.pruner is not None and pruning is None:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: no 'pruning' entry; the checkpoint was "
                "saved by an optimizer that does not prune"
            )
        super().load_state_dict(state_dict)
        if self.pruner is not None:
            self.pruner.load_state_dict(pruning)


_WITH_PRUNING: dict[type, type] = {}


def with_pruning(optimizer_class: type) -> type:
    """`optimizer_class` with PruningMixin in front (the same class for the same input), so
    that any torch optimizer, a plug-in's included, prunes inside its own `step()`."""
    if issubclass(optimizer_class, PruningMixin):
        return optimizer_class
    if optimizer_class not in _WITH_PRUNING:
        _WITH_PRUNING[optimizer_class] = type(
            f"Masked{optimizer_class.__name__}",
            (PruningMixin, optimizer_class),
            {"__doc__": f"{optimizer_class.__name__} with pruning (optimizers.masked)."},
        )
    return _WITH_PRUNING[optimizer_class]


class MaskedSGD(PruningMixin, torch.optim.SGD):
    """torch.optim.SGD with magnitude or movement pruning."""


class MaskedAdam(PruningMixin, torch.optim.Adam):
    """torch.optim.Adam with magnitude or movement pruning."""


class MaskedAdamW(PruningMixin, torch.optim.AdamW):
    """torch.optim.AdamW (also AMSGrad, i.e. adamwadv) with magnitude or movement pruning."""


class MaskedAdamWSPAM(PruningMixin, AdamWSPAM):
    """AdamWSPAM with magnitude or movement pruning."""
