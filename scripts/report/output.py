"""What `make report` writes next to matrix.json: report.md, plots/*.png, metrics.csv (one
row per run), metrics_epochs.csv (one row per epoch) and, for a tuned matrix, tuning.csv (one
row per tuning trial)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from lib.atomic import atomic_file, atomic_write_at
from lib.store import StoreError, open_dir
from scripts.report.cells import resolve_comparison
from scripts.report.data import (
    MatrixResults,
    ReportError,
    RunResult,
    load_matrix,
    method_display_name,
)
from scripts.report.sections import render_report
from scripts.report.tuning import trial_rows

REPORT_FILE = "report.md"
CSV_FILE = "metrics.csv"
PLOTS_DIR = "plots"


# metrics_epochs.csv: these epoch fields first, then any other scalar field the records hold.
CSV_EPOCH_FIELDS = (
    "epoch",
    "train_loss",
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top5",
    "test_images",
    "sparsity",
    "scheduled_sparsity",
    "lr",
    "epoch_seconds",
    "images_per_second",
    "peak_memory_mb",
    "peak_memory_reserved_mb",
    "memory_kind",
)
# `excluded`: why the run is in no number of the report (empty when it counts).
CSV_RUN_FIELDS = (
    "run_id",
    "method_key",
    "method",
    "target_sparsity",
    "seed",
    "status",
    "excluded",
)
# metrics.csv: one row per run; after CSV_RUN_FIELDS, every field of these metrics.json
# blocks, named block.field (the report's re-derived summary, as its tables use it).
CSV_RUN_BLOCKS = ("identity", "summary", "model_info", "state_memory")
EPOCHS_CSV_FILE = "metrics_epochs.csv"
TUNING_CSV_FILE = "tuning.csv"


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: missing, NaN and infinite values are empty (where the report
    prints n/a; never the text "nan"); booleans are true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def _run_prefix(run: RunResult) -> list[Any]:
    return [
        run.run_id,
        run.method_key,
        method_display_name(run.method_key),
        run.target_sparsity,
        run.seed,
        run.status,
        "" if run.counts else run.exclusion[0],
    ]


def _scalar_keys(records: list[dict[str, Any] | None]) -> list[str]:
    """The keys of `records` whose values are scalars (no per-layer dicts), first seen first."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in (record or {}).items():
            if not isinstance(value, (dict, list)):
                keys.setdefault(key, None)
    return list(keys)


def write_metrics_csv(results: MatrixResults, path: Path, *, dir_fd: int | None = None) -> int:
    """One row per planned run: its identity and summary, model and state-memory figures
    (metrics.json's blocks, flattened); returns the number of rows. Every recorded epoch of
    every run goes to metrics_epochs.csv beside it (write_epochs_csv).

    Planned runs only (duplicates and directories the plan does not list are not results of
    this matrix)."""
    blocks = {
        block: _scalar_keys([getattr(run, block) for run in results.runs])
        for block in CSV_RUN_BLOCKS
    }
    header = list(CSV_RUN_FIELDS) + ["reason"]
    header += [f"{block}.{key}" for block, keys in blocks.items() for key in keys]
    with atomic_file(path, "w", newline="", dir_fd=dir_fd) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for run in results.runs:
            row = _run_prefix(run) + [run.reason]
            for block, keys in blocks.items():
                values = getattr(run, block) or {}
                row += [values.get(key) for key in keys]
            writer.writerow([csv_cell(v) for v in row])
    return len(results.runs)


def write_epochs_csv(results: MatrixResults, path: Path, *, dir_fd: int | None = None) -> int:
    """Every recorded epoch of every planned run as one long table; returns the number of
    rows. Per-layer sparsity is left out (one column per layer would make the file
    unreadable); it stays in each run's metrics.json."""
    extra = [
        k
        for k in _scalar_keys([e for run in results.runs for e in run.epochs])
        if k not in CSV_EPOCH_FIELDS
    ]
    fields = list(CSV_EPOCH_FIELDS) + sorted(extra)
    rows = 0
    with atomic_file(path, "w", newline="", dir_fd=dir_fd) as f:
        writer = csv.writer(f)
        writer.writerow(list(CSV_RUN_FIELDS) + fields)
        for run in results.runs:
            prefix = _run_prefix(run)
            for epoch in run.epochs:
                writer.writerow([csv_cell(v) for v in prefix + [epoch.get(k) for k in fields]])
                rows += 1
    return rows


def write_tuning_csv(results: MatrixResults, path: Path, *, dir_fd: int | None = None) -> int:
    """One row per tuning trial (scripts.report.tuning.trial_rows): where it sits, what it
    tried, its selection score, whether its study selected it and whether it is the chosen
    setting; returns the number of rows."""
    rows = trial_rows(results)
    header = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_file(path, "w", newline="", dir_fd=dir_fd) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([csv_cell(row.get(key)) for key in header])
    return len(rows)


def write_report(
    matrix_dir: Path, baseline: str | None = None, candidate: str | None = None
) -> Path:
    """Render report.md, plots/*.png and metrics.csv for one matrix; returns report.md."""
    from scripts.report import plots as plotting  # matplotlib is slow to import; only when drawing

    results = load_matrix(matrix_dir)
    comparison = resolve_comparison(results, baseline, candidate)
    plots_dir = matrix_dir / PLOTS_DIR
    wanted = results.report_settings.get("plots")
    rendered = plotting.render_plots(results, comparison.methods, plots_dir, wanted)
    plot_links = [(f"{PLOTS_DIR}/{p.path.name}", p.caption) for p in rendered]
    # Written relative to the matrix directory's descriptor (lib/store.py: never opened
    # through a link), so a matrix directory swapped for a link is not written through.
    try:
        dir_fd = open_dir(matrix_dir)
    except StoreError as e:  # swapped for a link since load_matrix read it
        raise ReportError(f"nothing written: {e}") from None
    try:
        write_metrics_csv(results, matrix_dir / CSV_FILE, dir_fd=dir_fd)
        write_epochs_csv(results, matrix_dir / EPOCHS_CSV_FILE, dir_fd=dir_fd)
        if results.trials:
            write_tuning_csv(results, matrix_dir / TUNING_CSV_FILE, dir_fd=dir_fd)
        report_path = matrix_dir / REPORT_FILE
        text = render_report(results, comparison, plot_links)
        atomic_write_at(dir_fd, REPORT_FILE, text, report_path)
    finally:
        os.close(dir_fd)
    return report_path
