"""Inference latency of a dense and a pruned model side by side: what the masks buy in time.

A pruned network here is the dense network with zeros in its weights (lib/pruning.py). A zero
costs the same multiply as any other number unless a sparse kernel skips it, so:

- CPU: the dense model, the same model pruned to 50 % unstructured (magnitude) and pruned
  2:4 are timed interleaved, batch by batch, in this process. torch has no CPU kernel that
  exploits either mask, so all three run at dense speed; the benchmark says so with the
  measured ratios (close to 1.00x).
- CUDA, where torch supports semi-structured sparse tensors (torch.sparse.
  to_sparse_semi_structured, compute capability 8.0 or newer): every eligible Linear layer
  pruned 2:4 is converted and timed against its dense fp16 form on the same input; Linear
  layers whose shapes the kernel refuses and every Conv2d (no semi-structured convolution
  kernel) are named as unsupported. The theoretical speedup of metrics.json is the upper
  bound these measured figures are read against.

    python benchmarks/bench_sparse_inference.py           # ResNet-50, 224 px, batch 8
    python benchmarks/bench_sparse_inference.py --quick   # ResNet-18, 64 px, batch 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.pruning import (  # noqa: E402
    Pruner,
    PruningSchedule,
    layer_macs,
    nonzero_cost,
    prunable_parameters,
)


def pruned_copy(model: nn.Module, sparsity: float, pattern: tuple[int, int] | None) -> nn.Module:
    """`model` with its prunable weights magnitude-pruned to `sparsity` (or N:M `pattern`)."""
    pruned = copy.deepcopy(model)
    weights = [p for _, p in prunable_parameters(pruned)]
    Pruner(weights, PruningSchedule(sparsity, 0, 0), pattern=pattern).update_masks({}, sparsity)
    return pruned


@torch.no_grad()
def latencies(models: dict[str, nn.Module], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median milliseconds per forward pass of each model, timed interleaved so that load on
    the machine hits every model alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up
        model(x)
    for _ in range(rounds):
        for name, model in models.items():
            if x.is_cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def cpu_report(model: nn.Module, image_size: int, batch: int, rounds: int) -> None:
    model.eval()
    macs = layer_macs(model, image_size)
    models = {
        "dense": model,
        "50% unstructured": pruned_copy(model, 0.5, None),
        "2:4": pruned_copy(model, 0.5, (2, 4)),
    }
    x = torch.randn(batch, 3, image_size, image_size)
    times = latencies(models, x, rounds)
    dense_macs = sum(macs.values())
    print(f"CPU, {torch.get_num_threads()} threads, batch {batch}, {image_size} px:")
    print(f"  {'model':<18} {'ms/batch':>10} {'measured':>9} {'theoretical':>12}")
    for name, ms in times.items():
        theoretical = dense_macs / nonzero_cost(models[name], macs)["macs_nonzero"]
        print(f"  {name:<18} {ms:>10.1f} {times['dense'] / ms:>8.2f}x {theoretical:>11.2f}x")
    measured = ", ".join(f"{name} {times['dense'] / ms:.2f}x" for name, ms in times.items())
    print(
        "  on CPU unstructured and N:M masks run at dense speed: torch has no sparse kernel for "
        f"them (measured against dense: {measured}; any departure from 1.00x is load on the "
        "machine, not the mask)"
    )


CONV_UNSUPPORTED = "no semi-structured convolution kernel"


def semi_structured(linear: nn.Linear) -> nn.Linear:
    """A copy of a 2:4-pruned Linear layer whose weight is a torch semi-structured sparse
    tensor (CUDA, compute capability 8.0+); RuntimeError or ValueError where torch refuses its
    shape, dtype or device."""
    from torch.sparse import to_sparse_semi_structured

    sparse = copy.deepcopy(linear)
    sparse.weight = nn.Parameter(to_sparse_semi_structured(sparse.weight))
    return sparse


def convert_semi_structured(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Replace every eligible Linear layer of a 2:4-pruned `model` by its semi-structured form,
    in place; return (converted layer names, {unsupported layer: why}), every Conv2d among
    the unsupported."""
    converted: list[str] = []
    unsupported: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d):
            unsupported[name] = CONV_UNSUPPORTED
        if not isinstance(module, nn.Linear):
            continue
        try:
            sparse = semi_structured(module)
        except (RuntimeError, ValueError) as e:
            unsupported[name] = str(e).splitlines()[0][:60]
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sparse)
        converted.append(name)
    return converted, unsupported


def cuda_report(model: nn.Module, tokens: int, rounds: int) -> None:
    """2:4 semi-structured Linear layers against their dense fp16 form, layer by layer."""
    device = torch.device("cuda")
    print(f"CUDA ({torch.cuda.get_device_name(device)}), fp16, {tokens} rows per Linear:")
    print(f"  {'layer':<28} {'shape':>12} {'dense ms':>9} {'2:4 ms':>8} {'speedup':>8}")
    pruned = pruned_copy(model, 0.5, (2, 4)).half().to(device).eval()
    convs = [name for name, m in pruned.named_modules() if isinstance(m, nn.Conv2d)]
    if convs:
        print(
            f"  {len(convs)} Conv2d layers unsupported: {CONV_UNSUPPORTED} "
            f"({', '.join(convs[:3])}{', ...' if len(convs) > 3 else ''})"
        )
    for name, module in pruned.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        shape = "x".join(map(str, module.weight.shape))
        x = torch.randn(tokens, module.in_features, device=device, dtype=torch.half)
        try:
            sparse = semi_structured(module)
            times = latencies({"dense": module, "2:4": sparse}, x, rounds)
        except (RuntimeError, ValueError) as e:
            print(f"  {name:<28} {shape:>12} unsupported: {str(e).splitlines()[0][:60]}")
            continue
        speedup = times["dense"] / times["2:4"]
        print(
            f"  {name:<28} {shape:>12} {times['dense']:>9.3f} {times['2:4']:>8.3f} {speedup:>7.2f}x"
        )


def linear_stack(width: int) -> nn.Module:
    """A transformer MLP block's Linear layers (ViT-B: 768 -> 3072 -> 768), where 2:4 pays."""
    return nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18, 64 px, batch 2")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        model, image_size, batch, rounds = torchvision.models.resnet18(), 64, 2, 3
    else:
        model, image_size, batch, rounds = torchvision.models.resnet50(), 224, 8, 10
    cpu_report(model, image_size, batch, rounds)
    if not torch.cuda.is_available():
        print("CUDA: not available here; semi-structured (2:4) kernels not measured")
        return
    if torch.cuda.get_device_capability() < (8, 0):
        print("CUDA: semi-structured sparsity needs compute capability 8.0 or newer")
        return
    cuda_report(linear_stack(256 if args.quick else 768), 1024 if args.quick else 32 * 197, 20)
    cuda_report(model, 1024, 20)


if __name__ == "__main__":
    main()
