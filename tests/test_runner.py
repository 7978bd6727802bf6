"""The matrix runner (lib.runner): resume, isolation, locking, signals, parallel slots.

Most tests drive the runner with a fake trainer, this very file run as a script: it follows
the trainer's contract (metrics.json per docs/metrics.md after every epoch, resume from
checkpoint_last.pt, exit 0/1/130/143) in a fraction of a second, and appends what it did to
`<run_dir>/events.log` so the tests can count launches, epochs and completions. What each run
does is chosen per run id through the FAKE_TRAINER environment variable (JSON).

One test runs the real trainer (lib.train) on a tiny CPU model.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lib.metrics import (
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_RUNNING,
    atomic_write_json,
    build_document,
    read_metrics,
)
from lib.runner import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    RunnerRefused,
    check_gpu_sharing,
    child_threads,
    format_plan,
    run_matrix,
    usable_cpus,
)
from lib.spec import DataSpec, ModelSpec, OptimizerSpec, PruningSpec, RunSpec, TrainSpec

THIS_FILE = str(Path(__file__).resolve())
FAKE_CHILD = [sys.executable, THIS_FILE]
SNAPSHOT = {"CONFIG_TRAIN_EPOCHS": "3"}
REPORT = {"baseline": "", "candidate": "", "plots": []}


@pytest.fixture(autouse=True)
def _no_fake_plan_from_outside(monkeypatch):
    monkeypatch.delenv("FAKE_TRAINER", raising=False)


def make_spec(seed: int, *, epochs: int = 3, sparsity: float = 0.0, lr: float = 1e-3) -> RunSpec:
    pruning = PruningSpec(method="magnitude", sparsity=sparsity) if sparsity else PruningSpec()
    return RunSpec(
        matrix="m",
        model=ModelSpec(name="resnet18", stem="cifar"),
        data=DataSpec(
            name="synthetic",
            image_size=8,
            workers=0,
            pin_memory=False,
            persistent_workers=False,
            synthetic_classes=4,
            synthetic_train_size=16,
            synthetic_val_size=8,
        ),
        train=TrainSpec(epochs=epochs, batch_size=8, device="cpu", max_steps_per_epoch=2),
        optimizer=OptimizerSpec(name="adamw", lr=lr),
        pruning=pruning,
        seed=seed,
    )


def run(specs, matrix_dir, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    kwargs.setdefault("child_cmd", FAKE_CHILD)
    rc = run_matrix(
        specs, matrix_dir, config_snapshot=SNAPSHOT, report_settings=REPORT, out=out, **kwargs
    )
    return rc, out.getvalue()


def fake_plan(monkeypatch, **per_run: dict) -> None:
    monkeypatch.setenv("FAKE_TRAINER", json.dumps(per_run))


def events(run_dir: Path) -> list[list[str]]:
    path = run_dir / "events.log"
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line]


def count(run_dir: Path, kind: str) -> int:
    return sum(1 for e in events(run_dir) if e[0] == kind)


def manifest(matrix_dir: Path) -> dict:
    return json.loads((matrix_dir / "matrix.json").read_text())


def file_stamps(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(run_dir.iterdir())}


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; only its parent has not collected it yet


def start_runner_process(specs, matrix_dir: Path, env_plan: dict, jobs: int = 1, log=None):
    """A runner in its own process, so it can be killed like a user would. With `log` (an
    open file) its output goes there, so a test can wait on what it printed so far."""
    plan_path = matrix_dir.parent / f"{matrix_dir.name}-specs.json"
    plan_path.write_text(json.dumps([s.to_dict() for s in specs]))
    env = dict(os.environ, FAKE_TRAINER=json.dumps(env_plan))
    return subprocess.Popen(
        [sys.executable, THIS_FILE, "--runner", str(matrix_dir), str(plan_path), str(jobs)],
        env=env,
        stdout=log if log is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# ---------------------------------------------------------------------------------------------
# Runs, skipping, resuming
# ---------------------------------------------------------------------------------------------


def test_runs_every_run_once_and_records_the_matrix(tmp_path, monkeypatch):
    fake_plan(monkeypatch)
    specs = [make_spec(0), make_spec(1, sparsity=0.5)]
    matrix_dir = tmp_path / "m"
    rc, out = run(specs, matrix_dir)
    assert rc == EXIT_OK, out
    doc = manifest(matrix_dir)
    assert doc["schema_version"] == 1 and doc["name"] == "m"
    assert doc["config"] == SNAPSHOT and doc["report"] == REPORT
    assert [r["run_id"] for r in doc["runs"]] == [s.run_id for s in specs]
    for entry, spec in zip(doc["runs"], specs, strict=True):
        assert entry["status"] == STATUS_COMPLETED
        assert entry["attempts"] == 1 and entry["error"] is None
        assert entry["method_key"] == spec.method_key
        assert entry["started_at"] and entry["finished_at"]
        run_dir = matrix_dir / spec.run_id
        assert RunSpec.from_json((run_dir / "run.json").read_text()).identity() == spec.identity()
        assert read_metrics(run_dir / "metrics.json")["summary"]["status"] == STATUS_COMPLETED
        assert (run_dir / "train.log").read_text().startswith("===== attempt 1 started")
        assert count(run_dir, "start") == 1 and count(run_dir, "completed") == 1
    assert "2/2 completed, 0 failed" in out
    assert "2/2 done, 0 running, 0 queued" in out
    # the runs it trained are in the matrix's speeds.json for other matrices' estimates
    speeds = json.loads((matrix_dir / "speeds.json").read_text())
    assert [row["runs"] for row in speeds["speeds"]] == [2]


def test_finished_runs_are_skipped_and_left_untouched(tmp_path, monkeypatch):
    fake_plan(monkeypatch)
    specs = [make_spec(0), make_spec(1)]
    matrix_dir = tmp_path / "m"
    assert run(specs, matrix_dir)[0] == EXIT_OK
    before = {s.run_id: file_stamps(matrix_dir / s.run_id) for s in specs}
    time.sleep(0.02)  # a rewrite now would have a different mtime
    rc, out = run(specs, matrix_dir)
    assert rc == EXIT_OK
    assert "2 already completed" in out and "0 to run" in out
    assert {s.run_id: file_stamps(matrix_dir / s.run_id) for s in specs} == before


def test_runner_killed_with_sigkill_then_continue_completes_each_run_once(tmp_path):
    specs = [make_spec(seed, epochs=3) for seed in range(3)]
    matrix_dir = tmp_path / "m"
    # The second run's epochs are slow enough that an orphan could not finish it unnoticed.
    slow = {"*": {"epoch_seconds": 0.2}, specs[1].run_id: {"epoch_seconds": 1.5}}
    runner = start_runner_process(specs, matrix_dir, slow)
    first, second, _ = (matrix_dir / s.run_id for s in specs)
    try:
        wait_for(
            lambda: count(first, "completed") == 1 and count(second, "epoch") >= 1,
            what="the second run's first epoch",
        )
    finally:
        runner.kill()
        runner.wait()
    child_pid = int(events(second)[0][1])
    assert count(matrix_dir / specs[2].run_id, "start") == 0
    # The child must not outlive its runner: a later runner would race it for the same files.
    wait_for(lambda: not pid_alive(child_pid), timeout=2.0, what="the orphaned child to die")
    assert count(second, "completed") == 0
    assert manifest(matrix_dir)["runs"][1]["status"] == "running"  # as the dead runner left it

    finished_before = file_stamps(first)
    epochs_before = len(json.loads((second / "checkpoint_last.pt").read_text())["epochs"])
    out = io.StringIO()
    rc = run_matrix(
        specs,
        matrix_dir,
        config_snapshot=SNAPSHOT,
        report_settings=REPORT,
        child_cmd=FAKE_CHILD,
        out=out,
    )
    assert rc == EXIT_OK, out.getvalue()
    assert file_stamps(first) == finished_before
    for spec in specs:
        run_dir = matrix_dir / spec.run_id
        assert count(run_dir, "completed") == 1, spec.run_id
        doc = read_metrics(run_dir / "metrics.json")
        assert [e["epoch"] for e in doc["epochs"]] == [1, 2, 3]
    # The interrupted run resumed after its last saved epoch instead of starting over.
    resumed_at = [int(e[3]) for e in events(second) if e[0] == "start"]
    assert resumed_at == [0, epochs_before]
    assert "resuming after epoch" in out.getvalue()
    runs = {r["run_id"]: r for r in manifest(matrix_dir)["runs"]}
    assert runs[specs[0].run_id]["attempts"] == 1
    assert runs[specs[1].run_id]["attempts"] == 2
    assert all(r["status"] == STATUS_COMPLETED for r in runs.values())


def test_sigterm_to_the_runner_checkpoints_children_and_exits_130(tmp_path):
    specs = [make_spec(0, epochs=3), make_spec(1, epochs=3)]
    matrix_dir = tmp_path / "m"
    log_path = tmp_path / "runner.log"
    dirs = [matrix_dir / s.run_id for s in specs]
    with open(log_path, "w") as log:
        runner = start_runner_process(
            specs, matrix_dir, {"*": {"epoch_seconds": 1.0}}, jobs=2, log=log
        )
        try:
            # Signal only once the runner has reported a finished epoch: what it prints is
            # checked below, and the runs must still be mid-matrix (3 epochs of 1 s each).
            wait_for(lambda: f"{specs[0].run_id} 1/3" in log_path.read_text(), what="progress")
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=30)
        finally:
            runner.kill()
    output = log_path.read_text()
    assert runner.returncode == EXIT_INTERRUPTED, output
    assert "received SIGTERM" in output and "make continue" in output
    # Progress: counts, each running run's epoch and accuracy, and an ETA from epoch timings.
    progress = [line for line in output.splitlines() if "2 running" in line]
    assert any(
        f"{specs[0].run_id} 1/3 50.0%" in line and re.search(r"ETA \d+s$", line)
        for line in progress
    ), output
    for d in dirs:
        assert count(d, "interrupted") == 1 and count(d, "completed") == 0
        assert read_metrics(d / "metrics.json")["summary"]["status"] == STATUS_RUNNING
    assert [r["status"] for r in manifest(matrix_dir)["runs"]] == ["pending", "pending"]

    rc, out = run(specs, matrix_dir, jobs=2)
    assert rc == EXIT_OK, out
    for d in dirs:
        assert count(d, "completed") == 1
        assert [e["epoch"] for e in read_metrics(d / "metrics.json")["epochs"]] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


def test_a_failing_run_does_not_stop_the_others(tmp_path, monkeypatch):
    specs = [make_spec(0), make_spec(1), make_spec(2)]
    fake_plan(monkeypatch, **{specs[1].run_id: {"mode": "raise", "at_epoch": 2}})
    matrix_dir = tmp_path / "m"
    rc, out = run(specs, matrix_dir)
    assert rc == EXIT_FAILED
    statuses = [r["status"] for r in manifest(matrix_dir)["runs"]]
    assert statuses == [STATUS_COMPLETED, STATUS_FAILED, STATUS_COMPLETED]
    failed = manifest(matrix_dir)["runs"][1]
    assert failed["error"] == "ValueError: boom at epoch 2"
    assert "Traceback" in failed["log_tail"] and "boom" in failed["log_tail"]
    assert f"FAILED {specs[1].run_id}: ValueError: boom at epoch 2" in out


def test_killed_child_is_failed_and_retried_only_when_asked(tmp_path, monkeypatch):
    specs = [make_spec(0), make_spec(1)]
    fake_plan(monkeypatch, **{specs[0].run_id: {"mode": "sigkill", "at_epoch": 2}})
    matrix_dir = tmp_path / "m"
    rc, out = run(specs, matrix_dir)
    assert rc == EXIT_FAILED
    victim = matrix_dir / specs[0].run_id
    entry = manifest(matrix_dir)["runs"][0]
    assert entry["status"] == STATUS_FAILED and "killed by SIGKILL" in entry["error"]
    # The reason is in metrics.json too, so the next runner knows the run failed.
    summary = read_metrics(victim / "metrics.json")["summary"]
    assert summary["status"] == STATUS_FAILED and "SIGKILL" in summary["error"]
    assert summary["epochs_completed"] == 1

    fake_plan(monkeypatch)  # whatever was wrong is fixed now
    rc, out = run(specs, matrix_dir)
    assert rc == EXIT_FAILED and count(victim, "start") == 1
    assert "1 failed earlier (not retried)" in out and "RERUN_FAILED=1" in out

    rc, out = run(specs, matrix_dir, rerun_failed=True)
    assert rc == EXIT_OK, out
    assert count(victim, "start") == 2 and count(victim, "completed") == 1
    assert count(matrix_dir / specs[1].run_id, "start") == 1
    assert [e["epoch"] for e in read_metrics(victim / "metrics.json")["epochs"]] == [1, 2, 3]
    assert manifest(matrix_dir)["runs"][0]["attempts"] == 2


def test_fail_fast_stops_at_the_first_failure(tmp_path, monkeypatch):
    specs = [make_spec(0), make_spec(1), make_spec(2)]
    fake_plan(monkeypatch, **{specs[0].run_id: {"mode": "exit", "code": 3}})
    matrix_dir = tmp_path / "m"
    rc, out = run(specs, matrix_dir, fail_fast=True)
    assert rc == EXIT_FAILED
    runs = manifest(matrix_dir)["runs"]
    assert [r["status"] for r in runs] == [STATUS_FAILED, "pending", "pending"]
    assert runs[0]["error"].startswith("exit status 3: giving up with code 3")
    assert not (matrix_dir / specs[1].run_id).exists()
    assert "fail-fast" in out


def test_corrupt_metrics_is_set_aside_and_only_that_run_reruns(tmp_path, monkeypatch):
    fake_plan(monkeypatch)
    specs = [make_spec(0), make_spec(1)]
    matrix_dir = tmp_path / "m"
    assert run(specs, matrix_dir)[0] == EXIT_OK
    broken, intact = (matrix_dir / s.run_id for s in specs)
    (broken / "metrics.json").write_text('{"schema_version": 1, "epochs": [')
    intact_before = file_stamps(intact)
    rc, out = run(specs, matrix_dir)
    assert rc == EXIT_OK, out
    assert f"{specs[0].run_id}: metrics.json is unreadable" in out
    aside = list(broken.glob("metrics.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().endswith("[")
    assert read_metrics(broken / "metrics.json")["summary"]["status"] == STATUS_COMPLETED
    assert count(broken, "start") == 2 and count(broken, "completed") == 2
    assert file_stamps(intact) == intact_before


def test_a_reader_that_goes_away_does_not_end_the_matrix(tmp_path):
    # `make test-matrix | head`, or a `tee` killed by the same Ctrl-C: the runner's output breaks
    # (EPIPE). It used to die with a traceback, leaving matrix.json saying `running`.
    specs = [make_spec(0), make_spec(1)]
    matrix_dir = tmp_path / "m"
    proc = start_runner_process(specs, matrix_dir, {"*": {"epoch_seconds": 0.2}})
    assert proc.stdout.readline()  # the first line, then the reader goes away
    proc.stdout.close()
    assert proc.wait(timeout=120) == EXIT_OK
    doc = manifest(matrix_dir)
    assert [r["status"] for r in doc["runs"]] == [STATUS_COMPLETED, STATUS_COMPLETED]
    for spec in specs:
        assert count(matrix_dir / spec.run_id, "start") == 1


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


LOCK_HOLDER = """
import sys, time
from lib.lock import MatrixLock
MatrixLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_refuses_a_second_runner_and_a_stale_lock_is_taken_over(tmp_path, monkeypatch):
    fake_plan(monkeypatch)
    matrix_dir = tmp_path / "m"
    matrix_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(matrix_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, out = run([make_spec(0)], matrix_dir)
        assert rc == EXIT_REFUSED
        assert out.strip() == (
            f"error: {matrix_dir} is in use by another runner (pid {holder.pid}); wait for it "
            f"to end or stop it (kill {holder.pid}) first"
        )
        assert not (matrix_dir / make_spec(0).run_id).exists()
    finally:
        holder.kill()
        holder.wait()
    rc, out = run([make_spec(0)], matrix_dir)
    assert rc == EXIT_OK
    assert f"its runner (pid {holder.pid}) ended without releasing it" in out
    assert (matrix_dir / ".lock").read_text() == ""  # released cleanly: nothing to take over
    assert "taking over" not in run([make_spec(0)], matrix_dir)[1]


def test_changed_configuration_for_an_existing_run_is_refused(tmp_path, monkeypatch):
    fake_plan(monkeypatch)
    matrix_dir = tmp_path / "m"
    assert run([make_spec(0, epochs=2), make_spec(1)], matrix_dir)[0] == EXIT_OK
    run_dir = matrix_dir / make_spec(0).run_id
    before = file_stamps(run_dir)
    rc, out = run([make_spec(0, epochs=3, lr=0.01), make_spec(1)], matrix_dir)
    assert rc == EXIT_REFUSED
    assert len(out.strip().splitlines()) == 1
    assert out.startswith(f"error: run {make_spec(0).run_id} in {run_dir} was set up with")
    assert "optimizer.lr: 0.001 -> 0.01" in out and "train.epochs: 2 -> 3" in out
    assert file_stamps(run_dir) == before


def test_unwritable_results_dir_and_bad_arguments_are_refused(tmp_path, monkeypatch):
    fake_plan(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc, out = run([make_spec(0)], blocker / "m")
    assert rc == EXIT_REFUSED and out.startswith(f"error: results directory {blocker / 'm'}")
    rc, out = run([make_spec(0)], tmp_path / "m", jobs=0)
    assert rc == EXIT_REFUSED and "jobs=0 is not valid; accepted: an integer >= 1" in out
    rc, out = run([make_spec(0)], tmp_path / "m", gpus=["0", "0"])
    assert rc == EXIT_REFUSED and "distinct device ids" in out


def test_several_jobs_without_a_gpu_list_on_a_gpu_machine_are_refused(tmp_path, monkeypatch):
    gpu = [dataclasses.replace(make_spec(0), train=TrainSpec(device="auto"))]
    cpu = [make_spec(0)]
    # The decision, with the device count injected (no GPU needed).
    with pytest.raises(RunnerRefused, match=r'CONFIG_MATRIX_GPUS \(e\.g\. "0,1"\)'):
        check_gpu_sharing(2, None, gpu, lambda: 4)
    for jobs, gpus, specs, count in [
        (1, None, gpu, 4),  # one run at a time
        (2, ["0", "1"], gpu, 4),  # one run per listed GPU
        (2, None, cpu, 4),  # CPU runs share the cores, not a GPU
        (2, None, gpu, 0),  # no GPU visible: auto trains on the CPU
    ]:
        check_gpu_sharing(jobs, gpus, specs, lambda count=count: count)
    # Through the runner: one line, nothing started.
    monkeypatch.setattr("lib.runner._cuda_device_count", lambda: 1)
    rc, out = run(gpu, tmp_path / "m", jobs=3)
    assert rc == EXIT_REFUSED and len(out.strip().splitlines()) == 1
    assert out.startswith("error: CONFIG_MATRIX_JOBS=3 without a GPU list would train 3 runs")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------
# Parallel slots
# ---------------------------------------------------------------------------------------------


def test_one_run_per_gpu_and_the_next_starts_when_a_slot_frees(tmp_path, monkeypatch):
    specs = [make_spec(seed, epochs=1) for seed in range(4)]
    fake_plan(
        monkeypatch,
        **{specs[0].run_id: {"until_completed": [s.run_id for s in specs[1:]]}},
        **{"*": {"epoch_seconds": 0.05}},
    )
    matrix_dir = tmp_path / "m"
    rc, out = run(specs, matrix_dir, gpus=["3", "5"])
    assert rc == EXIT_OK, out
    spans = []
    for spec in specs:
        ev = events(matrix_dir / spec.run_id)
        start = next(e for e in ev if e[0] == "start")
        end = next(e for e in ev if e[0] == "completed")
        spans.append((start[2], float(start[4]), float(end[2])))
    assert {gpu for gpu, _, _ in spans} == {"3", "5"}
    for i, (gpu_a, start_a, end_a) in enumerate(spans):
        for gpu_b, start_b, end_b in spans[i + 1 :]:
            if gpu_a == gpu_b:
                assert end_a <= start_b or end_b <= start_a, "two runs shared one GPU"
    # While the long first run holds one GPU, every other run went through the other one.
    assert all(start < spans[0][2] for _, start, _ in spans[1:])


# ---------------------------------------------------------------------------------------------
# Dry run
# ---------------------------------------------------------------------------------------------


def _epoch(n: int, seconds: float) -> dict:
    return {
        "epoch": n,
        "test_top1": 50.0,
        "test_top5": 90.0,
        "test_loss": 1.0,
        "train_loss": 1.0,
        "train_top1": 50.0,
        "sparsity": 0.0,
        "epoch_seconds": seconds,
    }


def test_format_plan_shows_states_counts_and_an_estimate(tmp_path):
    root = tmp_path / "results"
    done, failed, resumable, new = (make_spec(s, epochs=4) for s in range(4))

    def put(spec: RunSpec, epochs: int, status: str, seconds: float = 10.0) -> None:
        run_dir = root / spec.matrix / spec.run_id
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(spec.to_json())
        doc = build_document(
            spec, [_epoch(n, seconds) for n in range(1, epochs + 1)], status=status
        )
        atomic_write_json(run_dir / "metrics.json", doc)

    assert "estimated duration: unknown" in format_plan([done], root)
    put(done, 4, STATUS_COMPLETED)
    put(failed, 1, STATUS_FAILED)
    put(resumable, 1, STATUS_RUNNING)
    text = format_plan([done, failed, resumable, new], root)
    lines = text.splitlines()
    row = [done.run_id, "adamw", "none", "seed", "0", "4/4", "epochs", "completed"]
    assert lines[0].split() == row  # the states of lib/store.py's one vocabulary
    assert lines[1].split()[-1] == "failed" and lines[2].split()[-1] == "stopped"
    assert lines[2].split()[-3] == "1/4" and lines[3].split()[-1] == "pending"
    assert "4 runs: 1 completed, 1 failed, 1 stopped, 1 pending" in text
    # (4 - 1) + 4 epochs left at 10 s each, one run at a time
    assert "estimated duration: 1m10s one run at a time" in text

    changed = make_spec(0, epochs=5)
    text = format_plan([changed], root)
    assert text.splitlines()[0].split()[-1] == "changed"
    assert "test-matrix refuses" in text
    assert "nothing left to train" not in text and "estimated duration" not in text


@pytest.mark.parametrize(
    ("decode", "device", "expected"),
    [
        ("pil", "cuda", "needs 12 CPU core(s) (pil: 264 img/s per core)"),
        ("uint8", "cuda", "needs 1 CPU core(s) (bytes: 11,500 img/s per core) reading files"),
        ("uint8", "auto", "7 CPU core(s) (uint8: 436 img/s per core) if no GPU is found"),
    ],
)
def test_dry_run_says_how_many_cores_the_decode_path_needs(tmp_path, decode, device, expected):
    spec = make_spec(0)
    data = DataSpec(name="imagenet", decode=decode, target_images_per_second=3000, workers=8)
    spec = dataclasses.replace(
        spec, data=data, train=dataclasses.replace(spec.train, device=device)
    )
    lines = [x for x in format_plan([spec], tmp_path).splitlines() if x.startswith("input:")]
    assert len(lines) == 1 and expected in lines[0]
    assert lines[0].startswith("input: 3,000 img/s (CONFIG_DATA_TARGET_IMAGES_PER_SECOND)")
    # 1,000 img/s on PIL: ceil(1000 / 264) = 4 cores; the target comes from the spec.
    slower = dataclasses.replace(
        spec, data=dataclasses.replace(data, target_images_per_second=1000)
    )
    if decode == "pil":
        assert "needs 4 CPU core(s)" in format_plan([slower], tmp_path)
    assert "input:" not in format_plan([make_spec(0)], tmp_path)  # synthetic data: no line


@pytest.mark.parametrize("decode", ["pil", "uint8"])
def test_the_input_estimate_is_left_out_where_it_does_not_apply(tmp_path, decode):
    """A CPU-device matrix: the model sets the pace, no GPU waits for 3,000 img/s. Your own
    ImageFolder on a GPU gets the estimate as ImageNet does."""
    spec = make_spec(0)

    def plan_with(name: str, device: str) -> str:
        data = DataSpec(name=name, decode=decode, train_dir="t", val_dir="v")
        train = dataclasses.replace(spec.train, device=device)
        return format_plan([dataclasses.replace(spec, data=data, train=train)], tmp_path)

    assert "input:" not in plan_with("imagenet", "cpu")
    assert "input:" not in plan_with("imagefolder", "cpu")
    assert "input: 3,000 img/s" in plan_with("imagefolder", "cuda")


# ---------------------------------------------------------------------------------------------
# The real trainer
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_trainer_runs_a_tiny_matrix(tmp_path):
    specs = [make_spec(0, epochs=2), make_spec(1, epochs=1, sparsity=0.5)]
    # Prune from the first step, so the tiny run reaches its target.
    specs[1] = replace(
        specs[1], pruning=replace(specs[1].pruning, start_step=1, end_epoch=1, interval=1)
    )
    matrix_dir = tmp_path / "m"
    out = io.StringIO()
    rc = run_matrix(specs, matrix_dir, config_snapshot=SNAPSHOT, report_settings=REPORT, out=out)
    runs = manifest(matrix_dir)["runs"]
    assert rc == EXIT_OK, (out.getvalue(), [(r["error"], r["log_tail"]) for r in runs])
    for spec in specs:
        run_dir = matrix_dir / spec.run_id
        doc = read_metrics(run_dir / "metrics.json")
        assert doc["summary"]["status"] == STATUS_COMPLETED
        assert len(doc["epochs"]) == spec.train.epochs
        assert (run_dir / "checkpoint_last.pt").exists()
    assert "top-1" in out.getvalue()


# ---------------------------------------------------------------------------------------------
# The fake trainer and the runner driver (this file run as a script)
# ---------------------------------------------------------------------------------------------


def _fake_trainer(run_json: str) -> int:
    spec = RunSpec.from_json(Path(run_json).read_text())
    run_dir = Path(run_json).parent
    plans = json.loads(os.environ.get("FAKE_TRAINER", "{}"))
    plan = plans.get(spec.run_id, plans.get("*", {}))
    metrics_path, checkpoint = run_dir / "metrics.json", run_dir / "checkpoint_last.pt"

    def log_event(*fields) -> None:
        with open(run_dir / "events.log", "a") as f:
            f.write(" ".join(str(x) for x in fields) + "\n")

    if metrics_path.exists():
        try:
            if read_metrics(metrics_path)["summary"]["status"] == STATUS_COMPLETED:
                return 0
        except ValueError:
            pass
    epochs = json.loads(checkpoint.read_text())["epochs"] if checkpoint.exists() else []
    cuda = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
    log_event("start", os.getpid(), cuda, len(epochs), time.time())
    print(f"fake trainer {spec.run_id} from epoch {len(epochs)}", flush=True)
    stop: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, f: stop.append(s))

    def write(status: str, error: str | None = None) -> None:
        atomic_write_json(metrics_path, build_document(spec, epochs, status=status, error=error))

    write(STATUS_RUNNING)
    # `until_completed`: run ids of the same matrix whose completion ends this run's epoch
    # (capped at 60 s), so a test can hold a slot for as long as the others take, however
    # slowly a loaded machine starts their processes.
    waited_for = [run_dir.parent / rid / "events.log" for rid in plan.get("until_completed", [])]

    def others_completed() -> bool:
        return all(p.exists() and "completed" in p.read_text() for p in waited_for)

    for n in range(len(epochs) + 1, spec.train.epochs + 1):
        seconds = 60.0 if waited_for else plan.get("epoch_seconds", 0.02)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop:
            if waited_for and others_completed():
                break
            time.sleep(0.01)
        if stop:
            write(STATUS_RUNNING)
            log_event("interrupted", n)
            return 128 + stop[0]
        if n == plan.get("at_epoch", 1):
            mode = plan.get("mode")
            if mode == "raise":
                try:
                    raise ValueError(f"boom at epoch {n}")
                except ValueError as e:
                    import traceback

                    traceback.print_exc()
                    write(STATUS_FAILED, f"ValueError: {e}")
                    return 1
            if mode == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "exit":
                print(f"giving up with code {plan['code']}", flush=True)
                return plan["code"]
        epochs.append(_epoch(n, plan.get("epoch_seconds", 0.02)))
        atomic_write_json(checkpoint, {"epochs": epochs})
        write(STATUS_RUNNING)
        log_event("epoch", n)
    write(STATUS_COMPLETED)
    log_event("completed", os.environ.get("CUDA_VISIBLE_DEVICES", "-"), time.time())
    return 0


def _runner_driver(matrix_dir: str, plan_path: str, jobs: str) -> int:
    specs = [RunSpec.from_dict(d) for d in json.loads(Path(plan_path).read_text())]
    return run_matrix(
        specs,
        Path(matrix_dir),
        config_snapshot=SNAPSHOT,
        report_settings=REPORT,
        jobs=int(jobs),
        child_cmd=FAKE_CHILD,
    )


if __name__ == "__main__":
    if sys.argv[1] == "--runner":
        sys.exit(_runner_driver(*sys.argv[2:5]))
    sys.exit(_fake_trainer(sys.argv[1]))


def test_threads_follow_the_cpu_affinity_not_the_machine(monkeypatch):
    """A container or a Slurm allocation gives the process fewer CPUs than the machine has:
    parallel CPU runs split those, not os.cpu_count()."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6, 7}, raising=False)
    assert usable_cpus() == 4
    assert child_threads(2) == 2
    assert child_threads(3) == 1
    assert child_threads(8) == 1  # never 0
    monkeypatch.delattr(os, "sched_getaffinity")  # platforms without it (macOS)
    assert usable_cpus() == 64
    assert child_threads(2) == 32
