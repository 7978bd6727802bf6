"""The wheels `make gpu-check` needs on a bare GPU machine, collected here and installed there.

    python benchmarks/gpu_wheels.py collect [--wheelhouse wheelhouse]    # make gpu-wheels
    python benchmarks/gpu_wheels.py install [--wheelhouse wheelhouse] [--target build/gpu-site]
    python benchmarks/gpu_wheels.py plan                                # the commands, not run

A GPU machine lent for minutes has torch and torchvision preinstalled (with numpy and Pillow,
which torchvision needs) and no package registry. Everything else the check imports is
collected on a machine that has the registry, into the git-ignored `wheelhouse/`, which is
carried to the GPU machine with the checkout:

- the project itself, as a wheel built from this checkout (no registry needed there to build it);
- kconfiglib and pytest (with pytest's own dependencies), pinned to the versions installed in
  this checkout's environment, so the GPU machine tests with what was tested here. All are
  pure-Python wheels, so the GPU machine's Python version does not matter, with one catch: pip
  evaluates dependency markers for the Python that runs it, so pytest's backports for Python
  3.10 (exceptiongroup, tomli, and typing-extensions for exceptiongroup) are named outright.
  `--platform any` keeps every wheel pure Python (tomli also ships compiled ones).

`install` puts them into a target folder (PYTHONPATH, not a virtual environment: a bare
machine's Python may lack the venv module) with `pip --no-index --find-links wheelhouse`: the
registry is never asked. Only the project's runtime pieces the check uses are installed, not
its plotting and demo dependencies (matplotlib, mlxtend), which the check does not import.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WHEELHOUSE = "wheelhouse"
DEFAULT_TARGET = "build/gpu-site"
# What the check imports beyond torch, torchvision, numpy and Pillow; pinned at collection time.
REQUIREMENTS = ("kconfiglib", "pytest")
# pytest's dependencies on Python 3.10 only (markers pip would evaluate for its own Python).
BACKPORTS = ("exceptiongroup", "tomli", "typing-extensions")
PROJECT = "prunebench"

EXIT_OK = 0
EXIT_SETUP = 2  # the same status gpu_check.py gives a machine it cannot set up


def pinned(name: str) -> str:
    """`name==<version installed here>`, or the bare name where it is not installed."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def project_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("pyproject.toml has no version line")


def collect_plan(wheelhouse: Path, python: str = sys.executable) -> list[list[str]]:
    """The pip commands that fill `wheelhouse` (run in order on a machine with the registry)."""
    pip = [python, "-m", "pip"]
    commands = [
        # Built in isolation: pip fetches the build backend (setuptools, wheel) it needs.
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheelhouse), str(ROOT)],
    ]
    # --platform any: pure-Python wheels only, whatever the GPU machine's Python and CPU.
    download = [
        *pip,
        "download",
        "--only-binary=:all:",
        "--platform",
        "any",
        "--dest",
        str(wheelhouse),
    ]
    requirements = [pinned(name) for name in REQUIREMENTS]
    commands.append([*download, *requirements])
    commands.append([*download, "--python-version", "3.10", *BACKPORTS])
    return commands


def install_plan(wheelhouse: Path, target: Path, python: str = sys.executable) -> list[list[str]]:
    """The pip commands that install the check's wheels from `wheelhouse` only into `target`."""
    offline = [
        python,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        "--target",
        str(target),
        "--upgrade",
        "--quiet",
        "--disable-pip-version-check",
    ]
    return [
        # Its runtime dependencies beyond torch are the ones below or not used by the check.
        [*offline, "--no-deps", f"{PROJECT}=={project_version()}"],
        [*offline, *pinned_from_wheelhouse(wheelhouse)],
    ]


def pinned_from_wheelhouse(wheelhouse: Path) -> list[str]:
    """REQUIREMENTS pinned to the version collected in `wheelhouse` (the GPU machine has no
    environment of this checkout to read the pins from); unpinned where none is there."""
    found = []
    for name in REQUIREMENTS:
        versions = sorted(
            {w.name.split("-")[1] for w in wheelhouse.glob(f"{name}-*.whl")},
            key=lambda v: [int(x) if x.isdigit() else x for x in v.split(".")],
        )
        found.append(f"{name}=={versions[-1]}" if versions else name)
    return found


def missing_wheels(wheelhouse: Path) -> list[str]:
    """The wheels `install` needs that are not in `wheelhouse`."""
    names = [PROJECT, *REQUIREMENTS]
    return [n for n in names if not any(wheelhouse.glob(f"{n}-*.whl"))]


def run(commands: list[list[str]]) -> int:
    for command in commands:
        result = subprocess.run(command, cwd=ROOT)
        if result.returncode != 0:
            print(f"gpu-wheels: failed ({result.returncode}): {' '.join(command)}", flush=True)
            return result.returncode
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("collect", "install", "plan"))
    parser.add_argument("--wheelhouse", default=DEFAULT_WHEELHOUSE, type=Path)
    parser.add_argument("--target", default=DEFAULT_TARGET, type=Path)
    args = parser.parse_args(argv)
    wheelhouse = args.wheelhouse if args.wheelhouse.is_absolute() else ROOT / args.wheelhouse
    target = args.target if args.target.is_absolute() else ROOT / args.target
    if args.action == "plan":
        for command in collect_plan(wheelhouse):
            print("collect:", " ".join(command))
        for command in install_plan(wheelhouse, target):
            print("install:", " ".join(command))
        return EXIT_OK
    if args.action == "collect":
        wheelhouse.mkdir(parents=True, exist_ok=True)
        status = run(collect_plan(wheelhouse))
        if status == EXIT_OK:
            wheels = sorted(w.name for w in wheelhouse.glob("*.whl"))
            size = sum(w.stat().st_size for w in wheelhouse.glob("*.whl"))
            print(
                f"gpu-wheels: {len(wheels)} wheels, {size / 2**20:.1f} MiB in {wheelhouse}; "
                "carry it with the checkout and run make gpu-check there",
                flush=True,
            )
        return status
    missing = missing_wheels(wheelhouse)
    if missing:
        what = (
            f"{wheelhouse} not found"
            if not wheelhouse.is_dir()
            else f"no wheel for {', '.join(missing)} in {wheelhouse}"
        )
        print(
            f"gpu-check: {what}; run make gpu-wheels where the package registry is reachable "
            "and carry wheelhouse/ here",
            flush=True,
        )
        return EXIT_SETUP
    return run(install_plan(wheelhouse, target))


if __name__ == "__main__":
    sys.exit(main())
