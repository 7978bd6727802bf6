"""The seed's upstream pruning semantics as options (issue 28), each checked step by step
against a small independent re-implementation of the upstream update on a toy model.

The reference below is written from the description of upstream's baseline pruners (issue 28,
docs/reproducing.md): float masks over the Conv2d/Linear weights, rebuilt from scratch every
`frequency`-th step while the linear target is above 0 (`k = int(s * N)`, threshold the k-th
smallest score, keep `score > threshold`), applied to the weights after every optimizer step
and to nothing else; the "movement" score is `w * (w - w0)` with `w0` the weights when the
pruner was made.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from optim_helpers import batches
from torch import nn

from lib.pruning import Pruner, PruningSchedule, prunable_parameters
from lib.spec import OptimizerSpec, PruningSpec
from optimizers import MaskedAdamW
from optimizers.registry import build_optimizer

FREQUENCY, START, END, SPARSITY = 5, 10, 40, 0.6


def toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


class UpstreamReference:
    """Upstream's baseline pruner, re-implemented from its description (not this project's
    code): float masks, kthvalue threshold, masks applied to the weights only."""

    def __init__(self, model: nn.Module, displacement: bool):
        self.layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.masks = [torch.ones_like(m.weight) for m in self.layers]
        self.w0 = [m.weight.detach().clone() for m in self.layers]
        self.displacement = displacement
        self.step = 0

    def sparsity(self) -> float:
        if self.step < START:
            return 0.0
        if self.step >= END:
            return SPARSITY
        return SPARSITY * (self.step - START) / (END - START)

    def score(self, i: int) -> torch.Tensor:
        w = self.layers[i].weight.detach()
        return w * (w - self.w0[i]) if self.displacement else w.abs()

    def step_pruning(self) -> None:
        self.step += 1
        if self.step % FREQUENCY == 0 and self.sparsity() > 0.0:
            scores = [self.score(i) for i in range(len(self.layers))]
            flat = torch.cat([s.flatten() for s in scores])
            k = int(self.sparsity() * flat.numel())
            if k > 0:
                threshold = torch.kthvalue(flat, k).values
                self.masks = [(s > threshold).float() for s in scores]
        with torch.no_grad():
            for layer, mask in zip(self.layers, self.masks, strict=True):
                layer.weight.mul_(mask)


def adamw_kwargs() -> dict:
    return {"lr": 1e-2, "weight_decay": 5e-4, "amsgrad": True, "foreach": False}


def run_both(displacement: bool, steps: int = 60):
    """The reference and this project's Pruner (both upstream options on), step by step."""
    data = batches(steps, seed=3)
    ref_model, our_model = toy(), toy()
    ref_opt = torch.optim.AdamW(ref_model.parameters(), **adamw_kwargs())
    reference = UpstreamReference(ref_model, displacement)
    prunable = [p for _, p in prunable_parameters(our_model)]
    schedule = PruningSchedule(SPARSITY, START, END, FREQUENCY, "linear")
    pruner = Pruner(
        prunable,
        schedule,
        score="displacement" if displacement else "magnitude",
        rebuild=True,
        weights_only=True,
    )
    our_opt = MaskedAdamW(our_model.parameters(), pruner=pruner, **adamw_kwargs())
    history = []
    for x, y in data:
        for model, opt in ((ref_model, ref_opt), (our_model, our_opt)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        reference.step_pruning()
        ref_masks = [m.bool() for m in reference.masks]
        history.append(
            (
                [p.detach().clone() for p in ref_model.parameters()],
                [p.detach().clone() for p in our_model.parameters()],
                ref_masks,
                [m.clone() for m in pruner.masks],
            )
        )
    return history, our_opt, our_model


@pytest.mark.parametrize("displacement", [False, True], ids=["magnitude", "displacement"])
def test_upstream_options_match_the_reference_step_by_step(displacement):
    history, _, _ = run_both(displacement)
    pruned_any = False
    for step, (ref_w, our_w, ref_m, our_m) in enumerate(history, start=1):
        for a, b in zip(ref_m, our_m, strict=True):
            assert torch.equal(a, b), f"masks differ at step {step}"
        for a, b in zip(ref_w, our_w, strict=True):
            assert torch.equal(a, b), f"weights differ at step {step}"
        pruned_any = pruned_any or any(not m.all() for m in our_m)
    assert pruned_any
    final = torch.cat([m.flatten() for m in history[-1][3]])
    assert (~final).sum().item() == int(SPARSITY * final.numel())


def test_rebuilt_masks_let_pruned_weights_regrow():
    """Non-monotone, as upstream: some weight pruned at one update is kept at a later one,
    also after the ramp (masks keep being rebuilt until the end of training)."""
    history, _, _ = run_both(displacement=True)
    masks = [torch.cat([m.flatten() for m in entry[3]]) for entry in history]
    regrown = [
        step for step in range(1, len(masks)) if bool(((~masks[step - 1]) & masks[step]).any())
    ]
    assert regrown, "no pruned weight ever came back"
    assert max(regrown) + 1 > END, "masks stopped changing at the end of the ramp"


def test_the_default_pruner_stays_monotone_and_frozen_after_the_ramp():
    model = toy()
    prunable = [p for _, p in prunable_parameters(model)]
    pruner = Pruner(prunable, PruningSchedule(SPARSITY, START, END, FREQUENCY, "linear"))
    opt = MaskedAdamW(model.parameters(), pruner=pruner, **adamw_kwargs())
    previous = None
    for x, y in batches(60, seed=3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        zeros = torch.cat([(p == 0).flatten() for p in prunable])
        if previous is not None:
            assert bool((zeros | ~previous).all()), "a pruned weight came back"
        previous = zeros


def test_weights_only_leaves_the_state_of_pruned_weights_alive():
    _, opt, model = run_both(displacement=False)
    prunable = [p for _, p in prunable_parameters(model)]
    pruned_moments = [
        opt.state[p]["exp_avg"][~mask] for p, mask in zip(prunable, opt.pruner.masks, strict=True)
    ]
    assert any(bool((m != 0).any()) for m in pruned_moments)
    assert all(
        bool((p[~mask] == 0).all()) for p, mask in zip(prunable, opt.pruner.masks, strict=True)
    )


def test_the_state_bytes_are_the_buffers_upstream_held():
    model = toy()
    prunable = [p for _, p in prunable_parameters(model)]
    n = sum(p.numel() for p in prunable)
    schedule = PruningSchedule(SPARSITY, START, END, FREQUENCY, "linear")
    assert Pruner(prunable, schedule, score="movement").state_bytes() == 4 * n
    assert Pruner(prunable, schedule, score="magnitude").state_bytes() == 0
    upstream = Pruner(prunable, schedule, score="displacement", rebuild=True, weights_only=True)
    assert upstream.state_bytes() == 4 * n + n  # w0 (fp32) and the bool mask
    magnitude = Pruner(prunable, schedule, score="magnitude", rebuild=True, weights_only=True)
    assert magnitude.state_bytes() == n


def test_a_checkpoint_resumes_the_upstream_pruner_exactly():
    history, opt, model = run_both(displacement=True, steps=25)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    data = batches(10, seed=9)

    def resume():
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        fresh = toy(seed=5)  # other initial weights: w0 must come from the checkpoint
        fresh.load_state_dict(saved["model"])
        prunable = [p for _, p in prunable_parameters(fresh)]
        schedule = PruningSchedule(SPARSITY, START, END, FREQUENCY, "linear")
        pruner = Pruner(prunable, schedule, score="displacement", rebuild=True, weights_only=True)
        o = MaskedAdamW(fresh.parameters(), pruner=pruner, **adamw_kwargs())
        o.load_state_dict(saved["opt"])
        return fresh, o

    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    fresh, o = resume()
    for x, y in data:
        o.zero_grad()
        nn.functional.cross_entropy(fresh(x), y).backward()
        o.step()
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_without_the_upstream_buffers_is_refused():
    model = toy()
    prunable = [p for _, p in prunable_parameters(model)]
    schedule = PruningSchedule(SPARSITY, START, END, FREQUENCY, "linear")
    plain = Pruner(prunable, schedule, score="magnitude")
    upstream = Pruner(prunable, schedule, score="magnitude", rebuild=True)
    with pytest.raises(ValueError, match="masks present in only one"):
        upstream.load_state_dict(plain.state_dict())


def test_the_spec_options_reach_the_pruner():
    model = toy()
    opt = OptimizerSpec(name="adamw", lr=1e-3, weight_decay=5e-4)
    spec = PruningSpec(
        method="movement",
        sparsity=0.5,
        schedule="linear",
        start_step=2,
        end_epoch=1,
        interval=2,
        upstream_score=True,
        rebuild_masks=True,
        mask_weights_only=True,
    )
    optimizer = build_optimizer(model, opt, spec, steps_per_epoch=10)
    pruner = optimizer.pruner
    assert (pruner.score, pruner.rebuild, pruner.weights_only) == ("displacement", True, True)
    plain = build_optimizer(
        toy(), opt, PruningSpec(method="movement", sparsity=0.5), steps_per_epoch=10
    )
    assert (plain.pruner.score, plain.pruner.rebuild, plain.pruner.weights_only) == (
        "movement",
        False,
        False,
    )


def test_the_seed_as_run_defconfig_chooses_upstream_semantics_for_its_baseline_only():
    from lib import config as cfg
    from lib.matrix import plan

    def semantics(name):
        kconf = cfg.load_kconfig_with(cfg.DEFCONFIG_DIR / name)
        specs = plan(cfg.config_from_kconfig(kconf, f"defconfigs/{name}"))
        return {
            (s.optimizer.name, s.pruning.method): (
                s.pruning.upstream_score,
                s.pruning.rebuild_masks,
                s.pruning.mask_weights_only,
            )
            for s in specs
        }

    seed = semantics("resnet50-adamwprune-seed-as-run")
    assert seed[("adamw", "magnitude")] == (False, True, True)
    assert seed[("adamw", "movement")] == (True, True, True)
    assert seed[("adamwprune", "state")] == (False, False, False)
    fair = semantics("resnet50-adamwprune")
    assert set(fair.values()) == {(False, False, False)}


def test_a_tiny_run_with_the_upstream_options_trains_and_records_their_bytes(tiny_spec, tmp_path):
    from lib.train import train

    spec = tiny_spec(
        tmp_path,
        train={"epochs": 1, "max_steps_per_epoch": 2},
        pruning={
            "method": "movement",
            "sparsity": 0.5,
            "upstream_score": True,
            "rebuild_masks": True,
            "mask_weights_only": True,
        },
    )
    doc = train(spec)
    assert doc["summary"]["status"] == "completed", doc["summary"]["error"]
    assert doc["epochs"][0]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    prunable = doc["model_info"]["prunable_parameters"]
    # w0 in fp32 and a bool mask: what the report shows as 5.00 B/prunable param.
    assert doc["state_memory"]["pruning_state_bytes"] == 5 * prunable
    saved = torch.load(Path(spec.out_dir) / "checkpoint_last.pt", weights_only=True)
    assert {"masks", "initial_weights"} <= set(saved["optimizer"]["pruning"])


@pytest.mark.parametrize("upstream", ["PRUNING_REBUILD_MASKS", "PRUNING_MASK_WEIGHTS_ONLY"])
def test_nm_sparsity_with_the_upstream_masks_is_refused_in_one_line(tmp_path, upstream):
    """Upstream's rebuilt and weight-only masks are unstructured: N:M with either is refused
    by the config loader in one line naming the option, and by the Pruner itself."""
    from test_config import write_config

    from lib import config as cfg
    from lib.config import ConfigError

    path = write_config(
        tmp_path,
        "demo",
        "CONFIG_SPARSITY_50=y",
        "# CONFIG_SPARSITY_70 is not set",
        "# CONFIG_SPARSITY_90 is not set",
        "CONFIG_PRUNING_NM=y",
        f"CONFIG_{upstream}=y",
    )
    with pytest.raises(ConfigError) as err:
        cfg.load(path)
    message = str(err.value)
    assert "\n" not in message and "CONFIG_PRUNING_NM='y'" in message and upstream in message
    model = toy()
    params = [p for _, p in prunable_parameters(model)]
    schedule = PruningSchedule(final_sparsity=0.5, start_step=1, end_step=2, interval=1)
    with pytest.raises(ValueError, match="N:M"):
        Pruner(params, schedule, pattern=(2, 4), rebuild=upstream == "PRUNING_REBUILD_MASKS",
               weights_only=upstream == "PRUNING_MASK_WEIGHTS_ONLY")  # fmt: skip
