"""What pruning costs on the training step: every method against torch.optim.AdamW (foreach).

Methods are built by `optimizers.build_optimizer`, as the training loop gets them (Adam family
on torch's fused kernel); the baseline is torch.optim.AdamW(foreach=True), as the issue asks,
and a second column compares against AdamW on the same fused kernel.

    python benchmarks/bench_optimizers.py            # ResNet-50, batch 32, 64x64, CPU
    python benchmarks/bench_optimizers.py --quick    # tiny smoke version (ResNet-18, 32x32)

On a GPU (`--device cuda`): batch 128, 224x224, bf16 autocast. All models train side by side in
one process, one step each in turn (round robin), so machine drift hits every method alike; the
ratio of a method is the median over rounds of its step time divided by AdamW's in the same
round. Pruning is active during the timed steps (masks already at 65%, gradients masked every
step); a mask update (scores + exact threshold + zeroing) is timed separately at the configured
interval's sparsities and amortised over `--interval` steps. Also prints the threshold selection
against torch.kthvalue over the same number of scores, and the state bytes per parameter.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.pruning import prunable_parameters, select_pruned, state_memory  # noqa: E402
from lib.spec import OptimizerSpec, PruningSpec  # noqa: E402
from optimizers import build_optimizer, parameter_groups  # noqa: E402

# (label, optimizer spec, pruning method, target step-time ratio vs AdamW)
METHODS = [
    ("torch AdamW foreach (baseline)", None, "none", None),
    ("AdamW as built (fused kernel)", OptimizerSpec(name="adamw"), "none", None),
    ("AdamWPrune hybrid, state pruning", OptimizerSpec(name="adamwprune"), "state", 1.03),
    ("AdamWSPAM", OptimizerSpec(name="adamwspam"), "none", 1.10),
    ("AdamW + magnitude pruning", OptimizerSpec(name="adamw"), "magnitude", 1.05),
    ("AdamW + movement pruning", OptimizerSpec(name="adamw"), "movement", 1.10),
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(spec, method, args, device, seed=0):
    torch.manual_seed(seed)
    arch = torchvision.models.resnet18 if args.quick else torchvision.models.resnet50
    model = arch(num_classes=1000).to(device)
    pruning = PruningSpec(
        method=method,
        sparsity=args.sparsity if method != "none" else 0.0,
        start_step=1,
        end_epoch=1,
        interval=args.interval,
    )
    if spec is None:  # the reference point, with the registry's two parameter groups
        groups = parameter_groups(model, OptimizerSpec().weight_decay)
        return model, torch.optim.AdamW(groups, foreach=True)
    # One "epoch" far longer than the benchmark: the schedule stays active throughout.
    optimizer = build_optimizer(model, spec, pruning, steps_per_epoch=1_000_000)
    return model, optimizer


def train_step(model, optimizer, batch, device, autocast):
    images, targets = batch
    synchronize(device)
    start = time.perf_counter()
    with autocast():
        loss = nn.functional.cross_entropy(model(images), targets)
    loss.backward()
    synchronize(device)
    backward_done = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    end = time.perf_counter()
    return end - start, end - backward_done


def time_mask_updates(optimizer, args, device) -> float:
    """Median seconds of one mask update at sparsities the schedule passes through."""
    pruner = optimizer.pruner
    seconds = []
    for sparsity in (0.45, 0.55, 0.65):
        synchronize(device)
        start = time.perf_counter()
        pruner.update_masks(optimizer.state, sparsity)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def bench_steps(args, device) -> None:
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else (lambda: torch.autocast("cpu", enabled=False))
    )
    generator = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device),
        torch.randint(0, 1000, (args.batch,), generator=generator).to(device),
    )
    runs = []
    for label, spec, method, target in METHODS:
        model, optimizer = build(spec, method, args, device)
        for _ in range(args.warmup):
            train_step(model, optimizer, batch, device, autocast)
        update_seconds = 0.0
        if getattr(optimizer, "pruner", None) is not None:
            # Leaves the masks at 65%: pruning is active during the timed steps.
            update_seconds = time_mask_updates(optimizer, args, device)
        runs.append(
            {
                "label": label,
                "model": model,
                "optimizer": optimizer,
                "target": target,
                "update": update_seconds,
                "step": [],
                "opt": [],
            }
        )
    for round_index in range(args.rounds):
        for run in runs:
            total, opt = train_step(run["model"], run["optimizer"], batch, device, autocast)
            run["step"].append(total)
            run["opt"].append(opt)
        print(f"  round {round_index + 1}/{args.rounds} done", flush=True)

    base, built = runs[0], runs[1]
    print(
        f"\nTraining step, {'ResNet-18' if args.quick else 'ResNet-50'}, batch {args.batch}, "
        f"{args.size}x{args.size}, {device.type}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds (median); mask update every {args.interval} steps, "
        f"target {args.sparsity:.0%}"
    )
    header = (
        f"{'method':36s} {'step s':>8s} {'opt.step s':>10s} {'update s':>9s} "
        f"{'ratio':>7s} {'amortised':>9s} {'target':>7s}    {'vs fused AdamW':>14s}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        ratios = [s / b for s, b in zip(run["step"], base["step"], strict=True)]
        ratio = statistics.median(ratios)
        step = statistics.median(run["step"])
        amortised = ratio + run["update"] / args.interval / statistics.median(base["step"])
        target = run["target"]
        verdict = "" if target is None else ("ok" if amortised <= target else "OVER")
        same_path = statistics.median(
            [s / b for s, b in zip(run["step"], built["step"], strict=True)]
        ) + run["update"] / args.interval / statistics.median(built["step"])
        print(
            f"{run['label']:36s} {step:8.3f} {statistics.median(run['opt']):10.4f} "
            f"{run['update']:9.3f} {ratio:7.3f} {amortised:9.3f} "
            f"{'' if target is None else f'<={target:.2f}':>7s} {verdict:4s} {same_path:10.3f}"
        )
    print(
        "ratio: median over rounds of step time / baseline step time in the same round; "
        "amortised: plus one mask update per interval; last column: amortised against AdamW "
        "on the same fused kernel (the cost of pruning alone)."
    )

    print("\nPersistent state (bytes per prunable weight beyond AdamW's m and v)")
    for run in runs:
        memory = state_memory(run["optimizer"], run["model"])
        prunable = sum(p.numel() for _, p in prunable_parameters(run["model"]))
        print(
            f"{run['label']:36s} extra {memory['extra_bytes_per_prunable_param']:7.4f} B/param"
            f"  (pruning state {memory['pruning_state_bytes'] / prunable:.4f} B/param, "
            f"optimizer state {memory['optimizer_state_bytes'] / 2**20:.1f} MiB)"
        )


def bench_threshold(args, device) -> None:
    count = 1_000_000 if args.quick else 25_502_912  # ResNet-50's prunable weights
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(count, generator=generator).abs_().to(device)
    scores[: int(0.3 * count)] = -torch.inf  # weights pruned earlier rank lowest
    print(f"\nThreshold selection over {count:,} scores (median of {args.selection_repeats})")
    for sparsity in (0.5, 0.7, 0.9):
        k = count - round((1 - sparsity) * count)
        ours, theirs = [], []
        for _ in range(args.selection_repeats):  # alternate so drift cancels
            synchronize(device)
            start = time.perf_counter()
            mask = select_pruned(scores, k)
            synchronize(device)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            torch.kthvalue(scores, k)
            synchronize(device)
            theirs.append(time.perf_counter() - start)
        assert int(mask.sum()) == k, "selection count is not exact"
        mine, reference = statistics.median(ours), statistics.median(theirs)
        verdict = "ok" if mine <= 1.5 * reference else "OVER"
        print(
            f"  sparsity {sparsity:.0%}: select_pruned {mine:.3f} s (exact mask), "
            f"torch.kthvalue {reference:.3f} s (value only): {mine / reference:.2f}x "
            f"<= 1.50 {verdict}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke version")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--rounds", type=int, default=None, help="timed steps per method")
    parser.add_argument("--interval", type=int, default=50, help="mask update interval")
    parser.add_argument("--sparsity", type=float, default=0.7, help="target sparsity")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        args.batch, args.size = 128, 224
    else:
        args.batch, args.size = 32, 64
    args.warmup = 2
    args.selection_repeats = 5
    if args.quick:
        args.batch, args.size, args.warmup, args.selection_repeats = 8, 32, 1, 3
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    bench_steps(args, device)
    bench_threshold(args, device)


if __name__ == "__main__":
    main()
