"""AdamWPrune: bit-identical to its base when not pruning; exact, monotone state pruning."""

from __future__ import annotations

import io
import re

import pytest
import torch
from optim_helpers import batches, groups, train
from torch import nn

from lib.pruning import importance_score, measure_sparsity, prunable_parameters
from optimizers import AdamWPrune, AdamWSPAM


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def assert_same_parameters(a: nn.Module, b: nn.Module):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


# -- dense: bit-identity with torch ---------------------------------------------------------------


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("path", [{}, {"foreach": True}, {"fused": True}])
def test_dense_is_bit_identical_to_torch_adamw(amsgrad, path):
    ours, theirs = tiny_model(), tiny_model()
    data = batches(6)
    train(ours, AdamWPrune(ours.parameters(), lr=1e-3, weight_decay=0.01, amsgrad=amsgrad,
                           **path), data)  # fmt: skip
    train(theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=0.01,
                                    amsgrad=amsgrad, **path), data)  # fmt: skip
    assert_same_parameters(ours, theirs)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_dense_base_adam_is_bit_identical_to_torch_adam(amsgrad):
    ours, theirs = tiny_model(), tiny_model()
    data = batches(6)
    # L2 weight decay (coupled, Adam's) so that the two decay styles cannot be confused.
    train(ours, AdamWPrune(groups(ours, 0.05), lr=2e-3, base="adam", amsgrad=amsgrad), data)
    train(theirs, torch.optim.Adam(groups(theirs, 0.05), lr=2e-3, amsgrad=amsgrad), data)
    assert_same_parameters(ours, theirs)


@pytest.mark.parametrize(
    "base, reference",
    [
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("adamwadv", lambda params: torch.optim.AdamW(params, amsgrad=True)),
        ("adamwspam", AdamWSPAM),
    ],
)
def test_defaults_are_the_bases_own(base, reference):
    # AdamWPrune(params, base=b) with nothing else given steps like b's constructor with
    # nothing else given: weight decay 0 for Adam and AdamWSPAM, 1e-2 for AdamW; eps 1e-6 for SPAM.
    ours, theirs = tiny_model(), tiny_model()
    data = batches(6)
    train(ours, AdamWPrune(ours.parameters(), base=base), data)
    train(theirs, reference(theirs.parameters()), data)
    assert_same_parameters(ours, theirs)


def test_base_adamwadv_is_adamw_with_amsgrad_and_before_the_schedule_nothing_changes():
    ours, theirs = tiny_model(), tiny_model()
    data = batches(6)
    # Pruning configured but starting at step 100: the first 6 steps are the base's exactly.
    optimizer = AdamWPrune(ours.parameters(), base="adamwadv", sparsity=0.5, start_step=100,
                           end_step=200)  # fmt: skip
    train(ours, optimizer, data)
    train(theirs, torch.optim.AdamW(theirs.parameters(), amsgrad=True), data)
    assert_same_parameters(ours, theirs)
    assert all("max_exp_avg_sq" in optimizer.state[p] for p in ours.parameters())


def test_dense_base_adamwspam_is_bit_identical_to_adamwspam():
    ours, theirs = tiny_model(), tiny_model()
    data = batches(12)
    spam = {"theta": 3.0, "interval": 5, "warmup_steps": 2, "clip_delay": 2}
    train(ours, AdamWPrune(ours.parameters(), lr=1e-2, eps=1e-6, weight_decay=0.1,
                           base="adamwspam", **{f"spam_{k}": v for k, v in spam.items()}),
          data)  # fmt: skip
    train(theirs, AdamWSPAM(theirs.parameters(), lr=1e-2, weight_decay=0.1, **spam), data)
    assert_same_parameters(ours, theirs)


# -- scores ---------------------------------------------------------------------------------------


def test_state_scores_by_hand():
    w = torch.tensor([2.0, -1.0, 0.5])
    m = torch.tensor([0.5, -0.25, 0.0])
    v = torch.tensor([4.0, 1.0, 16.0])
    state = {"exp_avg": m, "exp_avg_sq": v}
    eps = 0.0
    assert torch.allclose(importance_score("hybrid", w, state, None, eps),
                          torch.tensor([4 * 0.5 / 2, 1 * 0.25 / 1, 0.0]))  # fmt: skip
    assert torch.allclose(importance_score("variance", w, state, None, eps),
                          torch.tensor([2 * 4**0.25, 1.0, 0.5 * 2]))  # fmt: skip
    assert torch.allclose(importance_score("momentum", w, state, None, eps),
                          torch.tensor([2 * 0.5**0.5, 0.5, 0.0]))  # fmt: skip
    assert torch.equal(importance_score("magnitude", w, state, None, eps), w.abs())
    # Without optimizer state every score falls back to |w|.
    assert torch.equal(importance_score("hybrid", w, {}, None, eps), w.abs())
    # The inputs are not modified.
    assert torch.equal(m, torch.tensor([0.5, -0.25, 0.0]))


# -- pruning --------------------------------------------------------------------------------------


def run_pruning(model, optimizer, steps, after_step=None):
    train(model, optimizer, batches(steps), after_step)


@pytest.mark.parametrize("base", ["adam", "adamw", "adamwadv", "adamwspam"])
@pytest.mark.parametrize("score", ["hybrid", "variance", "momentum", "magnitude"])
def test_exact_sparsity_at_schedule_end_and_pruned_state_stays_zero(base, score):
    model = tiny_model()
    prunable = [p for _, p in prunable_parameters(model)]
    optimizer = AdamWPrune(groups(model, 0.1), lr=1e-2, base=base, score=score, sparsity=0.7,
                           start_step=2, end_step=10, interval=3, prunable=prunable,
                           spam_interval=4, spam_clip_delay=1)  # fmt: skip
    total = sum(p.numel() for p in prunable)
    zero_sets = []

    def check():
        zeros = [(p == 0) for p in prunable]
        if zero_sets:  # monotone: what was pruned stays pruned
            assert all(torch.all(old <= new) for old, new in zip(zero_sets[-1], zeros, strict=True))
        zero_sets.append(zeros)
        for p, z in zip(prunable, zeros, strict=True):
            for key, value in optimizer.state[p].items():
                if key != "step":
                    assert torch.all(value[z] == 0), key

    run_pruning(model, optimizer, 16, after_step=check)  # 6 steps past the schedule end
    pruned = sum(int((p == 0).sum()) for p in prunable)
    assert pruned == total - round(0.3 * total)
    sparsity, per_layer = measure_sparsity(model)
    assert sparsity == pruned / total
    assert optimizer.pruner.sparsity == 0.7
    # Biases and BatchNorm are never pruned: none of them is zero after training.
    for name, p in model.named_parameters():
        if name not in per_layer:
            assert torch.count_nonzero(p) == p.numel(), name


def test_layerwise_scope_is_exact_per_layer():
    model = tiny_model()
    prunable = [p for _, p in prunable_parameters(model)]
    optimizer = AdamWPrune(model.parameters(), lr=1e-2, sparsity=0.6, start_step=1, end_step=4,
                           interval=1, scope="layerwise", prunable=prunable)  # fmt: skip
    run_pruning(model, optimizer, 6)
    for p in prunable:
        assert int((p == 0).sum()) == p.numel() - round(0.4 * p.numel())


def test_pruned_gradients_are_masked_before_the_step():
    model = tiny_model()
    optimizer = AdamWPrune(model.parameters(), lr=1e-2, sparsity=0.5, start_step=1, end_step=1)
    run_pruning(model, optimizer, 1)
    x, y = batches(1, seed=5)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    conv = model[0].weight
    assert torch.count_nonzero(conv.grad[conv == 0]) > 0  # autograd gives them a gradient ...
    optimizer.step()
    assert torch.count_nonzero(conv.grad[conv == 0]) == 0  # ... that step() zeroes


@pytest.mark.parametrize("base", ["adamw", "adamwspam"])
def test_state_dict_round_trip_mid_schedule_gives_identical_steps(base):
    def make(model):
        return AdamWPrune(groups(model, 0.05), lr=1e-2, base=base, sparsity=0.8, start_step=2,
                          end_step=14, interval=2, spam_interval=5, spam_clip_delay=1,
                          prunable=[p for _, p in prunable_parameters(model)])  # fmt: skip

    data = batches(20)
    model = tiny_model()
    optimizer = make(model)
    train(model, optimizer, data[:7])
    assert 0 < optimizer.pruner.sparsity < 0.8  # mid-schedule
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, data[7:])

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = tiny_model(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = make(resumed)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    assert resumed_optimizer.pruner.step == 7
    train(resumed, resumed_optimizer, data[7:])
    assert_same_parameters(model, resumed)
    assert resumed_optimizer.pruner.sparsity == 0.8


def test_loading_a_checkpoint_of_another_base_is_refused():
    model = tiny_model()
    saved = AdamWPrune(model.parameters(), base="adamwspam").state_dict()
    with pytest.raises(ValueError, match="different base optimizer"):
        AdamWPrune(model.parameters(), base="adamw").load_state_dict(saved)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (-0.1, 0.999)}, "betas[0]"),
        ({"betas": (0.9, 1.0)}, "betas[1]"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"base": "lion"}, "base"),
        ({"score": "taylor"}, "score"),
        ({"schedule": "exponential"}, "schedule"),
        ({"interval": 0}, "interval"),
        ({"sparsity": 0.5, "scope": "channel"}, "scope"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}="):
        AdamWPrune(tiny_model().parameters(), **kwargs)
