"""Load one matrix's result files into plain records the report and the plots share.

Reads only `results/<matrix>/matrix.json` (the plan, statuses, config snapshot, report
settings) and each run's `metrics.json` (through `lib.metrics.read_metrics`). The per-run
summary is always re-derived with `lib.metrics.summarize`, the one definition of best/final/
std/peak-to-final, so a report never disagrees with the trainer about what those mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.metrics import (
    MATRIX_FILE,
    METRICS_FILE,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_RUNNING,
    MetricsError,
    read_metrics,
    summarize,
)
from lib.metrics import (
    newest_matrix as lib_newest_matrix,
)
from lib.spec import RunSpec, method_key

STATUS_PENDING = "pending"
STATUS_UNREADABLE = "unreadable"  # metrics.json exists but is corrupt or of another schema

# What a report says about runs that are not (yet) part of the numbers, in this order.
UNFINISHED_ORDER = (STATUS_FAILED, STATUS_UNREADABLE, STATUS_RUNNING, STATUS_PENDING)

# lib.memory's `memory_kind` values. The lifetime RSS is the process's peak since it started
# (where the per-epoch peak cannot be reset); it is still the run's own process.
MEMORY_CUDA = "cuda_allocated"
MEMORY_CPU_RSS = "cpu_rss"
MEMORY_CPU_RSS_LIFETIME = "cpu_rss_lifetime"
MEMORY_CPU_KINDS = (MEMORY_CPU_RSS, MEMORY_CPU_RSS_LIFETIME)


class ReportError(Exception):
    """A matrix that cannot be reported at all (missing, empty, unreadable plan)."""


@dataclass
class RunResult:
    run_id: str
    method_key: str
    target_sparsity: float
    seed: int
    status: str
    reason: str | None = None  # why a run failed / is unreadable (one line)
    log_tail: str | None = None
    spec: dict[str, Any] | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None  # lib.metrics.summarize(...) of `epochs`
    state_memory: dict[str, Any] | None = None
    model_info: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None

    @property
    def completed(self) -> bool:
        return self.status == STATUS_COMPLETED

    @property
    def planned_epochs(self) -> int | None:
        if self.spec and isinstance(self.spec.get("train"), dict):
            return self.spec["train"].get("epochs")
        return None

    def peak_memory(self) -> dict[str, float | None]:
        """The run's own peaks (MiB): CUDA allocated / reserved and CPU RSS, kept apart.

        Each epoch says which kind its `peak_memory_mb` is, so a CPU run's RSS can never be
        shown as CUDA memory (or the other way round).
        """
        cuda_allocated = [
            e["peak_memory_mb"]
            for e in self.epochs
            if e.get("memory_kind") == MEMORY_CUDA and e.get("peak_memory_mb") is not None
        ]
        cuda_reserved = [
            e["peak_memory_reserved_mb"]
            for e in self.epochs
            if e.get("memory_kind") == MEMORY_CUDA and e.get("peak_memory_reserved_mb") is not None
        ]
        cpu_rss = [
            e["peak_memory_mb"]
            for e in self.epochs
            if e.get("memory_kind") in MEMORY_CPU_KINDS and e.get("peak_memory_mb") is not None
        ]
        return {
            "cuda_allocated_mb": max(cuda_allocated) if cuda_allocated else None,
            "cuda_reserved_mb": max(cuda_reserved) if cuda_reserved else None,
            "cpu_rss_mb": max(cpu_rss) if cpu_rss else None,
            "cpu_rss_lifetime": any(
                e.get("memory_kind") == MEMORY_CPU_RSS_LIFETIME for e in self.epochs
            ),
        }

    def state_bytes_per_param(self) -> dict[str, float | None]:
        """Optimizer and pruning state in bytes per parameter, from the measured tensors."""
        state = self.state_memory or {}
        info = self.model_info or {}
        params = info.get("parameters")
        prunable = info.get("prunable_parameters")
        optimizer_bytes = state.get("optimizer_state_bytes")
        pruning_bytes = state.get("pruning_state_bytes")

        def ratio(numerator: Any, denominator: Any) -> float | None:
            if numerator is None or not denominator:
                return None
            return numerator / denominator

        total = None
        if optimizer_bytes is not None and pruning_bytes is not None:
            total = optimizer_bytes + pruning_bytes
        return {
            "optimizer_per_param": ratio(optimizer_bytes, params),
            "pruning_per_prunable_param": ratio(pruning_bytes, prunable),
            "total_per_param": ratio(total, params),
            "extra_per_prunable_param": state.get("extra_bytes_per_prunable_param"),
        }


@dataclass
class MatrixResults:
    name: str
    path: Path
    plan: dict[str, Any]  # matrix.json as written by the runner
    runs: list[RunResult]

    @property
    def config(self) -> dict[str, str]:
        return self.plan.get("config") or {}

    @property
    def report_settings(self) -> dict[str, Any]:
        return self.plan.get("report") or {}

    def method_keys(self) -> list[str]:
        """Methods in the order the plan lists them (stable across report runs)."""
        seen: dict[str, None] = {}
        for run in self.runs:
            seen.setdefault(run.method_key, None)
        return list(seen)

    def sparsities(self) -> list[float]:
        return sorted({run.target_sparsity for run in self.runs})

    def cell(self, key: str, sparsity: float) -> list[RunResult]:
        """All replicates (seeds) of one method at one target sparsity."""
        return [r for r in self.runs if r.method_key == key and r.target_sparsity == sparsity]

    def first_spec(self) -> dict[str, Any]:
        for run in self.runs:
            if run.spec:
                return run.spec
        return {}


def _method_key_of(entry: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    if entry.get("method_key"):
        return entry["method_key"]
    if metrics is not None:
        ident = metrics["identity"]
        return method_key(ident["optimizer_label"], ident["pruning"], ident.get("prune_score"))
    return RunSpec.from_dict(entry["spec"]).method_key


def _target_sparsity_of(spec: dict[str, Any] | None, metrics: dict[str, Any] | None) -> float:
    if metrics is not None and "target_sparsity" in metrics["identity"]:
        return float(metrics["identity"]["target_sparsity"])
    pruning = (spec or {}).get("pruning") or {}
    if pruning.get("method", "none") == "none":
        return 0.0
    return float(pruning.get("sparsity", 0.0))


def _first_line(text: Any) -> str | None:
    if not text:
        return None
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def load_run(run_dir: Path, entry: dict[str, Any]) -> RunResult:
    """One run from its matrix.json entry and (if present) its metrics.json."""
    metrics_path = run_dir / METRICS_FILE
    metrics = None
    unreadable_reason = None
    if metrics_path.exists():
        try:
            metrics = read_metrics(metrics_path)
        except MetricsError as e:
            unreadable_reason = str(e)

    spec = entry.get("spec") or (metrics or {}).get("spec")
    run_id = entry.get("run_id") or (metrics or {}).get("run_id") or run_dir.name
    try:
        key = _method_key_of(entry, metrics)
    except (KeyError, TypeError) as e:
        key = "unknown"
        unreadable_reason = unreadable_reason or f"cannot tell the method of {run_id} ({e})"
    target = _target_sparsity_of(spec, metrics)
    seed = (metrics or {}).get("identity", {}).get("seed", (spec or {}).get("seed", 0))
    planned_status = entry.get("status") or STATUS_PENDING

    result = RunResult(
        run_id=run_id,
        method_key=key,
        target_sparsity=target,
        seed=int(seed),
        status=planned_status,
        reason=entry.get("error"),
        log_tail=entry.get("log_tail"),
        spec=spec,
    )
    if unreadable_reason is not None:
        result.status = STATUS_UNREADABLE
        result.reason = unreadable_reason
        return result
    if metrics is None:
        if result.status == STATUS_COMPLETED:
            # The plan says done, but the evidence is gone: never report numbers we cannot see.
            result.status = STATUS_UNREADABLE
            result.reason = f"{metrics_path}: no such file"
        return result

    summary_status = (metrics.get("summary") or {}).get("status")
    # The trainer's own final word (completed/failed) wins; otherwise the runner knows better
    # (a run killed from outside still says `running` in its metrics.json).
    if summary_status in (STATUS_COMPLETED, STATUS_FAILED):
        status = summary_status
    elif planned_status in (STATUS_FAILED, STATUS_RUNNING, STATUS_PENDING):
        status = planned_status
    else:
        status = STATUS_RUNNING
    error = (metrics.get("summary") or {}).get("error") or entry.get("error")
    if status == STATUS_FAILED and not error:
        error = _first_line(entry.get("log_tail")) or "no error recorded"
    result.status = status
    result.reason = error if status == STATUS_FAILED else None
    if status == STATUS_PENDING and metrics["epochs"]:
        result.reason = (
            f"interrupted after {len(metrics['epochs'])} "
            f"epoch{'' if len(metrics['epochs']) == 1 else 's'}; `make continue` resumes it"
        )
    result.epochs = sorted(metrics["epochs"], key=lambda e: e["epoch"])
    try:
        result.summary = summarize(
            result.epochs,
            target,
            # An interrupted (pending) run's summary is the trainer's last word: running.
            status=STATUS_RUNNING if status == STATUS_PENDING else status,
            error=result.reason if status == STATUS_FAILED else None,
            total_seconds=(metrics.get("summary") or {}).get("total_seconds"),
        )
    except (KeyError, TypeError) as e:
        result.status = STATUS_UNREADABLE
        result.reason = f"{metrics_path}: epoch records do not follow the schema ({e!r})"
        result.epochs = []
        return result
    result.state_memory = metrics.get("state_memory")
    result.model_info = metrics.get("model_info")
    result.environment = metrics.get("environment")
    return result


def load_matrix(matrix_dir: str | Path) -> MatrixResults:
    matrix_dir = Path(matrix_dir)
    plan_path = matrix_dir / MATRIX_FILE
    if not plan_path.is_file():
        raise ReportError(f"no matrix at {matrix_dir}: {plan_path} does not exist")
    try:
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{plan_path}: not valid JSON ({e})") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("runs", []), list):
        raise ReportError(f"{plan_path}: expected an object with a 'runs' list")

    entries: list[dict[str, Any]] = [e for e in plan.get("runs", []) if isinstance(e, dict)]
    listed = {e.get("run_id") for e in entries}
    # Runs on disk that the plan does not list (an older plan, a hand-copied run) are still
    # results; include them rather than drop them silently.
    for metrics_path in sorted(matrix_dir.glob(f"*/{METRICS_FILE}")):
        if metrics_path.parent.name not in listed:
            entries.append({"run_id": metrics_path.parent.name})

    runs = [load_run(matrix_dir / e.get("run_id", ""), e) for e in entries if e.get("run_id")]
    if not runs:
        raise ReportError(f"matrix {matrix_dir.name!r} is empty: {plan_path} lists no runs")
    return MatrixResults(
        name=plan.get("name") or matrix_dir.name, path=matrix_dir, plan=plan, runs=runs
    )


def newest_matrix(results_dir: str | Path) -> Path:
    """The matrix directory whose matrix.json was written last."""
    newest = lib_newest_matrix(results_dir)
    if newest is None:
        raise ReportError(f"no matrix under {results_dir}: no */{MATRIX_FILE} found")
    return newest


MODEL_DISPLAY = {"resnet50": "ResNet-50", "resnet18": "ResNet-18"}
DATASET_DISPLAY = {
    "imagenet": "ImageNet",
    "cifar100": "CIFAR-100",
    "cifar10": "CIFAR-10",
    "mnist5k": "MNIST (5k subset)",
    "synthetic": "synthetic data",
}

OPTIMIZER_DISPLAY = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "adamwadv": "AdamWAdv",
    "adamwspam": "AdamWSPAM",
    "adamwprune": "AdamWPrune",
}


def method_display_name(key: str) -> str:
    """`adamwprune-adamw_state-hybrid` -> `AdamWPrune (AdamW base) state/hybrid`,
    `adamwspam_magnitude` -> `AdamWSPAM + magnitude`, `sgd_dense` -> `SGD (dense)`.

    Unknown keys are returned unchanged, so a new method still shows up, just less pretty.
    """
    label, sep, pruning = key.partition("_")
    if not sep:
        return key
    family, _, base = label.partition("-")
    if family not in OPTIMIZER_DISPLAY:
        return key
    name = OPTIMIZER_DISPLAY[family]
    if base:
        name += f" ({OPTIMIZER_DISPLAY.get(base, base)} base)"
    if pruning == "dense":
        return f"{name} (dense)"
    if pruning.startswith("state-"):
        return f"{name} state/{pruning.removeprefix('state-')}"
    return f"{name} + {pruning}"
