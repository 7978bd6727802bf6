"""make gpu-check: one command that proves the CUDA path on a bare GPU machine in minutes.

    python benchmarks/gpu_check.py run [--out FILE.json] [--parts a,b] [--budget SECONDS]
    python benchmarks/gpu_check.py run --cpu-dry-run     # every part on the CPU, tiny sizes
    python benchmarks/gpu_check.py preflight             # exit 3 at once when no GPU is visible

Each part runs in its own process (a CUDA error in one cannot poison the next), under a time
limit taken from the whole check's budget, and prints one PASS / FAIL / SKIP line. Every
figure, the settings and the environment go to one JSON file (default
`results/gpu-check/<UTC time>/gpu-check.json`, beside each part's log and run directories).

Parts, in the order they run (docs/benchmarks.md, "GPU check"):
- `environment`: card, driver, CUDA, torch, cuDNN, NCCL; bf16 and TF32 support; a bf16 matmul;
- `pytest-gpu`: `pytest -m gpu` over the test files that hold GPU tests (none may skip);
- `input-pipeline`: the real ImageNet loader (`CONFIG_DATA_DECODE_UINT8`: workers read bytes,
  the GPU decodes, crops and flips) on generated JPEGs, without training: its ceiling in img/s;
- `resnet50-adamw`, `resnet50-adamwprune`, `resnet50-adamwspam`: ResNet-50 at 224 px, bf16
  autocast, channels_last, through `lib.train.train()` and that loader, ~200 steps each:
  images/s, peak memory, optimizer/pruning state bytes per parameter, the loss falling, and
  (AdamWPrune's state pruning, AdamWSPAM with magnitude pruning) masks exact after updates;
- `bench-optimizers`: `benchmarks/bench_optimizers.py --device cuda` (step ratios against fused
  AdamW, mask updates amortised);
- `torchrun-nccl`: one run through the matrix runner (`lib.runner.run_matrix`) under torchrun
  with one process, which joins an nccl process group of one (DDP, SyncBatchNorm, the mask
  checksum all-reduce);
- `compile`: the training step under torch.compile (AdamWPrune, mask updates on the way): no
  recompilation after the first epoch.

The generated JPEGs (500x375, quality 90) have one colour per class with a little texture, and
most training images belong to ten of the classes (`train_items`), so any network that trains
lowers its loss within the steps of a part. They are written once under `build/gpu-check/`
and reused.

Exit status: 0 every part passed; 1 a part failed; 2 the machine cannot run the check (torch
missing, wheels missing: one line saying what); 3 no CUDA GPU is visible (one line; nothing
was run; `--cpu-dry-run` runs the parts on the CPU instead). Goals (AdamWPrune's amortised
step, ResNet-50 images/s) are reported, not part of the exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_SETUP = 2
EXIT_NO_GPU = 3

SCHEMA_VERSION = 1
DATA_ROOT = ROOT / "build" / "gpu-check"
RESULTS_ROOT = ROOT / "results" / "gpu-check"
CLASSES = 1000  # the imagenet dataset's class count (lib.spec.DATASET_CLASSES)
# The classes most training images belong to (train_items): ten colours far apart.
FREQUENT_CLASSES = tuple(range(0, CLASSES, 111))

# Goals the check reports against (issue 29).
GOAL_PRUNE_RATIO = 1.02  # AdamWPrune's amortised step / fused AdamW's, on the GPU
GOAL_IMAGES_PER_SECOND = 3000  # ResNet-50 training, real input pipeline, one H100/H200

TRAIN_METHODS = ("adamw", "adamwprune", "adamwspam")
PARTS = (
    "environment",
    "pytest-gpu",
    "input-pipeline",
    *(f"resnet50-{m}" for m in TRAIN_METHODS),
    "bench-optimizers",
    "torchrun-nccl",
    "compile",
)
STATUS_PASS, STATUS_FAIL, STATUS_SKIPPED, STATUS_NOT_RUN = "pass", "fail", "skipped", "not run"


@dataclasses.dataclass(frozen=True)
class Setting:
    """Sizes of one mode: `gpu` (what the check is for) or `cpu-dry-run` (the same code on
    the CPU at tiny sizes, to test the check itself where there is no GPU)."""

    mode: str
    device: str
    model: str
    image_size: int
    jpeg_width: int
    jpeg_height: int
    batch: int
    steps: int  # per epoch, training parts
    train_images: int  # generated training JPEGs: >= CLASSES + steps * batch (train_items)
    epochs: int
    workers: int
    precision: str
    compile_epochs: int
    compile_steps: int
    torchrun_epochs: int
    torchrun_steps: int
    bench_args: tuple[str, ...]
    budget: float  # seconds for the whole check
    part_limits: tuple[tuple[str, float], ...]  # the most one part may take
    data_root: str = str(DATA_ROOT)  # where the generated JPEGs are kept between checks

    def limit(self, part: str) -> float:
        return dict(self.part_limits)[part]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Setting:
        """The setting a check wrote to its work folder (JSON lists back to tuples)."""
        return cls(
            **{
                **d,
                "bench_args": tuple(d["bench_args"]),
                "part_limits": tuple(tuple(pair) for pair in d["part_limits"]),
            }
        )


def _usable_cpus() -> int:
    """The CPUs this process may use (lib.runner.usable_cpus: its affinity, not the machine's
    count), imported when needed: the preflight runs before the project is importable."""
    from lib.runner import usable_cpus

    return usable_cpus()


def gpu_setting() -> Setting:
    return Setting(
        mode="gpu",
        device="cuda",
        model="resnet50",
        image_size=224,
        jpeg_width=500,
        jpeg_height=375,
        batch=256,
        steps=40,
        train_images=CLASSES + 40 * 256,
        epochs=5,  # 200 steps
        workers=max(1, min(8, _usable_cpus() - 2)),
        precision="bf16",
        compile_epochs=3,
        compile_steps=8,
        torchrun_epochs=2,
        torchrun_steps=8,
        bench_args=("--device", "cuda"),
        budget=450.0,
        part_limits=(
            ("environment", 60),
            ("pytest-gpu", 120),
            ("input-pipeline", 120),
            *((f"resnet50-{m}", 120) for m in TRAIN_METHODS),
            ("bench-optimizers", 150),
            ("torchrun-nccl", 120),
            ("compile", 240),
        ),
    )


def cpu_dry_setting() -> Setting:
    return Setting(
        mode="cpu-dry-run",
        device="cpu",
        model="resnet18",
        image_size=32,
        jpeg_width=48,
        jpeg_height=36,
        batch=16,
        steps=6,
        train_images=4 * CLASSES,
        epochs=3,
        workers=1,
        precision="bf16",
        compile_epochs=3,
        compile_steps=2,
        torchrun_epochs=2,
        torchrun_steps=2,
        bench_args=("--device", "cpu", "--quick"),
        budget=3600.0,
        part_limits=tuple((part, 900) for part in PARTS),
    )


# ---------------------------------------------------------------------------------------------
# Generated JPEGs: the real input pipeline's files
# ---------------------------------------------------------------------------------------------


def class_colour(cls: int) -> tuple[int, int, int]:
    """One colour per class: the class number's three decimal digits, 20 levels apart."""
    return tuple(40 + 20 * ((cls // 10**k) % 10) for k in range(3))  # type: ignore[return-value]


def jpeg_bytes(cls: int, index: int, width: int, height: int) -> bytes:
    """A photo-sized JPEG of the class colour with a faint gradient and blotchy noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(cls * 100_003 + index)
    colour = np.array(class_colour(cls), dtype=np.float32)
    ramp = np.linspace(-6.0, 6.0, width, dtype=np.float32)[None, :, None] * rng.choice([-1, 1])
    coarse = rng.normal(0.0, 5.0, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    blotches = coarse.repeat(8, axis=0).repeat(8, axis=1)[:height, :width]
    pixels = np.clip(colour + ramp + blotches, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_jpegs(job: tuple[str, list[tuple[int, int]], int, int]) -> int:
    folder, items, width, height = job
    for cls, index in items:
        path = Path(folder) / f"c{cls:04d}" / f"c{cls:04d}_{index:05d}.JPEG"
        path.write_bytes(jpeg_bytes(cls, index, width, height))
    return len(items)


def train_items(count: int) -> list[tuple[int, int]]:
    """(class, index) of the training JPEGs: one image of every class (ImageFolder needs them
    all), the rest spread over FREQUENT_CLASSES. A skewed label distribution whose classes
    differ in colour: a network that trains at all lowers its loss from ln(1000) within a few
    dozen steps, so a loss that does not fall means a broken step, not a hard task."""
    rest = count - CLASSES
    return [(c, c) for c in range(CLASSES)] + [
        (FREQUENT_CLASSES[j % len(FREQUENT_CLASSES)], CLASSES + j) for j in range(rest)
    ]


def ensure_jpegs(setting: Setting) -> Path:
    """`data_dir` of an ImageFolder `imagenet/{train,val}` of generated JPEGs for `setting`,
    written once (in parallel over the cores) and reused while its description matches."""
    data_dir = Path(setting.data_root) / f"data-{setting.mode}"
    description = {
        "version": 2,
        "train": setting.train_images,
        "val": CLASSES,
        "size": [setting.jpeg_width, setting.jpeg_height],
    }
    marker = data_dir / "ready.json"
    try:
        if json.loads(marker.read_text()) == description:
            return data_dir
    except (OSError, ValueError):
        pass
    import shutil
    from multiprocessing import get_context

    shutil.rmtree(data_dir, ignore_errors=True)
    jobs = []
    for split, count in (("train", setting.train_images), ("val", CLASSES)):
        folder = data_dir / "imagenet" / split
        for cls in range(CLASSES):
            (folder / f"c{cls:04d}").mkdir(parents=True)
        items = train_items(count) if split == "train" else [(c, c) for c in range(CLASSES)]
        chunk = 64
        jobs += [
            (str(folder), items[k : k + chunk], setting.jpeg_width, setting.jpeg_height)
            for k in range(0, len(items), chunk)
        ]
    with get_context("fork").Pool(_usable_cpus()) as pool:
        written = sum(pool.map(_write_jpegs, jobs))
    marker.write_text(json.dumps(description))
    print(f"wrote {written:,} JPEGs under {data_dir}", flush=True)
    return data_dir


# ---------------------------------------------------------------------------------------------
# Run specs
# ---------------------------------------------------------------------------------------------


def method_specs(method: str, setting: Setting, epochs: int, steps: int):
    """(OptimizerSpec, PruningSpec) of a method: AdamW dense, AdamWPrune with state pruning,
    AdamWSPAM (as the ResNet-50 defconfigs set it) with magnitude pruning; pruning reaches
    70% in the first half of the run and then holds, so masks are checked after updates."""
    from lib.spec import OptimizerSpec, PruningSpec

    pruning = PruningSpec(
        sparsity=0.7,
        schedule="cubic",
        start_step=max(1, steps // 2),
        interval=max(1, steps // 2),
        end_epoch=max(1, epochs - 2),
    )
    if method == "adamw":
        return OptimizerSpec(name="adamw"), PruningSpec()
    if method == "adamwprune":
        return OptimizerSpec(name="adamwprune"), dataclasses.replace(pruning, method="state")
    if method == "adamwspam":
        spam = OptimizerSpec(
            name="adamwspam", spam_theta=50.0, spam_interval=1000, spam_warmup_steps=100
        )
        return spam, dataclasses.replace(pruning, method="magnitude")
    raise ValueError(f"unknown method {method!r}")


def run_spec(
    setting: Setting,
    method: str,
    out_dir: Path | str,
    *,
    epochs: int,
    steps: int,
    compile: bool = False,
    matrix: str = "gpu-check",
    **train_fields: Any,
):
    from lib.spec import DataSpec, ModelSpec, RunSpec, TrainSpec

    optimizer, pruning = method_specs(method, setting, epochs, steps)
    return RunSpec(
        matrix=matrix,
        model=ModelSpec(name=setting.model, stem="imagenet"),
        data=DataSpec(
            name="imagenet",
            data_dir=str(ensure_jpegs(setting)),
            image_size=setting.image_size,
            workers=setting.workers,
            pin_memory=True,
            persistent_workers=True,
            decode="uint8",
        ),
        train=TrainSpec(
            epochs=epochs,
            batch_size=setting.batch,
            lr_schedule="constant",
            precision=setting.precision,
            channels_last=True,
            compile=compile,
            device=setting.device,
            checkpoint=False,
            deterministic=False,
            max_steps_per_epoch=steps,
            **train_fields,
        ),
        optimizer=optimizer,
        pruning=pruning,
        seed=0,
        out_dir=str(out_dir),
    )


def masks_exact(document: dict[str, Any]) -> bool | None:
    """After every epoch that ended with masks in place: the zeros among the prunable weights
    are exactly the count the last mask update selected (total - round((1 - s) * total)),
    i.e. no pruned weight came back and no extra one was lost; and the run reached its target.
    None for a dense run."""
    spec = document["spec"]
    if spec["pruning"]["method"] == "none":
        return None
    total = document["model_info"]["prunable_parameters"]
    pruned_epochs = [e for e in document["epochs"] if e["scheduled_sparsity"] > 0]
    if not pruned_epochs:
        return False
    for epoch in pruned_epochs:
        zeros = round(epoch["sparsity"] * total)
        if zeros != total - round((1.0 - epoch["scheduled_sparsity"]) * total):
            return False
    return math.isclose(pruned_epochs[-1]["scheduled_sparsity"], spec["pruning"]["sparsity"])


def training_figures(document: dict[str, Any]) -> dict[str, Any]:
    """What a training part reports, read from its metrics.json document."""
    epochs = document["epochs"]
    rates = [e["images_per_second"] for e in epochs]
    steady = rates[1:] or rates  # epoch 1 pays cuDNN autotuning and the workers' start
    return {
        "status": document["summary"]["status"],
        "error": document["summary"]["error"],
        "images_per_second_per_epoch": rates,
        "images_per_second": statistics.median(steady) if steady else None,
        "train_loss_per_epoch": [e["train_loss"] for e in epochs],
        "test_loss_last": epochs[-1]["test_loss"] if epochs else None,
        "peak_memory_mb": max((e.get("peak_memory_mb") or 0 for e in epochs), default=None),
        "peak_memory_reserved_mb": max(
            (e.get("peak_memory_reserved_mb") or 0 for e in epochs), default=None
        ),
        "memory_kind": epochs[-1].get("memory_kind") if epochs else None,
        "sparsity_final": epochs[-1]["sparsity"] if epochs else None,
        "state_memory": document.get("state_memory"),
        "model_info": document.get("model_info"),
        "masks_exact": masks_exact(document) if epochs else None,
        "steps": len(epochs) * document["model_info"].get("steps_per_epoch", 0),
        "total_seconds": document["summary"].get("total_seconds"),
    }


# ---------------------------------------------------------------------------------------------
# Parts (each runs in its own process: `gpu_check.py part NAME`)
# ---------------------------------------------------------------------------------------------


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nvidia_smi(fields: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def part_environment(setting: Setting, work: Path) -> dict[str, Any]:
    import importlib.metadata

    import torch

    from lib.environment import capture_environment

    device = torch.device(setting.device)
    figures: dict[str, Any] = capture_environment(device)
    versions = {}
    for name in ("numpy", "pillow", "kconfiglib", "pytest", "prunebench"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    figures["packages"] = versions
    figures["cpu_count"] = os.cpu_count()
    figures["usable_cpus"] = _usable_cpus()
    import lib

    # The checkout's code, not the copy of the project installed from the wheelhouse.
    figures["project_path"] = str(Path(lib.__file__).resolve().parent.parent)
    from_checkout = figures["project_path"] == str(ROOT)
    if device.type != "cuda":
        figures.update(bf16_supported=None, tf32_supported=None)
        line = f"cpu dry run: {figures['device_name']}, torch {torch.__version__}"
        return {"passed": from_checkout, "line": line, "figures": figures}
    import torch.distributed

    properties = torch.cuda.get_device_properties(device)
    capability = torch.cuda.get_device_capability(device)
    nccl = torch.cuda.nccl.version() if torch.distributed.is_nccl_available() else None
    figures.update(
        driver=_nvidia_smi("driver_version"),
        compute_capability=f"{capability[0]}.{capability[1]}",
        memory_gib=round(properties.total_memory / 2**30, 1),
        device_count=torch.cuda.device_count(),
        nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
        bf16_supported=torch.cuda.is_bf16_supported(),
        tf32_supported=capability >= (8, 0),  # Ampere and later have TF32 tensor cores
    )
    a = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16)
    product = (a @ a.T).float()
    _synchronize(device)
    finite = bool(torch.isfinite(product).all())
    passed = figures["bf16_supported"] and finite and from_checkout
    line = (
        f"{figures['device_name']} (sm {figures['compute_capability']}, "
        f"{figures['memory_gib']} GiB), driver {figures['driver']}, CUDA {figures['cuda']}, "
        f"torch {figures['torch']}, cuDNN {figures['cudnn']}, NCCL {figures['nccl']}, "
        f"bf16 {'yes' if figures['bf16_supported'] else 'NO'}, "
        f"TF32 {'yes' if figures['tf32_supported'] else 'no'}"
    )
    return {"passed": passed, "line": line, "figures": figures}


def gpu_test_files() -> list[str]:
    """The test files that hold `gpu`-marked tests; only these are collected (the others
    import what the GPU machine does not carry: scipy, matplotlib, pexpect...)."""
    return sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").glob("test_*.py")
        if re.search(r"^@pytest\.mark\.gpu\b", path.read_text(encoding="utf-8"), re.MULTILINE)
    )


def pytest_counts(output: str) -> dict[str, int]:
    """pytest's summary line ("3 passed, 1 skipped, 640 deselected in 12.3s") as counts."""
    counts = {}
    for line in output.strip().splitlines()[::-1]:
        found = re.findall(
            r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", line
        )
        if found:
            counts = {
                kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in found
            }
            break
    return counts


def part_pytest_gpu(setting: Setting, work: Path) -> dict[str, Any]:
    files = gpu_test_files()
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    (work / "logs" / "pytest-gpu.out").write_text(result.stdout + result.stderr)
    counts = pytest_counts(result.stdout)
    passed_tests = counts.get("passed", 0)
    skipped = counts.get("skipped", 0)
    if setting.device == "cuda":
        passed = result.returncode == 0 and passed_tests > 0 and skipped == 0
    else:  # no GPU: every gpu test skips; what is checked is that they are collected cleanly
        passed = result.returncode == 0 and skipped > 0
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "no summary line"
    line = f"pytest -m gpu over {len(files)} files: {summary} (exit {result.returncode})"
    return {
        "passed": passed,
        "line": line,
        "figures": {
            "command": command,
            "files": files,
            "counts": counts,
            "returncode": result.returncode,
        },
    }


def part_input_pipeline(setting: Setting, work: Path) -> dict[str, Any]:
    """The real loader alone (no model): how many images per second it can hand to training."""
    import torch

    from lib.data import build_loaders

    spec = run_spec(
        setting, "adamw", work / "runs" / "input-pipeline", epochs=1, steps=setting.steps
    )
    device = torch.device(setting.device)
    loader, _ = build_loaders(spec, device)
    loader.set_epoch(1)
    batches = iter(loader)
    next(batches)  # the workers' start and the decoder's first call are not the pipeline's rate
    _synchronize(device)
    images = count = 0
    start = time.perf_counter()
    for inputs, labels in batches:
        images += labels.shape[0]
        count += 1
        assert inputs.dtype == torch.float32 and inputs.device.type == device.type
    _synchronize(device)
    seconds = time.perf_counter() - start
    rate = images / seconds if seconds > 0 else 0.0
    decode = "GPU (nvjpeg)" if device.type == "cuda" else "CPU"
    figures = {
        "images_per_second": rate,
        "images": images,
        "batches": count,
        "batch": setting.batch,
        "workers": setting.workers,
        "decode": decode,
        "jpeg_size": [setting.jpeg_width, setting.jpeg_height],
        "image_size": setting.image_size,
        "name": (
            f"uint8 input pipeline: {setting.workers} workers reading bytes, {decode} batch "
            f"decode, per-image RandomResizedCrop({setting.image_size}) + flip on the "
            f"{device.type}, normalisation on the {device.type}"
        ),
    }
    line = (
        f"{rate:,.0f} img/s ceiling without training ({count} batches of {setting.batch}, "
        f"{setting.jpeg_width}x{setting.jpeg_height} JPEGs, {decode} decode, "
        f"{setting.workers} workers)"
    )
    return {"passed": count > 0 and rate > 0, "line": line, "figures": figures}


def part_train(method: str):
    def run(setting: Setting, work: Path) -> dict[str, Any]:
        from lib.train import train

        spec = run_spec(
            setting,
            method,
            work / "runs" / f"train-{method}",
            epochs=setting.epochs,
            steps=setting.steps,
        )
        figures = training_figures(train(spec))
        losses = figures["train_loss_per_epoch"]
        falling = len(losses) >= 2 and all(map(math.isfinite, losses)) and losses[-1] < losses[0]
        memory_ok = setting.device != "cuda" or figures["memory_kind"] == "cuda_allocated"
        exact = figures["masks_exact"]
        figures["loss_falling"] = falling
        passed = (
            figures["status"] == "completed"
            and falling
            and exact is not False
            and memory_ok
            and figures["steps"] == setting.epochs * setting.steps
        )
        memory = figures["state_memory"] or {}
        prunable = (figures["model_info"] or {}).get("prunable_parameters") or 1
        pruning_bytes = memory.get("pruning_state_bytes", 0) / prunable
        figures["pruning_state_bytes_per_param"] = pruning_bytes
        if figures["status"] != "completed":
            line = f"run {figures['status']}: {figures['error']}"
        else:
            line = (
                f"{figures['images_per_second']:,.0f} img/s, peak {figures['peak_memory_mb']:,.0f} "
                f"MB, loss {losses[0]:.3f} -> {losses[-1]:.3f} over {figures['steps']} steps, "
                f"extra state {memory.get('extra_bytes_per_prunable_param', 0):.2f} B/param "
                f"(pruning {pruning_bytes:.2f}), masks "
                + {None: "n/a (dense)", True: "exact", False: "NOT exact"}[exact]
            )
        return {"passed": passed, "line": line, "figures": figures}

    return run


def part_bench_optimizers(setting: Setting, work: Path) -> dict[str, Any]:
    output = work / "parts" / "bench-optimizers.data.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_optimizers.py"),
        *setting.bench_args,
        "--json",
        str(output),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    (work / "logs" / "bench-optimizers.out").write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not output.exists():
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {
            "passed": False,
            "line": f"exit {result.returncode}: {tail}",
            "figures": {"command": command},
        }
    data = json.loads(output.read_text())
    methods = data["methods"]
    prune = next(m for m in methods if m["label"].startswith("AdamWPrune"))
    spam = next(m for m in methods if m["label"].startswith("AdamWSPAM"))
    finite = all(math.isfinite(m["amortised_ratio"]) for m in methods)
    line = (
        f"{data['setting']['model']} batch {data['setting']['batch']}: AdamWPrune amortised "
        f"{prune['amortised_ratio']:.3f}x fused AdamW, AdamWSPAM {spam['amortised_ratio']:.3f}x "
        f"({len(methods)} methods, {data['setting']['rounds']} rounds)"
    )
    return {
        "passed": finite and len(methods) >= 3,
        "line": line,
        "figures": {"command": command, **data},
    }


def part_torchrun(setting: Setting, work: Path) -> dict[str, Any]:
    """One run through the matrix runner, launched by torchrun with one process: the rank
    joins a process group of one (nccl on the GPU, gloo on the CPU)."""
    from lib.metrics import read_metrics
    from lib.runner import LOG_FILE, default_child_cmd, run_matrix, torchrun_command

    cuda = setting.device == "cuda"
    if cuda:
        os.environ["NCCL_DEBUG"] = "INFO"  # the rank's log then shows nccl's own start-up
    spec = run_spec(
        setting,
        "adamwprune",
        "",
        epochs=setting.torchrun_epochs,
        steps=setting.torchrun_steps,
        matrix="gpu-check-torchrun",
        ddp_backend="nccl" if cuda else "gloo",
        sync_batchnorm=cuda,  # SyncBatchNorm runs on CUDA only
    )
    matrix_dir = work / "runs" / "torchrun"
    with open(work / "logs" / "torchrun-runner.out", "w") as out:
        code = run_matrix(
            [spec],
            matrix_dir,
            config_snapshot={},
            report_settings={},
            child_cmd=torchrun_command(default_child_cmd(), 1),
            out=out,
        )
    run_dir = matrix_dir / spec.run_id
    log = (run_dir / LOG_FILE).read_text(errors="replace") if (run_dir / LOG_FILE).exists() else ""
    launched = "torch.distributed.run" in log
    nccl_seen = "NCCL INFO" in log
    try:
        document = read_metrics(run_dir / "metrics.json")
    except Exception as e:  # noqa: BLE001 - reported as the part's failure
        return {
            "passed": False,
            "line": f"runner exit {code}; no metrics.json ({e})",
            "figures": {"runner_exit": code, "launched_by_torchrun": launched},
        }
    figures = training_figures(document)
    joined = all("ranks" in e for e in document["epochs"]) and bool(document["epochs"])
    figures.update(
        runner_exit=code,
        launched_by_torchrun=launched,
        process_group_joined=joined,
        backend=spec.train.ddp_backend,
        nccl_log_seen=nccl_seen,
        run_dir=str(run_dir),
    )
    passed = (
        code == 0
        and figures["status"] == "completed"
        and launched
        and joined
        and (nccl_seen or not cuda)
        and figures["masks_exact"] is not False
    )
    line = (
        f"runner exit {code}, torchrun {'yes' if launched else 'NO'}, {spec.train.ddp_backend} "
        f"group of one {'joined' if joined else 'NOT joined'}"
        + (f", nccl log {'seen' if nccl_seen else 'NOT seen'}" if cuda else "")
        + (f", {figures['images_per_second']:,.0f} img/s" if figures["images_per_second"] else "")
        + ", masks "
        + {None: "n/a", True: "exact", False: "NOT exact"}[figures["masks_exact"]]
    )
    return {"passed": passed, "line": line, "figures": figures}


def _tiny_convnet(spec, num_classes):
    """The CPU dry run's model under torch.compile: inductor compiles ResNet-18 for minutes on
    a small CPU; conv, batch norm and linear layers as the real models have."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def part_compile(setting: Setting, work: Path) -> dict[str, Any]:
    """train() with compile on; the number of compiled graphs is read after every epoch (as
    tests/test_compile.py does) and must not grow after the first."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    import lib.train
    from lib.train import _Run, train

    if setting.device != "cuda":
        lib.train.build_model = _tiny_convnet
    graphs: list[int] = []
    evaluate = _Run.evaluate

    def counting_evaluate(self, epoch):
        result = evaluate(self, epoch)
        graphs.append(counters["stats"]["unique_graphs"])
        return result

    _Run.evaluate = counting_evaluate
    torch._dynamo.reset()
    counters.clear()
    spec = run_spec(
        setting,
        "adamwprune",
        work / "runs" / "compile",
        epochs=setting.compile_epochs,
        steps=setting.compile_steps,
        compile=True,
    )
    figures = training_figures(train(spec))
    rates = figures["images_per_second_per_epoch"]
    figures.update(
        graphs_after_epoch=graphs,
        model=setting.model if setting.device == "cuda" else "tiny convnet (cpu dry run)",
        first_epoch_seconds=None,
    )
    document = json.loads((Path(spec.out_dir) / "metrics.json").read_text())
    if document["epochs"]:
        figures["first_epoch_seconds"] = document["epochs"][0]["epoch_seconds"]
    no_recompile = (
        len(graphs) == setting.compile_epochs
        and graphs[0] > 0
        and all(g == graphs[0] for g in graphs)
    )
    figures["no_recompilation"] = no_recompile
    passed = (
        figures["status"] == "completed" and no_recompile and figures["masks_exact"] is not False
    )
    if figures["status"] != "completed":
        line = f"run {figures['status']}: {figures['error']}"
    else:
        line = (
            f"compiled graphs after each epoch {graphs} "
            f"({'no recompilation' if no_recompile else 'RECOMPILED'}), first epoch "
            f"{figures['first_epoch_seconds']:.0f} s, then {statistics.median(rates[1:] or rates):,.0f} "
            "img/s"
        )
    return {"passed": passed, "line": line, "figures": figures}


PART_FUNCTIONS = {
    "environment": part_environment,
    "pytest-gpu": part_pytest_gpu,
    "input-pipeline": part_input_pipeline,
    **{f"resnet50-{m}": part_train(m) for m in TRAIN_METHODS},
    "bench-optimizers": part_bench_optimizers,
    "torchrun-nccl": part_torchrun,
    "compile": part_compile,
}


def run_part(name: str, setting: Setting, work: Path) -> int:
    """Entry point of a part's own process: writes parts/NAME.json."""
    result = PART_FUNCTIONS[name](setting, work)
    path = work / "parts" / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return EXIT_PASSED if result["passed"] else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def no_gpu_line() -> str | None:
    """One line saying why this machine cannot run the GPU check, or None when it can."""
    try:
        import torch
    except ImportError as e:
        return f"gpu-check: torch is not importable by {sys.executable} ({e})"
    if not torch.cuda.is_available():
        return (
            f"gpu-check: no CUDA GPU visible to {sys.executable} (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); nothing checked; --cpu-dry-run runs "
            "the parts on the CPU"
        )
    return None


def last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


def execute_part(name: str, setting: Setting, work: Path, seconds_left: float) -> dict[str, Any]:
    limit = min(setting.limit(name), seconds_left)
    if limit < 20:
        return {
            "status": STATUS_SKIPPED,
            "line": f"not run: {seconds_left:.0f} s of the budget left",
            "seconds": 0.0,
            "figures": {},
        }
    log = work / "logs" / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "part", name, "--work", str(work)]
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)  # the part and every process it started
            process.wait()
            code = None
    seconds = time.perf_counter() - start
    fragment = work / "parts" / f"{name}.json"
    if code is None:
        return {
            "status": STATUS_FAIL,
            "line": f"timed out after {limit:.0f} s ({last_line(log)})",
            "seconds": seconds,
            "figures": {},
            "log": str(log),
        }
    if not fragment.exists():
        return {
            "status": STATUS_FAIL,
            "line": f"exit {code}: {last_line(log)}",
            "seconds": seconds,
            "figures": {},
            "log": str(log),
        }
    result = json.loads(fragment.read_text())
    return {
        "status": STATUS_PASS if result["passed"] and code == 0 else STATUS_FAIL,
        "line": result["line"],
        "seconds": seconds,
        "figures": result["figures"],
        "log": str(log),
    }


def goals(parts: dict[str, dict[str, Any]], setting: Setting) -> list[dict[str, Any]]:
    """The issue's two goals, with what was measured (None where the part did not run)."""
    out = []
    bench = parts.get("bench-optimizers", {}).get("figures", {})
    ratio = next(
        (
            m["amortised_ratio"]
            for m in bench.get("methods", [])
            if m["label"].startswith("AdamWPrune")
        ),
        None,
    )
    out.append(
        {
            "goal": f"AdamWPrune amortised step <= {GOAL_PRUNE_RATIO}x fused AdamW on the GPU",
            "target": GOAL_PRUNE_RATIO,
            "measured": ratio,
            "met": None if ratio is None else ratio <= GOAL_PRUNE_RATIO,
            "note": "" if setting.device == "cuda" else "cpu dry run: not the goal's setting",
        }
    )
    ceiling = parts.get("input-pipeline", {}).get("figures", {}).get("images_per_second")
    rates = {
        m: parts.get(f"resnet50-{m}", {}).get("figures", {}).get("images_per_second")
        for m in TRAIN_METHODS
    }
    target, named = float(GOAL_IMAGES_PER_SECOND), "3,000 img/s"
    if ceiling is not None and ceiling < GOAL_IMAGES_PER_SECOND:
        target = ceiling
        named = (
            f"the input pipeline's measured ceiling, {ceiling:,.0f} img/s (below "
            f"{GOAL_IMAGES_PER_SECOND:,})"
        )
    measured = rates["adamw"]
    out.append(
        {
            "goal": f"ResNet-50 training through the real input pipeline at >= {named}",
            "target": target,
            "measured": measured,
            "measured_per_method": rates,
            "input_pipeline_ceiling": ceiling,
            "met": None if measured is None else measured >= target,
            "note": "" if setting.device == "cuda" else "cpu dry run: not the goal's setting",
        }
    )
    return out


def print_line(status: str, name: str, line: str, seconds: float) -> None:
    label = {STATUS_PASS: "PASS", STATUS_FAIL: "FAIL", STATUS_SKIPPED: "SKIP"}.get(status, status)
    print(f"{label:4s}  {name:18s} {line}  ({seconds:.0f} s)", flush=True)


def run_check(args: argparse.Namespace) -> int:
    setting = cpu_dry_setting() if args.cpu_dry_run else gpu_setting()
    if args.budget is not None:
        setting = dataclasses.replace(setting, budget=args.budget)
    if args.data_root is not None:
        setting = dataclasses.replace(setting, data_root=str(Path(args.data_root).resolve()))
    selected = PARTS if not args.parts else tuple(args.parts.split(","))
    unknown = [p for p in selected if p not in PARTS]
    if unknown:
        print(
            f"gpu-check: --parts {args.parts!r}: unknown part {unknown[0]!r}; accepted: "
            f"{', '.join(PARTS)}",
            flush=True,
        )
        return EXIT_SETUP
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out_path = Path(args.out) if args.out else RESULTS_ROOT / stamp / "gpu-check.json"
    out_path = out_path if out_path.is_absolute() else Path.cwd() / out_path
    work = out_path.parent
    used = [
        sub for sub in ("parts", "runs") if (work / sub).is_dir() and any((work / sub).iterdir())
    ]
    if used:
        # Finished runs there would be reported again instead of measured.
        print(
            f"gpu-check: --out {out_path}: {work / used[0]} already holds an earlier check's "
            "results; give a file in a new or empty folder",
            flush=True,
        )
        return EXIT_SETUP
    for sub in ("parts", "logs", "runs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "setting.json").write_text(json.dumps(dataclasses.asdict(setting), indent=2) + "\n")
    print(
        f"gpu-check ({setting.mode}): {len(selected)} parts, budget {setting.budget:.0f} s; "
        f"logs and runs under {work}",
        flush=True,
    )
    clock = time.perf_counter()
    parts: dict[str, dict[str, Any]] = {}
    for name in PARTS:
        if name not in selected:
            parts[name] = {
                "status": STATUS_NOT_RUN,
                "line": "not selected",
                "seconds": 0.0,
                "figures": {},
            }
            continue
        left = setting.budget - (time.perf_counter() - clock)
        parts[name] = execute_part(name, setting, work, left)
        print_line(parts[name]["status"], name, parts[name]["line"], parts[name]["seconds"])
    ran = [p for p in parts.values() if p["status"] != STATUS_NOT_RUN]
    passed = all(p["status"] == STATUS_PASS for p in ran)
    document = {
        "schema": SCHEMA_VERSION,
        "mode": setting.mode,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": time.perf_counter() - clock,
        "setting": dataclasses.asdict(setting),
        "environment": parts["environment"]["figures"],
        "parts": parts,
        "goals": goals(parts, setting),
        "passed": passed,
    }
    out_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    for goal in document["goals"]:
        measured = goal["measured"]
        verdict = {None: "not measured", True: "met", False: "NOT met"}[goal["met"]]
        value = (
            ""
            if measured is None
            else f": {measured:,.3f}"
            if measured < 100
            else f": {measured:,.0f}"
        )
        note = f" ({goal['note']})" if goal["note"] else ""
        print(f"goal  {goal['goal']}{value} -> {verdict}{note}", flush=True)
    count = sum(p["status"] == STATUS_PASS for p in ran)
    print(
        f"gpu-check: {count}/{len(ran)} parts passed in {document['seconds']:.0f} s; figures in "
        f"{out_path}",
        flush=True,
    )
    return EXIT_PASSED if passed else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run the check")
    run.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="every part on the CPU at tiny sizes (tests the check itself)",
    )
    run.add_argument(
        "--out", help="the JSON file (default results/gpu-check/<time>/gpu-check.json)"
    )
    run.add_argument("--parts", help=f"comma-separated subset of: {', '.join(PARTS)}")
    run.add_argument("--budget", type=float, help="seconds for the whole check")
    run.add_argument(
        "--data-root", help=f"where the generated JPEGs are kept (default {DATA_ROOT})"
    )
    sub.add_parser("preflight", help="exit 3 with one line when no GPU is visible")
    part = sub.add_parser("part", help="(internal) run one part in this process")
    part.add_argument("name", choices=PARTS)
    part.add_argument("--work", required=True, type=Path, help="the check's folder")
    args = parser.parse_args(argv)
    if args.action == "part":
        setting = Setting.from_dict(json.loads((args.work / "setting.json").read_text()))
        return run_part(args.name, setting, args.work)
    if args.action == "preflight" or not args.cpu_dry_run:
        problem = no_gpu_line()
        if problem is not None:
            print(problem, flush=True)
            return EXIT_SETUP if "not importable" in problem else EXIT_NO_GPU
        if args.action == "preflight":
            return EXIT_PASSED
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
