"""What a run ran on: library versions, device, git commit (metrics.json `environment`)."""

from __future__ import annotations

import datetime
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch
import torchvision

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """The checked-out commit of the framework (with `-dirty` when files differ), or None."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if status else commit


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def capture_environment(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model_name(),
        "cpu_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
        "started_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
