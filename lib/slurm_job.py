"""What one Slurm array task runs: the trainer of one run, as the local runner starts it.

submitit pickles a `MatrixRun` per array task and calls it on the compute node. It starts
`python -m lib.train <run_dir>/run.json` (the local runner's child, the same entry point and
run directory), appending its output to the run's train.log, and waits for it.

Signals (docs/cluster.md):
- Before the time limit Slurm sends SIGUSR2 (sbatch --signal=USR2@90, set by submitit).
  submitit calls `checkpoint()`: the trainer gets SIGTERM, stops at its next step with its
  last finished epoch on disk, and submitit requeues the task (scontrol requeue). The
  requeued task starts the trainer again, which resumes from checkpoint_last.pt. The trainer
  itself ignores SIGUSR2 (its default action would kill it before it can stop cleanly).
- Preemption, `scontrol requeue` and `scancel` send SIGTERM to every process of the job: the
  trainer stops the same way; Slurm requeues the task (or, for scancel, does not).
- With several tasks (one per GPU), each task exports torch.distributed's variables (RANK,
  WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from Slurm's before starting its trainer,
  and only rank 0 writes the run's train.log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from lib.atomic import open_no_follow
from lib.errors import one_line
from lib.metrics import METRICS_FILE, STATUS_FAILED, MetricsError, read_metrics
from lib.runner import (
    INTERRUPTED_EXITS,
    LOG_FILE,
    RUN_FILE,
    default_child_cmd,
    describe_exit,
    record_failure,
)
from lib.spec import RunSpec
from lib.store import MatrixStore, StoreError, open_run_dir

ROOT = Path(__file__).resolve().parent.parent
POLL_SECONDS = 1.0
# How long checkpoint() waits for the trainer to stop at a step boundary; Slurm's kill comes
# SIGNAL_DELAY_SECONDS (90 s) after its warning.
STOP_SECONDS = 60.0


class RunFailed(RuntimeError):
    """The run failed; submitit records it and Slurm shows the task as FAILED."""


def _ignore_usr2() -> None:
    """preexec_fn of the trainer: SIGUSR2 is the job's warning, handled by this process."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def planned_run(run_dir: Path) -> None:
    """The run `run_dir` trains, as the sealed plan of its matrix says (lib/store.py): its
    matrix.json sealed by this user, listing the run, and its run.json exactly the planned
    spec. RunFailed (one line) otherwise: the task launches nothing."""
    try:
        with MatrixStore(run_dir.parent) as store:
            plan = store.read_plan()
            recorded = store.read_run_json(run_dir.name, RUN_FILE)
    except (OSError, StoreError) as e:
        raise RunFailed(f"{run_dir.name}: not launched: {one_line(e)}") from None
    planned = next((e.get("spec") for e in plan["runs"] if e["run_id"] == run_dir.name), None)
    if planned is None:
        raise RunFailed(f"{run_dir.name}: not launched: its matrix.json does not plan it")
    if recorded != planned:
        raise RunFailed(
            f"{run_dir.name}: not launched: {run_dir / RUN_FILE} is not the run its sealed "
            "matrix.json plans (edited since it was submitted); make continue submits it again"
        )


class MatrixRun:
    """One array task: train the run in `run_dir` (submitit's Checkpointable protocol)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._child: subprocess.Popen[bytes] | None = None

    # Only the run directory travels in submitit's pickle, never a process handle.
    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dir = state["run_dir"]
        self._child = None

    def __repr__(self) -> str:
        return f"MatrixRun({self.run_dir!r})"

    # -- in the job ------------------------------------------------------------------------------

    def __call__(self) -> str:
        import submitit

        job = submitit.JobEnvironment()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if job.num_tasks > 1:
            # Slurm's variables -> torch.distributed's env:// contract; each task sees all the
            # GPUs of its node and picks its own by LOCAL_RANK.
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True
            )
            env = dict(os.environ, PYTHONUNBUFFERED="1")
        if job.global_rank != 0:
            # submitit saves and requeues from rank 0 only; the other ranks' trainers must
            # stop at the same step, so the warning reaches them through their task.
            signal.signal(signal.SIGUSR2, lambda signum, frame: self._stop_child())
        run_dir = Path(self.run_dir)
        planned_run(run_dir)  # nothing is launched from a plan edited since its submission
        cmd = [*default_child_cmd(), str(run_dir / RUN_FILE)]
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        header = (
            f"===== slurm job {job.job_id} (restart {restart}, rank {job.global_rank}) started "
            f"{_utc_now()} on {socket.gethostname()}: {' '.join(cmd)}\n"
        )
        if job.global_rank == 0:
            # never through a link planted in the results directory (docs/runner.md): relative
            # to the run directory's descriptor, itself opened without following links
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                dir_fd = open_run_dir(run_dir)
            except (OSError, StoreError) as e:
                raise RunFailed(f"{run_dir.name}: not launched: {one_line(e)}") from None
            try:
                log = os.fdopen(os.open(LOG_FILE, flags, 0o666, dir_fd=dir_fd), "ab")
            finally:
                os.close(dir_fd)
        else:
            log = None  # submitit's own log of this task
        try:
            if log is not None:
                log.write(header.encode())
                log.flush()
            else:
                print(header, end="", flush=True)
            self._start(cmd, log, env)
            # poll(), not wait(): checkpoint() runs in a signal handler between these sleeps
            # and must be able to reap the trainer itself.
            while (returncode := self._child.poll()) is None:
                time.sleep(POLL_SECONDS)
        finally:
            if log is not None:
                log.close()
        return self._outcome(returncode, rank=job.global_rank)

    def _start(self, cmd: list[str], log: IO[bytes] | None, env: dict[str, str]) -> None:
        """Start the trainer as `self._child`. Slurm's warning may come at any moment, also
        while Popen has started the trainer but not returned it: checkpoint() would then not
        know the trainer, the task would requeue itself and leave, and the trainer, a child
        of no task Slurm tracks, would train on beside the next start's. So the warning is
        held back until the trainer is known, then raised again for the task's handler."""
        held: list[int] = []
        previous = signal.signal(signal.SIGUSR2, lambda signum, frame: held.append(signum))
        try:
            self._child = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log if log is not None else None,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                preexec_fn=_ignore_usr2,
            )
        finally:
            signal.signal(signal.SIGUSR2, signal.SIG_DFL if previous is None else previous)
            if held:
                signal.raise_signal(signal.SIGUSR2)

    def _outcome(self, returncode: int, *, rank: int) -> str:
        run_dir = Path(self.run_dir)
        if returncode == 0:
            return f"{run_dir.name}: completed"
        if returncode in INTERRUPTED_EXITS:
            # scancel, scontrol requeue or preemption: the trainer saved its last epoch;
            # Slurm requeues the task or make continue resubmits the run.
            return f"{run_dir.name}: interrupted ({describe_exit(returncode)}); resumable"
        if rank != 0:
            raise RunFailed(f"{run_dir.name} (rank {rank}): {describe_exit(returncode)}")
        reason = self._recorded_error()
        if reason is None:
            reason = describe_exit(returncode)
            last = self._last_log_line()
            if returncode > 0 and last:
                reason += f": {last}"
            try:  # through the store: neither run.json nor the run directory may be a link
                with MatrixStore(run_dir.parent) as store:
                    spec = RunSpec.from_dict(store.read_run_json(run_dir.name, RUN_FILE))
                if not spec.out_dir:
                    spec = RunSpec.from_dict({**spec.to_dict(), "out_dir": str(run_dir)})
                record_failure(spec, reason)
            except (OSError, StoreError) as e:
                reason += f" (not recorded in metrics.json: {one_line(e)})"
        raise RunFailed(f"{run_dir.name}: {reason}")

    def _recorded_error(self) -> str | None:
        try:
            summary = read_metrics(Path(self.run_dir) / METRICS_FILE)["summary"]
        except MetricsError:
            return None
        return summary.get("error") if summary.get("status") == STATUS_FAILED else None

    def _last_log_line(self) -> str | None:
        try:
            with os.fdopen(
                open_no_follow(Path(self.run_dir) / LOG_FILE, os.O_RDONLY | os.O_NONBLOCK), "rb"
            ) as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return None
        return lines[-1].strip() if lines and not lines[-1].startswith("=====") else None

    def _stop_child(self) -> None:
        """SIGTERM the trainer and wait (bounded) until it has stopped at a step boundary."""
        child = self._child
        if child is None or child.poll() is not None:
            return
        try:
            child.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_SECONDS
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if child.poll() is None:
            print(
                f"the trainer did not stop within {STOP_SECONDS:.0f}s; it resumes from its last "
                "finished epoch",
                file=sys.stderr,
                flush=True,
            )

    # -- submitit's checkpoint protocol ------------------------------------------------------------

    def checkpoint(self) -> Any:
        """Slurm's warning before the time limit or a preemption: save and be requeued."""
        import submitit

        self._stop_child()
        return submitit.helpers.DelayedSubmission(MatrixRun(self.run_dir))
