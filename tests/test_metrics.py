"""metrics.json: atomic writes that never tear, and the one summary definition."""

from __future__ import annotations

import errno
import json
import os

import pytest

from lib import metrics
from lib.metrics import MetricsError, atomic_write_json, read_metrics, summarize


def epoch(n: int, top1: float, sparsity: float = 0.0, **extra) -> dict:
    return {"epoch": n, "test_top1": top1, "test_top5": top1 + 10, "sparsity": sparsity, **extra}


def test_atomic_write_replaces_the_document(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_disk_full_during_a_write_leaves_the_previous_document_intact(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"epochs": [1, 2, 3]})
    before = path.read_bytes()

    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics.os, "fsync", full_disk)
    with pytest.raises(OSError, match=f"^no space left on device while writing {path}$"):
        atomic_write_json(path, {"epochs": [1, 2, 3, 4]})
    monkeypatch.setattr(metrics.os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_nan_is_refused_rather_than_written_as_invalid_json(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"loss": 1.0})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"loss": float("nan")})
    assert json.loads(path.read_text()) == {"loss": 1.0}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"schema_version": 99}', "schema_version 99 is not supported"),
        (
            '{"schema_version": 1, "run_id": "x", "identity": {}, "epochs": []}',
            "missing key 'summary'",
        ),
    ],
)
def test_read_metrics_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(MetricsError) as err:
        read_metrics(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_summary_of_a_pruned_run_counts_only_epochs_at_the_target():
    epochs = [
        epoch(1, 80.0, 0.2),  # denser than the target: its accuracy must not count
        epoch(2, 70.0, 0.7),
        epoch(3, 72.5, 0.7),
        epoch(4, 71.0, 0.7),
    ]
    s = summarize(epochs, 0.7, status="completed")
    assert (s["best_top1"], s["best_epoch"]) == (72.5, 3)
    assert s["target_reached_epoch"] == 2
    assert s["final_top1"] == 71.0
    assert s["peak_to_final"] == pytest.approx(1.5)
    mean = (80 + 70 + 72.5 + 71) / 4
    std = (sum((a - mean) ** 2 for a in (80, 70, 72.5, 71)) / 4) ** 0.5
    assert s["std_last10"] == pytest.approx(std)


def test_std_uses_only_the_last_ten_epochs():
    epochs = [epoch(i, 0.0 if i <= 5 else 50.0 + (i % 2)) for i in range(1, 16)]
    s = summarize(epochs, 0.0, status="completed")
    assert s["std_last10"] == pytest.approx(0.5)  # 50/51 alternating; the zeros fall outside


def test_a_run_that_never_reached_its_target_has_no_best_accuracy():
    s = summarize([epoch(1, 90.0, 0.3), epoch(2, 91.0, 0.6)], 0.9, status="completed")
    assert s["best_top1"] is None and s["peak_to_final"] is None
    assert s["target_reached_epoch"] is None
    assert s["final_top1"] == 91.0


def test_summary_of_a_run_without_epochs():
    s = summarize([], 0.5, status="failed", error="loss is nan")
    assert s["status"] == "failed" and s["error"] == "loss is nan"
    assert s["best_top1"] is None and s["final_top1"] is None and s["std_last10"] is None


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="status"):
        summarize([], 0.0, status="done")
