"""The Slurm executor without a cluster: its settings, the job array's shape and sbatch
parameters, the dry run, the one-line refusals, and `make status` of a local matrix.
tests/slurm/ runs the executor against a real Slurm."""

from __future__ import annotations

import re
import sys
from dataclasses import replace

import pytest
from test_config import write_config
from test_make import make

from lib import cli
from lib import config as cfg
from lib.config import ConfigError, SlurmSettings
from lib.metrics import METRICS_FILE, STATUS_COMPLETED, STATUS_RUNNING, build_document
from lib.metrics import atomic_write_json as write_json
from lib.runner import open_matrix, record_failure
from lib.slurm import (
    SlurmError,
    require_submitit,
    sbatch_directives,
    sbatch_parameters,
    submit_matrix,
)
from lib.status import status_lines

SLURM = "CONFIG_MATRIX_EXECUTOR_SLURM=y"


def test_local_is_the_default_executor(tmp_path):
    matrix = cfg.load(write_config(tmp_path, "demo")).matrix
    assert (matrix.executor, matrix.slurm) == ("local", None)


def test_slurm_settings_are_read_and_extra_args_split_without_a_shell(tmp_path):
    path = write_config(
        tmp_path,
        "demo",
        SLURM,
        'CONFIG_SLURM_PARTITION="gpu,gpu-long"',
        'CONFIG_SLURM_ACCOUNT="lab_x"',
        'CONFIG_SLURM_CONSTRAINT="a100&ib"',
        "CONFIG_SLURM_MEM_GB=64",
        "CONFIG_SLURM_TIME_MINUTES=240",
        """CONFIG_SLURM_EXTRA_ARGS="--exclusive --comment='pruning sweep; rm -rf /'" """,
    )
    slurm = cfg.load(path).matrix.slurm
    assert slurm == SlurmSettings(
        partition="gpu,gpu-long",
        account="lab_x",
        constraint="a100&ib",
        mem_gb=64,
        time_minutes=240,
        extra_args=("--exclusive", "--comment=pruning sweep; rm -rf /"),
    )


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('CONFIG_SLURM_EXTRA_ARGS="-x node07"', "'-x' is not a long option"),
        ('CONFIG_SLURM_EXTRA_ARGS="--array=0-99"', "the Slurm executor sets them"),
        ('CONFIG_SLURM_EXTRA_ARGS="--output=/tmp/x"', "the Slurm executor sets them"),
        ('CONFIG_SLURM_EXTRA_ARGS="--comment=\'open"', "No closing quotation"),
        # A .config line cannot hold a newline; a control character (a tab) is refused alike.
        ('CONFIG_SLURM_EXTRA_ARGS="--exclusive\t--x"', "no newlines or control characters"),
        ('CONFIG_SLURM_PARTITION="gpu; rm -rf /"', "letters, digits"),
        ('CONFIG_SLURM_CONSTRAINT="a100 ib"', "no spaces"),
        # The 90 s warning would be due before the task could take it.
        ("CONFIG_SLURM_TIME_MINUTES=2", "accepted: 5..525600"),
    ],
)
def test_bad_slurm_values_are_one_line_naming_symbol_and_accepted_values(tmp_path, line, named):
    with pytest.raises(ConfigError) as error:
        cfg.load(write_config(tmp_path, "demo", SLURM, line))
    message = str(error.value)
    symbol = line.split("=", 1)[0]
    assert symbol in message and named in message and "\n" not in message


def _spec(tmp_path, *lines):
    config = cfg.load(write_config(tmp_path, "demo", SLURM, *lines))
    return config, cli._plan(config)


def test_one_task_per_gpu_and_no_gpu_for_a_cpu_run(tmp_path):
    config, specs = _spec(tmp_path, "CONFIG_SLURM_MEM_GB=32", 'CONFIG_SLURM_QOS="low"')
    settings = config.matrix.slurm
    gpu_spec = replace(specs[0], train=replace(specs[0].train, device="auto", gpus_per_run=4))
    params = sbatch_parameters(settings, gpu_spec, 27, "seed")
    assert params["ntasks_per_node"] == params["gpus_per_node"] == 4
    assert params["cpus_per_task"] == 8 and params["mem"] == "32GB" and params["qos"] == "low"
    assert params["array_parallelism"] == 27 and params["additional_parameters"]["requeue"]
    assert "partition" not in params  # empty: the cluster's default
    cpu_params = sbatch_parameters(settings, specs[0], 3, "demo")  # the demo trains on the CPU
    assert cpu_params["ntasks_per_node"] == 1 and "gpus_per_node" not in cpu_params
    directives = sbatch_directives(params, tmp_path / "seed", 27)
    for expected in ("--array=0-26%27", "--gpus-per-node=4", "--qos=low", "--signal=USR2@90"):
        assert f"#SBATCH {expected}" in directives


def test_dry_run_shows_the_array_without_submitting(tmp_path, monkeypatch, capsys):
    path = write_config(
        tmp_path,
        "demo",
        SLURM,
        f'CONFIG_RESULTS_DIR="{tmp_path / "results"}"',
        'CONFIG_SLURM_PARTITION="gpu"',
        "CONFIG_SLURM_ARRAY_PARALLELISM=2",
        'CONFIG_SLURM_EXTRA_ARGS="--exclude=node07"',
    )
    monkeypatch.setenv("KCONFIG_CONFIG", str(path))
    assert cli.main(["dry-run"]) == 0
    out = capsys.readouterr().out
    runs = len(cli._plan(cfg.load(path)))
    assert f"one job array of {runs} tasks" in out
    assert "1 node, 1 task, no GPU, 8 CPUs per task" in out
    for directive in (f"--array=0-{runs - 1}%2", "--partition=gpu", "--exclude=node07"):
        assert f"#SBATCH {directive}" in out
    assert not (tmp_path / "results").exists()  # nothing submitted, nothing written


def test_slurm_without_sbatch_or_submitit_is_one_line_before_anything_is_submitted(
    tmp_path, monkeypatch, capsys
):
    config, specs = _spec(tmp_path)
    kwargs = dict(settings=config.matrix.slurm, config_snapshot={}, report_settings={})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert submit_matrix(specs, tmp_path / "m", **kwargs) == 2
    out = capsys.readouterr().out.strip()
    assert out == (
        "error: CONFIG_MATRIX_EXECUTOR_SLURM: sbatch is not on PATH; submit from a machine of "
        "the Slurm cluster (a login node), or choose the local executor"
    )
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    assert submit_matrix(specs, tmp_path / "m", **kwargs) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error: CONFIG_MATRIX_EXECUTOR_SLURM needs submitit")
    assert "pip install -e '.[slurm]'" in out and "\n" not in out
    assert not (tmp_path / "m").exists()


def test_submitit_that_fails_to_import_says_why_not_that_it_is_missing(tmp_path, monkeypatch):
    """Installed but broken (a dependency gone, an upgrade half done): the real error, one line."""
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "submitit":
            raise ModuleNotFoundError("No module named 'cloudpickle'", name="cloudpickle")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "submitit", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(SlurmError) as error:
        require_submitit()
    assert str(error.value) == (
        "CONFIG_MATRIX_EXECUTOR_SLURM: submitit is installed but cannot be imported (No module "
        "named 'cloudpickle'); reinstall it with pip install -e '.[slurm]'"
    )


def test_status_of_a_local_matrix_one_line_per_run(tmp_path, tiny_spec):
    specs = [tiny_spec(tmp_path, seed=seed, train={"epochs": 3}) for seed in range(4)]
    matrix_dir = tmp_path / "results" / "tiny"
    runner = open_matrix(specs, matrix_dir, config_snapshot={}, report_settings={})
    runner.write_manifest()
    runner.lock.release()
    done, failed, stopped, pending = (run.spec for run in runner.runs)
    epoch = {"epoch": 1, "test_top1": 42.0, "test_top5": 90.0, "epoch_seconds": 1.0}
    epochs = [dict(epoch, epoch=i + 1) for i in range(3)]
    for spec, status, records in (
        (done, STATUS_COMPLETED, epochs),
        (stopped, STATUS_RUNNING, epochs[:1]),
    ):
        (matrix_dir / spec.run_id).mkdir(parents=True)
        write_json(
            matrix_dir / spec.run_id / METRICS_FILE, build_document(spec, records, status=status)
        )
    (matrix_dir / failed.run_id).mkdir()
    record_failure(failed, "training diverged")

    lines = status_lines(matrix_dir)
    assert (
        lines[0].startswith("matrix tiny")
        and "1 completed, 1 stopped, 1 pending, 1 failed" in (lines[0])
    )
    by_run = {line.split()[0]: line for line in lines[1:5]}
    assert "completed, top-1 42.00% after 3 epochs" in by_run[done.run_id]
    assert "failed: training diverged" in by_run[failed.run_id]
    assert "stopped after epoch 1 of 3" in by_run[stopped.run_id]
    assert by_run[pending.run_id].split()[1:] == ["pending"]
    assert "slurm" not in "\n".join(lines)
    assert lines[-1] == "stopped runs resume with make continue"

    # The same through the Makefile, which finds the matrix under CONFIG_RESULTS_DIR.
    config = tmp_path / ".config"
    config.write_text(f'CONFIG_RESULTS_DIR="{tmp_path / "results"}"\n')
    shown = make("status", "MATRIX=tiny", config_path=config)
    assert shown.returncode == 0 and shown.stdout.splitlines() == lines, shown.stderr
    missing = make("status", "MATRIX=nothing", config_path=config)
    # make's own "make: ***" line ("make[1]: ***" when make check runs the tests) aside
    ours = [line for line in missing.stderr.splitlines() if not re.match(r"make(\[\d+\])?: ", line)]
    assert missing.returncode == 2 and len(ours) == 1  # one line (and make's own)
    assert ours[0].startswith("error: ") and "matrix.json: no such matrix" in ours[0]


def test_a_snapshot_keeps_disabled_default_options(tmp_path):
    """make continue reloads the matrix's snapshot: an option the user turned off (a default-y
    pruning method) must stay off, or the matrix could not be continued at all."""
    path = write_config(
        tmp_path, "demo", "CONFIG_PRUNING_NONE=y", "# CONFIG_PRUNING_MAGNITUDE is not set"
    )
    config = cfg.load(path)
    assert config.symbol_dict()["CONFIG_PRUNING_MAGNITUDE"] == "n"
    again = cfg.load_snapshot(config.symbol_dict(), "snapshot")
    assert "magnitude" not in config.pruning_methods
    assert again.pruning_methods == config.pruning_methods


# ---------------------------------------------------------------------------------------------
# Partition limits, sbatch prefixes, the dry run of one run (issue #25)

# Recorded from `scontrol show partition --oneliner` and
# `sinfo --noheader --Node --format=%N|%c|%m|%G|%f|%P` (Slurm 22.05; fields shortened).
SCONTROL = (
    "PartitionName=gpu AllowGroups=ALL Default=NO MaxNodes=UNLIMITED MaxTime=2-00:00:00 "
    "MaxCPUsPerNode=UNLIMITED Nodes=g[01-02] State=UP TotalCPUs=64 MaxMemPerNode=UNLIMITED\n"
    "PartitionName=short AllowGroups=ALL Default=NO MaxTime=04:00:00 MaxCPUsPerNode=16 "
    "Nodes=g[01-02] State=UP MaxMemPerNode=256000\n"
    "PartitionName=debug AllowGroups=ALL Default=YES MaxTime=UNLIMITED MinNodes=0 "
    "MaxCPUsPerNode=UNLIMITED Nodes=pbnode State=UP TotalCPUs=2 DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=21694M,node=1,billing=2\n"
)
SINFO = (
    "g01|32|515000|gpu:a100:4(S:0-1)|a100,ib|gpu\n"
    "g02|32|515000|gpu:a100:4(S:0-1)|a100,ib|gpu\n"
    "g01|32|515000|gpu:a100:4(S:0-1)|a100,ib|short\n"
    "g02|32|515000|gpu:a100:4(S:0-1)|a100,ib|short\n"
    "pbnode|2|21694|(null)|(null)|debug*\n"
)


def _limits_error(tmp_path, *lines, gpus=0):
    from lib.slurm import check_partition_limits, parse_partitions

    config, specs = _spec(tmp_path, *lines)
    spec = specs[0]
    if gpus:
        spec = replace(spec, train=replace(spec.train, device="auto", gpus_per_run=gpus))
    try:
        check_partition_limits(spec, config.matrix.slurm, parse_partitions(SCONTROL, SINFO))
    except SlurmError as e:
        return str(e)
    return None


def test_partition_limits_are_parsed_from_scontrol_and_sinfo():
    from lib.slurm import parse_partitions

    partitions = parse_partitions(SCONTROL, SINFO)
    assert partitions[""] is partitions["debug"]  # the default partition
    gpu = partitions["gpu"]
    assert gpu.max_minutes == 2 * 24 * 60 and gpu.max_cpus_per_node is None
    assert [(n.cpus, n.mem_mb, n.gpus) for n in gpu.nodes] == [(32, 515000, 4)] * 2
    assert gpu.nodes[0].features == {"a100", "ib"}
    assert partitions["short"].max_cpus_per_node == 16
    assert partitions["short"].max_mem_mb_per_node == 256000
    assert partitions["debug"].nodes[0].gpus == 0


@pytest.mark.parametrize(
    ("lines", "gpus", "expected"),
    [
        # The default CPUS_PER_GPU=8 on the 2-CPU default partition: pends forever.
        (
            (),
            0,
            "CONFIG_SLURM_CPUS_PER_GPU=8: a run needs 8 CPUs on one node, but the nodes of "
            "partition 'debug' have at most 2; accepted: 1..2",
        ),
        (("CONFIG_SLURM_CPUS_PER_GPU=2",), 0, None),
        (('CONFIG_SLURM_PARTITION="gpu"',), 4, None),
        (
            ('CONFIG_SLURM_PARTITION="gpu"',),
            8,
            "CONFIG_GPUS_PER_RUN=8: a run needs 8 GPUs on one node, but the nodes of "
            "partition 'gpu' have at most 4; accepted: 1..4",
        ),
        (
            ('CONFIG_SLURM_PARTITION="short"', "CONFIG_SLURM_CPUS_PER_GPU=8"),
            4,
            "CONFIG_SLURM_TIME_MINUTES=1440 is more than partition 'short' allows (MaxTime "
            "240 minutes); accepted: 5..240",
        ),
        (
            ('CONFIG_SLURM_PARTITION="short"', "CONFIG_SLURM_TIME_MINUTES=240"),
            4,
            "CONFIG_SLURM_CPUS_PER_GPU=8: a run needs 32 CPUs on one node (4 tasks, one per "
            "GPU), but the nodes of partition 'short' have at most 16; accepted: 1..4",
        ),
        (
            ('CONFIG_SLURM_PARTITION="gpu"', "CONFIG_SLURM_MEM_GB=600"),
            1,
            "CONFIG_SLURM_MEM_GB=600 is more than a node of partition 'gpu' has (502 GB); "
            "accepted: 0 (the cluster's default) or 1..502",
        ),
        (
            ('CONFIG_SLURM_PARTITION="debug"', "CONFIG_SLURM_CPUS_PER_GPU=1"),
            1,
            "CONFIG_SLURM_PARTITION='debug' has no GPUs, but the runs train on GPUs",
        ),
        (
            ('CONFIG_SLURM_PARTITION="gpu"', 'CONFIG_SLURM_CONSTRAINT="h100"'),
            1,
            "CONFIG_SLURM_CONSTRAINT='h100': no node of partition 'gpu' has this feature",
        ),
        # The first partition that can run it is enough (Slurm picks it).
        (('CONFIG_SLURM_PARTITION="short,gpu"',), 4, None),
        # A partition the cluster does not know is left to sbatch, which names it.
        (('CONFIG_SLURM_PARTITION="nope"',), 0, None),
    ],
)
def test_requests_beyond_the_partition_are_refused_naming_the_option(
    tmp_path, lines, gpus, expected
):
    error = _limits_error(tmp_path, *lines, gpus=gpus)
    if expected is None:
        assert error is None
    else:
        assert error is not None and error.startswith(expected), error
        assert "pending forever" in error and "\n" not in error


def test_slurm_time_formats():
    from lib.slurm import slurm_minutes

    assert [slurm_minutes(t) for t in ("UNLIMITED", "2-00:00:00", "04:00:00", "30:00", "45")] == [
        None,
        2880,
        240,
        30,
        45,
    ]


def test_pending_tasks_show_slurm_reason():
    from lib.slurm import pending_text

    assert pending_text("RUNNING", "None") == "RUNNING"
    assert pending_text("PENDING", "Priority") == "PENDING (Priority)"
    assert pending_text("PENDING", "PartitionConfig").startswith(
        "PENDING (PartitionConfig: asks for more than the partition allows"
    )


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("--outp=/tmp/x", "--outp abbreviates --output"),
        ("--erro=/tmp/x", "--erro abbreviates --error"),
        ("--wra=hostname", "--wra abbreviates --wrap"),
        ("--arr=0-3", "--arr abbreviates --array"),
        ("--sig=USR1@10", "--sig abbreviates --signal"),
        ("--no-requeue", "not --no-requeue: the Slurm executor requeues"),
        ("--requeue=no", "not --requeue=no"),
        ("--export=NONE", "not --export=NONE: the runs need the environment"),
        ("--expo=NONE", "--expo abbreviates --export"),
    ],
)
def test_abbreviated_and_conflicting_sbatch_options_are_refused(tmp_path, extra, named):
    with pytest.raises(ConfigError) as error:
        cfg.load(write_config(tmp_path, "demo", SLURM, f'CONFIG_SLURM_EXTRA_ARGS="{extra}"'))
    assert named in str(error.value) and "CONFIG_SLURM_EXTRA_ARGS" in str(error.value)


@pytest.mark.parametrize("extra", ["--export=ALL,OMP_NUM_THREADS=1", "--requeue", "--exclude=n7"])
def test_harmless_sbatch_options_pass(tmp_path, extra):
    config = cfg.load(write_config(tmp_path, "demo", SLURM, f'CONFIG_SLURM_EXTRA_ARGS="{extra}"'))
    assert config.matrix.slurm.extra_args == (extra,)


def test_dry_run_of_one_run_shows_the_plain_job_that_is_submitted(tmp_path, monkeypatch, capsys):
    from submitit.slurm.slurm import _make_sbatch_string

    from lib.slurm import _folder

    path = write_config(
        tmp_path,
        "demo",
        SLURM,
        f'CONFIG_RESULTS_DIR="{tmp_path / "results"}"',
        "# CONFIG_PRUNING_MAGNITUDE is not set",
        "# CONFIG_OPTIMIZER_ADAMWPRUNE is not set",
        "CONFIG_MATRIX_SEED_COUNT=1",
    )
    monkeypatch.setenv("KCONFIG_CONFIG", str(path))
    config = cfg.load(path)
    specs = cli._plan(config)
    assert len(specs) == 1
    assert cli.main(["dry-run"]) == 0
    out = capsys.readouterr().out
    assert "submits one job (a single run: no array)" in out and "job array" not in out
    shown = [line.strip() for line in out.splitlines() if line.strip().startswith("#SBATCH")]
    assert not any(line.startswith("#SBATCH --array") for line in shown)
    # What submitit writes for a single submission (SlurmExecutor._submit_command: no map_count).
    params = sbatch_parameters(config.matrix.slurm, specs[0], 1, "demo")
    script = _make_sbatch_string(
        command="x", folder=_folder(tmp_path / "results" / "demo"), **params
    )
    assert shown == [line for line in script.splitlines() if line.startswith("#SBATCH")]
