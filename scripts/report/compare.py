"""`make report COMPARE="A B"`: two matrices side by side.

Writes `<results-dir>/compare-A-vs-B/report.md` (and `plots/accuracy_vs_sparsity.png`). Rows
are the (method, sparsity) cells of either matrix; the difference is B - A, judged with the
same Welch rule as a single report (scripts.report.stats). The configuration symbols that
differ between the two snapshots come first, because they are what the comparison is about.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from lib.atomic import atomic_write_at
from lib.store import StoreError, open_run_dir
from scripts.report.cells import build_cell, fmt_estimate
from scripts.report.data import MatrixResults, ReportError, load_matrix, method_display_name
from scripts.report.markdown import (
    fmt_printed_difference,
    fmt_sparsity,
    fmt_verdict,
    md_escape,
    md_table,
)
from scripts.report.output import PLOTS_DIR, REPORT_FILE
from scripts.report.stats import Difference, Verdict, judge, welch_difference


def comparison_dir_name(name_a: str, name_b: str) -> str:
    return f"compare-{name_a}-vs-{name_b}"


def _cells(a: MatrixResults, b: MatrixResults) -> list[tuple[str, float]]:
    keys = a.method_keys() + [k for k in b.method_keys() if k not in a.method_keys()]
    sparsities = sorted(set(a.sparsities()) | set(b.sparsities()))
    return [(key, s) for key in keys for s in sparsities if a.cell(key, s) or b.cell(key, s)]


def _config_rows(a: MatrixResults, b: MatrixResults) -> list[list[str]]:
    symbols = sorted(set(a.config) | set(b.config))
    return [
        [f"`{sym}`", md_escape(a.config.get(sym, "—")), md_escape(b.config.get(sym, "—"))]
        for sym in symbols
        if a.config.get(sym) != b.config.get(sym)
    ]


def _memory_text(results: MatrixResults, key: str, sparsity: float) -> str:
    cuda, cpu = [], []
    for run in results.counted(key, sparsity):
        peaks = run.peak_memory()
        if peaks["cuda_allocated_mb"] is not None:
            cuda.append(peaks["cuda_allocated_mb"])
        if peaks["cpu_rss_mb"] is not None:
            cpu.append(peaks["cpu_rss_mb"])
    parts = []
    if cuda:
        parts.append(f"{max(cuda):,.1f} MiB CUDA allocated")
    if cpu:
        parts.append(f"{max(cpu):,.1f} MiB CPU peak RSS")
    return "; ".join(parts) or "—"


def _with_verdict(row: list[str], diff: Difference | None, verdict: Verdict | None) -> list[str]:
    if diff is None or verdict is None:
        return row + ["—", "—"]
    change = fmt_printed_difference(diff.candidate_mean, diff.baseline_mean)
    if diff.no_noise_reason == "one seed":
        return row + [change, "no noise estimate (one seed in A or B)"]
    return row + [change, fmt_verdict(verdict)]


def render_comparison(
    a: MatrixResults,
    b: MatrixResults,
    plots: list[tuple[str, str]] | None = None,
    now: dt.datetime | None = None,
) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    lines = [
        f"# Comparison: `{a.name}` (A) vs `{b.name}` (B)",
        "",
        f"**Report generated**: {now:%Y-%m-%d %H:%M} UTC  ",
        f"**Reports**: [A](../{a.path.name}/{REPORT_FILE}), [B](../{b.path.name}/{REPORT_FILE})",
        "",
        "## Configuration differences",
        "",
    ]
    config_rows = _config_rows(a, b)
    if config_rows:
        lines.append(md_table(["Symbol", "A", "B"], config_rows))
    elif a.config or b.config:
        lines.append("The two configuration snapshots are identical.")
    else:
        lines.append("*Neither matrix recorded a configuration snapshot.*")

    tables: dict[str, list[tuple[list[str], Difference | None]]] = {"best": [], "final": []}
    memory_rows = []
    for key, sparsity in _cells(a, b):
        cell_a, cell_b = build_cell(a, key, sparsity), build_cell(b, key, sparsity)
        label = [method_display_name(key), fmt_sparsity(sparsity)]
        for attr, rows in tables.items():
            est_a, est_b = getattr(cell_a, attr), getattr(cell_b, attr)
            row = label + [fmt_estimate(est_a, cell_a), fmt_estimate(est_b, cell_b)]
            diff = None if est_a is None or est_b is None else welch_difference(est_b, est_a)
            rows.append((row, diff))
        memory_rows.append(label + [_memory_text(a, key, sparsity), _memory_text(b, key, sparsity)])
    # Every row of a table is one comparison of the same family: Holm over them.
    any_noise = any(d is not None and d.has_noise_estimate for _, d in tables["best"])
    best_rows, final_rows = (
        [
            _with_verdict(row, diff, v)
            for (row, diff), v in zip(rows, judge([d for _, d in rows]), strict=True)
        ]
        for rows in tables.values()
    )

    header = ["Method", "Sparsity", "A", "B", "B − A", "95% CI of B − A (Welch)"]
    lines += [
        "",
        "## Best top-1 accuracy",
        "",
        "Only epochs at the target sparsity count. Several seeds: mean ± sample std. B − A is "
        "the difference of the printed means; its 95% Welch interval, p-value and df use the "
        "unrounded values, and when several rows are compared the p-values are Holm-adjusted "
        "over them; *significant* when the adjusted p-value is below 0.05.",
        "",
        md_table(header, best_rows),
    ]
    if not any_noise:
        lines += ["", "**One seed per cell: no noise estimate exists** for any difference."]
    lines += [
        "",
        "## Final top-1 accuracy",
        "",
        md_table(header, final_rows),
        "",
        "## Peak memory (each run's own process, max over seeds)",
        "",
        md_table(["Method", "Sparsity", "A", "B"], memory_rows),
    ]
    for matrix, tag in ((a, "A"), (b, "B")):
        left_out = [r for r in matrix.runs if not r.counts] + matrix.duplicates
        if left_out:
            listed = ", ".join(f"`{r.run_id}` ({r.exclusion[0]})" for r in left_out)
            lines += ["", f"Not in the numbers of {tag}: {listed}."]
        if matrix.stray:
            listed = ", ".join(f"`{name}`" for name in matrix.stray)
            lines += ["", f"Directories in {tag} that its plan does not list (ignored): {listed}."]
    if plots:
        lines += ["", "## Visualizations", ""]
        for path, caption in plots:
            lines += [f"![{caption}]({path})", f"*{caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_comparison(matrix_a: Path, matrix_b: Path, results_dir: Path) -> Path:
    from scripts.report.plots import make_plots_dir, plot_comparison

    a, b = load_matrix(matrix_a), load_matrix(matrix_b)
    out_dir = Path(results_dir) / comparison_dir_name(matrix_a.name, matrix_b.name)
    out_dir.mkdir(exist_ok=True)
    make_plots_dir(out_dir / PLOTS_DIR)
    rendered = plot_comparison(a, b, out_dir / PLOTS_DIR)
    links = [(f"{PLOTS_DIR}/{p.path.name}", p.caption) for p in rendered]
    path = out_dir / REPORT_FILE
    try:  # never through a link (lib/store.py), like every write under results/
        dir_fd = open_run_dir(out_dir)
    except StoreError as e:
        raise ReportError(f"nothing written: {e}") from None
    try:
        atomic_write_at(dir_fd, REPORT_FILE, render_comparison(a, b, links), path)
    finally:
        os.close(dir_fd)
    return path
