"""A real single-node Slurm cluster for the tests in this directory, started once per session
by tests/slurm/local-slurm.sh and stopped at the end (its jobs cancelled, its state removed).

Where Slurm, munge or submitit is not installed, or not as root, the tests skip with the
reason; where they are installed, the cluster must start (a failure to start fails the tests,
it does not skip them)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def local_slurm():
    """SLURM_CONF of a running local cluster; set in os.environ for the session, so the
    commands the tests start (and the jobs they submit) reach it."""
    reason = why_not_runnable()
    if reason:
        pytest.skip(reason)
    # Not under pytest's basetemp: other pytest sessions on the machine prune old basetemps,
    # and a cluster must not lose its state (or munge its socket) while it runs.
    state = Path(tempfile.mkdtemp(prefix="prunebench-slurm-"))
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
        stopped = subprocess.run(
            [str(SCRIPT), "stop", str(state)], capture_output=True, text=True, timeout=120
        )
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        assert stopped.returncode == 0, stopped.stderr
