"""AdamWSPAM's compiled CPU kernels (optimizers/spam_kernel.py): used where they can be, bit
for bit the reference's results, and refused, with the reason, where they cannot be."""

from __future__ import annotations

import ctypes
import math
import shutil

import pytest
import torch
from test_spam import HYPER, reference_spam, run_spam, spiky_grads
from torch import nn

import lib.buckets
from lib.memory import peak_transient_bytes
from optimizers import AdamWSPAM, spam_kernel
from optimizers import spam as spam_module


def bits(t):
    return t.detach().view(torch.int32)


@pytest.fixture
def fresh_kernel_state(monkeypatch, tmp_path):
    """A process that has not tried the kernels yet, compiling into an empty cache."""
    monkeypatch.setattr(
        spam_kernel, "_state", {"loaded": False, "library": None, "reason": "not tried yet"}
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def kernels_expected() -> bool:
    return shutil.which("cc") is not None or shutil.which("gcc") is not None


def test_the_kernels_are_used_where_a_c_compiler_is():
    p = nn.Parameter(torch.randn(10))
    optimizer = AdamWSPAM([p])
    p.grad = torch.randn(10)
    optimizer.step()
    if kernels_expected():
        assert spam_kernel.status().startswith("compiled kernels"), spam_kernel.status()
    else:
        assert "no C compiler" in spam_kernel.status()


def spiky_and_dead_grads(shapes, steps):
    """spiky_grads with a slice that never gets a gradient (v stays 0: sqrt(0) = 0, the
    kernels keep zeros out of torch.sqrt) and one that gets one only every third step."""
    out = spiky_grads(shapes, steps, seed=3)
    for step, grads in enumerate(out):
        for g in grads:
            flat = g.view(-1)
            flat[: max(1, flat.numel() // 4)] = 0.0
            if step % 3:
                flat[-max(1, flat.numel() // 5) :] = 0.0
    return out


@pytest.mark.parametrize("bucket", [5, 1 << 16])
def test_kernels_equal_the_reference_loop_across_resets_clipping_and_dead_weights(
    monkeypatch, bucket
):
    """35 steps, clipping from step 3 (a third of the elements are spikes at first), resets at
    10, 20, 30, zeros in v, a channels-last weight, lengths that leave vector tails; in
    buckets of 5 elements (every tensor cut across buckets) and of the default size."""
    monkeypatch.setattr(lib.buckets, "CPU_BUCKET", bucket)
    shapes = [(7, 5), (5,), (6, 3, 3, 3), (1,), (70, 13)]
    init = [
        torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)
    ]
    grads = spiky_and_dead_grads(shapes, steps=35)
    expected, expected_m, expected_v = reference_spam(init, grads, **HYPER)
    params = [nn.Parameter(p.clone()) for p in init]
    params[2] = nn.Parameter(params[2].detach().to(memory_format=torch.channels_last))
    channels_last = [g[2].to(memory_format=torch.channels_last) for g in grads]
    for step, g in zip(grads, channels_last, strict=True):
        step[2] = g
    optimizer = AdamWSPAM(params, **HYPER)
    run_spam(optimizer, params, grads)
    assert spam_module._kernel(*_roles(optimizer)) is not None or not kernels_expected()
    for p, e, em, ev in zip(params, expected, expected_m, expected_v, strict=True):
        assert torch.equal(bits(p), bits(e))
        assert torch.equal(bits(optimizer.state[p]["exp_avg"]), bits(em))
        assert torch.equal(bits(optimizer.state[p]["exp_avg_sq"]), bits(ev))


def _roles(optimizer):
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    state = [optimizer.state[p] for p in params]
    return (
        params,
        [p.grad for p in params],
        [s["exp_avg"] for s in state],
        [s["exp_avg_sq"] for s in state],
    )


def test_kernels_clip_the_gradient_in_place_as_the_reference_does():
    """The reference writes the clipped gradient into p.grad; so do the kernels."""
    g = torch.tensor([0.1, -5.0, 0.2, 4.0, -0.3, 0.0])
    v = torch.full((6,), 0.02)
    p = nn.Parameter(torch.zeros(6))
    optimizer = AdamWSPAM([p], theta=50.0, clip_delay=1)
    optimizer.state[p].update(step=3, exp_avg=torch.zeros(6), exp_avg_sq=v.clone())
    p.grad = g.clone()
    optimizer.step()
    bound = torch.sqrt(v * 50.0)  # 1: the two large entries are spikes
    expected = torch.where(g * g > 50.0 * v, g.sign() * bound, g)
    assert torch.equal(bits(p.grad), bits(expected))
    assert p.grad[1] == -1.0 and p.grad[3] == 1.0


def test_kernels_and_torch_operations_agree_bit_for_bit_on_edge_values(monkeypatch):
    """inf and NaN in gradients and moments, denormals, signed zeros: both paths, 6 steps."""
    generator = torch.Generator().manual_seed(5)
    init = [torch.randn(300, generator=generator), torch.randn(17, 3, generator=generator)]
    specials = torch.tensor([0.0, -0.0, 1e-40, -1e-42, 1e-30, math.inf, -math.inf, math.nan])
    grads = []
    for _ in range(6):
        step = []
        for p in init:
            g = torch.randn(p.shape, generator=generator) * 0.01
            picks = torch.randint(0, g.numel(), (g.numel() // 8,), generator=generator)
            g.view(-1)[picks] = specials[torch.randint(0, 8, picks.shape, generator=generator)]
            step.append(g)
        grads.append(step)
    results = []
    for use_kernel in (False, True):
        monkeypatch.setattr(spam_module, "USE_KERNEL", use_kernel)
        params = [nn.Parameter(p.clone()) for p in init]
        optimizer = AdamWSPAM(params, **HYPER)
        run_spam(optimizer, params, grads)
        results.append([bits(t) for p in params for t in (p, *optimizer.state[p].values())
                        if isinstance(t, torch.Tensor)])  # fmt: skip
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_ineligible_groups_take_the_torch_operations():
    """float64, or a gradient whose layout differs from its weight's: no kernels."""
    for dtype, grad_layout in ((torch.float64, None), (torch.float32, "transposed")):
        p = torch.randn(4, 6, dtype=dtype)
        g = torch.randn(6, 4, dtype=dtype).t() if grad_layout else torch.randn(4, 6, dtype=dtype)
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        assert spam_module._kernel([p], [g], [m], [v]) is None
    p = torch.randn(4, 6)
    assert (spam_module._kernel([p], [torch.randn(4, 6)], [p.clone()], [p.clone()]) is None) == (
        not kernels_expected()
    )


def test_a_kernel_that_differs_by_one_bit_is_refused(fresh_kernel_state, monkeypatch):
    """The self-check compares every bit with the torch operations; a kernel whose update is
    off by one ulp on one tensor is not used, and status() says why."""
    if not kernels_expected():
        pytest.skip("no C compiler: nothing to refuse")
    real = spam_kernel._load()
    assert real is not None

    class OffByOneUlp:
        spam_limits, spam_moments = real.spam_limits, real.spam_moments

        @staticmethod
        def spam_update(n, p, *args):
            real.spam_update(n, p, *args)
            if n == 7:  # the last bit of the first weight flipped: one ulp
                ctypes.c_int32.from_address(p).value ^= 1

    assert spam_module._self_check(real) == ""
    assert spam_module._self_check(OffByOneUlp).startswith("p differs (length 7")
    monkeypatch.setattr(spam_kernel, "_load", lambda: OffByOneUlp)
    assert spam_kernel.library(spam_module._self_check) is None
    assert spam_kernel.status().startswith("torch operations (not bit-identical")


def test_without_a_compiler_the_step_runs_on_torch_operations(fresh_kernel_state, monkeypatch):
    monkeypatch.setattr(spam_kernel.shutil, "which", lambda name: None)
    shapes = [(7, 5), (5,)]
    init = [
        torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)
    ]
    grads = spiky_grads(shapes, steps=12)
    expected, _, _ = reference_spam(init, grads, **HYPER)
    params = [nn.Parameter(p.clone()) for p in init]
    run_spam(AdamWSPAM(params, **HYPER), params, grads)
    assert spam_kernel.status() == "torch operations (no C compiler (cc) on PATH)"
    for p, e in zip(params, expected, strict=True):
        assert torch.equal(bits(p), bits(e))


def test_a_failing_compiler_is_reported_in_one_line(fresh_kernel_state, monkeypatch):
    false = shutil.which("false")
    assert false is not None
    monkeypatch.setenv("CC", false)
    monkeypatch.setattr(spam_kernel.shutil, "which", lambda name: false if name == false else None)
    assert spam_kernel.library(spam_module._self_check) is None
    status = spam_kernel.status()
    assert status.startswith(f"torch operations ({false} failed (1)")
    assert "\n" not in status


def test_the_library_is_compiled_once_and_then_read_from_the_cache(fresh_kernel_state, monkeypatch):
    if not kernels_expected():
        pytest.skip("no C compiler")
    first, reason = spam_kernel._compile()
    assert first is not None and reason == ""

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(spam_kernel.subprocess, "run", no_compiler)
    assert spam_kernel._compile() == (first, "")
    assert first.parent.name == "prunebench" and first.name.startswith("spam_kernel-")


def test_a_cache_directory_others_can_write_to_is_not_used(
    fresh_kernel_state, monkeypatch, tmp_path
):
    """A shared library is loaded only from this user's private cache; else each process
    compiles into a private temporary directory of its own."""
    if not kernels_expected():
        pytest.skip("no C compiler")
    shared = tmp_path / "cache" / "prunebench"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    assert spam_kernel._cache_dir() is None
    path, reason = spam_kernel._compile()
    assert reason == "" and path is not None
    assert shared not in path.parents and not list(shared.iterdir())
    assert (path.parent.stat().st_mode & 0o077) == 0
    assert spam_kernel.library(spam_module._self_check) is not None
    shared.chmod(0o700)
    assert spam_kernel._cache_dir() == shared


def test_kernel_step_temporaries_are_one_bucket_of_square_root_inputs():
    """4 B per element of one bucket (the square-root inputs), whatever the model size."""
    params = [nn.Parameter(torch.randn(1000, 1000)) for _ in range(2)]
    optimizer = AdamWSPAM(params, theta=5000.0, clip_delay=1)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    if not kernels_expected():
        pytest.skip("no C compiler")
    assert spam_module._kernel(*_roles(optimizer)) is not None
    for p in params:
        p.grad = torch.randn_like(p)
    bucket = min(lib.buckets.CPU_BUCKET, spam_module.SPAM_CPU_BUCKET)
    assert peak_transient_bytes(optimizer.step) <= 4 * bucket + 4096


def test_a_graph_that_saved_a_weight_refuses_backward_after_a_kernel_step():
    """The kernels write through pointers; autograd still learns of it (version counters), as
    after torch's in-place operations: backward through a graph that saved the old weight is
    an error, not a silently wrong gradient."""
    p = nn.Parameter(torch.randn(8))
    optimizer = AdamWSPAM([p])
    loss = (p * p).sum()  # saves p
    p.grad = torch.randn(8)
    before = p._version
    optimizer.step()
    assert p._version > before
    if kernels_expected():
        assert spam_kernel.status().startswith("compiled kernels")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
