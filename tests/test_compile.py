"""torch.compile runs compile once: no recompiles after the first epoch (CPU inductor)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from test_optimizers import tiny_model
from torch._dynamo.utils import counters

import lib.train
from lib.train import _Run, train


def tiny_convnet(spec, num_classes, image_size):
    """Small enough for inductor to compile in seconds (ResNet-18 takes minutes on a loaded
    2-core machine); conv, batch norm and linear layers, as the real models have."""
    assert num_classes == 10
    return tiny_model()


@pytest.mark.slow
def test_a_compiled_run_does_not_recompile_after_its_first_epoch(tiny_spec, tmp_path, monkeypatch):
    """20 training images in batches of 8 (a partial last batch, dropped) and 12 test images
    (a partial last batch, padded): every graph is compiled in epoch 1, none later."""
    spec = tiny_spec(
        tmp_path,
        data={"image_size": 8, "synthetic_train_size": 20, "synthetic_val_size": 12},
        train={"epochs": 3, "compile": True, "checkpoint": False, "deterministic": False},
    )
    torch._dynamo.reset()
    counters.clear()
    graphs_after_epoch = []
    evaluate = _Run.evaluate

    def counting_evaluate(self, epoch, *args):
        result = evaluate(self, epoch, *args)
        graphs_after_epoch.append(counters["stats"]["unique_graphs"])
        return result

    monkeypatch.setattr(_Run, "evaluate", counting_evaluate)
    monkeypatch.setattr(lib.train, "build_model", tiny_convnet)
    document = train(spec)
    torch._dynamo.reset()
    assert document["summary"]["status"] == "completed", document["summary"]["error"]
    assert len(graphs_after_epoch) == 3
    assert graphs_after_epoch[0] > 0
    assert graphs_after_epoch[1:] == [graphs_after_epoch[0]] * 2
    for record in document["epochs"]:
        assert record["train_images"] == 16  # the partial batch of 4 is dropped
