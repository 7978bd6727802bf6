"""`make menuconfig` driven in a real pseudo-terminal: open, change a sparsity level, save,
quit, and check that .config changed accordingly. The screen is rendered with a VT100
emulator (pyte) so the test waits on what a user would see, not on timing."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pexpect
import pyte
import pytest

from lib import config as cfg

ROOT = cfg.ROOT
COLS, ROWS = 120, 40


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str]):
        self.child = pexpect.spawn(
            argv[0],
            argv[1:],
            env=env,
            cwd=str(ROOT),
            dimensions=(ROWS, COLS),
            encoding="utf-8",
            timeout=30,
        )
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.Stream(self.screen)

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=0.2))
            except pexpect.TIMEOUT:
                pass
            if text in self.text():
                return
        raise AssertionError(f"{text!r} never appeared; screen:\n{self.text()}")

    def send(self, keys: str) -> None:
        self.child.send(keys)


@pytest.fixture
def demo_config(tmp_path):
    path = tmp_path / ".config"
    subprocess.run(
        [sys.executable, "-m", "lib.cli", "defconfig", "demo"],
        cwd=ROOT,
        env={**os.environ, "KCONFIG_CONFIG": str(path)},
        check=True,
        capture_output=True,
    )
    return path


def test_menuconfig_changes_a_sparsity_level_in_a_real_terminal(demo_config):
    assert "# CONFIG_SPARSITY_80 is not set" in demo_config.read_text()
    env = {**os.environ, "KCONFIG_CONFIG": str(demo_config), "TERM": "xterm-256color"}
    term = Terminal(
        [
            "make",
            "--no-print-directory",
            "-s",
            f"PY={sys.executable}",
            "SETUP_STAMP=",
            "menuconfig",
        ],
        env,
    )
    term.wait_for("[Q] Quit")
    term.wait_for("Pruning  --->")
    term.send("/")  # jump to symbol
    term.wait_for("Jump to symbol")
    term.send("SPARSITY_80")
    term.wait_for("SPARSITY_80(=n)")
    term.send("\r")
    term.wait_for("Target sparsity levels")
    term.send(" ")  # toggle the selected entry
    term.wait_for("[*] 80%")
    term.send("S")
    term.wait_for("Filename to save configuration")
    term.send("\r")
    term.wait_for("saved to")
    term.send("\r")
    term.send("Q")
    term.child.expect(pexpect.EOF)
    term.child.close()
    assert term.child.exitstatus == 0
    text = demo_config.read_text()
    assert "CONFIG_SPARSITY_80=y" in text
    assert cfg.load(demo_config).sparsities == (0.7, 0.8, 0.9)  # the demo has 70 and 90
