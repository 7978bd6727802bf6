"""The report's PNG plots (matplotlib, Agg backend), drawn from the loaded result records.

Every plot keeps one colour per method (the report's column order), says what it shows in
its title, and puts units on its axes. Runs that do not count (unfinished, short, target not
reached) are drawn dashed and labelled; no average includes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from lib.atomic import atomic_file  # noqa: E402
from lib.spec import sparsity_token  # noqa: E402
from lib.store import StoreError, open_dir, open_run_dir  # noqa: E402
from scripts.report.cells import dense_key_of, resolve_comparison  # noqa: E402
from scripts.report.data import (  # noqa: E402
    DATASET_DISPLAY,
    MODEL_DISPLAY,
    MatrixResults,
    ReportError,
    RunResult,
    method_display_name,
)
from scripts.report.protocol import PROFILE_TAU_MAX, target_grid, target_profile  # noqa: E402
from scripts.report.stats import estimate  # noqa: E402

PLOT_KINDS = (
    "accuracy_evolution",
    "accuracy_vs_sparsity",
    "memory",
    "memory_vs_accuracy",
    "sparsity",
    "operating_points",
    "time_to_target",
)
DPI = 120
FIGSIZE = (9, 5.5)
SPARSITY_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

CUDA_LABEL = "Peak CUDA memory allocated (MiB)"
CPU_LABEL = "Peak CPU RSS of the training process (MiB)"


@dataclass(frozen=True)
class PlotFile:
    path: Path
    caption: str


def colors(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method, by its place in the report's method order."""
    palette = plt.get_cmap("tab10").colors
    return {
        key: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, key in enumerate(methods)
    }


def _sparsity_text(sparsity: float) -> str:
    return "dense (0% sparsity)" if sparsity == 0 else f"{sparsity * 100:g}% sparsity"


def _title_prefix(results: MatrixResults) -> str:
    spec = results.first_spec()
    model = spec.get("model", {}).get("name", "")
    dataset = spec.get("data", {}).get("name", "")
    parts = [MODEL_DISPLAY.get(model, model), DATASET_DISPLAY.get(dataset, dataset)]
    return " ".join(p for p in parts if p)


def _plots_dir(path: Path) -> int:
    """A descriptor of the plots directory `path`, opened relative to its matrix directory with
    neither opened through a link (lib/store.py): a directory swapped for a link is refused,
    never written into or emptied."""
    try:
        return open_run_dir(path)
    except StoreError as e:
        raise ReportError(f"nothing written: {e}") from None


def make_plots_dir(path: Path) -> None:
    """Create the plots directory `path` inside its matrix directory, which is opened without
    following a link: a matrix directory swapped for a link gets no plots directory."""
    try:
        parent = open_dir(path.parent)
    except StoreError as e:
        raise ReportError(f"nothing written: {e}") from None
    try:
        os.mkdir(path.name, 0o777, dir_fd=parent)
    except FileExistsError:
        pass
    finally:
        os.close(parent)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    dir_fd = _plots_dir(path.parent)
    try:
        with atomic_file(path, "wb", dir_fd=dir_fd) as f:
            fig.savefig(f, dpi=DPI, format=path.suffix.lstrip("."))
    finally:
        os.close(dir_fd)
        plt.close(fig)


def _run_memory(run: RunResult) -> tuple[str, float] | None:
    """The run's headline peak: CUDA allocated when it ran on CUDA, else CPU peak RSS."""
    peaks = run.peak_memory()
    if peaks["cuda_allocated_mb"] is not None:
        return CUDA_LABEL, peaks["cuda_allocated_mb"]
    if peaks["cpu_rss_mb"] is not None:
        return CPU_LABEL, peaks["cpu_rss_mb"]
    return None


@dataclass(frozen=True)
class SparsityPoint:
    """One cell of the accuracy-vs-sparsity plot: the best-accuracy estimate the tables show."""

    sparsity: float
    mean: float
    low: float  # 95% CI of the mean (= mean with one seed)
    high: float
    n: int  # seeds that count
    planned: int  # seeds planned

    @property
    def partial(self) -> bool:
        return self.n < self.planned


def sparsity_points(results: MatrixResults, key: str) -> list[SparsityPoint]:
    """Best top-1 per target sparsity of one method, from the runs that count, with the same
    95% interval of the mean as the report's tables (scripts.report.stats.estimate)."""
    points = []
    for sparsity in results.sparsities():
        planned = results.cell(key, sparsity)
        values = [
            r.summary["best_top1"]
            for r in results.counted(key, sparsity)
            if r.summary["best_top1"] is not None
        ]
        if not values:
            continue
        est = estimate(values)
        low = est.ci_low if est.ci_low is not None else est.mean
        high = est.ci_high if est.ci_high is not None else est.mean
        points.append(SparsityPoint(sparsity, est.mean, low, high, est.n, len(planned)))
    return points


# A cell's runs drawn one by one under their mean; a cell of more (many seeds, trials) shows
# only the mean and its band, which is what can be read at that size.
MAX_RUN_CURVES = 10


def _epoch_means(
    runs: list[RunResult], first_epoch: int, field: str = "test_top1", scale: float = 1.0
) -> tuple[list[int], list, list, list]:
    """Per epoch present in every run: the mean of `field` (times `scale`) and its 95%
    interval over the runs."""
    by_epoch = [
        {e["epoch"]: e[field] * scale for e in reversed(r.epochs) if e.get(field) is not None}
        for r in runs
    ]
    common = set.intersection(*(set(values) for values in by_epoch))
    epochs = sorted(e for e in common if e >= first_epoch)
    means, lows, highs = [], [], []
    for epoch in epochs:
        values = [per_run[epoch] for per_run in by_epoch]
        est = estimate(values)
        means.append(est.mean)
        lows.append(est.ci_low if est.ci_low is not None else est.mean)
        highs.append(est.ci_high if est.ci_high is not None else est.mean)
    return epochs, means, lows, highs


def _run_curve(run: RunResult, first_epoch: int, field: str, scale: float) -> tuple[list, list]:
    records = [e for e in run.epochs if e["epoch"] >= first_epoch and e.get(field) is not None]
    return [e["epoch"] for e in records], [e[field] * scale for e in records]


def _draw_mean_band(
    ax: plt.Axes, runs: list[RunResult], color: str, label: str | None, first_epoch: int,
    tag: str, field: str = "test_top1", scale: float = 1.0, linewidth: float = 1.8,
) -> None:  # fmt: skip
    """Mean over the runs, its 95% band (several runs), and each run thin underneath while
    there are few enough to tell apart (MAX_RUN_CURVES): past that, mean and band alone.
    A None label keeps the cell out of the legend (a method already there)."""
    for run in runs if len(runs) <= MAX_RUN_CURVES else []:
        xs, ys = _run_curve(run, first_epoch, field, scale)
        ax.plot(xs, ys, color=color, linewidth=0.7, alpha=0.35, label="_seed")
    epochs, means, lows, highs = _epoch_means(runs, first_epoch, field, scale)
    if len(runs) > 1:
        ax.fill_between(epochs, lows, highs, color=color, alpha=0.18, label=f"_band_{tag}")
        if label is not None:
            label += f" (mean of {len(runs)} seeds, 95% band)"
    ax.plot(epochs, means, color=color, linewidth=linewidth, label=label or "_mean")


def _draw_uncounted(
    ax: plt.Axes, runs: list[RunResult], color: str, name: str | None, first_epoch: int,
    field: str = "test_top1", scale: float = 1.0, linewidth: float = 1.0,
) -> None:  # fmt: skip
    """Runs of a cell that do not count, dashed: each labelled with why while there are few
    enough (MAX_RUN_CURVES), past that one dashed mean of them (their reasons are in the
    report's tables). A None name leaves them out of the legend."""
    if len(runs) <= MAX_RUN_CURVES:
        for run in runs:
            xs, ys = _run_curve(run, first_epoch, field, scale)
            label = f"{name} seed {run.seed} ({run.exclusion[0]})" if name else "_uncounted"
            ax.plot(xs, ys, color=color, linestyle="--", linewidth=linewidth, label=label)
        return
    epochs, means, _, _ = _epoch_means(runs, first_epoch, field, scale)
    label = f"{name}: mean of {len(runs)} runs that do not count" if name else "_uncounted"
    ax.plot(epochs, means, color=color, linestyle="--", linewidth=linewidth, label=label)


def draw_accuracy_mean(
    ax: plt.Axes, results: MatrixResults, methods: Sequence[str], sparsity: float,
    first_epoch: int,
) -> None:  # fmt: skip
    """One sparsity: per method the mean over the seeds that count with its 95% band; runs
    that do not count dashed and labelled with why."""
    palette = colors(methods)
    reached_epochs = []
    for key in methods:
        runs = results.cell(key, sparsity)
        counted = [r for r in runs if r.counts and r.epochs]
        if counted:
            _draw_mean_band(ax, counted, palette[key], method_display_name(key), first_epoch, key)
            reached_epochs += [r.summary["target_reached_epoch"] for r in counted]
        uncounted = [r for r in runs if not r.counts and r.epochs]
        if uncounted:
            _draw_uncounted(ax, uncounted, palette[key], method_display_name(key), first_epoch)
    reached = [e for e in reached_epochs if e is not None]
    if sparsity > 0 and reached and min(reached) >= first_epoch:
        ax.axvline(
            min(reached), color="grey", linestyle=":", linewidth=1,
            label="target sparsity reached",
        )  # fmt: skip
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_ylabel("Test top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)


def _method_view(results: MatrixResults, key: str, out_dir: Path) -> PlotFile | None:
    """The seed's view: one method across its sparsity levels (its dense run as 0%)."""
    levels = [(s, results.counted(key, s)) for s in results.sparsities() if s > 0]
    levels = [(s, [r for r in runs if r.epochs]) for s, runs in levels]
    levels = [(s, runs) for s, runs in levels if runs]
    dense = [r for r in results.counted(dense_key_of(key), 0.0) if r.epochs]
    if dense:
        levels.insert(0, (0.0, dense))
    if len(levels) < 2:
        return None
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for i, (sparsity, runs) in enumerate(levels):
        color = matplotlib.colors.to_hex(cmap(i / max(1, len(levels) - 1) * 0.9))
        _draw_mean_band(ax, runs, color, _sparsity_text(sparsity), 1, f"{sparsity:g}")
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Test top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(f"{_title_prefix(results)}: {method_display_name(key)} across sparsity levels")
    path = out_dir / f"accuracy_evolution_method_{key}.png"
    _save(fig, path)
    return PlotFile(path, f"{method_display_name(key)}: test top-1 per epoch at each sparsity")


def plot_accuracy_evolution(
    results: MatrixResults, methods: Sequence[str], out_dir: Path
) -> list[PlotFile]:
    """One figure per sparsity: the whole run (left) and the part that decides the result
    (right: from the first epoch at the target sparsity, where the accuracies are close);
    then, per pruning method, the seed's one-method-across-sparsities view."""
    files = []
    for sparsity in results.sparsities():
        runs = [r for r in results.runs if r.target_sparsity == sparsity and r.epochs]
        if not runs:
            continue
        last_epoch = max(e["epoch"] for r in runs for e in r.epochs)
        reached = [r.summary["target_reached_epoch"] for r in runs if r.summary and r.counts]
        reached = [e for e in reached if e is not None]
        # Dense runs have no target to reach; zoom on the second half instead.
        zoom_from = min(reached) if sparsity > 0 and reached else (last_epoch + 1) // 2
        fig, (full, zoom) = plt.subplots(
            1, 2, figsize=(FIGSIZE[0] * 1.5, FIGSIZE[1]), gridspec_kw={"width_ratios": [3, 2]}
        )
        draw_accuracy_mean(full, results, methods, sparsity, first_epoch=1)
        draw_accuracy_mean(zoom, results, methods, sparsity, first_epoch=max(1, zoom_from))
        full.set_title("All epochs")
        zoom.set_title(
            f"From epoch {zoom_from}"
            + (" (target sparsity reached)" if sparsity > 0 and reached else "")
        )
        full.legend(loc="lower right", fontsize="small")
        seeds = len({r.seed for r in runs})
        note = f" (mean over {seeds} seeds with 95% band; thin: each seed)" if seeds > 1 else ""
        fig.suptitle(
            f"{_title_prefix(results)}: test top-1 accuracy, {_sparsity_text(sparsity)}{note}"
        )
        path = out_dir / f"accuracy_evolution_{sparsity_token(sparsity)}.png"
        _save(fig, path)
        files.append(PlotFile(path, f"Test top-1 accuracy per epoch, {_sparsity_text(sparsity)}"))
    for key in methods:
        if not key.endswith("_dense"):
            view = _method_view(results, key, out_dir)
            if view is not None:
                files.append(view)
    return files


def draw_accuracy_vs_sparsity(
    ax: plt.Axes,
    results: MatrixResults,
    methods: Sequence[str],
    palette: dict[str, str],
    linestyle: str = "-",
    suffix: str = "",
    dodge_offset: float = 0.0,
) -> int:
    """Mean best top-1 per sparsity with the tables' 95% intervals as error bars; a dense
    method as a horizontal line with its 95% band. A cell with fewer seeds than planned is
    marked with its count. Returns the most seeds behind any point (0: nothing drawn)."""
    seeds = 0
    pruned_methods = [k for k in methods if any(s > 0 for s in _method_sparsities(results, k))]
    for key in methods:
        points = sparsity_points(results, key)
        if not points:
            continue
        seeds = max(seeds, *(p.n for p in points))
        name = f"{method_display_name(key)}{suffix}"
        if [p.sparsity for p in points] == [0.0]:  # dense only: a reference across sparsities
            p = points[0]
            ax.axhline(
                p.mean, color=palette[key], linestyle=linestyle, linewidth=1.4,
                label=f"{name}: {p.mean:.2f}%" + ("" if p.n > 1 else " (one seed)"),
            )  # fmt: skip
            if p.high > p.low:
                ax.axhspan(p.low, p.high, color=palette[key], alpha=0.12, label="_dense_band")
            continue
        # Nudge methods sideways a little so error bars at one sparsity do not hide each other.
        dodge = dodge_offset
        if key in pruned_methods:
            dodge += (pruned_methods.index(key) - (len(pruned_methods) - 1) / 2) * 0.6
        xs = [p.sparsity * 100 + (dodge if p.sparsity > 0 else 0.0) for p in points]
        ax.errorbar(
            xs, [p.mean for p in points],
            yerr=[[p.mean - p.low for p in points], [p.high - p.mean for p in points]],
            color=palette[key], marker="o", capsize=4, linewidth=1.6, linestyle=linestyle,
            label=name, markersize=7,
            # Hollow markers for a second (dashed) series: the legend shows markers, not dashes.
            markerfacecolor=palette[key] if linestyle == "-" else "white",
        )  # fmt: skip
        for x, p in zip(xs, points, strict=True):
            if p.partial:
                ax.annotate(
                    f"{p.n} of {p.planned} seeds", xy=(x, p.mean), xytext=(6, -12),
                    textcoords="offset points", fontsize="x-small", color=palette[key],
                )  # fmt: skip
    return seeds


def finish_accuracy_vs_sparsity(
    ax: plt.Axes,
    sparsities: Sequence[float],
    title: str,
    legend_below: bool = False,
    seeds: int = 2,
) -> None:
    levels = [s * 100 for s in sparsities if s > 0]
    if levels:
        ax.set_xticks(levels, [f"{level:g}%" for level in levels])
    ax.set_title(title)
    ax.set_xlabel("Target sparsity (%)")
    if seeds > 1:
        ax.set_ylabel("Best test top-1 accuracy (%)\n(mean over seeds, bars: 95% CI of the mean)")
    else:
        ax.set_ylabel("Best test top-1 accuracy (%)\n(one seed per cell: no error bars)")
    ax.grid(True, alpha=0.3)
    if legend_below:
        ax.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small",
            frameon=False,
        )  # fmt: skip
    else:
        ax.legend(loc="lower left", fontsize="small")


def plot_accuracy_vs_sparsity(
    results: MatrixResults, methods: Sequence[str], out_dir: Path
) -> list[PlotFile]:
    fig, ax = plt.subplots(figsize=FIGSIZE)
    seeds = draw_accuracy_vs_sparsity(ax, results, methods, colors(methods))
    if not seeds:
        plt.close(fig)
        return []
    finish_accuracy_vs_sparsity(
        ax,
        results.sparsities(),
        f"{_title_prefix(results)}: best top-1 accuracy vs target sparsity",
        seeds=seeds,
    )
    path = out_dir / "accuracy_vs_sparsity.png"
    _save(fig, path)
    bars = "error bars: 95% CI of the mean" if seeds > 1 else "one seed: no error bars"
    return [PlotFile(path, f"Best top-1 accuracy vs target sparsity ({bars})")]


# What pruning buys (docs/metrics.md): the summary's ratio, its axis label and file name.
OPERATING_POINTS = {
    "compression_ratio": ("Compression ratio (all / nonzero parameters, log scale)", "compression"),
    "theoretical_speedup": ("Theoretical speedup (dense / nonzero MACs, log scale)", "speedup"),
}
OPERATING_TITLES = {"compression": "compression ratio", "speedup": "theoretical speedup"}


@dataclass(frozen=True)
class OperatingPoint:
    """One method at one target sparsity: where it lands on the cost axis (mean over the seeds
    that count) and its best top-1 with the tables' 95% interval."""

    x: float
    point: SparsityPoint


def operating_points(results: MatrixResults, key: str, metric: str) -> list[OperatingPoint]:
    """A method's accuracy at each sparsity against `metric` (compression_ratio or
    theoretical_speedup, from the runs' summaries): the same runs as the accuracy estimate.
    A cell whose runs lack the metric (written before it was recorded) is left out."""
    points = []
    for p in sparsity_points(results, key):
        runs = [r for r in results.counted(key, p.sparsity) if r.summary["best_top1"] is not None]
        values = [r.summary.get(metric) for r in runs]
        if not values or any(v is None for v in values):
            continue
        points.append(OperatingPoint(sum(values) / len(values), p))
    return sorted(points, key=lambda o: o.x)


def plot_operating_points(
    results: MatrixResults, methods: Sequence[str], out_dir: Path
) -> list[PlotFile]:
    """Accuracy against compression ratio and against theoretical speedup (ShrinkBench's
    operating-point curves): one line per method, a band for the 95% interval over seeds.
    A dense method is one point at 1x: the reference each pruned line is read against."""
    palette = colors(methods)
    files = []
    for metric, (label, name) in OPERATING_POINTS.items():
        fig, ax = plt.subplots(figsize=FIGSIZE)
        seeds = 0
        for key in methods:
            points = operating_points(results, key, metric)
            if not points:
                continue
            seeds = max(seeds, *(o.point.n for o in points))
            xs = [o.x for o in points]
            ax.plot(
                xs, [o.point.mean for o in points], color=palette[key], marker="o",
                linewidth=1.6, label=method_display_name(key),
            )  # fmt: skip
            if len(points) == 1:  # a dense method: one point, its interval as a bar
                o = points[0]
                ax.errorbar(
                    xs, [o.point.mean], yerr=[[o.point.mean - o.point.low],
                    [o.point.high - o.point.mean]], color=palette[key], capsize=4,
                    label="_bar",
                )  # fmt: skip
            elif any(o.point.high > o.point.low for o in points):
                ax.fill_between(
                    xs, [o.point.low for o in points], [o.point.high for o in points],
                    color=palette[key], alpha=0.15, label="_band",
                )  # fmt: skip
        if not seeds:
            plt.close(fig)
            continue
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
        ax.set_xlabel(label)
        band = "band: 95% CI of the mean" if seeds > 1 else "one seed: no band"
        ax.set_ylabel(f"Best test top-1 accuracy (%)\n(mean over seeds, {band})")
        ax.set_title(f"{_title_prefix(results)}: best top-1 accuracy vs {OPERATING_TITLES[name]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
        path = out_dir / f"accuracy_vs_{name}.png"
        _save(fig, path)
        files.append(PlotFile(path, f"Best top-1 accuracy vs {label[0].lower()}{label[1:]}"))
    return files


def comparison_figure(a: MatrixResults, b: MatrixResults) -> tuple[plt.Figure, plt.Axes] | None:
    """Accuracy vs sparsity of two matrices in one plot: A solid, B dashed; each method has
    the colour it has in A's own report (B's extra methods follow)."""
    methods = resolve_comparison(a).methods
    methods += [k for k in resolve_comparison(b).methods if k not in methods]
    palette = colors(methods)
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] * 1.2, FIGSIZE[1] + 0.4 * len(methods)))
    seeds_a = draw_accuracy_vs_sparsity(ax, a, methods, palette, "-", f" [A: {a.name}]", -0.3)
    seeds_b = draw_accuracy_vs_sparsity(ax, b, methods, palette, "--", f" [B: {b.name}]", 0.3)
    if not (seeds_a or seeds_b):
        plt.close(fig)
        return None
    finish_accuracy_vs_sparsity(
        ax,
        sorted(set(a.sparsities()) | set(b.sparsities())),
        "Best top-1 accuracy vs target sparsity: A (solid, filled) vs B (dashed, hollow)",
        legend_below=True,
        seeds=max(seeds_a, seeds_b),
    )
    return fig, ax


def plot_comparison(a: MatrixResults, b: MatrixResults, out_dir: Path) -> list[PlotFile]:
    drawn = comparison_figure(a, b)
    if drawn is None:
        return []
    path = out_dir / "accuracy_vs_sparsity.png"
    _save(drawn[0], path)
    return [
        PlotFile(
            path, "Best top-1 accuracy vs target sparsity: A solid and filled, B dashed and hollow"
        )
    ]


def _method_sparsities(results: MatrixResults, key: str) -> list[float]:
    return sorted({r.target_sparsity for r in results.runs if r.method_key == key})


def _memory_by_kind(results: MatrixResults) -> dict[str, list[tuple[RunResult, float]]]:
    by_kind: dict[str, list[tuple[RunResult, float]]] = {}
    for run in results.counted():
        memory = _run_memory(run)
        if memory is not None:
            by_kind.setdefault(memory[0], []).append((run, memory[1]))
    return by_kind


MEMORY_TITLES = {
    CUDA_LABEL: "peak CUDA memory allocated per run",
    CPU_LABEL: "peak CPU RSS per run (whole training process)",
}


def plot_memory(results: MatrixResults, methods: Sequence[str], out_dir: Path) -> list[PlotFile]:
    drawn = memory_figure(results, methods)
    if drawn is None:
        return []
    path = out_dir / "memory.png"
    _save(drawn[0], path)
    return [PlotFile(path, "Peak memory per method and sparsity (each run's own process)")]


def memory_figure(
    results: MatrixResults, methods: Sequence[str]
) -> tuple[plt.Figure, list[plt.Axes]] | None:
    by_kind = _memory_by_kind(results)
    if not by_kind:
        return None
    palette = colors(methods)
    sparsities = results.sparsities()
    rows = len(by_kind)
    fig, axes = plt.subplots(rows, 1, figsize=(FIGSIZE[0], (FIGSIZE[1] + 0.6) * rows))
    axes = list(axes) if rows > 1 else [axes]
    for ax, (kind, entries) in zip(axes, sorted(by_kind.items()), strict=True):
        labelled: set[str] = set()
        present = {
            sparsity: [
                k
                for k in methods
                if any(r.method_key == k and r.target_sparsity == sparsity for r, _ in entries)
            ]  # fmt: skip
            for sparsity in sparsities
        }
        width = 0.8 / max(1, max(len(keys) for keys in present.values()))
        for group, sparsity in enumerate(sparsities):
            # Centre only the bars this sparsity has (a dense method has one bar, alone).
            keys = present[sparsity]
            for slot, key in enumerate(keys):
                values = [
                    v for r, v in entries if r.method_key == key and r.target_sparsity == sparsity
                ]
                bars = ax.bar(
                    group + (slot - (len(keys) - 1) / 2) * width, max(values), width=width,
                    color=palette[key],
                    label=None if key in labelled else method_display_name(key),
                )  # fmt: skip
                labelled.add(key)
                ax.bar_label(bars, fmt="{:,.1f}", fontsize="x-small", padding=2)
        ax.set_xticks(range(len(sparsities)), [_sparsity_text(s) for s in sparsities])
        ax.set_xlabel("Target sparsity")
        ax.margins(y=0.12)
        # Bars start at zero: a bar's length is its value, so 1.5% apart looks 1.5% apart;
        # the printed labels carry the exact figures.
        ax.set_ylim(bottom=0)
        ax.set_ylabel(kind)
        ax.set_title(f"{_title_prefix(results)}: {MEMORY_TITLES[kind]} (max over seeds)")
        ax.grid(True, axis="y", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        order = {method_display_name(k): i for i, k in enumerate(methods)}
        legend = sorted(zip(handles, labels, strict=True), key=lambda hl: order[hl[1]])
        ax.legend(
            [h for h, _ in legend], [lbl for _, lbl in legend],
            loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(3, len(labelled)),
            fontsize="small", frameon=False,
        )  # fmt: skip
    return fig, axes


def plot_memory_vs_accuracy(
    results: MatrixResults, methods: Sequence[str], out_dir: Path
) -> list[PlotFile]:
    by_kind = _memory_by_kind(results)
    points = {
        kind: [(r, v) for r, v in entries if r.counts and r.summary["best_top1"] is not None]
        for kind, entries in by_kind.items()
    }
    points = {kind: entries for kind, entries in points.items() if entries}
    if not points:
        return []
    palette = colors(methods)
    sparsities = results.sparsities()
    markers = {s: SPARSITY_MARKERS[i % len(SPARSITY_MARKERS)] for i, s in enumerate(sparsities)}
    fig, axes = plt.subplots(len(points), 1, figsize=(FIGSIZE[0], FIGSIZE[1] * len(points)))
    axes = list(axes) if len(points) > 1 else [axes]
    for ax, (kind, entries) in zip(axes, sorted(points.items()), strict=True):
        # One scatter call per method and sparsity (not per run): thousands of runs draw fast.
        groups: dict[tuple[str, float], list[tuple[float, float]]] = {}
        for run, memory in entries:
            groups.setdefault((run.method_key, run.target_sparsity), []).append(
                (memory, run.summary["best_top1"])
            )
        for (key, sparsity), xy in groups.items():
            ax.scatter(
                [x for x, _ in xy], [y for _, y in xy], color=palette[key],
                marker=markers[sparsity], s=70, edgecolors="black", linewidths=0.5,
            )  # fmt: skip
        present_methods = [k for k in methods if any(r.method_key == k for r, _ in entries)]
        present_sparsities = [
            s for s in sparsities if any(r.target_sparsity == s for r, _ in entries)
        ]
        handles = [
            Line2D(
                [], [], marker="o", linestyle="none", color=palette[k], label=method_display_name(k)
            )
            for k in present_methods
        ] + [
            Line2D(
                [], [], marker=markers[s], linestyle="none", color="grey", label=_sparsity_text(s)
            )
            for s in present_sparsities
        ]
        ax.legend(handles=handles, loc="best", fontsize="small")
        ax.set_xlabel(kind)
        ax.set_ylabel("Best test top-1 accuracy (%)")
        ax.set_title(f"{_title_prefix(results)}: accuracy vs memory (one point per completed run)")
        ax.grid(True, alpha=0.3)
    path = out_dir / "memory_vs_accuracy.png"
    _save(fig, path)
    return [PlotFile(path, "Best top-1 accuracy vs peak memory, one point per completed run")]


def plot_sparsity(results: MatrixResults, methods: Sequence[str], out_dir: Path) -> list[PlotFile]:
    drawn = sparsity_figure(results, methods)
    if drawn is None:
        return []
    path = out_dir / "sparsity.png"
    _save(drawn[0], path)
    return [
        PlotFile(
            path,
            "Measured sparsity over training: mean per method and target with its 95% band over "
            "the seeds (dotted lines: targets)",
        )
    ]


def sparsity_figure(
    results: MatrixResults, methods: Sequence[str]
) -> tuple[plt.Figure, plt.Axes] | None:
    """Measured sparsity per epoch: per method and target, the mean over the runs that count
    with its 95% band (and each run thin while a cell has few), runs that do not count dashed."""
    runs = [r for r in results.runs if r.target_sparsity > 0 and r.epochs]
    if not runs:
        return None
    palette = colors(methods)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    # Methods share one schedule, so their curves often coincide: draw the earlier ones wider
    # so every method stays visible underneath the next.
    widths = {key: 1.4 + 1.2 * (len(methods) - 1 - i) for i, key in enumerate(methods)}
    for key in methods:
        labelled = False
        for target in sorted({r.target_sparsity for r in runs if r.method_key == key}):
            cell = [r for r in runs if r.method_key == key and r.target_sparsity == target]
            counted = [r for r in cell if r.counts and _run_curve(r, 1, "sparsity", 1)[0]]
            uncounted = [r for r in cell if not r.counts and _run_curve(r, 1, "sparsity", 1)[0]]
            if counted:
                label = None if labelled else method_display_name(key)
                _draw_mean_band(
                    ax, counted, palette[key], label, 1, f"{key}_{target:g}", field="sparsity",
                    scale=100, linewidth=widths[key],
                )  # fmt: skip
                labelled = True
            if uncounted:
                name = None if labelled else method_display_name(key)
                _draw_uncounted(
                    ax, uncounted, palette[key], name, 1, field="sparsity", scale=100,
                    linewidth=widths[key],
                )  # fmt: skip
                labelled = True
    for target in sorted({r.target_sparsity for r in runs}):
        ax.axhline(target * 100, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            f"target {target * 100:g}%", xy=(0, target * 100), xycoords=("axes fraction", "data"),
            xytext=(4, 3), textcoords="offset points", fontsize="x-small", color="dimgrey",
        )  # fmt: skip
    ax.set_title(f"{_title_prefix(results)}: measured sparsity of the prunable weights")
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Sparsity (% of prunable weights that are zero)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig, ax


def plot_time_to_target(
    results: MatrixResults, methods: Sequence[str], out_dir: Path
) -> list[PlotFile]:
    """The performance profile of time to target (scripts.report.protocol): per method, the
    fraction of sparsity levels it reaches the validation target within tau times the fastest
    method's median time, tau from 1 to 4."""
    columns = resolve_comparison(results).columns
    taus = [1.0 + (PROFILE_TAU_MAX - 1.0) * i / 300 for i in range(301)]
    count, profile = target_profile(target_grid(results, columns), taus)
    if not count:
        return []
    palette = colors(methods)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for key, values in profile.items():
        ax.step(taus, values, where="post", color=palette.get(key), label=method_display_name(key))
    ax.set_xlim(1.0, PROFILE_TAU_MAX)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau: time to target / fastest method's time at that sparsity")
    ax.set_ylabel(f"Fraction of the {count} sparsity levels reached within tau")
    ax.set_title(f"{_title_prefix(results)}: time-to-target performance profile")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    path = out_dir / "time_to_target.png"
    _save(fig, path)
    return [PlotFile(path, "Time to the validation target: performance profile (tau 1 to 4)")]


PLOTTERS = {
    "accuracy_evolution": plot_accuracy_evolution,
    "accuracy_vs_sparsity": plot_accuracy_vs_sparsity,
    "memory": plot_memory,
    "memory_vs_accuracy": plot_memory_vs_accuracy,
    "sparsity": plot_sparsity,
    "operating_points": plot_operating_points,
    "time_to_target": plot_time_to_target,
}
# Files a kind writes under other names than its own (removed with its stale plots).
PLOT_FILES = {"operating_points": ("accuracy_vs_compression", "accuracy_vs_speedup")}


def render_plots(
    results: MatrixResults,
    methods: Sequence[str],
    out_dir: Path,
    wanted: Sequence[str] | None = None,
) -> list[PlotFile]:
    """Draw the requested plots (all of PLOT_KINDS when `wanted` is None) into out_dir.

    A plot with nothing to draw yet (say, memory before any epoch) is skipped, not drawn empty.
    """
    kinds = list(PLOT_KINDS) if wanted is None else list(wanted)
    unknown = [k for k in kinds if k not in PLOTTERS]
    if unknown:
        raise ReportError(
            f"matrix.json report.plots: unknown plot {unknown[0]!r}; accepted: "
            f"{', '.join(PLOT_KINDS)}"
        )
    if out_dir.is_symlink():
        raise ReportError(
            f"{out_dir} is a symbolic link; the report writes and removes its plots there "
            "and never through a link: remove the link"
        )
    make_plots_dir(out_dir)
    # Plots of an earlier render that this one does not draw (a sparsity level dropped, a plot
    # switched off) would otherwise sit next to the report as if they were current.
    names = [*PLOT_KINDS, *(n for kind in PLOT_KINDS for n in PLOT_FILES.get(kind, ()))]
    dir_fd = _plots_dir(out_dir)
    try:
        for stale in os.listdir(dir_fd):
            if stale.endswith(".png") and any(stale.startswith(name) for name in names):
                os.unlink(stale, dir_fd=dir_fd)  # a link planted there goes, not its target
    finally:
        os.close(dir_fd)
    files: list[PlotFile] = []
    for kind in kinds:
        files += PLOTTERS[kind](results, methods, out_dir)
    return files
