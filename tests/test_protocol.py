"""The measurement protocol (docs/protocol.md): the held-out validation split, selection on it,
time to target and the training-time budget."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from report_helpers import FakeRun, render, row_for, section, table_header, table_rows, write_matrix

import lib.spec
from lib import config as cfg
from lib.config import ConfigError
from lib.data import (
    MNIST_MEAN,
    MNIST_STD,
    DataError,
    build_loaders,
    build_split_loaders,
    held_out_split,
    mnist5k_tensors,
)
from lib.metrics import STATUS_COMPLETED, TIME_BUDGET_STOP, read_metrics, summarize
from lib.spec import DataSpec
from lib.train import train
from scripts.report.stats import kaplan_meier, median_time, performance_profile

# -- the split -----------------------------------------------------------------------------------


def test_held_out_split_is_exact_stratified_disjoint_and_fixed_by_its_seed():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    np.random.default_rng(1).shuffle(labels)
    data = DataSpec(name="cifar10", val_size=20, val_seed=3)
    train_idx, val_idx = held_out_split(labels, data)
    assert len(val_idx) == 20
    assert np.bincount(labels[val_idx]).tolist() == [8, 6, 4, 2]  # each class its share
    assert np.intersect1d(train_idx, val_idx).size == 0
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(100))
    again = held_out_split(labels, data)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train_idx, val_idx), strict=True))
    other = held_out_split(labels, DataSpec(name="cifar10", val_size=20, val_seed=4))
    assert not np.array_equal(other[1], val_idx)
    assert held_out_split(labels, DataSpec(name="cifar10")) is None  # off


def test_a_split_as_large_as_the_training_set_is_refused_in_one_line():
    with pytest.raises(DataError) as err:
        held_out_split(np.zeros(10, dtype=int), DataSpec(name="imagenet", val_size=10))
    message = str(err.value)
    assert "\n" not in message
    assert "CONFIG_DATA_VAL_SIZE=10" in message and "1..9" in message


def _config(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / ".config"
    text = (cfg.DEFCONFIG_DIR / "demo").read_text()
    path.write_text(text + "".join(line + "\n" for line in lines))
    return path


def test_config_reads_the_split_and_refuses_one_too_large(tmp_path):
    config = cfg.load(_config(tmp_path, "CONFIG_DATA_VAL_SIZE=400"))
    assert (config.data.val_size, config.data.val_seed, config.data.val_target) == (400, 0, 95.0)
    off = cfg.load(_config(tmp_path))
    assert (off.data.val_size, off.data.val_target) == (0, 0.0)
    spec = lib.spec.RunSpec(
        matrix="m",
        model=off.model,
        data=off.data,
        train=off.train,
        optimizer=off.optimizers[0],
        pruning=lib.spec.PruningSpec(),
    )
    # Off, the split leaves run.json as it was (tests/test_run_json_stability.py for all).
    assert not {"val_size", "val_seed", "val_target"} & set(spec.to_dict()["data"])
    assert "time_budget_seconds" not in spec.to_dict()["train"]
    with pytest.raises(ConfigError) as err:
        cfg.load(_config(tmp_path, "CONFIG_DATA_VAL_SIZE=4000"))
    message = str(err.value)
    assert "\n" not in message
    assert "CONFIG_DATA_VAL_SIZE='4000'" in message and "1..3999" in message
    with pytest.raises(ConfigError, match="CONFIG_DATA_VAL_TARGET='120'.*0, 100"):
        cfg.load(_config(tmp_path, "CONFIG_DATA_VAL_SIZE=400", 'CONFIG_DATA_VAL_TARGET="120"'))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    mnist5k_tensors(data_dir)
    return data_dir


def _all(loader, epoch=1):
    loader.set_epoch(epoch)
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_mnist5k_validation_comes_out_of_training_and_leaves_the_test_set_alone(
    mnist_dir, tiny_spec, tmp_path
):
    data = {"name": "mnist5k", "data_dir": str(mnist_dir), "image_size": 28}
    off = tiny_spec(tmp_path, data=data, train={"batch_size": 500})
    on = tiny_spec(
        tmp_path, data={**data, "val_size": 400, "val_seed": 7}, train={"batch_size": 500}
    )
    train_off, test_off = build_loaders(off, "cpu")
    loaders = build_split_loaders(on, "cpu")
    assert build_split_loaders(off, "cpu").val is None
    assert loaders.train.num_samples == 3600 and loaders.val.num_samples == 400
    for got, expected in zip(_all(loaders.test), _all(test_off), strict=True):
        assert torch.equal(got, expected)  # the test set is untouched
    tensors = mnist5k_tensors(mnist_dir)
    train_idx, val_idx = held_out_split(tensors["train_labels"].numpy(), on.data)
    images, labels = _all(loaders.val)
    assert torch.equal(labels, tensors["train_labels"][val_idx])
    expected = (tensors["train_images"][val_idx].float() / 255 - MNIST_MEAN) / MNIST_STD
    assert torch.allclose(images[:, 0], expected, atol=1e-5)
    assert torch.equal(_all(loaders.val, 2)[0], images)  # not shuffled, not augmented
    # What trains is the rest: no validation image is ever a training image.
    _, train_labels = _all(loaders.train)
    assert torch.equal(
        torch.bincount(train_labels, minlength=10),
        torch.bincount(tensors["train_labels"][train_idx], minlength=10),
    )


def _image_folder(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{cls}_{i}.JPEG", format="JPEG")


@pytest.mark.parametrize("decode", ["pil", "uint8"])
def test_image_folder_validation_is_read_like_the_test_set(
    tiny_spec, tmp_path, monkeypatch, decode
):
    _image_folder(tmp_path, per_class=5)
    monkeypatch.setitem(lib.spec.DATASET_CLASSES, "imagenet", 2)
    data = {"name": "imagenet", "data_dir": str(tmp_path), "image_size": 16, "decode": decode}
    spec = tiny_spec(
        tmp_path, model={"stem": "imagenet"}, data={**data, "val_size": 4}, train={"batch_size": 4}
    )
    loaders = build_split_loaders(spec, "cpu")
    assert (loaders.train.num_samples, loaders.val.num_samples) == (6, 4)
    assert loaders.test.num_samples == 10
    images, labels = _all(loaders.val, 1)
    assert labels.tolist() == [0, 0, 1, 1]  # two of each class, in file order
    assert torch.equal(_all(loaders.val, 5)[0], images)  # centre crop: no random augmentation
    # The same files, read as the test set reads them, give the same pixels.
    moved = tmp_path / "as_test"
    train_idx, val_idx = held_out_split(np.repeat([0, 1], 5), spec.data)
    files = sorted((tmp_path / "imagenet" / "train").glob("*/*.JPEG"))
    for k, index in enumerate(val_idx):
        target = moved / "imagenet" / "val" / files[index].parent.name / f"{k}.JPEG"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[index].read_bytes())
    (moved / "imagenet" / "train").symlink_to(tmp_path / "imagenet" / "train")
    as_test = tiny_spec(tmp_path, model={"stem": "imagenet"}, data={**data, "data_dir": str(moved)},
                        train={"batch_size": 4})  # fmt: skip
    assert torch.equal(_all(build_loaders(as_test, "cpu")[1])[0], images)


# -- selection and time to target ----------------------------------------------------------------


def _epochs(val, test, sparsity=None, seconds=None, steps=None):
    records = []
    for k, (v, t) in enumerate(zip(val, test, strict=True)):
        record = {"epoch": k + 1, "test_top1": t, "test_top5": 100.0}
        if v is not None:
            record["val_top1"] = v
        record["sparsity"] = sparsity[k] if sparsity else 0.0
        record["train_seconds"] = seconds[k] if seconds else 1.0
        if steps:
            record["train_steps"] = steps[k]
        records.append(record)
    return records


def test_validation_chooses_the_epoch_and_the_test_top1_there_is_reported():
    epochs = _epochs(val=[50.0, 70.0, 65.0], test=[52.0, 60.0, 75.0])
    s = summarize(epochs, 0.0, status=STATUS_COMPLETED)
    assert s["selected_by"] == "validation"
    assert (s["best_epoch"], s["selection_top1"], s["best_top1"]) == (2, 70.0, 60.0)
    assert s["peak_to_final"] == 60.0 - 75.0
    # Without the split the test set chooses, as before: selection_top1 is best_top1.
    alone = summarize(_epochs([None] * 3, [52.0, 60.0, 75.0]), 0.0, status=STATUS_COMPLETED)
    assert alone["selected_by"] == "test"
    assert (alone["best_epoch"], alone["best_top1"], alone["selection_top1"]) == (3, 75.0, 75.0)
    # Only epochs at the target sparsity may be chosen.
    pruned = _epochs([90.0, 70.0, 65.0], [90.0, 60.0, 75.0], sparsity=[0.2, 0.5, 0.5])
    s = summarize(pruned, 0.5, status=STATUS_COMPLETED)
    assert (s["best_epoch"], s["best_top1"]) == (2, 60.0)


def test_time_to_target_counts_training_seconds_and_steps_to_the_first_epoch_reaching_it():
    epochs = _epochs(
        val=[40.0, 80.0, 72.0, 90.0],
        test=[40.0, 80.0, 70.0, 90.0],
        sparsity=[0.1, 0.3, 0.5, 0.5],
        seconds=[2.0, 3.0, 4.0, 5.0],
        steps=[10, 10, 10, 6],
    )
    s = summarize(epochs, 0.5, status=STATUS_COMPLETED, val_target=70.0)
    # Epoch 2 passed 70 % before the target sparsity: a denser network's accuracy.
    assert s["time_to_target_reached"] is True
    assert (s["time_to_target_epoch"], s["time_to_target_steps"]) == (3, 30)
    assert s["time_to_target_seconds"] == 9.0
    assert (s["training_seconds"], s["val_target"]) == (14.0, 70.0)
    never = summarize(epochs, 0.5, status=STATUS_COMPLETED, val_target=95.0)
    assert never["time_to_target_reached"] is False  # censored at training_seconds
    assert never["time_to_target_seconds"] is None and never["time_to_target_epoch"] is None
    none = summarize(epochs, 0.5, status=STATUS_COMPLETED)
    assert none["time_to_target_reached"] is None and none["val_target"] is None
    # Records without train_steps (older files) count model_info's steps per epoch.
    old = summarize(
        _epochs([80.0], [80.0]), 0.0, status=STATUS_COMPLETED, val_target=70.0,
        model_info={"steps_per_epoch": 12},
    )  # fmt: skip
    assert old["time_to_target_steps"] == 12


def test_stopped_by_says_whether_the_budget_or_the_epochs_ended_a_completed_run():
    epochs = _epochs([50.0, 60.0], [50.0, 60.0])
    assert summarize(epochs, 0.0, status=STATUS_COMPLETED)["stopped_by"] == "epochs"
    assert summarize(epochs, 0.0, status="running")["stopped_by"] is None
    epochs[-1][TIME_BUDGET_STOP] = True
    assert summarize(epochs, 0.0, status=STATUS_COMPLETED)["stopped_by"] == "time_budget"


# -- training end to end (tiny) ------------------------------------------------------------------


def test_a_run_with_the_split_selects_on_validation_end_to_end(tiny_spec, tmp_path):
    spec = tiny_spec(tmp_path, data={"val_size": 8, "val_target": 10.0}, train={"epochs": 2})
    doc = train(spec)
    summary = doc["summary"]
    assert summary["status"] == STATUS_COMPLETED and summary["selected_by"] == "validation"
    assert doc["model_info"]["val_images"] == 8 and doc["model_info"]["train_images"] == 24
    epochs = read_metrics(Path(spec.out_dir) / "metrics.json")["epochs"]
    for record in epochs:
        assert record["val_images"] == 8 and record["test_images"] == 16
        assert {"val_loss", "val_top1", "val_top5", "test_loss", "test_top1"} <= set(record)
    chosen = max(epochs, key=lambda r: (r["val_top1"], -r["epoch"]))
    assert summary["best_epoch"] == chosen["epoch"]
    assert summary["best_top1"] == chosen["test_top1"]
    assert summary["selection_top1"] == chosen["val_top1"]
    best = torch.load(Path(spec.out_dir) / "checkpoint_best.pt", weights_only=True)
    assert best["epoch"] == chosen["epoch"]
    reached = [r for r in epochs if r["val_top1"] >= 10.0]
    assert summary["time_to_target_reached"] is bool(reached)
    if reached:
        first = reached[0]["epoch"]
        assert summary["time_to_target_steps"] == 3 * first
        assert summary["time_to_target_seconds"] == pytest.approx(
            sum(r["train_seconds"] for r in epochs[:first])
        )


def test_a_training_time_budget_finishes_the_run_early_and_is_not_a_failure(tiny_spec, tmp_path):
    spec = tiny_spec(tmp_path, train={"epochs": 500, "time_budget_seconds": 1})
    doc = train(spec)
    summary = doc["summary"]
    assert summary["status"] == STATUS_COMPLETED
    assert summary["stopped_by"] == "time_budget"
    assert summary["epochs_completed"] < 500
    assert summary["training_seconds"] >= 1.0  # stopped at the first step past the budget
    last = doc["epochs"][-1]
    assert last[TIME_BUDGET_STOP] is True and "test_top1" in last  # the cut epoch is evaluated
    assert all(TIME_BUDGET_STOP not in r for r in doc["epochs"][:-1])
    # Relaunched from its checkpoint (metrics.json lost), the finished run trains no more.
    (Path(spec.out_dir) / "metrics.json").unlink()
    again = train(spec)
    assert again["summary"]["stopped_by"] == "time_budget"
    assert [r["epoch"] for r in again["epochs"]] == [r["epoch"] for r in doc["epochs"]]


# -- the report ----------------------------------------------------------------------------------


def test_kaplan_meier_matches_a_hand_computed_case():
    # Five runs: reached at 2, 3 and 5 s; never reached, censored at 3 and 8 s.
    times = [2.0, 3.0, 3.0, 5.0, 8.0]
    reached = [True, True, False, True, False]
    # S(2) = 4/5; at 3 four are at risk, one reaches: 0.8 * 3/4 = 0.6; the censored run at 3
    # leaves with it; at 5 two are at risk, one reaches: 0.6 * 1/2 = 0.3.
    steps = kaplan_meier(times, reached)
    assert [t for t, _ in steps] == [2.0, 3.0, 5.0]
    assert [s for _, s in steps] == pytest.approx([0.8, 0.6, 0.3])
    assert median_time(times, reached) == 5.0  # the first time S <= 0.5
    assert median_time([4.0, 1.0, 3.0, 2.0], [True] * 4) == 2.5  # all reached: plain median
    assert median_time([4.0, 6.0, 9.0], [True, False, False]) is None  # never half


def test_performance_profile_counts_levels_within_tau_of_the_fastest():
    times = {"a": [10.0, 30.0, None], "b": [20.0, 15.0, None], "c": [40.0, None, 50.0]}
    profile = performance_profile(times, [1.0, 2.0, 4.0])
    # Level 1: a fastest (b 2x, c 4x); level 2: b fastest (a 2x); level 3: only c.
    assert profile["a"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert profile["b"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert profile["c"] == pytest.approx([1 / 3, 1 / 3, 2 / 3])


class _TimedRun(FakeRun):
    """A FakeRun with held-out validation top-1, training seconds per epoch and a target."""

    def __init__(self, *args, val, seconds, target_top1=70.0, budget=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.val, self.seconds = val, seconds
        self.target_top1, self.budget = target_top1, budget

    def spec(self, matrix):
        spec = super().spec(matrix)
        data = replace(spec.data, val_size=5000, val_seed=0, val_target=self.target_top1)
        return replace(spec, data=data, train=replace(spec.train, time_budget_seconds=self.budget))

    def epochs(self):
        records = super().epochs()
        for record, val, seconds in zip(records, self.val, self.seconds, strict=True):
            record.update(val_top1=val, train_seconds=seconds, train_steps=100)
        if self.budget and sum(self.seconds) > self.budget:  # a step crossed it
            records[-1][TIME_BUDGET_STOP] = True
        return records


def _timed_matrix(tmp_path, budget=0, spam_seconds=(15.0, 15.0, 15.0), planned=None):
    runs = []
    for seed in (0, 1):
        # AdamWPrune reaches 70 % validation at epoch 2 (seed 0) or 3 (seed 1): 20 / 30 s.
        runs.append(
            _TimedRun("adamwprune", "state", 0.5, seed, top1=[60.0, 71.0, 74.0],
                      val=[60.0, 70.0 + seed * -1, 75.0], seconds=[10.0] * 3, budget=budget,
                      planned_epochs=planned)
        )  # fmt: skip
        # AdamWSPAM reaches it at epoch 3 with seed 0 (45 s) and never with seed 1.
        runs.append(
            _TimedRun("adamwspam", "magnitude", 0.5, seed, top1=[50.0, 60.0, 69.0],
                      val=[50.0, 60.0, 71.0 - seed * 5], seconds=list(spam_seconds), budget=budget,
                      planned_epochs=planned)
        )  # fmt: skip
    return write_matrix(tmp_path, "timed", runs)


def test_report_says_which_set_chose_and_gives_time_to_target_with_kaplan_meier(tmp_path):
    text = render(_timed_matrix(tmp_path))
    configuration = section(text, "## Test Configuration")
    assert "chosen on held-out validation (5,000 training images set aside" in configuration
    assert "test top-1 at that epoch" in configuration
    rows = table_rows(text, "## Time to Target")
    row = row_for(rows, "50%")
    header = table_header(text, "## Time to Target")
    cand = row[header.index("AdamWPrune (AdamW base) state/hybrid")]
    base = row[header.index("AdamWSPAM + magnitude")]
    assert cand == "25.0 s (2/2 reached)"  # median of 20 and 30 s
    # One seed at 45 s, one censored at 45 s: S(45) = 0, so the KM median is 45 s.
    assert base == "KM 45.0 s (1/2 reached)"
    assert "Performance profile over the 1 sparsity level(s)" in text
    # Without the split the report says the test set chose.
    plain = render(write_matrix(tmp_path, "plain", [FakeRun("adamw", "none", 0.0, 0, [50.0])]))
    assert "no held-out validation split" in section(plain, "## Test Configuration")
    assert "## Time to Target" not in plain and "## Equal Training Time" not in plain


def test_report_compares_methods_at_equal_training_time_under_a_budget(tmp_path):
    # AdamWSPAM's third epoch crosses the 30 s budget (by 2 s: the step that crossed it).
    text = render(_timed_matrix(tmp_path, budget=30, spam_seconds=(12.0, 12.0, 8.0)))
    assert "- **Training-time budget**: 30.0 s per run" in text
    assert "2 of 4 runs stopped by it" in text
    rows = table_rows(text, "## Equal Training Time")
    header = table_header(text, "## Equal Training Time")
    row = row_for(rows, "50%")
    assert row[header.index("Equal time")] == "30.0 s"
    # AdamWPrune: all three epochs by 30 s, chosen on validation: epoch 3 (74 %) both seeds.
    assert row[header.index("AdamWPrune (AdamW base) state/hybrid")] == "74.00 ± 0.00% (n=2)"
    # AdamWSPAM: its third epoch ends past the budget, which counts as at the budget.
    assert row[header.index("AdamWSPAM + magnitude")] == "69.00 ± 0.00% (n=2)"
    # A run stopped by its budget is a finished result, not a short run.
    from scripts.report.data import load_matrix

    results = load_matrix(_timed_matrix(tmp_path / "again", budget=20, planned=10))
    assert sum(r.summary["stopped_by"] == "time_budget" for r in results.runs) == 4
    assert all(r.counts for r in results.runs)


def test_time_to_target_plot_is_drawn(tmp_path):
    from scripts.report.data import load_matrix
    from scripts.report.plots import plot_time_to_target

    results = load_matrix(_timed_matrix(tmp_path))
    files = plot_time_to_target(results, results.method_keys(), tmp_path)
    assert [f.path.name for f in files] == ["time_to_target.png"]
    assert files[0].path.stat().st_size > 1000


def _fake_cifar10(root: Path, per_batch: int) -> np.ndarray:
    """torchvision's CIFAR-10 layout with `per_batch` random images in each of the five
    training batches (two classes alternating); returns the training images as N x 32 x 32 x 3."""
    import pickle

    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [k % 2 for k in range(per_batch)]
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
        if name != "test_batch":
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    return np.concatenate(images)


def test_cifar_validation_is_held_out_of_training_and_read_without_augmentation(
    tiny_spec, tmp_path, monkeypatch
):
    from torchvision.datasets import cifar

    from lib.data import CIFAR_MEAN, CIFAR_STD

    # The fake files have no published checksums.
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    train_images = _fake_cifar10(tmp_path, per_batch=4)
    data = {"name": "cifar10", "data_dir": str(tmp_path), "image_size": 32, "val_size": 6}
    spec = tiny_spec(tmp_path, data=data, train={"batch_size": 4})
    loaders = build_split_loaders(spec, "cpu")
    assert (loaders.train.num_samples, loaders.val.num_samples, loaders.test.num_samples) == (
        14,
        6,
        4,
    )
    labels_all = np.array([k % 2 for k in range(4)] * 5)
    _, val_idx = held_out_split(labels_all, spec.data)
    images, labels = _all(loaders.val)
    assert labels.tolist() == labels_all[val_idx].tolist() and labels.tolist().count(0) == 3
    mean = torch.tensor(CIFAR_MEAN["cifar10"]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD["cifar10"]).view(1, 3, 1, 1)
    raw = torch.from_numpy(train_images[val_idx]).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(images, (raw - mean) / std, atol=1e-6)  # no crop, no flip


def test_ranks_agree_on_the_step_a_budget_ends(monkeypatch):
    import lib.distributed
    from lib.distributed import RunGroup

    cpu = torch.device("cpu")
    assert RunGroup().any(True, cpu) is True and RunGroup().any(False, cpu) is False
    calls = []

    def peer_past_its_deadline(tensor, op):  # MAX with a rank whose clock says "spent"
        calls.append(op)
        tensor.fill_(1.0)

    monkeypatch.setattr(lib.distributed.dist, "all_reduce", peer_past_its_deadline)
    assert RunGroup(rank=0, world=2).any(False, cpu) is True
    assert calls == [lib.distributed.dist.ReduceOp.MAX]


def test_best_of_any_epoch_is_chosen_on_validation_too():
    from scripts.report.data import RunResult
    from scripts.report.sections import _best_of_any_epoch

    epochs = _epochs(val=[60.0, 80.0, 70.0], test=[60.0, 70.0, 90.0], sparsity=[0.2, 0.3, 0.4])
    run = RunResult("r", "adamw_magnitude", 0.5, 0, STATUS_COMPLETED, epochs=epochs)
    assert _best_of_any_epoch(run) == "70.00% at 30.0% (epoch 2)"  # not the test's 90 %
    for record in epochs:
        del record["val_top1"]
    assert _best_of_any_epoch(run) == "90.00% at 40.0% (epoch 3)"
