"""The report's account of the measurement protocol (docs/protocol.md): which set chose each
run's epoch and which set is reported, time to a validation target (median, Kaplan-Meier
where some runs never reached it, performance profile), and the comparison at equal
training time under a training-time budget."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lib.metrics import SELECTED_BY_VALIDATION, STOPPED_BY_TIME_BUDGET, summarize
from scripts.report.cells import Comparison, build_cell
from scripts.report.data import MatrixResults, RunResult, method_display_name
from scripts.report.markdown import fmt_sparsity, md_table
from scripts.report.stats import median_time, performance_profile

# The performance profile's tau: from 1 (the fastest method) to 4 times its time.
PROFILE_TAUS = (1.0, 1.5, 2.0, 3.0, 4.0)
PROFILE_TAU_MAX = 4.0


def _data(run: RunResult) -> dict[str, Any]:
    data = (run.spec or {}).get("data")
    return data if isinstance(data, dict) else {}


def _budget(run: RunResult) -> int:
    train = (run.spec or {}).get("train")
    value = train.get("time_budget_seconds", 0) if isinstance(train, dict) else 0
    return value if isinstance(value, int) else 0


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.2f} h"


def selection_lines(results: MatrixResults) -> list[str]:
    """Configuration bullets: which set chose each run's epoch, which set is reported, and
    the training-time budget when there is one."""
    runs = [r for r in results.runs if r.spec]
    sizes = sorted({_data(r).get("val_size", 0) for r in runs})
    if sizes and sizes != [0]:
        held = ", ".join(f"{s:,}" for s in sizes if s)
        seeds = ", ".join(str(s) for s in sorted({_data(r).get("val_seed", 0) for r in runs}))
        lines = [
            f"- **Selection**: each run's epoch is chosen on held-out validation ({held} "
            f"training images set aside, split seed {seeds}); the accuracies reported are test "
            "top-1 at that epoch"
        ]
        if 0 in sizes:
            lines.append("  (runs without the split chose on the test set)")
    else:
        lines = [
            "- **Selection**: no held-out validation split: each run's best epoch is chosen "
            "on the test set it is reported on (an optimistic estimate; "
            "CONFIG_DATA_VAL_SIZE turns the split on)"
        ]
    budgets = sorted({_budget(r) for r in runs} - {0})
    if budgets:
        stopped = sum(
            1 for r in runs if r.summary and r.summary.get("stopped_by") == STOPPED_BY_TIME_BUDGET
        )
        lines.append(
            f"- **Training-time budget**: {', '.join(fmt_seconds(b) for b in budgets)} per run "
            f"(evaluation and checkpointing excluded); {stopped} of {len(runs)} runs stopped by it"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Time to target


@dataclass(frozen=True)
class TargetCell:
    """The time to target of one (method, sparsity): per counted run its time (to the target,
    or its whole training time when it never got there) and whether it got there."""

    times: tuple[float, ...]
    reached: tuple[bool, ...]

    @property
    def median(self) -> float | None:
        return median_time(self.times, self.reached)

    @property
    def censored(self) -> bool:
        return not all(self.reached)

    def text(self) -> str:
        if not self.times:
            return "—"
        got = f"{sum(self.reached)}/{len(self.times)} reached"
        median = self.median
        if median is None:
            return f"not reached ({got})"
        return f"{'KM ' if self.censored else ''}{fmt_seconds(median)} ({got})"


def target_cell(runs: list[RunResult]) -> TargetCell:
    times, reached = [], []
    for run in runs:
        s = run.summary or {}
        if s.get("time_to_target_reached") is None or s.get("training_seconds") is None:
            continue  # no target, or a file from before time was recorded
        got = bool(s["time_to_target_reached"])
        times.append(float(s["time_to_target_seconds"] if got else s["training_seconds"]))
        reached.append(got)
    return TargetCell(tuple(times), tuple(reached))


def target_grid(
    results: MatrixResults, keys: Sequence[str]
) -> list[tuple[float, dict[str, TargetCell]]]:
    """Per sparsity, per method of `keys` (the report's columns), the time-to-target cell of
    its counted runs."""
    return [
        (s, {k: target_cell(list(build_cell(results, k, s).counted)) for k in keys})
        for s in results.sparsities()
    ]


def target_profile(
    grid: list[tuple[float, dict[str, TargetCell]]], taus: Sequence[float] = PROFILE_TAUS
) -> tuple[int, dict[str, list[float]]]:
    """(number of problems, each method's performance profile over `taus`). The problems are
    the sparsity levels where some method has runs with a target; the methods compared are
    those with such runs at every one of them (at least two, or there is no profile)."""
    levels = [cells for _, cells in grid if any(c.times for c in cells.values())]
    if not levels:
        return 0, {}
    keys = [k for k in levels[0] if all(cells[k].times for cells in levels)]
    if len(keys) < 2:
        return 0, {}
    times = {k: [cells[k].median for cells in levels] for k in keys}
    return len(levels), performance_profile(times, taus)


def _targets(results: MatrixResults) -> list[float]:
    return sorted(
        {r.summary["val_target"] for r in results.runs if (r.summary or {}).get("val_target")}
    )


def section_time_to_target(results: MatrixResults, comparison: Comparison) -> str:
    targets = _targets(results)
    if not targets:
        return ""
    grid = target_grid(results, comparison.columns)
    header = ["Sparsity"] + [method_display_name(k) for k in comparison.columns]
    rows = [[fmt_sparsity(s)] + [cells[k].text() for k in comparison.columns] for s, cells in grid]
    lines = [
        "## Time to Target",
        "",
        f"Validation target: **{' / '.join(f'{t:g}%' for t in targets)} top-1** on the "
        "held-out validation split. A run's time to target is its training time (evaluation "
        "and checkpointing excluded) up to the end of the first epoch at target sparsity whose "
        "validation top-1 reached the target. Each cell is the median over seeds; *KM* marks "
        "a Kaplan-Meier median where some seeds never reached the target (censored at their "
        "whole training time), and *not reached* a cell where fewer than half did. Steps and "
        "epochs to target are in each run's summary (metrics.csv). Times compare only runs on "
        "the same kind of device.",
        "",
        md_table(header, rows),
    ]
    count, profile = target_profile(grid)
    if count:
        lines += [
            "",
            f"Performance profile over the {count} sparsity level(s) with a target (methods "
            "that ran every one of them): the fraction of levels where a method reaches the "
            "target within tau times the fastest method's median time (Dolan and Moré 2002; "
            "tau = 1: it was the fastest; a level it never reached counts at no tau).",
            "",
            md_table(
                ["Method", *(f"tau = {t:g}" for t in PROFILE_TAUS)],
                [
                    [method_display_name(k), *(f"{v:.2f}" for v in values)]
                    for k, values in profile.items()
                ],
            ),
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Equal training time


def _at_time(run: RunResult, limit: float, budget: int) -> float | None:
    """The run's reported test top-1 as it stood after `limit` training seconds: its epoch
    chosen (as the run chose: validation or test) among the epochs finished by then. Time past
    the budget (the step that crossed it) counts as the budget."""
    elapsed = 0.0
    kept = []
    for record in run.epochs:
        elapsed += record.get("train_seconds") or 0.0
        if (min(elapsed, budget) if budget else elapsed) > limit + 1e-9:
            break
        kept.append(record)
    if not kept:
        return None
    return summarize(kept, run.target_sparsity, status=run.status)["best_top1"]


def section_equal_time(results: MatrixResults, comparison: Comparison) -> str:
    runs = [r for r in results.runs if r.counts and _budget(r) > 0]
    timed = [r for r in runs if (r.summary or {}).get("training_seconds") is not None]
    if not timed:
        return ""
    timed_ids = {id(r) for r in timed}
    chose = (
        "held-out validation"
        if any(r.summary.get("selected_by") == SELECTED_BY_VALIDATION for r in timed)
        else "the test set"
    )
    header = ["Sparsity", "Equal time"] + [method_display_name(k) for k in comparison.columns]
    rows = []
    for s in results.sparsities():
        cells = {
            key: [r for r in build_cell(results, key, s).counted if id(r) in timed_ids]
            for key in comparison.columns
        }
        level = [r for cell in cells.values() for r in cell]
        if not level:
            continue
        # The shortest training time of the level's runs, each capped at its budget.
        limit = min(min(r.summary["training_seconds"], _budget(r)) for r in level)
        row = [fmt_sparsity(s), fmt_seconds(limit)]
        for key in comparison.columns:
            values = [v for r in cells[key] if (v := _at_time(r, limit, _budget(r))) is not None]
            if not values:
                row.append("—")
            elif len(values) == 1:
                row.append(f"{values[0]:.2f}%")
            else:
                row.append(
                    f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}% "
                    f"(n={len(values)})"
                )
        rows.append(row)
    stopped = sum(1 for r in timed if r.summary.get("stopped_by") == STOPPED_BY_TIME_BUDGET)
    return "\n".join(
        [
            "## Equal Training Time",
            "",
            f"Every run had a training-time budget; {stopped} of {len(timed)} counted runs were "
            "stopped by it, the others trained all their epochs within it. Each sparsity level "
            "compares its methods at the same training time (*Equal time*: the shortest of the "
            "level's runs' training times, a run's time capped at its budget): test top-1 at the "
            f"epoch chosen on {chose} among the epochs each run had finished by then (mean ± std "
            "over seeds; — where a run had finished no epoch at target sparsity by then).",
            "",
            md_table(header, rows),
        ]
    )
