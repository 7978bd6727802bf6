"""Hand-made result trees for the report tests: a matrix.json plus metrics.json per run,
written exactly as the runner and trainer write them, with numbers chosen by hand."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lib.metrics import SCHEMA_VERSION, STATUS_COMPLETED, summarize
from lib.spec import DataSpec, ModelSpec, OptimizerSpec, PruningSpec, RunSpec, TrainSpec
from lib.store import seal

BASELINE = "adamwspam_magnitude"
CANDIDATE = "adamwprune-adamw_state-hybrid"
PARAMETERS = 25_557_032
PRUNABLE = 25_502_912
MACS = 1_305_000_000  # hand-made: the prunable weights' MACs of one image


# --------------------------------------------------------------------------- fixture builders


@dataclass
class FakeRun:
    """One run's hand-made results: test top-1 per epoch and measured sparsity per epoch."""

    optimizer: str  # "adamwprune" or "adamwspam" (or any OPTIMIZERS name)
    pruning: str  # "state", "magnitude", "none", ...
    target: float
    seed: int
    top1: list[float]
    sparsity: list[float] | None = None  # default: target from epoch 1
    status: str = STATUS_COMPLETED  # what the trainer's summary says; None: no metrics.json
    plan_status: str | None = None  # what matrix.json says; default = status
    error: str | None = None
    log_tail: str | None = None
    memory_kind: str = "cuda_allocated"
    peak_mb: float = 12602.5
    reserved_mb: float | None = 13000.0
    optimizer_state_bytes: int = 2 * 4 * PARAMETERS
    pruning_state_bytes: int = 0
    planned_epochs: int | None = None
    write_metrics: bool = True
    extra: dict = field(default_factory=dict)
    prune_base: str = "adamw"  # AdamWPrune's base optimizer

    def spec(self, matrix: str) -> RunSpec:
        pruning = PruningSpec(method=self.pruning, sparsity=self.target)
        optimizer = OptimizerSpec(
            name=self.optimizer, prune_score="hybrid", prune_base=self.prune_base
        )
        epochs = self.planned_epochs or len(self.top1)
        return RunSpec(
            matrix=matrix,
            model=ModelSpec(name="resnet50", stem="cifar"),
            data=DataSpec(name="cifar100", image_size=32),
            train=TrainSpec(epochs=epochs, batch_size=128),
            optimizer=optimizer,
            pruning=pruning,
            seed=self.seed,
        )

    def epochs(self) -> list[dict]:
        sparsity = self.sparsity or [self.target] * len(self.top1)
        records = []
        for i, (acc, sp) in enumerate(zip(self.top1, sparsity, strict=True), start=1):
            records.append(
                {
                    "epoch": i,
                    "train_loss": 1.0,
                    "train_top1": acc,
                    "test_loss": 1.5,
                    "test_top1": acc,
                    "test_top5": min(100.0, acc + 15.0),
                    "sparsity": sp,
                    "sparsity_per_layer": {"conv1.weight": sp},
                    "parameters_nonzero": PARAMETERS - round(sp * PRUNABLE),
                    "macs_nonzero": round(MACS * (1 - sp)),
                    "scheduled_sparsity": sp,
                    "lr": 0.001,
                    "epoch_seconds": 10.0,
                    "images_per_second": 500.0,
                    "peak_memory_mb": self.peak_mb,
                    "peak_memory_reserved_mb": (
                        self.reserved_mb if self.memory_kind == "cuda_allocated" else None
                    ),
                    "memory_kind": self.memory_kind,
                }
            )
        return records


def write_matrix(
    root: Path,
    name: str,
    runs: list[FakeRun],
    baseline: str = BASELINE,
    candidate: str = "",
    plots: list[str] | None = None,
    config: dict[str, str] | None = None,
) -> Path:
    matrix_dir = root / name
    matrix_dir.mkdir(parents=True)
    entries = []
    for run in runs:
        spec = run.spec(name)
        run_dir = matrix_dir / spec.run_id
        run_dir.mkdir()
        (run_dir / "run.json").write_text(spec.to_json())
        plan_status = run.plan_status or run.status
        if run.write_metrics:
            epochs = run.epochs()
            target = run.target if run.pruning != "none" else 0.0
            metrics = {
                "schema_version": SCHEMA_VERSION,
                "run_id": spec.run_id,
                "matrix": name,
                "identity": {
                    "model": "resnet50",
                    "stem": "cifar",
                    "dataset": "cifar100",
                    "optimizer": run.optimizer,
                    "optimizer_label": spec.optimizer.label,
                    "base_optimizer": "adamw" if run.optimizer == "adamwprune" else None,
                    "prune_score": "hybrid" if run.pruning == "state" else None,
                    "pruning": run.pruning,
                    "target_sparsity": target,
                    "seed": run.seed,
                },
                "spec": spec.to_dict(),
                "environment": {
                    "device": "cuda" if run.memory_kind == "cuda_allocated" else "cpu",
                    "device_name": "NVIDIA H100 80GB HBM3"
                    if run.memory_kind == "cuda_allocated"
                    else "cpu",
                },
                "model_info": {
                    "parameters": PARAMETERS,
                    "prunable_parameters": PRUNABLE,
                    "parameters_total": PARAMETERS,
                    "macs_dense": MACS,
                },
                "state_memory": {
                    "optimizer_state_bytes": run.optimizer_state_bytes,
                    "pruning_state_bytes": run.pruning_state_bytes,
                    "extra_bytes_per_prunable_param": run.pruning_state_bytes / PRUNABLE,
                },
                "epochs": epochs,
                "summary": summarize(
                    epochs,
                    target,
                    status=run.status,
                    error=run.error,
                    model_info={"parameters_total": PARAMETERS, "macs_dense": MACS},
                    val_target=spec.data.val_target,
                ),
            }
            metrics.update(run.extra)
            (run_dir / "metrics.json").write_text(json.dumps(metrics))
        entries.append(
            {
                "run_id": spec.run_id,
                "method_key": spec.method_key,
                "status": plan_status,
                "error": run.error,
                "log_tail": run.log_tail,
                "attempts": 1,
                "started_at": None,
                "finished_at": None,
                "spec": spec.to_dict(),
            }
        )
    plan = {
        "schema_version": 1,
        "name": name,
        "created_at": "2026-11-25T12:00:00Z",
        "updated_at": "2026-11-25T13:00:00Z",
        "config": config or {"CONFIG_TRAIN_EPOCHS": "12", "CONFIG_ADAMWPRUNE_BETA1": "0.9"},
        "report": {
            "baseline": baseline,
            "candidate": candidate,
            "plots": plots if plots is not None else list(report_plot_kinds()),
        },
        "runs": entries,
    }
    # sealed as the runner seals its plans (lib/store.py): the report reads only a sealed plan
    (matrix_dir / "matrix.json").write_text(json.dumps(seal(plan), indent=2))
    return matrix_dir


def report_plot_kinds() -> tuple[str, ...]:
    from scripts.report.plots import PLOT_KINDS

    return PLOT_KINDS


def ramp(final_values: list[float], warmup: list[float]) -> list[float]:
    return warmup + final_values


# --------------------------------------------------------------------------- the seed's table

# 12 epochs; sparsity reaches the target at epoch 3. Epoch 2 has the highest accuracy of all
# but is *denser* than the target, so it must never count as the best.
DENSE_PEAK = 99.0
CAND_50 = [60.0, DENSE_PEAK, 70.0, 72.0, 73.0, 74.0, 74.54, 74.3, 74.2, 74.1, 74.0, 74.08]
BASE_50 = [60.0, DENSE_PEAK, 70.0, 71.0, 72.0, 73.22, 73.0, 72.9, 73.1, 73.0, 72.95, 72.97]
CAND_70 = [55.0, DENSE_PEAK, 68.0, 70.0, 72.30, 72.0, 71.9, 72.1, 72.0, 71.8, 71.9, 72.0]
BASE_70 = [55.0, DENSE_PEAK, 69.0, 71.0, 72.98, 72.5, 72.6, 72.7, 72.8, 72.4, 72.5, 72.6]
SPARSITY_RAMP = [0.1, 0.3]  # epochs 1-2; the target from epoch 3


def ramp_sparsity(target: float, n: int) -> list[float]:
    return [s * target for s in SPARSITY_RAMP] + [target] * (n - len(SPARSITY_RAMP))


def seed_like_runs() -> list[FakeRun]:
    runs = []
    for target, cand, base in ((0.5, CAND_50, BASE_50), (0.7, CAND_70, BASE_70)):
        runs.append(
            FakeRun("adamwprune", "state", target, 0, cand, ramp_sparsity(target, len(cand)))
        )
        runs.append(
            FakeRun(
                "adamwspam",
                "magnitude",
                target,
                0,
                base,
                ramp_sparsity(target, len(base)),
                peak_mb=12792.5,
                reserved_mb=13500.0,
                optimizer_state_bytes=2 * 4 * PARAMETERS + 64,
            )
        )
    return runs


def pop_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table after `heading`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == heading)
    rows = []
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            in_table = True
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif in_table:
            break
    return rows[2:]  # drop header and separator


def row_for(rows: list[list[str]], first: str) -> list[str]:
    return next(r for r in rows if r[0] == first)


def render(matrix: Path) -> str:
    """report.md's text without drawing plots (fast); write_report draws them too."""
    from scripts.report.cells import resolve_comparison
    from scripts.report.data import load_matrix
    from scripts.report.sections import render_report

    results = load_matrix(matrix)
    return render_report(results, resolve_comparison(results))


def section(markdown: str, heading: str) -> str:
    """The text of one `## ` section (up to the next `## ` heading)."""
    start = markdown.index(heading + "\n")
    rest = markdown[start + len(heading) + 1 :]
    end = rest.find("\n## ")
    return rest if end < 0 else rest[:end]


def table_header(markdown: str, heading: str) -> list[str]:
    """The header cells of the first table after `heading`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == heading)
    line = next(line for line in lines[start + 1 :] if line.startswith("|"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def row_dict(markdown: str, heading: str, first: str) -> dict[str, str]:
    """The row of the first table after `heading` whose first cell is `first`, by header."""
    header = table_header(markdown, heading)
    return dict(zip(header, row_for(table_rows(markdown, heading), first), strict=True))
