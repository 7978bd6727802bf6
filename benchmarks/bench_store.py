"""What reading a hostile metrics.json costs through the results store (issue 23).

A results directory others can write may hold a metrics.json built to hurt its readers: 10,000
nested arrays, 50,000 epoch records where the plan has 3, a file just over the size limit, a
list where an object belongs. Each must be refused (excluded with its one-line reason) in
under a second, so that one planted file cannot stall `make status` or `make report`. This
times `lib.store.MatrixStore.read_metrics` on each, side by side in one process with an
honest 100-epoch file, best of --repeat reads:

    python benchmarks/bench_store.py            # the figures in docs/benchmarks.md
    python benchmarks/bench_store.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_SECONDS = 1.0  # issue 23: a hostile metrics.json is read (and refused) within a second


def honest_document(run_id: str, epochs: int) -> dict:
    from lib.metrics import SCHEMA_VERSION

    records = [
        {
            "epoch": i + 1,
            "test_top1": 50.0 + i * 0.1,
            "test_top5": 80.0,
            "sparsity": 0.5,
            "epoch_seconds": 100.0,
            "train_loss": 1.0,
            "peak_memory_mb": 1000.0,
            "memory_kind": "cuda_allocated",
        }
        for i in range(epochs)
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "identity": {"seed": 0},
        "summary": {"status": "completed"},
        "epochs": records,
    }


def write_cases(matrix_dir: Path) -> dict[str, tuple[str, dict]]:
    """case name -> (run id, planned spec) with each run's metrics.json written."""
    from lib.store import LIMITS, METRICS_FILE

    cases: dict[str, str] = {}

    def put(name: str, run_id: str, text: str) -> None:
        run_dir = matrix_dir / run_id
        run_dir.mkdir(parents=True)
        (run_dir / METRICS_FILE).write_text(text)
        cases[name] = run_id

    put("honest, 100 epochs", "honest", json.dumps(honest_document("honest", 100)))
    put("10,000 nested arrays", "nested", "[" * 10_000 + "]" * 10_000)
    deep = '{"a":' * 5_000 + "1" + "}" * 5_000
    put("5,000 nested objects", "deep", deep)
    many = honest_document("many", 0)
    many["epochs"] = [{"epoch": i + 1, "test_top1": 50.0, "test_top5": 80.0} for i in range(50_000)]
    put("50,000 epochs, 3 planned", "many", json.dumps(many, separators=(",", ":")))
    put("a list, not an object", "list", json.dumps(list(range(1_000_000))))
    # Just within the size limit: valid JSON of the right shape, 3 epochs, and a summary
    # padded with numbers (the most a reader must parse before any check can refuse it).
    padded = honest_document("padded", 3)
    pad = (LIMITS[METRICS_FILE] - len(json.dumps(padded)) - 64) // 3  # "0, " each
    padded["summary"]["padding"] = [0] * pad
    put(
        f"{LIMITS[METRICS_FILE] / 2**20:.0f} MiB of numbers (within the limit)",
        "padded",
        json.dumps(padded),
    )
    over = LIMITS[METRICS_FILE] + 1
    put(f"{over / 2**20:.0f} MiB (over the limit)", "huge", " " * over)
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    args = parser.parse_args(argv)
    repeat = 2 if args.quick else args.repeat

    from lib.store import MatrixStore, StoreError

    planned = {"train": {"epochs": 3}}
    honest_plan = {"train": {"epochs": 100}}
    with tempfile.TemporaryDirectory() as tmp:
        matrix_dir = Path(tmp) / "m"
        cases = write_cases(matrix_dir)
        store = MatrixStore(matrix_dir)
        rows = []
        for name, run_id in cases.items():
            best, outcome = float("inf"), ""
            for _ in range(repeat):
                start = time.perf_counter()
                try:
                    store.read_metrics(run_id, honest_plan if run_id == "honest" else planned)
                    outcome = "read"
                except StoreError as e:
                    outcome = "refused: " + str(e).split(": ", 1)[-1][:60]
                best = min(best, time.perf_counter() - start)
            rows.append((name, best, outcome))
        store.close()
    width = max(len(r[0]) for r in rows)
    print(f"Reading one metrics.json through lib.store (best of {repeat})")
    print(f"{'file'.ljust(width)}  {'seconds':>8}  outcome")
    for name, seconds, outcome in rows:
        print(f"{name.ljust(width)}  {seconds:8.4f}  {outcome}")
    slowest = max(s for n, s, _ in rows if not n.startswith("honest"))
    verdict = "met" if slowest < GOAL_SECONDS else "MISSED"
    print(f"slowest hostile file: {slowest:.4f} s (goal < {GOAL_SECONDS:.0f} s: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
