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
@pytest.mark.parametrize(
    "command", ["check-config", "dry-run", "test-matrix", "olddefconfig", "menuconfig"]
)
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
    "command",
    [
        "check-config",
        "dry-run",
        "test-matrix",
        "olddefconfig",
        "savedefconfig",
        "menuconfig",
        "oldconfig",
    ],
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
    from scripts.report.cli import main as report_main

    assert report_main([]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("report: error: ") and str(path) in line


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


# ---------------------------------------------------------------------------------------------
# A damaged checkpoint_last.pt

TRAINER = [sys.executable, "-m", "lib.train"]


def run_real(specs, matrix_dir, child_cmd=None, **kwargs) -> tuple[int, str]:
    """The runner with the real trainer (or `child_cmd`) as its children."""
    from test_runner import run

    return run(specs, matrix_dir, child_cmd=child_cmd or TRAINER, **kwargs)


def quick_spec(tiny_spec, tmp_path, seed=0, **overrides):
    """One epoch of one step: the cheapest real run."""
    return tiny_spec(
        tmp_path,
        seed=seed,
        matrix="m",
        train={"epochs": 1, "max_steps_per_epoch": 1, "checkpoint": True},
        **overrides,
    )


def finished_run(spec, run_dir: Path) -> dict[str, tuple[int, int]]:
    """A run directory as a finished run leaves it; returns its files' stamps."""
    from lib.metrics import STATUS_COMPLETED, atomic_write_json, build_document

    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(spec.to_json())
    epoch = {
        "epoch": 1,
        "train_loss": 1.0,
        "train_top1": 50.0,
        "test_loss": 1.0,
        "test_top1": 50.0,
        "test_top5": 90.0,
        "sparsity": 0.0,
        "epoch_seconds": 1.0,
    }
    doc = build_document(spec, [epoch], status=STATUS_COMPLETED)
    atomic_write_json(run_dir / "metrics.json", doc)
    (run_dir / "checkpoint_last.pt").write_bytes(b"finished")
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.iterdir()}


def stamps(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.iterdir()}


def test_a_damaged_checkpoint_is_recorded_set_aside_and_restartable(tiny_spec, tmp_path):
    from lib.metrics import (
        STATUS_COMPLETED,
        STATUS_FAILED,
        STATUS_RUNNING,
        atomic_write_json,
        build_document,
        read_metrics,
    )

    matrix_dir = tmp_path / "m"
    done = quick_spec(tiny_spec, tmp_path, seed=1)
    done_stamps = finished_run(done, matrix_dir / done.run_id)
    spec = quick_spec(tiny_spec, tmp_path, seed=0)
    run_dir = matrix_dir / spec.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(spec.to_json())
    atomic_write_json(run_dir / "metrics.json", build_document(spec, [], status=STATUS_RUNNING))
    torn = b"PK\x03\x04" + bytes(range(256)) * 4
    (run_dir / "checkpoint_last.pt").write_bytes(torn)

    rc, out = run_real([spec, done], matrix_dir)
    assert rc == 1, out
    doc = read_metrics(run_dir / "metrics.json")
    assert doc["summary"]["status"] == STATUS_FAILED
    error = doc["summary"]["error"]
    assert "\n" not in error and len(error) < 400, error
    assert str(run_dir / "checkpoint_last.pt") in error and "damaged" in error
    assert "make continue MATRIX=m RERUN_FAILED=1" in error and "epoch 1" in error
    aside = list(run_dir.glob("checkpoint_last.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == torn  # kept, as evidence
    assert aside[0].name in error
    assert not (run_dir / "checkpoint_last.pt").exists()
    assert "failed finding central directory" in error  # torch's first sentence ...
    assert "internal miniz error" not in out + error  # ... without its paragraph of advice

    # The next test-matrix does not relaunch it (the failure is recorded) ...
    rc, out = run_real([spec, done], matrix_dir)
    assert rc == 1 and "0 to run" in out, out
    # ... and the command the error names restarts it from epoch 1.
    rc, out = run_real([spec, done], matrix_dir, rerun_failed=True)
    assert rc == 0, out
    doc = read_metrics(run_dir / "metrics.json")
    assert doc["summary"]["status"] == STATUS_COMPLETED and len(doc["epochs"]) == 1
    assert stamps(matrix_dir / done.run_id) == done_stamps  # the finished run: untouched


# ---------------------------------------------------------------------------------------------
# A full disk
#
# Where the tests may mount (root, as in CI), the results live on a real 3 MB tmpfs: the
# kernel itself answers ENOSPC (the failed temporary checkpoint is removed, so metrics.json
# can still record the failure). Elsewhere the trainer child runs with a byte budget on every
# file lib.atomic writes, which raises the same OSError(ENOSPC) at the same place and never
# gives the space back: the disk another process filled, where not even metrics.json can be
# written and the runner records the failure (`pytest -s` shows which was used).


class FullDisk:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounted = False
        self.budget_file = root.parent / "disk-budget"

    def __enter__(self) -> FullDisk:
        self.root.mkdir(parents=True)
        if os.geteuid() == 0:
            res = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(self.root)],
                capture_output=True,
            )
            self.mounted = res.returncode == 0
        if not self.mounted:
            self.budget_file.write_text(str(3 * 2**20))
        print(f"full disk: {'tmpfs of 3 MB' if self.mounted else 'ENOSPC injected in lib.atomic'}")
        return self

    @property
    def child_cmd(self) -> list[str]:
        if self.mounted:
            return TRAINER
        return [sys.executable, __file__, "--disk-budget", str(self.budget_file)]

    def free_space(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,size=400m", str(self.root)], check=True)
        else:
            self.budget_file.write_text(str(2**40))

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=False)


def test_atomic_writes_on_a_full_disk_say_so_and_keep_the_old_file(tmp_path):
    import torch

    from lib.atomic import StorageError, atomic_torch_save

    with FullDisk(tmp_path / "disk") as disk:
        if not disk.mounted:
            pytest.skip("covered through the trainer with injected ENOSPC (mount not permitted)")
        path = disk.root / "checkpoint_last.pt"
        atomic_torch_save({"w": torch.zeros(10)}, path)
        before = path.read_bytes()
        with pytest.raises(StorageError) as e:
            atomic_torch_save({"w": torch.zeros(2_000_000)}, path)  # 8 MB
        assert str(e.value) == f"no space left on device while writing {path}"
        assert path.read_bytes() == before
        assert [p.name for p in disk.root.iterdir()] == ["checkpoint_last.pt"]  # no temp left


def test_a_full_disk_is_an_environment_failure_that_continue_resumes(tiny_spec, tmp_path):
    from lib.metrics import STATUS_COMPLETED, STATUS_FAILED, read_metrics

    with FullDisk(tmp_path / "disk") as disk:
        matrix_dir = disk.root / "m"
        done = quick_spec(tiny_spec, tmp_path, seed=1)
        done_stamps = finished_run(done, matrix_dir / done.run_id)
        first, queued = (quick_spec(tiny_spec, tmp_path, seed=s) for s in (0, 2))
        specs = [done, first, queued]

        rc, out = run_real(specs, matrix_dir, child_cmd=disk.child_cmd)
        assert rc == 1, out
        run_dir = matrix_dir / first.run_id
        doc = read_metrics(run_dir / "metrics.json")
        summary = doc["summary"]
        assert summary["status"] == STATUS_FAILED
        assert summary["environment_failure"] is True
        assert summary["error"].startswith("no space left on device while writing ")
        assert str(run_dir / "checkpoint_") in summary["error"]
        assert "enforce fail" not in out + summary["error"]
        # The epoch whose checkpoint could not be written is not recorded (docs/metrics.md).
        assert doc["epochs"] == [] and summary["epochs_completed"] == 0
        # The queued run was not started into a full disk; the finished one was not touched.
        assert "no space left on device" in out and "make continue" in out
        assert not (matrix_dir / queued.run_id / "metrics.json").exists()
        assert stamps(matrix_dir / done.run_id) == done_stamps
        assert "RERUN_FAILED" not in out

        disk.free_space()
        # no rerun_failed; two at a time (the fake disk is shared, the runs are not)
        rc, out = run_real(specs, matrix_dir, child_cmd=disk.child_cmd, jobs=2)
        assert rc == 0, out
        for spec in (first, queued):
            doc = read_metrics(matrix_dir / spec.run_id / "metrics.json")
            assert doc["summary"]["status"] == STATUS_COMPLETED
            assert doc["summary"]["environment_failure"] is False
        assert stamps(matrix_dir / done.run_id) == done_stamps


def _trainer_with_a_disk_budget(budget_file: str, run_json: str) -> int:
    """The trainer, with every file lib.atomic writes counted against a byte budget: past it,
    write() raises OSError(ENOSPC) as a full disk does."""
    import errno

    import lib.atomic
    from lib.train import main

    budget = [int(Path(budget_file).read_text())]
    real_fdopen = os.fdopen

    class Budgeted:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            budget[0] -= len(data)
            if budget[0] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    lib.atomic.os.fdopen = lambda *a, **k: Budgeted(real_fdopen(*a, **k))
    return main([run_json])


if __name__ == "__main__" and sys.argv[1:2] == ["--disk-budget"]:
    sys.exit(_trainer_with_a_disk_budget(sys.argv[2], sys.argv[3]))


def test_the_dry_run_shows_a_disk_failed_run_as_resumable(tiny_spec, tmp_path):
    from lib.metrics import STATUS_FAILED, atomic_write_json, build_document
    from lib.runner import STATE_FAILED, STATE_RESUMABLE, plan_state

    spec = quick_spec(tiny_spec, tmp_path)
    run_dir = tmp_path / "results" / "m" / spec.run_id
    run_dir.mkdir(parents=True)
    error = f"no space left on device while writing {run_dir}/checkpoint_last.pt"
    doc = build_document(spec, [], status=STATUS_FAILED, error=error, environment_failure=True)
    atomic_write_json(run_dir / "metrics.json", doc)
    assert plan_state(spec, run_dir) == (STATE_RESUMABLE, 0)
    doc = build_document(spec, [], status=STATUS_FAILED, error="loss is nan")
    atomic_write_json(run_dir / "metrics.json", doc)
    assert plan_state(spec, run_dir) == (STATE_FAILED, 0)
