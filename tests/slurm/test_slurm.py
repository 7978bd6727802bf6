"""The Slurm executor against a real Slurm (tests/slurm/local-slurm.sh), not a mock.

A tiny matrix (ResNet-18 on 8x8 synthetic images, two steps an epoch, one CPU thread) goes
through the real scheduler: every run completes once and the report is produced; a second
submission while the array is queued is refused; make status and make continue behave as
docs/cluster.md says; a job requeued mid-run (scontrol requeue), and one warned by Slurm before
its time limit (SIGUSR2: submitit's checkpoint and requeue), resume from their checkpoints and
end with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cli_helpers import cli as run_cli
from test_train import comparable

from lib.metrics import METRICS_FILE, STATUS_COMPLETED, STATUS_FAILED, read_metrics
from lib.runner import LOG_FILE, RUN_FILE, record_failure
from lib.slurm import ENDED_STATES, RECORD_FILE, scheduler_states
from lib.spec import RunSpec

pytestmark = pytest.mark.slurm

# A real single-node Slurm cluster, started once for this module by tests/slurm/local-slurm.sh
# and stopped at the end (its jobs cancelled, its state removed). Where Slurm, munge or
# submitit is not installed, or not as root, the tests skip with the reason; where they are
# installed the cluster must start (a failure to start fails the tests, it does not skip).
# (Not a conftest.py: tests import tests/conftest.py by its module name.)

SCRIPT = Path(__file__).resolve().with_name("local-slurm.sh")
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel")


def why_not_runnable() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"Slurm is not installed here ({', '.join(missing)} not on PATH): "
            "apt-get install slurm-wlm munge (.ci/run does)"
        )
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd starts jobs as the submitting user)"
    if importlib.util.find_spec("submitit") is None:
        return "submitit is not installed: pip install -e '.[slurm]'"
    return None


CLUSTER_PREFIX = "prunebench-slurm-"


def stop_orphans() -> None:
    """Stop the clusters of test sessions that died before stopping theirs (killed by a
    timeout, say): their daemons would otherwise run on forever. A cluster whose session
    lives is left alone, whoever's it is."""
    for state in Path(tempfile.gettempdir()).glob(CLUSTER_PREFIX + "*"):
        try:
            owner = int((state / "owner").read_text())
            os.kill(owner, 0)
        except (OSError, ValueError) as gone:
            if isinstance(gone, ProcessLookupError):
                subprocess.run([str(SCRIPT), "stop", str(state)], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    """SLURM_CONF of a running local cluster; set in os.environ while this module runs, so the
    commands the tests start (and the jobs they submit) reach it. The daemons' logs are kept
    in pytest's temporary directory (slurm-logs*) when the cluster is removed."""
    reason = why_not_runnable()
    if reason:
        pytest.skip(reason)
    stop_orphans()
    # Not under pytest's basetemp: other pytest sessions on the machine prune old basetemps,
    # and a cluster must not lose its state (or munge its socket) while it runs.
    state = Path(tempfile.mkdtemp(prefix=CLUSTER_PREFIX))
    started = subprocess.run(
        [str(SCRIPT), "start", str(state)], capture_output=True, text=True, timeout=120
    )
    if started.returncode != 0:
        subprocess.run([str(SCRIPT), "stop", str(state)], capture_output=True, timeout=120)
        pytest.fail(f"local Slurm did not start: {started.stderr.strip()}")
    conf = str(state / "slurm.conf")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        shutil.copytree(state / "log", tmp_path_factory.mktemp("slurm-logs"), dirs_exist_ok=True)
        stopped = subprocess.run(
            [str(SCRIPT), "stop", str(state)], capture_output=True, text=True, timeout=120
        )
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        assert stopped.returncode == 0, stopped.stderr


REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT = 300  # seconds a tiny job may take on a loaded 2-core machine
HEADER = "===== slurm job "

CONFIG = """\
CONFIG_MODEL_RESNET18=y
CONFIG_MODEL_STEM_CIFAR=y
CONFIG_DATASET_SYNTHETIC=y
CONFIG_DATA_SYNTHETIC_CLASSES=10
CONFIG_DATA_SYNTHETIC_TRAIN_SIZE=16
CONFIG_DATA_SYNTHETIC_VAL_SIZE=8
CONFIG_DATA_IMAGE_SIZE=8
CONFIG_DATA_WORKERS=0
CONFIG_TRAIN_BATCH_SIZE=8
CONFIG_TRAIN_DEVICE_CPU=y
# CONFIG_OPTIMIZER_ADAMWPRUNE is not set
CONFIG_PRUNING_NONE=y
# CONFIG_PRUNING_MAGNITUDE is not set
# CONFIG_PRUNING_STATE is not set
CONFIG_MATRIX_EXECUTOR_SLURM=y
CONFIG_SLURM_CPUS_PER_GPU=1
CONFIG_SLURM_TIME_MINUTES=30
"""


def write_config(tmp: Path, name: str, *, epochs: int, optimizers: tuple[str, ...], extra=""):
    path = tmp / f"{name}.config"
    lines = [
        CONFIG,
        f'CONFIG_MATRIX_NAME="{name}"',
        f'CONFIG_RESULTS_DIR="{tmp / "results"}"',
        f"CONFIG_TRAIN_EPOCHS={epochs}",
        *(f"CONFIG_OPTIMIZER_{o.upper()}=y" for o in optimizers),
        extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    # One OpenMP thread in every job (sbatch passes the environment on): steady timings on a
    # shared 2-core machine, and the same thread count in the runs whose metrics are compared.
    return run_cli(*args, config=config, timeout=180)


def submitted_job(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"submitted Slurm job(?: array)? (\d+)", result.stdout)
    assert found, result.stdout
    return found.group(1)


def wait_for(what: str, condition, timeout: float = JOB_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def tasks_of(job_id: str) -> dict[str, str]:
    return scheduler_states([job_id])


def wait_until_ended(job_id: str) -> dict[str, str]:
    def ended():
        states = tasks_of(job_id)
        return states if states and all(s in ENDED_STATES for s in states.values()) else None

    return wait_for(f"Slurm job {job_id} to end", ended)


def epochs_done(run_dir: Path) -> int:
    try:
        return len(read_metrics(run_dir / METRICS_FILE)["epochs"])
    except Exception:  # noqa: BLE001 - not written yet, or being replaced
        return 0


def attempts(run_dir: Path) -> list[str]:
    return [
        line for line in (run_dir / LOG_FILE).read_text().splitlines() if line.startswith(HEADER)
    ]


def status(config: Path, matrix: str) -> list[str]:
    result = cli(config, "lib.cli", "status", "--matrix", matrix)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def line_of(lines: list[str], run_id: str) -> str:
    (line,) = [line for line in lines if line.startswith(run_id + " ")]
    return line


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix(local_slurm, tmp_path_factory):
    """A two-run matrix submitted once; one array task at a time, so the array stays queued
    long enough to be submitted a second time."""
    tmp = tmp_path_factory.mktemp("slurm-matrix")
    config = write_config(
        tmp, "arr", epochs=2, optimizers=("sgd", "adamw"), extra="CONFIG_SLURM_ARRAY_PARALLELISM=1"
    )
    first = cli(config, "lib.cli", "test-matrix")
    job = submitted_job(first)
    second = cli(config, "lib.cli", "test-matrix")
    # The same matrix with the local executor must not train beside the array either.
    local = config.with_name("arr-local.config")
    local.write_text(config.read_text().replace("CONFIG_MATRIX_EXECUTOR_SLURM=y", ""))
    beside = cli(local, "lib.cli", "test-matrix")
    return {
        "config": config,
        "dir": tmp / "results" / "arr",
        "job": job,
        "first": first,
        "second": second,
        "local": beside,
    }


def test_matrix_is_one_array_every_run_completes_once_and_the_report_is_written(matrix):
    job, matrix_dir = matrix["job"], matrix["dir"]
    assert "submitted Slurm job array" in matrix["first"].stdout
    assert f"scancel {job}" in matrix["first"].stdout
    # The second submission came while the array was queued: refused, naming the job.
    second = matrix["second"]
    assert second.returncode == 2
    assert f"Slurm job {job} is queued or running" in second.stdout + second.stderr
    local = matrix["local"]
    assert local.returncode == 2
    assert f"Slurm job {job} is queued or running" in local.stdout + local.stderr

    record = json.loads((matrix_dir / RECORD_FILE).read_text())
    assert [s["job_id"] for s in record["submissions"]] == [job]
    tasks = record["submissions"][0]["tasks"]
    assert sorted(tasks.values()) == [f"{job}_0", f"{job}_1"]
    assert record["submissions"][0]["sbatch"]["array_parallelism"] == 1

    states = wait_until_ended(job)
    assert sorted(states) == sorted(tasks.values())
    assert set(states.values()) == {"COMPLETED"}
    for run_id in tasks:
        run_dir = matrix_dir / run_id
        doc = read_metrics(run_dir / METRICS_FILE)
        assert doc["summary"]["status"] == STATUS_COMPLETED
        assert len(doc["epochs"]) == 2
        assert len(attempts(run_dir)) == 1, "every run trains exactly once"

    lines = status(matrix["config"], "arr")
    assert lines[0].startswith("matrix arr") and "2 completed" in lines[0]
    for run_id, task in tasks.items():
        line = line_of(lines, run_id)
        assert "completed" in line and f"slurm {task} COMPLETED" in line

    report = cli(matrix["config"], "scripts.report", "--matrix", "arr")
    assert report.returncode == 0, report.stdout + report.stderr
    assert (matrix_dir / "report.md").is_file()


def test_continue_submits_only_unfinished_runs_and_failed_ones_on_request(matrix):
    config, matrix_dir = matrix["config"], matrix["dir"]
    tasks = json.loads((matrix_dir / RECORD_FILE).read_text())["submissions"][0]["tasks"]
    unfinished, failed = sorted(tasks)
    # One run loses its results (as if never trained), the other failed.
    for name in (METRICS_FILE, "checkpoint_last.pt", "checkpoint_best.pt", LOG_FILE):
        (matrix_dir / unfinished / name).unlink(missing_ok=True)
    spec = RunSpec.from_json((matrix_dir / failed / RUN_FILE).read_text())
    record_failure(spec, "simulated failure")

    lines = status(config, "arr")
    assert line_of(lines, unfinished).split()[1] == "pending"
    assert "failed: simulated failure" in line_of(lines, failed)

    result = cli(config, "lib.cli", "continue", "--matrix", "arr")
    job = submitted_job(result)
    assert "1 failed (not resubmitted)" in result.stdout
    record = json.loads((matrix_dir / RECORD_FILE).read_text())
    assert record["submissions"][-1]["tasks"] == {unfinished: job}  # one run: a plain job
    wait_until_ended(job)
    assert read_metrics(matrix_dir / unfinished / METRICS_FILE)["summary"]["status"] == (
        STATUS_COMPLETED
    )
    assert read_metrics(matrix_dir / failed / METRICS_FILE)["summary"]["status"] == STATUS_FAILED

    nothing = cli(config, "lib.cli", "continue", "--matrix", "arr")
    assert nothing.returncode == 1 and "nothing to submit" in nothing.stdout
    assert "RERUN_FAILED=1" in nothing.stdout

    again = cli(config, "lib.cli", "continue", "--matrix", "arr", "--rerun-failed")
    job = submitted_job(again)
    record = json.loads((matrix_dir / RECORD_FILE).read_text())
    assert record["submissions"][-1]["tasks"] == {failed: job}
    wait_until_ended(job)
    assert read_metrics(matrix_dir / failed / METRICS_FILE)["summary"]["status"] == (
        STATUS_COMPLETED
    )
    lines = status(config, "arr")
    assert "2 completed" in lines[0]
    assert f"slurm {job} COMPLETED" in line_of(lines, failed)


def test_requeued_job_resumes_with_the_metrics_of_an_uninterrupted_run(local_slurm, tmp_path):
    epochs = 6
    requeued = write_config(tmp_path, "requeued", epochs=epochs, optimizers=("adamw",))
    reference = write_config(tmp_path, "uninterrupted", epochs=epochs, optimizers=("adamw",))
    # The reference first: on a loaded machine a submission takes seconds, and the run to
    # interrupt must not finish while the test is still submitting.
    reference_job = submitted_job(cli(reference, "lib.cli", "test-matrix"))
    job = submitted_job(cli(requeued, "lib.cli", "test-matrix"))
    run_id = "resnet18_adamw_dense_seed0"
    run_dir = tmp_path / "results" / "requeued" / run_id

    # Preemption-like: Slurm kills and requeues the running job. It starts again after
    # Slurm's hold of requeued jobs (20 s on the test cluster; see local-slurm.sh).
    wait_for("the first epoch", lambda: epochs_done(run_dir) >= 1)
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_for(f"job {job} to be pending again", lambda: tasks_of(job).get(job) == "PENDING")

    assert wait_until_ended(job) == {job: "COMPLETED"}
    assert wait_until_ended(reference_job) == {reference_job: "COMPLETED"}
    headers = attempts(run_dir)
    assert [h.split("(restart ")[1].split(",")[0] for h in headers] == ["0", "1"]
    log = (run_dir / LOG_FILE).read_text()
    assert log.count(f"resumed from {run_dir / 'checkpoint_last.pt'}") == 1
    interrupted = read_metrics(run_dir / METRICS_FILE)
    uninterrupted = read_metrics(tmp_path / "results" / "uninterrupted" / run_id / METRICS_FILE)
    assert interrupted["summary"]["status"] == STATUS_COMPLETED
    assert len(interrupted["epochs"]) == epochs
    assert comparable(interrupted) == comparable(uninterrupted)


def run_time_seconds(job: str) -> int:
    """How long the job's current start has been running (scontrol's RunTime)."""
    shown = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True, check=True
    )
    found = re.search(r"\bRunTime=(?:(\d+)-)?(\d+):(\d+):(\d+)", shown.stdout)
    assert found, shown.stdout
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def trainer_pid(run_dir: Path) -> int | None:
    """The process id of the trainer of `run_dir` (`python -m lib.train <run_dir>/run.json`)."""
    wanted = str(run_dir / RUN_FILE).encode()
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or it just ended
            continue
        if wanted in argv and b"lib.train" in argv:
            return int(proc.name)
    return None


def test_time_limit_warning_stops_requeues_and_resumes_with_the_metrics_of_an_uninterrupted_run(
    local_slurm, tmp_path
):
    """Slurm's own warning before the time limit (the executor's --signal=USR2@90, as
    submitted), not a signal sent by hand: the task stops its trainer, requeues itself and the
    next start resumes from checkpoint_last.pt."""
    epochs = 8
    configs = {
        name: write_config(tmp_path, name, epochs=epochs, optimizers=("adamw",))
        for name in ("limited", "unlimited")
    }
    for path in configs.values():  # four steps an epoch: the run is still training when held
        text = path.read_text()
        path.write_text(text.replace("SYNTHETIC_TRAIN_SIZE=16", "SYNTHETIC_TRAIN_SIZE=32"))
    reference_job = submitted_job(cli(configs["unlimited"], "lib.cli", "test-matrix"))
    job = submitted_job(cli(configs["limited"], "lib.cli", "test-matrix"))
    run_id = "resnet18_adamw_dense_seed0"
    run_dir = tmp_path / "results" / "limited" / run_id
    script = run_dir.parent / "slurm" / job / f"{job}_submission.sh"
    assert "#SBATCH --signal=USR2@90" in script.read_text()
    submitit_log = run_dir.parent / "slurm" / job / f"{job}_0_log.out"

    def warned():
        return "Caught signal SIGUSR2" in submitit_log.read_text()

    # Slurm checks time limits every 30 seconds and sends the warning at the first check that
    # finds it due within 30 s; under load that check has come half a minute late. The trainer
    # is held (SIGSTOP) mid-epoch until the warning has arrived: however long Slurm takes, the
    # warning finds the run training, not finished.
    wait_for("the first epoch", lambda: epochs_done(run_dir) >= 1)
    pid = wait_for("the trainer's process", lambda: trainer_pid(run_dir))
    os.kill(pid, signal.SIGSTOP)
    try:
        assert not warned()
        # The administrator shortens the job's time limit (scontrol update, as one may on a
        # real cluster): it ends one to two minutes from now, so the 90 s warning is due.
        minutes = run_time_seconds(job) // 60 + 2
        subprocess.run(["scontrol", "update", f"jobid={job}", f"TimeLimit={minutes}"], check=True)
        wait_for(f"Slurm's time-limit warning to job {job}", warned)
    finally:
        os.kill(pid, signal.SIGCONT)

    def requeued():
        state = tasks_of(job).get(job)
        assert state not in ENDED_STATES, f"job {job} ended {state} instead of being requeued"
        return state == "PENDING"

    wait_for(f"job {job} to requeue itself", requeued)
    stopped_after = epochs_done(run_dir)
    assert 1 <= stopped_after < epochs
    # The next start gets the usual time limit back. It starts after Slurm's hold of requeued
    # jobs (20 s on the test cluster), which is not cut short: a start within the second the
    # previous one was killed is refused by the node ("Job credential revoked") and the job
    # ends FAILED, which is how this step failed when the test released the job at once.
    subprocess.run(["scontrol", "update", f"jobid={job}", "TimeLimit=30"], check=True)

    assert wait_until_ended(job) == {job: "COMPLETED"}
    assert wait_until_ended(reference_job) == {reference_job: "COMPLETED"}
    assert f"Requeued job {job}" in submitit_log.read_text()
    headers = attempts(run_dir)
    assert [h.split("(restart ")[1].split(",")[0] for h in headers] == ["0", "1"]
    log = (run_dir / LOG_FILE).read_text()
    assert log.count("received SIGTERM: stopping at the next step boundary") == 1
    assert log.count(f"state saved after epoch {stopped_after}") == 1
    resumed = f"resumed from {run_dir / 'checkpoint_last.pt'} after epoch {stopped_after}"
    assert log.count(resumed) == 1
    assert log.count(f"completed {run_id}:") == 1, "the run completes exactly once"
    interrupted = read_metrics(run_dir / METRICS_FILE)
    uninterrupted = read_metrics(tmp_path / "results" / "unlimited" / run_id / METRICS_FILE)
    assert interrupted["summary"]["status"] == STATUS_COMPLETED
    assert len(interrupted["epochs"]) == epochs
    assert comparable(interrupted) == comparable(uninterrupted)


def test_a_partition_the_cluster_does_not_have_is_one_line_and_nothing_is_recorded(
    local_slurm, tmp_path
):
    config = write_config(
        tmp_path, "nopart", epochs=1, optimizers=("adamw",), extra='CONFIG_SLURM_PARTITION="gpu"'
    )
    result = cli(config, "lib.cli", "test-matrix")
    assert result.returncode == 2
    assert result.stdout.strip().splitlines() == [
        "error: sbatch refused the job array: sbatch: error: invalid partition specified: gpu"
    ], result.stdout + result.stderr
    assert not (tmp_path / "results" / "nopart" / RECORD_FILE).exists()


def test_more_cpus_than_a_node_has_is_refused_before_submitting(local_slurm, tmp_path):
    """CONFIG_SLURM_CPUS_PER_GPU above every node's CPUs pends forever (PartitionConfig):
    refused in one line naming the option, nothing submitted or recorded."""
    cpus = int(
        subprocess.run(
            ["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    config = write_config(
        tmp_path,
        "toobig",
        epochs=1,
        optimizers=("adamw",),
        extra=f"CONFIG_SLURM_CPUS_PER_GPU={cpus + 1}",
    )
    result = cli(config, "lib.cli", "test-matrix")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.strip().splitlines() == [
        f"error: CONFIG_SLURM_CPUS_PER_GPU={cpus + 1}: a run needs {cpus + 1} CPUs on one node, "
        f"but the nodes of partition 'debug' have at most {cpus}; accepted: 1..{cpus} "
        "(Slurm would keep the job pending forever)"
    ]
    assert not (tmp_path / "results" / "toobig" / RECORD_FILE).exists()


def test_one_run_is_submitted_as_the_dry_run_shows_and_status_says_why_it_waits(
    local_slurm, tmp_path
):
    config = write_config(
        tmp_path,
        "single",
        epochs=1,
        optimizers=("adamw",),
        extra='CONFIG_SLURM_EXTRA_ARGS="--begin=now+1hour"',
    )
    dry = cli(config, "lib.cli", "dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "submits one job (a single run: no array)" in dry.stdout
    shown = [line.strip() for line in dry.stdout.splitlines() if "#SBATCH" in line]
    job = submitted_job(cli(config, "lib.cli", "test-matrix"))
    try:
        (script,) = (tmp_path / "results" / "single" / "slurm" / job).glob("*_submission.sh")
        submitted = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
        assert submitted == shown
        assert not any("--array" in line for line in submitted)
        lines = status(config, "single")
        assert lines[-1].endswith(f"slurm {job} PENDING (BeginTime)"), lines
    finally:
        subprocess.run(["scancel", job], check=False, timeout=60)
