"""lib.slurm_job.MatrixRun, what one Slurm array task runs, without a cluster: the trainer is a
stand-in script and Slurm's warning (SIGUSR2) is raised in this process with a handler that
does what submitit's does (checkpoint(), then requeue by leaving). tests/slurm/ runs the real
thing against a local Slurm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from lib import slurm_job
from lib.runner import RUN_FILE
from lib.slurm_job import MatrixRun
from lib.store import seal

# Stops at SIGTERM like the trainer (exit 143); otherwise trains for a minute.
TRAINER = """\
import signal, sys, time
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
print("training", flush=True)
time.sleep(60)
"""


class Requeued(Exception):
    """What submitit's handler does after checkpoint(): the task leaves, to be started again."""


@pytest.fixture
def task(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit", reason="the Slurm extra: pip install -e '.[slurm]'")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RUN_FILE).write_text("{}\n")
    # the sealed plan the task checks its run.json against before launching (lib/store.py)
    plan = seal({"runs": [{"run_id": "run", "spec": {}}]})
    (tmp_path / "matrix.json").write_text(json.dumps(plan))
    trainer = tmp_path / "trainer.py"
    trainer.write_text(TRAINER)
    monkeypatch.setattr(slurm_job, "default_child_cmd", lambda: [sys.executable, str(trainer)])
    monkeypatch.setattr(
        submitit, "JobEnvironment", lambda: SimpleNamespace(num_tasks=1, global_rank=0, job_id="7")
    )
    run = MatrixRun(str(run_dir))
    resubmitted = []

    def submitit_handler(signum, frame):
        resubmitted.append(run.checkpoint())
        raise Requeued

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    yield run, resubmitted
    signal.signal(signal.SIGUSR2, previous)


def test_a_warning_while_the_trainer_is_being_started_still_stops_it(task, monkeypatch):
    # Slurm's warning can come at any moment, also while Popen is starting the trainer: then
    # checkpoint() must still find the trainer and stop it. If it did not, the task would
    # requeue itself and leave, and the trainer, no longer the child of any task Slurm tracks,
    # would train on beside the requeued task's trainer in the same run directory.
    run, resubmitted = task
    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen_hit_by_the_warning(*args, **kwargs):
        child = real_popen(*args, **kwargs)
        started.append(child)
        signal.raise_signal(signal.SIGUSR2)  # the child exists, Popen has not returned yet
        return child

    monkeypatch.setattr(slurm_job.subprocess, "Popen", popen_hit_by_the_warning)
    try:
        with pytest.raises(Requeued):
            run()
        (child,) = started
        deadline = time.monotonic() + 10
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is not None, "the trainer still runs after the task requeued itself"
        assert child.returncode in (143, -signal.SIGTERM)
        (again,) = resubmitted
        assert again.function.run_dir == run.run_dir
    finally:
        for child in started:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_a_warning_while_training_stops_the_trainer_and_the_task_is_resubmitted(task):
    run, resubmitted = task
    log = run.run_dir + "/train.log"

    def warn_once_training():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(log) and "training" in open(log).read():
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR2)

    # Python runs signal handlers in the main thread, between the task's polls of its trainer.
    threading.Thread(target=warn_once_training, daemon=True).start()
    with pytest.raises(Requeued):
        run()
    assert run._child is not None and run._child.returncode in (143, -signal.SIGTERM)
    (again,) = resubmitted
    assert isinstance(again.function, MatrixRun) and again.function.run_dir == run.run_dir


def test_a_run_directory_swapped_for_a_link_after_the_plan_check_gets_no_log(
    task, tmp_path, monkeypatch
):
    run, _ = task
    run_dir = tmp_path / "run"
    victim = tmp_path / "victim"
    victim.mkdir()
    checked = slurm_job.planned_run

    def check_then_swap(path):  # the plan holds, then the directory is swapped for a link
        checked(path)
        run_dir.rename(tmp_path / "moved")
        run_dir.symlink_to(victim)

    monkeypatch.setattr(slurm_job, "planned_run", check_then_swap)
    with pytest.raises(slurm_job.RunFailed) as refused:
        run()
    message = str(refused.value)
    assert "not launched" in message and "is a symbolic link" in message and "\n" not in message
    assert list(victim.iterdir()) == []  # no train.log written through the link
    assert run._child is None  # no trainer started
