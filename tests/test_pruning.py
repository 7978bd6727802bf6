"""The shared pruning machinery: schedule, exact selection, masking, accounting."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision
from optim_helpers import batches, groups, train
from torch import nn

from lib.pruning import (
    Pruner,
    PruningSchedule,
    measure_sparsity,
    prunable_parameters,
    scheduled_sparsity,
    select_pruned,
    state_memory,
)
from optimizers import AdamWPrune, AdamWSPAM, MaskedAdam, MaskedAdamW, MaskedAdamWSPAM, MaskedSGD


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


# -- schedule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cubic", "linear"])
def test_schedule_equals_the_closed_form_at_every_step(kind):
    schedule = PruningSchedule(0.9, start_step=10, end_step=70, interval=7, kind=kind)
    for t in range(0, 100):
        if t <= 10:
            expected = 0.0
        elif t >= 70:
            expected = 0.9
        else:
            p = (t - 10) / 60
            expected = 0.9 * (1 - (1 - p) ** 3) if kind == "cubic" else 0.9 * p
        assert schedule.sparsity_at(t) == pytest.approx(expected, abs=1e-15), t
    updates = [t for t in range(100) if schedule.is_update_step(t)]
    # every `interval` steps from the start, and the end step itself (70 - 10 is not a multiple)
    assert updates == [10, 17, 24, 31, 38, 45, 52, 59, 66, 70]


def test_cubic_is_zhu_gupta_not_the_inverse():
    schedule = PruningSchedule(0.8, start_step=0, end_step=100)
    # Fast early: half-way, 7/8 of the final sparsity (the inverse p^3 would give 1/8).
    assert schedule.sparsity_at(50) == pytest.approx(0.8 * 7 / 8)


def test_degenerate_schedule_prunes_to_the_target_at_its_single_update():
    schedule = PruningSchedule(0.5, start_step=100, end_step=20, interval=50)
    assert [t for t in range(200) if schedule.is_update_step(t)] == [20]
    assert schedule.sparsity_at(19) == 0.0
    assert schedule.sparsity_at(20) == 0.5
    assert PruningSchedule(0.5, start_step=5, end_step=0).is_update_step(1)


# -- exact selection ------------------------------------------------------------------------------


def stable_reference(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The definition: the `count` lowest scores, ties broken by position."""
    order = torch.sort(scores, stable=True).indices
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[order[:count]] = True
    return mask


@pytest.mark.parametrize(
    "name, scores",
    [
        ("gaussian", torch.randn(1_200_000, generator=torch.Generator().manual_seed(0))),
        # few distinct values: huge ties at the threshold
        ("ties", torch.randint(0, 7, (1_100_000,), generator=torch.Generator().manual_seed(1))),
        # sorted data defeats a strided sample; -inf mimics already-pruned weights
        ("sorted", torch.cat([torch.full((300_000,), -torch.inf), torch.arange(900_000.0)])),
        ("constant", torch.ones(600_000)),
        # periodic with the sampling stride: the sample sees only the zeros, so the bracket
        # misses rank k and the exact fallback must run
        ("periodic", torch.where(torch.arange(1_100_000) % 16 == 0, 0.0, torch.rand(1_100_000))),
        ("small", torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0])),
    ],
)
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.7, 0.999, 1.0])
def test_select_pruned_is_exact_with_ties_by_position(name, scores, fraction):
    scores = scores.float()
    count = round(fraction * scores.numel())
    mask = select_pruned(scores, count)
    assert int(mask.sum()) == count
    assert torch.equal(mask, stable_reference(scores, count))


# -- prunable set and measurement -----------------------------------------------------------------


def test_prunable_parameters_of_resnet():
    model = torchvision.models.resnet18(num_classes=10)
    names = [name for name, _ in prunable_parameters(model)]
    assert names[0] == "conv1.weight" and names[-1] == "fc.weight"
    assert "layer1.0.conv1.weight" in names and "layer2.0.downsample.0.weight" in names
    assert not any("bn" in n or n.endswith("bias") or "downsample.1" in n for n in names)
    assert len(names) == 21  # 20 convolutions + the classifier
    dense_ends = [name for name, _ in prunable_parameters(model, keep_ends_dense=True)]
    assert dense_ends == names[1:-1]


def test_measure_sparsity_from_the_weights():
    model = tiny_model()
    with torch.no_grad():
        model[0].weight.view(-1)[:81].zero_()  # 81 of 216
    sparsity, per_layer = measure_sparsity(model)
    assert per_layer == {"0.weight": 81 / 216, "3.weight": 0.0, "8.weight": 0.0}
    assert sparsity == 81 / (216 + 1152 + 160)
    assert measure_sparsity(model, keep_ends_dense=True) == (0.0, {"3.weight": 0.0})


def assert_nm(prunable, n: int, m: int) -> None:
    """Exactly n nonzero in every group of m consecutive weights along the input dimension
    (a conv's input channels at each kernel position); a layer whose input dimension is not
    a multiple of m (the RGB stem) stays dense."""
    grouped = 0
    for p in prunable:
        if p.shape[1] % m:
            assert torch.count_nonzero(p) == p.numel()
            continue
        along_input = p.detach().permute(0, *range(2, p.dim()), 1)  # input dimension last
        counts = (along_input.reshape(-1, m) != 0).sum(dim=1)
        assert torch.all(counts == n), counts.unique()
        grouped += 1
    assert grouped > 0


# -- magnitude and movement with every optimizer --------------------------------------------------

MASKED = {
    "sgd": lambda g, pruner: MaskedSGD(g, lr=0.05, momentum=0.9, pruner=pruner),
    "sgd-nesterov": lambda g, pruner: MaskedSGD(
        g, lr=0.05, momentum=0.9, nesterov=True, pruner=pruner
    ),
    "adam": lambda g, pruner: MaskedAdam(g, lr=1e-2, pruner=pruner),
    "adamw": lambda g, pruner: MaskedAdamW(g, lr=1e-2, pruner=pruner),
    "adamwadv": lambda g, pruner: MaskedAdamW(g, lr=1e-2, amsgrad=True, pruner=pruner),
    "adamwspam": lambda g, pruner: MaskedAdamWSPAM(
        g, lr=1e-2, interval=4, clip_delay=1, warmup_steps=2, pruner=pruner
    ),
}


@pytest.mark.parametrize("optimizer_name", sorted(MASKED))
@pytest.mark.parametrize("method", ["magnitude", "movement"])
@pytest.mark.parametrize("scope", ["global", "layerwise", "1:4"])
def test_methods_prune_exactly_and_keep_weights_and_state_zero(optimizer_name, method, scope):
    """With weight decay and eps in play, a pruned weight, its gradient and its state stay 0.
    `1:4`: the N:M pattern (global scope otherwise), exactly 1 of every 4 kept."""
    model = tiny_model()
    prunable = [p for _, p in prunable_parameters(model)]
    schedule = PruningSchedule(0.75, start_step=2, end_step=9, interval=2)
    pattern = (1, 4) if scope == "1:4" else None
    pruner = Pruner(
        prunable, schedule, score=method, scope="global" if pattern else scope, pattern=pattern
    )
    optimizer = MASKED[optimizer_name](groups(model, 0.1), pruner)

    previous = []

    def check():
        zeros = [p == 0 for p in prunable]
        if previous:
            for old, new in zip(previous, zeros, strict=True):
                assert torch.all(old <= new)  # monotone
        previous[:] = zeros
        for i, (p, z) in enumerate(zip(prunable, zeros, strict=True)):
            for key, value in optimizer.state[p].items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    assert torch.all(value[z] == 0), key
            if pruner.movement_scores is not None:
                assert torch.all(pruner.movement_scores[i][z] == 0)

    train(model, optimizer, batches(14), after_step=check)
    if pattern:
        assert_nm(prunable, *pattern)
    elif scope == "global":
        total = sum(p.numel() for p in prunable)
        assert sum(int((p == 0).sum()) for p in prunable) == total - round(0.25 * total)
    else:
        for p in prunable:
            assert int((p == 0).sum()) == p.numel() - round(0.25 * p.numel())
    assert scheduled_sparsity(optimizer) == 0.75


def test_movement_score_is_minus_the_sum_of_gradient_times_weight():
    model = tiny_model()
    prunable = [p for _, p in prunable_parameters(model)]
    pruner = Pruner(prunable, PruningSchedule(0.5, start_step=50, end_step=60), score="movement")
    optimizer = MaskedSGD(model.parameters(), lr=0.1, pruner=pruner)
    expected = [torch.zeros_like(p) for p in prunable]
    for x, y in batches(3):
        nn.functional.cross_entropy(model(x), y).backward()
        for e, p in zip(expected, prunable, strict=True):
            e -= p.grad * p.detach()  # with the weights the gradient was computed at
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for e, s in zip(expected, pruner.movement_scores, strict=True):
        torch.testing.assert_close(s, e, rtol=1e-6, atol=1e-7)


def test_movement_keeps_the_highest_scores_not_the_largest_weights():
    w = nn.Parameter(torch.tensor([[5.0, 4.0, 0.1, 0.2]]))
    pruner = Pruner([w], PruningSchedule(0.5, start_step=1, end_step=1), score="movement")
    optimizer = MaskedSGD([w], lr=0.0, pruner=pruner)
    # S = -g * w: the two small weights move away from zero, the two large ones towards it.
    w.grad = torch.tensor([[1.0, 1.0, -10.0, -10.0]])
    optimizer.step()
    assert torch.equal(w.detach() != 0, torch.tensor([[False, False, True, True]]))


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamwspam"])
def test_round_trip_mid_schedule_with_movement(optimizer_name):
    def make(model):
        prunable = [p for _, p in prunable_parameters(model)]
        pruner = Pruner(prunable, PruningSchedule(0.8, 2, 12, 2), score="movement")
        return MASKED[optimizer_name](groups(model, 0.05), pruner)

    data = batches(16)
    model = tiny_model()
    optimizer = make(model)
    train(model, optimizer, data[:5])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, data[5:])

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = tiny_model(seed=7)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = make(resumed)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    train(resumed, resumed_optimizer, data[5:])
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    for s, t in zip(optimizer.pruner.movement_scores, resumed_optimizer.pruner.movement_scores,
                    strict=True):  # fmt: skip
        assert torch.equal(s, t)


def test_a_pruning_optimizer_refuses_a_checkpoint_without_pruning_state():
    model = tiny_model()
    plain = torch.optim.AdamW(model.parameters())
    train(model, plain, batches(1))
    pruner = Pruner([model[0].weight], PruningSchedule(0.5, 1, 2))
    with pytest.raises(ValueError, match="no 'pruning' entry"):
        MaskedAdamW(model.parameters(), pruner=pruner).load_state_dict(plain.state_dict())


def test_pruner_must_prune_parameters_of_its_optimizer():
    model, other = tiny_model(), tiny_model()
    pruner = Pruner([other[0].weight], PruningSchedule(0.5, 1, 2))
    with pytest.raises(ValueError, match="^prunable:"):
        MaskedSGD(model.parameters(), lr=0.1, pruner=pruner)


# -- memory accounting ----------------------------------------------------------------------------


def test_state_memory_counts_held_tensors():
    def measured(make_optimizer):
        model = tiny_model()
        optimizer = make_optimizer(model)
        train(model, optimizer, batches(3))
        return state_memory(optimizer, model), model

    prunable_count = 216 + 1152 + 160
    all_count = sum(p.numel() for p in tiny_model().parameters())

    dense, _ = measured(lambda m: torch.optim.AdamW(m.parameters()))
    assert dense == {
        "optimizer_state_bytes": 8 * all_count,
        "pruning_state_bytes": 0,
        "extra_bytes_per_prunable_param": 0.0,
    }

    def prunable_of(m):
        return [p for _, p in prunable_parameters(m)]

    state, _ = measured(lambda m: AdamWPrune(m.parameters(), sparsity=0.5, start_step=1,
                                             end_step=2, prunable=prunable_of(m)))  # fmt: skip
    assert state == dense  # no buffer of any kind beyond AdamW's

    magnitude, _ = measured(lambda m: MaskedAdamW(
        m.parameters(), pruner=Pruner(prunable_of(m), PruningSchedule(0.5, 1, 2))))  # fmt: skip
    assert magnitude == dense

    movement, _ = measured(lambda m: MaskedAdamW(
        m.parameters(), pruner=Pruner(prunable_of(m), PruningSchedule(0.5, 1, 2), "movement")))  # fmt: skip
    assert movement["pruning_state_bytes"] == 4 * prunable_count
    assert movement["extra_bytes_per_prunable_param"] == 4.0

    spam, _ = measured(lambda m: AdamWSPAM(m.parameters()))
    assert spam["extra_bytes_per_prunable_param"] == 0.0

    amsgrad, _ = measured(lambda m: torch.optim.AdamW(m.parameters(), amsgrad=True))
    assert amsgrad["extra_bytes_per_prunable_param"] == 4 * all_count / prunable_count

    # AdamWPrune with AMSGrad (the seed's setting) holds the same third buffer: its
    # "0 extra bytes" holds only with AMSGrad off.
    state_amsgrad, _ = measured(lambda m: AdamWPrune(m.parameters(), amsgrad=True, sparsity=0.5,
                                start_step=1, end_step=2, prunable=prunable_of(m)))  # fmt: skip
    assert state_amsgrad == amsgrad


def test_scheduled_sparsity_is_zero_for_dense_optimizers():
    model = tiny_model()
    assert scheduled_sparsity(torch.optim.SGD(model.parameters(), lr=0.1)) == 0.0
    assert scheduled_sparsity(AdamWPrune(model.parameters())) == 0.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"final_sparsity": 1.0}, "sparsity"),
        ({"final_sparsity": -0.5}, "sparsity"),
        ({"kind": "exp"}, "schedule"),
        ({"interval": 0}, "interval"),
        ({"start_step": -1}, "start_step"),
    ],
)
def test_bad_schedule_arguments_name_the_argument(kwargs, name):
    arguments = {"final_sparsity": 0.5, "start_step": 1, "end_step": 10, **kwargs}
    with pytest.raises(ValueError, match=f"^{name}="):
        PruningSchedule(**arguments)


def test_unknown_score_and_scope_are_refused():
    w = [nn.Parameter(torch.ones(2, 2))]
    with pytest.raises(ValueError, match="^score="):
        Pruner(w, PruningSchedule(0.5, 1, 2), score="snip")
    with pytest.raises(ValueError, match="^scope="):
        Pruner(w, PruningSchedule(0.5, 1, 2), scope="row")


# -- the prunable set of transformers and ConvNeXt ------------------------------------------------


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.VisionTransformer(
        image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16,
        num_classes=10,
    )  # fmt: skip


def tiny_convnext(seed: int = 0) -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(seed)
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=10)


def test_prunable_parameters_of_a_vit_include_the_attention_projections():
    model = tiny_vit()
    names = [name for name, _ in prunable_parameters(model)]
    block = "encoder.layers.encoder_layer_0"
    assert names[0] == "conv_proj.weight" and names[-1] == "heads.head.weight"
    for part in ("self_attention.in_proj_weight", "self_attention.out_proj.weight",
                 "mlp.0.weight", "mlp.3.weight"):  # fmt: skip
        assert f"{block}.{part}" in names
    assert len(names) == 2 + 2 * 4  # patch embedding, 4 matrices per block, classifier
    assert not any("class_token" in n or "pos_embedding" in n or "ln" in n for n in names)
    dense_ends = [name for name, _ in prunable_parameters(model, keep_ends_dense=True)]
    assert dense_ends == names[1:-1]


def test_attention_with_separate_projections_prunes_all_three():
    attention = nn.MultiheadAttention(8, 2, kdim=4, vdim=6)
    names = [name for name, _ in prunable_parameters(attention)]
    assert names == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]


def test_prunable_parameters_of_a_convnext():
    model = tiny_convnext()
    names = [name for name, _ in prunable_parameters(model)]
    # Stem conv; per block a depthwise conv and two Linear; the downsampling conv; classifier.
    assert names[0] == "features.0.0.weight" and names[-1] == "classifier.2.weight"
    assert "features.1.0.block.0.weight" in names and "features.1.0.block.3.weight" in names
    assert len(names) == 1 + 3 + 1 + 3 + 1
    assert not any("layer_scale" in n for n in names)


@pytest.mark.parametrize("make_model", [tiny_vit, tiny_convnext], ids=["vit", "convnext"])
@pytest.mark.parametrize(
    ("optimizer_name", "method", "keep_ends_dense"),
    [
        ("adamw", "magnitude", False),
        ("sgd", "movement", True),
        ("adamwspam", "magnitude", True),
        ("adamwprune", "state", False),
    ],
)
def test_masking_invariants_hold_on_a_vit_and_a_convnext(
    make_model, optimizer_name, method, keep_ends_dense
):
    """The training loop's own builder on a transformer and a ConvNeXt: exact sparsity over
    the whole prunable set, pruned weights and their state stay 0, masks only grow, and no
    weight outside the set (the ends when kept dense, embeddings, norms) is touched."""
    from lib.spec import OptimizerSpec, PruningSpec
    from optimizers.registry import build_optimizer

    model = make_model()
    opt = OptimizerSpec(
        name=optimizer_name, lr=1e-2, weight_decay=0.1, spam_interval=4, spam_clip_delay=1,
        spam_warmup_steps=2, prune_base="adamw",
    )  # fmt: skip
    pruning = PruningSpec(method=method, sparsity=0.75, start_step=2, end_epoch=1, interval=2)
    optimizer = build_optimizer(
        model, opt, pruning, steps_per_epoch=9, keep_ends_dense=keep_ends_dense
    )
    named = prunable_parameters(model, keep_ends_dense)
    prunable = [p for _, p in named]
    assert any("proj" in name or "block" in name for name, _ in named)
    in_set = {id(p) for p in prunable}
    others = {name: p for name, p in model.named_parameters() if id(p) not in in_set}
    zeros_before = {name: p == 0 for name, p in others.items()}  # a ViT's class token starts 0
    previous = []

    def check():
        zeros = [p == 0 for p in prunable]
        if previous:
            assert all(torch.all(old <= new) for old, new in zip(previous, zeros, strict=True))
        previous[:] = zeros
        for p, z in zip(prunable, zeros, strict=True):
            for key, value in optimizer.state[p].items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    assert torch.all(value[z] == 0), key

    train(model, optimizer, batches(14), after_step=check)
    total = sum(p.numel() for p in prunable)
    assert sum(int((p == 0).sum()) for p in prunable) == total - round(0.25 * total)
    # Every kind of layer took its share: attention and MLP weights of a ViT are pruned too.
    for name, p in named:
        assert int((p == 0).sum()) > 0, name
    sparsity, per_layer = measure_sparsity(model, keep_ends_dense)
    assert set(per_layer) == {name for name, _ in named}
    assert sparsity == 1 - round(0.25 * total) / total
    for name, p in others.items():
        assert torch.all((p == 0) <= zeros_before[name]), name  # nothing newly zeroed


# -- N:M semi-structured sparsity -----------------------------------------------------------------


@pytest.mark.parametrize("score", ["hybrid", "variance", "momentum", "magnitude"])
def test_adamwprune_state_pruning_keeps_n_of_every_m(score):
    """AdamWPrune's own state pruning under 2:4: exact pattern, pruned state stays 0."""
    model = tiny_model()
    prunable = [p for _, p in prunable_parameters(model)]
    optimizer = AdamWPrune(
        groups(model, 0.1), lr=1e-2, score=score, sparsity=0.5, start_step=2, end_step=9,
        interval=2, pattern=(2, 4), prunable=prunable,
    )  # fmt: skip
    train(model, optimizer, batches(12))
    assert_nm(prunable, 2, 4)
    for p in prunable:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.all(optimizer.state[p][key][p == 0] == 0), key


def test_nm_keeps_the_highest_scores_of_each_group_along_the_input_dimension():
    weight = nn.Parameter(
        torch.tensor([[4.0, -1.0, 3.0, 2.0, 0.5, 0.25, -8.0, 1.0], [1.0, 2.0, 3.0, 4.0] * 2])
    )
    pruner = Pruner([weight], PruningSchedule(0.5, 0, 0), pattern=(2, 4))
    pruner.update_masks({}, 0.5)
    kept = (weight != 0).int().tolist()
    assert kept == [[1, 0, 1, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1]]
    # A Conv2d groups its input channels at each kernel position, not its kernel window.
    conv = nn.Conv2d(4, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 17.0).view(1, 4, 2, 2))  # channel c: 4c+1..4c+4
    Pruner([conv.weight], PruningSchedule(0.75, 0, 0), pattern=(1, 4)).update_masks({}, 0.75)
    assert torch.equal(conv.weight[0, :3], torch.zeros(3, 2, 2))  # the last channel is kept
    assert torch.count_nonzero(conv.weight[0, 3]) == 4


def test_nm_pattern_fixes_the_sparsity():
    weight = nn.Parameter(torch.ones(4, 8))
    with pytest.raises(ValueError, match=r"pattern=2:4 with sparsity=0.7.*\(M-N\)/M = 0.5"):
        Pruner([weight], PruningSchedule(0.7, 0, 0), pattern=(2, 4))
    with pytest.raises(ValueError, match="1 <= N < M"):
        Pruner([weight], PruningSchedule(0.0, 0, 0), pattern=(4, 4))
