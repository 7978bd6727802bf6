"""The shared training loop on CPU: every optimizer x pruning method, resume, failures."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import lib.train
from lib.metrics import read_metrics
from lib.pruning import layer_macs
from lib.spec import TrainSpec
from lib.train import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    METRICS_FILE,
    RunError,
    RunInterrupted,
    configure_determinism,
    lr_factor,
    main,
    train,
)
from models.resnet import build_model

REPO = Path(__file__).resolve().parent.parent

# Fields that measure time or memory: allowed to differ between otherwise identical runs.
VOLATILE_EPOCH_FIELDS = {
    "epoch_seconds",
    "train_seconds",
    "images_per_second",
    "peak_memory_mb",
    "peak_memory_reserved_mb",
    "device_memory_used_mb",
}
VOLATILE_SUMMARY_FIELDS = {
    "total_seconds",
    "peak_memory_mb",
    "training_seconds",
    "time_to_target_seconds",
}

EPOCH_FIELDS = {
    "epoch",
    "train_loss",
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top5",
    "sparsity",
    "sparsity_per_layer",
    "parameters_nonzero",
    "macs_nonzero",
    "scheduled_sparsity",
    "lr",
    "epoch_seconds",
    "images_per_second",
    "peak_memory_mb",
    "memory_kind",
}


def comparable(doc: dict) -> dict:
    """The parts of a metrics document that must be identical between equivalent runs."""
    epochs = [{k: v for k, v in e.items() if k not in VOLATILE_EPOCH_FIELDS} for e in doc["epochs"]]
    summary = {k: v for k, v in doc["summary"].items() if k not in VOLATILE_SUMMARY_FIELDS}
    return {"epochs": epochs, "summary": summary, "state_memory": doc["state_memory"]}


# 3 epochs x 3 steps with pruning that ends in epoch 2: the resumed part has to restore the
# optimizer's pruning state, the LR schedule and the data order to match.
RESUME_OVERRIDES = {
    "train": {"epochs": 3, "max_steps_per_epoch": 3},
    "data": {"synthetic_train_size": 24},
    "optimizer": {"name": "adamwprune", "prune_base": "adamw"},
    "pruning": {"method": "state", "sparsity": 0.5, "start_step": 2, "end_epoch": 2, "interval": 2},
}


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """One intra-op thread: with two OpenMP threads on a 2-core machine that other processes
    also use, steps slow down ten-fold unpredictably; one thread keeps the tests' time steady.
    Results only need to be identical between runs with the same thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_spec):
    """One uninterrupted run that the resume tests must reproduce."""
    spec = tiny_spec(tmp_path_factory.mktemp("reference"), **RESUME_OVERRIDES)
    return train(spec)


# -- every optimizer x pruning method ------------------------------------------------------------

COMBINATIONS = [
    (opt, {}, method)
    for opt in ("sgd", "adam", "adamw", "adamwadv", "adamwspam")
    for method in ("none", "magnitude", "movement")
] + [
    ("adamwprune", {"prune_base": "adamw"}, "none"),
    *[("adamwprune", {"prune_base": base}, "state") for base in ("adam", "adamw", "adamwadv")],
    ("adamwprune", {"prune_base": "adamwspam", "prune_score": "variance"}, "state"),
]


@pytest.mark.parametrize(("optimizer", "options", "method"), COMBINATIONS)
def test_every_optimizer_and_pruning_method_writes_valid_metrics(
    tiny_spec, tmp_path, optimizer, options, method
):
    pruned = method != "none"
    spec = tiny_spec(
        tmp_path,
        train={"epochs": 1, "max_steps_per_epoch": 2, "checkpoint": False},
        optimizer={"name": optimizer, **options},
        pruning={"method": method, "sparsity": 0.5 if pruned else 0.0},
    )
    doc = train(spec)
    on_disk = read_metrics(Path(spec.out_dir) / METRICS_FILE)
    assert on_disk == json.loads(json.dumps(doc))
    assert doc["summary"]["status"] == "completed", doc["summary"]["error"]
    assert doc["run_id"] == spec.run_id
    assert doc["identity"]["optimizer"] == optimizer
    assert doc["identity"]["pruning"] == method
    [epoch] = doc["epochs"]
    assert EPOCH_FIELDS <= set(epoch)
    assert all(math.isfinite(epoch[k]) for k in ("train_loss", "test_loss", "lr"))
    assert 0.0 <= epoch["test_top1"] <= epoch["test_top5"] <= 100.0
    assert doc["model_info"]["parameters"] == 11_173_962  # resnet18, cifar stem, 10 classes
    assert doc["model_info"]["prunable_parameters"] > 0
    info, summary = doc["model_info"], doc["summary"]
    assert info["parameters_total"] == 11_173_962
    # Against torch's own count of the dense model at the run's image size (FLOPs = 2 MACs).
    dense = build_model(spec.model, 10, spec.data.image_size).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        dense(torch.zeros(1, 3, spec.data.image_size, spec.data.image_size))
    assert info["macs_dense"] == counter.get_total_flops() // 2
    # macs_nonzero: each layer's MACs scaled by the density the epoch record measured.
    macs = layer_macs(dense, spec.data.image_size)
    density = {name: 1.0 - epoch["sparsity_per_layer"].get(name, 0.0) for name in macs}
    expected = sum(m * density[name] for name, m in macs.items())
    assert epoch["macs_nonzero"] == pytest.approx(expected, rel=1e-6)
    assert epoch["parameters_nonzero"] <= info["parameters_total"]
    assert summary["compression_ratio"] == info["parameters_total"] / epoch["parameters_nonzero"]
    assert summary["theoretical_speedup"] == info["macs_dense"] / epoch["macs_nonzero"]
    assert doc["state_memory"]["optimizer_state_bytes"] > 0 or optimizer == "sgd"
    if pruned:
        # Pruning ends with the first epoch: the measured sparsity is the target.
        assert epoch["sparsity"] == pytest.approx(0.5, abs=1e-3)
        # Half the prunable weights gone: about 2x in parameters; fewer MACs too (how many
        # depends on where a global threshold pruned: at 8 px the late layers cost little).
        assert 1.9 < summary["compression_ratio"] < 2.0
        assert summary["theoretical_speedup"] > 1.05
        assert doc["summary"]["best_top1"] is not None
    else:
        assert epoch["sparsity"] < 0.01
        assert summary["compression_ratio"] < 1.01 and summary["theoretical_speedup"] < 1.01
    assert not (Path(spec.out_dir) / LAST_CHECKPOINT).exists()  # checkpoint disabled


# -- checkpoints and resume -----------------------------------------------------------------------


def test_checkpoints_load_with_weights_only(reference_run):
    out_dir = Path(reference_run["spec"]["out_dir"])
    last = torch.load(out_dir / LAST_CHECKPOINT, weights_only=True)
    best = torch.load(out_dir / BEST_CHECKPOINT, weights_only=True)
    assert last["epoch"] == 3
    assert last["epochs"] == read_metrics(out_dir / METRICS_FILE)["epochs"]
    assert {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(last)
    assert best["epoch"] == reference_run["summary"]["best_epoch"]
    assert best["record"]["test_top1"] == reference_run["summary"]["best_top1"]
    # Best counts only epochs at the target sparsity: epoch 1 is still being pruned.
    assert reference_run["epochs"][0]["sparsity"] < 0.5 - 1e-3
    assert reference_run["summary"]["target_reached_epoch"] == 2


def test_interrupt_mid_epoch_then_resume_matches_uninterrupted_run(
    tiny_spec, tmp_path, monkeypatch, reference_run
):
    spec = tiny_spec(tmp_path, **RESUME_OVERRIDES)
    real_step = lib.train._Run.to_device
    calls = {"n": 0}

    def step_with_sigterm_in_epoch_2(self, images, targets):
        calls["n"] += 1
        if calls["n"] == 3 + 2 + 2:  # epoch 1: 3 train + 2 test batches; then epoch 2 step 2
            signal.raise_signal(signal.SIGTERM)
        return real_step(self, images, targets)

    monkeypatch.setattr(lib.train._Run, "to_device", step_with_sigterm_in_epoch_2)
    with pytest.raises(RunInterrupted) as interrupted:
        train(spec)
    assert interrupted.value.exit_code == 143
    saved = read_metrics(Path(spec.out_dir) / METRICS_FILE)
    assert saved["summary"]["status"] == "running"
    assert [e["epoch"] for e in saved["epochs"]] == [1]
    assert torch.load(Path(spec.out_dir) / LAST_CHECKPOINT, weights_only=True)["epoch"] == 1
    # The handler is gone again: the next SIGTERM would not be swallowed.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    monkeypatch.undo()
    resumed = train(spec)
    assert resumed["summary"]["status"] == "completed"
    assert comparable(resumed) == comparable(reference_run)


def test_sigterm_to_the_cli_exits_143_and_a_relaunch_finishes_identically(
    tiny_spec, tmp_path, reference_run
):
    spec = tiny_spec(tmp_path, **RESUME_OVERRIDES)
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True)
    run_json = out_dir / "run.json"
    run_json.write_text(spec.to_json())
    child = subprocess.Popen(
        [sys.executable, "-m", "lib.train", str(run_json)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Same intra-op thread count as this process, or the float sums could differ.
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            try:
                if read_metrics(out_dir / METRICS_FILE)["epochs"]:
                    break
            except Exception:  # noqa: BLE001 - not written yet
                pass
            time.sleep(0.02)
        child.send_signal(signal.SIGTERM)
        output, _ = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 143, output
    assert "SIGTERM" in output
    saved = read_metrics(out_dir / METRICS_FILE)
    assert saved["summary"]["status"] == "running"
    assert 1 <= len(saved["epochs"]) < 3

    resumed = train(spec)
    assert comparable(resumed) == comparable(reference_run)


def test_completed_run_is_returned_without_training(reference_run, monkeypatch):
    spec = lib.train.RunSpec.from_dict(reference_run["spec"])

    def no_training(*args, **kwargs):
        raise AssertionError("a completed run must not train again")

    monkeypatch.setattr(lib.train, "_Run", no_training)
    assert train(spec) == json.loads(json.dumps(reference_run))


def test_results_of_another_configuration_are_not_overwritten(reference_run):
    spec = lib.train.RunSpec.from_dict(reference_run["spec"])
    other = lib.train.RunSpec.from_dict(
        {**spec.to_dict(), "optimizer": {**spec.to_dict()["optimizer"], "lr": 0.5}}
    )
    metrics = Path(spec.out_dir) / METRICS_FILE
    before = metrics.read_bytes()
    with pytest.raises(RunError, match="different"):
        train(other)
    assert metrics.read_bytes() == before


def test_checkpoint_of_another_configuration_is_refused(tiny_spec, tmp_path):
    spec = tiny_spec(tmp_path, train={"epochs": 2, "max_steps_per_epoch": 1})
    train(tiny_spec(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 1}))
    (Path(spec.out_dir) / METRICS_FILE).unlink()  # e.g. the runner moved a corrupt one aside
    with pytest.raises(RunError, match="checkpoint_last.pt belongs to a different configuration"):
        train(spec)
    assert not (Path(spec.out_dir) / METRICS_FILE).exists()


def test_checkpoint_written_before_an_option_existed_still_resumes(tiny_spec, tmp_path):
    """A field added to RunSpec after a checkpoint was written takes its default: an upgrade
    of the project must not make every unfinished run 'a different configuration'."""
    spec = tiny_spec(tmp_path, train={"epochs": 2, "max_steps_per_epoch": 1})
    train(tiny_spec(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 1}))
    last = Path(spec.out_dir) / "checkpoint_last.pt"
    checkpoint = torch.load(last, weights_only=True)
    # as an older version wrote it (identity built with the one-epoch spec's fields): drop one
    # field the current TrainSpec has, and make it match the two-epoch spec otherwise
    identity = spec.identity()
    dropped = identity["train"].pop("tf32")
    assert dropped == TrainSpec().tf32, "the dropped field must be at its default here"
    checkpoint["identity"] = identity
    torch.save(checkpoint, last)
    (Path(spec.out_dir) / METRICS_FILE).unlink()
    doc = train(spec)
    assert doc["summary"]["status"] == "completed"
    assert [e["epoch"] for e in doc["epochs"]] == [1, 2]
    # a field this version does not know is still a different configuration
    checkpoint["identity"] = {**identity, "train": {**identity["train"], "from_the_future": 1}}
    torch.save(checkpoint, last)
    (Path(spec.out_dir) / METRICS_FILE).unlink()
    with pytest.raises(RunError, match="different configuration"):
        train(spec)


# -- failures -------------------------------------------------------------------------------------


def test_nan_loss_stops_the_run_as_failed(tiny_spec, tmp_path, monkeypatch):
    real_build = lib.train.build_model
    forward_calls = {"n": 0}

    def build_model_that_diverges(spec, num_classes, image_size):
        model = real_build(spec, num_classes, image_size)

        def poison(module, inputs, output):
            forward_calls["n"] += 1
            # Epoch 2 step 1: after setup's one image that counts MACs (lib.pruning.layer_macs)
            # and epoch 1's 4 train + 2 test batches.
            if forward_calls["n"] == 8:
                return output * float("nan")
            return None

        model.fc.register_forward_hook(poison)
        return model

    monkeypatch.setattr(lib.train, "build_model", build_model_that_diverges)
    spec = tiny_spec(tmp_path, train={"epochs": 3}, data={"synthetic_val_size": 16})
    doc = train(spec)
    assert doc["summary"]["status"] == "failed"
    assert doc["summary"]["error"] == (
        "loss is nan at epoch 2 step 1 (training diverged: lower the learning rate or enable "
        "gradient clipping)"
    )
    assert [e["epoch"] for e in doc["epochs"]] == [1]  # nothing from the diverged epoch
    last = torch.load(Path(spec.out_dir) / LAST_CHECKPOINT, weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert read_metrics(Path(spec.out_dir) / METRICS_FILE) == json.loads(json.dumps(doc))


def test_missing_dataset_exits_1_with_a_one_line_error(tiny_spec, tmp_path, capsys):
    spec = tiny_spec(
        tmp_path,
        model={"stem": "imagenet"},
        data={"name": "imagenet", "data_dir": str(tmp_path / "nowhere")},
    )
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / "run.json").write_text(spec.to_json())
    assert main([str(out_dir / "run.json")]) == 1
    summary = read_metrics(out_dir / METRICS_FILE)["summary"]
    assert summary["status"] == "failed"
    error = summary["error"]
    assert "\n" not in error
    assert str(tmp_path / "nowhere" / "imagenet" / "train") in error
    assert error in capsys.readouterr().out
    assert "Traceback" not in capsys.readouterr().err


def test_unreadable_run_json_exits_2(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text("{not json")
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and len(err.strip().splitlines()) == 1


def test_cuda_requested_without_cuda_is_a_failed_run(tiny_spec, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    doc = train(tiny_spec(tmp_path, train={"device": "cuda"}))
    assert doc["summary"]["status"] == "failed"
    assert "'cuda' requested but CUDA is not available" in doc["summary"]["error"]


# -- loop features --------------------------------------------------------------------------------


def test_bf16_autocast_runs_on_cpu_with_the_gpu_defconfigs_kernel_settings(tiny_spec, tmp_path):
    # The fast GPU settings (bf16, TF32 off here to see it applied, determinism off) are applied
    # by the run itself; the flags are process-wide, so they are put back afterwards.
    train_settings = {"precision": "bf16", "epochs": 1, "max_steps_per_epoch": 2}
    train_settings.update(checkpoint=False, tf32=False, deterministic=False)
    spec = tiny_spec(tmp_path, train=train_settings)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        doc = train(spec)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        configure_determinism(True)
    assert doc["summary"]["status"] == "completed", doc["summary"]["error"]
    assert math.isfinite(doc["epochs"][0]["train_loss"])


def test_channels_last_clipping_smoothing_and_step_schedule(tiny_spec, tmp_path):
    spec = tiny_spec(
        tmp_path,
        train={
            "epochs": 3,
            "max_steps_per_epoch": 2,
            "channels_last": True,
            "grad_clip": 1.0,
            "label_smoothing": 0.1,
            "lr_schedule": "step",
            "warmup_epochs": 1,
            "step_size": 1,
            "step_gamma": 0.5,
            "checkpoint": False,
        },
        optimizer={"lr": 0.01},
    )
    doc = train(spec)
    assert doc["summary"]["status"] == "completed", doc["summary"]["error"]
    # LR after the last step of each epoch (6 steps, 2 per epoch, 1 warmup epoch).
    assert [e["lr"] for e in doc["epochs"]] == pytest.approx([0.01, 0.01, 0.005])


def test_same_seed_same_metrics_other_seed_differs(tiny_spec, tmp_path):
    settings = {"train": {"epochs": 1, "max_steps_per_epoch": 2, "checkpoint": False}}
    a = train(tiny_spec(tmp_path / "a", **settings))
    b = train(tiny_spec(tmp_path / "b", **settings))
    c = train(tiny_spec(tmp_path / "c", seed=1, **settings))
    assert comparable(a) == comparable(b)
    assert comparable(a)["epochs"] != comparable(c)["epochs"]


def test_lr_factor_warmup_then_cosine_to_zero():
    spec = TrainSpec(epochs=4, lr_schedule="cosine", warmup_epochs=1)
    factors = [lr_factor(step, spec, steps_per_epoch=10) for step in range(40)]
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert factors[25] == pytest.approx(0.5)  # half-way through the 30 cosine steps
    assert all(a > b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    constant = TrainSpec(lr_schedule="constant")
    assert {lr_factor(s, constant, 10) for s in range(0, 1000, 7)} == {1.0}


@pytest.mark.parametrize("warmup", [0, 2])
def test_lr_factor_cosine_per_epoch_is_torchs_cosine_annealing_stepped_per_epoch(warmup):
    """torchvision's reference schedule: CosineAnnealingLR(T_max=epochs - warmup) stepped once
    an epoch; every step of an epoch trains at that epoch's rate."""
    epochs, steps = 7, 5
    spec = TrainSpec(epochs=epochs, lr_schedule="cosine_epoch", warmup_epochs=warmup)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup)
    for epoch in range(warmup, epochs):
        expected = optimizer.param_groups[0]["lr"]
        for step in range(epoch * steps, (epoch + 1) * steps):
            assert lr_factor(step, spec, steps) == pytest.approx(expected, abs=1e-12)
        optimizer.step()
        reference.step()
    assert [lr_factor(s, spec, steps) for s in range(warmup * steps)] == pytest.approx(
        [(s + 1) / (warmup * steps) for s in range(warmup * steps)]
    )
    assert lr_factor(epochs * steps - 1, spec, steps) > 0  # the last epoch is not at zero


# -- CUDA (skipped cleanly without a GPU) ---------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_grad_scaler_and_cuda_memory_figures(tiny_spec, tmp_path):
    spec = tiny_spec(
        tmp_path,
        train={"device": "cuda", "precision": "fp16", "epochs": 2, "max_steps_per_epoch": 3},
    )
    doc = train(spec)
    assert doc["summary"]["status"] == "completed", doc["summary"]["error"]
    last = torch.load(Path(spec.out_dir) / LAST_CHECKPOINT, weights_only=True)
    assert last["scaler"]["scale"] > 0  # the GradScaler state is checkpointed
    for epoch in doc["epochs"]:
        assert epoch["memory_kind"] == "cuda_allocated"
        assert 0 < epoch["peak_memory_mb"] <= epoch["peak_memory_reserved_mb"]
    assert doc["environment"]["device"] == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_channels_last_adamwprune_on_cuda_keeps_exact_masks(tiny_spec, tmp_path):
    """The defconfigs' GPU setting (bf16 autocast, channels_last) with AdamWPrune's state
    pruning: the run completes, and after the mask updates exactly the selected count of
    prunable weights is zero at every later epoch end (bf16 never touches the fp32 weights)."""
    spec = tiny_spec(
        tmp_path,
        train={
            "device": "cuda",
            "precision": "bf16",
            "channels_last": True,
            "deterministic": False,
            "epochs": 3,
            "max_steps_per_epoch": 4,
        },
        optimizer={"name": "adamwprune"},
        pruning={"method": "state", "sparsity": 0.5},
    )
    doc = train(spec)
    assert doc["summary"]["status"] == "completed", doc["summary"]["error"]
    total = doc["model_info"]["prunable_parameters"]
    for epoch in doc["epochs"]:
        assert epoch["scheduled_sparsity"] == 0.5  # pruning ends within the first epoch
        assert round(epoch["sparsity"] * total) == total - round(0.5 * total)
        assert epoch["memory_kind"] == "cuda_allocated" and epoch["peak_memory_mb"] > 0
        assert math.isfinite(epoch["train_loss"])
    assert doc["environment"]["device"] == "cuda"


def test_the_number_of_test_images_evaluated_is_recorded(tiny_spec, tmp_path, capsys):
    """TRAIN_MAX_STEPS_PER_EPOCH caps evaluation too: each epoch says on how many images."""
    capped = train(tiny_spec(tmp_path / "capped", train={"epochs": 1, "max_steps_per_epoch": 1}))
    assert capped["model_info"]["test_images"] == 16
    assert capped["epochs"][0]["test_images"] == 8  # one batch of 8 of the 16 test images
    assert "caps evaluation too: 1 of 2 test batches" in capsys.readouterr().out
    whole = train(tiny_spec(tmp_path / "whole", train={"epochs": 1, "max_steps_per_epoch": 4}))
    assert whole["epochs"][0]["test_images"] == whole["model_info"]["test_images"] == 16


# -- baselines: random and layer-wise magnitude pruning -------------------------------------------


def test_random_and_layerwise_baselines_reach_their_targets(tiny_spec, tmp_path):
    docs = {}
    for method in ("random", "layermagnitude", "magnitude"):
        spec = tiny_spec(
            tmp_path / method,
            train={"epochs": 1, "max_steps_per_epoch": 2},
            optimizer={"name": "adamw"},
            pruning={"method": method, "sparsity": 0.5, "start_step": 1},
        )
        docs[method] = train(spec)
        assert docs[method]["summary"]["best_top1"] is not None  # the target was reached
    # Layer-wise: every prunable layer at the target; global magnitude: not every layer.
    layerwise = docs["layermagnitude"]["epochs"][-1]["sparsity_per_layer"]
    assert all(abs(s - 0.5) < 0.01 for s in layerwise.values())
    magnitude = docs["magnitude"]["epochs"][-1]["sparsity_per_layer"]
    assert magnitude != layerwise  # one global threshold prunes layers unevenly
    # Random: a global 50 % that ignores magnitude, so layers are pruned alike (about half
    # each, large layers closest) and the kept weights are not the largest ones.
    random_layers = docs["random"]["epochs"][-1]["sparsity_per_layer"]
    assert docs["random"]["epochs"][-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    big = [name for name, s in random_layers.items() if "layer4" in name]
    assert all(abs(random_layers[name] - 0.5) < 0.01 for name in big)
    checkpoint = torch.load(
        Path(docs["random"]["spec"]["out_dir"]) / LAST_CHECKPOINT, weights_only=True
    )
    weight = checkpoint["model"]["layer4.1.conv2.weight"]
    kept = weight[weight != 0].abs()
    assert kept.min() < weight.abs().max() / 100  # small weights kept: not by magnitude


def test_nm_runs_keep_two_of_every_four_weights(tiny_spec, tmp_path):
    from test_pruning import assert_nm

    spec = tiny_spec(
        tmp_path,
        train={"epochs": 1, "max_steps_per_epoch": 2},
        optimizer={"name": "adamwprune", "prune_base": "adamw"},
        pruning={"method": "state", "sparsity": 0.5, "start_step": 1, "nm_n": 2, "nm_m": 4},
    )
    doc = train(spec)
    assert doc["summary"]["best_top1"] is not None  # measured 50 % (the 3-channel stem aside)
    model = torch.load(Path(spec.out_dir) / LAST_CHECKPOINT, weights_only=True)["model"]
    names = doc["epochs"][-1]["sparsity_per_layer"]
    assert_nm([model[name] for name in names], 2, 4)
