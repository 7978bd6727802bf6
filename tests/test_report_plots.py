"""The plots show what the tables say: the same 95% intervals, the same runs, the same method
colours in a single report and in COMPARE, line styles as titled, memory differences of a
fraction of a percent visible. Checked on the matplotlib figures before they are saved."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_hex
from report_helpers import FakeRun, write_matrix

from scripts.report import plots
from scripts.report.cells import resolve_comparison
from scripts.report.data import load_matrix
from scripts.report.stats import estimate

CAND = "adamwprune-adamw_state-hybrid"
BASE = "adamwspam_magnitude"


def cells_runs() -> list[FakeRun]:
    """50%: three seeds each; 70%: the candidate has 2 of 3 seeds (one failed); dense: 3."""
    runs = []
    for seed, (c, b) in enumerate(zip([74.0, 74.5, 75.0], [73.0, 73.2, 73.4], strict=True)):
        runs.append(FakeRun("adamwprune", "state", 0.5, seed, [c - 2, c - 1, c]))
        runs.append(
            FakeRun("adamwspam", "magnitude", 0.5, seed, [b - 2, b - 1, b], peak_mb=12792.5)
        )
        runs.append(FakeRun("adamwspam", "magnitude", 0.7, seed, [b - 3, b - 2, b - 1]))
        runs.append(FakeRun("adamwspam", "none", 0.0, seed, [c + 1, c + 1.5, c + 2]))
    runs += [FakeRun("adamwprune", "state", 0.7, s, [70.0, 71.0, 72.0 + s]) for s in (0, 1)]
    runs.append(FakeRun("adamwprune", "state", 0.7, 2, [70.0], status="failed", error="boom"))
    return runs


@pytest.fixture
def results(tmp_path: Path):
    return load_matrix(write_matrix(tmp_path, "plots", cells_runs()))


def test_accuracy_vs_sparsity_bars_are_the_tables_95_intervals(results) -> None:
    points = {p.sparsity: p for p in plots.sparsity_points(results, CAND)}
    expected = estimate([74.0, 74.5, 75.0])
    assert points[0.5].mean == pytest.approx(expected.mean)
    assert (points[0.5].low, points[0.5].high) == pytest.approx((expected.ci_low, expected.ci_high))
    assert points[0.5].n == 3 and points[0.5].planned == 3 and not points[0.5].partial
    assert points[0.7].n == 2 and points[0.7].planned == 3 and points[0.7].partial

    fig, ax = plt.subplots()
    comparison = resolve_comparison(results)
    seeds = plots.draw_accuracy_vs_sparsity(
        ax, results, comparison.methods, plots.colors(comparison.methods)
    )
    assert seeds == 3
    plots.finish_accuracy_vs_sparsity(ax, results.sparsities(), "t", seeds=seeds)
    assert "95%" in ax.get_ylabel()
    # The fewer-seeds cell is marked on the plot, with its count.
    assert any("2 of 3 seeds" in t.get_text() for t in ax.texts)
    # The dense baseline is a line with its 95% band (a filled span), not a lone point.
    dense = estimate([76.0, 76.5, 77.0])
    spans = [p for p in ax.patches if p.get_label() == "_dense_band"]
    assert len(spans) == 1
    span = spans[0]
    low, high = span.get_y(), span.get_y() + span.get_height()
    assert (low, high) == pytest.approx((dense.ci_low, dense.ci_high))
    plt.close(fig)


def test_one_seed_axis_does_not_promise_bars(tmp_path: Path) -> None:
    runs = [
        FakeRun("adamwprune", "state", 0.5, 0, [70.0, 74.0]),
        FakeRun("adamwspam", "magnitude", 0.5, 0, [70.0, 73.0]),
    ]
    one = load_matrix(write_matrix(tmp_path, "one", runs))
    fig, ax = plt.subplots()
    methods = resolve_comparison(one).methods
    plots.draw_accuracy_vs_sparsity(ax, one, methods, plots.colors(methods))
    plots.finish_accuracy_vs_sparsity(ax, one.sparsities(), "t", seeds=1)
    assert "95%" not in ax.get_ylabel() and "one seed" in ax.get_ylabel()
    plt.close(fig)


def test_compare_line_styles_follow_the_title_and_colours_match_the_report(
    tmp_path: Path,
) -> None:
    a = load_matrix(write_matrix(tmp_path, "a", cells_runs()))
    b = load_matrix(write_matrix(tmp_path, "b", cells_runs()))
    fig, ax = plots.comparison_figure(a, b)
    solid = [ln for ln in ax.get_lines() if "[A:" in ln.get_label()]
    dashed = [ln for ln in ax.get_lines() if "[B:" in ln.get_label()]
    assert solid and dashed
    assert {ln.get_linestyle() for ln in solid} == {"-"}  # dense reference lines too
    assert {ln.get_linestyle() for ln in dashed} == {"--"}
    report_colours = plots.colors(resolve_comparison(a).methods)
    for line in solid + dashed:
        key = next(k for k in report_colours if plots.method_display_name(k) in line.get_label())
        assert to_hex(line.get_color()) == report_colours[key]
    plt.close(fig)


def test_memory_axis_starts_at_zero_and_labels_carry_the_figures(results) -> None:
    comparison = resolve_comparison(results)
    fig, axes = plots.memory_figure(results, comparison.methods)
    ax = axes[0]
    low, high = ax.get_ylim()
    # 12,602.5 vs 12,792.5 MiB differ by 1.5%, and their bars must look it: from zero.
    assert low == 0 and 12_792.5 < high < 12_792.5 * 1.25
    assert "does not start at 0" not in ax.get_ylabel()
    labels = {t.get_text() for t in ax.texts}
    assert "12,602.5" in labels and "12,792.5" in labels
    plt.close(fig)


def test_accuracy_evolution_mean_band_and_method_view(results, tmp_path: Path) -> None:
    comparison = resolve_comparison(results)
    files = plots.plot_accuracy_evolution(results, comparison.methods, tmp_path)
    names = {f.path.name for f in files}
    assert {"accuracy_evolution_s50.png", "accuracy_evolution_s70.png"} <= names
    # The seed's view: one method across its sparsity levels.
    assert f"accuracy_evolution_method_{CAND}.png" in names
    fig, ax = plt.subplots()
    plots.draw_accuracy_mean(ax, results, comparison.methods, 0.5, first_epoch=1)
    # A 95% band per method with several seeds, and the mean line is the per-epoch mean.
    bands = [c for c in ax.collections if c.get_label().startswith("_band")]
    assert len(bands) == 2
    mean_line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("AdamWPrune"))
    assert list(mean_line.get_ydata()) == pytest.approx([72.5, 73.5, 74.5])
    plt.close(fig)


def test_operating_points_put_the_tables_accuracy_at_the_runs_compression_and_speedup(
    results, tmp_path
) -> None:
    from report_helpers import MACS, PARAMETERS, PRUNABLE

    compression = plots.operating_points(results, CAND, "compression_ratio")
    speedup = plots.operating_points(results, CAND, "theoretical_speedup")
    accuracy = {p.sparsity: p for p in plots.sparsity_points(results, CAND)}
    for sparsity, o in zip((0.5, 0.7), compression, strict=True):  # ascending cost axis
        assert o.point == accuracy[sparsity]
        assert o.x == pytest.approx(PARAMETERS / (PARAMETERS - round(sparsity * PRUNABLE)))
    assert [o.x for o in speedup] == pytest.approx([2.0, 1 / 0.3])
    [dense] = plots.operating_points(results, "adamwspam_dense", "compression_ratio")
    assert dense.x == 1.0
    assert MACS / round(MACS * 0.5) == pytest.approx(2.0)

    comparison = resolve_comparison(results)
    files = plots.plot_operating_points(results, comparison.methods, tmp_path)
    assert [f.path.name for f in files] == [
        "accuracy_vs_compression.png",
        "accuracy_vs_speedup.png",
    ]
    assert all(f.path.stat().st_size > 0 for f in files)


def test_operating_points_leave_out_runs_written_before_the_counts(tmp_path) -> None:
    run = FakeRun("adamwspam", "magnitude", 0.5, 0, [70.0, 71.0])
    run.extra = {"model_info": {"parameters": 1}}  # an older file: no parameters_total
    results = load_matrix(write_matrix(tmp_path, "old", [run]))
    assert plots.sparsity_points(results, BASE)  # the accuracy is there
    assert plots.operating_points(results, BASE, "compression_ratio") == []
    assert plots.plot_operating_points(results, [BASE], tmp_path) == []


def test_the_report_tables_what_pruning_buys(tmp_path) -> None:
    from report_helpers import PARAMETERS, PRUNABLE, render, row_for, table_header, table_rows

    text = render(write_matrix(tmp_path, "buys", cells_runs()))
    heading = "### What pruning buys"
    assert table_header(text, heading) == [
        "Method", "Sparsity", "Seeds", "Compression", "Theoretical speedup", "Best top-1",
    ]  # fmt: skip
    rows = table_rows(text, heading)
    base = [r for r in rows if r[0] == "AdamWSPAM + magnitude"]
    assert [r[1] for r in base] == ["50%", "70%"]
    ratio = PARAMETERS / (PARAMETERS - round(0.5 * PRUNABLE))
    assert base[0][2:5] == ["3", f"{ratio:.2f}x", "2.00x"]
    assert base[1][4] == f"{1 / 0.3:.2f}x"
    assert row_for(rows, "AdamWSPAM (dense)")[3:5] == ["1.00x", "1.00x"]


def test_sparsity_plot_is_mean_and_band_per_cell_and_stays_so_at_scale(tmp_path) -> None:
    """Issue 30, item 5: per method and target the mean measured sparsity with its 95% band;
    each seed thin while a cell has few, past MAX_RUN_CURVES only the band and the mean, so
    thousands of runs draw a line count set by the cells, not the runs."""
    curves = [[0.2, 0.4, 0.5], [0.3, 0.5, 0.5], [0.1, 0.3, 0.5]]
    runs = [
        FakeRun("adamwprune", "state", 0.5, seed, [70.0, 71.0, 72.0], sparsity=curve)
        for seed, curve in enumerate(curves)
    ]
    runs.append(FakeRun("adamwprune", "state", 0.5, 3, [70.0], status="failed", error="boom"))
    results = load_matrix(write_matrix(tmp_path / "few", "few", runs))
    fig, ax = plots.sparsity_figure(results, [CAND])
    means = [ln for ln in ax.get_lines() if ln.get_label().startswith("AdamWPrune")]
    assert len(means) == 1 and "mean of 3 seeds, 95% band" in means[0].get_label()
    assert list(means[0].get_ydata()) == pytest.approx([20.0, 40.0, 50.0])
    assert len([c for c in ax.collections if c.get_label().startswith("_band")]) == 1
    assert len([ln for ln in ax.get_lines() if ln.get_label() == "_seed"]) == 3
    [failed] = [ln for ln in ax.get_lines() if ln.get_label() == "_uncounted"]
    assert failed.get_linestyle() == "--" and list(failed.get_ydata()) == [50.0]
    plt.close(fig)

    many = plots.MAX_RUN_CURVES + 2
    runs = [
        FakeRun("adamwprune", "state", target, seed, [70.0, 71.0], sparsity=[target / 2, target])
        for target in (0.5, 0.7)
        for seed in range(many)
    ]
    runs += [
        FakeRun("adamwprune", "state", 0.5, seed, [70.0], status="failed", error="boom")
        for seed in range(many, 2 * many)
    ]
    results = load_matrix(write_matrix(tmp_path / "many", "many", runs))
    fig, ax = plots.sparsity_figure(results, [CAND])
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "_seed" not in labels
    assert labels.count("_uncounted") == 1  # the failed runs' mean, dashed
    means = [ln for ln in ax.get_lines() if ln.get_label() == "_mean" or "seeds" in ln.get_label()]
    assert sorted(list(m.get_ydata()) for m in means) == [[25.0, 50.0], [35.0, 70.0]]
    assert len([c for c in ax.collections if c.get_label().startswith("_band")]) == 2
    plt.close(fig)


def test_accuracy_plot_draws_many_uncounted_runs_as_one_dashed_mean(tmp_path) -> None:
    many = plots.MAX_RUN_CURVES + 1
    runs = [FakeRun("adamwprune", "state", 0.5, s, [70.0, 72.0]) for s in range(2)]
    runs += [
        FakeRun("adamwprune", "state", 0.5, s, [60.0, 62.0 + s], status="failed", error="boom")
        for s in range(2, 2 + many)
    ]
    results = load_matrix(write_matrix(tmp_path, "m", runs))
    fig, ax = plt.subplots()
    plots.draw_accuracy_mean(ax, results, [CAND], 0.5, first_epoch=1)
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1
    name = plots.method_display_name(CAND)
    assert dashed[0].get_label() == f"{name}: mean of {many} runs that do not count"
    assert list(dashed[0].get_ydata()) == pytest.approx([60.0, 62.0 + (2 + 1 + many) / 2])
    plt.close(fig)
