"""Load one matrix's result files into plain records the report and the plots share.

Reads only `results/<matrix>/matrix.json` (the plan, statuses, config snapshot, report
settings), each run's `metrics.json` and `tracking.json`, all through the results store
(lib/store.py: never through a link, within its limits, the plan's seal checked, each run's
recorded identity checked against its planned run). The per-run
summary is always re-derived with `lib.metrics.summarize`, the one definition of best/final/
std/peak-to-final, so a report never disagrees with the trainer about what those mean.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib import catalogue
from lib.metrics import (
    MATRIX_FILE,
    METRICS_FILE,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_RUNNING,
    STOPPED_BY_TIME_BUDGET,
    MatrixWithoutPlan,
    summarize,
)
from lib.metrics import (
    newest_matrix as lib_newest_matrix,
)
from lib.spec import RunSpec, method_key
from lib.store import (
    STATE_CHANGED,
    STATE_PENDING,
    MatrixStore,
    StoreError,
    identity_problem,
    spec_identity,
)

STATUS_PENDING = STATE_PENDING
STATUS_UNREADABLE = "unreadable"  # metrics.json exists but is corrupt or of another schema
STATUS_CHANGED = STATE_CHANGED  # metrics.json says it is another run than the plan's

# What a report says about runs that are not (yet) part of the numbers, in this order.
UNFINISHED_ORDER = (
    STATUS_FAILED,
    STATUS_CHANGED,
    STATUS_UNREADABLE,
    STATUS_RUNNING,
    STATUS_PENDING,
)

# lib.memory's `memory_kind` values. The lifetime RSS is the process's peak since it started
# (where the per-epoch peak cannot be reset); it is still the run's own process.
MEMORY_CUDA = "cuda_allocated"
MEMORY_CPU_RSS = "cpu_rss"
MEMORY_CPU_RSS_LIFETIME = "cpu_rss_lifetime"
MEMORY_CPU_KINDS = (MEMORY_CPU_RSS, MEMORY_CPU_RSS_LIFETIME)


# Summary fields the trainer writes with a held-out validation split (docs/protocol.md).
SELECTION_KEYS = ("selection_top1", "selected_by")


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
    duplicate_of: str | None = None  # the run_id of another planned run with the same identity
    tracking: dict[str, Any] = field(default_factory=dict)  # tracking.json: live tracker links
    identity: dict[str, Any] | None = None  # metrics.json's identity block (what was run)

    @property
    def completed(self) -> bool:
        return self.status == STATUS_COMPLETED

    @property
    def gpus(self) -> int:
        """GPUs the run trained on (`train.gpus_per_run` of its RunSpec; 1 when absent)."""
        train = (self.spec or {}).get("train")
        value = train.get("gpus_per_run") if isinstance(train, dict) else None
        return value if isinstance(value, int) and value > 0 else 1

    @property
    def exclusion(self) -> tuple[str, str] | None:
        """Why this run's numbers stay out of every table, average and plot: (label, detail);
        None when it counts. The one rule, so the accuracy, final, stability, memory tables and
        the plots can never disagree about which runs they use."""
        if self.duplicate_of is not None:
            return "duplicate", (
                f"the plan also has `{self.duplicate_of}` for this method, "
                f"{self.target_sparsity * 100:g}% sparsity and seed {self.seed}; neither "
                "counts"
                if self.duplicate_of != self.run_id
                else f"the plan lists `{self.run_id}` twice ({self.target_sparsity * 100:g}% "
                f"sparsity, seed {self.seed}); it counts once"
            )
        if not self.completed:
            return self.status, self.reason or self.status
        if self.summary is None or not self.epochs:
            return "no epochs", "completed without any epoch record"
        done, planned = self.summary["epochs_completed"], self.planned_epochs
        budget_ended = self.summary.get("stopped_by") == STOPPED_BY_TIME_BUDGET
        if planned and done < planned and not budget_ended:  # a budget's end is its result
            return "short run", f"completed after {done} of {planned} planned epochs"
        if self.target_sparsity > 0 and self.summary["target_reached_epoch"] is None:
            final = self.summary.get("final_sparsity")
            measured = "no measured sparsity" if final is None else f"ended at {final * 100:.1f}%"
            return "target not reached", (
                f"{measured}, below the {self.target_sparsity * 100:g}% target; "
                "its accuracy is that of a denser network"
            )
        return None

    @property
    def counts(self) -> bool:
        """True when the run enters the numbers (see `exclusion`)."""
        return self.exclusion is None

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
    runs: list[RunResult]  # the plan's runs, each (method, sparsity, seed) once
    duplicates: list[RunResult] = field(default_factory=list)  # later entries of one identity
    stray: list[str] = field(default_factory=list)  # run directories the plan does not list
    # The tuning axis's trials (lib/tuning.py): the tuning section reads them; no table,
    # average or plot counts them as replicates (the reruns of the chosen setting are `runs`).
    trials: list[RunResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the store said about the plan

    def counted(self, key: str | None = None, sparsity: float | None = None) -> list[RunResult]:
        """The runs that enter the numbers (`RunResult.counts`), optionally of one method
        and/or one target sparsity."""
        return [
            r
            for r in self.runs
            if r.counts
            and (key is None or r.method_key == key)
            and (sparsity is None or r.target_sparsity == sparsity)
        ]

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
        for run in (*self.runs, *self.trials):
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


def _planned_target_and_seed(spec: dict[str, Any] | None) -> tuple[float, int]:
    """Target sparsity and seed from the plan's RunSpec (0.0 / 0 where it says nothing usable)."""
    spec = spec if isinstance(spec, dict) else {}
    pruning = spec.get("pruning") if isinstance(spec.get("pruning"), dict) else {}
    target = 0.0
    if pruning.get("method", "none") != "none":
        value = pruning.get("sparsity", 0.0)
        if isinstance(value, (int, float)) and math.isfinite(value):
            target = float(value)
    seed = spec.get("seed", 0)
    return target, seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def _val_target(spec: dict[str, Any] | None) -> float:
    """The run's validation target (% top-1; 0: none), as its spec records it."""
    data = (spec or {}).get("data")
    value = data.get("val_target", 0.0) if isinstance(data, dict) else 0.0
    return float(value) if isinstance(value, int | float) else 0.0


def _first_line(text: Any) -> str | None:
    if not text:
        return None
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


# Epoch fields every table or plot reads: required, and finite when present.
REQUIRED_EPOCH_FIELDS = ("epoch", "test_top1", "test_top5")
FINITE_EPOCH_FIELDS = (
    "test_top1",
    "test_top5",
    "sparsity",
    "peak_memory_mb",
    "peak_memory_reserved_mb",
)


def epoch_problem(epochs: list[Any]) -> str | None:
    """The first reason an epoch record cannot be used (naming the epoch and the field), or
    None. A NaN accuracy would make "best" NaN or be skipped silently; a NaN sparsity would
    turn peak-to-final negative; so a damaged record excludes the whole run, loudly."""
    for index, record in enumerate(epochs, start=1):
        if not isinstance(record, dict):
            return f"epoch record {index} is not an object"
        number = record.get("epoch", index)
        for name in REQUIRED_EPOCH_FIELDS:
            if record.get(name) is None:
                return f"epoch {number}: field '{name}' is missing"
        if not isinstance(record["epoch"], int) or isinstance(record["epoch"], bool):
            return f"epoch record {index}: 'epoch' is {record['epoch']!r}, not an integer"
        for name in FINITE_EPOCH_FIELDS:
            value = record.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"epoch {number}: '{name}' is {value!r}, not a number"
            if not math.isfinite(value):
                return f"epoch {number}: '{name}' is {value!r} (NaN or infinite)".replace(
                    "nan", "NaN"
                )
    return None


def load_run(store: MatrixStore, entry: dict[str, Any]) -> RunResult:
    """One run from its matrix.json entry and (if present) its metrics.json, read through the
    store (no link followed, within its limits, no more epochs than planned)."""
    run_dir = store.path / entry["run_id"]
    metrics_path = run_dir / METRICS_FILE
    metrics = None
    unreadable_reason = None
    try:
        metrics = store.read_metrics(entry["run_id"], entry.get("spec"))
    except FileNotFoundError:
        pass
    except (OSError, StoreError) as e:
        unreadable_reason = str(e)

    spec = entry.get("spec") or (metrics or {}).get("spec")
    run_id = entry.get("run_id") or (metrics or {}).get("run_id") or run_dir.name
    try:
        key = _method_key_of(entry, metrics)
    except (KeyError, TypeError) as e:
        key = "unknown"
        unreadable_reason = unreadable_reason or f"cannot tell the method of {run_id} ({e})"
    # The plan's spec says what was meant; metrics.json's identity what was run. A value in
    # the identity that is not a number makes the run unreadable (naming it), never a crash.
    target, seed = _planned_target_and_seed(spec)
    identity = (metrics or {}).get("identity") or {}
    for name in ("target_sparsity", "seed"):
        if name not in identity or metrics is None:
            continue
        value = identity[name]
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name == "seed":
            valid = valid and float(value).is_integer()
        if not valid or not math.isfinite(value):
            unreadable_reason = unreadable_reason or (
                f"{metrics_path.name}: identity '{name}' is {value!r}, not a number"
            )
        elif name == "seed":
            seed = int(value)
        else:
            target = float(value)
    planned_status = entry.get("status") or STATUS_PENDING

    result = RunResult(
        run_id=run_id,
        method_key=key,
        target_sparsity=target,
        seed=seed,
        status=planned_status,
        reason=entry.get("error"),
        log_tail=entry.get("log_tail"),
        spec=spec,
        tracking=store.read_tracking(entry["run_id"]),
    )
    if unreadable_reason is None and metrics is not None:
        recorded = {
            "run_id": metrics.get("run_id"),
            "identity": identity,
            "spec_identity": spec_identity(metrics.get("spec")),
        }
        changed = identity_problem(run_id, entry.get("spec"), recorded)
        if changed is not None:
            # Another configuration than the plan's: never in the cell it claims (nor its own).
            result.target_sparsity, result.seed = _planned_target_and_seed(spec)
            result.status = STATUS_CHANGED
            result.reason = f"{metrics_path}: {changed.split(': ', 1)[-1]}"
            return result
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
    problem = epoch_problem(metrics["epochs"])
    if problem is not None:
        result.status = STATUS_UNREADABLE if status != STATUS_FAILED else status
        detail = f"{metrics_path.name} {problem}"
        result.reason = detail if status != STATUS_FAILED else f"{result.reason} ({detail})"
        return result
    # Per-layer sparsity is no part of the report (and most of a ResNet-50 run's records):
    # not keeping it holds a 2,000-run matrix in a fraction of the memory.
    result.epochs = sorted(
        ({k: v for k, v in e.items() if k != "sparsity_per_layer"} for e in metrics["epochs"]),
        key=lambda e: e["epoch"],
    )
    try:
        result.summary = summarize(
            result.epochs,
            target,
            # An interrupted (pending) run's summary is the trainer's last word: running.
            status=STATUS_RUNNING if status == STATUS_PENDING else status,
            error=result.reason if status == STATUS_FAILED else None,
            total_seconds=(metrics.get("summary") or {}).get("total_seconds"),
            model_info=metrics.get("model_info"),
            val_target=_val_target(spec),
        )
    except (KeyError, TypeError) as e:
        result.status = STATUS_UNREADABLE
        result.reason = f"{metrics_path}: epoch records do not follow the schema ({e!r})"
        result.epochs = []
        return result
    # What held-out validation selected (the trainer's word; lib.metrics.selection_score):
    # kept, so the report selects tuning trials as the runner did when it planned the reruns.
    recorded = metrics.get("summary") or {}
    for key in SELECTION_KEYS:
        if key in recorded and key not in result.summary:
            result.summary[key] = recorded[key]
    result.identity = identity or None
    result.state_memory = metrics.get("state_memory")
    result.model_info = metrics.get("model_info")
    result.environment = metrics.get("environment")
    return result


def load_matrix(matrix_dir: str | Path) -> MatrixResults:
    matrix_dir = Path(matrix_dir)
    plan_path = matrix_dir / MATRIX_FILE
    try:
        store = MatrixStore(matrix_dir)  # the matrix directory itself: never a link
        plan = store.read_plan(others=True)
    except FileNotFoundError:
        raise ReportError(f"no matrix at {matrix_dir}: {plan_path} does not exist") from None
    except StoreError as e:
        raise ReportError(str(e)) from None
    except OSError as e:
        raise ReportError(f"{plan_path}: cannot be read ({e.strerror or e})") from None
    for note in store.notes:
        print(f"report: {note}", file=sys.stderr)

    entries: list[dict[str, Any]] = plan.get("runs", [])
    listed = {e["run_id"] for e in entries}
    # Only the plan's runs count. A run directory the plan does not list (an older plan, a
    # hand-copied run) would otherwise become an extra replicate: it is named, not loaded.
    stray = [name for name in store.run_dirs_with(METRICS_FILE) if name not in listed]

    runs: list[RunResult] = []
    trials: list[RunResult] = []
    duplicates: list[RunResult] = []
    seen_ids: set[str] = set()
    by_identity: dict[tuple[str, float, int], RunResult] = {}
    for entry in entries:
        run = load_run(store, entry)
        if is_trial(run.spec):
            if run.run_id not in seen_ids:
                trials.append(run)
            seen_ids.add(run.run_id)
            continue
        identity = (run.method_key, run.target_sparsity, run.seed)
        if run.run_id in seen_ids:
            run.duplicate_of = run.run_id  # the same entry listed twice: counted once
        elif identity in by_identity and run.method_key != "unknown":
            # Two planned runs claim one cell: neither is chosen by its position.
            first = by_identity[identity]
            run.duplicate_of = first.run_id
            if first.duplicate_of is None:
                first.duplicate_of = run.run_id
        seen_ids.add(run.run_id)
        if run.duplicate_of is not None:
            duplicates.append(run)
            continue
        by_identity[identity] = run
        runs.append(run)
    store.close()
    if not runs and not trials:
        raise ReportError(f"matrix {matrix_dir.name!r} is empty: {plan_path} lists no runs")
    return MatrixResults(
        name=plan.get("name") or matrix_dir.name,
        path=matrix_dir,
        plan=plan,
        runs=runs,
        duplicates=duplicates,
        stray=stray,
        trials=trials,
        notes=list(store.notes),
    )


def is_trial(spec: dict[str, Any] | None) -> bool:
    """A planned run that is a tuning trial (its spec's `tuning.role`)."""
    tuning = (spec or {}).get("tuning")
    return isinstance(tuning, dict) and tuning.get("role") == "trial"


def newest_matrix(results_dir: str | Path) -> Path:
    """The matrix directory whose matrix.json was written last."""
    try:
        newest = lib_newest_matrix(results_dir)
    except MatrixWithoutPlan as e:
        raise ReportError(str(e)) from None
    if newest is None:
        raise ReportError(f"no matrix under {results_dir}: no */{MATRIX_FILE} found")
    return newest


MODEL_DISPLAY = {"resnet50": "ResNet-50", "resnet18": "ResNet-18", "resnet20": "ResNet-20"}
DATASET_DISPLAY = {
    "imagenet": "ImageNet",
    "imagefolder": "ImageFolder",
    "cifar100": "CIFAR-100",
    "cifar10": "CIFAR-10",
    "mnist5k": "MNIST (5k subset)",
    "synthetic": "synthetic data",
}


def method_display_name(key: str) -> str:
    """`adamwprune-adamw_state-hybrid` -> `AdamWPrune (AdamW base) state/hybrid`,
    `adamwspam_magnitude` -> `AdamWSPAM + magnitude`, `sgd_dense` -> `SGD (dense)`: the
    catalogue entries' display names (lib/catalogue.py).

    Keys of optimizers not in the catalogue (a plug-in no longer installed) are returned
    unchanged, so the method still shows up, just less pretty.
    """
    label, sep, pruning = key.partition("_")
    if not sep:
        return key
    cat = catalogue.catalogue()
    family, _, base = label.partition("-")
    if family not in cat.optimizers:
        return key
    name = cat.optimizers[family].display
    if base:
        name += f" ({cat.optimizers[base].display if base in cat.optimizers else base} base)"
    if pruning == "dense":
        return f"{name} (dense)"
    method, _, variant = pruning.partition("-")
    shown = cat.pruning[method].display if method in cat.pruning else method
    if variant:
        return f"{name} {shown}/{variant}"
    return f"{name} + {shown}"
