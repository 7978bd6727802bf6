"""Cells (the replicates of one method at one sparsity) and the candidate/baseline choice.

A cell's numbers come only from the runs `build_cell` lets in; every table, plot and
comparison asks this module which runs count.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib import catalogue
from lib.metrics import STATUS_COMPLETED
from scripts.report.data import (
    UNFINISHED_ORDER,
    MatrixResults,
    ReportError,
    RunResult,
)
from scripts.report.stats import Estimate, estimate


@dataclass(frozen=True)
class Cell:
    """The replicates of one (method, sparsity) and what the report can say about them."""

    key: str
    sparsity: float
    runs: tuple[RunResult, ...]
    best: Estimate | None
    final: Estimate | None

    @property
    def planned(self) -> int:
        return len(self.runs)

    @property
    def counted(self) -> tuple[RunResult, ...]:
        """The replicates that enter the numbers (`RunResult.counts`)."""
        return tuple(run for run in self.runs if run.counts)

    def missing_note(self, estimate_: Estimate | None) -> str:
        """Why a cell has no number (or only some seeds' numbers)."""
        if not self.runs:
            return "—"
        if estimate_ is None:
            labels = {run.exclusion[0] for run in self.runs if run.exclusion}
            return ", ".join(sorted(labels, key=status_rank))
        if estimate_.n < self.planned:
            return f"{estimate_.n} of {self.planned} seeds"
        return ""


def status_rank(status: str) -> int:
    order = (STATUS_COMPLETED, *UNFINISHED_ORDER)
    return order.index(status) if status in order else len(order)


def dense_key_of(key: str) -> str:
    """The dense method of the same optimizer: `adamwspam_magnitude` -> `adamwspam_dense`."""
    return key.partition("_")[0] + "_dense"


def build_cell(results: MatrixResults, key: str, sparsity: float) -> Cell:
    """The replicates of `key` at `sparsity`. At 0% a pruning method *is* its optimizer's
    dense run, so a pruned method's 0% cell is that dense run (and `Cell.key` says so)."""
    if sparsity == 0 and not results.cell(key, 0.0):
        key = dense_key_of(key)
    runs = tuple(sorted(results.cell(key, sparsity), key=lambda r: r.seed))
    # Only runs that count are numbers: a running run's best so far is not its result, nor
    # is the accuracy of a short run or of one that never reached its target sparsity.
    done = [r for r in runs if r.counts]
    best_values = [r.summary["best_top1"] for r in done if r.summary["best_top1"] is not None]
    final_values = [r.summary["final_top1"] for r in done if r.summary["final_top1"] is not None]
    return Cell(
        key=key,
        sparsity=sparsity,
        runs=runs,
        best=estimate(best_values) if best_values else None,
        final=estimate(final_values) if final_values else None,
    )


def fmt_estimate(value: Estimate | None, cell: Cell, bold: bool = False) -> str:
    if value is None:
        return f"*{cell.missing_note(value)}*" if cell.runs else "—"
    text = f"{value.mean:.2f}%" if value.std is None else f"{value.mean:.2f} ± {value.std:.2f}%"
    if bold:
        text = f"**{text}**"
    note = cell.missing_note(value)
    return f"{text} ({note})" if note else text


@dataclass(frozen=True)
class Comparison:
    methods: list[str]  # every method: candidate, baseline, then the rest as planned
    columns: list[str]  # the accuracy tables' columns: `methods` less the folded dense ones
    baseline: str | None
    candidate: str | None
    notes: list[str]


def _is_default_candidate(key: str) -> bool:
    """A method key of an optimizer whose catalogue entry is the default candidate."""
    family = key.partition("_")[0].partition("-")[0]
    entry = catalogue.catalogue().optimizers.get(family)
    return entry is not None and entry.default_candidate


def resolve_comparison(
    results: MatrixResults, baseline: str | None = None, candidate: str | None = None
) -> Comparison:
    """Pick the baseline and candidate methods: command line first, then matrix.json.

    A method given on the command line that the matrix lacks is an error (the user asked for
    something that cannot be shown); one configured in matrix.json only earns a note, so a
    matrix that, say, ran only AdamWPrune still gets its report.
    """
    keys = results.method_keys()
    notes: list[str] = []
    for option, value in (("--baseline", baseline), ("--candidate", candidate)):
        if value is not None and value not in keys:
            raise ReportError(
                f"{option} {value!r} is not a method of matrix {results.name!r}; "
                f"accepted: {', '.join(keys)}"
            )
    settings = results.report_settings
    if baseline is None:
        baseline = settings.get("baseline") or None
        if baseline is not None and baseline not in keys:
            notes.append(
                f"The configured baseline `{baseline}` has no runs in this matrix, so there "
                "is no Improvement column."
            )
            baseline = None
    if candidate is None:
        candidate = settings.get("candidate") or None
        if candidate is not None and candidate not in keys:
            notes.append(f"The configured candidate `{candidate}` has no runs in this matrix.")
            candidate = None
        if candidate is None:
            # The first method of an optimizer the catalogue marks as the default candidate
            # (AdamWPrune) that prunes; its dense control is not a candidate.
            own = [k for k in keys if _is_default_candidate(k)]
            pruning = [k for k in own if not k.endswith("_dense")]
            candidate = (pruning or own or [None])[0]
    if candidate is not None and candidate == baseline:
        notes.append("Candidate and baseline are the same method; no Improvement column.")
        baseline = None
    ordered = [k for k in (candidate, baseline) if k is not None]
    ordered += [k for k in keys if k not in ordered]
    # A dense method whose optimizer also has a pruning column is that column's 0% row.
    pruned_keys = [k for k in ordered if not k.endswith("_dense")]
    folded = {dense_key_of(k) for k in pruned_keys}
    columns = [k for k in ordered if k not in folded or k in (candidate, baseline)]
    return Comparison(
        methods=ordered, columns=columns, baseline=baseline, candidate=candidate, notes=notes
    )
