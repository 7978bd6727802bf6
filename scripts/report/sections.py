"""The sections of report.md, each a function of the loaded results, and `render_report`."""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Callable, Iterable
from typing import Any

from lib import catalogue
from lib.metrics import (
    MATRIX_FILE,
    METRICS_FILE,
    SPARSITY_TOLERANCE,
    STABILITY_WINDOW,
    STATUS_FAILED,
)
from lib.text import count
from scripts.report.cells import (
    Cell,
    Comparison,
    build_cell,
    fmt_estimate,
    status_rank,
)
from scripts.report.data import (
    DATASET_DISPLAY,
    MODEL_DISPLAY,
    MatrixResults,
    RunResult,
    method_display_name,
)
from scripts.report.markdown import (
    fmt_interval,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_printed_difference,
    fmt_range,
    fmt_signed,
    fmt_sparsity,
    fmt_verdict,
    md_escape,
    md_table,
    printed,
)
from scripts.report.protocol import (
    section_equal_time,
    section_time_to_target,
    selection_lines,
)
from scripts.report.stats import Difference, Verdict, judge, welch_difference
from scripts.report.tracking import section_tracking
from scripts.report.tuning import section_tuning


def _config_summary(results: MatrixResults) -> dict[str, Any]:
    spec = results.first_spec()
    model = spec.get("model", {})
    data = spec.get("data", {})
    train = spec.get("train", {})
    seeds = sorted({run.seed for run in results.runs})
    params = next((r.model_info.get("parameters") for r in results.runs if r.model_info), None)
    return {
        "model": MODEL_DISPLAY.get(model.get("name"), model.get("name", "?")),
        "stem": model.get("stem"),
        "parameters": params,
        "dataset": DATASET_DISPLAY.get(data.get("name"), data.get("name", "?")),
        "image_size": data.get("image_size"),
        "epochs": train.get("epochs"),
        "batch_size": train.get("batch_size"),
        "seeds": seeds,
    }


def _status_counts(results: MatrixResults, runs: list[RunResult] | None = None) -> str:
    runs = results.runs if runs is None else runs
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=status_rank)]
    return f"{', '.join(parts)} (of {len(runs)} planned)"


def section_header(results: MatrixResults, comparison: Comparison, now: dt.datetime) -> str:
    info = _config_summary(results)
    title = f"# {info['model']} {info['dataset']} Results — `{results.name}`"
    lines = [title, ""]
    lines.append(f"**Report generated**: {now:%Y-%m-%d %H:%M} UTC  ")
    created = results.plan.get("created_at")
    updated = results.plan.get("updated_at")
    if created:
        lines.append(
            f"**Matrix created**: {created}"
            + (f", last updated {updated}" if updated else "")
            + "  "
        )
    if results.runs or not results.trials:
        lines.append(f"**Runs**: {_status_counts(results)}")
    else:
        lines.append("**Runs**: none yet (the reruns of the chosen settings follow the trials)")
    if results.trials:
        lines[-1] += "  "
        lines.append(f"**Tuning trials**: {_status_counts(results, results.trials)}")
    if comparison.candidate and comparison.baseline:
        lines.append("")
        lines.append(
            f"**Comparison**: {method_display_name(comparison.candidate)} (candidate) vs "
            f"{method_display_name(comparison.baseline)} (baseline)"
        )
    return "\n".join(lines)


def section_configuration(results: MatrixResults, comparison: Comparison) -> str:
    info = _config_summary(results)
    params = info["parameters"]
    model = info["model"]
    if params:
        model += f" ({params / 1e6:.1f}M parameters)"
    if info["stem"]:
        model += f", {info['stem']} stem"
    dataset = info["dataset"]
    if info["image_size"]:
        dataset += f" at {info['image_size']} px"
    sparsities = ", ".join(fmt_sparsity(s) for s in results.sparsities())
    seeds = info["seeds"]
    lines = [
        "## Test Configuration",
        "",
        f"- **Model**: {model}",
        f"- **Dataset**: {dataset}",
        f"- **Epochs**: {info['epochs']}",
        f"- **Batch Size**: {info['batch_size']}",
        f"- **GPUs per run**: {fmt_range([r.gpus for r in results.runs], 0)}",
        f"- **Target sparsities**: {sparsities}",
        f"- **Seeds**: {', '.join(map(str, seeds))} ({len(seeds)} per cell)",
        "- **Compared configurations**:",
    ]
    for key in comparison.methods:
        role = ""
        if key == comparison.candidate:
            role = " — candidate"
        elif key == comparison.baseline:
            role = " — baseline for *Improvement*"
        lines.append(f"  - {method_display_name(key)} (`{key}`){role}")
    lines += [f"- {note}" for note in comparison.notes]
    lines += selection_lines(results)
    partial = _partial_evaluation(results)
    if partial is not None:
        lines.append(partial)
    return "\n".join(lines)


def _partial_evaluation(results: MatrixResults) -> str | None:
    """A bullet when some run evaluated fewer test images per epoch than its test set holds
    (TRAIN_MAX_STEPS_PER_EPOCH caps evaluation too), or None when every run saw all of it."""
    evaluated, whole = [], []
    for run in results.runs:
        total = (run.model_info or {}).get("test_images")
        seen = [e["test_images"] for e in run.epochs if isinstance(e.get("test_images"), int)]
        if isinstance(total, int) and seen and min(seen) < total:
            evaluated += seen
            whole.append(total)
    if not whole:
        return None
    runs = len(whole)
    return (
        f"- **Test images evaluated**: {fmt_range(evaluated, 0)} of {fmt_range(whole, 0)} per "
        f"epoch in {runs} run{'' if runs == 1 else 's'}: `CONFIG_TRAIN_MAX_STEPS_PER_EPOCH` "
        "caps evaluation too, so their accuracies are over that part of the test set only"
    )


def _distinct_scored(cells: list[Cell], attr: str) -> list[Cell]:
    """Cells with a number, best first, each method once (dense runs can fill two columns)."""
    unique = {c.key: c for c in cells if getattr(c, attr) is not None}
    return sorted(unique.values(), key=lambda c: getattr(c, attr).mean, reverse=True)


def _row_leader(cells: list[Cell], attr: str) -> Cell | None:
    """The cell with the highest mean; None for fewer than two numbers or a tie as shown."""
    scored = _distinct_scored(cells, attr)
    if len(scored) < 2:
        return None
    if printed(getattr(scored[0], attr).mean) == printed(getattr(scored[1], attr).mean):
        return None
    return scored[0]


def _improvement_text(verdict: Verdict | None) -> str:
    """The printed difference; bold only when the report's test finds it significant."""
    if verdict is None:
        return "—"
    diff = verdict.difference
    text = fmt_printed_difference(diff.candidate_mean, diff.baseline_mean)
    if verdict.significant and text != "0.00%":
        text = f"**{text}**"
    if verdict.significant is False:
        text += " (n.s.)"
    return text


def _difference(cells: dict[str, Cell], comparison: Comparison, attr: str) -> Difference | None:
    if not (comparison.candidate and comparison.baseline):
        return None
    cand = getattr(cells[comparison.candidate], attr)
    base = getattr(cells[comparison.baseline], attr)
    if cand is None or base is None:
        return None
    return welch_difference(cand, base)


def improvement_verdicts(
    grid: list[tuple[float, dict[str, Cell]]], comparison: Comparison, attr: str
) -> dict[float, Verdict | None]:
    """Candidate - baseline at every sparsity, judged together (Holm over the levels)."""
    diffs = [_difference(cells, comparison, attr) for _, cells in grid]
    return {s: v for (s, _), v in zip(grid, judge(diffs), strict=True)}


def _cells_by_sparsity(
    results: MatrixResults, comparison: Comparison
) -> list[tuple[float, dict[str, Cell]]]:
    return [
        (s, {k: build_cell(results, k, s) for k in comparison.columns})
        for s in results.sparsities()
    ]


def _multi_seed(grid: list[tuple[float, dict[str, Cell]]]) -> bool:
    return any(
        cell.best is not None and cell.best.has_noise_estimate
        for _, cells in grid
        for cell in cells.values()
    )


def accuracy_table(
    grid: list[tuple[float, dict[str, Cell]]], comparison: Comparison, attr: str
) -> str:
    header = ["Sparsity"] + [method_display_name(k) for k in comparison.columns]
    with_improvement = comparison.candidate is not None and comparison.baseline is not None
    if with_improvement:
        header.append("Improvement")
    with_costs = _with_costs(grid)
    if with_costs:
        header += list(COST_FIELDS.values())
    verdicts = improvement_verdicts(grid, comparison, attr)
    lead_verdicts = _lead_verdicts(grid, attr)
    rows = []
    for sparsity, cells in grid:
        if all(not c.runs for c in cells.values()):
            continue
        leader = _row_leader(list(cells.values()), attr)
        verdict = lead_verdicts.get(sparsity)
        if not (leader is not None and verdict is not None and verdict.significant):
            leader = None  # a lead the seeds cannot tell from noise is not set in bold
        candidate_leads = (
            leader is not None
            and comparison.candidate is not None
            and cells[comparison.candidate].key == leader.key
        )
        label = fmt_sparsity(sparsity)
        if candidate_leads:
            label = f"**{label}**"
        row = [label]
        for key in comparison.columns:
            cell = cells[key]
            bold = leader is not None and cell.key == leader.key
            row.append(fmt_estimate(getattr(cell, attr), cell, bold=bold))
        if with_improvement:
            row.append(_improvement_text(verdicts[sparsity]))
        if with_costs:
            row += [_row_ratio(cells.values(), field) for field in COST_FIELDS]
        rows.append(row)
    return md_table(header, rows)


# What the sparsity buys (summary fields, docs/metrics.md) and the columns that show it.
COST_FIELDS = {"compression_ratio": "Compression", "theoretical_speedup": "Theoretical speedup"}


def _with_costs(grid: list[tuple[float, dict[str, Cell]]]) -> bool:
    """Whether the accuracy tables show COST_FIELDS: not for runs written before the counts."""
    return any(_row_ratio(cells.values(), f) != "—" for _, cells in grid for f in COST_FIELDS)


def _row_ratio(cells: Iterable[Cell], field: str) -> str:
    """A `COST_FIELDS` figure of one accuracy-table row: the mean over each method's seeds that
    count, one figure where the row's methods agree to print precision, else their range."""
    distinct = {cell.key: cell for cell in cells if cell.counted}.values()
    means = [_mean_of_all([r.summary.get(field) for r in c.counted]) for c in distinct]
    shown = sorted({f"{m:.2f}" for m in means if m is not None}, key=float)
    if not shown:
        return "—"
    return f"{shown[0]}x" if len(shown) == 1 else f"{shown[0]}–{shown[-1]}x"


def interval_table(grid: list[tuple[float, dict[str, Cell]]], comparison: Comparison) -> str:
    header = ["Sparsity"] + [method_display_name(k) for k in comparison.columns]
    with_improvement = comparison.candidate is not None and comparison.baseline is not None
    if with_improvement:
        header.append("Improvement (Welch)")
    verdicts = improvement_verdicts(grid, comparison, "best")
    rows = []
    for sparsity, cells in grid:
        row = [fmt_sparsity(sparsity)]
        for key in comparison.columns:
            best = cells[key].best
            if best is None:
                row.append("—")
            elif not best.has_noise_estimate:
                row.append("one seed: none")
            else:
                row.append(fmt_interval(best.ci_low, best.ci_high) + f" (n={best.n})")
        if with_improvement:
            verdict = verdicts[sparsity]
            row.append("—" if verdict is None else fmt_verdict(verdict))
        rows.append(row)
    return md_table(header, rows)


def _noise_clause(verdict: Verdict, leader: Cell, runner_up: Cell) -> str:
    diff = verdict.difference
    if verdict.significant is None:
        if diff.no_noise_reason == "one seed":
            single = [c for c in (leader, runner_up) if c.best is not None and c.best.n < 2]
            who = " and ".join(method_display_name(c.key) for c in single)
            cause = f"With one seed ({who})"
        else:
            cause = "With zero spread over the seeds of both methods"
        return (
            f"{cause}, no noise estimate exists, so it is unknown whether this lead is larger "
            "than the seed-to-seed noise."
        )
    interval = fmt_interval(diff.ci_low, diff.ci_high, signed=True)
    details = f"Welch {fmt_p(diff.p_value)}, df = {diff.df:.1f}"
    if verdict.comparisons > 1:
        details += (
            f"; Holm {fmt_p(verdict.p_adjusted)} over the {verdict.comparisons} sparsity "
            "levels compared"
        )
    if verdict.significant:
        return (
            f"The lead is **significant** ({details}; the 95% CI of the difference is "
            f"{interval} points)."
        )
    # Not significant is not "the same": the interval says how large a difference the seeds
    # cannot rule out; no equivalence is claimed.
    return (
        f"The lead is not significant ({details}; the 95% CI of the difference is "
        f"{interval} points): the seeds neither show a difference nor that there is none."
    )


def _leads(
    grid: list[tuple[float, dict[str, Cell]]], attr: str = "best"
) -> list[tuple[str, Cell, Cell | None, Verdict | None]]:
    """Per sparsity with numbers: where, the leading cell, the runner-up and the verdict on
    their difference. The leader-vs-runner-up differences of all levels are one family
    (Holm), shared by the executive summary, the findings and the tables' bold cells."""
    leads: list[tuple[str, Cell, Cell | None]] = []
    for sparsity, cells in grid:
        scored = _distinct_scored(list(cells.values()), attr)
        if scored:
            where = "dense (0% sparsity)" if sparsity == 0 else f"{sparsity * 100:g}% sparsity"
            leads.append((where, scored[0], scored[1] if len(scored) > 1 else None))
    verdicts = judge(
        [
            None if second is None else welch_difference(getattr(top, attr), getattr(second, attr))
            for _, top, second in leads
        ]
    )
    return [(*lead, v) for lead, v in zip(leads, verdicts, strict=True)]


def _lead_verdicts(
    grid: list[tuple[float, dict[str, Cell]]], attr: str
) -> dict[float, Verdict | None]:
    """Sparsity -> the verdict on its leader vs runner-up (see _leads)."""
    with_numbers = [s for s, cells in grid if _distinct_scored(list(cells.values()), attr)]
    return {
        s: verdict for s, (_, _, _, verdict) in zip(with_numbers, _leads(grid, attr), strict=True)
    }


def section_executive_summary(
    results: MatrixResults, grid: list[tuple[float, dict[str, Cell]]], comparison: Comparison
) -> str:
    lines = ["## Executive Summary", ""]
    leads = _leads(grid)
    for where, top, second, verdict in leads:
        if second is None:
            lines.append(
                f"- At {where}, only **{method_display_name(top.key)}** has results: "
                f"{top.best.mean:.2f}% best top-1."
            )
        elif printed(top.best.mean) == printed(second.best.mean):
            lines.append(
                f"- At {where}, {method_display_name(top.key)} and "
                f"{method_display_name(second.key)} tie at {top.best.mean:.2f}% best top-1."
            )
        else:
            ahead = fmt_printed_difference(top.best.mean, second.best.mean).lstrip("+%")
            name = method_display_name(top.key)
            lines.append(
                f"- At {where}, {f'**{name}**' if verdict.significant else name} leads with "
                f"{top.best.mean:.2f}% best top-1, {ahead.rstrip('%')} points ahead of "
                f"{method_display_name(second.key)} ({second.best.mean:.2f}%). "
                + _noise_clause(verdict, top, second)
            )
    if not leads:
        lines.append("- No run has finished yet, so there is no accuracy to compare.")

    if comparison.candidate and comparison.baseline:
        judged_all = [
            v for v in improvement_verdicts(grid, comparison, "best").values() if v is not None
        ]
        if judged_all:
            # As printed: equal means are a tie, not "ahead" by an unprinted 0.004.
            signs = [
                fmt_printed_difference(v.difference.candidate_mean, v.difference.baseline_mean)
                for v in judged_all
            ]
            ahead = sum(sign.startswith("+") for sign in signs)
            tied = signs.count("0.00%")
            judged = [v for v in judged_all if v.significant is not None]
            text = (
                f"- Against the baseline, {method_display_name(comparison.candidate)} is ahead "
                f"at {ahead} of {count(len(judged_all), 'sparsity level')}"
                + (f" (tied at {tied})" if tied else "")
            )
            if judged:
                sign = dict(zip(map(id, judged_all), signs, strict=True))
                sig_ahead = sum(bool(v.significant) and sign[id(v)][0] == "+" for v in judged)
                sig_behind = sum(bool(v.significant) and sign[id(v)][0] == "-" for v in judged)
                text += (
                    f"; significantly ahead at {sig_ahead} and significantly behind at "
                    f"{sig_behind} of the {count(len(judged), 'level')} with a noise estimate "
                    "on both sides"
                    + (
                        f" (Holm-adjusted over {len(judged)} comparisons)."
                        if len(judged) > 1
                        else "."
                    )
                )
            else:
                text += "; without a noise estimate none of these differences can be judged."
            lines.append(text)

    unfinished = [r for r in results.runs if not r.completed]
    if unfinished:
        counts: dict[str, int] = {}
        for run in unfinished:
            counts[run.status] = counts.get(run.status, 0) + 1
        parts = ", ".join(
            f"{n} {s}" for s, n in sorted(counts.items(), key=lambda i: status_rank(i[0]))
        )
        lines.append(
            f"- {len(unfinished)} of {len(results.runs)} planned runs have no final result "
            f"({parts}); they are listed under *Unfinished and failed runs* and are not part "
            "of any average."
        )
    excluded = [r for r in results.runs if r.completed and not r.counts] + results.duplicates
    if excluded or results.stray:
        n = len(excluded) + len(results.stray)
        lines.append(
            f"- {n} more result{'' if n == 1 else 's'} on disk (short runs, runs that never "
            "reached their target, duplicates, directories not in the plan) "
            f"{'is' if n == 1 else 'are'} listed under *Excluded runs* and "
            f"{'is' if n == 1 else 'are'} not part of any number."
        )
    return "\n".join(lines)


def _comparisons_sentence(grid: list[tuple[float, dict[str, Cell]]], comparison: Comparison) -> str:
    verdicts = [v for v in improvement_verdicts(grid, comparison, "best").values() if v]
    counted = max((v.comparisons for v in verdicts), default=0)
    if counted < 2:
        return ""
    return f" Here {counted} comparisons (one per sparsity level) are adjusted together."


def section_accuracy(grid: list[tuple[float, dict[str, Cell]]], comparison: Comparison) -> str:
    multi = _multi_seed(grid)
    lines = [
        "## Results Summary",
        "",
        "### Accuracy Comparison",
        "",
        "Best test top-1 accuracy. **Only epochs at the target sparsity count** (sparsity "
        "measured from the weights): before that the network is denser than the method claims. "
        "A bold cell leads its row by a significant margin over the runner-up (Welch, "
        "Holm-adjusted over the sparsity levels, p < 0.05); with one seed no lead can be "
        "judged and nothing is bold.",
        "",
        accuracy_table(grid, comparison, "best"),
        "",
    ]
    folded = sorted(
        {c.key for s, cells in grid if s == 0 for k, c in cells.items() if c.key != k and c.runs}
    )
    if folded:
        names = ", ".join(method_display_name(k) for k in folded)
        lines += [
            "",
            "The 0% (dense) row shows each optimizer's dense run under its pruning methods' "
            f"columns ({names}): without pruning the methods are the same training.",
        ]
    if _with_costs(grid):
        lines += [
            "",
            "*Compression* = all parameters / nonzero parameters, *Theoretical speedup* = dense "
            "/ nonzero multiply-accumulates of one image, after the last epoch: the mean over "
            "each method's seeds that count, one figure where the row's methods agree to two "
            "decimals, else their range (lowest–highest method; each method's own in *What "
            "pruning buys* below). Theoretical: a mask of zeros runs at dense speed without a "
            "sparse kernel.",
        ]
    if comparison.baseline and comparison.candidate:
        lines += [
            "",
            f"*Improvement* = {method_display_name(comparison.candidate)} − "
            f"{method_display_name(comparison.baseline)}, in percentage points: the difference "
            "of the printed means (the intervals and p-values below use the unrounded values). "
            "Means equal as printed are a tie: `0.00%`, unsigned.",
        ]
    if multi:
        lines += [
            "",
            "Cells with several seeds show mean ± sample standard deviation (ddof=1). "
            "*(n.s.)*: not significant — the Welch p-value, Holm-adjusted over the sparsity "
            "levels compared, is 0.05 or more (details below).",
        ]
        lines += [
            "",
            "#### 95% confidence intervals",
            "",
            "Of each mean: mean ± t(0.975, n−1) · std / √n. Of the improvement: Welch's "
            "interval with Welch–Satterthwaite degrees of freedom (df), the two-sided Welch "
            "p-value, and, when several sparsity levels are compared, the Holm-adjusted "
            "p-value; *significant* when the adjusted p-value is below 0.05 (with one "
            "comparison: exactly when the interval excludes 0). The intervals are unadjusted. "
            "A dash: fewer than two seeds, so no interval exists; zero spread in both cells "
            "gives no noise estimate either." + _comparisons_sentence(grid, comparison),
            "",
            interval_table(grid, comparison),
        ]
    else:
        lines += [
            "",
            "**One seed per cell: no noise estimate exists.** Differences between methods "
            "cannot be compared with seed-to-seed variation; run more seeds to judge them.",
        ]
    lines += [
        "",
        "### Final Accuracy",
        "",
        "Test top-1 accuracy after the last epoch.",
        "",
        accuracy_table(grid, comparison, "final"),
    ]
    return "\n".join(lines)


def _run_label(run: RunResult) -> str:
    return f"`{run.run_id}`"


def _ordered_runs(results: MatrixResults, comparison: Comparison) -> list[RunResult]:
    order = {k: i for i, k in enumerate(comparison.methods)}
    return sorted(
        results.runs, key=lambda r: (order.get(r.method_key, 99), r.target_sparsity, r.seed)
    )


def section_memory(results: MatrixResults, comparison: Comparison) -> str:
    rows = []
    for run in _ordered_runs(results, comparison):
        if not run.epochs and not run.state_memory:
            continue
        peaks = run.peak_memory()
        state = run.state_bytes_per_param()
        device = (run.environment or {}).get("device_name") or "—"
        rows.append(
            [
                _run_label(run),
                md_escape(str(device)),
                fmt_num(peaks["cuda_allocated_mb"], 1),
                fmt_num(peaks["cuda_reserved_mb"], 1),
                fmt_num(peaks["cpu_rss_mb"], 1) + (" †" if peaks["cpu_rss_lifetime"] else ""),
                fmt_num(state["optimizer_per_param"], 2),
                fmt_num(state["pruning_per_prunable_param"], 2),
                fmt_num(state["extra_per_prunable_param"], 2),
            ]
        )
    lines = [
        "### Memory",
        "",
        "Each run's own peaks, in MiB. CUDA: `torch.cuda.max_memory_allocated` / "
        "`max_memory_reserved` of the run's process. CPU runs have no CUDA numbers; their "
        "*CPU peak RSS* is the resident set of the whole training process (interpreter, "
        "libraries, data), not comparable with CUDA allocations. State bytes are measured from "
        "the tensors: optimizer state per parameter, pruning state (masks, scores) per prunable "
        "parameter, and the bytes beyond AdamW's `m` and `v` per prunable parameter. "
        "Device-wide figures (NVML) include other processes and are never shown as a run's own.",
        "",
    ]
    if not rows:
        lines.append("*No run has recorded memory yet.*")
        return "\n".join(lines)
    lines += [
        md_table(
            [
                "Method",
                "Runs",
                "CUDA peak allocated (MiB)",
                "CUDA peak reserved (MiB)",
                "CPU peak RSS (MiB)",
                "Optimizer state (B/param)",
                "Pruning state (B/prunable param)",
                "Optimizer + pruning state (B/param)",
            ],
            _memory_summary_rows(results, comparison),
        ),
        "",
        "<details><summary>Memory per run</summary>",
        "",
        "#### Memory per run",
        "",
    ]
    lines.append(
        md_table(
            [
                "Run",
                "Device",
                "CUDA peak allocated (MiB)",
                "CUDA peak reserved (MiB)",
                "CPU peak RSS (MiB)",
                "Optimizer state (B/param)",
                "Pruning state (B/prunable param)",
                "Extra vs AdamW (B/prunable param)",
            ],
            rows,
        )
    )
    if any(r.peak_memory()["cpu_rss_lifetime"] for r in results.runs):
        lines += [
            "",
            "† The process's lifetime peak RSS: this system could not reset the peak per epoch.",
        ]
    lines += ["", "</details>"]
    return "\n".join(lines)


def _memory_summary_rows(results: MatrixResults, comparison: Comparison) -> list[list[str]]:
    rows = []
    for key in comparison.methods:
        runs = [r for r in results.counted(key) if r.epochs or r.state_memory]
        if not runs:
            continue
        peaks = [r.peak_memory() for r in runs]
        states = [r.state_bytes_per_param() for r in runs]

        def collect(name: str, peaks: list[dict] = peaks) -> list[float]:
            return [p[name] for p in peaks if p[name] is not None]

        def state(name: str, states: list[dict] = states) -> str:
            return fmt_range([s[name] for s in states if s[name] is not None], 2)

        rows.append(
            [
                method_display_name(key),
                str(len(runs)),
                fmt_range(collect("cuda_allocated_mb"), 1),
                fmt_range(collect("cuda_reserved_mb"), 1),
                fmt_range(collect("cpu_rss_mb"), 1),
                state("optimizer_per_param"),
                state("pruning_per_prunable_param"),
                state("total_per_param"),
            ]
        )
    return rows


def _mean_std(values: list[float], signed: bool = False) -> str:
    """`0.22%` for one value, `0.22 ± 0.05%` (sample std) for several, `—` for none."""
    if not values:
        return "—"
    mean = statistics.fmean(values)
    spec = "+.2f" if signed else ".2f"
    if len(values) == 1:
        return f"{mean:{spec}}%"
    return f"{mean:{spec}} ± {statistics.stdev(values):.2f}%"


def _window(run: RunResult) -> int:
    """How many epochs the run's `std_last10` covers."""
    return min(STABILITY_WINDOW, run.summary["epochs_completed"]) if run.summary else 0


def _std_header(runs: list[RunResult]) -> tuple[str, bool]:
    """The std column's header, saying how many epochs it covers, and whether cells must say
    it themselves (runs of different lengths)."""
    windows = {_window(r) for r in runs if r.summary}
    if len(windows) == 1:
        n = windows.pop()
        return f"Std Dev (last {n} epoch{'' if n == 1 else 's'})", False
    return f"Std Dev (last {STABILITY_WINDOW} epochs, fewer where marked)", True


def _best_of_any_epoch(run: RunResult) -> str:
    """The best test top-1 over all epochs, with the measured sparsity it was reached at: what
    a run that reaches its target late or never really measured (issue of the seed's 90%).
    With a held-out validation split the epoch is the one of best validation top-1 (and the
    test top-1 there is shown), as for every other selection."""
    if run.target_sparsity == 0 or not run.epochs:
        return "—"
    chooses = "val_top1" if any("val_top1" in e for e in run.epochs) else "test_top1"
    best = max(run.epochs, key=lambda e: e.get(chooses, -math.inf))
    sparsity = best.get("sparsity")
    where = "unknown sparsity" if sparsity is None else f"{sparsity * 100:.1f}%"
    return f"{best['test_top1']:.2f}% at {where} (epoch {best['epoch']})"


def _sparsity_at(run: RunResult, epoch: int | None) -> str:
    if run.target_sparsity == 0 or epoch is None:
        return "—"
    record = next((e for e in run.epochs if e["epoch"] == epoch), None)
    if record is None or record.get("sparsity") is None:
        return "—"
    return f"{record['sparsity'] * 100:.1f}%"


# Per-run columns beyond the fixed ones: (header, value of a run). Integrations that know more
# about a run (a tracker's link, say) add their column here; every per-run table shows it.
RUN_COLUMNS: list[tuple[str, Callable[[RunResult], str]]] = [
    ("GPUs", lambda run: str(run.gpus)),
]


def _stability_cells(results: MatrixResults, comparison: Comparison) -> list[list[str]]:
    """Per method and sparsity, over the seeds that count: the seed's stability table."""
    rows = []
    for key in comparison.methods:
        for sparsity in results.sparsities():
            runs = results.counted(key, sparsity)
            if not runs:
                continue
            summaries = [r.summary for r in runs]
            finals = [
                s["final_sparsity"] * 100 for s in summaries if s["final_sparsity"] is not None
            ]
            rows.append(
                [
                    method_display_name(key),
                    fmt_sparsity(sparsity),
                    str(len(runs)),
                    _mean_std([s["std_last10"] for s in summaries]),
                    _mean_std(
                        [s["peak_to_final"] for s in summaries if s["peak_to_final"] is not None]
                    ),
                    fmt_range(
                        [s["best_epoch"] for s in summaries if s["best_epoch"] is not None], 0
                    ),
                    (fmt_range(finals, 1) + "%") if finals else "—",
                ]
            )
    return rows


def _mean_of_all(values: list[float | None]) -> float | None:
    """The mean, or None when any value is unknown (runs written before the counts were)."""
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known and len(known) == len(values) else None


def _mean_ratio(values: list[float | None]) -> str:
    mean = _mean_of_all(values)
    return "—" if mean is None else f"{mean:.2f}x"


def section_operating_points(results: MatrixResults, comparison: Comparison) -> str:
    """What the sparsity buys (docs/metrics.md), per method and target sparsity over the seeds
    that count: ShrinkBench's compression ratio and theoretical speedup beside the accuracy."""
    rows = []
    for key in comparison.methods:
        for sparsity in results.sparsities():
            runs = results.counted(key, sparsity)
            if not runs:
                continue
            summaries = [r.summary for r in runs]
            best = [v["best_top1"] for v in summaries if v["best_top1"] is not None]
            rows.append(
                [
                    method_display_name(key),
                    fmt_sparsity(sparsity),
                    str(len(runs)),
                    _mean_ratio([v.get("compression_ratio") for v in summaries]),
                    _mean_ratio([v.get("theoretical_speedup") for v in summaries]),
                    fmt_pct(statistics.fmean(best)) if best else "—",
                ]
            )
    if not any(row[3] != "—" or row[4] != "—" for row in rows):
        return ""  # runs written before the counts were recorded: nothing to show
    return "\n".join(
        [
            "### What pruning buys",
            "",
            "Per method and target sparsity, the mean over the seeds that count. *Compression* "
            "= all parameters / nonzero parameters after the last epoch; *Theoretical speedup* "
            "= dense / nonzero multiply-accumulates of one image (each layer's MACs times its "
            "density). Theoretical: a mask of zeros runs at dense speed without a sparse kernel. "
            "*Best top-1*: the mean of the accuracy table's cell.",
            "",
            md_table(
                ["Method", "Sparsity", "Seeds", "Compression", "Theoretical speedup", "Best top-1"],
                rows,
            ),  # fmt: skip
        ]
    )


def section_stability(results: MatrixResults, comparison: Comparison) -> str:
    runs = [r for r in _ordered_runs(results, comparison) if r.summary is not None]
    counted = [r for r in runs if r.counts]
    std_header, mark_window = _std_header(counted or runs)
    lines = [
        "### Stability Analysis",
        "",
        "Per method and target sparsity, over the seeds that count (mean ± sample std when "
        "there are several). *Std Dev* is the population standard deviation (ddof=0) of test "
        f"top-1 over a run's last {STABILITY_WINDOW} epochs (all of them if it is shorter; the "
        "header says how many). *Peak-to-final* = best − final top-1, in points. *Best epoch*: "
        "the range over seeds. *Achieved sparsity*: the measured sparsity of the prunable "
        "weights after the last epoch.",
        "",
    ]
    if not runs:
        lines.append("*No run has recorded an epoch yet.*")
        return "\n".join(lines)
    cells = _stability_cells(results, comparison)
    if cells:
        lines.append(
            md_table(
                [
                    "Method",
                    "Sparsity",
                    "Seeds",
                    std_header,
                    "Peak-to-final",
                    "Best epoch",
                    "Achieved sparsity",
                ],
                cells,
            )  # fmt: skip
        )
    else:
        lines.append("*No run counts yet (see the runs below).*")
    rows = []
    for run in runs:
        s = run.summary
        planned = run.planned_epochs
        epochs = f"{s['epochs_completed']}" + (f"/{planned}" if planned else "")
        reached = s["target_reached_epoch"]
        std = fmt_pct(s["std_last10"])
        if mark_window and s["std_last10"] is not None and _window(run) < STABILITY_WINDOW:
            std += f" ({_window(run)} epochs)"
        final_sparsity = s.get("final_sparsity")
        rows.append(
            [
                _run_label(run),
                run.status if run.counts else f"**{run.exclusion[0]}**",
                epochs,
                *(value(run) for _, value in RUN_COLUMNS),
                fmt_pct(s["best_top1"]) if s["best_top1"] is not None else "not reached",
                "—" if s["best_epoch"] is None else str(s["best_epoch"]),
                _sparsity_at(run, s["best_epoch"]),
                "not reached" if reached is None else str(reached),
                _best_of_any_epoch(run),
                fmt_pct(s["final_top1"]),
                "—" if final_sparsity is None or run.target_sparsity == 0
                else f"{final_sparsity * 100:.1f}%",
                std,
                fmt_signed(s["peak_to_final"]) if s["peak_to_final"] is not None else "—",
            ]
        )  # fmt: skip
    lines += [
        "",
        "#### Stability per run",
        "",
        "*Best top-1 (at target)* counts only epochs whose measured sparsity reached the "
        "target; *Sparsity at best* is the measured sparsity of that epoch. *Best of any "
        "epoch* ignores the target and says at which measured sparsity it was reached: for a "
        "run that reaches its target late or never, that is what its best accuracy measured. "
        "Runs that do not count are marked (why: *Unfinished and failed runs*, *Excluded "
        "runs*) and show their numbers so far.",
        "",
        md_table(
            [
                "Run",
                "Status",
                "Epochs",
                *(h for h, _ in RUN_COLUMNS),
                "Best top-1 (at target)",
                "Best epoch",
                "Sparsity at best",
                "Target reached (epoch)",
                "Best of any epoch",
                "Final top-1",
                "Final sparsity",
                std_header,
                "Peak-to-final",
            ],
            rows,
        ),  # fmt: skip
    ]
    return "\n".join(lines)


def _headline_memory(runs: list[RunResult]) -> tuple[str, float] | None:
    """Mean peak over `runs`: CUDA allocated when every run has it, else CPU peak RSS."""
    peaks = [r.peak_memory() for r in runs]
    for name, label in (
        ("cuda_allocated_mb", "peak CUDA memory allocated"),
        ("cpu_rss_mb", "peak CPU RSS"),
    ):
        values = [p[name] for p in peaks]
        if values and all(v is not None for v in values):
            return label, statistics.fmean(values)
    return None


def _finding_accuracy(grid: list[tuple[float, dict[str, Cell]]]) -> list[str]:
    lines = []
    for where, top, second, verdict in _leads(grid):
        if second is None:
            continue
        name, other = method_display_name(top.key), method_display_name(second.key)
        values = f"{top.best.mean:.2f}% vs {second.best.mean:.2f}% ({other})"
        if printed(top.best.mean) == printed(second.best.mean):
            lines.append(f"   - {where}: {name} and {other} tie: {values}.")
            continue
        if verdict.significant is None:
            noise = f"no noise estimate ({verdict.difference.no_noise_reason})"
        else:
            noise = fmt_verdict(verdict, interval=False)
        gap = fmt_printed_difference(top.best.mean, second.best.mean)
        shown = f"**{name}**" if verdict.significant else name
        lines.append(f"   - {shown} leads at {where}: {values}, {gap.rstrip('%')} points, {noise}.")
    return lines


def _finding_memory(results: MatrixResults, comparison: Comparison) -> list[str]:
    reference = comparison.candidate
    others = [comparison.baseline] if comparison.baseline else comparison.methods
    if reference is None:
        return []
    mine = _headline_memory(results.counted(reference))
    lines = []
    for key in others:
        if key == reference or key is None:
            continue
        theirs = _headline_memory(results.counted(key))
        if mine is None or theirs is None or mine[0] != theirs[0]:
            continue
        delta = mine[1] - theirs[1]
        relative = abs(delta) / theirs[1] * 100 if theirs[1] else 0.0
        if f"{delta:.1f}" in ("0.0", "-0.0"):
            change = f"the same {mine[0]} as"
        else:
            change = f"{abs(delta):,.1f} MiB ({relative:.2f}%) {'less' if delta < 0 else 'more'} {mine[0]} than"
        lines.append(
            f"   - {method_display_name(reference)} uses {change} {method_display_name(key)} "
            f"({mine[1]:,.1f} MiB vs {theirs[1]:,.1f} MiB, mean over their runs)."
        )
    for key in comparison.methods:
        spread = [
            v for s in results.sparsities()
            if (v := _headline_memory(results.counted(key, s))) is not None
        ]  # fmt: skip
        if len(spread) > 1:
            low, high = min(v for _, v in spread), max(v for _, v in spread)
            lines.append(
                f"   - {method_display_name(key)}: {spread[0][0]} ranges {low:,.1f} – "
                f"{high:,.1f} MiB across its {len(spread)} sparsity levels."
            )
    return lines


def _finding_stability(results: MatrixResults, comparison: Comparison) -> list[str]:
    lines = []
    for key in comparison.methods:
        runs = results.counted(key)
        stds = [r.summary["std_last10"] for r in runs if r.summary["std_last10"] is not None]
        drops = [r.summary["peak_to_final"] for r in runs if r.summary["peak_to_final"] is not None]
        if not stds:
            continue
        text = (
            f"   - {method_display_name(key)}, mean over {len(runs)} run"
            f"{'' if len(runs) == 1 else 's'}: std over the last epochs "
            f"{statistics.fmean(stds):.2f}%"
        )
        if drops:
            text += f", peak-to-final {statistics.fmean(drops):.2f} points"
        early = [
            r for r in runs
            if r.summary["best_epoch"] is not None and r.planned_epochs
            and r.summary["best_epoch"] <= 0.6 * r.planned_epochs
        ]  # fmt: skip
        if early:
            first = min(early, key=lambda r: r.summary["best_epoch"])
            text += (
                f"; {len(early)} of {len(runs)} runs peaked in the first 60% of training "
                f"(earliest: epoch {first.summary['best_epoch']} of {first.planned_epochs} at "
                f"{fmt_sparsity(first.target_sparsity)})"
            )
        lines.append(text + ".")
    return lines


def _finding_sparsity(results: MatrixResults) -> list[str]:
    gaps = [
        (r.summary["final_sparsity"] - r.target_sparsity, r)
        for r in results.counted()
        if r.target_sparsity > 0 and r.summary["final_sparsity"] is not None
    ]
    if not gaps:
        return []
    largest, run = max(gaps, key=lambda g: abs(g[0]))
    below = [r for gap, r in gaps if gap < -SPARSITY_TOLERANCE]
    head = (
        "Every counted pruned run ended at or above its target"
        if not below
        else f"{len(below)} of {len(gaps)} counted pruned runs ended below their target"
    )
    return [
        f"   - {head}; the largest deviation of the final measured sparsity from the target is "
        f"{largest * 100:+.2f} points (`{run.run_id}`)."
    ]


def section_findings(
    results: MatrixResults, grid: list[tuple[float, dict[str, Cell]]], comparison: Comparison
) -> str:
    """The seed's *Key Findings*, generated from the numbers of the tables above."""
    parts = [
        ("Accuracy (best top-1, leader vs runner-up)", _finding_accuracy(grid)),
        ("Memory", _finding_memory(results, comparison)),
        ("Stability", _finding_stability(results, comparison)),
        ("Achieved sparsity", _finding_sparsity(results)),
    ]
    lines = [
        "## Key Findings",
        "",
        "Generated from the tables of this report (only runs that count); nothing here is "
        "written by hand.",
        "",
    ]
    numbered = [(title, items) for title, items in parts if items]
    if not numbered:
        lines.append("No finished runs yet, so there are no findings.")
    for i, (title, items) in enumerate(numbered, start=1):
        lines += [f"{i}. **{title}**", *items]
    return "\n".join(lines)


def _base_groups(results: MatrixResults) -> list[list[str]]:
    """Method keys that differ only in their base optimizer (`<family>-<base>_<pruning>`,
    the base a catalogue optimizer): one group per family and pruning, two bases or more."""
    optimizers = catalogue.catalogue().optimizers
    groups: dict[tuple[str, str], list[str]] = {}
    for key in results.method_keys():
        label, _, pruning = key.partition("_")
        family, _, base = label.partition("-")
        if base in optimizers:
            groups.setdefault((family, pruning), []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def section_base_impact(results: MatrixResults) -> str:
    """The seed's *Base optimizer impact*: the same pruning on different base optimizers, per
    sparsity, best top-1 per base; the lead of the best base over the next one judged as
    every lead of this report (Welch, Holm over the levels). Empty with one base."""
    groups = _base_groups(results)
    if not groups:
        return ""
    lines = [
        "## Base Optimizer Impact",
        "",
        "The same pruning method on each base optimizer it ran with: best top-1 at the target "
        "sparsity (mean ± std over seeds). *Lead* is the best base minus the next one, with "
        "its verdict (Welch, Holm-adjusted over the sparsity levels); a lead without a noise "
        "estimate (one seed) is a difference, not a finding.",
    ]
    for keys in groups:
        grid = [
            (s, {k: build_cell(results, k, s) for k in keys}) for s in results.sparsities() if s > 0
        ]
        grid = [(s, cells) for s, cells in grid if _distinct_scored(list(cells.values()), "best")]
        rows = []
        for (sparsity, cells), (_, top, second, verdict) in zip(grid, _leads(grid), strict=True):
            lead = "—"
            if second is not None and verdict is not None:
                gap = fmt_printed_difference(top.best.mean, second.best.mean)
                if verdict.significant is None:
                    words = "no noise estimate"
                else:
                    words = fmt_verdict(verdict, interval=False)
                lead = f"{method_display_name(top.key)}: {gap.rstrip('%')} points ({words})"
            rows.append(
                [fmt_sparsity(sparsity)]
                + [fmt_estimate(cells[k].best, cells[k]) for k in keys]
                + [lead]
            )
        header = ["Sparsity"] + [method_display_name(k) for k in keys] + ["Lead"]
        lines += ["", md_table(header, rows)]
    return "\n".join(lines)


def _previous_matrices(results: MatrixResults) -> list[tuple[str, int, list[str]]]:
    """The other matrices beside this one (same results directory), newest plan first: name,
    planned runs and the methods they share with this matrix. Unreadable plans are skipped
    (`make report` on that matrix names what is wrong with it)."""
    import json

    from lib.metrics import MATRIX_FILE
    from lib.spec import RunSpec

    mine = set(results.method_keys())
    found = []
    for plan_path in results.path.parent.glob(f"*/{MATRIX_FILE}"):
        if plan_path.parent == results.path:
            continue
        try:
            entries = json.loads(plan_path.read_text(encoding="utf-8")).get("runs", [])
            keys = {RunSpec.from_dict(e["spec"]).method_key for e in entries}
            mtime = plan_path.stat().st_mtime
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
        found.append((mtime, plan_path.parent.name, len(entries), sorted(keys & mine)))
    return [(name, n, common) for _, name, n, common in sorted(found, reverse=True)]


def section_previous(results: MatrixResults) -> str:
    """The seed's *Comparison with previous results*: which earlier matrices this one can be
    compared with, method for method, and the command that writes that comparison."""
    lines = ["## Comparison with Previous Results", ""]
    previous = [p for p in _previous_matrices(results) if p[2]]
    if not previous:
        lines.append(
            f"No other matrix under `{results.path.parent.name}/` shares a method with this one. "
            "To compare with a previous result, put its matrix directory there and run `make "
            f'report COMPARE="<previous> {results.name}"`.'
        )
        return "\n".join(lines)
    lines += [
        "Other matrices beside this one that ran some of the same methods, newest first. "
        'Side by side, with each difference judged: `make report COMPARE="<previous> '
        f'{results.name}"`.',
        "",
    ]
    rows = [
        [
            f"`{name}`",
            str(n),
            ", ".join(method_display_name(k) for k in common),
            f'`make report COMPARE="{name} {results.name}"`',
        ]
        for name, n, common in previous
    ]
    lines.append(md_table(["Matrix", "Runs", "Methods in common", "Command"], rows))
    return "\n".join(lines)


def section_recommendations(grid: list[tuple[float, dict[str, Cell]]]) -> str:
    """The seed's *Recommendations*, drawn only from significant differences: per sparsity,
    the method whose best top-1 leads the runner-up by a margin the seeds can tell from noise
    (the leads of the Key Findings, Holm over the levels). None when nothing is significant,
    and the section says so and why."""
    lines = ["## Recommendations", ""]
    leads = [(w, t, s, v) for w, t, s, v in _leads(grid) if s is not None and v is not None]
    chosen = [(w, t, s, v) for w, t, s, v in leads if v.significant]
    for where, top, second, verdict in chosen:
        gap = fmt_printed_difference(top.best.mean, second.best.mean)
        lines.append(
            f"- At {where}, use **{method_display_name(top.key)}**: its best top-1 "
            f"({top.best.mean:.2f}%) leads {method_display_name(second.key)} "
            f"({second.best.mean:.2f}%) by {gap.rstrip('%')} points, "
            f"{fmt_verdict(verdict, interval=False)}."
        )
    if chosen:
        rest = [w for w, _, _, v in leads if not v.significant]
        if rest:
            lines.append(
                f"- At {', '.join(rest)}: no recommendation; the lead there is not significant."
            )
        lines += [
            "",
            "Only accuracy differences that are significant are recommended on; memory and "
            "speed are in their sections above.",
        ]
        return "\n".join(lines)
    if not leads:
        lines.append("No recommendation: no sparsity level has two methods with results yet.")
    elif all(v.significant is None for _, _, _, v in leads):
        lines.append(
            "No recommendation: with one seed per method there is no noise estimate, so no "
            "difference can be called significant. Run three or more seeds "
            "(`CONFIG_MATRIX_SEED_COUNT`) before choosing a method."
        )
    else:
        lines.append(
            "No recommendation: no difference between the leading method and the runner-up is "
            "significant at any sparsity level, so these seeds cannot tell the methods apart."
        )
    return "\n".join(lines)


def section_unfinished(results: MatrixResults, comparison: Comparison) -> str:
    runs = [r for r in _ordered_runs(results, comparison) if not r.completed]
    lines = ["## Unfinished and failed runs", ""]
    if not runs:
        lines.append("None: every planned run completed.")
        return "\n".join(lines)
    rows = []
    for run in sorted(runs, key=lambda r: status_rank(r.status)):
        planned = run.planned_epochs
        done = len(run.epochs)
        progress = f"{done}/{planned}" if planned else str(done)
        rows.append(
            [
                _run_label(run),
                f"**{run.status}**",
                progress,
                md_escape(run.reason) if run.reason else "—",
            ]
        )
    lines.append(md_table(["Run", "Status", "Epochs done", "Reason"], rows))
    tails = [r for r in runs if r.status == STATUS_FAILED and r.log_tail]
    for run in tails:
        lines += [
            "",
            f"<details><summary>Last log lines of <code>{run.run_id}</code></summary>",
            "",
            "```",
            run.log_tail.rstrip(),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(lines)


def section_excluded(results: MatrixResults, comparison: Comparison) -> str:
    """Results on disk that no number uses, each with its reason (`RunResult.exclusion`)."""
    lines = ["## Excluded runs", ""]
    runs = [r for r in _ordered_runs(results, comparison) if r.completed and not r.counts]
    runs += results.duplicates
    rows = [[_run_label(r), *(md_escape(part) for part in r.exclusion)] for r in runs]
    rows += [
        [
            f"`{name}`",
            "not in the plan",
            f"a directory with a {METRICS_FILE} that {MATRIX_FILE} does not list",
        ]
        for name in results.stray
    ]
    if not rows:
        lines.append(
            "None: every completed run reached its target sparsity after its planned epochs, "
            "and every result on disk is a planned run."
        )
        return "\n".join(lines)
    lines += [
        "Kept out of every table, average and plot: a completed run with fewer epochs than "
        "planned, a pruned run that never reached its target sparsity (its accuracy is that of "
        "a denser network), a second entry for a (method, sparsity, seed) the plan already has, "
        "and a run directory the plan does not list.",
        "",
        md_table(["Run", "Why", "Detail"], rows),
    ]
    return "\n".join(lines)


# Hyperparameters shown per method: the optimizer's catalogue entry says which apply
# (`OptimizerEntry.report_fields`); a plug-in shows its typed settings and its distribution.
_PLUGIN_FIELDS = ("name", "settings", "distribution", "distribution_version")
_PRUNING_FIELDS = ("method", "schedule", "start_step", "end_epoch", "interval", "scope")
_PRUNING_PLUGIN_FIELDS = ("settings", "distribution", "distribution_version")


def _method_settings(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    opt = spec.get("optimizer", {})
    entry = catalogue.catalogue().optimizers.get(opt.get("name", "?"))
    if entry is not None and entry.report_fields is not None:
        fields = list(entry.report_fields(opt))
    else:  # a plug-in (installed or not): its settings and where it came from
        fields = list(_PLUGIN_FIELDS)
    settings = [(f"optimizer.{f}", _shown(opt.get(f))) for f in fields if f in opt]
    pruning = spec.get("pruning", {})
    if pruning.get("method", "none") != "none":
        shown = _PRUNING_FIELDS + _PRUNING_PLUGIN_FIELDS
        settings += [(f"pruning.{f}", _shown(pruning.get(f))) for f in shown if f in pruning]
    return settings


def _shown(value: Any) -> Any:
    """A plug-in's settings ([name, value] pairs in run.json) as `name=value, ...`."""
    if isinstance(value, list) and all(isinstance(v, list) and len(v) == 2 for v in value):
        return ", ".join(f"{k}={v}" for k, v in value)
    return value


def _py_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def section_technical(results: MatrixResults, comparison: Comparison) -> str:
    spec = results.first_spec()
    train = spec.get("train", {})
    lines = ["## Technical Details", ""]
    if train:
        shared = ", ".join(
            f"{k}={_py_value(train[k])}"
            for k in (
                "lr_schedule",
                "warmup_epochs",
                "label_smoothing",
                "grad_clip",
                "precision",
                "channels_last",
                "compile",
            )
            if k in train
        )
        lines += [f"Training loop (all runs): {shared}.", ""]
    for key in comparison.methods:
        specs = [r.spec for r in results.runs if r.method_key == key and r.spec]
        lines += [f"### {method_display_name(key)}", ""]
        if not specs:
            lines += ["*No configuration recorded.*", ""]
            continue
        settings = _method_settings(specs[0])
        sparsities = sorted({r.target_sparsity for r in results.runs if r.method_key == key})
        lines.append("```python")
        lines += [f"{name} = {_py_value(value)}" for name, value in settings]
        if any(sparsities):
            lines.append(f"pruning.sparsity = {[round(s, 4) for s in sparsities]}")
        lines += ["```", ""]
    config = results.config
    if config:
        lines += [
            "<details><summary>Configuration snapshot (.config symbols of this matrix)</summary>",
            "",
            "```",
            *(f"{k}={v}" for k, v in sorted(config.items())),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(lines).rstrip()


def section_plots(plots: list[tuple[str, str]]) -> str:
    lines = ["## Visualizations", ""]
    if not plots:
        lines.append("*No plots were rendered (none configured, or no epoch recorded yet).*")
    for relative_path, caption in plots:
        lines += [f"![{caption}]({relative_path})", f"*{caption}*", ""]
    return "\n".join(lines).rstrip()


def render_report(
    results: MatrixResults,
    comparison: Comparison,
    plots: list[tuple[str, str]] | None = None,
    now: dt.datetime | None = None,
) -> str:
    """The markdown report of one matrix. `plots`: (relative path, caption) pairs."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if not results.runs:  # only tuning trials so far: their section is the whole report
        return "\n\n".join(s for s in (section_header(results, comparison, now),
                                          section_tuning(results)) if s) + "\n"  # fmt: skip
    grid = _cells_by_sparsity(results, comparison)
    sections = [
        section_header(results, comparison, now),
        section_executive_summary(results, grid, comparison),
        section_configuration(results, comparison),
        section_accuracy(grid, comparison),
        section_operating_points(results, comparison),
        section_memory(results, comparison),
        section_stability(results, comparison),
        # their own "##" sections: after the Results Summary's "###" subsections
        section_tuning(results),
        section_time_to_target(results, comparison),
        section_equal_time(results, comparison),
        section_base_impact(results),
        section_findings(results, grid, comparison),
        section_previous(results),
        section_recommendations(grid),
        section_unfinished(results, comparison),
        section_excluded(results, comparison),
        section_tracking(results),
        section_technical(results, comparison),
        section_plots(plots or []),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"
