"""The registry: every optimizer x pruning combination from the typed config, as the loop uses it."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lib.pruning import measure_sparsity, prunable_parameters, scheduled_sparsity
from lib.spec import OptimizerSpec, PruningSpec
from optimizers import AdamWPrune, AdamWSPAM, build_optimizer, parameter_groups
from optimizers.entries import BUILTIN as OPTIMIZERS
from optimizers.entries.adamwprune import BASES as PRUNE_BASES
from optimizers.registry import fast_path


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


STEPS_PER_EPOCH = 4
# Pruning from step 2 to the end of epoch 2 (step 8), masks every 2 steps.
PRUNING = {"sparsity": 0.6, "start_step": 2, "end_epoch": 2, "interval": 2}

VALID = [(name, "none") for name in OPTIMIZERS]
VALID += [(name, method) for name in OPTIMIZERS if name != "adamwprune"
          for method in ("magnitude", "movement")]  # fmt: skip
VALID += [("adamwprune", "state")]


def loop_like_train(model, optimizer, steps, scaler=None, clip=1.0):
    """What lib/train does: backward, unscale + clip, (scaler.)step, zero_grad, LambdaLR."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    generator = torch.Generator().manual_seed(5)
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=generator)
        y = torch.randint(0, 10, (4,), generator=generator)
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        if clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return scheduler


@pytest.mark.parametrize("name, method", VALID)
def test_every_valid_combination_is_one_optimizer_that_prunes_inside_step(name, method):
    model = tiny_model()
    spec = OptimizerSpec(name=name)
    pruning = PruningSpec(method=method, **PRUNING)
    optimizer = build_optimizer(model, spec, pruning, steps_per_epoch=STEPS_PER_EPOCH)
    assert isinstance(optimizer, torch.optim.Optimizer)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == spec.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))

    scheduler = loop_like_train(model, optimizer, steps=10)
    sparsity, _ = measure_sparsity(model)
    if method == "none":
        assert sparsity == 0.0 and scheduled_sparsity(optimizer) == 0.0
    else:
        total = sum(p.numel() for _, p in prunable_parameters(model))
        assert sparsity == (total - round(0.4 * total)) / total
        assert scheduled_sparsity(optimizer) == 0.6
    assert scheduler.get_last_lr()[0] == pytest.approx(spec.lr / 11)


def test_the_optimizer_classes_behind_the_names():
    model = tiny_model()

    def build(name, method="none", **fields):
        return build_optimizer(model, OptimizerSpec(name=name, **fields),
                               PruningSpec(method=method, **PRUNING), steps_per_epoch=4)  # fmt: skip

    assert isinstance(build("sgd"), torch.optim.SGD)
    assert build("sgd").param_groups[0]["momentum"] == 0.9
    adam = build("adam")
    assert isinstance(adam, torch.optim.Adam) and not isinstance(adam, torch.optim.AdamW)
    adamwadv = build("adamwadv")
    assert isinstance(adamwadv, torch.optim.AdamW) and adamwadv.param_groups[0]["amsgrad"]
    assert not build("adamw").param_groups[0]["amsgrad"]
    spam = build("adamwspam", spam_theta=50.0, spam_interval=1000, spam_warmup_steps=100)
    assert isinstance(spam, AdamWSPAM)
    assert (spam.clock.theta, spam.clock.interval, spam.clock.warmup_steps) == (50.0, 1000, 100)
    for base in PRUNE_BASES:
        pruned = build("adamwprune", "state", prune_base=base, prune_score="variance")
        assert isinstance(pruned, AdamWPrune) and pruned.base == base
        assert pruned.pruner.score == "variance"
        assert pruned.pruner.schedule.end_step == 2 * 4
    assert build("adamwprune").pruner is None  # pruning none: the dense base optimizer
    assert build("adamw", "magnitude").pruner.score == "magnitude"


def test_weight_decay_never_on_biases_or_normalisation_parameters():
    """ALGORITHMS.md section 6, also for a norm layer whose weight is not 1-D (LayerNorm((H, W)))."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.LayerNorm((8, 8)),
        nn.GroupNorm(2, 4),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )
    decayed, plain = parameter_groups(model, 0.05)
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    expected = {id(model[0].weight), id(model[5].weight)}
    assert {id(p) for p in decayed["params"]} == expected
    assert {id(p) for p in plain["params"]} == {
        id(p) for p in model.parameters() if id(p) not in expected
    }


def test_decay_all_parameters_puts_every_parameter_in_one_decayed_group():
    # The seed's AdamWPrune decayed BatchNorm and biases too (ADAMWPRUNE_DECAY_ALL_PARAMETERS).
    model = tiny_model()
    (group,) = parameter_groups(model, 0.01, decay_all=True)
    assert group["weight_decay"] == 0.01
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]
    spec = OptimizerSpec(name="adamwprune", weight_decay=0.01, decay_all_parameters=True)
    built = build_optimizer(model, spec, PruningSpec(), steps_per_epoch=4)
    assert [g["weight_decay"] for g in built.param_groups] == [0.01]


@pytest.mark.parametrize("name", ["adam", "adamw", "adamwadv", "adamwprune"])
def test_compiled_models_step_on_foreach_not_fused(name):
    # torch.compile can hand back gradients with other strides than their parameters, which
    # torch's fused Adam kernel refuses; the foreach kernel takes any layout.
    model = tiny_model()
    assert fast_path(model) == {"fused": True}
    assert fast_path(model, compiled=True) == {"foreach": True}
    for compiled in (False, True):
        optimizer = build_optimizer(model, OptimizerSpec(name=name), PruningSpec(),
                                    steps_per_epoch=4, compiled=compiled)  # fmt: skip
        group = optimizer.param_groups[0]
        assert (bool(group["fused"]), bool(group["foreach"])) == (not compiled, compiled)


def test_keep_ends_dense_with_nothing_left_to_prune_is_refused():
    # the tiny model has only a stem and a classifier
    with pytest.raises(ValueError, match="^prunable: no parameters to prune"):
        build_optimizer(tiny_model(), OptimizerSpec(name="adamwprune"),
                        PruningSpec(method="state", **PRUNING), steps_per_epoch=4,
                        keep_ends_dense=True)  # fmt: skip


def test_keep_ends_dense_on_a_deeper_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 3, 8, 8))
    optimizer = build_optimizer(model, OptimizerSpec(name="sgd"),
                                PruningSpec(method="magnitude", **PRUNING), steps_per_epoch=4,
                                keep_ends_dense=True)  # fmt: skip
    assert optimizer.pruner.params == [model[1].weight]
    loop_like_train(model, optimizer, steps=9)
    assert torch.count_nonzero(model[0].weight) == model[0].weight.numel()
    assert torch.count_nonzero(model[3].weight) == model[3].weight.numel()
    assert int((model[1].weight == 0).sum()) == 144 - round(0.4 * 144)


@pytest.mark.parametrize(
    "name, method, message",
    [
        ("adamw", "state", "optimizer='adamw' with pruning 'state'"),
        ("sgd", "state", "optimizer='sgd' with pruning 'state'"),
        ("adamwprune", "magnitude", "optimizer 'adamwprune' with pruning 'magnitude'"),
        ("adamwprune", "movement", "optimizer 'adamwprune' with pruning 'movement'"),
        ("lion", "none", "optimizer='lion'"),
        ("adamw", "snip", "pruning method='snip'"),
    ],
)
def test_invalid_combinations_are_refused_by_name(name, method, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(tiny_model(), OptimizerSpec(name=name), PruningSpec(method=method),
                        steps_per_epoch=4)  # fmt: skip


@pytest.mark.parametrize(
    "opt_fields, pruning_fields, name",
    [
        ({"name": "adamwprune", "lr": -1.0}, {}, "lr"),
        ({"name": "adamwprune", "beta1": 1.0}, {}, "betas[0]"),
        ({"name": "adamwspam", "beta2": 1.5}, {}, "betas[1]"),
        ({"name": "adamwprune", "prune_base": "sgd"}, {"method": "state"}, "base"),
        ({"name": "adamwprune", "prune_score": "fisher"}, {"method": "state"}, "score"),
        ({"name": "adamw"}, {"method": "magnitude", "sparsity": 1.0}, "sparsity"),
    ],
)
def test_bad_hyperparameters_name_the_argument(opt_fields, pruning_fields, name):
    pruning = {"sparsity": 0.5, **pruning_fields}
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        build_optimizer(tiny_model(), OptimizerSpec(**opt_fields), PruningSpec(**pruning),
                        steps_per_epoch=4)  # fmt: skip


@pytest.mark.parametrize("name, method", [("adamwprune", "state"), ("adamwspam", "movement"),
                                          ("sgd", "magnitude")])  # fmt: skip
def test_checkpoint_resume_through_the_registry_is_bit_identical(name, method):
    def build(model):
        return build_optimizer(model, OptimizerSpec(name=name, prune_base="adamwspam"),
                               PruningSpec(method=method, **PRUNING), steps_per_epoch=4)  # fmt: skip

    model = tiny_model()
    optimizer = build(model)
    loop_like_train(model, optimizer, steps=5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    loop_like_train(model, optimizer, steps=6)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = tiny_model(seed=9)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = build(resumed)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    loop_like_train(resumed, resumed_optimizer, steps=6)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name, method", [("adamwprune", "state"), ("adamw", "movement")])
def test_grad_scaler_unscales_before_the_pruner_sees_gradients(name, method):
    """Fused torch Adams let GradScaler skip unscaling; pruning optimizers must not."""
    model = tiny_model()
    optimizer = build_optimizer(model, OptimizerSpec(name=name),
                                PruningSpec(method=method, **PRUNING), steps_per_epoch=4)  # fmt: skip
    assert not getattr(optimizer, "_step_supports_amp_scaling", False)
    reference = tiny_model()
    reference_optimizer = build_optimizer(reference, OptimizerSpec(name=name),
                                          PruningSpec(method=method, **PRUNING),
                                          steps_per_epoch=4)  # fmt: skip
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    loop_like_train(model, optimizer, steps=9, scaler=scaler, clip=0.0)
    loop_like_train(reference, reference_optimizer, steps=9, clip=0.0)
    # A power-of-two loss scale unscales exactly: same weights, same masks, same scores.
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)
