"""Recovery keeps every figure, results stay inside their matrix, shared machines work (#16).

Each test here failed before its fix: a rebuilt metrics.json without its memory figures, a
matrix without matrix.json swapped for another, run ids that climb out of their matrix, files
followed through symbolic links, results only their owner can read, make variables that
reach the shell, and a dead runner's lock refused as if it were alive.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_make import make
from test_report import CAND_50, FakeRun, ramp_sparsity, write_matrix
from test_runner import fake_plan, make_spec, run

import lib.cli
import lib.lock
from lib.atomic import atomic_torch_save, atomic_write_text
from lib.cli import main as cli_main
from lib.lock import LockHeld, LockRefused, MatrixLock
from lib.metrics import METRICS_FILE, atomic_write_json, newest_matrix, read_metrics
from lib.runner import EXIT_OK, EXIT_REFUSED, run_matrix
from lib.spec import RunSpec
from lib.train import EXIT_BAD_SPEC, train
from lib.train import main as train_main
from scripts.report.cli import main as report_main
from scripts.report.output import write_report

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


# -- files are created, never followed through symbolic links ------------------------------------


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside the matrix that a symbolic link in the results directory points to."""
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def _refused_without_touching(matrix_dir: Path, victim: Path, named: str) -> None:
    rc, out = run([make_spec(0)], matrix_dir)
    assert rc == EXIT_REFUSED, out
    assert out.count("\n") == 1 and named in out and "symbolic link" in out, out
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize(
    "name",
    ["train.log", "run.json", "metrics.json", "checkpoint_last.pt", "tracking.json", "tensorboard",
     "wandb"],
)  # fmt: skip
def test_a_run_file_that_is_a_symbolic_link_is_refused(tmp_path, victim, monkeypatch, name):
    fake_plan(monkeypatch)
    run_dir = tmp_path / "m" / make_spec(0).run_id
    run_dir.mkdir(parents=True)
    (run_dir / name).symlink_to(victim)
    _refused_without_touching(tmp_path / "m", victim, str(run_dir / name))


def test_a_lock_file_that_is_a_symbolic_link_is_refused(tmp_path, victim, monkeypatch):
    fake_plan(monkeypatch)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / ".lock").symlink_to(victim)
    _refused_without_touching(tmp_path / "m", victim, str(tmp_path / "m" / ".lock"))
    with pytest.raises(LockRefused, match="symbolic link"):
        MatrixLock(tmp_path / "m").acquire()  # the lock itself never opens through a link
    assert victim.read_text() == "precious\n"


def test_a_run_directory_that_is_a_symbolic_link_is_refused(tmp_path, victim, monkeypatch):
    fake_plan(monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / make_spec(0).run_id).symlink_to(elsewhere, target_is_directory=True)
    _refused_without_touching(tmp_path / "m", victim, make_spec(0).run_id)
    assert list(elsewhere.iterdir()) == []


def test_temporary_files_are_never_opened_through_a_planted_link(tmp_path, victim, monkeypatch):
    # The old fixed temporary names (.run.json.<pid>.tmp, .report.md.tmp) could be planted.
    fake_plan(monkeypatch)
    run_dir = tmp_path / "m" / make_spec(0).run_id
    run_dir.mkdir(parents=True)
    (run_dir / f".run.json.{os.getpid()}.tmp").symlink_to(victim)
    rc, out = run([make_spec(0)], tmp_path / "m")
    assert rc == EXIT_OK, out
    target = tmp_path / "report.md"
    (tmp_path / ".report.md.tmp").symlink_to(victim)
    atomic_write_text(target, "report\n")
    assert target.read_text() == "report\n"
    assert victim.read_text() == "precious\n"


# -- kept files honour the umask -----------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_every_atomic_write_honours_the_umask(tmp_path, umask):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "b.pt")
    atomic_write_text(tmp_path / "c.txt", "c\n")
    for name in ("a.json", "b.pt", "c.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_a_run_and_its_matrix_are_readable_by_the_group(tiny_spec, tmp_path, monkeypatch):
    previous = os.umask(0o022)
    try:
        fake_plan(monkeypatch)
        assert run([make_spec(0)], tmp_path / "m")[0] == EXIT_OK
        train(tiny_spec(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 1}))
    finally:
        os.umask(previous)
    kept = [tmp_path / "m" / "matrix.json", tmp_path / "m" / make_spec(0).run_id / "run.json"]
    kept += [tmp_path / "run" / n for n in ("metrics.json", "checkpoint_last.pt")]
    kept += [tmp_path / "run" / "checkpoint_best.pt"]
    for path in kept:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def _report_matrix(root: Path, name: str = "r") -> Path:
    run = FakeRun("adamwprune", "state", 0.5, 0, CAND_50, ramp_sparsity(0.5, 12))
    return write_matrix(root, name, [run], baseline="")


def test_report_files_are_never_written_through_links(tmp_path, victim):
    matrix = _report_matrix(tmp_path / "results")
    for name in ("metrics.csv", "report.md", ".report.md.tmp"):
        (matrix / name).symlink_to(victim)
    write_report(matrix)
    assert victim.read_text() == "precious\n"
    assert not (matrix / "metrics.csv").is_symlink() and not (matrix / "report.md").is_symlink()
    assert "run_id" in (matrix / "metrics.csv").read_text()


def test_a_plots_directory_that_is_a_link_is_refused(tmp_path, capsys):
    matrix = _report_matrix(tmp_path / "results")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "accuracy_evolution_keep.png").write_bytes(b"precious")
    (matrix / "plots").symlink_to(elsewhere, target_is_directory=True)
    assert report_main(["--results-dir", str(tmp_path / "results"), "--matrix", "r"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plots" in err and "symbolic link" in err, err
    assert [p.name for p in elsewhere.iterdir()] == ["accuracy_evolution_keep.png"]
    assert (elsewhere / "accuracy_evolution_keep.png").read_bytes() == b"precious"


def test_report_files_honour_the_umask(tmp_path, umask):
    matrix = _report_matrix(tmp_path / "results")
    write_report(matrix)
    kept = [matrix / "report.md", matrix / "metrics.csv", *(matrix / "plots").glob("*.png")]
    assert len(kept) > 2
    for path in kept:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# -- a matrix without its matrix.json is named, never swapped for another -------------------------


def _two_matrices(results: Path) -> tuple[Path, Path]:
    """`older` with its plan, then `newer` whose matrix.json was deleted after its runs."""
    older = _report_matrix(results, "older")
    newer = _report_matrix(results, "newer")
    past = time.time() - 100
    for path in [older, *older.rglob("*")]:
        os.utime(path, (past, past))
    (newer / "matrix.json").unlink()
    return older, newer


def _stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_continue_names_the_newest_matrix_without_its_plan(tmp_path, capsys):
    older, newer = _two_matrices(tmp_path / "results")
    before = _stamps(tmp_path / "results")
    assert cli_main(["continue", "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{newer} holds runs but no matrix.json" in err, err
    assert "continuing" not in err and _stamps(tmp_path / "results") == before


def test_report_names_the_newest_matrix_without_its_plan(tmp_path, capsys):
    older, newer = _two_matrices(tmp_path / "results")
    assert report_main(["--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{newer} holds runs but no matrix.json" in err, err
    assert not (older / "report.md").exists() and not (newer / "report.md").exists()


def test_an_older_matrix_without_its_plan_does_not_hide_the_newest(tmp_path):
    older, newer = _two_matrices(tmp_path / "results")
    (older / "matrix.json").rename(newer / "matrix.json")  # now `older` lacks its plan
    os.utime(newer / "matrix.json")  # and `newer` was written since
    past = time.time() - 100
    for path in [older, *older.rglob("*")]:
        os.utime(path, (past, past))
    assert newest_matrix(tmp_path / "results") == newer


# -- a dead runner's lock: its pid is a zombie, its children are still dying -------------------------

# Holds the flock of argv[1] for argv[2] seconds without writing to the file, as the training
# children that inherited a killed runner's lock do until PR_SET_PDEATHSIG has ended them.
INHERITED_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def zombie():
    """A process that has exited but was not collected by its parent: kill(pid, 0) succeeds."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.02)
    yield child.pid
    child.wait()


def _held_by_dying_children(matrix_dir: Path, runner_pid: int, seconds: float, host=None):
    matrix_dir.mkdir()
    host = host or socket.gethostname()
    (matrix_dir / ".lock").write_text(f"pid={runner_pid} host={host} since=2026-01-01T00:00:00Z\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", INHERITED_LOCK, str(matrix_dir / ".lock"), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_zombie_runner_is_gone_and_its_lock_is_waited_for(tmp_path, zombie):
    holder = _held_by_dying_children(tmp_path / "m", zombie, seconds=1.0)
    try:
        lock = MatrixLock(tmp_path / "m")
        message = lock.acquire()
        lock.release()
    finally:
        holder.kill()
        holder.wait()
    assert message == (
        f"taking over the lock of {tmp_path / 'm'}: its runner (pid {zombie}) ended without "
        "releasing it"
    )


def test_a_lock_kept_by_what_a_zombie_runner_left_is_refused_without_kill_advice(
    tmp_path, zombie, monkeypatch
):
    monkeypatch.setattr(lib.lock, "LOCK_WAIT_SECONDS", 0.5)
    holder = _held_by_dying_children(tmp_path / "m", zombie, seconds=60)
    message, waited = _refused_while(holder, tmp_path / "m")
    assert f"left behind by runner pid {zombie} (gone)" in message
    assert f"kill {zombie}" not in message
    assert waited >= 0.5


def _refused_while(holder: subprocess.Popen, matrix_dir: Path) -> tuple[str, float]:
    """(LockHeld's message, seconds acquire() took) while `holder` holds the lock."""
    try:
        started = time.monotonic()
        with pytest.raises(LockHeld) as refused:
            MatrixLock(matrix_dir).acquire()
        return str(refused.value), time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()


# -- make variables reach the CLI as arguments, never as shell text ----------------------------------

ARGV_RECORDER = """#!/bin/sh
# Stands in for the interpreter: records the arguments make passed.
for a in "$@"; do printf '%s\\0' "$a"; done > "$ARGV_FILE"
"""


def _make(tmp_path: Path, *args: str, env: dict | None = None, py: str = sys.executable):
    env = {**(env or {}), "ARGV_FILE": str(tmp_path / "argv")}
    return make(*args, config_path=tmp_path / "no.config", env=env, py=py)


def _argv(tmp_path: Path, *args: str, env: dict | None = None) -> list[str]:
    recorder = tmp_path / "python"
    recorder.write_text(ARGV_RECORDER)
    recorder.chmod(0o755)
    res = _make(tmp_path, *args, env=env, py=str(recorder))
    assert res.returncode == 0, res.stderr
    return (tmp_path / "argv").read_text().split("\0")[:-1]


HOSTILE = [
    ("continue", "MATRIX", "x; touch {f}"),
    ("continue", "MATRIX", "$(shell touch {f})"),
    ("continue", "MATRIX", "$$(touch {f})"),
    ("continue", "MATRIX", "`touch {f}`"),
    ("continue", "MATRIX", "'; touch {f}; '"),
    ("status", "MATRIX", "x; touch {f}"),
    ("status", "MATRIX", "$(shell touch {f})"),
    ("report", "MATRIX", "x;>{f}"),
    ("report", "COMPARE", "a b;>{f}"),
    ("report", "COMPARE", "a $(shell touch {f})"),
    ("report", "COMPARE", "a $$(>{f})"),
    ("continue", "RERUN_FAILED", "1;>{f}"),
]


@pytest.mark.parametrize(("target", "variable", "value"), HOSTILE)
def test_make_variables_never_run_as_commands(tmp_path, target, variable, value):
    marker = tmp_path / "F"
    res = _make(tmp_path, target, f"{variable}={value.format(f=marker)}")
    assert res.returncode != 0
    assert not marker.exists(), res.stdout + res.stderr


def test_make_passes_each_variable_as_one_argument(tmp_path):
    assert _argv(tmp_path, "continue", "MATRIX=it's mine", "RERUN_FAILED=0") == [
        "-m", "lib.cli", "continue", "--matrix", "it's mine", "--rerun-failed=0"
    ]  # fmt: skip
    assert _argv(tmp_path, "report", "COMPARE=a $b") == [
        "-m", "scripts.report", "--compare", "a", "$b"
    ]  # fmt: skip
    assert _argv(tmp_path, "test-matrix", "RERUN_FAILED=") == ["-m", "lib.cli", "test-matrix"]


def test_make_ignores_the_variables_in_the_environment(tmp_path):
    env = {"MATRIX": "other", "RERUN_FAILED": "0", "COMPARE": "a b"}
    assert _argv(tmp_path, "continue", env=env) == ["-m", "lib.cli", "continue"]
    assert _argv(tmp_path, "report", env=env) == ["-m", "scripts.report"]
    assert _argv(tmp_path, "status", env=env) == ["-m", "lib.cli", "status"]
    res = _make(tmp_path, "continue", env=env, py=str(tmp_path / "python"))
    assert "MATRIX in the environment is ignored" in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("value", "rerun"),
    [("0", False), ("", False), ("no", False), ("No", False), ("false", False), ("off", False)]
    + [("1", True), ("yes", True), ("true", True), ("on", True)],
)
def test_rerun_failed_zero_empty_and_no_mean_no(tmp_path, monkeypatch, value, rerun):
    seen = {}
    monkeypatch.setattr(
        lib.cli, "_run", lambda config, specs, rerun_failed: seen.update(r=rerun_failed) or 0
    )
    monkeypatch.setattr(lib.cli.cfg, "load", lambda path: None)
    monkeypatch.setattr(lib.cli, "_plan", lambda config: [])
    monkeypatch.setattr(lib.cli, "_need_config", lambda: "x")
    assert cli_main(["test-matrix", f"--rerun-failed={value}"]) == 0
    assert seen == {"r": rerun}


def test_rerun_failed_rejects_anything_else_in_one_line(tmp_path, capsys):
    assert cli_main(["continue", "--results-dir", str(tmp_path), "--rerun-failed=maybe"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RERUN_FAILED='maybe'" in err and "accepted" in err, err


@pytest.mark.parametrize("option", ["--matrix", "--compare"])
def test_report_names_are_single_directories(tmp_path, capsys, option):
    results = tmp_path / "a" / "results"
    _report_matrix(tmp_path, "outside")  # a matrix outside the results directory
    _report_matrix(results, "inside")
    names = ["../../outside"] if option == "--matrix" else ["inside", "../../outside"]
    assert report_main(["--results-dir", str(results), option, *names]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'../../outside' is not a matrix name" in err, err
    assert not (tmp_path / "outside" / "report.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "outside"]
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == sorted(
        p.name for p in (results / "inside").iterdir()
    )


# -- done when: a damaged metrics.json and a deleted matrix.json keep every figure ----------------


def _figures(doc: dict) -> dict:
    """Everything a report shows of a run (the environment is that of the last process)."""
    return {k: v for k, v in doc.items() if k != "environment"}


@pytest.mark.slow
def test_every_figure_survives_a_damaged_metrics_json_and_a_deleted_matrix_json(
    tiny_spec, tmp_path, capsys
):
    # One real run (the runner's tests show that the other runs of a matrix are not touched).
    results = tmp_path / "results"
    matrix = results / "m"
    overrides = {**PRUNED, "train": {"epochs": 2, "max_steps_per_epoch": 1}}
    spec = tiny_spec(tmp_path, matrix="m", **overrides)
    specs = [tiny_spec(tmp_path, matrix="m", out_dir=str(matrix / spec.run_id), **overrides)]
    train(specs[0])  # in this process: the runner's relaunch below is the child under test
    assert run_matrix(specs, matrix, config_snapshot={}, report_settings={}) == EXIT_OK
    capsys.readouterr()
    path = matrix / specs[0].run_id / METRICS_FILE
    original = read_metrics(path)
    assert original["state_memory"]["pruning_state_bytes"] > 0

    path.write_text(path.read_text()[:100])  # torn by a crash or a full disk
    assert run_matrix(specs, matrix, config_snapshot={}, report_settings={}) == EXIT_OK
    assert _figures(read_metrics(path)) == _figures(original)
    rebuilt = read_metrics(path)

    (matrix / "matrix.json").unlink()
    before = _stamps(results)
    assert cli_main(["continue", "--results-dir", str(results)]) == 2
    assert report_main(["--results-dir", str(results)]) == 2
    assert _stamps(results) == before
    assert capsys.readouterr().err.count(f"{matrix} holds runs but no matrix.json") == 2

    # make test-matrix with the same .config writes the plan again and trains nothing.
    assert run_matrix(specs, matrix, config_snapshot={}, report_settings={}) == EXIT_OK
    assert read_metrics(path) == rebuilt and path.stat().st_mtime_ns == before[path]
    assert (matrix / "matrix.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_a_lock_held_by_a_runner_on_another_host_is_refused_at_once_naming_it(
    tmp_path, zombie, monkeypatch
):
    """On a shared file system the recorded pid belongs to another machine: a local pid of the
    same number (here a zombie, 'gone') must not make the runner wait for it or call it gone."""
    monkeypatch.setattr(lib.lock, "LOCK_WAIT_SECONDS", 30.0)
    holder = _held_by_dying_children(tmp_path / "m", zombie, seconds=60, host="node-7")
    message, waited = _refused_while(holder, tmp_path / "m")
    assert message == (
        f"{tmp_path / 'm'} is in use by a runner on host node-7 (pid {zombie}); wait for it to "
        "end or stop it there first"
    )
    assert waited < 10


def test_a_free_lock_left_by_a_runner_on_another_host_is_taken_over_naming_it(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / ".lock").write_text(
        f"pid={os.getpid()} host=node-7 since=2026-01-01T00:00:00Z\n"
    )
    lock = MatrixLock(tmp_path / "m")
    message = lock.acquire()
    lock.release()
    assert message == (
        f"taking over the lock of {tmp_path / 'm'}: its runner (pid {os.getpid()} on host "
        "node-7) ended without releasing it"
    )
