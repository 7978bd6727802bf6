"""The benchmarks `make bench` runs still run: each one's --quick version, end to end.

Their figures are measurements, not assertions (timing targets live in the benchmarks); what
is checked here is that each prints the table it is read for, with a number in every column
a reader looks at, so a benchmark cannot rot unnoticed between the runs that produce the
figures in docs/benchmarks.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"[0-9][0-9,.]*"


def run_quick(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_bench_optimizers_quick_prints_every_method_and_the_clipping_table():
    out = run_quick("bench_optimizers.py")
    for label in ("torch AdamW fused (baseline)", "AdamWPrune hybrid", "AdamWSPAM (clipping on"):
        assert re.search(re.escape(label) + rf".*\s{NUMBER}\s+{NUMBER}\s+{NUMBER}", out), label
    assert re.search(rf"AdamWSPAM .*: {NUMBER} of {NUMBER} gradient elements, in {NUMBER} of", out)
    table = out.split("SPAM spike clipping on CPU")[1].splitlines()
    rates = [line.split() for line in table if re.match(r"\s+\d\.\d\de[+-]\d\d\s", line)]
    assert len(rates) == 4 and all(len(row) == 4 for row in rates)
    # issue 24: AdamWSPAM's step side by side with fused AdamW's, one thread, with a verdict
    assert re.search(
        rf"fused AdamW {NUMBER} s, AdamWSPAM {NUMBER} s: ratio {NUMBER} \(IQR {NUMBER}-{NUMBER}\), "
        r"goal <= 2\.0: (met|NOT MET)",
        out,
    )
    # ... beside SPAM on torch operations alone, on the same gradients, ending bit-identical
    assert re.search(r"AdamWSPAM ran on: (compiled kernels|torch operations \()", out)
    assert re.search(rf"AdamWSPAM on torch operations {NUMBER} s: ratio {NUMBER} \(IQR", out)
    assert "the two AdamWSPAM runs end bit-identical: yes" in out
    whole = rf"whole training step \(forward\+backward {NUMBER} s, batch {{}}, .*\): {NUMBER}x "
    whole += rf"fused AdamW's \(on torch operations {NUMBER}x\), "
    assert re.search(whole.format(8) + r"\(batch 8: the optimizer's largest share", out)
    assert re.search(whole.format(16) + r"goal <= 1\.10: (met|NOT MET)", out)


@pytest.mark.slow
def test_bench_train_quick_prints_the_ratio():
    out = run_quick("bench_train.py")
    assert re.search(rf"train\(\) {NUMBER} img/s, bare {NUMBER} img/s, ratio {NUMBER}", out)


@pytest.mark.slow
def test_bench_input_quick_prints_both_pipelines_per_core():
    out = run_quick("bench_input.py")
    for pipeline in ("pil", "uint8", "bytes"):
        assert re.search(rf"{pipeline}\s+{NUMBER} img/s per core", out), pipeline
    assert re.search(rf"uint8 / pil: {NUMBER}x", out)


@pytest.mark.slow
def test_bench_sparse_inference_quick_states_dense_speed_on_cpu_with_the_ratios():
    out = run_quick("bench_sparse_inference.py")
    for label in ("dense", "50% unstructured", "2:4"):
        assert re.search(rf"\n  {re.escape(label)}\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}x", out), label
    assert re.search(rf"run at dense speed: torch has no sparse kernel .*2:4 {NUMBER}x", out)


@pytest.mark.gpu
def test_bench_sparse_inference_measures_2_4_linears_on_cuda():
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs a CUDA GPU with compute capability 8.0 or newer")
    out = run_quick("bench_sparse_inference.py")
    # The MLP block's Linear layers are converted to 2:4 and timed; ResNet's convolutions are
    # named as unsupported.
    rows = re.findall(rf"\n  (\S+)\s+(\d+x\d+)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})x", out)
    assert rows, out
    assert all(float(dense) > 0 and float(sparse) > 0 for _, _, dense, sparse, _ in rows)
    assert re.search(r"\d+ Conv2d layers unsupported: no semi-structured convolution kernel", out)


@pytest.mark.slow
def test_bench_store_quick_refuses_every_hostile_file_and_names_the_goal():
    out = run_quick("bench_store.py")
    for case in ("10,000 nested arrays", "50,000 epochs, 3 planned", "(over the limit)"):
        assert re.search(re.escape(case) + rf".*\s{NUMBER}\s+refused: ", out), case
    assert re.search(r"honest, 100 epochs\s+" + NUMBER + r"\s+read", out)
    assert re.search(rf"slowest hostile file: {NUMBER} s \(goal < 1 s: ", out)


def sparse_inference_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_sparse_inference

    return bench_sparse_inference


def test_bench_sparse_inference_cpu_path_says_masks_run_at_dense_speed(capsys, monkeypatch):
    """The CPU path in-process on a small convnet: every model timed with its measured and
    theoretical ratio and the dense-speed statement; without CUDA main says the 2:4 kernels
    were not measured; the 2:4 copy it times is 2:4, and nothing converts to semi-structured
    tensors off CUDA (every Conv2d named as unsupported)."""
    import torch
    from torch import nn

    bench = sparse_inference_module()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8),
    )  # fmt: skip
    bench.cpu_report(model, 16, 2, 2)
    out = capsys.readouterr().out
    theoretical = {}
    for label in ("dense", "50% unstructured", "2:4"):
        found = re.search(rf"\n  {re.escape(label)}\s+{NUMBER}\s+{NUMBER}x\s+({NUMBER})x", out)
        assert found, (label, out)
        theoretical[label] = float(found.group(1))
    # 2:4 halves every layer but the RGB stem (3 channels: no groups of 4), whose MACs are
    # 14*14*16*27 of 14*14*16*27 + 12*12*16*144 + 16*8 in a 16 px image
    stem, conv, fc = 14 * 14 * 16 * 27, 12 * 12 * 16 * 144, 16 * 8
    assert theoretical["2:4"] == round((stem + conv + fc) / (stem + conv / 2 + fc / 2), 2)
    assert theoretical["dense"] == 1.0 and 1.0 < theoretical["50% unstructured"] <= 2.0
    assert re.search(rf"run at dense speed: torch has no sparse kernel .*2:4 {NUMBER}x", out)

    pruned = bench.pruned_copy(model, 0.5, (2, 4))
    groups = pruned[6].weight.detach().reshape(-1, 4)
    assert ((groups != 0).sum(dim=1) == 2).all()  # exactly 2 of every 4 along the input
    converted, unsupported = bench.convert_semi_structured(pruned)
    assert converted == [] and set(unsupported) == {"0", "2", "6"}  # CPU: torch refuses
    assert unsupported["0"] == unsupported["2"] == bench.CONV_UNSUPPORTED
    assert isinstance(pruned[6], nn.Linear) and pruned[6].weight.layout == torch.strided

    timed = []
    monkeypatch.setattr(bench, "cpu_report", lambda *args: timed.append(args[1:]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bench.main(["--quick"])
    assert timed == [(64, 2, 3)]  # ResNet-18, 64 px, batch 2, 3 rounds
    assert capsys.readouterr().out == (
        "CUDA: not available here; semi-structured (2:4) kernels not measured\n"
    )


@pytest.mark.gpu
def test_2_4_linears_as_semi_structured_tensors_compute_what_the_dense_ones_do():
    """Issue 27, item 6: the eligible Linear layers of a 2:4-pruned model become torch
    semi-structured sparse tensors holding exactly the pruned weights, the model's output
    matches the dense pruned model within fp16 tolerance, and convolutions are named as
    unsupported."""
    import copy

    import torch
    import torchvision
    from torch.sparse import SparseSemiStructuredTensor

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs a CUDA GPU with compute capability 8.0 or newer")
    bench = sparse_inference_module()
    torch.manual_seed(0)
    dense = bench.pruned_copy(bench.linear_stack(256), 0.5, (2, 4)).half().cuda().eval()
    sparse = copy.deepcopy(dense)
    converted, unsupported = bench.convert_semi_structured(sparse)
    assert converted == ["0", "2"] and unsupported == {}
    for index in (0, 2):
        weight = sparse[index].weight
        assert isinstance(weight, SparseSemiStructuredTensor)
        assert torch.equal(weight.to_dense(), dense[index].weight)
    x = torch.randn(1024, 256, device="cuda", dtype=torch.half)
    with torch.no_grad():
        expected, got = dense(x), sparse(x)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-2 * scale

    resnet = bench.pruned_copy(torchvision.models.resnet18(), 0.5, (2, 4)).half().cuda()
    converted, unsupported = bench.convert_semi_structured(resnet)
    convs = [n for n, m in resnet.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(unsupported[n] == bench.CONV_UNSUPPORTED for n in convs)
    assert set(converted) | set(unsupported) == {*convs, "fc"}  # fc: converted or said why
