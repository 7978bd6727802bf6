"""Training throughput of `lib.train.train()` against a bare hand-written loop.

Same process, same model, data, batch, optimizer and determinism settings; the two are
interleaved round by round so background load hits both alike. The figure is

    ratio = median images/s of train()'s training phase / median images/s of the bare loop

and the target is >= 0.97: the loop's bookkeeping (progress, NaN detection, accuracy,
schedule, signal checks) must cost the user nothing they could notice.

    python benchmarks/bench_train.py            # ResNet-18 (CIFAR stem), 16 px, batch 64
    python benchmarks/bench_train.py --quick    # smoke version, a few seconds
    python benchmarks/bench_train.py --demo-sizing   # one mnist5k epoch at 28 px and 16 px

Timings come from whatever device `auto` resolves to; the output names it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.data import build_loaders  # noqa: E402
from lib.spec import DataSpec, ModelSpec, OptimizerSpec, PruningSpec, RunSpec, TrainSpec  # noqa: E402
from lib.train import configure_determinism, resolve_device, train  # noqa: E402
from models import build_model  # noqa: E402
from optimizers import build_optimizer  # noqa: E402

TARGET_RATIO = 0.97


def quiet_train(spec: RunSpec) -> dict:
    """train() with its progress lines swallowed; they would drown the benchmark's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        return train(spec)


def make_spec(out_dir: Path, *, image_size: int, batch: int, steps: int, epochs: int) -> RunSpec:
    return RunSpec(
        matrix="bench",
        model=ModelSpec(name="resnet18", stem="cifar"),
        data=DataSpec(
            name="synthetic",
            image_size=image_size,
            workers=0,
            synthetic_classes=10,
            synthetic_train_size=batch * steps,
            synthetic_val_size=batch,
        ),
        train=TrainSpec(epochs=epochs, batch_size=batch, device="auto", checkpoint=False),
        optimizer=OptimizerSpec(name="adamw", lr=1e-3),
        pruning=PruningSpec(),
        out_dir=str(out_dir),
    )


def bare_loop_images_per_second(spec: RunSpec, rounds_of_steps: list[int]) -> list[float]:
    """The loop a researcher would write by hand: forward, loss, backward, step. Nothing else."""
    device = resolve_device(spec.train.device)
    configure_determinism(spec.train.deterministic)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, spec.data.num_classes, spec.data.image_size).to(device)
    train_loader, _ = build_loaders(spec, device)
    optimizer = build_optimizer(
        model, spec.optimizer, spec.pruning, steps_per_epoch=len(train_loader)
    )
    criterion = torch.nn.CrossEntropyLoss()
    model.train()

    def one_epoch(epoch: int) -> float:
        train_loader.set_epoch(epoch)
        images_seen = 0
        started = time.perf_counter()
        for images, targets in train_loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images_seen += targets.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return images_seen / (time.perf_counter() - started)

    one_epoch(0)  # warm-up: allocator, kernel selection
    return [one_epoch(epoch + 1) for epoch in range(len(rounds_of_steps))]


def compare(image_size: int, batch: int, steps: int, rounds: int) -> float:
    train_rates: list[float] = []
    bare_rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            # train(): epoch 1 warms up (like the bare loop's epoch 0); later epochs count.
            spec = make_spec(
                Path(tmp) / f"round{r}", image_size=image_size, batch=batch, steps=steps, epochs=3
            )
            doc = quiet_train(spec)
            if doc["summary"]["status"] != "completed":
                raise SystemExit(f"train() failed: {doc['summary']['error']}")
            round_train = [e["images_per_second"] for e in doc["epochs"][1:]]
            round_bare = bare_loop_images_per_second(spec, [steps] * 2)
            train_rates += round_train
            bare_rates += round_bare
            print(
                f"round {r + 1}/{rounds}: train() {statistics.median(round_train):.1f} img/s, "
                f"bare loop {statistics.median(round_bare):.1f} img/s",
                flush=True,
            )
        device = doc["environment"]["device_name"]
    ratio = statistics.median(train_rates) / statistics.median(bare_rates)
    print(
        f"\ntrain() vs bare loop, resnet18 cifar stem, synthetic {image_size}px, batch {batch}, "
        f"{steps} steps/epoch, adamw, {torch.get_num_threads()} threads, {device}:\n"
        f"  train() {statistics.median(train_rates):.1f} img/s, bare {statistics.median(bare_rates):.1f} "
        f"img/s, ratio {ratio:.3f} (target >= {TARGET_RATIO})"
    )
    return ratio


def demo_sizing() -> None:
    """Seconds per mnist5k epoch (4000 train + 1000 test images) at the demo's settings."""
    print(f"mnist5k epoch cost, resnet18 cifar stem, batch 128, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (28, 16):
            spec = RunSpec(
                matrix="bench",
                model=ModelSpec(name="resnet18", stem="cifar"),
                data=DataSpec(name="mnist5k", image_size=size, workers=0),
                train=TrainSpec(epochs=1, batch_size=128, device="cpu", checkpoint=False),
                optimizer=OptimizerSpec(name="adamw", lr=1e-3),
                pruning=PruningSpec(),
                out_dir=str(Path(tmp) / f"mnist{size}"),
            )
            cpu_started = time.process_time()
            doc = quiet_train(spec)
            cpu_seconds = time.process_time() - cpu_started
            [epoch] = doc["epochs"]
            print(
                f"  {size}px: epoch {epoch['epoch_seconds']:.1f} s wall (training "
                f"{epoch['train_seconds']:.1f} s, {epoch['images_per_second']:.0f} img/s), "
                f"{cpu_seconds:.1f} s CPU time incl. setup; test top-1 {epoch['test_top1']:.1f}%",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke version")
    parser.add_argument(
        "--demo-sizing", action="store_true", help="time one mnist5k epoch at 28 and 16 px"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: 1 for the comparison, because with several OpenMP threads "
        "on a shared machine other processes' load makes single measurements swing 5x; "
        "2 for --demo-sizing, the demo's setting)",
    )
    args = parser.parse_args()
    if args.demo_sizing:
        torch.set_num_threads(args.threads or 2)
        demo_sizing()
        return 0
    torch.set_num_threads(args.threads or 1)
    if args.quick:
        compare(image_size=8, batch=16, steps=4, rounds=1)
        return 0
    ratio = compare(image_size=16, batch=64, steps=8, rounds=4)
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
