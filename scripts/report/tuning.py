"""The report's tuning section (docs/protocol.md, "Tuning"): per method and sparsity, the trial
each study selected, the median over studies, the chosen setting, and the reruns of that
setting (mean and 95% CI over seeds). The selection is lib.tuning's, the one the runner used to
plan the reruns."""

from __future__ import annotations

from typing import Any

from lib.tuning import Selection, Trial, describe_values, select, trial_of
from scripts.report.cells import build_cell
from scripts.report.data import MatrixResults, RunResult, method_display_name
from scripts.report.markdown import fmt_interval, fmt_pct, fmt_sparsity, md_table
from scripts.report.stats import CONFIDENCE


def _selected_cell(trial: Trial | None, members: tuple[Trial, ...], study: int) -> str:
    if trial is not None:
        return f"trial {trial.trial}: {fmt_pct(trial.score)} ({describe_values(trial.values)})"
    pending = [t for t in members if t.study == study and not t.finished]
    return "*trials still running*" if pending else "*no trial completed*"


def selected_by(results: MatrixResults) -> str:
    """Which set selected the trials: the trainer's `selected_by` ("validation" / "test");
    "test" where a summary does not say (no held-out validation split)."""
    sets = {
        (run.summary or {}).get("selected_by") or "test"
        for run in results.trials
        if run.summary is not None
    }
    return "test" if not sets or "test" in sets else sets.pop()


def _is_rerun(run: RunResult) -> bool:
    return ((run.spec or {}).get("tuning") or {}).get("role") == "rerun"


def _reruns(results: MatrixResults, selection: Selection) -> str:
    key, sparsity = selection.cell
    cell = build_cell(results, key, sparsity)
    reruns = [r for r in cell.runs if _is_rerun(r)]
    if not reruns:
        return "—"
    best = cell.best
    if best is None:
        return f"*{cell.missing_note(best)}*"
    interval = f" {fmt_interval(best.ci_low, best.ci_high)}" if best.ci_low is not None else ""
    return f"{fmt_pct(best.mean)}{interval} (n={best.n})"


def selections(results: MatrixResults) -> list[Selection]:
    """lib.tuning.select over the matrix's trials."""
    trials = [trial_of(run.spec or {}, run.summary) for run in results.trials]
    return select(t for t in trials if t is not None)


def trial_rows(results: MatrixResults) -> list[dict[str, Any]]:
    """tuning.csv: one dict per trial, its hyperparameters as columns of their own."""
    status = {run.run_id: run.status for run in results.trials}
    rows = []
    for selection in selections(results):
        selected = {t.run_id for t in selection.selected if t is not None}
        for t in selection.trials:
            rows.append(
                {
                    "run_id": t.run_id,
                    "method_key": selection.cell[0],
                    "target_sparsity": selection.cell[1],
                    "study": t.study,
                    "trial": t.trial,
                    "status": status.get(t.run_id),
                    **dict(t.values),
                    "selection_score": t.score,
                    "selected": t.run_id in selected,
                    "chosen": selection.chosen is not None and t.run_id == selection.chosen.run_id,
                }
            )
    return rows


def section_tuning(results: MatrixResults) -> str:
    """The tuning section; "" for a matrix without trials."""
    if not results.trials:
        return ""
    cells = selections(results)
    studies = max(len(s.selected) for s in cells)
    per_study = max(sum(1 for t in s.trials if t.study == 0) for s in cells)
    chooser = selected_by(results)
    confidence = f"{CONFIDENCE * 100:g}%"
    lines = [
        "## Tuning",
        "",
        f"Every method and sparsity was tuned alike: {studies} "
        f"stud{'y' if studies == 1 else 'ies'} of {per_study} trials each, every trial an "
        "ordinary run with the hyperparameters the search drew. Each study selects its best "
        f"trial on the **{chooser} set**; the *median* over studies is the method's tuned "
        "result, and the chosen setting is the median study's selection."
        + (
            f" The reruns train that setting again on fresh seeds (mean and {confidence} CI "
            "of the best test top-1); they are the runs of the tables above and below."
            if any(_is_rerun(run) for run in results.runs)
            else " This matrix has no reruns of the chosen settings (they are planned once a "
            "cell's trials have all finished, when CONFIG_TUNING_RERUN_SEEDS is above 0)."
        )
        + " See docs/protocol.md.",
    ]
    if chooser == "test":
        lines += [
            "",
            "> **Warning**: the trials were selected on the test set, the set the accuracies "
            "are reported on, so the selected trials and the median are optimistic. Turn on "
            "the held-out validation split to select on data the report does not score.",
        ]
    header = [
        "Method",
        "Sparsity",
        *(f"Study {s}: selected" for s in range(studies)),
        "Median over studies",
        "Chosen setting",
        f"Reruns: mean [{confidence} CI]",
    ]
    rows = []
    for selection in cells:
        key, sparsity = selection.cell
        chosen = selection.chosen
        rows.append(
            [
                method_display_name(key),
                fmt_sparsity(sparsity),
                *(
                    _selected_cell(
                        selection.selected[s] if s < len(selection.selected) else None,
                        selection.trials,
                        s,
                    )
                    for s in range(studies)
                ),
                fmt_pct(selection.median) if selection.median is not None else "—",
                describe_values(chosen.values) if chosen is not None else "—",
                _reruns(results, selection),
            ]
        )
    lines += ["", md_table(header, rows)]
    return "\n".join(lines)
