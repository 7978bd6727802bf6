"""The results store (lib/store.py, issue 23): every case of a hostile or careless results
directory, each ending in one line, with nothing finished lost or rewritten. None of these
tests trains: plans are written by the runner's own open_matrix/write_manifest, results by
the metrics writers."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
from pathlib import Path

import pytest
from report_helpers import FakeRun, render, row_for, table_rows, write_matrix
from test_config import write_config

from lib import cli
from lib import config as cfg
from lib.metrics import (
    METRICS_FILE,
    STATUS_COMPLETED,
    STATUS_RUNNING,
    atomic_write_json,
    build_document,
)
from lib.runner import EXIT_REFUSED, open_matrix
from lib.runner import run_matrix as runner_run_matrix
from lib.status import StatusError, status_lines
from lib.store import (
    MAX_DEPTH,
    RUN_STATES,
    MatrixStore,
    StoreError,
    seal,
)
from scripts.report import cli as report_cli
from scripts.report.data import load_matrix

EPOCH = {"epoch": 1, "test_top1": 42.0, "test_top5": 90.0, "epoch_seconds": 1.0, "sparsity": 0.0}


def planned(tmp_path: Path, *lines: str):
    """A sealed plan of the demo defconfig under tmp_path/results/demo, as the runner writes
    it before its first run (no run trained): (matrix_dir, config, specs)."""
    results = tmp_path / "results"
    path = write_config(tmp_path, "demo", f'CONFIG_RESULTS_DIR="{results}"', *lines)
    config = cfg.load(path)
    specs = cli._plan(config)
    matrix_dir = results / config.matrix.name
    runner = open_matrix(
        specs,
        matrix_dir,
        config_snapshot=config.symbol_dict(),
        report_settings=config.report.to_dict(),
    )
    runner.write_manifest()
    runner.lock.release()
    return matrix_dir, config, [run.spec for run in runner.runs]


def finish(matrix_dir: Path, spec, epochs: int = 1) -> Path:
    run_dir = matrix_dir / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    records = [dict(EPOCH, epoch=i + 1) for i in range(epochs)]
    atomic_write_json(
        run_dir / METRICS_FILE, build_document(spec, records, status=STATUS_COMPLETED)
    )
    return run_dir


def run_matrix(specs, matrix_dir, **kwargs):
    """lib.runner.run_matrix, its output returned beside its exit code."""
    out = io.StringIO()
    rc = runner_run_matrix(specs, matrix_dir, out=out, **kwargs)
    return rc, out.getvalue()


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def edit_plan(matrix_dir: Path, change) -> None:
    path = matrix_dir / "matrix.json"
    plan = json.loads(path.read_text())
    change(plan)
    path.write_text(json.dumps(plan))


@pytest.fixture
def no_launch(monkeypatch):
    """Fails the test if anything would be launched or submitted."""
    calls = []
    monkeypatch.setattr(cli, "_execute", lambda *a, **k: calls.append(a) or 0)
    return calls


# -- run ids that climb out of results/ --------------------------------------------------------


def test_run_ids_that_leave_the_matrix_are_refused_by_status_and_report(tmp_path, capsys):
    outside = tmp_path / "x"
    outside.mkdir()
    atomic_write_json(outside / METRICS_FILE, {"planted": True})
    matrix_dir = tmp_path / "results" / "m" / "n"
    matrix_dir.mkdir(parents=True)
    plan = {"name": "n", "config": {}, "report": {}, "runs": [{"run_id": "../../../x"}]}
    (matrix_dir / "matrix.json").write_text(json.dumps(seal(plan)))
    with pytest.raises(StatusError) as error:
        status_lines(matrix_dir)
    assert "runs[0].run_id" in str(error.value) and "'../../../x'" in str(error.value)
    argv = ["--results-dir", str(matrix_dir.parent), "--matrix", "n"]
    assert report_cli.main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "matrix.json: field 'runs[0].run_id'" in line


# -- an edited plan ----------------------------------------------------------------------------


def test_an_unedited_plan_continues(tmp_path, no_launch, capsys):
    matrix_dir, _, specs = planned(tmp_path)
    argv = ["continue", "--results-dir", str(matrix_dir.parent), "--matrix", "demo"]
    assert cli.main(argv) == 0 and len(no_launch) == 1
    assert [s.run_id for s in no_launch[0][1]] == [s.run_id for s in specs]


@pytest.mark.parametrize(
    "edit",
    [
        "data_dir",
        "tracker_dir",
        "run_list",
        "slurm_ld_preload",
        "seal_removed",
    ],
)
def test_an_edited_plan_is_refused_before_anything_is_launched(tmp_path, no_launch, capsys, edit):
    matrix_dir, _, _ = planned(tmp_path)

    def change(plan):
        if edit == "data_dir":
            for entry in plan["runs"]:
                entry["spec"]["data"]["data_dir"] = "/elsewhere"
            plan["config"]["CONFIG_DATA_DIR"] = "/elsewhere"
        elif edit == "tracker_dir":
            for entry in plan["runs"]:
                entry["spec"]["tracking"]["tensorboard_dir"] = "/elsewhere"
        elif edit == "run_list":
            plan["runs"] = plan["runs"][:1]
        elif edit == "slurm_ld_preload":
            plan["config"]["CONFIG_MATRIX_EXECUTOR_SLURM"] = "y"
            plan["config"]["CONFIG_MATRIX_EXECUTOR_LOCAL"] = "n"
            plan["config"]["CONFIG_SLURM_EXTRA_ARGS"] = '"--export=ALL,LD_PRELOAD=/tmp/e.so"'
        else:
            del plan["seal"]

    edit_plan(matrix_dir, change)
    before = sorted(p.name for p in matrix_dir.iterdir())
    argv = ["continue", "--results-dir", str(matrix_dir.parent), "--matrix", "demo"]
    assert cli.main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert str(matrix_dir / "matrix.json") in line
    assert ("was edited" in line) if edit != "seal_removed" else ("carries no seal" in line)
    assert no_launch == [] and sorted(p.name for p in matrix_dir.iterdir()) == before


def test_status_and_report_refuse_an_edited_plan_in_one_line(tmp_path, capsys):
    matrix = write_matrix(tmp_path, "m", [FakeRun("adamwprune", "state", 0.5, 0, [70.0])])
    edit_plan(matrix, lambda plan: plan["runs"][0].update(method_key="sgd_dense"))
    with pytest.raises(StatusError, match="was edited after its runner wrote it"):
        status_lines(matrix)
    assert report_cli.main(["--results-dir", str(tmp_path), "--matrix", "m"]) == 2
    assert "was edited" in one_line(capsys.readouterr().err)


def test_a_plan_another_user_sealed_is_shown_with_a_note_and_never_continued(
    tmp_path, monkeypatch, no_launch, capsys
):
    matrix_dir, _, specs = planned(tmp_path)
    finish(matrix_dir, specs[0])
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 4242)  # now someone else reads it
    lines = status_lines(matrix_dir)
    assert any(line.startswith("note: ") and "not by you" in line for line in lines), lines
    argv = ["continue", "--results-dir", str(matrix_dir.parent), "--matrix", "demo"]
    assert cli.main(argv) == 2 and no_launch == []
    assert "not by you" in one_line(capsys.readouterr().err)


def test_a_slurm_task_launches_nothing_when_its_run_json_differs_from_the_sealed_plan(
    tmp_path,
):
    from lib.slurm_job import RunFailed, planned_run

    matrix_dir, _, specs = planned(tmp_path)
    run_dir = matrix_dir / specs[0].run_id
    run_dir.mkdir()
    (run_dir / "run.json").write_text(specs[0].to_json() + "\n")
    planned_run(run_dir)  # as submitted: fine
    spec = json.loads(specs[0].to_json())
    spec["data"]["data_dir"] = "/elsewhere"
    (run_dir / "run.json").write_text(json.dumps(spec))
    with pytest.raises(RunFailed, match="not launched: .*run.json is not the run"):
        planned_run(run_dir)


# -- links, swaps and files that are not files -------------------------------------------------


def test_a_matrix_directory_that_is_a_link_is_refused_by_every_command(tmp_path, capsys):
    matrix = write_matrix(tmp_path / "real", "m", [FakeRun("adamwprune", "state", 0.5, 0, [70.0])])
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "m").symlink_to(matrix)
    (tmp_path / "results" / "n").symlink_to(matrix)
    linked = tmp_path / "results" / "m"
    with pytest.raises(StatusError, match="is a symbolic link"):
        status_lines(linked)
    assert report_cli.main(["--results-dir", str(tmp_path / "results"), "--matrix", "m"]) == 2
    assert "is a symbolic link" in one_line(capsys.readouterr().err)
    argv = ["--results-dir", str(tmp_path / "results"), "--compare", "m", "n"]
    assert report_cli.main(argv) == 2  # COMPARE= follows no link either
    assert "is a symbolic link" in one_line(capsys.readouterr().err)
    spec = FakeRun("adamwprune", "state", 0.5, 0, [70.0]).spec("m")
    rc, out = run_matrix([spec], linked, config_snapshot={}, report_settings={})
    assert rc == EXIT_REFUSED and "is a symbolic link" in one_line(out)


def test_a_run_directory_swapped_for_a_link_after_the_check_is_not_followed(tmp_path):
    matrix = write_matrix(tmp_path, "m", [FakeRun("adamwprune", "state", 0.5, 0, [70.0])])
    run_id = json.loads((matrix / "matrix.json").read_text())["runs"][0]["run_id"]
    store = MatrixStore(matrix)
    store.read_plan()  # checked ...
    (matrix / run_id).rename(tmp_path / "moved")  # ... then swapped for a link
    (matrix / run_id).symlink_to(tmp_path / "moved")
    with pytest.raises(StoreError, match="is a symbolic link"):
        store.read_metrics(run_id)
    store.close()
    results = load_matrix(matrix)  # the report: that run excluded, with its reason
    assert results.runs[0].status == "unreadable" and "symbolic link" in results.runs[0].reason


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_metrics_json_that_is_not_a_regular_file_never_hangs_a_reader(tmp_path, kind):
    matrix = write_matrix(
        tmp_path,
        "m",
        [
            FakeRun("adamwprune", "state", 0.5, 0, [70.0]),
            FakeRun("adamwprune", "state", 0.5, 1, [71.0]),
        ],
    )
    run_id = json.loads((matrix / "matrix.json").read_text())["runs"][0]["run_id"]
    (matrix / run_id / METRICS_FILE).unlink()
    if kind == "fifo":
        os.mkfifo(matrix / run_id / METRICS_FILE)
    else:
        (matrix / run_id / METRICS_FILE).mkdir()
    results = load_matrix(matrix)
    first, second = results.runs
    assert first.status == "unreadable" and "not a regular file" in first.reason
    assert second.completed  # the others are read as ever
    assert any(run_id in line and "not a regular file" in line for line in status_lines(matrix))


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_lock_that_is_not_a_file_is_one_line(tmp_path, tiny_spec, capsys, kind):
    matrix_dir = tmp_path / "m"
    matrix_dir.mkdir()
    if kind == "directory":
        (matrix_dir / ".lock").mkdir()
    else:
        os.mkfifo(matrix_dir / ".lock")
    spec = tiny_spec(tmp_path, matrix="m")
    rc, out = run_matrix([spec], matrix_dir, config_snapshot={}, report_settings={})
    line = one_line(out)
    assert (
        rc == EXIT_REFUSED and line.startswith("error: ") and ".lock is not a regular file" in line
    )


def test_a_full_disk_before_the_first_write_is_one_line(tmp_path, tiny_spec, capsys, monkeypatch):
    import lib.lock

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lib.lock.os, "pwrite", full)
    spec = tiny_spec(tmp_path, matrix="m")
    rc, out = run_matrix([spec], tmp_path / "m", config_snapshot={}, report_settings={})
    line = one_line(out)
    assert rc == EXIT_REFUSED and "no space left on device" in line and ".lock" in line


def test_a_run_directory_of_another_user_is_one_line_and_untouched(
    tmp_path, tiny_spec, capsys, monkeypatch
):
    spec = tiny_spec(tmp_path, matrix="m")
    run_dir = finish(tmp_path / "m", spec)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 4242)
    rc, out = run_matrix([spec], tmp_path / "m", config_snapshot={}, report_settings={})
    line = one_line(out)
    assert rc == EXIT_REFUSED and "not to you" in line and str(run_dir) in line
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def test_the_submitit_folder_is_private_and_refused_when_another_user_wrote_into_it(
    tmp_path, monkeypatch
):
    from lib.slurm import SlurmError, prepare_submitit_folder

    matrix_dir = tmp_path / "m"
    matrix_dir.mkdir()
    (matrix_dir / "slurm").mkdir(mode=0o777)
    os.chmod(matrix_dir / "slurm", 0o777)
    prepare_submitit_folder(matrix_dir)
    assert stat.S_IMODE((matrix_dir / "slurm").stat().st_mode) == 0o700
    (matrix_dir / "slurm" / "41_0").mkdir()
    (matrix_dir / "slurm" / "41_0" / "41_0_submitted.pkl").write_bytes(b"pickle")
    prepare_submitit_folder(matrix_dir)  # all of it ours: fine
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 4242)
    with pytest.raises(SlurmError, match="not to you"):
        prepare_submitit_folder(matrix_dir)


# -- deep, wrong-shaped and huge JSON ----------------------------------------------------------


def two_runs(tmp_path):
    runs = [
        FakeRun("adamwprune", "state", 0.5, 0, [70.0, 71.0]),
        FakeRun("adamwprune", "state", 0.5, 1, [72.0, 73.0]),
    ]
    matrix = write_matrix(tmp_path, "m", runs)
    ids = [e["run_id"] for e in json.loads((matrix / "matrix.json").read_text())["runs"]]
    return matrix, ids


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("[]", "expected a JSON object"),
        ("[" * 10_000 + "]" * 10_000, f"nested deeper than {MAX_DEPTH} levels"),
        ("deep summary", f"nested deeper than {MAX_DEPTH} levels"),
        ("50,000 epochs", "more than the 2 epochs planned"),
    ],
)
def test_hostile_metrics_json_is_excluded_in_one_line_and_the_others_are_reported(
    tmp_path, capsys, content, named
):
    matrix, ids = two_runs(tmp_path)
    path = matrix / ids[0] / METRICS_FILE
    doc = json.loads(path.read_text())
    if content == "50,000 epochs":  # where 2 were planned
        record = {k: doc["epochs"][0][k] for k in ("test_top1", "test_top5")}
        doc["epochs"] = [dict(record, epoch=i + 1) for i in range(50_000)]
        content = json.dumps(doc, separators=(",", ":"))
    elif content == "deep summary":  # a valid document, 40 levels deep in its summary
        doc["summary"]["extra"] = json.loads('{"a":' * 40 + "1" + "}" * 40)
        content = json.dumps(doc)
    path.write_text(content)
    results = load_matrix(matrix)
    bad, good = results.runs
    assert bad.status == "unreadable" and named in bad.reason and "\n" not in bad.reason
    assert str(path) in bad.reason
    assert good.completed and good.counts
    shown = [line for line in status_lines(matrix) if line.startswith(ids[0])]
    assert len(shown) == 1 and named in shown[0]
    text = render(matrix)
    assert row_for(table_rows(text, "## Unfinished and failed runs"), f"`{ids[0]}`")
    assert path.read_text() == content  # kept as it was


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        ([], "expected a JSON object"),
        ({"runs": {"a": 1}}, "field 'runs' is dict, expected a list"),
        ({"runs": [["x"]]}, "field 'runs[0]' is list, expected an object"),
        ({"runs": [{"run_id": "a", "spec": []}]}, "field 'runs[0].spec'"),
        ({"runs": [], "report": {"plots": "all"}}, "field 'report.plots'"),
        ({"runs": [], "config": {"CONFIG_X": 1}}, "field 'config.CONFIG_X'"),
    ],
)
def test_a_wrong_shaped_plan_is_one_line_naming_the_field(tmp_path, capsys, plan, field):
    matrix_dir = tmp_path / "m"
    matrix_dir.mkdir()
    body = seal(plan) if isinstance(plan, dict) else plan
    (matrix_dir / "matrix.json").write_text(json.dumps(body))
    with pytest.raises(StatusError) as error:
        status_lines(matrix_dir)
    assert field in str(error.value) and "matrix.json" in str(error.value)
    assert report_cli.main(["--results-dir", str(tmp_path), "--matrix", "m"]) == 2
    assert field in one_line(capsys.readouterr().err)


# -- a run's identity against the plan ---------------------------------------------------------


def test_a_run_whose_metrics_json_claims_another_cell_is_excluded_as_changed(tmp_path):
    runs = [
        FakeRun("adamwprune", "state", 0.5, 0, [70.0]),
        FakeRun("adamwprune", "state", 0.5, 1, [71.0]),
        FakeRun("adamwspam", "magnitude", 0.5, 0, [60.0]),
    ]
    matrix = write_matrix(tmp_path, "m", runs)
    ids = [e["run_id"] for e in json.loads((matrix / "matrix.json").read_text())["runs"]]
    path = matrix / ids[1] / METRICS_FILE
    doc = json.loads(path.read_text())
    doc["identity"]["seed"] = 7  # says it is another seed than its plan's
    doc["epochs"][0]["test_top1"] = 99.5
    path.write_text(json.dumps(doc))
    results = load_matrix(matrix)
    changed = next(r for r in results.runs if r.run_id == ids[1])
    assert changed.status == "changed" and "identity 'seed' is 7" in changed.reason
    assert changed.seed == 1 and not changed.counts  # its planned cell, and out of it
    assert "99.50" not in render(matrix)
    line = next(line for line in status_lines(matrix) if line.startswith(ids[1]))
    assert "excluded: metrics.json: identity 'seed' is 7" in line
    # Another run's record copied in: its run id and configuration differ from the plan's.
    other = json.loads((matrix / ids[2] / METRICS_FILE).read_text())
    path.write_text(json.dumps(other))
    changed = next(r for r in load_matrix(matrix).runs if r.run_id == ids[1])
    assert changed.status == "changed" and "run_id" in changed.reason


def test_the_run_states_are_one_vocabulary():
    import lib.status as status
    from scripts.report import data

    assert set(status.ORDER) == set(RUN_STATES)
    for word in (data.STATUS_PENDING, data.STATUS_CHANGED, STATUS_RUNNING, STATUS_COMPLETED):
        assert word in RUN_STATES


# -- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["a list", "no model", "wrong shapes"])
def test_a_checkpoint_of_the_wrong_structure_is_set_aside_like_a_damaged_one(
    tiny_spec, tmp_path, kind
):
    import torch

    from lib.train import CHECKPOINT_FORMAT, train

    spec = tiny_spec(tmp_path)
    run_dir = Path(spec.out_dir)
    run_dir.mkdir(parents=True)
    path = run_dir / "checkpoint_last.pt"
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "identity": spec.identity(),
        "epochs": [],
        "model": {"conv1.weight": torch.zeros(1)},  # loads, but fits no ResNet-18
        "optimizer": {},
        "scheduler": {},
        "scaler": {},
        "rng": {},
    }
    if kind == "a list":
        checkpoint = [1, 2, 3]
    elif kind == "no model":
        del checkpoint["model"]
    torch.save(checkpoint, path)
    saved = path.read_bytes()
    doc = train(spec)
    error = doc["summary"]["error"]
    assert doc["summary"]["status"] == "failed" and "damaged" in error and "\n" not in error
    assert "RERUN_FAILED=1" in error
    aside = list(run_dir.glob("checkpoint_last.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == saved  # kept, as evidence
    assert not path.exists()


def test_a_run_directory_swapped_for_a_link_before_its_launch_is_not_written_into(
    tmp_path, tiny_spec, monkeypatch
):
    import lib.runner

    victim = tmp_path / "victim"
    victim.mkdir()
    spec = tiny_spec(tmp_path, matrix="m")
    matrix_dir = tmp_path / "m"
    original = lib.runner._Runner.classify

    def classify_then_swap(self):  # after every check, before the launch
        queue = original(self)
        (matrix_dir / spec.run_id).symlink_to(victim)
        return queue

    monkeypatch.setattr(lib.runner._Runner, "classify", classify_then_swap)
    rc, out = run_matrix([spec], matrix_dir, config_snapshot={}, report_settings={})
    assert rc == 1 and "not started" in out and "is a symbolic link" in out, out
    assert list(victim.iterdir()) == []


def test_a_metrics_json_another_user_wrote_into_the_matrix_is_not_a_result(tmp_path, monkeypatch):
    import lib.store

    matrix, ids = two_runs(tmp_path)
    planted = str(matrix / ids[0] / METRICS_FILE)
    real_fstat = os.fstat

    def fstat(fd):  # as if another user had written this one file (no root needed)
        st = real_fstat(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == planted:
            fields = list(st)
            fields[stat.ST_UID] = st.st_uid + 4242
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(lib.store.os, "fstat", fstat)
    bad, good = load_matrix(matrix).runs
    assert bad.status == "unreadable" and "written by" in bad.reason and not bad.counts
    assert "whose runner planned this matrix" in bad.reason
    assert good.completed and good.counts
    line = next(line for line in status_lines(matrix) if line.startswith(ids[0]))
    assert "written by" in line and "not trusted" in line


def test_executor_options_read_back_pass_the_checks_of_a_config(tmp_path, no_launch, capsys):
    """Even a plan sealed by you (an older version's checks, say) is loaded by the checks of
    a .config: sbatch options the executor sets itself are refused before any submission."""
    matrix_dir, _, _ = planned(tmp_path)
    path = matrix_dir / "matrix.json"
    plan = json.loads(path.read_text())
    plan["config"].update(
        CONFIG_MATRIX_EXECUTOR_SLURM="y",
        CONFIG_MATRIX_EXECUTOR_LOCAL="n",
        CONFIG_SLURM_EXTRA_ARGS='"--output=/tmp/elsewhere"',  # strings keep their quotes
    )
    path.write_text(json.dumps(seal(plan)))
    argv = ["continue", "--results-dir", str(matrix_dir.parent), "--matrix", "demo"]
    assert cli.main(argv) == 2 and no_launch == []
    line = one_line(capsys.readouterr().err)
    assert "CONFIG_SLURM_EXTRA_ARGS" in line and "the Slurm executor sets them" in line


# -- what the trainer, the run index and record_failure write ----------------------------------


def test_a_run_directory_swapped_for_a_link_while_a_run_trains_stops_it_unwritten(
    tmp_path, tiny_spec, monkeypatch, capsys
):
    import lib.train

    spec = tiny_spec(tmp_path)  # 2 epochs
    run_dir = Path(spec.out_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(spec.to_json() + "\n")
    victim = tmp_path / "victim"
    victim.mkdir()
    original = lib.train._Run.train_one_epoch

    def swap_before_epoch_2(self, epoch, deadline):
        if epoch == 2:  # epoch 1 is on disk; the directory is moved and a link takes its place
            run_dir.rename(tmp_path / "moved")
            run_dir.symlink_to(victim)
        return original(self, epoch, deadline)

    monkeypatch.setattr(lib.train._Run, "train_one_epoch", swap_before_epoch_2)
    rc = lib.train.main([str(run_dir / "run.json")])
    err = one_line(capsys.readouterr().err)
    assert rc == lib.train.EXIT_FAILED
    assert "no longer the run directory" in err and str(run_dir) in err, err
    assert list(victim.iterdir()) == []  # nothing written through the link
    moved = tmp_path / "moved"  # the directory the run opened: epoch 1, as it was left
    doc = json.loads((moved / METRICS_FILE).read_text())
    assert doc["summary"]["status"] == STATUS_RUNNING and len(doc["epochs"]) == 1
    checkpoint = lib.train.torch.load(moved / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert not list(moved.glob(".*.tmp"))  # no temporary file left behind


def test_the_run_index_replaces_planted_links_and_leaves_their_targets_alone(tmp_path):
    from lib.run_index import INDEX_FILE, SPEEDS_FILE, RunIndex

    matrix_dir, _, specs = planned(tmp_path)
    for spec in specs:  # settled (an hour old), so that the index keeps their records
        metrics = finish(matrix_dir, spec) / METRICS_FILE
        os.utime(metrics, (metrics.stat().st_atime - 3600, metrics.stat().st_mtime - 3600))
    victims = {}
    for name in (INDEX_FILE, SPEEDS_FILE):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text("not yours\n")
        (matrix_dir / name).symlink_to(victims[name])
    index = RunIndex(matrix_dir)
    for spec in specs:
        assert index.record(spec.run_id, spec.to_dict())["run_id"] == spec.run_id
    index.save()
    for name, victim in victims.items():
        assert victim.read_text() == "not yours\n", name
        assert (matrix_dir / name).is_file() and not (matrix_dir / name).is_symlink(), name
    written = json.loads((matrix_dir / INDEX_FILE).read_text())
    assert sorted(written["runs"]) == sorted(spec.run_id for spec in specs)
    assert json.loads((matrix_dir / SPEEDS_FILE).read_text())  # the speeds of the runs read


def test_record_failure_into_a_run_directory_that_is_a_link_is_refused_untouched(
    tmp_path, tiny_spec
):
    from lib.runner import record_failure

    spec = tiny_spec(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    document = build_document(spec, [dict(EPOCH)], status=STATUS_RUNNING)
    atomic_write_json(victim / METRICS_FILE, document)
    before = (victim / METRICS_FILE).read_bytes()
    Path(spec.out_dir).symlink_to(victim)
    with pytest.raises(StoreError) as refused:
        record_failure(spec, "killed by the OOM killer")
    message = one_line(str(refused.value))
    assert "is a symbolic link" in message and spec.out_dir in message
    assert (victim / METRICS_FILE).read_bytes() == before
    assert sorted(p.name for p in victim.iterdir()) == [METRICS_FILE]


def test_an_unreadable_metrics_json_behind_a_linked_run_directory_is_not_set_aside(
    tmp_path, tiny_spec, monkeypatch
):
    import lib.runner

    spec = tiny_spec(tmp_path, matrix="m")
    matrix_dir = tmp_path / "m"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / METRICS_FILE).write_text("{torn")
    original = lib.runner._Runner.classify

    def swap_then_classify(self):  # after open_matrix's checks, before the runs are read
        (matrix_dir / spec.run_id).symlink_to(victim)
        return original(self)

    monkeypatch.setattr(lib.runner._Runner, "classify", swap_then_classify)
    rc, out = run_matrix([spec], matrix_dir, config_snapshot={}, report_settings={})
    assert rc == 1 and "is a symbolic link" in out, out
    assert sorted(p.name for p in victim.iterdir()) == [METRICS_FILE]  # not renamed through it
    assert (victim / METRICS_FILE).read_text() == "{torn"


def test_a_matrix_directory_swapped_for_a_link_before_the_report_writes_gets_nothing(
    tmp_path, monkeypatch, capsys
):
    from scripts.report import output

    matrix = write_matrix(tmp_path, "m", [FakeRun("adamwprune", "state", 0.5, 0, [70.0])])
    victim = tmp_path / "victim"
    victim.mkdir()
    original = output.load_matrix

    def load_then_swap(matrix_dir):  # read through the store, then swapped for a link
        results = original(matrix_dir)
        matrix.rename(tmp_path / "moved")
        matrix.symlink_to(victim)
        return results

    monkeypatch.setattr(output, "load_matrix", load_then_swap)
    rc = report_cli.main(["--results-dir", str(tmp_path), "--matrix", "m"])
    err = one_line(capsys.readouterr().err)
    assert rc == 2 and "is a symbolic link" in err and "nothing written" in err, err
    assert list(victim.iterdir()) == []  # no report, no CSV, no plots directory


def test_the_plots_directory_swapped_for_a_link_is_neither_written_nor_emptied(tmp_path):
    """Each plot is written through a descriptor of plots/ opened without following a link,
    and stale plots are removed through it: a plots/ swapped for a link after the report's
    check gets nothing, and a file of a plot's name in the link's target stays."""
    import matplotlib.pyplot as plt

    from scripts.report import plots
    from scripts.report.data import ReportError

    matrix = write_matrix(tmp_path, "m", [FakeRun("adamwprune", "state", 0.5, 0, [70.0])])
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "sparsity.png").write_bytes(b"someone else's file")
    (matrix / "plots").symlink_to(victim)
    with pytest.raises(ReportError, match="nothing written"):
        plots._save(plt.figure(), matrix / "plots" / "accuracy_vs_sparsity.png")
    with pytest.raises(ReportError, match="symbolic link"):
        plots.render_plots(load_matrix(matrix), ["adamwprune-adamw_state-hybrid"], matrix / "plots")
    assert [p.name for p in victim.iterdir()] == ["sparsity.png"]
    assert (victim / "sparsity.png").read_bytes() == b"someone else's file"
    (matrix / "plots").unlink()  # a real directory again: the plots are drawn there
    drawn = plots.render_plots(
        load_matrix(matrix), ["adamwprune-adamw_state-hybrid"], matrix / "plots"
    )
    assert drawn and all((matrix / "plots" / f.path.name).is_file() for f in drawn)


def test_the_lock_is_never_created_through_a_linked_matrix_directory(tmp_path):
    from lib.lock import LockRefused, MatrixLock

    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "m").symlink_to(victim)
    with pytest.raises(LockRefused) as refused:
        MatrixLock(tmp_path / "m").acquire()
    assert "is a symbolic link" in one_line(str(refused.value))
    assert list(victim.iterdir()) == []


def test_a_compare_directory_that_is_a_link_gets_nothing(tmp_path, capsys):
    """COMPARE= writes its report and plot through a descriptor of compare-A-vs-B opened
    without following a link: a link there is refused in one line, its target untouched."""
    for name in ("ma", "mb"):
        write_matrix(tmp_path, name, [FakeRun("adamwprune", "state", 0.5, 0, [70.0])])
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "compare-ma-vs-mb").symlink_to(victim)
    rc = report_cli.main(["--results-dir", str(tmp_path), "--compare", "ma", "mb"])
    err = one_line(capsys.readouterr().err)
    assert rc != 0 and "nothing written" in err and "symbolic link" in err, err
    assert list(victim.iterdir()) == []
