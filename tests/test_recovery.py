"""Recovery keeps every figure, results stay inside their matrix, shared machines work (#16).

Each test here failed before its fix: a rebuilt metrics.json without its memory figures, a
matrix without matrix.json swapped for another, run ids that climb out of their matrix, files
followed through symbolic links, results only their owner can read, make variables that
reach the shell, and a dead runner's lock refused as if it were alive.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lib.metrics import METRICS_FILE, read_metrics
from lib.train import train

# 2 epochs x 2 steps of movement pruning on AdamW: the optimizer and the pruner both hold
# state, so each of the memory figures is non-zero.
PRUNED = {
    "train": {"epochs": 2, "max_steps_per_epoch": 2},
    "optimizer": {"name": "adamw"},
    "pruning": {"method": "movement", "sparsity": 0.5, "start_step": 1, "end_epoch": 1},
}


@pytest.fixture(autouse=True)
def one_cpu_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- a damaged metrics.json is rebuilt with every figure -------------------------------------------


def test_metrics_rebuilt_from_the_checkpoint_keep_every_field(tiny_spec, tmp_path):
    spec = tiny_spec(tmp_path, **PRUNED)
    original = train(spec)
    assert original["state_memory"]["optimizer_state_bytes"] > 0
    assert original["state_memory"]["pruning_state_bytes"] > 0
    metrics = Path(spec.out_dir) / METRICS_FILE
    # The runner moves a damaged metrics.json aside; the trainer rebuilds it from the
    # checkpoint of the last epoch without training again.
    shutil.move(metrics, metrics.with_name("metrics.json.corrupt"))
    rebuilt = train(spec)
    assert rebuilt["state_memory"] == original["state_memory"]
    assert rebuilt["model_info"] == original["model_info"]
    assert rebuilt["epochs"] == json.loads(json.dumps(original["epochs"]))
    assert rebuilt["summary"] == original["summary"]
    assert set(rebuilt) == set(original)
    assert read_metrics(metrics)["state_memory"] == original["state_memory"]
