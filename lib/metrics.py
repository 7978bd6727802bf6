"""metrics.json: the schema every run writes and every report reads (docs/metrics.md).

Only this module knows how the summary is derived from the per-epoch records, so the trainer
and the report can never disagree about what "best accuracy" or "std of the last 10 epochs"
means.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib.atomic import atomic_file, exists_at

if TYPE_CHECKING:
    from lib.spec import RunSpec

# 2: per-layer sparsity moved out of the epoch records into LAYERS_FILE (issue 30); version 1
# files (inline) are still read.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
MATRIX_FILE = "matrix.json"  # the runner's manifest at results/<matrix>/
METRICS_FILE = "metrics.json"  # each run's document at results/<matrix>/<run_id>/
LAYERS_FILE = "sparsity_per_layer.json"  # beside it: each epoch's per-layer sparsity
PER_LAYER = "sparsity_per_layer"

STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUSES = (STATUS_RUNNING, STATUS_COMPLETED, STATUS_FAILED)

# A run "reached" its target when the sparsity measured from the weights is within this
# distance of the target (the exact threshold makes it equal in practice; the tolerance only
# absorbs float formatting of hand-written files).
SPARSITY_TOLERANCE = 5e-4
STABILITY_WINDOW = 10

# Which set chose a run's best epoch (summary `selected_by`): the held-out validation split
# when the run has one (its epochs record val_top1), else the test set (docs/protocol.md).
SELECTED_BY_VALIDATION = "validation"
SELECTED_BY_TEST = "test"
# Why a completed run stopped (summary `stopped_by`).
STOPPED_BY_EPOCHS = "epochs"
STOPPED_BY_TIME_BUDGET = "time_budget"
# The epoch record of the epoch a training-time budget cut (lib.train).
TIME_BUDGET_STOP = "time_budget_stop"


class MetricsError(ValueError):
    """A metrics.json that cannot be read or does not follow the schema."""


def atomic_write_json(
    path: str | os.PathLike[str], data: Any, *, dir_fd: int | None = None
) -> None:
    """Write JSON so that `path` holds either the old or the new document, never a torn one
    (`lib.atomic.atomic_file`): a failure (disk full, permission) leaves the old file. With
    `dir_fd` the file is `path`'s name in that directory (lib/store.py opened it)."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_file(path, "w", dir_fd=dir_fd) as f:
        f.write(text)


def _read_layers(path: Path, dir_fd: int | None = None) -> dict[int, dict[str, float]]:
    """Epoch -> per-layer sparsity from a sparsity_per_layer.json (through the store: a
    regular file, never a link; `path`'s name in `dir_fd` when given); {} when absent,
    damaged or refused (per-layer sparsity is a detail: the run's results stand without it)."""
    from lib.store import read_json_at

    try:
        data = read_json_at(dir_fd, path.name if dir_fd is not None else str(path), path)
        return {int(row["epoch"]): row[PER_LAYER] for row in data["epochs"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return {}


def write_metrics_document(
    path: str | os.PathLike[str], doc: dict[str, Any], *, dir_fd: int | None = None
) -> None:
    """Write a run's metrics.json (schema SCHEMA_VERSION) atomically, its epochs' per-layer
    sparsity going to sparsity_per_layer.json beside it (written first, compact). With
    `dir_fd` (the run directory, opened by lib/store.py) both are written relative to it.

    Records without it (a document read with per_layer=False) keep what that file holds for
    their epochs; epochs no longer in the document are dropped from it."""
    path = Path(path)
    epochs = doc.get("epochs") or []
    rows = {e["epoch"]: e[PER_LAYER] for e in epochs if isinstance(e.get(PER_LAYER), dict)}
    layers_path = path.with_name(LAYERS_FILE)
    layers_there = exists_at(layers_path if dir_fd is None else LAYERS_FILE, dir_fd)
    if len(rows) < len(epochs) and layers_there:
        numbers = {e.get("epoch") for e in epochs}
        kept = {n: v for n, v in _read_layers(layers_path, dir_fd).items() if n in numbers}
        rows = {**kept, **rows}
    if rows or layers_there:
        text = json.dumps(
            {
                "schema_version": 1,
                "run_id": doc.get("run_id"),
                "epochs": [{"epoch": n, PER_LAYER: rows[n]} for n in sorted(rows)],
            },
            separators=(",", ":"),
            allow_nan=False,
        )
        with atomic_file(layers_path, "w", dir_fd=dir_fd) as f:
            f.write(text + "\n")
    stripped = {k: v for k, v in doc.items() if k != "epochs"}
    stripped["schema_version"] = SCHEMA_VERSION
    records = [{k: v for k, v in e.items() if k != PER_LAYER} for e in epochs]
    with atomic_file(path, "w", dir_fd=dir_fd) as f:
        f.write(_document_text(stripped, records))


def _document_text(head: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """metrics.json's text: indented like every other JSON file of the project, but each epoch
    record compact on a line of its own. The indentation of ~25 fields per record was a quarter
    of a 100-epoch file (issue 30: under 60 KB); one line per epoch still reads and diffs well."""
    text = json.dumps({**head, "epochs": []}, indent=2, sort_keys=True, allow_nan=False)
    lines = ",\n".join(
        "    " + json.dumps(r, sort_keys=True, separators=(",", ":"), allow_nan=False)
        for r in records
    )
    marker = '\n  "epochs": []'
    assert text.count(marker) == 1  # the top-level key, sort_keys: never inside another value
    body = f'\n  "epochs": [\n{lines}\n  ]' if records else marker
    return text.replace(marker, body) + "\n"


def read_metrics(
    path: str | os.PathLike[str], *, per_layer: bool = True, dir_fd: int | None = None
) -> dict[str, Any]:
    """Load and minimally validate a metrics.json; raise MetricsError naming the file.

    With `per_layer` the epochs get their per-layer sparsity back from sparsity_per_layer.json
    (version 2), so the document is the one the trainer built; without, a reader that does not
    use it (the report, the run index) skips that file. With `dir_fd` the file is `path`'s
    name in that directory (the run directory, opened by lib/store.py)."""
    path = Path(path)
    from lib.store import StoreError, check_metrics, read_json_at

    name = str(path) if dir_fd is None else path.name
    try:  # a regular file, never through a link, within the store's limits (lib/store.py)
        data = check_metrics(read_json_at(dir_fd, name, path, METRICS_FILE), path)
    except FileNotFoundError:
        raise MetricsError(f"{path}: no such file") from None
    except OSError as e:
        raise MetricsError(f"{path}: not valid JSON ({e})") from None
    except StoreError as e:
        raise MetricsError(str(e)) from None
    version = data["schema_version"]
    if per_layer and version >= 2:
        layers = _read_layers(path.with_name(LAYERS_FILE), dir_fd)
        for record in data["epochs"]:
            if isinstance(record, dict) and record.get("epoch") in layers:
                record.setdefault(PER_LAYER, layers[record["epoch"]])
    return data


def target_reached(sparsity: float | None, target: float) -> bool:
    if target <= 0.0:
        return True
    return sparsity is not None and sparsity >= target - SPARSITY_TOLERANCE


def selection_score(summary: dict[str, Any]) -> float | None:
    """The accuracy that selects among runs (a tuning trial, docs/protocol.md): held-out
    validation top-1 at the epoch validation chose (`selection_top1`, written when a
    validation split is on), else the best test top-1 (`best_top1`; `selected_by` then says
    "test")."""
    if "selection_top1" in summary:  # validation on: never fall back to the test set
        return summary["selection_top1"]
    return summary.get("best_top1")


def summarize(
    epochs: list[dict[str, Any]],
    target_sparsity: float,
    *,
    status: str,
    error: str | None = None,
    total_seconds: float | None = None,
    environment_failure: bool = False,
    model_info: dict[str, Any] | None = None,
    val_target: float = 0.0,
) -> dict[str, Any]:
    """Derive the run summary from its per-epoch records (and the run's `model_info`).

    - best_epoch: the selected epoch, among epochs at the target sparsity (every epoch
      counts for dense runs): the one of highest held-out validation top-1 when the epochs
      record it (`selected_by` "validation"), else of highest test top-1 (`selected_by`
      "test"); the first such epoch on ties.
    - selection_top1: the selecting set's top-1 at best_epoch (validation or test).
    - best_top1: the test top-1 at best_epoch, the accuracy reported. Without the split it is
      the best test top-1 (= selection_top1), as before the split existed. A pruned run that
      never reached its target has no best accuracy (None), which the report shows instead
      of an accuracy of a denser model.
    - final_top1 / final_top5: the last epoch's test accuracy.
    - std_last10: population standard deviation (ddof=0) of test top-1 over the last
      min(10, n) epochs.
    - peak_to_final: best_top1 - final_top1 (percentage points), None without a best.
    - target_reached_epoch: first epoch whose measured sparsity reached the target.
    - compression_ratio: model_info's parameters_total / the last epoch's parameters_nonzero;
      theoretical_speedup: model_info's macs_dense / the last epoch's macs_nonzero (None when
      either is missing: a run without epochs, a file written before they were recorded).
    - environment_failure: the run failed for its disk (full, quota, read-only), not for
      what it trains; the runner relaunches it without being asked (docs/runner.md).
    - training_seconds: the recorded epochs' training time (evaluation and checkpointing
      excluded); stopped_by: "time_budget" when a training-time budget ended a completed run
      early, "epochs" when it trained all its epochs, None before it completes.
    - time_to_target_*: with a validation target (`val_target` > 0, percent), the first epoch
      at target sparsity whose validation top-1 reached it, and the training seconds and
      optimizer steps up to that epoch's end; time_to_target_reached False when no epoch did
      (censored at training_seconds), None without a target.
    Accuracies are percentages (0-100); epochs are 1-based.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    selected_by = (
        SELECTED_BY_VALIDATION
        if any(rec.get("val_top1") is not None for rec in epochs)
        else SELECTED_BY_TEST
    )
    selecting = "val_top1" if selected_by == SELECTED_BY_VALIDATION else "test_top1"
    reached_epoch = None
    best_top1 = best_epoch = selection_top1 = None
    for rec in epochs:
        if not target_reached(rec.get("sparsity"), target_sparsity):
            continue
        if reached_epoch is None:
            reached_epoch = rec["epoch"]
        score = rec.get(selecting)
        if score is not None and (selection_top1 is None or score > selection_top1):
            selection_top1, best_top1, best_epoch = score, rec["test_top1"], rec["epoch"]
    final = epochs[-1] if epochs else None
    final_top1 = final["test_top1"] if final else None
    window = [rec["test_top1"] for rec in epochs[-STABILITY_WINDOW:]]
    std_last10 = None
    if window:
        mean = sum(window) / len(window)
        std_last10 = math.sqrt(sum((a - mean) ** 2 for a in window) / len(window))
    info = model_info or {}
    compression = _ratio(info.get("parameters_total"), final, "parameters_nonzero")
    speedup = _ratio(info.get("macs_dense"), final, "macs_nonzero")
    peaks = [rec.get("peak_memory_mb") for rec in epochs if rec.get("peak_memory_mb") is not None]
    return {
        "status": status,
        "error": error,
        "environment_failure": environment_failure and status == STATUS_FAILED,
        "epochs_completed": len(epochs),
        "best_top1": best_top1,
        "best_epoch": best_epoch,
        "final_top1": final_top1,
        "final_top5": final["test_top5"] if final else None,
        "final_sparsity": final.get("sparsity") if final else None,
        "std_last10": std_last10,
        "peak_to_final": (best_top1 - final_top1) if best_top1 is not None else None,
        "target_reached_epoch": reached_epoch,
        "total_seconds": total_seconds,
        "peak_memory_mb": max(peaks) if peaks else None,
        "compression_ratio": compression,
        "theoretical_speedup": speedup,
        "selected_by": selected_by,
        "selection_top1": selection_top1,
        "stopped_by": _stopped_by(epochs, status),
        **_time_to_target(epochs, target_sparsity, val_target, info),
    }


def _stopped_by(epochs: list[dict[str, Any]], status: str) -> str | None:
    if status != STATUS_COMPLETED:
        return None
    if any(rec.get(TIME_BUDGET_STOP) for rec in epochs):
        return STOPPED_BY_TIME_BUDGET
    return STOPPED_BY_EPOCHS


def _time_to_target(
    epochs: list[dict[str, Any]],
    target_sparsity: float,
    val_target: float,
    model_info: dict[str, Any],
) -> dict[str, Any]:
    """training_seconds and the time_to_target_* fields of `summarize`."""
    seconds = [rec.get("train_seconds") for rec in epochs]
    known = all(s is not None for s in seconds)
    fields: dict[str, Any] = {
        "training_seconds": sum(seconds) if known else None,
        "val_target": val_target if val_target > 0 else None,
        "time_to_target_reached": None,
        "time_to_target_epoch": None,
        "time_to_target_seconds": None,
        "time_to_target_steps": None,
    }
    if val_target <= 0:
        return fields
    fields["time_to_target_reached"] = False
    per_epoch = model_info.get("steps_per_epoch")
    elapsed, steps = 0.0, 0
    for rec in epochs:
        elapsed += rec.get("train_seconds") or 0.0
        steps += rec.get("train_steps", per_epoch or 0)
        val = rec.get("val_top1")
        if val is None or val < val_target:
            continue
        if not target_reached(rec.get("sparsity"), target_sparsity):
            continue
        fields.update(
            time_to_target_reached=True,
            time_to_target_epoch=rec["epoch"],
            time_to_target_seconds=elapsed if known else None,
            time_to_target_steps=steps,
        )
        break
    return fields


def _ratio(dense: Any, final: dict[str, Any] | None, key: str) -> float | None:
    """dense / final[key]: what pruning buys (None when a figure is missing or 0)."""
    nonzero = final.get(key) if final else None
    if not dense or not nonzero:
        return None
    return dense / nonzero


def run_identity(spec: RunSpec) -> dict[str, Any]:
    """The `identity` block: what the report groups and compares runs by."""
    from lib import catalogue

    opt, pruning = spec.optimizer, spec.pruning
    entry = catalogue.catalogue().optimizers.get(opt.name)
    identity = {
        "model": spec.model.name,
        "stem": spec.model.stem,
        "dataset": spec.data.name,
        "optimizer": opt.name,
        "optimizer_label": opt.label,
        "base_optimizer": entry.base(opt) if entry is not None and entry.base else None,
        # The pruning method's variant (state pruning's score); the key keeps its old name.
        "prune_score": spec.method_variant,
        "pruning": pruning.active_method,
        "target_sparsity": pruning.target,
        "seed": spec.seed,
    }
    # Plug-ins: which distribution (and version) trained the run.
    for part, sub in (("optimizer", opt), ("pruning", pruning)):
        if sub.distribution:
            identity[f"{part}_distribution"] = f"{sub.distribution} {sub.distribution_version}"
    return identity


def build_document(
    spec: RunSpec,
    epochs: list[dict[str, Any]],
    *,
    status: str,
    error: str | None = None,
    environment: dict[str, Any] | None = None,
    model_info: dict[str, Any] | None = None,
    state_memory: dict[str, Any] | None = None,
    environment_failure: bool = False,
) -> dict[str, Any]:
    """A complete metrics.json document for `spec` from its epoch records.

    `total_seconds` in the summary is the sum of the recorded epochs' wall time (training +
    evaluation), so it does not depend on how often a run was interrupted and resumed.
    """
    identity = run_identity(spec)
    total = sum(rec["epoch_seconds"] for rec in epochs) if epochs else 0.0
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "matrix": spec.matrix,
        "identity": identity,
        "spec": spec.to_dict(),
        "environment": environment or {},
        "model_info": model_info or {},
        "state_memory": state_memory or {},
        "epochs": epochs,
        "summary": summarize(
            epochs,
            identity["target_sparsity"],
            status=status,
            error=error,
            total_seconds=total,
            environment_failure=environment_failure,
            model_info=model_info,
            val_target=spec.data.val_target,
        ),
    }


class MatrixWithoutPlan(ValueError):
    """The newest matrix directory holds runs but no matrix.json (one-line message)."""


def _activity(matrix_dir: Path) -> float:
    """When a matrix directory without matrix.json was last written: the directory itself
    (deleting matrix.json counts) and its runs' run.json and metrics.json."""
    paths = [matrix_dir, *matrix_dir.glob("*/run.json"), *matrix_dir.glob(f"*/{METRICS_FILE}")]
    times = []
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except OSError:  # replaced or removed since it was listed
            continue
    return max(times, default=0.0)


def newest_matrix(results_dir: str | os.PathLike[str]) -> Path | None:
    """The matrix directory under `results_dir` whose matrix.json was written last (comparison
    outputs, `compare-*`, are not matrices), or None when there is none.

    A directory that holds runs but no matrix.json is never passed over for an older matrix:
    when it was written after the newest matrix.json, MatrixWithoutPlan names it. Its plan is
    not rebuilt from the runs' run.json files, which miss the runs that never started and
    the matrix's configuration snapshot; make test-matrix with the .config that planned it
    writes matrix.json again and keeps every finished run.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return None
    planned: list[tuple[float, Path]] = []
    unplanned: list[tuple[float, Path]] = []
    for path in results_dir.iterdir():
        if path.name.startswith("compare-") or not path.is_dir():
            continue
        if (path / MATRIX_FILE).is_file():
            planned.append(((path / MATRIX_FILE).stat().st_mtime, path))
        elif any(path.glob("*/run.json")) or any(path.glob(f"*/{METRICS_FILE}")):
            unplanned.append((_activity(path), path))
    newest = max(planned, default=None)
    orphan = max(unplanned, default=None)
    if orphan is not None and (newest is None or orphan[0] >= newest[0]):
        raise MatrixWithoutPlan(
            f"{orphan[1]} holds runs but no {MATRIX_FILE} (its plan) and is the newest matrix "
            f"under {results_dir}: run make test-matrix with the .config that planned it "
            "(finished runs are kept), or name another matrix with MATRIX=NAME"
        )
    return newest[1] if newest is not None else None
