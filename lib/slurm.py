"""The Slurm executor: every unfinished run of a matrix as ONE job array, through submitit.

    submit_matrix(specs, results/<matrix>, settings=..., ...) -> exit code

Each array task runs `lib.slurm_job.MatrixRun`, which starts the same trainer as the local
runner (`python -m lib.train <run_dir>/run.json`) in the same run directory; nothing in the
training loop knows which executor launched it. Before its time limit (or when the cluster
preempts it) a task is signalled, its run stops at the next step with its last finished epoch
on disk, and submitit requeues it; the requeued task resumes from checkpoint_last.pt.

What was submitted is recorded in `<matrix_dir>/slurm.json`: the job id and which array task
trains which run. A second submission while that job is queued or running is refused (the
record and the scheduler's queue are what is shared between login nodes; no file lock spans
nodes). submitit keeps its job scripts, pickles and logs under `<matrix_dir>/slurm/`.

Only squeue and scontrol are used to ask the scheduler (sacct needs an accounting database
that not every cluster, nor the test cluster, has).

Exit codes: 0 submitted (or nothing left to submit); 1 nothing submitted because every
unfinished run failed earlier (RERUN_FAILED=1 resubmits them); 2 refused before submitting
anything (one line).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lib.atomic import atomic_write_at
from lib.config import SlurmSettings
from lib.errors import one_line
from lib.lock import LockRefused
from lib.metrics import STATUS_COMPLETED, STATUS_FAILED, atomic_write_json
from lib.run_index import RunIndex
from lib.runner import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    STATE_NEW,
    STATE_RESUMABLE,
    RunnerRefused,
    format_duration,
    open_matrix,
    plan_state,
)
from lib.spec import RunSpec
from lib.store import RUN_FILE, MatrixStore, StoreError, open_dir, owner_name, read_json_at
from lib.text import count

RECORD_FILE = "slurm.json"
RECORD_SCHEMA_VERSION = 1
SUBMITIT_DIR = "slurm"  # under the matrix directory: one folder per array task
# Seconds between Slurm's warning signal and its kill at the time limit: the run stops at its
# next step well within it.
SIGNAL_DELAY_SECONDS = 90
# How often one run may hit the time limit and be requeued. Progress is saved every epoch,
# so this only stops a run whose single epoch does not fit in the limit from looping forever.
MAX_TIMEOUT_REQUEUES = 100
QUERY_TIMEOUT_SECONDS = 60

# Scheduler states after which a job holds no resources and will not run again. Any other
# state (PENDING, RUNNING, REQUEUED, COMPLETING, SUSPENDED, ...) counts as queued or running.
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"})


class SlurmError(Exception):
    """The submission cannot go ahead (one-line message; exit code 2)."""


# ---------------------------------------------------------------------------------------------
# What is needed before anything is submitted
# ---------------------------------------------------------------------------------------------

SCHEDULER_TOOLS = ("sbatch", "srun", "squeue", "scontrol")


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError as e:
        if e.name == "submitit":
            raise SlurmError(
                "CONFIG_MATRIX_EXECUTOR_SLURM needs submitit, which is not installed: "
                "pip install -e '.[slurm]' (or choose the local executor)"
            ) from None
        # Installed, but its own import fails (a dependency missing, an install in progress):
        # say what failed rather than "not installed".
        reason = " ".join(str(e).split())
        raise SlurmError(
            f"CONFIG_MATRIX_EXECUTOR_SLURM: submitit is installed but cannot be imported "
            f"({reason}); reinstall it with pip install -e '.[slurm]'"
        ) from None
    return submitit


def require_scheduler() -> None:
    missing = [tool for tool in SCHEDULER_TOOLS if shutil.which(tool) is None]
    if missing:
        raise SlurmError(
            f"CONFIG_MATRIX_EXECUTOR_SLURM: {missing[0]} is not on PATH; submit from a machine "
            "of the Slurm cluster (a login node), or choose the local executor"
        )


# ---------------------------------------------------------------------------------------------
# The job array's shape and sbatch parameters
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskShape:
    """What one array task (one run) asks for."""

    tasks: int  # processes, one per GPU (DistributedDataParallel ranks)
    gpus: int  # 0 for a run on the CPU
    cpus_per_task: int
    mem_gb: int  # 0: the cluster's default

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else "no GPU"
        mem = f"{self.mem_gb} GB memory" if self.mem_gb else "the cluster's default memory"
        return (
            f"1 node, {self.tasks} task{'s' if self.tasks != 1 else ''}, {gpus}, "
            f"{self.cpus_per_task} CPU{'s' if self.cpus_per_task != 1 else ''} per task, {mem}"
        )


def task_shape(spec: RunSpec, settings: SlurmSettings) -> TaskShape:
    """One task per GPU of the run (GPUS_PER_RUN); a run on the CPU asks for no GPU."""
    ranks = max(1, int(getattr(spec.train, "gpus_per_run", 1)))
    return TaskShape(
        tasks=ranks,
        gpus=0 if spec.train.device == "cpu" else ranks,
        cpus_per_task=settings.cpus_per_gpu,
        mem_gb=settings.mem_gb,
    )


def _extra_parameters(extra_args: tuple[str, ...]) -> dict[str, Any]:
    """`--name=value` / `--flag` (validated by lib.config) as submitit's extra #SBATCH lines."""
    out: dict[str, Any] = {}
    for arg in extra_args:
        name, sep, value = arg[2:].partition("=")
        out[name] = value if sep else True
    return out


def sbatch_parameters(
    settings: SlurmSettings, spec: RunSpec, count: int, matrix_name: str
) -> dict[str, Any]:
    """The parameters of submitit's SlurmExecutor (sbatch's names) for an array of `count`
    runs shaped like `spec`."""
    shape = task_shape(spec, settings)
    params: dict[str, Any] = {
        "job_name": f"prunebench-{matrix_name}",
        "time": settings.time_minutes,
        "nodes": 1,
        "ntasks_per_node": shape.tasks,
        "cpus_per_task": shape.cpus_per_task,
        "signal_delay_s": SIGNAL_DELAY_SECONDS,
        "array_parallelism": settings.array_parallelism or count,
        "stderr_to_stdout": True,
        # Requeue on preemption / node failure even where the cluster's default says not to.
        "additional_parameters": {"requeue": True, **_extra_parameters(settings.extra_args)},
    }
    if shape.gpus:
        params["gpus_per_node"] = shape.gpus
    if shape.mem_gb:
        params["mem"] = f"{shape.mem_gb}GB"
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(settings, name):
            params[name] = getattr(settings, name)
    return params


def _folder(matrix_dir: Path) -> Path:
    # submitit turns %j into <array job id>_<task index>: one folder per array task.
    return Path(matrix_dir).resolve() / SUBMITIT_DIR / "%j"


def sbatch_directives(params: dict[str, Any], matrix_dir: Path, count: int) -> list[str]:
    """The #SBATCH lines submitit writes for `count` runs (rendered by submitit itself): a
    job array, or a plain job for one run, as submitit's submit_array submits a single one."""
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(
        command="(submitit)",
        folder=_folder(matrix_dir),
        map_count=count if count > 1 else None,
        **params,
    )
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


# ---------------------------------------------------------------------------------------------
# The partition's limits: a request no node of the partition can meet pends forever
# (PartitionConfig / Resources), so it is refused before anything is submitted.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeResources:
    cpus: int
    mem_mb: int
    gpus: int
    features: frozenset[str]


@dataclass(frozen=True)
class PartitionLimits:
    """What `scontrol show partition` and `sinfo` say about one partition."""

    name: str
    max_minutes: int | None  # None: UNLIMITED
    max_cpus_per_node: int | None
    max_mem_mb_per_node: int | None
    nodes: tuple[NodeResources, ...]


def _fields(line: str) -> dict[str, str]:
    """`Key=value Key2=value2 ...` of scontrol's --oneliner output."""
    out = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out


def slurm_minutes(text: str) -> int | None:
    """Slurm's time format (`[days-]hours:minutes:seconds`, `minutes:seconds`, `minutes`) in
    minutes, rounded down; None for UNLIMITED / INFINITE / NONE."""
    text = text.strip()
    days, dash, rest = text.partition("-")
    if not dash:
        days, rest = "0", text
    try:
        parts = [int(p) for p in rest.split(":")]
        days_count = int(days)
    except ValueError:
        return None  # UNLIMITED, INFINITE, NONE or a form this check does not know
    if dash:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = 0, parts[0], 0
    return (days_count * 24 + hours) * 60 + minutes + seconds // 60


def _limit(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None  # UNLIMITED, or a form this check does not know: sbatch decides
    return int(value)


def _gres_gpus(gres: str) -> int:
    """GPUs of a node from sinfo's %G (`gpu:4`, `gpu:a100:4(S:0-1)`, `(null)`)."""
    return sum(int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def parse_partitions(scontrol: str, sinfo: str) -> dict[str, PartitionLimits]:
    """Partitions from `scontrol show partition --oneliner` and the nodes of each from
    `sinfo -h -N -o '%N|%c|%m|%G|%f|%P'` (one line per node and partition). The default
    partition is also filed under the key "" (an empty CONFIG_SLURM_PARTITION)."""
    nodes: dict[str, list[NodeResources]] = {}
    for line in sinfo.splitlines():
        cells = line.strip().split("|")
        if len(cells) != 6 or not cells[1].isdigit():
            continue
        _node, cpus, mem, gres, features, partition = cells
        node = NodeResources(
            cpus=int(cpus),
            mem_mb=int(mem) if mem.isdigit() else 0,
            gpus=_gres_gpus(gres),
            features=frozenset(f for f in features.split(",") if f and f != "(null)"),
        )
        nodes.setdefault(partition.rstrip("*"), []).append(node)
    out: dict[str, PartitionLimits] = {}
    for line in scontrol.splitlines():
        fields = _fields(line)
        name = fields.get("PartitionName")
        if not name:
            continue
        limits = PartitionLimits(
            name=name,
            max_minutes=slurm_minutes(fields.get("MaxTime", "UNLIMITED")),
            max_cpus_per_node=_limit(fields.get("MaxCPUsPerNode")),
            max_mem_mb_per_node=_limit(fields.get("MaxMemPerNode")),
            nodes=tuple(nodes.get(name, ())),
        )
        out[name] = limits
        if fields.get("Default") == "YES":
            out[""] = limits
    return out


def _constraint_features(constraint: str) -> frozenset[str] | None:
    """The features every node must have for a plain `a` or `a&b` constraint; None for any
    other form (`|`, counts, brackets), which this check does not try to evaluate."""
    if not constraint:
        return frozenset()
    names = constraint.split("&")
    if all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names):
        return frozenset(names)
    return None


def limits_problem(
    shape: TaskShape, settings: SlurmSettings, partition: PartitionLimits
) -> str | None:
    """Why no node of `partition` can ever run one task of this shape (one line naming the
    option), or None when one can."""
    where = f"partition {partition.name!r}"
    if partition.max_minutes is not None and settings.time_minutes > partition.max_minutes:
        return (
            f"CONFIG_SLURM_TIME_MINUTES={settings.time_minutes} is more than {where} allows "
            f"(MaxTime {partition.max_minutes} minutes); accepted: 5..{partition.max_minutes}"
        )
    wanted = _constraint_features(settings.constraint)
    nodes = [n for n in partition.nodes if wanted is None or wanted <= n.features]
    if not nodes:
        if partition.nodes and wanted:
            return (
                f"CONFIG_SLURM_CONSTRAINT={settings.constraint!r}: no node of {where} has "
                f"{'these features' if len(wanted) > 1 else 'this feature'}"
            )
        return None  # nothing known about its nodes: sbatch decides
    if shape.gpus:
        node_gpus = max(n.gpus for n in nodes)
        if node_gpus == 0:
            return (
                f"CONFIG_SLURM_PARTITION={partition.name!r} has no GPUs, but the runs train "
                "on GPUs; accepted: a GPU partition, or CONFIG_TRAIN_DEVICE_CPU"
            )
        if shape.gpus > node_gpus:
            return (
                f"CONFIG_GPUS_PER_RUN={shape.gpus}: a run needs {shape.gpus} GPUs on one node, "
                f"but the nodes of {where} have at most {node_gpus}; accepted: 1..{node_gpus}"
            )
    cpus_needed = shape.tasks * shape.cpus_per_task
    node_cpus = max(n.cpus for n in nodes)
    if partition.max_cpus_per_node is not None:
        node_cpus = min(node_cpus, partition.max_cpus_per_node)
    if cpus_needed > node_cpus:
        per_task = node_cpus // shape.tasks
        tasks = f" ({shape.tasks} tasks, one per GPU)" if shape.tasks > 1 else ""
        accepted = f"1..{per_task}" if per_task else "none: fewer CPUs than tasks"
        return (
            f"CONFIG_SLURM_CPUS_PER_GPU={shape.cpus_per_task}: a run needs {cpus_needed} CPUs "
            f"on one node{tasks}, but the nodes of {where} have at most {node_cpus}; "
            f"accepted: {accepted}"
        )
    if shape.mem_gb:
        node_mem = max(n.mem_mb for n in nodes)
        if partition.max_mem_mb_per_node is not None:
            node_mem = min(node_mem, partition.max_mem_mb_per_node)
        if node_mem and shape.mem_gb * 1024 > node_mem:
            return (
                f"CONFIG_SLURM_MEM_GB={shape.mem_gb} is more than a node of {where} has "
                f"({node_mem // 1024} GB); accepted: 0 (the cluster's default) or "
                f"1..{node_mem // 1024}"
            )
    return None


def _ask(command: list[str]) -> str | None:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def partition_limits() -> dict[str, PartitionLimits] | None:
    """The cluster's partitions and their nodes; None when scontrol or sinfo cannot answer."""
    if shutil.which("scontrol") is None or shutil.which("sinfo") is None:
        return None
    scontrol = _ask(["scontrol", "show", "partition", "--oneliner"])
    sinfo = _ask(["sinfo", "--noheader", "--Node", "--format=%N|%c|%m|%G|%f|%P"])
    if scontrol is None or sinfo is None:
        return None
    return parse_partitions(scontrol, sinfo)


def check_partition_limits(
    spec: RunSpec, settings: SlurmSettings, partitions: dict[str, PartitionLimits] | None
) -> None:
    """Raise SlurmError when no partition named in CONFIG_SLURM_PARTITION (the default one
    when empty) can ever run a task of this matrix. A partition the cluster does not know is
    left to sbatch, which names it; so is everything when the scheduler cannot be asked."""
    if not partitions:
        return
    shape = task_shape(spec, settings)
    problems = []
    for name in settings.partition.split(",") if settings.partition else [""]:
        partition = partitions.get(name)
        if partition is None:
            return
        problem = limits_problem(shape, settings, partition)
        if problem is None:
            return  # Slurm runs the job in the first partition that can
        problems.append(problem)
    raise SlurmError(f"{problems[0]} (Slurm would keep the job pending forever)")


# ---------------------------------------------------------------------------------------------
# The record of submissions, and what the scheduler says about them
# ---------------------------------------------------------------------------------------------


def _open_to_write(path: Path) -> int:
    """A descriptor of `path`'s directory to write `path` relative to (lib/store.py: never
    opened through a link); SlurmError (one line) where the directory is a link."""
    try:
        return open_dir(path.parent)
    except StoreError as e:
        raise SlurmError(f"{path} not written: {e}") from None


def read_record(matrix_dir: Path) -> dict[str, Any] | None:
    path = Path(matrix_dir) / RECORD_FILE
    try:
        with MatrixStore(matrix_dir) as store:  # never through a link (lib/store.py)
            record = read_json_at(store.fd, RECORD_FILE, path)
    except FileNotFoundError:
        return None
    except (OSError, StoreError) as e:
        raise SlurmError(
            f"{path} cannot be read ({one_line(e)}); it records which Slurm job trains this "
            "matrix: check squeue, and move the file away only if no job of this matrix is queued"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("submissions"), list):
        raise SlurmError(f"{path} is not a Slurm submission record (no 'submissions' list)")
    for i, submission in enumerate(record["submissions"]):
        tasks = submission.get("tasks") if isinstance(submission, dict) else None
        if (
            not isinstance(submission, dict)
            or not isinstance(submission.get("job_id"), str | int)
            or not isinstance(tasks, dict | None)
            or not all(isinstance(v, str) for v in (tasks or {}).values())
        ):
            raise SlurmError(
                f"{path}: field 'submissions[{i}]' is not a submission (job_id, tasks); check "
                "squeue, and move the file away only if no job of this matrix is queued"
            )
    return record


def prepare_submitit_folder(matrix_dir: Path) -> None:
    """submitit's folder (job scripts, the pickles a job loads, logs) is this user's alone:
    created 0700, never a link; one that another user owns or could write, or that holds a
    file of another user, is refused (a pickle loaded by the job runs as its code)."""
    folder = Path(matrix_dir) / SUBMITIT_DIR
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise SlurmError(f"{folder} cannot be created ({e.strerror or e})") from None
    try:
        fd = open_dir(folder)
    except StoreError as e:
        raise SlurmError(f"{e}: submitit's pickles are run by the jobs") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise SlurmError(
                f"{folder} belongs to {owner_name(st.st_uid)}, not to you; the jobs would load "
                "pickles from it: move it away"
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
        owners = [(e.name, e.stat(follow_symlinks=False).st_uid) for e in os.scandir(fd)]
        for name, _ in list(owners):
            if not stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                continue
            sub = open_dir(name, fd, folder / name)
            try:
                owners += [
                    (f"{name}/{e.name}", e.stat(follow_symlinks=False).st_uid)
                    for e in os.scandir(sub)
                ]
            finally:
                os.close(sub)
        for name, uid in owners:
            if uid != os.getuid():
                raise SlurmError(
                    f"{folder}/{name} belongs to {owner_name(uid)}, not to you; the jobs would "
                    "load pickles from this folder: move it away"
                )
    except StoreError as e:
        raise SlurmError(str(e)) from None
    finally:
        os.close(fd)


def task_ids(record: dict[str, Any] | None) -> dict[str, str]:
    """run id -> the Slurm job id (`123_4`) of its latest submission."""
    out: dict[str, str] = {}
    for submission in (record or {}).get("submissions", []):
        out.update(submission.get("tasks") or {})
    return out


def scheduler_states(job_ids: list[str]) -> dict[str, str]:
    """`{"123_4": "RUNNING", ...}` for every task of `job_ids` that squeue still knows
    (finished jobs leave its memory after the cluster's MinJobAge). Raises SlurmError when
    squeue cannot answer."""
    return {task: state for task, (state, _reason) in scheduler_queue(job_ids).items()}


def scheduler_queue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """`{"123_4": ("PENDING", "PartitionConfig"), ...}`: each task's state and squeue's
    reason (why a pending task waits; "None" for most others). As scheduler_states."""
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        raise SlurmError("squeue is not on PATH")
    states: dict[str, tuple[str, str]] = {}
    for job_id in job_ids:  # one call each: squeue rejects the whole list if one id is gone
        try:
            done = subprocess.run(
                [
                    "squeue",
                    "--noheader",
                    "--array",
                    "--states=all",
                    f"--jobs={job_id}",
                    "--format=%i|%T|%r",
                ],
                capture_output=True,
                text=True,
                timeout=QUERY_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SlurmError(f"squeue did not answer within {QUERY_TIMEOUT_SECONDS}s") from None
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                continue  # no longer known to the controller: ended
            message = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise SlurmError(f"squeue failed: {message}")
        for line in done.stdout.splitlines():
            task, _, rest = line.strip().partition("|")
            state, _, reason = rest.partition("|")
            if task:
                states[task] = (state.split()[0] if state.strip() else "UNKNOWN", reason.strip())
    return states


# squeue's reasons that mean a pending task will not start as asked (docs/cluster.md).
STUCK_REASONS = {
    "PartitionConfig": "asks for more than the partition allows: scancel it, lower the "
    "CONFIG_SLURM_* setting, make continue",
    "PartitionTimeLimit": "its time limit is above the partition's: scancel it, lower "
    "CONFIG_SLURM_TIME_MINUTES, make continue",
    "ReqNodeNotAvail": "the nodes it needs are down or reserved",
}


def pending_text(state: str, reason: str) -> str:
    """`PENDING (Resources)`: a pending task's state with squeue's reason, and what a reason
    that will not resolve itself means."""
    if state != "PENDING" or not reason or reason == "None":
        return state
    reason_name = reason.split(",")[0].split("(")[0].strip()
    hint = STUCK_REASONS.get(reason_name)
    return f"{state} ({reason}{': ' + hint if hint else ''})"


def active_job(matrix_dir: Path) -> tuple[str, dict[str, str]] | None:
    """(job id, {task: state}) of the matrix's latest submission while any of its tasks is
    queued or running; None when there is none."""
    record = read_record(matrix_dir)
    if not record or not record["submissions"]:
        return None
    job_id = str(record["submissions"][-1]["job_id"])
    try:
        states = scheduler_states([job_id])
    except SlurmError as e:
        raise SlurmError(
            f"cannot tell whether Slurm job {job_id} of this matrix is still queued ({e}); "
            "nothing was submitted"
        ) from None
    active = {task: state for task, state in states.items() if state not in ENDED_STATES}
    return (job_id, active) if active else None


def refuse_if_active(matrix_dir: Path) -> None:
    """A run never trains twice at once: no submission (nor local run) beside a live array."""
    found = active_job(matrix_dir)
    if found is None:
        return
    job_id, states = found
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    raise SlurmError(
        f"matrix {Path(matrix_dir).name} is already submitted: Slurm job {job_id} is queued or "
        f"running ({summary}); make status watches it, scancel {job_id} cancels it"
    )


# ---------------------------------------------------------------------------------------------
# Submitting
# ---------------------------------------------------------------------------------------------


def _say(out: IO[str], message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=out, flush=True)


def _submit_array(submitit: Any, params: dict[str, Any], matrix_dir: Path, run_dirs: list[Path]):
    from lib.slurm_job import MatrixRun

    executor = submitit.SlurmExecutor(
        folder=_folder(matrix_dir), max_num_timeout=MAX_TIMEOUT_REQUEUES
    )
    executor.update_parameters(**params)
    try:
        return executor.submit_array([MatrixRun(str(d)) for d in run_dirs])
    except Exception as e:  # noqa: BLE001 - sbatch's refusal, whatever submitit wraps it in
        lines = [
            line.strip()
            for line in str(e).splitlines()
            if line.strip() and "Traceback" not in line and "Error when" not in line
        ]
        reason = next((line for line in lines if "error" in line.lower()), None)
        raise SlurmError(
            f"sbatch refused the job array: {reason or (lines[-1] if lines else type(e).__name__)}"
        ) from None


def submit_matrix(
    specs: list[RunSpec],
    matrix_dir: Path,
    *,
    settings: SlurmSettings,
    config_snapshot: dict[str, str],
    report_settings: dict,
    rerun_failed: bool = False,
    out: IO[str] | None = None,
) -> int:
    """Submit every run of `specs` that is not finished as one job array; return the exit
    code (see the module doc). Nothing is submitted when any check fails."""
    matrix_dir = Path(matrix_dir)
    out = out or sys.stdout
    try:
        submitit = require_submitit()
        require_scheduler()
        if specs:  # one matrix shares its device and GPU count: one shape for every task
            check_partition_limits(specs[0], settings, partition_limits())
        # the session every executor works on (lib.runner.MatrixSession): checks done, lock held
        session = open_matrix(
            specs,
            matrix_dir,
            config_snapshot=config_snapshot,
            report_settings=report_settings,
            rerun_failed=rerun_failed,
            out=out,
            local=False,
        )
    except (SlurmError, RunnerRefused, LockRefused) as e:
        print(f"error: {e}", file=out, flush=True)
        return EXIT_REFUSED
    try:  # the matrix lock is held: no local runner nor a second submission meanwhile
        refuse_if_active(matrix_dir)
        queue = session.classify()
        session.write_manifest()
        failed = [r for r in session.runs if r.status == STATUS_FAILED]
        completed = sum(r.status == STATUS_COMPLETED for r in session.runs)
        if not queue:
            _say(
                out,
                f"matrix {matrix_dir.name}: nothing to submit ({completed} of "
                f"{count(len(session.runs), 'run')} completed, {len(failed)} failed)",
            )
            if failed:
                print("  (RERUN_FAILED=1 resubmits the failed runs)", file=out, flush=True)
            return EXIT_FAILED if failed else EXIT_OK
        prepare_submitit_folder(matrix_dir)
        for run in queue:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            dir_fd = _open_to_write(run.run_dir / RUN_FILE)
            try:
                atomic_write_at(dir_fd, RUN_FILE, run.spec.to_json() + "\n", run.run_dir / RUN_FILE)
            finally:
                os.close(dir_fd)
        params = sbatch_parameters(settings, queue[0].spec, len(queue), matrix_dir.name)
        jobs = _submit_array(submitit, params, matrix_dir, [run.run_dir for run in queue])
        job_id = str(jobs[0].job_id).split("_")[0]
        tasks = {run.spec.run_id: str(job.job_id) for run, job in zip(queue, jobs, strict=True)}
        record = read_record(matrix_dir) or {"schema_version": RECORD_SCHEMA_VERSION}
        record.setdefault("submissions", []).append(
            {
                "job_id": job_id,
                "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "tasks": tasks,
                "sbatch": params,
                "folder": str(_folder(matrix_dir)),
            }
        )
        dir_fd = _open_to_write(matrix_dir / RECORD_FILE)
        try:
            atomic_write_json(matrix_dir / RECORD_FILE, record, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except SlurmError as e:
        print(f"error: {e}", file=out, flush=True)
        return EXIT_REFUSED
    finally:
        session.close()
    shape = task_shape(queue[0].spec, settings)
    kind = "job array" if len(queue) > 1 else "job"  # submitit submits one run as a plain job
    _say(
        out,
        f"matrix {matrix_dir.name}: submitted Slurm {kind} {job_id}: {count(len(queue), 'run')}, "
        f"each {shape.describe()}; {completed} already completed"
        + (f", {len(failed)} failed (not resubmitted)" if failed else ""),
    )
    print(f"  watch:  make status MATRIX={matrix_dir.name}   (or squeue -j {job_id})", file=out)
    print(f"  cancel: scancel {job_id}   (make continue resubmits what is unfinished)", file=out)
    print(
        f"  logs:   {matrix_dir}/<run>/train.log, submitit's in {matrix_dir / SUBMITIT_DIR}/",
        file=out,
        flush=True,
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Dry run
# ---------------------------------------------------------------------------------------------


def format_submission(
    specs: list[RunSpec], results_root: Path, settings: SlurmSettings, matrix_name: str
) -> str:
    """What make test-matrix would submit: the array size, each task's resources and the
    sbatch parameters. Submits nothing."""
    results_root = Path(results_root)
    matrix_dir = results_root / matrix_name
    index = RunIndex(matrix_dir)
    queue = [
        spec
        for spec in specs
        if plan_state(spec, matrix_dir / spec.run_id, index)[0] in (STATE_NEW, STATE_RESUMABLE)
    ]
    index.save()
    if not queue:
        return "Slurm: nothing to submit"
    require_submitit()
    params = sbatch_parameters(settings, queue[0], len(queue), matrix_name)
    shape = task_shape(queue[0], settings)
    what = (
        f"one job array of {count(len(queue), 'task')}, one run each,"
        if len(queue) > 1
        else "one job (a single run: no array),"
    )
    lines = [
        f"Slurm: make test-matrix submits {what} through submitit",
        f"  {'each task' if len(queue) > 1 else 'the job'}: {shape.describe()}, time limit "
        f"{format_duration(settings.time_minutes * 60)} (requeued from its last epoch when it "
        "runs out)",
        "  sbatch parameters:",
        *(f"    {line}" for line in sbatch_directives(params, matrix_dir, len(queue))),
    ]
    if shutil.which("sbatch") is None:
        lines.append("  note: sbatch is not on PATH here: submit from a login node of the cluster")
    else:
        try:
            check_partition_limits(queue[0], settings, partition_limits())
        except SlurmError as e:
            lines.append(f"  error: make test-matrix would refuse this: {e}")
    return "\n".join(lines)


def refuse_local_if_active(matrix_dir: Path) -> None:
    """The local runner must not train a matrix whose Slurm array is queued or running. Where
    squeue is not installed this machine is not part of that cluster and cannot ask it."""
    if read_record(matrix_dir) is None or shutil.which("squeue") is None:
        return
    refuse_if_active(matrix_dir)
