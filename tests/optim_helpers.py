"""Helpers shared by the optimizer and pruning tests: tiny data, a plain training loop, and
the two parameter groups built by hand (independently of optimizers.parameter_groups)."""

from __future__ import annotations

import torch
from torch import nn


def batches(count: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(4, 3, 8, 8, generator=generator),
            torch.randint(0, 10, (4,), generator=generator),
        )
        for _ in range(count)
    ]


def train(model, optimizer, data, after_step=None):
    for x, y in data:
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()


def groups(model, weight_decay):
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
