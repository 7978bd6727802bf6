"""The user flow through the real entry points on a tiny matrix: configure, dry-run, run,
run again (nothing re-trained), report, continue; plus the bad inputs that cross stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import cli

from lib import config as cfg
from lib.metrics import read_metrics

ROOT = cfg.ROOT

TINY = """\
CONFIG_MODEL_RESNET18=y
CONFIG_MODEL_STEM_CIFAR=y
CONFIG_DATASET_SYNTHETIC=y
CONFIG_DATA_IMAGE_SIZE=8
CONFIG_DATA_SYNTHETIC_CLASSES=10
CONFIG_DATA_SYNTHETIC_TRAIN_SIZE=16
CONFIG_DATA_SYNTHETIC_VAL_SIZE=8
CONFIG_TRAIN_EPOCHS=2
CONFIG_TRAIN_BATCH_SIZE=8
CONFIG_TRAIN_DEVICE_CPU=y
CONFIG_OPTIMIZER_ADAMW=y
CONFIG_PRUNING_MAGNITUDE=y
# CONFIG_SPARSITY_70 is not set
# CONFIG_SPARSITY_90 is not set
CONFIG_PRUNING_START_STEP=1
CONFIG_PRUNING_END_EPOCH=1
CONFIG_PRUNING_INTERVAL=1
CONFIG_MATRIX_NAME="tiny"
CONFIG_REPORT_BASELINE="adamw_magnitude"
"""


@pytest.fixture(scope="module")
def tiny_matrix(tmp_path_factory):
    """A finished tiny matrix: (config path, results dir, first test-matrix output)."""
    tmp = tmp_path_factory.mktemp("e2e")
    config = tmp / ".config"
    results = tmp / "results"
    config.write_text(TINY + f'CONFIG_RESULTS_DIR="{results}"\nCONFIG_DATA_DIR="{tmp}/data"\n')
    res = cli("lib.cli", "olddefconfig", config=config)
    assert res.returncode == 0, res.stderr
    res = cli("lib.cli", "test-matrix", config=config)
    assert res.returncode == 0, res.stdout + res.stderr
    return config, results, res.stdout


def test_dry_run_lists_the_plan(tiny_matrix):
    config, results, _ = tiny_matrix
    res = cli("lib.cli", "dry-run", config=config)
    assert res.returncode == 0, res.stderr
    for run_id in (
        "resnet18_adamw_dense_seed0",
        "resnet18_adamw_magnitude_s50_seed0",
        "resnet18_adamwprune-adamw_dense_seed0",
        "resnet18_adamwprune-adamw_state-hybrid_s50_seed0",
    ):
        assert run_id in res.stdout


def test_the_matrix_completes_every_run(tiny_matrix):
    _, results, output = tiny_matrix
    manifest = json.loads((results / "tiny" / "matrix.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["completed"] * 4
    for run in manifest["runs"]:
        metrics = read_metrics(results / "tiny" / run["run_id"] / "metrics.json")
        assert len(metrics["epochs"]) == 2
        target = metrics["identity"]["target_sparsity"]
        assert metrics["epochs"][-1]["sparsity"] == pytest.approx(target, abs=1e-3)
    assert "4/4 completed" in output


def test_running_again_trains_nothing_and_touches_nothing(tiny_matrix):
    config, results, _ = tiny_matrix
    files = sorted(
        p for p in (results / "tiny").rglob("*") if p.is_file() and p.parent != results / "tiny"
    )
    before = {p: p.stat().st_mtime_ns for p in files}
    res = cli("lib.cli", "test-matrix", config=config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 already completed" in res.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == before
    res = cli("lib.cli", "continue", "--results-dir", str(results), config=config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_continue_and_report_look_under_the_configured_results_dir(tiny_matrix):
    # CONFIG_RESULTS_DIR is a temporary directory here, not ./results: make continue and make
    # report (no --results-dir) must find the matrix make test-matrix wrote there.
    config, results, _ = tiny_matrix
    res = cli("lib.cli", "continue", "--matrix", "tiny", config=config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 already completed" in res.stdout
    res = cli("scripts.report", "--matrix", "tiny", config=config)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip().splitlines()[-1]) == results / "tiny" / "report.md"


def test_report_renders_tables_and_plots(tiny_matrix):
    config, results, _ = tiny_matrix
    res = cli(
        "scripts.report",
        "--results-dir",
        str(results),
        "--matrix",
        "tiny",
        config=config,
    )
    assert res.returncode == 0, res.stderr
    report = Path(res.stdout.strip().splitlines()[-1])
    text = report.read_text()
    assert "| Sparsity |" in text and "50%" in text
    plots = list((results / "tiny" / "plots").glob("*.png"))
    assert plots and all(p.stat().st_size > 1000 for p in plots)
    assert (results / "tiny" / "metrics.csv").read_text().count("\n") == 1 + 4  # one per run
    assert (results / "tiny" / "metrics_epochs.csv").read_text().count("\n") >= 8


def test_changed_config_for_existing_runs_is_refused(tiny_matrix, tmp_path):
    _, results, _ = tiny_matrix
    config = tmp_path / ".config"
    config.write_text(
        TINY.replace("CONFIG_TRAIN_EPOCHS=2", "CONFIG_TRAIN_EPOCHS=3")
        + f'CONFIG_RESULTS_DIR="{results}"\nCONFIG_DATA_DIR="{tmp_path}/data"\n'
    )
    res = cli("lib.cli", "test-matrix", config=config)
    assert res.returncode == 2
    assert "epochs" in res.stdout + res.stderr


def test_truncated_checkpoint_fails_the_run_with_one_line_and_keeps_the_file(
    tiny_spec, tmp_path, capsys
):
    from lib.train import LAST_CHECKPOINT, main

    spec = tiny_spec(tmp_path, train={"epochs": 2})
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True)
    run_json = out_dir / "run.json"
    run_json.write_text(spec.to_json())
    checkpoint = out_dir / LAST_CHECKPOINT
    checkpoint.write_bytes(b"PK\x03\x04 torn in half")
    assert main([str(run_json)]) == 1
    error = read_metrics(out_dir / "metrics.json")["summary"]["error"]  # recorded: no relaunch
    assert error in capsys.readouterr().out
    assert len(error.splitlines()) == 1
    assert str(checkpoint) in error and "damaged" in error and "RERUN_FAILED=1" in error
    (aside,) = out_dir.glob("checkpoint_last.pt.corrupt-*")
    assert aside.read_bytes() == b"PK\x03\x04 torn in half"  # evidence kept, out of the way
    assert read_metrics(out_dir / "metrics.json")["epochs"] == []  # nothing trained on it


def test_missing_dataset_is_refused_before_any_run_starts(tmp_path):
    config = tmp_path / ".config"
    results = tmp_path / "results"
    config.write_text(
        TINY.replace("CONFIG_DATASET_SYNTHETIC=y", "CONFIG_DATASET_IMAGENET=y")
        + f'CONFIG_RESULTS_DIR="{results}"\nCONFIG_DATA_DIR="{tmp_path}/nowhere"\n'
    )
    res = cli("lib.cli", "test-matrix", config=config)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{tmp_path}/nowhere/imagenet/train not found" in lines[0]
    assert "CONFIG_DATA_DIR" in lines[0]
    assert not results.exists()  # nothing launched, nothing written
