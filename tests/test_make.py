"""The Makefile as users meet it: help, defconfigs, savedefconfig, errors, generated docs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lib import config as cfg
from lib.cli import defconfig_names
from lib.kconfig_docs import render

ROOT = cfg.ROOT


def make(
    *args: str, config_path=None, check=False, env=None, py=sys.executable
) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    if config_path is not None:
        env["KCONFIG_CONFIG"] = str(config_path)
    # The stamp exists once `make setup` ran; tests use the interpreter running them (`py`).
    return subprocess.run(
        ["make", "--no-print-directory", "-s", f"PY={py}", "SETUP_STAMP=", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def test_help_lists_every_target_and_defconfig():
    out = make("help", check=True).stdout
    for target in (
        "demo",
        "check",
        "menuconfig",
        "defconfig",
        "oldconfig",
        "olddefconfig",
        "savedefconfig",
        "list-defconfigs",
        "test-matrix",
        "test-matrix-dry-run",
        "continue",
        "status",
        "report",
        "setup",
        "bench",
        "gpu-wheels",
        "gpu-check",
        "docs",
        "clean",
        "mrproper",
    ):
        assert f"  {target} " in out, target
    for name in defconfig_names():
        assert f"defconfig-{name}" in out


def test_defconfig_targets_are_explicit_for_tab_completion():
    # bash-completion lists the targets of make's database; pattern rules do not show there.
    db = subprocess.run(
        ["make", "-qp"], cwd=ROOT, capture_output=True, text=True, timeout=60
    ).stdout
    targets = {line.split(":")[0] for line in db.splitlines() if line.startswith("defconfig-")}
    assert {f"defconfig-{n}" for n in defconfig_names()} <= targets


def test_make_defconfig_then_savedefconfig_reproduces_it(tmp_path):
    config = tmp_path / ".config"
    out = tmp_path / "defconfig"
    res = make("defconfig-resnet50-adamwprune", config_path=config)
    assert res.returncode == 0, res.stderr
    res = make("savedefconfig", f"DEFCONFIG_OUT={out}", config_path=config)
    assert res.returncode == 0, res.stderr
    assert out.read_text() == (cfg.DEFCONFIG_DIR / "resnet50-adamwprune").read_text()


def test_plain_defconfig_applies_the_demo(tmp_path):
    config = tmp_path / ".config"
    assert make("defconfig", config_path=config).returncode == 0
    assert cfg.load(config).matrix.name == "demo"


def test_unknown_defconfig_is_one_clear_line(tmp_path):
    config = tmp_path / ".config"
    config.write_text("CONFIG_TRAIN_EPOCHS=3\n")
    res = make("defconfig-nonexistent", config_path=config)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("error: unknown defconfig 'nonexistent'; available: demo")
    assert config.read_text() == "CONFIG_TRAIN_EPOCHS=3\n"  # the old .config is untouched


@pytest.mark.parametrize("target", ["test-matrix", "test-matrix-dry-run", "savedefconfig"])
def test_targets_needing_a_config_say_so_when_it_is_missing(tmp_path, target):
    res = make(target, config_path=tmp_path / ".config")
    assert res.returncode != 0
    assert "is missing: run make defconfig-NAME" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2  # our line (+ make's own "Error" line)


@pytest.mark.parametrize("names", ["demo", "a b c"])
def test_compare_needs_exactly_two_names(names):
    res = make("report", f"COMPARE={names}")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f'*** COMPARE="{names}": give two matrix names, e.g. make report COMPARE=' in lines[0]


def test_menuconfig_refuses_a_pipe(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "lib.cli", "menuconfig"],
        cwd=ROOT,
        env={**os.environ, "KCONFIG_CONFIG": str(tmp_path / ".config")},
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "needs an interactive terminal" in res.stderr


def test_check_config_reports_the_plan(tmp_path):
    config = tmp_path / ".config"
    make("defconfig-demo", config_path=config, check=True)
    res = make("check-config", config_path=config)
    assert res.returncode == 0, res.stderr
    assert "24 runs planned for matrix 'demo'" in res.stdout


def test_kconfig_reference_is_not_stale():
    committed = (ROOT / "docs" / "kconfig.md").read_text()
    assert committed == render(cfg.load_kconfig()), "docs/kconfig.md is stale: run make docs"


# Stands in for the interpreter: `-m lib.cli test-matrix|continue` waits for a signal and
# records it; anything else succeeds at once.
FAKE_PYTHON = """#!{python}
import os, signal, sys, time
log = os.environ["FAKE_LOG"]
if sys.argv[1:3] != ["-m", "lib.cli"] or not ({{"test-matrix", "continue"}} & set(sys.argv)):
    sys.exit(0)
def stop(signum, frame):
    with open(log, "a") as f:
        f.write(f"signal {{signum}}\\n")
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
with open(log, "a") as f:
    f.write("started\\n")
time.sleep(60)
"""


@pytest.mark.parametrize("target", ["test-matrix", "continue", "demo"])
def test_sigterm_to_make_reaches_the_runner(tmp_path, target):
    """`kill <pid of make>` (a scheduler, a supervisor, a user) must stop the runner too, not
    only make: make passes SIGTERM to its child, so the runner must be that child, not a
    shell around it."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "log"
    config = tmp_path / ".config"
    config.write_text("")
    env = {**os.environ, "FAKE_LOG": str(log), "KCONFIG_CONFIG": str(config)}
    process = subprocess.Popen(
        ["make", "--no-print-directory", "-s", f"PY={fake}", "SETUP_STAMP=", target],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and "started" in log.read_text()):
            assert process.poll() is None, f"make {target} ended before the runner started"
            assert time.monotonic() < deadline, "the runner did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while "signal" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert log.read_text().splitlines() == ["started", f"signal {int(signal.SIGTERM)}"]


# ---------------------------------------------------------------------------------------------
# Values users give make: quoted, refused, or ignored; never shell or make text (issue #25)

ARGV_PYTHON = """#!{python}
import json, os, sys
with open(os.environ["ARGV_LOG"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "config": os.environ.get("KCONFIG_CONFIG")}}) + "\\n")
"""


def _clean_make_env(tmp_path, **extra) -> dict:
    """An environment as a user's shell has it: no MAKEFLAGS/MAKELEVEL of a `make check` above."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return {**env, "KCONFIG_CONFIG": str(tmp_path / ".config"), **extra}


def _logged_make(tmp_path, *args, env=None):
    fake = tmp_path / "python"
    fake.write_text(ARGV_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "argv.log"
    log.unlink(missing_ok=True)
    res = subprocess.run(
        ["make", "--no-print-directory", "-s", f"PY={fake}", "SETUP_STAMP=", *args],
        cwd=tmp_path,
        env=_clean_make_env(tmp_path, ARGV_LOG=str(log), **(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return res, calls


@pytest.fixture
def makefile_here(tmp_path):
    """Run make in tmp_path on the project's Makefile, so a command that escaped its quotes
    would leave its file there."""
    (tmp_path / "Makefile").symlink_to(ROOT / "Makefile")
    (tmp_path / "defconfigs").symlink_to(ROOT / "defconfigs")
    (tmp_path / "pyproject.toml").symlink_to(ROOT / "pyproject.toml")
    return tmp_path


def test_user_values_reach_the_cli_as_one_quoted_argument(makefile_here):
    tmp = makefile_here
    sneaky = "a b';touch pwned1;'"
    res, calls = _logged_make(tmp, "savedefconfig", f"DEFCONFIG_OUT={sneaky}")
    assert res.returncode == 0, res.stderr
    assert calls[0]["argv"] == ["-m", "lib.cli", "savedefconfig", "--output", sneaky]
    goal = "defconfig-$(shell touch pwned2)x`touch pwned3`"
    res, calls = _logged_make(tmp, goal)
    assert res.returncode == 0, res.stderr
    assert calls[0]["argv"] == ["-m", "lib.cli", "defconfig", goal[len("defconfig-") :]]
    res, calls = _logged_make(tmp, "demo", "DEMO_CONFIG=x y;touch pwned4")
    assert res.returncode == 0, res.stderr
    assert [c["config"] for c in calls[:2]] == ["x y;touch pwned4"] * 2
    res, calls = _logged_make(tmp, "status", "MATRIX=m $$HOME `touch pwned5`")
    assert calls[0]["argv"][-2:] == ["--matrix", "m $$HOME `touch pwned5`"]
    assert not list(tmp.glob("pwned*"))


@pytest.mark.parametrize(
    "args",
    [
        ("-i", "status", "MATRIX=a\ntouch pwned #"),
        ("continue", "RERUN_FAILED=1\ntouch pwned"),
        ("savedefconfig", "DEFCONFIG_OUT=x\ntouch pwned"),
        ("-i", "defconfig-a\ntouch pwned"),
    ],
)
def test_a_newline_in_a_value_is_refused_in_one_line(makefile_here, args):
    res, calls = _logged_make(makefile_here, *args)
    assert res.returncode != 0
    assert calls == []
    assert not (makefile_here / "pwned").exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "newline" in lines[0]


def test_make_text_in_python_paths_is_refused_and_paths_are_quoted(makefile_here):
    res = subprocess.run(
        ["make", "-n", "setup", "PYTHON=$(shell touch pwned)python3"],
        cwd=makefile_here,
        env=_clean_make_env(makefile_here),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert "PYTHON=$(shell touch pwned)python3 contains '$'" in res.stderr
    assert not (makefile_here / "pwned").exists()
    res = subprocess.run(
        ["make", "-n", "-B", "setup", "PYTHON=my python;touch pwned", "VENV=v"],
        cwd=makefile_here,
        env=_clean_make_env(makefile_here),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "'my python;touch pwned' -m venv --system-site-packages 'v'" in res.stdout
    res = subprocess.run(
        ["make", "-s", "help", 'VENV=v"`touch pwned`'],
        cwd=makefile_here,
        env=_clean_make_env(makefile_here),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert 'create v"`touch pwned` and install' in res.stdout
    assert not (makefile_here / "pwned").exists()


def test_variables_from_makeflags_in_the_environment_are_ignored(makefile_here):
    res, calls = _logged_make(makefile_here, "status", env={"MAKEFLAGS": "MATRIX=fromenv"})
    assert res.returncode == 0, res.stderr
    assert calls[0]["argv"] == ["-m", "lib.cli", "status"]
    assert "note: MATRIX in the environment is ignored" in res.stdout
    res, calls = _logged_make(makefile_here, "status", "MATRIX=mine")
    assert calls[0]["argv"] == ["-m", "lib.cli", "status", "--matrix", "mine"]


def _mrproper_plan(tmp_path, *args, env=None):
    """What make mrproper would run (-n: nothing is removed)."""
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "mrproper", *args],
        cwd=ROOT,
        env=_clean_make_env(tmp_path, **(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("value", ["0", "no", "", "n", "off"])
def test_mrproper_keeps_results_and_data_unless_told_yes(tmp_path, value):
    res = _mrproper_plan(tmp_path, f"REMOVE_RESULTS={value}", f"REMOVE_DATA={value}")
    assert res.returncode == 0, res.stderr
    assert "-delete" not in res.stdout and "rm -rf data" not in res.stdout
    assert "results/ kept" in res.stdout and "data/ kept" in res.stdout


@pytest.mark.parametrize("value", ["1", "yes", "y"])
def test_mrproper_removes_results_on_an_explicit_yes(tmp_path, value):
    res = _mrproper_plan(tmp_path, f"REMOVE_RESULTS={value}")
    assert res.returncode == 0, res.stderr
    assert "find results -mindepth 1 -not -name README.md -delete" in res.stdout
    assert "rm -rf data" not in res.stdout and "data/ kept" in res.stdout


def test_mrproper_ignores_the_environment_and_refuses_unclear_values(tmp_path):
    for env in ({"REMOVE_RESULTS": "1"}, {"MAKEFLAGS": "REMOVE_RESULTS=1"}):
        res = _mrproper_plan(tmp_path, env=env)
        assert res.returncode == 0, res.stderr
        assert "-delete" not in res.stdout and "results/ kept" in res.stdout
        assert "note: REMOVE_RESULTS in the environment is ignored" in res.stdout
    res = _mrproper_plan(tmp_path, "REMOVE_RESULTS=maybe")
    assert res.returncode != 0
    assert res.stdout == ""  # refused before clean, before anything
    assert 'REMOVE_RESULTS="maybe" is neither yes nor no; accepted: 1/y/yes/true/on removes' in (
        res.stderr
    )
    assert len(res.stderr.strip().splitlines()) == 1
