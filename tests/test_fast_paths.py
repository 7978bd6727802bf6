"""The fast paths of the pruning and SPAM steps equal the straightforward code they replace.

Bucketed temporaries (lib/buckets.py), in-place gradient masking, the selection among kept
weights only and the writes of newly pruned coordinates only: each is compared here, bit for
bit, with the whole-tensor version (the way the code was written before it was made fast).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_spam import HYPER, reference_spam, run_spam, spiky_grads
from torch import nn

import lib.buckets
from lib.buckets import buckets
from lib.memory import peak_transient_bytes
from lib.pruning import Pruner, PruningSchedule, importance_score, select_lowest
from optimizers import AdamWPrune, AdamWSPAM
from optimizers import spam as spam_module
from optimizers.spam import clip_spikes_


@pytest.fixture
def tiny_buckets(monkeypatch):
    """Buckets of 5 elements: every tensor of the tests is cut across several buckets."""
    monkeypatch.setattr(lib.buckets, "CPU_BUCKET", 5)


def test_buckets_cover_every_element_once_in_bounded_pieces():
    a = torch.zeros(3, 4)
    b = torch.zeros(2, 3, 2, 2).to(memory_format=torch.channels_last)
    c = torch.zeros(7)
    odd = torch.zeros(4, 3).t()  # no flat view: goes whole into its own bucket
    twins = [torch.zeros_like(t) for t in (a, b, c, odd)]
    for bucket_a, bucket_b in buckets([[a, b, c, odd], twins], 5):
        assert sum(t.numel() for t in bucket_a) <= 5 or bucket_a == [odd]
        for x, y in zip(bucket_a, bucket_b, strict=True):
            x.add_(1)
            y.add_(2)
    for t, twin in zip((a, b, c, odd), twins, strict=True):
        assert torch.equal(t, torch.ones_like(t)) and torch.equal(twin, 2 * torch.ones_like(t))


# -- gradient masking -----------------------------------------------------------------------------


def test_gradient_masking_in_buckets_equals_the_whole_tensor_product(tiny_buckets):
    generator = torch.Generator().manual_seed(0)
    params = [
        nn.Parameter(torch.randn(4, 3, 3, 3, generator=generator)),
        nn.Parameter(torch.randn(4, 3, 3, 3, generator=generator)),
        nn.Parameter(torch.randn(10, 6, generator=generator)),
    ]
    with torch.no_grad():
        params[1].data = params[1].data.to(memory_format=torch.channels_last)
        for p in params:
            p.mul_(torch.rand(p.shape, generator=generator) > 0.4)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator).to(
            memory_format=torch.channels_last if p.dim() == 4 else torch.contiguous_format
        )
    p.grad = p.grad.t().contiguous().t()  # a gradient laid out unlike its weight
    expected = [p.grad * p.detach().sign().abs() for p in params]
    pruner = Pruner(params, PruningSchedule(0.5, 1, 10))
    pruner.sparsity = 0.5  # masking is on once a mask update has happened
    pruner.before_step()
    for p, e in zip(params, expected, strict=True):
        assert torch.equal(p.grad, e)
        assert torch.equal(p.grad == 0, (p == 0) | (e == 0))


# -- selection among kept weights -----------------------------------------------------------------


def brute_force_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the `count` lowest scores above -inf, ties by position: a stable sort."""
    candidates = torch.nonzero(scores > -math.inf).flatten()
    order = torch.sort(scores[candidates], stable=True).indices
    return candidates[order[:count]].sort().values


def kept_and_pruned(kind: str, n: int = 1_100_000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    if kind == "gaussian":
        scores = torch.randn(n, generator=generator).abs_()
    elif kind == "ties":
        scores = torch.randint(0, 5, (n,), generator=generator).float()
    else:  # sorted: defeats a strided sample
        scores = torch.arange(float(n))
    pruned = torch.rand(n, generator=generator) < 0.6
    return scores.masked_fill_(pruned, -math.inf)


@pytest.mark.parametrize("kind", ["gaussian", "ties", "sorted"])
@pytest.mark.parametrize("increment", [1, 7, 33, 1000, 20_000, 300_000])
def test_small_increments_select_exactly_what_a_full_sort_selects(kind, increment):
    scores = kept_and_pruned(kind)
    floor = int((scores == -math.inf).sum())
    chosen = select_lowest(scores, increment, floor)
    assert chosen.numel() == increment
    assert torch.equal(chosen, brute_force_lowest(scores, increment))
    # the kth value among the kept ones is the largest chosen score
    kept = scores[scores > -math.inf]
    assert scores[chosen].max() == torch.kthvalue(kept, increment).values
    # a floor count not given (or wrong) costs time, never exactness
    assert torch.equal(select_lowest(scores, increment), chosen)
    assert torch.equal(select_lowest(scores, increment, floor // 2), chosen)


# -- the mask update against the straightforward one ----------------------------------------------


class WholeTensorPruner(Pruner):
    """The mask update as first written: every score ranked (pruned at -inf), a full stable
    sort for the exact count, and a full mask written into the weight and every state tensor."""

    def update_masks(self, optimizer_state, sparsity):
        scores = []
        for i, p in enumerate(self.params):
            movement = None if self.movement_scores is None else self.movement_scores[i]
            s = importance_score(self.score, p, optimizer_state.get(p, {}), movement, self.eps)
            scores.append(s.masked_fill_(p == 0, -math.inf).flatten())

        def lowest(flat, count):
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[torch.sort(flat, stable=True).indices[:count]] = True
            return mask

        if self.scope == "global":
            flat = torch.cat(scores)
            total = flat.numel()
            masks = lowest(flat, total - round((1.0 - sparsity) * total)).split(
                [p.numel() for p in self.params]
            )
        else:
            masks = [lowest(s, s.numel() - round((1.0 - sparsity) * s.numel())) for s in scores]
        for i, (p, mask) in enumerate(zip(self.params, masks, strict=True)):
            mask = mask.view(p.shape)
            p.detach().masked_fill_(mask, 0.0)
            for value in optimizer_state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.masked_fill_(mask, 0.0)
            if self.movement_scores is not None:
                self.movement_scores[i].masked_fill_(mask, 0.0)
        self.sparsity = sparsity


def wide_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),  # channels_last below: positions map through its strides
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3000),  # with the next layer > 2^19 weights: the sampled bracket
        nn.ReLU(),
        nn.Linear(3000, 180),  # layerwise: this layer alone is bracketed
    )
    return model.to(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "scope, end_step, score",
    [("global", 20_000, "hybrid"), ("global", 12, "hybrid"), ("layerwise", 20_000, "momentum")],
)
def test_mask_updates_equal_the_whole_tensor_update_bit_for_bit(scope, end_step, score):
    """Tiny increments (end_step 20,000: a few weights per update) and large ones (12), with a
    kept weight set to exactly 0 between updates (its state must be cleared as a full mask
    would clear it)."""
    generator = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(8, 3, 8, 8, generator=generator),
            torch.randint(0, 180, (8,), generator=generator),
        )
        for _ in range(10)
    ]
    models, optimizers = [], []
    for pruner_class in (Pruner, WholeTensorPruner):
        model = wide_model()
        optimizer = AdamWPrune(
            model.parameters(), lr=1e-3, sparsity=0.5, start_step=2, end_step=end_step,
            interval=1, scope=scope, score=score,
        )  # fmt: skip
        pruner = optimizer.pruner
        optimizer.pruner = pruner_class(
            pruner.params, pruner.schedule, score=pruner.score, scope=scope, eps=pruner.eps
        )
        models.append(model)
        optimizers.append(optimizer)
    for step, (x, y) in enumerate(data):
        for model, optimizer in zip(models, optimizers, strict=True):
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step == 5:
                with torch.no_grad():
                    kept = torch.nonzero(model[4].weight.view(-1)).flatten()
                    model[4].weight.view(-1)[kept[:3]] = 0.0
        fast, slow = (list(m.parameters()) for m in models)
        for p, q in zip(fast, slow, strict=True):
            assert torch.equal(p, q), step
            for key, value in optimizers[0].state[p].items():
                assert torch.equal(value, optimizers[1].state[q][key]), (step, key)
    assert optimizers[0].pruner.sparsity > 0


# -- SPAM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_kernel", [False, True], ids=["torch-ops", "compiled"])
def test_spam_in_buckets_is_bit_identical_to_the_reference_loop(tiny_buckets, monkeypatch,
                                                                use_kernel):  # fmt: skip
    """35 steps with interval 10: clipping from step 3, momentum resets at 10, 20, 30; on the
    torch operations and on the compiled kernels (optimizers/spam_kernel.py)."""
    monkeypatch.setattr(spam_module, "USE_KERNEL", use_kernel)
    shapes = [(7, 5), (5,), (3, 2, 3, 3), (1,)]
    init = [
        torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)
    ]
    grads = spiky_grads(shapes, steps=35)
    expected, expected_m, expected_v = reference_spam(init, grads, **HYPER)
    params = [nn.Parameter(p.clone()) for p in init]
    optimizer = AdamWSPAM(params, **HYPER)
    run_spam(optimizer, params, grads)
    for p, e, em, ev in zip(params, expected, expected_m, expected_v, strict=True):
        assert torch.equal(p.detach(), e)
        assert torch.equal(optimizer.state[p]["exp_avg"], em)
        assert torch.equal(optimizer.state[p]["exp_avg_sq"], ev)


def test_spam_step_temporaries_are_bounded_by_the_bucket(monkeypatch):
    """A clipping SPAM step over 2M weights on torch operations: ~8 B/param of temporaries
    unbucketed (4 B for g^2, 4 for theta v), at most a few bytes per element of one
    2^16-element bucket bucketed."""
    monkeypatch.setattr(spam_module, "USE_KERNEL", False)
    params = [nn.Parameter(torch.randn(1000, 1000)) for _ in range(2)]
    optimizer = AdamWSPAM(params, theta=5000.0, clip_delay=1)

    def step():
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()

    step()
    step()
    for p in params:
        p.grad = torch.randn_like(p)
    monkeypatch.setattr(lib.buckets, "CPU_BUCKET", 1 << 30)
    monkeypatch.setattr(spam_module, "SPAM_CPU_BUCKET", 1 << 30)
    whole = peak_transient_bytes(optimizer.step)
    monkeypatch.setattr(lib.buckets, "CPU_BUCKET", 1 << 16)
    bucketed = peak_transient_bytes(optimizer.step)
    assert whole >= 8 * 2_000_000
    assert bucketed <= 16 * (1 << 16)
    # With the library's default buckets (2^20) and one thread, SPAM's own cap on CPU (2^16:
    # a bucket fits L2); with more threads the library's size
    monkeypatch.setattr(lib.buckets, "CPU_BUCKET", 1 << 20)
    monkeypatch.setattr(spam_module, "SPAM_CPU_BUCKET", 1 << 16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert peak_transient_bytes(optimizer.step) <= 16 * (1 << 16)
        torch.set_num_threads(2)
        assert peak_transient_bytes(optimizer.step) >= 8 * (1 << 20)
    finally:
        torch.set_num_threads(threads)


def reference_clip(grad, exp_avg_sq, theta):
    """The reference's clipping, one tensor: `grad[mask] = sign * sqrt(v theta)`."""
    grad = grad.clone()
    mask = grad**2 > theta * exp_avg_sq
    grad[mask] = grad[mask].sign() * torch.sqrt(exp_avg_sq[mask] * theta)
    return grad


def special_pairs(dtype):
    """(g, v) pairs at every edge the fast clipping path reasons about, for theta = 2."""
    info = torch.finfo(dtype)
    values = [0.0, -0.0, info.smallest_normal / 8, 1e-30, info.smallest_normal, 1e-20, 0.5,
              -0.5, 1.0, -3.0, 1e20, -1e30, info.max, math.inf, -math.inf, math.nan]  # fmt: skip
    moments = [0.0, info.smallest_normal / 8, 1e-40, info.smallest_normal, 0.125, 0.5, 4.5,
               info.max, math.inf, math.nan]  # fmt: skip
    g = torch.tensor([a for a in values for _ in moments], dtype=dtype)
    v = torch.tensor([b for _ in values for b in moments], dtype=dtype)
    # g^2 == theta v exactly (not a spike), and one step either side of it
    square = torch.tensor([0.75, 3.0, 1e-30], dtype=dtype) ** 2
    halves = square / 2
    edges_v = torch.cat([halves, torch.nextafter(halves, torch.zeros_like(halves)),
                         torch.nextafter(halves, torch.full_like(halves, math.inf))])  # fmt: skip
    edges_g = torch.tensor([0.75, 3.0, 1e-30], dtype=dtype).repeat(3)
    return torch.cat([g, edges_g, -edges_g]), torch.cat([v, edges_v, edges_v])


def bits(t):
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_spam_clipping_equals_the_reference_bit_for_bit_at_every_edge(dtype, tiny_buckets):
    """Zeros of both signs, denormals, squares that underflow or overflow, inf, NaN, g^2 equal
    to theta v and one ulp either side: tensors with no spike (screened out), with a few,
    with a NaN excess (the reference's operations), cut across buckets or whole."""
    g, v = special_pairs(dtype)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(g.numel(), generator=generator)
    clean_g = torch.tensor([0.1, -0.2, 0.0, 1e-30], dtype=dtype)
    clean_v = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=dtype)
    grads = [g[order], g.clone(), clean_g.clone(), g[:3].clone(), clean_g.repeat(5)]
    sqs = [v[order], v.clone(), clean_v.clone(), v[:3].clone(), clean_v.repeat(5)]
    expected = [reference_clip(a, b, 2.0) for a, b in zip(grads, sqs, strict=True)]
    clip_spikes_(grads, sqs, 2.0)
    for got, want in zip(grads, expected, strict=True):
        assert torch.equal(bits(got), bits(want))


def test_spam_clipping_at_a_third_of_spikes_equals_the_reference():
    """A spike-heavy step (training sees a few in 10^5), in buckets of the default size."""
    generator = torch.Generator().manual_seed(1)
    grads = [
        torch.randn(3_000_000, generator=generator),
        torch.randn(64, 3, 7, 7, generator=generator),
    ]
    sqs = [torch.rand(g.shape, generator=generator) * 0.5 for g in grads]
    expected = [reference_clip(a, b, 1.5) for a, b in zip(grads, sqs, strict=True)]
    assert 0.2 < (grads[0] ** 2 > 1.5 * sqs[0]).float().mean() < 0.6
    clip_spikes_(grads, sqs, 1.5)
    for got, want in zip(grads, expected, strict=True):
        assert torch.equal(bits(got), bits(want))


def test_spam_clipping_with_denormals_flushed_takes_the_exact_comparison():
    """Flushing denormals (torch.set_flush_denormal) turns an excess g^2 - theta v of one
    denormal ulp into 0: the screen would miss that spike, so the flag is read at every step."""
    g = torch.tensor([2.0**-60 * (1 + 2.0**-23), 0.5])
    square = g[0] * g[0]
    v = torch.stack([torch.nextafter(square, torch.tensor(0.0)), torch.tensor(1.0)])
    assert (square - v[0]).item() < torch.finfo(torch.float32).smallest_normal
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        assert spam_module._denormals_flushed()
        assert (square - v[0]).item() == 0.0  # what the screen would read
        expected = reference_clip(g, v, 1.0)
        clipped = g.clone()
        clip_spikes_([clipped], [v], 1.0)
    finally:
        torch.set_flush_denormal(False)
    assert not spam_module._denormals_flushed()
    assert expected[0] != g[0]  # it is a spike
    assert torch.equal(bits(clipped), bits(expected))


def test_spam_clipping_without_foreach_max_equals_the_reference(monkeypatch, tiny_buckets):
    """On a torch without torch._foreach_max the screen takes each tensor's max itself."""
    monkeypatch.delattr(torch, "_foreach_max")
    g, v = special_pairs(torch.float32)
    grads, sqs = [g.clone(), g[:7].clone()], [v.clone(), v[:7].clone()]
    expected = [reference_clip(a, b, 2.0) for a, b in zip(grads, sqs, strict=True)]
    clip_spikes_(grads, sqs, 2.0)
    for got, want in zip(grads, expected, strict=True):
        assert torch.equal(bits(got), bits(want))
