"""The tuning axis (docs/protocol.md, "Tuning"): which hyperparameters each trial trains with,
which trial each study selects, and the reruns of the chosen setting.

- `points`: the trials of one study, drawn from an optimizer's search space
  (`Config.search_space_for`) by scipy.stats.qmc (scrambled Halton or Sobol, seeded by
  (TUNING_SEED, study)) or laid out as a grid. Every optimizer with as many searched
  hyperparameters sees the same points of the unit cube, mapped onto its own ranges.
- `apply`: an OptimizerSpec with a trial's values in place of the menu's.
- `select`: per (method, sparsity), each study's selected trial (the best
  `lib.metrics.selection_score`) and the chosen setting (the selection of the median study).
- `reruns`: the runs that train the chosen setting again on fresh seeds, planned once every
  trial of their (method, sparsity) has finished.

lib.matrix plans the trials; they are ordinary RunSpecs whose `tuning` field says where they
sit. The report (scripts/report/tuning.py) reads the same selection.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib.metrics import (
    METRICS_FILE,
    STATUS_COMPLETED,
    STATUS_FAILED,
    MetricsError,
    read_metrics,
    selection_score,
)
from lib.spec import OptimizerSpec, RunSpec, TuningSpec

if TYPE_CHECKING:  # the report selects trials without loading kconfiglib
    from lib.config import Config, SearchRange, TuningSettings


def unit_points(settings: TuningSettings, study: int, dimensions: int) -> list[list[float]]:
    """`settings.trials` points of [0, 1]^dimensions for one study."""
    if settings.search == "grid":
        axis = [i / (settings.grid_points - 1) for i in range(settings.grid_points)]
        points: list[list[float]] = [[]]
        for _ in range(dimensions):
            points = [[*p, x] for p in points for x in axis]
        return points
    import numpy as np
    from scipy.stats import qmc  # a declared dependency (pyproject.toml), imported when tuning

    rng = np.random.default_rng([settings.seed, study])
    if settings.search == "sobol":
        sampler = qmc.Sobol(dimensions, scramble=True, rng=rng)
    else:
        sampler = qmc.Halton(dimensions, scramble=True, rng=rng)
    with warnings.catch_warnings():
        # Sobol's balance needs a power of 2 points; any count is still a valid sample (the
        # menu says so), so scipy's warning would only repeat it at every plan.
        warnings.simplefilter("ignore", UserWarning)
        return sampler.random(settings.trials).tolist()


def scaled(dimension: SearchRange, unit: float) -> float:
    """A point of [0, 1] on `dimension`'s range and scale (log: geometric), 4 significant
    digits so run.json and the report show the value trained with."""
    if dimension.scale == "log":
        lo, hi = math.log(dimension.low), math.log(dimension.high)
        value = math.exp(lo + unit * (hi - lo))
    else:
        value = dimension.low + unit * (dimension.high - dimension.low)
    return float(f"{value:.4g}")


def points(
    settings: TuningSettings, space: tuple[SearchRange, ...], study: int
) -> list[tuple[tuple[str, Any], ...]]:
    """The trials of one study: per trial, (field, value) of each searched hyperparameter."""
    return [
        tuple((d.field, scaled(d, u)) for d, u in zip(space, unit, strict=True))
        for unit in unit_points(settings, study, len(space))
    ]


def apply(opt: OptimizerSpec, values: Iterable[tuple[str, Any]]) -> OptimizerSpec:
    """`opt` with a trial's values: a plug-in's settings updated (what a plug-in reads), else
    OptimizerSpec fields replaced. An integer field takes the rounded value."""
    settings = dict(opt.settings)
    changes: dict[str, Any] = {}
    for name, value in values:
        current = settings[name] if name in settings else getattr(opt, name)
        if isinstance(current, int) and not isinstance(current, bool):
            value = round(value)
        if name in settings:
            settings[name] = value
        else:
            changes[name] = value
    if settings != dict(opt.settings):
        changes["settings"] = tuple(settings.items())
    return replace(opt, **changes)


def describe_values(values: Iterable[tuple[str, Any]]) -> str:
    """`lr=0.00123, weight_decay=0.0004`: a trial's hyperparameters, as the dry run and the
    report show them."""
    return ", ".join(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in values)  # fmt: skip


def describe(config: Config) -> str:
    """The dry run's account of the search: per optimizer, study and trial, the values drawn
    (the same for every pruning method and sparsity of that optimizer)."""
    assert config.tuning is not None
    tuning = config.tuning
    lines = [
        f"tuning: {tuning.search} search, {tuning.studies} studies x {tuning.trials} trials "
        "for every optimizer, pruning method and sparsity"
    ]
    for opt in config.optimizers:
        space = config.search_space_for(opt)
        for study in range(tuning.studies):
            for trial, values in enumerate(points(tuning, space, study)):
                lines.append(
                    f"  {opt.label:<20} study {study} trial {trial}: {describe_values(values)}"
                )
    if tuning.rerun_seeds:
        lines.append(
            f"  then the chosen setting of each method and sparsity over {tuning.rerun_seeds} "
            "fresh seeds, planned once its trials have finished"
        )
    return "\n".join(lines)


def first_seed(config: Config) -> int:
    """Study s trains with this seed + s; the reruns follow the studies' seeds."""
    return config.matrix.seeds[0]


def trial_specs(config: Config, base: RunSpec, opt: OptimizerSpec) -> list[RunSpec]:
    """The trials of `base` (a planned run of `opt`, its seed ignored), study by study."""
    assert config.tuning is not None
    space = config.search_space_for(opt)
    specs = []
    for study in range(config.tuning.studies):
        for trial, values in enumerate(points(config.tuning, space, study)):
            specs.append(
                replace(
                    base,
                    optimizer=apply(opt, values),
                    seed=first_seed(config) + study,
                    tuning=TuningSpec("trial", study, trial, values),
                    run_id="",
                )
            )
    return specs


# --------------------------------------------------------------------------------------------
# selection


@dataclass(frozen=True)
class Trial:
    """One trial as the selection sees it: where it sits, what it tried, how it scored."""

    run_id: str
    cell: tuple[str, float]  # (method key, target sparsity)
    study: int
    trial: int
    values: tuple[tuple[str, Any], ...]
    score: float | None  # lib.metrics.selection_score of a completed run, else None
    finished: bool  # completed or failed: nothing more will come of it


@dataclass(frozen=True)
class Selection:
    """One (method, sparsity): each study's selected trial and the chosen setting."""

    cell: tuple[str, float]
    trials: tuple[Trial, ...]
    selected: tuple[Trial | None, ...]  # by study; None: no trial of that study completed
    median: float | None  # median over studies of the selected trials' scores
    chosen: Trial | None  # the selected trial of the median study (the lower one of two)

    @property
    def complete(self) -> bool:
        return all(t.finished for t in self.trials)


def trial_of(spec: dict[str, Any], summary: dict[str, Any] | None) -> Trial | None:
    """A Trial from a run's spec (run.json / matrix.json form) and its metrics summary; None
    for a run that is no trial."""
    tuning = spec.get("tuning") or {}
    if tuning.get("role") != "trial":
        return None
    ranked = RunSpec.from_dict(spec)
    status = (summary or {}).get("status")
    return Trial(
        run_id=ranked.run_id,
        cell=(ranked.method_key, ranked.pruning.target),
        study=ranked.tuning.study,
        trial=ranked.tuning.trial,
        values=ranked.tuning.values,
        score=selection_score(summary) if status == STATUS_COMPLETED else None,
        finished=status in (STATUS_COMPLETED, STATUS_FAILED),
    )


def select(trials: Iterable[Trial]) -> list[Selection]:
    """Per (method, sparsity), in the order the trials come: each study's best trial (ties:
    the earlier trial) and the chosen setting."""
    cells: dict[tuple[str, float], list[Trial]] = {}
    for t in trials:
        cells.setdefault(t.cell, []).append(t)
    selections = []
    for cell, members in cells.items():
        studies = sorted({t.study for t in members})
        selected: list[Trial | None] = []
        for study in studies:
            scored = [t for t in members if t.study == study and t.score is not None]
            selected.append(max(scored, key=lambda t: (t.score, -t.trial)) if scored else None)
        scores = [t for t in selected if t is not None]
        median = statistics.median(t.score for t in scores) if scores else None
        # The median study's own selection (the lower of the two middle ones): a setting that
        # one tuning budget found, not the best of all the studies' budgets together.
        ranked = sorted(scores, key=lambda t: (t.score, -t.study))
        chosen = ranked[(len(ranked) - 1) // 2] if ranked else None
        selections.append(Selection(cell, tuple(members), tuple(selected), median, chosen))
    return selections


def reruns(config: Config, planned: list[RunSpec], matrix_dir: Path) -> list[RunSpec]:
    """The reruns of each (method, sparsity) whose trials have all finished: the chosen
    setting on CONFIG_TUNING_RERUN_SEEDS fresh seeds. [] without reruns."""
    if config.tuning is None or not config.tuning.rerun_seeds:
        return []
    by_id = {s.run_id: s for s in planned if s.tuning is not None and s.tuning.role == "trial"}
    trials = []
    for spec in by_id.values():
        try:
            summary = read_metrics(matrix_dir / spec.run_id / METRICS_FILE, per_layer=False)
        except (OSError, MetricsError):
            summary = None
        else:
            summary = summary.get("summary")
        trials.append(trial_of(spec.to_dict(), summary))
    out = []
    first = first_seed(config) + config.tuning.studies
    for selection in select(trials):
        if not selection.complete or selection.chosen is None:
            continue
        base = by_id[selection.chosen.run_id]
        for seed in range(first, first + config.tuning.rerun_seeds):
            spec = replace(
                base,
                seed=seed,
                tuning=replace(base.tuning, role="rerun"),
                run_id="",
                out_dir="",
            )
            out.append(replace(spec, out_dir=str(Path(base.out_dir).parent / spec.run_id)))
    return out
