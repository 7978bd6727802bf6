"""AdamWSPAM against the SPAM specification (ALGORITHMS.md section 5), bit for bit and by hand."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch

from optimizers import AdamWSPAM


def reference_spam(params, grads_per_step, *, lr, betas, eps, weight_decay, theta, interval,
                   warmup_steps, clip_delay):  # fmt: skip
    """The official per-tensor loop, transcribed from the specification (one tensor at a time,
    `grad[mask] = ...` clipping, `mul_().add_()` moments, `add_(m / denom)` update)."""
    beta1, beta2 = betas
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    k = [0 for _ in params]
    total_step, counter = 0, warmup_steps + 1
    for grads in grads_per_step:
        if counter >= warmup_steps:
            scale = 1.0
        else:
            scale = 1 - 0.99 * (1 + math.cos(math.pi * counter / (warmup_steps + 1))) / 2
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            g = g.clone()
            if (total_step + 1) % interval == 0:
                m[i] = torch.zeros_like(p)
                v[i] = torch.zeros_like(p)
            k[i] += 1
            current = total_step + 1
            if theta != 0 and current >= clip_delay and current % interval >= clip_delay:
                mask = g**2 > theta * v[i]
                g[mask] = g[mask].sign() * torch.sqrt(v[i][mask] * theta)
            m[i].mul_(beta1).add_(g, alpha=1 - beta1)
            v[i].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = v[i].sqrt().add_(eps)
            step_size = lr * math.sqrt(1 - beta2 ** k[i]) / (1 - beta1 ** k[i])
            p.add_(m[i] / denom, alpha=-step_size * scale)
            if weight_decay > 0.0:
                p.add_(p, alpha=-lr * weight_decay)
        total_step += 1
        counter += 1
        if (total_step + 1) % interval == 0:
            counter = 0
    return params, m, v


def spiky_grads(shapes, steps, seed=0):
    """Gaussian gradients with occasional 100x spikes so that clipping has work to do."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        grads = []
        for shape in shapes:
            g = torch.randn(shape, generator=generator)
            spikes = torch.rand(shape, generator=generator) < 0.05
            grads.append(torch.where(spikes, g * 100, g))
        out.append(grads)
    return out


def run_spam(optimizer, params, grads_per_step):
    for grads in grads_per_step:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


HYPER = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1, theta=2.0, interval=10,
             warmup_steps=4, clip_delay=3)  # fmt: skip


def test_bit_identical_to_reference_loop_across_resets_and_clipping():
    shapes = [(7, 5), (5,), (3, 2, 3, 3)]
    init = [
        torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)
    ]
    grads = spiky_grads(shapes, steps=35)
    expected, expected_m, expected_v = reference_spam(init, grads, **HYPER)

    params = [torch.nn.Parameter(p.clone()) for p in init]
    optimizer = AdamWSPAM(params, **HYPER)
    run_spam(optimizer, params, grads)
    for p, e in zip(params, expected, strict=True):
        assert torch.equal(p.detach(), e)
    for p, em, ev in zip(params, expected_m, expected_v, strict=True):
        assert torch.equal(optimizer.state[p]["exp_avg"], em)
        assert torch.equal(optimizer.state[p]["exp_avg_sq"], ev)
        assert optimizer.state[p]["step"] == 35  # k is never reset


def test_reference_defaults():
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = AdamWSPAM([p])
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        1e-3,
        (0.9, 0.999),
        1e-6,
        0.0,
    )
    clock = optimizer.clock
    assert (clock.theta, clock.interval, clock.warmup_steps, clock.clip_delay) == (
        5000,
        500,
        150,
        20,
    )
    assert clock.warmup_counter == 151  # no warmup at the start of training


def test_warmup_scale_values_after_a_reset():
    # N = 3 warmup steps, reset every 6 steps: the step with T + 1 = 6 resets, scale 0.01 there.
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = AdamWSPAM([p], interval=6, warmup_steps=3, theta=0.0)
    scales = []
    for _ in range(12):
        scales.append(optimizer.clock.warmup_scale())
        p.grad = torch.ones(1)
        optimizer.step()
    by_hand = [
        1.0, 1.0, 1.0, 1.0, 1.0,  # before the first reset: no warmup
        1 - 0.99,  # c = 0 at the reset step (T + 1 = 6)
        1 - 0.99 * (1 + math.cos(math.pi / 4)) / 2,  # c = 1: 0.15498...
        1 - 0.99 * (1 + math.cos(math.pi / 2)) / 2,  # c = 2: 0.505
        1.0, 1.0, 1.0,  # c >= N
        1 - 0.99,  # next reset at T + 1 = 12
    ]  # fmt: skip
    assert scales == pytest.approx(by_hand, abs=1e-15)
    assert by_hand[6] == pytest.approx(0.15498, abs=1e-5)


def test_reset_zeroes_moments_at_step_interval_and_bias_correction_continues():
    lr, interval = 0.1, 4
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = AdamWSPAM([p], lr=lr, eps=0.0, interval=interval, warmup_steps=0, theta=0.0)
    for step in range(1, 5):
        p.grad = torch.tensor([float(step)], dtype=torch.float64)
        before = p.detach().clone()
        optimizer.step()
    # Step 4 is T + 1 = interval: m and v restart from zero, so they hold only g = 4 ...
    state = optimizer.state[p]
    assert state["exp_avg"].item() == pytest.approx(0.1 * 4)
    assert state["exp_avg_sq"].item() == pytest.approx(0.001 * 16)
    # ... but k = 4: bias correction uses 1 - beta^4, not 1 - beta^1 (it never restarts).
    m, v = 0.4, 0.016
    step_size = lr * math.sqrt(1 - 0.999**4) / (1 - 0.9**4)
    assert p.item() == pytest.approx(before.item() - step_size * m / math.sqrt(v), rel=1e-12)
    assert state["step"] == 4


def test_spike_clipping_exactly_where_g_squared_exceeds_theta_times_v():
    theta = 4.0
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = AdamWSPAM([p], theta=theta, interval=1000, clip_delay=0, warmup_steps=0)
    p.grad = torch.ones(4, dtype=torch.float64)
    optimizer.step()
    # clip_delay = 0 clips from the first step, when v is still 0: every nonzero g is a spike
    # and becomes sign(g) * sqrt(theta * 0) = 0 (the reference behaves the same way).
    assert torch.equal(optimizer.state[p]["exp_avg"], torch.zeros(4, dtype=torch.float64))
    optimizer.state[p]["exp_avg_sq"].fill_(0.25)  # v before the step: theta * v = 1
    optimizer.state[p]["exp_avg"].zero_()
    p.grad = torch.tensor([1.0, -1.0, 3.0, -3.0], dtype=torch.float64)  # g^2 = 1, 1, 9, 9
    optimizer.step()
    # Clipped g: 1 and -1 stay (g^2 == theta v is not a spike); 3, -3 -> +-sqrt(theta v) = +-1.
    expected_g = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    assert torch.equal(p.grad, expected_g)
    assert torch.allclose(optimizer.state[p]["exp_avg"], 0.1 * expected_g)


def test_no_clipping_during_clip_delay_and_right_after_a_reset():
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = AdamWSPAM([p], theta=1.0, interval=5, clip_delay=2, warmup_steps=0)
    seen = []
    for _ in range(8):
        seen.append(optimizer.clock.clipping_active())
        p.grad = torch.ones(1)
        optimizer.step()
    # T + 1 = 1: below clip_delay; 5 is a reset step (5 % 5 = 0 < 2); 6 too (6 % 5 = 1 < 2).
    assert seen == [False, True, True, True, False, False, True, True]
    # The first step's gradient went through unclipped although v was 0 before it.
    optimizer = AdamWSPAM([p], theta=1.0, interval=5, clip_delay=2, warmup_steps=0)
    p.grad = torch.full((1,), 50.0)
    optimizer.step()
    assert optimizer.state[p]["exp_avg"].item() == pytest.approx(5.0)


def test_weight_decay_after_the_update_and_not_scaled_by_warmup():
    lr, wd = 0.1, 0.5
    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    optimizer = AdamWSPAM([p], lr=lr, weight_decay=wd, eps=0.0, theta=0.0, interval=1)
    # interval = 1: every step resets m and v. The first step is unscaled (c starts past the
    # warmup); from the second on c = 0, so the update is scaled by 0.01 but the decay is not.
    p.grad = torch.tensor([3.0], dtype=torch.float64)
    optimizer.step()
    first_step_size = lr * math.sqrt(1 - 0.999) / (1 - 0.9)
    after_update = 2.0 - first_step_size * (0.3 / math.sqrt(0.009))
    after_first = after_update - lr * wd * after_update
    assert p.item() == pytest.approx(after_first, rel=1e-12)

    optimizer.step()  # same gradient; m = 0.3, v = 0.009 again after the reset, k = 2
    step_size = lr * math.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    after_update = after_first - step_size * 0.01 * (0.3 / math.sqrt(0.009))
    assert p.item() == pytest.approx(after_update - lr * wd * after_update, rel=1e-12)


def test_state_dict_round_trip_resumes_bit_identically_across_a_reset():
    shapes = [(6, 4), (4,)]
    init = [torch.randn(s, generator=torch.Generator().manual_seed(3)) for s in shapes]
    grads = spiky_grads(shapes, steps=25, seed=1)

    params = [torch.nn.Parameter(p.clone()) for p in init]
    optimizer = AdamWSPAM(params, **HYPER)
    run_spam(optimizer, params, grads[:8])
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": optimizer.state_dict()},
               buffer)  # fmt: skip
    run_spam(optimizer, params, grads[8:])

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(p) for p in checkpoint["params"]]
    optimizer2 = AdamWSPAM(resumed, **HYPER)
    optimizer2.load_state_dict(checkpoint["opt"])
    assert optimizer2.clock.total_step == 8
    run_spam(optimizer2, resumed, grads[8:])
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": -1e-3}, "lr"),
        ({"betas": (1.0, 0.999)}, "betas[0]"),
        ({"betas": (0.9, -0.1)}, "betas[1]"),
        ({"eps": -1.0}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"theta": -1.0}, "theta"),
        ({"interval": 0}, "interval"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"clip_delay": 1.5}, "clip_delay"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}="):
        AdamWSPAM([torch.nn.Parameter(torch.zeros(1))], **kwargs)
