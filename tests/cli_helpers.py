"""Running the project's command-line entry points as a user would, from the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, config: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m <args>` in the repository with `config` as its .config, one thread each."""
    env = {**os.environ, "KCONFIG_CONFIG": str(config), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
