"""Run a planned matrix: one child process per run, in parallel slots, resumable at any time.

    run_matrix(specs, results/<matrix>, config_snapshot=..., report_settings=...) -> exit code

What a run's metrics.json says decides what happens to it (docs/runner.md):
- `completed`: skipped, its files are not touched;
- `failed`: skipped unless `rerun_failed`;
- `running` or no metrics.json: (re)launched; the trainer resumes from checkpoint_last.pt;
- unreadable: moved aside to `metrics.json.corrupt-<time>` and relaunched (the trainer
  rebuilds it from its checkpoint).

Nothing is ever started in a directory whose run.json (or metrics.json) describes another
configuration: the whole matrix is refused before any child starts.

Every child runs the trainer (`python -m lib.train <run_dir>/run.json`) in its own session, so
a Ctrl-C in the terminal reaches only the runner, which forwards exactly one signal per signal
it receives; the trainer then stops at a step boundary with its last epoch on disk. A child
dies with the runner even when the runner is killed with -9 (PR_SET_PDEATHSIG), and it
inherits the matrix lock, so no second runner can start beside a child that somehow survived.

Exit codes: 0 every run completed; 1 some run failed (summary printed); 2 refused before
starting anything (one line); 130 interrupted (SIGINT/SIGTERM), resumable with make continue.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from lib import tracking
from lib.atomic import (
    EXIT_ENVIRONMENT,
    atomic_write_at,
    exists_at,
    open_no_follow,
    set_aside_corrupt,
    storage_error,
)
from lib.errors import one_line
from lib.lock import LockRefused, MatrixLock
from lib.metrics import (
    LAYERS_FILE,
    MATRIX_FILE,
    METRICS_FILE,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_RUNNING,
    MetricsError,
    atomic_write_json,
    build_document,
    read_metrics,
    summarize,
    write_metrics_document,
)
from lib.run_index import (
    INDEX_FILE,
    SPEEDS_FILE,
    RunIndex,
    add_speeds,
    other_matrices_speeds,
    run_record,
    speed_key,
)
from lib.spec import DataSpec, RunSpec, sparsity_token
from lib.store import (
    LIMITS,
    RUN_FILE,
    SEAL_FIELD,
    STATE_PENDING,
    MatrixStore,
    StoreError,
    key_path,
    open_dir,
    open_regular,
    open_run_dir,
    owner_name,
    read_bytes,
    read_json_path,
    seal,
)
from lib.store import STATE_CHANGED as STORE_CHANGED
from lib.store import STATE_COMPLETED as STORE_COMPLETED
from lib.store import STATE_FAILED as STORE_FAILED
from lib.store import STATE_PENDING as STORE_PENDING
from lib.store import STATE_STOPPED as STORE_STOPPED
from lib.text import count

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130

MATRIX_SCHEMA_VERSION = 1
LOG_FILE = "train.log"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"

# matrix.json run statuses: the store's vocabulary (lib/store.py). `pending` = not finished
# and not running now (new, or interrupted and resumable).
STATUS_PENDING = STATE_PENDING

LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 4000
POLL_SECONDS = 0.1  # how often exits and new epochs are noticed; a wait, not a busy loop
HEARTBEAT_SECONDS = 600.0  # a progress line at least this often while runs are going


class RunnerRefused(Exception):
    """The matrix cannot be started as asked (one-line message; exit code 2)."""


def default_child_cmd() -> list[str]:
    return [sys.executable, "-m", "lib.train"]


def torchrun_command(child_cmd: list[str], gpus_per_run: int) -> list[str]:
    """torchrun in front of `child_cmd` (`python -m lib.train` or `python script.py`): one
    process (rank) per GPU, a private rendezvous on a free local port (--standalone), so runs
    side by side never meet. docs/distributed.md."""
    python, *rest = child_cmd
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={gpus_per_run}",
        *rest,
    ]


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc.prctl


# Resolved once in the parent: nothing but the call itself should run between fork and exec.
_PRCTL = _load_prctl()


def _die_with_parent(parent_pid: int) -> None:
    """preexec_fn: SIGKILL this child when the runner dies, whatever kills the runner.

    PR_SET_PDEATHSIG fires when the thread that forked the child ends, so children are only
    ever started from the runner's main thread. If the runner died between fork and prctl,
    the signal was never armed: the parent pid check catches that window.
    """
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def _signal_child(run: Run, signum: int) -> None:
    process = run.process
    # returncode is set once the child is reaped; after that its pid may belong to another
    # process, so it must not be signalled any more.
    if process is None or process.returncode is not None:
        return
    run.signalled = signum
    try:
        os.kill(process.pid, signum)
    except ProcessLookupError:
        pass


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        reason = f"killed by {name}"
        if -returncode == signal.SIGKILL:
            reason += " (the kernel's OOM killer sends SIGKILL: check dmesg for 'Out of memory')"
        return reason
    return f"exit status {returncode}"


INTERRUPTED_EXITS = (
    128 + signal.SIGINT,
    128 + signal.SIGTERM,
    -signal.SIGINT,
    -signal.SIGTERM,
)


@dataclass
class Run:
    """One planned run and what the runner knows about it (a matrix.json entry)."""

    spec: RunSpec
    status: str = STATUS_PENDING
    error: str | None = None
    log_tail: str | None = None
    attempts: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    # this session only
    epochs_done: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    latest_top1: float | None = None
    process: subprocess.Popen[bytes] | None = None
    slot: str | None = None
    log_offset: int = 0
    metrics_mtime: float = 0.0
    interrupted: bool = False  # stopped by a signal; resumable
    environment_failure: bool = False  # failed for its disk; relaunched by the next runner
    signalled: int = 0  # the stop signal the runner sent it (torchrun then exits 1, not 143)

    @property
    def run_dir(self) -> Path:
        return Path(self.spec.out_dir)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def to_entry(self) -> dict[str, Any]:
        return {
            "run_id": self.spec.run_id,
            "method_key": self.spec.method_key,
            "status": self.status,
            "error": self.error,
            "log_tail": self.log_tail,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "spec": self.spec.to_dict(),
        }

    def note_metrics(self, record: dict[str, Any]) -> None:
        """Take progress from the run's record (lib.run_index.run_record of its metrics.json)."""
        self.epochs_done = record["epochs_completed"]
        self.epoch_seconds = list(record["epoch_seconds"])
        self.latest_top1 = record["latest_top1"]


# ---------------------------------------------------------------------------------------------
# Checks before anything starts
# ---------------------------------------------------------------------------------------------


def _flatten(d: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(d, dict):
        for key in sorted(d):
            yield from _flatten(d[key], f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), d


def identity_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`train.epochs: 100 -> 200` for every setting that differs between two identities."""
    a, b = dict(_flatten(old)), dict(_flatten(new))
    missing = object()
    return [
        f"{key}: {a.get(key, '(absent)')!s} -> {b.get(key, '(absent)')!s}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key, missing) != b.get(key, missing)
    ]


def _recorded_identity(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The identity of what `run_dir` already holds: its run.json, else its metrics.json."""
    run_json = run_dir / RUN_FILE
    try:
        data = read_json_path(run_json)
    except FileNotFoundError:
        data = None
    except (OSError, StoreError) as e:
        raise RunnerRefused(
            f"{run_json} cannot be read ({one_line(e)}); the runner cannot tell which "
            "configuration that run used: move the directory away"
        ) from None
    if data is not None:
        try:
            return run_json, RunSpec.from_dict(data).identity()
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RunnerRefused(
                f"{run_json} cannot be read ({type(e).__name__}: {e}); the runner cannot tell "
                "which configuration that run used: move the directory away"
            ) from None
    try:
        doc = read_metrics(run_dir / METRICS_FILE)
        return run_dir / METRICS_FILE, RunSpec.from_dict(doc["spec"]).identity()
    except (MetricsError, KeyError, TypeError, ValueError, AttributeError):
        return None  # nothing, or nothing readable: nothing to mix with


def _written_from(spec: RunSpec, run_dir: Path) -> bool:
    """Whether run_dir's run.json is byte for byte what `spec` writes (the common case): the
    same identity, known without parsing it (thousands of runs per command). Never read
    through a link (lib/store.py)."""
    path = run_dir / RUN_FILE
    try:
        raw = read_bytes(open_regular(str(path), None, path), LIMITS[RUN_FILE], path)
    except (OSError, StoreError):
        return False
    return raw == (spec.to_json() + "\n").encode()


def check_configurations(runs: list[Run]) -> None:
    conflicts = []
    for run in runs:
        if _written_from(run.spec, run.run_dir):
            continue
        recorded = _recorded_identity(run.run_dir)
        if recorded is None:
            continue
        path, identity = recorded
        differences = identity_differences(identity, run.spec.identity())
        if differences:
            conflicts.append((run, path, differences))
    if not conflicts:
        return
    run, path, differences = conflicts[0]
    shown = ", ".join(differences[:6]) + (", ..." if len(differences) > 6 else "")
    others = f" (and {len(conflicts) - 1} more runs)" if len(conflicts) > 1 else ""
    raise RunnerRefused(
        f"run {run.spec.run_id} in {run.run_dir} was set up with another configuration "
        f"({shown}; from {path.name}){others}; results never mix two configurations: set "
        "another CONFIG_MATRIX_NAME or move that matrix directory away"
    )


# What the runner, the trainer and its trackers create in a run directory. A symbolic link at
# any of these names (or a run directory that is one) would make them write or read another
# file, or fill another directory.
RUN_FILES = (
    RUN_FILE,
    LOG_FILE,
    METRICS_FILE,
    LAYERS_FILE,
    LAST_CHECKPOINT,
    BEST_CHECKPOINT,
    *tracking.RUN_PATHS,
)


def refuse_links(matrix_dir: Path, runs: list[Run]) -> None:
    """Refuse the matrix when a file the framework writes is a symbolic link: in a results
    directory others can write, a link planted there would make this runner truncate or append
    to the file it points to."""
    paths = [
        matrix_dir,
        matrix_dir / MATRIX_FILE,
        matrix_dir / INDEX_FILE,
        matrix_dir / SPEEDS_FILE,
    ]
    for run in runs:
        paths += [run.run_dir, *(run.run_dir / name for name in RUN_FILES)]
    for path in paths:
        if path.is_symlink():
            raise RunnerRefused(
                f"{path} is a symbolic link; the runner writes its own files in {matrix_dir} "
                "and never through a link: remove the link (or move the matrix directory away)"
            )


def refuse_foreign(matrix_dir: Path, runs: list[Run]) -> None:
    """Refuse the matrix when a run directory (or its run.json / metrics.json) belongs to
    another user: results someone else wrote are not trusted silently, nor written into."""
    me = os.getuid()
    for run in runs:
        for path in (run.run_dir, run.run_dir / RUN_FILE, run.run_dir / METRICS_FILE):
            try:
                uid = path.lstat().st_uid
            except OSError:
                continue
            if uid != me:
                raise RunnerRefused(
                    f"{path} belongs to {owner_name(uid)}, not to you; the runner neither "
                    f"trusts nor writes into another user's results: set another "
                    "CONFIG_MATRIX_NAME or CONFIG_RESULTS_DIR (or ask them to move it away)"
                )


def _prepare_matrix_dir(matrix_dir: Path) -> None:
    if matrix_dir.is_symlink():
        raise RunnerRefused(
            f"{matrix_dir} is a symbolic link; the runner writes its own files in its matrix "
            "directory and never through a link: remove the link (or set CONFIG_RESULTS_DIR)"
        )
    try:
        matrix_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunnerRefused(
            f"results directory {matrix_dir} cannot be created ({e.strerror or e}); set "
            "CONFIG_RESULTS_DIR to a writable place"
        ) from None
    if not os.access(matrix_dir, os.W_OK | os.X_OK):
        raise RunnerRefused(
            f"results directory {matrix_dir} is not writable; set CONFIG_RESULTS_DIR to a "
            "writable place"
        )


def _with_run_dirs(specs: list[RunSpec], matrix_dir: Path) -> list[RunSpec]:
    """Every run lives in `<matrix_dir>/<run_id>`, wherever the runner is started from."""
    seen: set[str] = set()
    out = []
    for spec in specs:
        if spec.run_id in seen:
            raise RunnerRefused(f"the plan holds run id {spec.run_id} twice")
        seen.add(spec.run_id)
        out.append(replace(spec, out_dir=str(matrix_dir / spec.run_id)))
    return out


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (what a container, `taskset` or a
    Slurm allocation gives it), not the machine's count; os.cpu_count() where the platform has
    no affinity call."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def child_threads(processes: int) -> int:
    """Threads each of `processes` CPU processes training side by side gets: the usable CPUs
    split evenly, at least one."""
    return max(1, usable_cpus() // processes)


def _slots(jobs: int, gpus: list[str] | None, gpus_per_run: int = 1) -> list[str | None]:
    """Where runs go: None (the default device) or a CUDA_VISIBLE_DEVICES value, one per run
    training at a time. With several GPUs per run a slot is a group of that many GPUs."""
    if not isinstance(jobs, int) or jobs < 1:
        raise RunnerRefused(f"jobs={jobs!r} is not valid; accepted: an integer >= 1")
    if not gpus:
        return [None] * jobs
    gpus = [str(g).strip() for g in gpus]
    if any(not g for g in gpus) or len(set(gpus)) != len(gpus):
        raise RunnerRefused(
            f"gpus={','.join(gpus)!r} is not valid; accepted: distinct device ids like 0,1,2"
        )
    if gpus_per_run > len(gpus):
        raise RunnerRefused(
            f"{gpus_per_run} GPUs per run but only {len(gpus)} GPU(s) listed "
            f"({','.join(gpus)}); list more GPUs or lower the GPUs per run"
        )
    groups = [
        ",".join(gpus[i : i + gpus_per_run])
        for i in range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)
    ]
    # One run per GPU group. jobs > 1 caps how many groups work at once (jobs=1 is the default
    # and means "not configured": with a GPU list every GPU is used).
    count = len(groups) if jobs == 1 else min(jobs, len(groups))
    return groups[:count]


def _gpus_per_run(specs: list[RunSpec], gpus: list[str] | None) -> int:
    """The matrix's GPUs per run, after checking that its runs can train that way here."""
    counts = {spec.train.gpus_per_run for spec in specs}
    if len(counts) > 1:
        raise RunnerRefused(f"runs of one matrix ask for different GPUs per run: {sorted(counts)}")
    per_run = counts.pop() if counts else 1
    if per_run == 1:
        return 1
    from lib.distributed import setting_problem  # torch only for multi-GPU matrices
    from lib.train import RunError, resolve_device

    train = specs[0].train
    try:
        device = resolve_device(train.device)
    except RunError as e:
        raise RunnerRefused(str(e)) from None
    problem = setting_problem(train, device)
    if problem is None and device.type == "cuda" and not gpus:
        visible = _cuda_device_count()
        if per_run > visible:
            problem = f"{per_run} GPUs per run but only {visible} GPU(s) visible"
    if problem is not None:
        raise RunnerRefused(problem)
    return per_run


def _cuda_device_count() -> int:
    import torch  # only when it matters: the runner itself never touches a GPU

    return torch.cuda.device_count()


def check_gpu_sharing(
    jobs: int, gpus: list[str] | None, specs: list[RunSpec], cuda_device_count=None
) -> None:
    """Refuse MATRIX_JOBS > 1 without a GPU list on a machine with a visible GPU: every child
    would train on cuda:0 at once (out of memory, or all of them slowed down). Runs that all
    train on the CPU are fine; `cuda_device_count` is injectable for tests."""
    if jobs <= 1 or gpus or all(spec.train.device == "cpu" for spec in specs):
        return
    count = (cuda_device_count or _cuda_device_count)()
    if count == 0:
        return  # device auto trains on the CPU here; device cuda fails with its own line
    example = ",".join(str(i) for i in range(min(count, jobs)))
    raise RunnerRefused(
        f"CONFIG_MATRIX_JOBS={jobs} without a GPU list would train {jobs} runs at once on one "
        f'GPU (this machine has {count} visible); set CONFIG_MATRIX_GPUS (e.g. "{example}") '
        "for one run per GPU, or CONFIG_MATRIX_JOBS=1"
    )


class _OutputThatMayGo:
    """The runner's output stream. A reader that goes away (`| head`, a `tee` killed by the
    same Ctrl-C, a closed terminal) must not end a matrix that runs for days: after the first
    failed write the runner carries on silently; matrix.json, metrics.json and every run's
    train.log still record everything."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lost = False

    def write(self, text: str) -> None:
        self._attempt(lambda: self.stream.write(text))

    def flush(self) -> None:
        self._attempt(self.stream.flush)

    def _attempt(self, operation) -> None:
        if self.lost:
            return
        try:
            operation()
        except (OSError, ValueError):  # EPIPE, EIO; ValueError: the stream was closed
            self.lost = True
            self._silence()

    def _silence(self) -> None:
        # A standard stream still holding unwritable text would fail again at interpreter exit
        # (a traceback and exit status 120): point its descriptor at /dev/null instead.
        if self.stream not in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            return
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


class MatrixSession:
    """A matrix as every executor works on it: its planned runs, its matrix.json and the lock of
    its directory, all through the results store (lib/store.py). `open_matrix` returns one with
    the checks done and the lock held; an executor then takes the runs to start from
    `classify()`, records them with `write_manifest()` and gives the lock back with `close()`.
    The local runner (`_Runner`, below) and the Slurm executor (lib/slurm.py) are its two
    executors, peers: neither uses the other's classes."""

    def __init__(
        self,
        specs: list[RunSpec],
        matrix_dir: Path,
        *,
        config_snapshot: dict[str, str],
        report_settings: dict,
        rerun_failed: bool,
        out: IO[str],
    ) -> None:
        self.matrix_dir = matrix_dir
        self.runs = [Run(spec) for spec in specs]
        self.config_snapshot = dict(config_snapshot)
        self.report_settings = dict(report_settings)
        self.rerun_failed = rerun_failed
        self.out = _OutputThatMayGo(out)
        self.lock = MatrixLock(matrix_dir)
        self.created_at = _utc_now()
        self.manifest_error: str | None = None
        self.unsealed_said = False

    def close(self) -> None:
        """Give the matrix lock back."""
        self.lock.release()

    # -- output ---------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        print(f"[{_clock()}] {message}", file=self.out, flush=True)

    # -- matrix.json ----------------------------------------------------------------------------

    def write_manifest(self) -> None:
        try:
            self._write_manifest()
        except StoreError as e:  # the matrix directory became a link: not written through
            if self.manifest_error is None:
                self.say(f"matrix.json not updated: {e}")
            self.manifest_error = str(e)
        except OSError as e:
            environment = storage_error(e, self.matrix_dir / MATRIX_FILE)
            if environment is None:
                raise
            # matrix.json is a summary of the runs' own files: carry on, write it next time
            if self.manifest_error is None:
                self.say(f"matrix.json not updated: {environment}")
            self.manifest_error = str(environment)
        else:
            self.manifest_error = None

    def _write_manifest(self) -> None:
        matrix_name = self.runs[0].spec.matrix if self.runs else self.matrix_dir.name
        sealed = seal(
            {
                "schema_version": MATRIX_SCHEMA_VERSION,
                "name": matrix_name,
                "created_at": self.created_at,
                "updated_at": _utc_now(),
                "config": self.config_snapshot,
                "report": self.report_settings,
                "runs": [run.to_entry() for run in self.runs],
            }
        )
        if SEAL_FIELD not in sealed and not self.unsealed_said:
            self.unsealed_said = True
            self.say(
                f"matrix.json written without a seal: {key_path()} cannot be created or is "
                "readable by others; make continue refuses an unsealed plan"
            )
        dir_fd = open_dir(self.matrix_dir)  # never through a link (lib/store.py)
        try:
            atomic_write_json(self.matrix_dir / MATRIX_FILE, sealed, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def carry_over_manifest(self) -> None:
        """Keep what an earlier runner of this matrix recorded: creation time, attempts,
        start/finish times and the reasons of earlier failures."""
        try:
            with MatrixStore(self.matrix_dir) as store:
                old = store.read_plan()
        except FileNotFoundError:
            return
        except (OSError, StoreError) as e:
            self.say(f"earlier attempts and errors not carried over: {one_line(e)}")
            return
        self.created_at = old.get("created_at") or self.created_at
        entries = {e["run_id"]: e for e in old.get("runs", [])}
        for run in self.runs:
            entry = entries.get(run.spec.run_id)
            if not entry:
                continue
            attempts = entry.get("attempts")
            run.attempts = attempts if isinstance(attempts, int) and attempts > 0 else 0
            run.started_at = entry.get("started_at")
            run.finished_at = entry.get("finished_at")
            run.error = entry.get("error")
            run.log_tail = entry.get("log_tail")

    # -- states ---------------------------------------------------------------------------------

    def classify(self) -> list[Run]:
        """Set each run's status from its metrics.json; return the runs to launch, in order."""
        queue = []
        index = RunIndex(self.matrix_dir)
        for run in self.runs:
            path = run.metrics_path
            doc = None
            if path.exists():
                try:
                    doc = index.record(run.spec.run_id, run.spec.to_dict())
                except MetricsError as e:
                    try:
                        moved = _set_aside_metrics(index, run)
                    except StoreError as refused:  # its directory is a link: left alone
                        self.say(f"{run.spec.run_id}: metrics.json is unreadable ({e}): {refused}")
                    else:
                        self.say(
                            f"{run.spec.run_id}: metrics.json is unreadable ({e}); moved to "
                            f"{moved.name}, this run trains again (from its checkpoint if any)"
                        )
            if doc is not None:
                run.note_metrics(doc)
                run.metrics_mtime = path.stat().st_mtime
            summary = (doc or {}).get("summary", {})
            status = summary.get("status")
            if status == STATUS_FAILED and summary.get("environment_failure"):
                # a full disk is no result: tried again without RERUN_FAILED once there is room
                self.say(f"{run.spec.run_id}: failed earlier ({summary.get('error')}); retrying")
                status = None
            if status == STATUS_COMPLETED:
                run.status = STATUS_COMPLETED
                run.error = run.log_tail = None
            elif status == STATUS_FAILED and not self.rerun_failed:
                run.status = STATUS_FAILED
                run.error = (
                    doc["summary"].get("error") or run.error or "failed (no reason recorded)"
                )
            else:
                run.status = STATUS_PENDING
                run.error = run.log_tail = None
                queue.append(run)
        index.save()
        return queue


def _set_aside_metrics(index: RunIndex, run: Run) -> Path:
    """Set a run's unreadable metrics.json aside, renamed relative to its run directory's
    descriptor (lib/store.py: neither directory opened through a link)."""
    if index.store is None:
        raise StoreError(index.refused or f"{index.matrix_dir} cannot be opened")
    dir_fd = index.store.run_dir_fd(run.spec.run_id)
    try:
        return set_aside_corrupt(run.metrics_path, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


class _Runner(MatrixSession):
    """The local executor: one child process per run, in parallel slots."""

    def __init__(
        self,
        specs: list[RunSpec],
        matrix_dir: Path,
        *,
        slots: list[str | None],
        fail_fast: bool,
        child_cmd: list[str],
        **session: Any,
    ) -> None:
        super().__init__(specs, matrix_dir, **session)
        self.free_slots = list(slots)
        self.slot_count = len(slots)
        self.fail_fast = fail_fast
        self.child_cmd = list(child_cmd)
        self.stop_signal: int | None = None  # the runner was asked to stop
        self.stop_announced = False
        self.stopped_for_failure = False
        self.environment_failure: str | None = None  # why no further run starts
        self.last_progress = 0.0

    # -- launching ------------------------------------------------------------------------------

    def launch(self, run: Run, slot: str | None) -> None:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        # Written relative to the run directory's descriptor (lib/store.py): a run directory
        # swapped for a link since the checks before the start is refused, not written into.
        dir_fd = open_dir(run.run_dir)
        try:
            self._launch_in(run, slot, dir_fd)
        finally:
            os.close(dir_fd)

    def _launch_in(self, run: Run, slot: str | None, dir_fd: int) -> None:
        atomic_write_at(dir_fd, RUN_FILE, run.spec.to_json() + "\n", run.run_dir / RUN_FILE)
        run.attempts += 1
        run.started_at = _utc_now()
        run.finished_at = None
        run.slot = slot
        try:
            os.stat(LAST_CHECKPOINT, dir_fd=dir_fd, follow_symlinks=False)
            resuming = True
        except FileNotFoundError:
            resuming = False
        ranks = run.spec.train.gpus_per_run
        child = self.child_cmd if ranks == 1 else torchrun_command(self.child_cmd, ranks)
        cmd = [*child, str(run.run_dir / RUN_FILE)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        elif self.slot_count * ranks > 1 and "OMP_NUM_THREADS" not in env:
            # Parallel CPU runs (or ranks): without this every process starts one thread per
            # core and they all slow each other down.
            env["OMP_NUM_THREADS"] = str(child_threads(self.slot_count * ranks))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(LOG_FILE, flags, 0o666, dir_fd=dir_fd), "ab") as log:
            run.log_offset = log.tell()
            device = f" CUDA_VISIBLE_DEVICES={slot}" if slot is not None else ""
            header = (
                f"===== attempt {run.attempts} started {run.started_at} by runner pid "
                f"{os.getpid()}{device}: {' '.join(cmd)}\n"
            )
            log.write(header.encode())
            log.flush()
            run.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # the terminal's Ctrl-C reaches the runner only
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
                pass_fds=(self.lock.fileno,),
            )
        run.status = STATUS_RUNNING
        run.error = run.log_tail = None
        run.interrupted = False
        run.signalled = 0
        where = f" on GPU {slot}" if slot is not None else ""
        if not resuming:
            state = "starting"
        elif run.epochs_done:
            state = f"resuming after epoch {run.epochs_done}"
        else:  # its metrics.json was set aside: the checkpoint knows how far it got
            state = f"resuming from {LAST_CHECKPOINT}"
        self.say(f"{run.spec.run_id}: {state}{where} (attempt {run.attempts})")
        if self.stop_signal is not None:  # the signal came while the child was being created
            _signal_child(run, self.stop_signal)

    # -- finishing ------------------------------------------------------------------------------

    def read_log_tail(self, run: Run) -> str | None:
        try:
            with os.fdopen(open_no_follow(run.run_dir / LOG_FILE, os.O_RDONLY), "rb") as f:
                f.seek(run.log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        lines = text.splitlines()[1:]  # without the attempt header
        tail = "\n".join(lines[-LOG_TAIL_LINES:])[-LOG_TAIL_CHARS:]
        return tail or None

    def finish(self, run: Run, returncode: int) -> None:
        run.process = None
        self.free_slots.append(run.slot)
        run.finished_at = _utc_now()
        doc = None
        try:
            doc = read_metrics(run.metrics_path)
            run.note_metrics(run_record(doc))
        except MetricsError:
            pass
        status = (doc or {}).get("summary", {}).get("status")
        if returncode == 0 and status == STATUS_COMPLETED:
            run.status = STATUS_COMPLETED
            run.error = run.log_tail = None
            self.say(f"{run.spec.run_id}: completed{self._accuracy(run)}")
            return
        if returncode in INTERRUPTED_EXITS or (run.signalled and status == STATUS_RUNNING):
            run.status = STATUS_PENDING
            run.interrupted = True
            run.finished_at = None
            if returncode in INTERRUPTED_EXITS:
                signum = returncode - 128 if returncode > 0 else -returncode
            else:
                signum = run.signalled
            self.say(
                f"{run.spec.run_id}: stopped by {signal.Signals(signum).name} after epoch "
                f"{run.epochs_done}; make continue resumes it"
            )
            return
        run.log_tail = self.read_log_tail(run)
        summary = (doc or {}).get("summary", {})
        environment = returncode == EXIT_ENVIRONMENT or bool(summary.get("environment_failure"))
        if returncode == 0:
            reason = f"the trainer exited 0 but metrics.json says {status or 'nothing'}"
        elif status == STATUS_FAILED and doc["summary"].get("error"):
            reason = doc["summary"]["error"]
        else:
            reason = describe_exit(returncode)
            lines = (run.log_tail or "").strip().splitlines()
            # torchrun ends a failed multi-GPU run with its own report: the trainer's line wins.
            last_line = [line for line in lines if line.startswith("error: ")][-1:] or lines[-1:]
            if returncode == EXIT_ENVIRONMENT and last_line:
                # the trainer could not record it: its last line says what ran full
                reason = last_line[0].strip().removeprefix("error: ")
            elif returncode > 0 and last_line:
                reason += f": {last_line[0].strip()}"
        run.status = STATUS_FAILED
        run.error = reason
        run.environment_failure = environment
        try:
            record_failure(run.spec, reason, environment_failure=environment)
        except StoreError as e:  # its directory became a link: nothing written through it
            self.say(f"{run.spec.run_id}: failure not recorded in metrics.json: {e}")
        except OSError as e:
            if storage_error(e, run.metrics_path) is None:
                raise
            # metrics.json keeps `running`: the next runner relaunches the run all the same
        self.say(f"{run.spec.run_id}: FAILED: {reason} (log: {run.run_dir / LOG_FILE})")
        if environment:
            self.stop_for_environment(reason)

    def stop_for_environment(self, reason: str) -> None:
        """A full disk fails every run that starts: start no more; those running go on."""
        if self.environment_failure is None:
            self.environment_failure = reason
            self.say(
                f"{reason}: no further run starts; make room, then make continue resumes "
                "the unfinished runs"
            )

    @staticmethod
    def _accuracy(run: Run) -> str:
        if run.latest_top1 is None:
            return ""
        return f", top-1 {run.latest_top1:.2f}% after {count(run.epochs_done, 'epoch')}"

    # -- progress -------------------------------------------------------------------------------

    def poll_progress(self) -> bool:
        """Read the metrics.json of running children that changed; True if an epoch ended."""
        new_epoch = False
        for run in self.runs:
            if run.process is None:
                continue
            try:
                mtime = run.metrics_path.stat().st_mtime
            except OSError:
                continue
            if mtime == run.metrics_mtime:
                continue
            run.metrics_mtime = mtime
            before = run.epochs_done
            try:
                run.note_metrics(run_record(read_metrics(run.metrics_path)))
            except MetricsError:
                continue  # being replaced right now; read it next time
            new_epoch |= run.epochs_done > before
        return new_epoch

    def eta_seconds(self) -> float | None:
        timings = [s for run in self.runs for s in run.epoch_seconds]
        if not timings:
            return None
        per_epoch = sum(timings) / len(timings)
        unfinished = [r for r in self.runs if r.status in (STATUS_PENDING, STATUS_RUNNING)]
        if not unfinished:
            return 0.0
        remaining = sum(max(0, r.spec.train.epochs - r.epochs_done) for r in unfinished)
        return remaining * per_epoch / min(self.slot_count, len(unfinished))

    def progress_line(self) -> str:
        counts = {s: 0 for s in (STATUS_COMPLETED, STATUS_FAILED, STATUS_RUNNING, STATUS_PENDING)}
        for run in self.runs:
            counts[run.status] += 1
        parts = [
            f"{counts[STATUS_COMPLETED]}/{len(self.runs)} done",
            f"{counts[STATUS_RUNNING]} running",
            f"{counts[STATUS_PENDING]} queued",
        ]
        if counts[STATUS_FAILED]:
            parts.append(f"{counts[STATUS_FAILED]} failed")
        running = []
        for run in self.runs:
            if run.status != STATUS_RUNNING:
                continue
            acc = f" {run.latest_top1:.1f}%" if run.latest_top1 is not None else ""
            running.append(f"{run.spec.run_id} {run.epochs_done}/{run.spec.train.epochs}{acc}")
        eta = self.eta_seconds()
        line = ", ".join(parts)
        if running:
            line += " | " + "; ".join(running)
        line += f" | ETA {format_duration(eta)}" if eta is not None else " | ETA unknown"
        return line

    def report_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_progress >= HEARTBEAT_SECONDS:
            self.say(self.progress_line())
            self.last_progress = now

    # -- signals --------------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: Any) -> None:
        # Only flags and kill(2) here: printing from a handler can collide with a print the
        # main loop is in the middle of. The loop announces the stop.
        if self.stop_signal is None:
            self.stop_announced = False
        self.stop_signal = signum
        for run in self.runs:
            _signal_child(run, signum)

    def announce_stop(self) -> None:
        if self.stop_signal is None or self.stop_announced:
            return
        self.stop_announced = True
        running = sum(r.process is not None for r in self.runs)
        self.say(
            f"received {signal.Signals(self.stop_signal).name}: {running} running run(s) save "
            "their last finished epoch and stop (the same signal again stops them at once)"
        )

    def stop_children(self, signum: int) -> None:
        for run in self.runs:
            _signal_child(run, signum)

    # -- main loop ------------------------------------------------------------------------------

    def execute(self) -> int:
        queue = self.classify()
        self.write_manifest()
        done = sum(r.status == STATUS_COMPLETED for r in self.runs)
        failed_before = sum(r.status == STATUS_FAILED for r in self.runs)
        self.say(
            f"matrix {self.matrix_dir.name}: {count(len(self.runs), 'run')}, {done} already completed, "
            f"{failed_before} failed earlier{' (not retried)' if failed_before else ''}, "
            f"{len(queue)} to run in {count(self.slot_count, 'slot')}"
        )
        launched = False
        while True:
            while self.may_launch() and queue and self.free_slots:
                run, slot = queue.pop(0), self.free_slots.pop(0)
                launched = True
                try:
                    self.launch(run, slot)
                except StoreError as e:  # its directory became a link: never written into
                    self.free_slots.insert(0, slot)
                    run.status = STATUS_FAILED
                    run.error = str(e)
                    self.say(f"{run.spec.run_id}: not started: {e}")
                except OSError as e:  # its run.json or train.log: the disk is full
                    environment = storage_error(e, e.filename or run.run_dir)
                    if environment is None or run.process is not None:
                        raise
                    self.free_slots.insert(0, slot)
                    run.status = STATUS_PENDING
                    self.stop_for_environment(str(environment))
                self.write_manifest()
            self.announce_stop()
            active = [r for r in self.runs if r.process is not None]
            if not active:
                break
            changed = False
            for run in active:
                returncode = run.process.poll()
                if returncode is None:
                    continue
                self.finish(run, returncode)
                changed = True
                if run.status == STATUS_FAILED and self.fail_fast and not self.stopped_for_failure:
                    self.stopped_for_failure = True
                    self.say("fail-fast: stopping the other runs at their next step")
                    self.stop_children(signal.SIGTERM)
            if changed:
                self.write_manifest()
            if self.poll_progress() or changed:
                self.report_progress(force=True)
            else:
                self.report_progress()
            time.sleep(POLL_SECONDS)
        self.write_manifest()
        if launched:
            self.refresh_index()
        return self.summarize_end()

    def refresh_index(self) -> None:
        """Record the runs as they ended in the run index and the matrix's speeds.json, which
        other matrices' duration estimates read instead of these runs' files."""
        index = RunIndex(self.matrix_dir)
        for run in self.runs:
            try:
                index.record(run.spec.run_id)
            except MetricsError:
                continue
        index.save()

    def may_launch(self) -> bool:
        return (
            self.stop_signal is None
            and not self.stopped_for_failure
            and self.environment_failure is None
        )

    def summarize_end(self) -> int:
        completed = [r for r in self.runs if r.status == STATUS_COMPLETED]
        failed = [r for r in self.runs if r.status == STATUS_FAILED]
        unfinished = [r for r in self.runs if r.status == STATUS_PENDING]
        self.say(
            f"matrix {self.matrix_dir.name}: {len(completed)}/{len(self.runs)} completed, "
            f"{len(failed)} failed, {len(unfinished)} not finished"
        )
        for run in failed:
            print(f"  FAILED {run.spec.run_id}: {run.error}", file=self.out)
        if any(not r.environment_failure for r in failed) and not self.rerun_failed:
            print("  (make test-matrix RERUN_FAILED=1 retries failed runs)", file=self.out)
        if any(r.environment_failure for r in failed):
            print(
                "  (runs that failed for their disk are retried by make continue, once there "
                "is room)",
                file=self.out,
            )
        if unfinished:
            print(
                f"  {count(len(unfinished), 'run')} not finished; make continue resumes them",
                file=self.out,
            )
        self.out.flush()
        if self.stop_signal is not None:
            return EXIT_INTERRUPTED
        if failed or self.environment_failure is not None:
            return EXIT_FAILED
        if unfinished:  # a child was stopped by a signal from outside the runner
            return EXIT_INTERRUPTED
        return EXIT_OK


def record_failure(spec: RunSpec, reason: str, *, environment_failure: bool = False) -> None:
    """Make the run's metrics.json say `failed` with `reason`, keeping its epochs.

    The trainer does this itself for failures it sees; a child killed from outside (the OOM
    killer, a segfault) leaves `running` behind, which would make the next runner relaunch it
    as if it had only been interrupted. Failed runs are retried only when asked.

    Written relative to the run directory's descriptor (lib/store.py): a run directory that is
    a link, or is swapped for one, is refused with a StoreError (one line), its target
    untouched.
    """
    dir_fd = open_run_dir(spec.out_dir)  # StoreError for a link
    try:
        _record_failure_at(dir_fd, spec, reason, environment_failure=environment_failure)
    finally:
        os.close(dir_fd)


def _record_failure_at(
    dir_fd: int, spec: RunSpec, reason: str, *, environment_failure: bool
) -> None:
    path = Path(spec.out_dir) / METRICS_FILE
    try:
        doc = read_metrics(path, dir_fd=dir_fd)
    except MetricsError:
        doc = None
    if doc is not None and doc["summary"].get("status") == STATUS_FAILED:
        return
    if doc is None:
        if exists_at(METRICS_FILE, dir_fd):
            set_aside_corrupt(path, dir_fd=dir_fd)
        write_metrics_document(
            path,
            build_document(
                spec,
                [],
                status=STATUS_FAILED,
                error=reason,
                environment_failure=environment_failure,
            ),
            dir_fd=dir_fd,
        )
        return
    previous = doc.get("summary") or {}
    doc["summary"] = summarize(
        doc["epochs"],
        spec.pruning.target,
        status=STATUS_FAILED,
        error=reason,
        total_seconds=previous.get("total_seconds"),
        environment_failure=environment_failure,
        model_info=doc.get("model_info"),
    )
    write_metrics_document(path, doc, dir_fd=dir_fd)


def open_matrix(
    specs: list[RunSpec],
    matrix_dir: Path,
    *,
    config_snapshot: dict[str, str],
    report_settings: dict,
    jobs: int = 1,
    gpus: list[str] | None = None,
    rerun_failed: bool = False,
    fail_fast: bool = False,
    child_cmd: list[str] | None = None,
    out: IO[str] = sys.stdout,
    local: bool = True,
) -> MatrixSession:
    """The checks before anything starts, shared by every executor: the run directories, the
    matrix lock (held on return; `close()` gives it back), the configurations already on
    disk, the manifest of earlier runners. A `_Runner` (the local executor) when `local`, else
    the plain MatrixSession another executor works on. Raises RunnerRefused or LockRefused
    (one-line messages) with the lock released."""
    matrix_dir = Path(matrix_dir)
    runner = None
    try:
        slots = _slots(jobs, gpus, _gpus_per_run(list(specs), gpus))
        check_gpu_sharing(jobs, gpus, specs)
        specs = _with_run_dirs(list(specs), matrix_dir)
        _prepare_matrix_dir(matrix_dir)
        session = dict(
            config_snapshot=config_snapshot,
            report_settings=report_settings,
            rerun_failed=rerun_failed,
            out=out,
        )
        if local:
            runner = _Runner(
                specs,
                matrix_dir,
                slots=slots,
                fail_fast=fail_fast,
                child_cmd=child_cmd or default_child_cmd(),
                **session,
            )
        else:
            runner = MatrixSession(specs, matrix_dir, **session)
        try:
            takeover = runner.lock.acquire()
        except PermissionError as e:
            raise RunnerRefused(
                f"results directory {matrix_dir} is not writable ({e.strerror}); set "
                "CONFIG_RESULTS_DIR to a writable place"
            ) from None
        if takeover:
            runner.say(takeover)
        refuse_links(matrix_dir, runner.runs)
        refuse_foreign(matrix_dir, runner.runs)
        check_configurations(runner.runs)
        runner.carry_over_manifest()
    except BaseException:
        if runner is not None:
            runner.close()
        raise
    return runner


def run_matrix(
    specs: list[RunSpec],
    matrix_dir: Path,
    *,
    config_snapshot: dict[str, str],
    report_settings: dict,
    jobs: int = 1,
    gpus: list[str] | None = None,
    rerun_failed: bool = False,
    fail_fast: bool = False,
    child_cmd: list[str] | None = None,
    out: IO[str] = sys.stdout,
) -> int:
    """Run every spec that is not finished yet; return the exit code (see the module doc).

    `child_cmd` is the command prefix of a child; the run's run.json path is appended
    (default: `python -m lib.train`).
    """
    try:
        runner = open_matrix(
            specs,
            matrix_dir,
            config_snapshot=config_snapshot,
            report_settings=report_settings,
            jobs=jobs,
            gpus=gpus,
            rerun_failed=rerun_failed,
            fail_fast=fail_fast,
            child_cmd=child_cmd,
            out=out,
        )
    except (RunnerRefused, LockRefused) as e:
        print(f"error: {e}", file=out, flush=True)
        return EXIT_REFUSED

    handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handlers[signum] = signal.signal(signum, runner.on_signal)
    try:
        return runner.execute()
    except BaseException:
        # Something broke in the runner itself: never leave children training unsupervised.
        runner.stop_children(signal.SIGTERM)
        for run in runner.runs:
            if run.process is not None:
                run.process.wait()
        raise
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        runner.close()


# ---------------------------------------------------------------------------------------------
# Dry run
# ---------------------------------------------------------------------------------------------

# The dry run's states: words of the one vocabulary (lib/store.py, docs/runner.md "Run states").
STATE_DONE = STORE_COMPLETED
STATE_FAILED = STORE_FAILED
STATE_RESUMABLE = STORE_STOPPED  # also a run that failed for its disk: trained again
STATE_NEW = STORE_PENDING
STATE_CHANGED = STORE_CHANGED


def seconds_per_epoch(
    results_root: Path, indexes: dict[str, RunIndex]
) -> tuple[dict[tuple, float], float | None]:
    """Mean seconds per epoch of completed runs, per speed key and over all of them: the runs
    of the matrices whose `indexes` the plan just read, and of the other matrices under
    `results_root` through their speeds.json (lib/run_index.py), one small file each."""
    speeds = other_matrices_speeds(results_root, set(indexes))
    for index in indexes.values():
        add_speeds(speeds, index.speeds())
    means = {key: seconds / runs for key, (seconds, runs) in speeds.items()}
    total_runs = sum(runs for _, runs in speeds.values())
    overall = sum(seconds for seconds, _ in speeds.values()) / total_runs if total_runs else None
    return means, overall


def plan_state(spec: RunSpec, run_dir: Path, index: RunIndex | None = None) -> tuple[str, int]:
    """(state, epochs already trained) of a planned run, from its directory (its metrics.json
    through `index`, the run index of its matrix, when given)."""
    if not _written_from(spec, run_dir):
        try:
            recorded = _recorded_identity(run_dir)
        except RunnerRefused:
            return STATE_CHANGED, 0
        if recorded is not None and identity_differences(recorded[1], spec.identity()):
            return STATE_CHANGED, 0
    try:
        if index is None:
            doc = run_record(read_metrics(run_dir / METRICS_FILE))
        else:
            doc = index.record(run_dir.name)
    except MetricsError:
        doc = None
    trained = doc["epochs_completed"] if doc else 0
    status = doc["summary"].get("status") if doc else None
    if status == STATUS_COMPLETED:
        return STATE_DONE, trained
    if status == STATUS_FAILED and not doc["summary"].get("environment_failure"):
        return STATE_FAILED, trained
    if doc is not None or (run_dir / LAST_CHECKPOINT).exists():
        return STATE_RESUMABLE, trained
    return STATE_NEW, 0


# Images per second one CPU core sustains on a 500x375 ImageNet-sized JPEG to a 224 px training
# crop: benchmarks/bench_input.py on a 2-core Intel Xeon (no GPU), quiet, 2026-11-25
# (docs/benchmarks.md, "Input pipeline per CPU core"). Re-measured 2026-12-04 on the same kind
# of machine, shared with four other jobs (load average 6): pil 184-223, uint8 309-333 img/s
# per core, lower as loaded figures are, in the same 1.5-1.7x ratio; the quiet figures stay,
# since the cores of a GPU node's loader are not shared. "bytes" is the file read alone (from
# the page cache), all that is left to the CPU when the uint8 path decodes on the GPU.
IMAGES_PER_CORE = {"pil": 264.0, "uint8": 436.0, "bytes": 11_500.0}
RATES_SOURCE = "bench_input.py on a quiet 2-core Intel Xeon, 2026-11-25: docs/benchmarks.md"


def input_cores_line(data: DataSpec, device: str) -> str | None:
    """The dry run's line: CPU cores the decode path needs for the target throughput
    (image folders only: the other datasets are in memory or tiny), for a matrix that may
    train on a GPU (on the CPU the model, not the input, sets the pace)."""
    if data.name not in ("imagenet", "imagefolder") or device == "cpu":
        return None
    target = data.target_images_per_second

    def cores(path: str) -> str:
        rate = IMAGES_PER_CORE[path]
        return f"{math.ceil(target / rate)} CPU core(s) ({path}: {rate:,.0f} img/s per core)"

    head = f"input: {target:,} img/s (CONFIG_DATA_TARGET_IMAGES_PER_SECOND) needs"
    if data.decode == "pil":
        need = f"{cores('pil')} decoding in the workers (CONFIG_DATA_WORKERS={data.workers})"
    else:
        need = f"{cores('bytes')} reading files when decoding on the GPU"
        if device == "auto":
            need += f", {cores('uint8')} if no GPU is found"
    return f"{head} {need}; rates per core from {RATES_SOURCE}"


def format_plan(specs: list[RunSpec], results_root: Path) -> str:
    """The dry-run text: one line per run, the counts, and an estimated duration."""
    results_root = Path(results_root)
    rows = []
    counts: dict[str, int] = {}
    to_estimate: list[tuple[RunSpec, int]] = []  # (run, epochs it has trained)
    indexes: dict[str, RunIndex] = {}
    for spec in specs:
        index = indexes.get(spec.matrix) or indexes.setdefault(
            spec.matrix, RunIndex(results_root / spec.matrix)
        )
        state, trained = plan_state(spec, results_root / spec.matrix / spec.run_id, index)
        counts[state] = counts.get(state, 0) + 1
        p = spec.pruning
        pruning = f"{p.method} {sparsity_token(p.sparsity)}" if p.enabled else "none"
        epochs = count(spec.train.epochs, "epoch")
        epochs = f"{trained}/{epochs}" if trained else epochs
        rows.append(
            (
                spec.run_id,
                spec.optimizer.label,
                pruning,
                f"seed {spec.seed}",
                epochs,
                state,
            )
        )
        if state in (STATE_RESUMABLE, STATE_NEW):
            to_estimate.append((spec, trained))
    means, overall = seconds_per_epoch(results_root, indexes)
    for index in indexes.values():
        index.save()
    remaining_seconds = 0.0
    without_comparable = 0  # runs estimated from the mean of unlike runs
    if overall is not None:
        for spec, trained in to_estimate:
            per_epoch = means.get(speed_key(spec.to_dict()))
            if per_epoch is None:
                per_epoch = overall
                without_comparable += 1
            remaining_seconds += per_epoch * max(0, spec.train.epochs - trained)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    order = (STATE_DONE, STATE_FAILED, STATE_RESUMABLE, STATE_NEW, STATE_CHANGED)
    lines.append(
        f"{count(len(specs), 'run')}: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in order if counts.get(s))
    )
    to_train = counts.get(STATE_RESUMABLE, 0) + counts.get(STATE_NEW, 0)
    if specs:  # one matrix shares its data and device settings
        cores = input_cores_line(specs[0].data, specs[0].train.device)
        if cores:
            lines.append(cores)
    if counts.get(STATE_FAILED):
        lines.append("failed runs are retried only with RERUN_FAILED=1")
    if counts.get(STATE_CHANGED):
        lines.append(
            f"{STATE_CHANGED}: the run's directory holds another configuration; test-matrix refuses "
            "to start (set another CONFIG_MATRIX_NAME or move the directory away)"
        )
    if to_train == 0:
        if not counts.get(STATE_CHANGED):  # CHANGED runs are not trained either
            lines.append("nothing left to train")
    elif overall is None:
        lines.append(f"estimated duration: unknown (no completed runs under {results_root}/)")
    else:
        note = (
            f"; {count(without_comparable, 'run')} {'has' if without_comparable == 1 else 'have'} "
            "no completed run with the same model, data, "
            "batch and device, so they use the mean of all"
            if without_comparable
            else ""
        )
        lines.append(
            f"estimated duration: {format_duration(remaining_seconds)} one run at a time "
            f"(from earlier completed runs' seconds per epoch{note})"
        )
    return "\n".join(lines)
