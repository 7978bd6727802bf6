"""Shared fixtures: a tiny RunSpec that trains in a fraction of a second per step on CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from lib.spec import DataSpec, ModelSpec, OptimizerSpec, PruningSpec, RunSpec, TrainSpec

_PARTS = ("model", "data", "train", "optimizer", "pruning")


def make_tiny_spec(tmp_path: Path, **overrides: Any) -> RunSpec:
    """A RunSpec for tests: ResNet-18 with the CIFAR stem on 8x8 synthetic images, CPU.

    Overrides: a part name (`model`, `data`, `train`, `optimizer`, `pruning`) with a dict of
    fields to change in that part (or a whole replacement object), or a RunSpec field
    (`seed`, `matrix`, `out_dir`). The pruning defaults start and end pruning within the first
    epoch so a few steps reach the target sparsity.

        make_tiny_spec(tmp_path, train={"epochs": 3}, pruning={"method": "magnitude",
                       "sparsity": 0.5}, seed=1)
    """
    parts: dict[str, Any] = {
        "model": ModelSpec(name="resnet18", stem="cifar"),
        "data": DataSpec(
            name="synthetic",
            data_dir=str(tmp_path / "data"),
            image_size=8,
            workers=0,
            pin_memory=False,
            persistent_workers=False,
            synthetic_classes=10,
            synthetic_train_size=32,
            synthetic_val_size=16,
        ),
        "train": TrainSpec(epochs=2, batch_size=8, device="cpu", max_steps_per_epoch=0),
        "optimizer": OptimizerSpec(name="adamw", lr=1e-3),
        "pruning": PruningSpec(start_step=1, end_epoch=1, interval=1),
    }
    for name in _PARTS:
        if name in overrides:
            value = overrides.pop(name)
            parts[name] = (
                dataclasses.replace(parts[name], **value) if isinstance(value, dict) else value
            )
    fields = {"matrix": "tiny", "seed": 0, "out_dir": str(tmp_path / "run")}
    unknown = set(overrides) - set(fields)
    if unknown:
        raise TypeError(f"make_tiny_spec: unknown overrides {sorted(unknown)}")
    fields.update(overrides)
    return RunSpec(**parts, **fields)


@pytest.fixture(scope="session")
def tiny_spec():
    """`tiny_spec(tmp_path, **overrides) -> RunSpec`; see `make_tiny_spec`."""
    return make_tiny_spec


def _private_plan_key() -> None:
    """The runner seals every matrix.json with a per-user key (lib/store.py); the tests, and
    the commands they start (which inherit the environment), use a key of their own in a
    fresh private directory, never the user's ~/.config/prunebench/plan.key."""
    import atexit
    import os
    import shutil
    import tempfile

    if os.environ.get("PRUNEBENCH_KEY_FILE"):
        return
    folder = tempfile.mkdtemp(prefix="prunebench-test-key-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["PRUNEBENCH_KEY_FILE"] = os.path.join(folder, "plan.key")


_private_plan_key()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site directory on sys.path for installing test plug-ins into (tests/test_plugins.py
    `install`); the method catalogue is found again before and after."""
    import sys

    from lib import catalogue

    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    catalogue.reset()
    yield path
    for module in [m for m in sys.modules if m.endswith("_pkg")]:
        del sys.modules[module]
    catalogue.reset()
