"""Lion as a prunebench optimizer plug-in: the optimizer, its typed settings, its entry.

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2), per
parameter with gradient g, momentum m (initially 0), learning rate lr, weight decay wd:

    c = beta1 * m + (1 - beta1) * g
    w = w - lr * (sign(c) + wd * w)
    m = beta2 * m + (1 - beta2) * g
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lib.catalogue import BuildContext, OptimizerEntry, setting


class Lion(torch.optim.Optimizer):
    """Lion on any parameters; `weight_decay` per parameter group."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"lr={lr}: must be > 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas={betas}: each must be in [0, 1)")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay}: must be >= 0")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                momentum = state["exp_avg"]
                direction = torch.lerp(p.grad, momentum, beta1).sign_()
                if decay:
                    p.mul_(1.0 - lr * decay)
                p.add_(direction, alpha=-lr)
                momentum.lerp_(p.grad, 1.0 - beta2)
        return loss


@dataclass(frozen=True)
class LionSettings:
    """Read from CONFIG_LION_<FIELD> (see Kconfig beside this file), range-checked by
    prunebench's config loader."""

    lr: float = setting(1e-4, low=0, low_open=True)
    beta1: float = setting(0.9, low=0, high=1, high_open=True)
    beta2: float = setting(0.99, low=0, high=1, high_open=True)
    weight_decay: float = setting(0.01, low=0)


def build(ctx: BuildContext) -> torch.optim.Optimizer:
    """Lion with the run's pruning (ctx.make), weight decay on weights only (ctx.groups)."""
    s = ctx.settings
    return ctx.make(Lion, ctx.groups(s.weight_decay), lr=s.lr, betas=(s.beta1, s.beta2))


ENTRY = OptimizerEntry(
    name="lion",
    display="Lion",
    kconfig=Path(__file__).resolve().with_name("Kconfig"),
    settings=LionSettings,
    build=build,
)
