"""The run index (lib/run_index.py): derived from the runs' metrics.json, rebuilt when missing,
damaged or stale, never the only copy of anything; and the matrix benchmark that needs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.metrics import (
    STATUS_COMPLETED,
    STATUS_RUNNING,
    MetricsError,
    build_document,
    write_metrics_document,
)
from lib.run_index import INDEX_FILE, SPEEDS_FILE, RunIndex, run_record

ROOT = Path(__file__).resolve().parents[1]


def epoch(n: int, top1: float) -> dict:
    return {
        "epoch": n,
        "test_top1": top1,
        "test_top5": top1 + 10,
        "sparsity": 0.0,
        "sparsity_per_layer": {"fc.weight": 0.0},
        "epoch_seconds": 2.0 + n,
    }


def write_run(matrix_dir: Path, spec, epochs: list[dict], status: str, *, settled=True) -> Path:
    path = matrix_dir / spec.run_id / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_metrics_document(path, build_document(spec, epochs, status=status))
    if settled:  # written long enough ago for its modification time to be trusted
        past = time.time() - 60
        os.utime(path, (past, past))
    return path


@pytest.fixture
def matrix(tiny_spec, tmp_path):
    spec = tiny_spec(tmp_path, matrix="m", train={"epochs": 3})
    return tmp_path / "results" / "m", spec


def test_a_record_comes_from_the_index_until_its_metrics_json_changes(matrix):
    matrix_dir, spec = matrix
    path = write_run(matrix_dir, spec, [epoch(1, 50.0)], STATUS_RUNNING)
    index = RunIndex(matrix_dir)
    first = index.record(spec.run_id)
    assert first["epochs_completed"] == 1 and first["epoch_seconds"] == [3.0]
    assert first["latest_top1"] == 50.0 and first["summary"]["status"] == STATUS_RUNNING
    index.save()
    saved = json.loads((matrix_dir / INDEX_FILE).read_text())
    assert saved["runs"][spec.run_id]["record"] == first

    # From the index: a damaged metrics.json with the same time and size is not read again.
    stat = path.stat()
    path.write_bytes(b"x" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert RunIndex(matrix_dir).record(spec.run_id) == first

    # Rewritten (new time): read again.
    write_run(matrix_dir, spec, [epoch(1, 50.0), epoch(2, 61.0)], STATUS_COMPLETED)
    again = RunIndex(matrix_dir).record(spec.run_id)
    assert again["epochs_completed"] == 2 and again["latest_top1"] == 61.0
    assert again["summary"]["status"] == STATUS_COMPLETED


def test_a_file_written_just_now_is_read_but_not_kept(matrix):
    matrix_dir, spec = matrix
    write_run(matrix_dir, spec, [epoch(1, 50.0)], STATUS_RUNNING, settled=False)
    index = RunIndex(matrix_dir)
    assert index.record(spec.run_id)["epochs_completed"] == 1
    assert spec.run_id not in index.entries  # its mtime could still hide a rewrite


def test_deleting_or_damaging_the_index_loses_nothing(matrix):
    matrix_dir, spec = matrix
    path = write_run(matrix_dir, spec, [epoch(1, 50.0), epoch(2, 55.0)], STATUS_COMPLETED)
    expected = run_record(json.loads(path.read_text()))
    index = RunIndex(matrix_dir)
    assert index.record(spec.run_id) == expected
    index.save()
    (matrix_dir / INDEX_FILE).write_text("{not json")
    rebuilt = RunIndex(matrix_dir)
    assert rebuilt.record(spec.run_id) == expected
    rebuilt.save()
    assert json.loads((matrix_dir / INDEX_FILE).read_text())["runs"][spec.run_id]["record"] == (
        expected
    )
    (matrix_dir / INDEX_FILE).unlink()
    assert RunIndex(matrix_dir).record(spec.run_id) == expected


def test_a_removed_or_unreadable_metrics_json_is_an_error_as_from_read_metrics(matrix):
    matrix_dir, spec = matrix
    path = write_run(matrix_dir, spec, [epoch(1, 50.0)], STATUS_COMPLETED)
    index = RunIndex(matrix_dir)
    index.record(spec.run_id)
    path.unlink()
    with pytest.raises(MetricsError, match="no such file"):
        index.record(spec.run_id)
    assert spec.run_id not in index.entries
    path.write_text("{torn")
    with pytest.raises(MetricsError, match="not valid JSON"):
        index.record(spec.run_id)


def test_status_and_the_dry_run_state_read_through_the_index(matrix):
    from lib.runner import STATE_DONE, plan_state

    matrix_dir, spec = matrix
    write_run(matrix_dir, spec, [epoch(n, 50.0 + n) for n in (1, 2, 3)], STATUS_COMPLETED)
    index = RunIndex(matrix_dir)
    assert plan_state(spec, matrix_dir / spec.run_id, index) == (STATE_DONE, 3)
    assert plan_state(spec, matrix_dir / spec.run_id) == (STATE_DONE, 3)  # without one
    index.save()
    assert (matrix_dir / INDEX_FILE).is_file()


# -- speeds.json: what other matrices' duration estimates read (issue 30, item 2) ---------------


def test_the_estimate_learns_from_another_matrix_through_its_speeds_json_alone(
    tiny_spec, tmp_path, monkeypatch
):
    from lib.runner import format_plan
    from lib.store import MatrixStore

    root = tmp_path / "results"
    for seed in range(3):  # 3 + 4 + 5 s per run: 4 s per epoch
        done = tiny_spec(tmp_path, matrix="other", seed=seed, train={"epochs": 3})
        write_run(root / "other", done, [epoch(n, 50.0) for n in (1, 2, 3)], STATUS_COMPLETED)
    new = tiny_spec(tmp_path, matrix="m", train={"epochs": 3})
    assert not (root / "other" / SPEEDS_FILE).exists()  # a tree from before speeds.json
    assert "estimated duration: 12s one run at a time" in format_plan([new], root)
    # ... which got one from its runs' files, the first time an estimate needed it
    written = json.loads((root / "other" / SPEEDS_FILE).read_text())
    assert written["version"] == 1 and len(written["speeds"]) == 1
    assert written["speeds"][0]["runs"] == 3
    assert written["speeds"][0]["mean_seconds_per_epoch"] == pytest.approx(4.0)

    # From then on the other matrix costs that one file: neither its run index nor any of
    # its metrics.json is opened, however many runs it holds.
    opened: list[Path] = []
    real_read, real_init = MatrixStore.read_metrics_fd, RunIndex.__init__

    def spy_read(self, fd, run_id, planned=None):
        opened.append(self.path / run_id / "metrics.json")
        return real_read(self, fd, run_id, planned)

    def spy_init(self, matrix_dir):
        opened.append(Path(matrix_dir) / INDEX_FILE)
        real_init(self, matrix_dir)

    monkeypatch.setattr(MatrixStore, "read_metrics_fd", spy_read)
    monkeypatch.setattr(RunIndex, "__init__", spy_init)
    for seed in range(3, 40):
        more = tiny_spec(tmp_path, matrix="other", seed=seed, train={"epochs": 3})
        (root / "other" / more.run_id).mkdir()
    assert "estimated duration: 12s one run at a time" in format_plan([new], root)
    assert opened and not [p for p in opened if "other" in p.parts], opened


def test_speeds_json_is_derived_rebuilt_when_deleted_or_damaged_and_follows_the_runs(matrix):
    matrix_dir, spec = matrix
    path = write_run(matrix_dir, spec, [epoch(1, 50.0)], STATUS_RUNNING)
    index = RunIndex(matrix_dir)
    index.record(spec.run_id)
    index.save()
    # No completed run yet: nothing learnt, and said so (other matrices' estimates then read
    # this small file instead of looking through the runs again)
    assert json.loads((matrix_dir / SPEEDS_FILE).read_text()) == {"version": 1, "speeds": []}
    write_run(matrix_dir, spec, [epoch(n, 50.0) for n in (1, 2)], STATUS_COMPLETED)
    index = RunIndex(matrix_dir)
    index.record(spec.run_id)
    index.save()
    speeds = matrix_dir / SPEEDS_FILE
    first = json.loads(speeds.read_text())
    assert [row["mean_seconds_per_epoch"] for row in first["speeds"]] == [3.5]
    speeds.unlink()  # deleting it loses nothing
    assert run_index_speeds(matrix_dir) == {tuple(first["speeds"][0]["key"]): (3.5, 1)}
    assert json.loads(speeds.read_text()) == first
    speeds.write_text("{torn")
    assert run_index_speeds(matrix_dir) == {tuple(first["speeds"][0]["key"]): (3.5, 1)}
    assert json.loads(speeds.read_text()) == first
    path.unlink()  # the run is gone: the next command that reads the matrix forgets it
    index = RunIndex(matrix_dir)
    with pytest.raises(MetricsError):
        index.record(spec.run_id)
    index.save()
    assert json.loads(speeds.read_text())["speeds"] == []


def run_index_speeds(matrix_dir: Path) -> dict:
    from lib.run_index import matrix_speeds

    return matrix_speeds(matrix_dir)


@pytest.mark.slow
def test_bench_matrix_quick_prints_the_table_and_the_goals():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_matrix.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    number = r"[0-9][0-9,.]*"
    rows = re.findall(
        rf"^\| ({number}) \(warm, [^)]*\) \| {number} s \| {number} s \| {number} s \| "
        rf"{number} s, {number} MB \|$",
        result.stdout,
        re.MULTILINE,
    )
    assert len(rows) == 2 and int(rows[0].replace(",", "")) > 1, result.stdout
    assert re.search(
        rf"CPU seconds .*: dry run {number} s, status {number} s, .*report", result.stdout
    )
    assert re.search(rf"largest metrics.json {number} KB", result.stdout)
    assert re.search(
        rf"dry run beside a second matrix of {number} runs .*: {number} s the first time .*, "
        rf"then {number} s \({number} s CPU\); alone {number} s \({number} s CPU\)",
        result.stdout,
    )
    assert re.search(r"goals at .* runs: dry run .*: (met|NOT MET); status", result.stdout)


# -- metrics.json schema 2: per-layer sparsity in a file of its own ----------------------------


def test_per_layer_sparsity_is_written_beside_metrics_json_and_read_back(matrix):
    from lib.metrics import LAYERS_FILE, SCHEMA_VERSION, read_metrics

    matrix_dir, spec = matrix
    epochs = [epoch(n, 50.0 + n) for n in (1, 2)]
    epochs[1]["sparsity_per_layer"] = {"fc.weight": 0.5}
    path = write_run(matrix_dir, spec, epochs, STATUS_COMPLETED)
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION == 2
    assert all("sparsity_per_layer" not in e for e in on_disk["epochs"])
    assert (path.parent / LAYERS_FILE).is_file()
    assert [e["sparsity_per_layer"] for e in read_metrics(path)["epochs"]] == [
        {"fc.weight": 0.0},
        {"fc.weight": 0.5},
    ]
    assert all("sparsity_per_layer" not in e for e in read_metrics(path, per_layer=False)["epochs"])


def test_rewriting_a_document_read_without_per_layer_sparsity_keeps_it(matrix):
    from lib.metrics import read_metrics

    matrix_dir, spec = matrix
    path = write_run(matrix_dir, spec, [epoch(n, 50.0) for n in (1, 2, 3)], STATUS_RUNNING)
    doc = read_metrics(path, per_layer=False)
    doc["epochs"] = doc["epochs"][:2]  # an epoch replayed: dropped from both files
    write_metrics_document(path, doc)
    assert [e.get("sparsity_per_layer") for e in read_metrics(path)["epochs"]] == [
        {"fc.weight": 0.0},
        {"fc.weight": 0.0},
    ]
    layers = json.loads((path.parent / "sparsity_per_layer.json").read_text())
    assert [row["epoch"] for row in layers["epochs"]] == [1, 2]


def test_a_version_1_metrics_json_with_inline_per_layer_sparsity_is_still_read(matrix):
    from lib.metrics import read_metrics

    matrix_dir, spec = matrix
    doc = build_document(spec, [epoch(1, 50.0)], status=STATUS_COMPLETED)
    doc["schema_version"] = 1
    path = matrix_dir / spec.run_id / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    assert read_metrics(path)["epochs"][0]["sparsity_per_layer"] == {"fc.weight": 0.0}
    assert RunIndex(matrix_dir).record(spec.run_id)["epochs_completed"] == 1


def test_a_100_epoch_resnet50_metrics_json_is_under_60_kb(tiny_spec, tmp_path):
    """Issue 30: 80% of a ResNet-50 run's metrics.json was per-layer sparsity of every epoch."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import random

    import torch
    from bench_matrix import epoch_records, layer_names

    from lib.environment import capture_environment
    from lib.metrics import LAYERS_FILE, read_metrics

    spec = tiny_spec(tmp_path, matrix="m", train={"epochs": 100})
    records = epoch_records(spec, layer_names(), random.Random(0))
    model_info = {  # ResNet-50 on ImageNet, as the trainer writes it
        "parameters": 25_557_032,
        "prunable_parameters": 25_502_912,
        "steps_per_epoch": 5004,
        "train_images": 1_281_167,
        "test_images": 50_000,
        "num_classes": 1000,
        "parameters_total": 25_557_032,
        "macs_dense": 4_089_184_256,
    }
    document = build_document(
        spec,
        records,
        status=STATUS_COMPLETED,
        environment=capture_environment(torch.device("cpu")),
        model_info=model_info,
    )
    path = tmp_path / "metrics.json"
    write_metrics_document(path, document)
    assert path.stat().st_size < 60_000
    # one epoch record per line, and the document reads back whole
    assert len(path.read_text().splitlines()) > 100
    assert read_metrics(path, per_layer=False)["epochs"] == [
        {k: v for k, v in r.items() if k != "sparsity_per_layer"} for r in records
    ]
    assert (tmp_path / LAYERS_FILE).stat().st_size > path.stat().st_size  # nothing lost
