"""What `make report` writes next to matrix.json: report.md, plots/*.png and metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from lib.atomic import atomic_file, atomic_write_text
from scripts.report.cells import resolve_comparison
from scripts.report.data import MatrixResults, load_matrix, method_display_name
from scripts.report.sections import render_report

REPORT_FILE = "report.md"
CSV_FILE = "metrics.csv"
PLOTS_DIR = "plots"


CSV_EPOCH_FIELDS = (
    "epoch",
    "train_loss",
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top5",
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


def write_metrics_csv(results: MatrixResults, path: Path) -> int:
    """Every recorded epoch of every run as one long table; returns the number of rows.

    Planned runs only (duplicates and directories the plan does not list are not results of
    this matrix). Per-layer sparsity is left out (one column per layer would make the file unreadable);
    it stays in each run's metrics.json.
    """
    rows = 0
    with atomic_file(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_RUN_FIELDS + CSV_EPOCH_FIELDS)
        for run in results.runs:
            prefix = [
                run.run_id,
                run.method_key,
                method_display_name(run.method_key),
                run.target_sparsity,
                run.seed,
                run.status,
                "" if run.counts else run.exclusion[0],
            ]
            for epoch in run.epochs:
                writer.writerow(
                    prefix + ["" if epoch.get(k) is None else epoch[k] for k in CSV_EPOCH_FIELDS]
                )
                rows += 1
    return rows


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
    write_metrics_csv(results, matrix_dir / CSV_FILE)
    report_path = matrix_dir / REPORT_FILE
    atomic_write_text(report_path, render_report(results, comparison, plot_links))
    return report_path
