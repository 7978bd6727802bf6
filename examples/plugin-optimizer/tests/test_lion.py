"""Lion against its published update rule, step by step, in plain Python arithmetic."""

from __future__ import annotations

import math

import torch
from prunebench_lion import ENTRY, Lion, LionSettings


def reference(w, m, grads, lr, beta1, beta2, decay):
    """Chen et al. 2023, Algorithm 2, one scalar at a time."""
    for g in grads:
        c = beta1 * m + (1 - beta1) * g
        w = w - lr * (math.copysign(1.0, c) * (c != 0) + decay * w)
        m = beta2 * m + (1 - beta2) * g
    return w, m


def test_three_steps_match_the_reference_update_rule():
    lr, beta1, beta2, decay = 0.01, 0.9, 0.99, 0.1
    start = [0.5, -1.0, 2.0, 0.0]
    grads = [[0.3, -0.2, 0.0, 1e-3], [-0.5, -0.1, 0.4, -2e-3], [0.01, 0.3, -0.2, 0.0]]
    w = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = Lion([w], lr=lr, betas=(beta1, beta2), weight_decay=decay)
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    for i, w0 in enumerate(start):
        want_w, want_m = reference(w0, 0.0, [g[i] for g in grads], lr, beta1, beta2, decay)
        assert math.isclose(w[i].item(), want_w, rel_tol=0, abs_tol=1e-12)
        assert math.isclose(opt.state[w]["exp_avg"][i].item(), want_m, rel_tol=0, abs_tol=1e-12)


def test_every_coordinate_moves_by_exactly_lr_without_decay():
    w = torch.zeros(5, requires_grad=True)
    opt = Lion([w], lr=0.125, weight_decay=0.0)
    w.grad = torch.tensor([3.0, -1e-6, 0.5, -7.0, 1e-9])
    opt.step()
    assert w.detach().tolist() == [-0.125, 0.125, -0.125, 0.125, -0.125]


def test_the_entry_names_its_fragment_and_settings():
    assert ENTRY.name == "lion" and ENTRY.kconfig.is_file()
    assert LionSettings().lr == 1e-4
    assert "config OPTIMIZER_LION" in ENTRY.kconfig.read_text()
