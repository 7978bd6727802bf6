"""What pruning buys: parameter and MAC counts (lib.pruning.layer_macs / nonzero_cost) and the
summary's compression ratio and theoretical speedup (lib.metrics.summarize)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lib.metrics import summarize
from lib.pruning import layer_macs, nonzero_cost, prunable_parameters


def flop_counter_macs(model: nn.Module, image_size: int) -> int:
    """torch's own count (FLOPs = 2 x MACs) of one dense forward pass of one image."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() // 2


def test_resnet50_macs_match_torchs_flop_counter_at_224px():
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    macs = layer_macs(model, 224)
    assert model.training  # the mode is left as it was
    assert sum(macs.values()) == flop_counter_macs(model, 224)
    assert sum(macs.values()) == pytest.approx(4.09e9, rel=0.01)  # "about 4.1 GMACs"
    # Every prunable weight is counted, nothing else.
    assert set(macs) == {name for name, _ in prunable_parameters(model)}


def test_macs_follow_the_image_size_and_a_hand_count():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),  # 8x8 out: 4*3*9 * 64 = 6912
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),  # 4x4 out: 4*2*9 * 16 = 1152
        nn.Flatten(),
        nn.Linear(64, 5),  # 320
    )
    macs = layer_macs(model, 8)
    assert macs == {"0.weight": 6912, "1.weight": 1152, "3.weight": 320}
    assert sum(macs.values()) == flop_counter_macs(model, 8)


def test_nonzero_counts_follow_the_masks():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)
    )
    macs = layer_macs(model, 8)
    total = sum(p.numel() for p in model.parameters())
    dense = nonzero_cost(model, macs)
    assert dense == {"parameters_nonzero": total, "macs_nonzero": sum(macs.values())}
    with torch.no_grad():
        model[0].weight.view(-1)[: 108 // 4].zero_()  # conv: a quarter pruned
        model[3].weight.zero_()  # linear: all of it
        model[3].bias[:2].zero_()  # a bias that happens to be 0 counts too
    pruned = nonzero_cost(model, macs)
    assert pruned["parameters_nonzero"] == total - 27 - 5 * 256 - 2
    assert pruned["macs_nonzero"] == macs["0.weight"] * 3 // 4


def epoch(n: int, parameters: int, macs: int) -> dict:
    return {
        "epoch": n, "test_top1": 50.0, "test_top5": 80.0, "sparsity": 0.5,
        "parameters_nonzero": parameters, "macs_nonzero": macs,
    }  # fmt: skip


def test_summary_ratios_are_of_the_final_epoch():
    info = {"parameters_total": 1000, "macs_dense": 8000}
    epochs = [epoch(1, 800, 6000), epoch(2, 250, 1000)]
    s = summarize(epochs, 0.5, status="completed", model_info=info)
    assert s["compression_ratio"] == 4.0
    assert s["theoretical_speedup"] == 8.0
    # Without the counts (a file from before they were recorded) there is no ratio.
    s = summarize(epochs, 0.5, status="completed")
    assert s["compression_ratio"] is None and s["theoretical_speedup"] is None
    s = summarize([], 0.5, status="failed", model_info=info)
    assert s["compression_ratio"] is None
