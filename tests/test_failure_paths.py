"""Failure paths an operator meets: damaged or misplaced configuration files, settings that
would be accepted silently, a damaged checkpoint, a full disk. Each ends with one line that
names the problem and what to do, a non-zero exit, and nothing finished touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib import config as cfg
from lib.cli import main as cli_main
from lib.config import ConfigError

ROOT = cfg.ROOT


def write_config(tmp_path: Path, *extra: str, defconfig: str = "demo") -> Path:
    path = tmp_path / ".config"
    text = (cfg.DEFCONFIG_DIR / defconfig).read_text()
    path.write_text(text + "".join(line + "\n" for line in extra))
    return path


def run_cli(monkeypatch, capsys, config_path, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("KCONFIG_CONFIG", str(config_path))
    rc = cli_main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Configuration files that are not configuration files


@pytest.mark.parametrize(
    "content",
    [b"\x00\x01\x02\xff\xfe\x89PNG\r\n", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\xc3\x28"],
    ids=["binary", "elf"],
)
@pytest.mark.parametrize("command", ["check-config", "dry-run", "test-matrix", "olddefconfig"])
def test_a_binary_config_is_one_line(tmp_path, monkeypatch, capsys, content, command):
    path = tmp_path / ".config"
    path.write_bytes(content)
    rc, _, err = run_cli(monkeypatch, capsys, path, command)
    line = one_error_line(err)
    assert rc != 0
    assert str(path) in line and "not a Kconfig configuration" in line
    assert "make defconfig-NAME" in line
    assert path.read_bytes() == content  # not rewritten, not renamed


def test_a_text_config_that_is_not_kconfig_is_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / ".config"
    path.write_text("hello, this is my shopping list\n")
    rc, _, err = run_cli(monkeypatch, capsys, path, "check-config")
    assert rc != 0
    assert "malformed line 'hello, this is my shopping list'" in one_error_line(err)


@pytest.mark.parametrize(
    "command", ["check-config", "dry-run", "test-matrix", "olddefconfig", "savedefconfig"]
)
def test_a_config_that_is_a_directory_is_one_line(tmp_path, monkeypatch, capsys, command):
    path = tmp_path / ".config"
    path.mkdir()
    (path / "keep").write_text("mine")
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(monkeypatch, capsys, path, command)
    line = one_error_line(err)
    assert rc != 0
    assert f"{path} is a directory" in line and "KCONFIG_CONFIG" in line
    assert (path / "keep").read_text() == "mine"  # kconfiglib would have renamed it to .old
    assert not (tmp_path / ".config.old").exists()


def test_defconfig_into_a_directory_leaves_the_directory_alone(tmp_path, monkeypatch, capsys):
    target = tmp_path / "configs"
    target.mkdir()
    (target / "keep").write_text("mine")
    rc, _, err = run_cli(monkeypatch, capsys, target, "defconfig", "demo")
    line = one_error_line(err)
    assert rc != 0
    assert f"{target} is a directory" in line
    assert (target / "keep").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


def test_defconfig_with_kconfig_config_in_a_missing_directory(tmp_path, monkeypatch, capsys):
    target = tmp_path / "nowhere" / ".config"
    rc, _, err = run_cli(monkeypatch, capsys, target, "defconfig", "demo")
    line = one_error_line(err)
    assert rc != 0
    assert str(target) in line and f"directory {tmp_path / 'nowhere'} does not exist" in line


def test_savedefconfig_to_a_missing_directory_through_make(tmp_path):
    config = write_config(tmp_path)
    out = tmp_path / "nowhere" / "defconfig"
    res = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            f"PY={sys.executable}",
            "SETUP_STAMP=",
            "savedefconfig",
            f"DEFCONFIG_OUT={out}",
        ],
        cwd=ROOT,
        env={**os.environ, "KCONFIG_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("make")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"directory {tmp_path / 'nowhere'} does not exist" in lines[0]


def test_savedefconfig_to_a_directory(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    rc, _, err = run_cli(monkeypatch, capsys, config, "savedefconfig", "--output", str(tmp_path))
    assert rc != 0
    assert f"{tmp_path} is a directory" in one_error_line(err)


def test_continue_and_report_with_a_binary_config_say_so(tmp_path, monkeypatch, capsys):
    path = tmp_path / ".config"
    path.write_bytes(b"\xff\xfe\x00garbage")
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(monkeypatch, capsys, path, "continue")
    assert rc != 0
    assert "not a Kconfig configuration" in one_error_line(err)
    with pytest.raises(ConfigError, match="not a Kconfig configuration"):
        cfg.results_dir_setting(path)


# ---------------------------------------------------------------------------------------------
# Settings that would be accepted silently


def test_an_unknown_symbol_in_a_hand_edited_config_is_named(tmp_path):
    path = write_config(tmp_path, "CONFIG_SPARSITY_7O=y")
    with pytest.raises(ConfigError) as e:
        cfg.load(path)
    message = str(e.value)
    assert "\n" not in message
    assert "CONFIG_SPARSITY_7O" in message and "not an option" in message


def test_an_unknown_unset_line_is_named_too(tmp_path):
    # "# CONFIG_X is not set" with a misspelt X asked to turn something off: that is lost too.
    path = write_config(tmp_path, "# CONFIG_PRUNNG_MAGNITUDE is not set")
    with pytest.raises(ConfigError, match="CONFIG_PRUNNG_MAGNITUDE"):
        cfg.load(path)


def test_olddefconfig_drops_an_unknown_symbol_with_a_notice(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path, "CONFIG_REMOVED_LONG_AGO=7")
    rc, _, err = run_cli(monkeypatch, capsys, path, "olddefconfig")
    assert rc == 0
    assert "note:" in err and "CONFIG_REMOVED_LONG_AGO" in err and "dropped" in err
    assert "REMOVED_LONG_AGO" not in path.read_text()
    cfg.load(path)  # clean now


def test_a_snapshot_from_an_older_version_still_loads(tmp_path):
    # matrix.json's snapshot may name a symbol a later version removed: `make continue` must
    # still resume it (each run's identity is checked separately).
    config = cfg.load(write_config(tmp_path))
    snapshot = {**config.symbol_dict(), "CONFIG_REMOVED_LONG_AGO": "y"}
    assert cfg.load_snapshot(snapshot, "matrix.json") == config


@pytest.mark.parametrize(
    ("lines", "symbol"),
    [
        (['CONFIG_SPARSITY_CUSTOM="0.6,0.85,0.6"'], "CONFIG_SPARSITY_CUSTOM"),
        (['CONFIG_SPARSITY_CUSTOM="0.6,0.60"'], "CONFIG_SPARSITY_CUSTOM"),
        (['CONFIG_MATRIX_GPUS="0,1,0"'], "CONFIG_MATRIX_GPUS"),
    ],
    ids=["custom-twice", "custom-0.60", "gpu-twice"],
)
def test_a_repeated_level_or_gpu_is_an_error_naming_it(tmp_path, lines, symbol):
    path = write_config(tmp_path, *lines, "CONFIG_PRUNING_MAGNITUDE=y")
    with pytest.raises(ConfigError) as e:
        cfg.load(path)
    message = str(e.value)
    assert symbol in message and "repeat" in message, message


def test_distinct_levels_and_gpus_are_still_accepted(tmp_path):
    path = write_config(
        tmp_path,
        "CONFIG_PRUNING_MAGNITUDE=y",
        "CONFIG_SPARSITY_50=y",
        'CONFIG_SPARSITY_CUSTOM="0.6,0.85,0.5"',  # 0.5 is also a preset: the same level
        'CONFIG_MATRIX_GPUS="0,1,2"',
    )
    config = cfg.load(path)
    assert {0.5, 0.6, 0.85} <= set(config.sparsities)
    assert len(set(config.sparsities)) == len(config.sparsities)
    assert config.matrix.gpus == ("0", "1", "2")
