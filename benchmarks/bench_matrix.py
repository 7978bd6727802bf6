"""What the matrix commands cost on a matrix of thousands of finished runs (issue 30).

Generates a genuine plan of defconfigs/resnet50-all-optimizers with enough seeds for --runs
runs in a temporary results directory, writes every run's run.json and a
metrics.json of 100 epochs through the project's own writers (RunSpec.to_json,
lib.metrics.build_document and write_metrics_document, per-layer sparsity measured on a real
ResNet-50's prunable layers), lets `lib.cli test-matrix` write matrix.json (every run is
finished, so it trains nothing), then times each command a user runs on such a matrix as its
own process, the way make runs it:

    dry run    python -m lib.cli dry-run
    status     python -m lib.cli status
    continue   python -m lib.cli continue     (a finished matrix: nothing to train)
    report     python -m scripts.report

Each is timed warm (the tree was just written, so it is in the page cache) twice: the first
command reads every metrics.json and writes the run index (lib/run_index.py), the second pass
is what every later command costs. The dry run is then timed beside a copy of the matrix as a
second matrix in the same results directory: its duration estimate reads only that matrix's
speeds.json. Unless --no-cold, the commands are timed once more on a
copy of the tree (cp -a: times kept, so its index too) after asking the kernel to drop its
page cache (needs root; without it the fresh copy is all there is, and the line says so).
Peak memory is the process's maximum resident set (wait4); the tree is generated in a child
process so that this one, which starts the commands, stays small.

    python benchmarks/bench_matrix.py                 # >= 2,000 runs of 100 epochs, warm + cold
    python benchmarks/bench_matrix.py --runs 200      # >= 200 runs (whole seeds)
    python benchmarks/bench_matrix.py --quick         # one seed of 3 epochs, warm only
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFCONFIG = "resnet50-all-optimizers"
# Goals of issue 30 at 2,000 runs on a 2-core machine (seconds; the report also in MB).
GOALS = {"dry run": 3.0, "status": 3.0, "continue": 3.0, "report": 20.0}
REPORT_MB_GOAL = 400


def layer_names() -> list[str]:
    """The prunable layers of a real ResNet-50, as measure_sparsity names them."""
    from torchvision.models import resnet50

    from lib.pruning import prunable_parameters

    return [name for name, _ in prunable_parameters(resnet50())]


def write_config(folder: Path, seeds: int, epochs: int) -> Path:
    """A .config from the defconfig with `seeds` seeds and results under `folder`."""
    from lib import config as cfg

    source = (cfg.DEFCONFIG_DIR / DEFCONFIG).read_text(encoding="utf-8")
    extra = (
        f'CONFIG_RESULTS_DIR="{folder / "results"}"\n'
        f'CONFIG_DATA_DIR="{folder / "data"}"\n'
        f"CONFIG_MATRIX_SEED_COUNT={seeds}\n"
        f"CONFIG_TRAIN_EPOCHS={epochs}\n"
        f"CONFIG_PRUNING_END_EPOCH={max(1, epochs * 4 // 5)}\n"
    )
    for split in ("train", "val"):  # the runner checks the layout before it plans
        images = folder / "data" / "imagenet" / split / "n01440764"
        images.mkdir(parents=True, exist_ok=True)
        (images / "0.JPEG").write_bytes(b"")
    defconfig = folder / "defconfig"
    defconfig.write_text(source + extra, encoding="utf-8")
    kconf = cfg.load_kconfig_with(defconfig)
    config_path = folder / ".config"
    kconf.write_config(str(config_path), header="")
    return config_path


def epoch_records(spec, names: list[str], rng: random.Random) -> list[dict]:
    """Plausible per-epoch records of a finished run: every key the trainer writes on one
    CUDA device without a validation split (lib/train.py)."""
    target = spec.pruning.target
    epochs = spec.train.epochs
    records = []
    for epoch in range(1, epochs + 1):
        ramp = min(1.0, epoch / max(1, epochs // 2))
        sparsity = target * ramp
        # accuracies as the trainer computes them: 100 * correct / images
        correct = round(500 * (76.0 * (1 - math.exp(-epoch / 15)) + rng.gauss(0, 0.3)))
        top1 = 100.0 * correct / 50000
        records.append(
            {
                "epoch": epoch,
                "train_loss": 4.0 * math.exp(-epoch / 20) + 0.5,
                "train_top1": 100.0 * min(1268355, round(12811.67 * (top1 + 5))) / 1281167,
                "train_images": 1281167,
                "lr": 0.001 * (1 - epoch / (epochs + 1)),
                "test_loss": 4.0 * math.exp(-epoch / 25) + 0.8,
                "test_top1": top1,
                "test_top5": 100.0 * min(49950, correct + 8500) / 50000,
                "sparsity": sparsity,
                "sparsity_per_layer": {
                    name: min(1.0, max(0.0, sparsity + rng.gauss(0, 0.02))) for name in names
                },
                "scheduled_sparsity": sparsity,
                # measured figures at the precision the trainer records them (lib/train.py,
                # lib/memory.py)
                "epoch_seconds": round(1500.0 + rng.random() * 60, 3),
                "train_seconds": round(1400.0 + rng.random() * 60, 3),
                "images_per_second": round(900.0 + rng.random() * 30, 1),
                "peak_memory_mb": round(30000.0 + rng.random() * 100, 2),
                "peak_memory_reserved_mb": round(32000.0 + rng.random() * 100, 2),
                "device_memory_used_mb": round(33500.0 + rng.random() * 100, 2),
                "memory_kind": "cuda_allocated",
                "train_steps": 5004,
                "test_images": 50000,
                "parameters_nonzero": round(25_557_032 * (1 - 0.92 * sparsity)),
                "macs_nonzero": round(4_089_184_256 * (1 - 0.9 * sparsity)),
            }
        )
    return records


def generate(folder: Path, runs: int, epochs: int) -> tuple[Path, Path, int]:
    """Write the tree; return (.config, matrix directory, number of runs)."""
    from lib import config as cfg
    from lib.matrix import plan
    from lib.metrics import METRICS_FILE, STATUS_COMPLETED, build_document, write_metrics_document
    from lib.runner import RUN_FILE

    per_seed = len(plan(cfg.load(write_config(folder, 1, epochs))))
    seeds = max(1, math.ceil(runs / per_seed))
    config_path = write_config(folder, seeds, epochs)
    config = cfg.load(config_path)
    specs = plan(config)
    names = layer_names()
    rng = random.Random(0)
    matrix_dir = Path(config.matrix.results_dir) / config.matrix.name
    for spec in specs:
        run_dir = matrix_dir / spec.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_FILE).write_text(spec.to_json() + "\n", encoding="utf-8")
        document = build_document(spec, epoch_records(spec, names, rng), status=STATUS_COMPLETED)
        write_metrics_document(run_dir / METRICS_FILE, document)
    # The runner writes matrix.json; every run is finished, so it trains nothing.
    env = {**os.environ, "KCONFIG_CONFIG": str(config_path)}
    subprocess.run(
        [sys.executable, "-m", "lib.cli", "test-matrix"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return config_path, matrix_dir, len(specs)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds, peak resident MB, CPU seconds: user + system) of one command, which
    must succeed. On a shared machine load stretches the wall time; the CPU time stays."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # maxrss in KB


def measure(config_path: Path, matrix_dir: Path) -> dict[str, tuple[float, float, float]]:
    env = {**os.environ, "KCONFIG_CONFIG": str(config_path), "MPLBACKEND": "Agg"}
    results_dir = str(matrix_dir.parent)
    py = sys.executable
    commands = {
        "dry run": [py, "-m", "lib.cli", "dry-run"],
        "status": [py, "-m", "lib.cli", "status", "--results-dir", results_dir],
        "continue": [
            py,
            "-m",
            "lib.cli",
            "continue",
            "--results-dir",
            results_dir,
            "--matrix",
            matrix_dir.name,
        ],
        "report": [
            py,
            "-m",
            "scripts.report",
            "--results-dir",
            results_dir,
            "--matrix",
            matrix_dir.name,
        ],
    }
    return {name: timed(argv, env) for name, argv in commands.items()}


def dry_run_beside_another(
    config_path: Path, matrix_dir: Path
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Issue 30, item 2: the dry run's seconds with a copy of the matrix beside it as a second
    matrix in the same results directory, the first time and then. The duration estimate
    reads the other matrix's speeds.json (lib/run_index.py) and nothing else of it; the copy
    starts without one, as a tree from before it does."""
    from lib.run_index import SPEEDS_FILE

    other = matrix_dir.with_name(matrix_dir.name + "-other")
    shutil.copytree(matrix_dir, other)
    (other / SPEEDS_FILE).unlink(missing_ok=True)
    env = {**os.environ, "KCONFIG_CONFIG": str(config_path)}
    argv = [sys.executable, "-m", "lib.cli", "dry-run"]
    return timed(argv, env), timed(argv, env)


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def tree_megabytes(matrix_dir: Path) -> float:
    return sum(p.stat().st_size for p in matrix_dir.rglob("*") if p.is_file()) / 1e6


def metrics_kilobytes(matrix_dir: Path) -> float:
    sizes = [p.stat().st_size for p in matrix_dir.glob("*/metrics.json")]
    return max(sizes) / 1e3


def row(label: str, figures: dict[str, tuple[float, float, float]]) -> str:
    cells = [f"{figures[name][0]:.1f} s" for name in ("dry run", "status", "continue")]
    seconds, mb, _ = figures["report"]
    cells.append(f"{seconds:.1f} s, {mb:,.0f} MB")
    return f"| {label} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=2000, help="at least this many runs (whole seeds)"
    )
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="one seed of 3 epochs, warm only")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache figure")
    parser.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        config_path, matrix_dir, runs = generate(Path(args.generate), args.runs, args.epochs)
        print(f"{config_path}\t{matrix_dir}\t{runs}")
        return
    if args.quick:
        args.runs, args.epochs, args.no_cold = 1, 3, True
    print(f"== matrix commands on {DEFCONFIG}, {args.epochs} epochs per run")
    print("| runs | dry run | status | continue (all done) | report |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        # In a child process: this one stays small (no torch), so the commands it starts do
        # not inherit its peak RSS (Linux carries it over fork and exec into ru_maxrss).
        made = subprocess.run(
            [sys.executable, __file__, "--generate", str(folder), "--runs", str(args.runs),
             "--epochs", str(args.epochs)],
            cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
        config_path, matrix_dir, runs = made.stdout.strip().splitlines()[-1].split("\t")
        config_path, matrix_dir, runs = Path(config_path), Path(matrix_dir), int(runs)
        generated = time.perf_counter() - started
        first = measure(config_path, matrix_dir)
        print(row(f"{runs:,} (warm, first command builds the run index)", first))
        warm = measure(config_path, matrix_dir)
        print(row(f"{runs:,} (warm, run index in place)", warm))
        print(
            "CPU seconds (user + system) of that pass, which load on a shared machine does not "
            "stretch as it does the wall time: "
            + ", ".join(f"{name} {figures[2]:.1f} s" for name, figures in warm.items())
        )
        cold_note = None
        if not args.no_cold:
            copy = folder / "copy"
            shutil.copytree(folder / "results", copy / "results")  # copy2: keeps mtimes
            shutil.copy(config_path, copy / ".config")
            text = (copy / ".config").read_text(encoding="utf-8")
            (copy / ".config").write_text(
                text.replace(str(folder / "results"), str(copy / "results")), encoding="utf-8"
            )
            dropped = drop_page_cache()
            cold = measure(copy / ".config", copy / "results" / matrix_dir.name)
            label = "cold: page cache dropped" if dropped else "fresh copy, cache not dropped"
            print(row(f"{runs:,} ({label})", cold))
            if not dropped:
                cold_note = "(not root: the copy was just written, so much of it is cached)"
        first_beside, beside = dry_run_beside_another(config_path, matrix_dir)
        alone = warm["dry run"]
        print(
            f"dry run beside a second matrix of {runs:,} runs (a copy of this one, without its "
            f"speeds.json): {first_beside[0]:.1f} s the first time (that matrix's speeds.json "
            f"is built from its run index), then {beside[0]:.1f} s ({beside[2]:.1f} s CPU); "
            f"alone {alone[0]:.1f} s ({alone[2]:.1f} s CPU)"
        )
        print(
            f"tree {tree_megabytes(matrix_dir):,.0f} MB, largest metrics.json "
            f"{metrics_kilobytes(matrix_dir):,.0f} KB, generated in {generated:.0f} s"
        )
        if cold_note:
            print(cold_note)
        verdicts = [
            f"{name} {warm[name][0]:.1f} s (goal < {goal:.0f} s): "
            + ("met" if warm[name][0] < goal else "NOT MET")
            for name, goal in GOALS.items()
        ]
        mb = warm["report"][1]
        verdicts.append(
            f"report {mb:,.0f} MB (goal < {REPORT_MB_GOAL} MB): "
            + ("met" if mb < REPORT_MB_GOAL else "NOT MET")
        )
        print(f"goals at {runs:,} runs: " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
