"""The tuning axis (lib/tuning.py, docs/protocol.md "Tuning"): search spaces from the catalogue
entries and Kconfig, trials as ordinary matrix runs, selection per study, the median over
studies, reruns of the chosen setting, and the report's tuning section."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import cli

from lib import catalogue
from lib import config as cfg
from lib.config import ConfigError, SearchRange, TuningSettings
from lib.matrix import plan
from lib.metrics import selection_score
from lib.spec import OptimizerSpec, RunSpec
from lib.tuning import Trial, apply, points, scaled, select, unit_points

ROOT = cfg.ROOT
TINY = cfg.DEFCONFIG_DIR / "tuning-tiny"


def settings(**changes) -> TuningSettings:
    base = TuningSettings(search="halton", trials=5, studies=3, seed=0, rerun_seeds=0)
    return replace(base, **changes)


def tiny_config(tmp_path: Path, extra: str = "") -> cfg.Config:
    path = tmp_path / ".config"
    path.write_text(TINY.read_text() + extra)
    return cfg.load(path)


# --------------------------------------------------------------------------------------------
# the search


def test_quasi_random_points_are_seeded_per_study_and_inside_the_unit_cube():
    for search in ("halton", "sobol"):
        first = unit_points(settings(search=search), 0, 2)
        assert first == unit_points(settings(search=search), 0, 2)  # the plan is pure
        assert first != unit_points(settings(search=search), 1, 2)  # studies differ
        assert first != unit_points(settings(search=search, seed=7), 0, 2)
        assert len(first) == 5 and all(0 <= x < 1 for p in first for x in p)


def test_a_log_range_is_searched_geometrically_and_a_linear_one_evenly():
    lr = SearchRange("lr", "log", 1e-4, 1e-2)
    assert scaled(lr, 0.0) == pytest.approx(1e-4)
    assert scaled(lr, 0.5) == pytest.approx(1e-3)
    assert scaled(lr, 1.0) == pytest.approx(1e-2)
    momentum = SearchRange("momentum", "linear", 0.8, 1.0)
    assert scaled(momentum, 0.5) == pytest.approx(0.9)


def test_a_grid_covers_every_combination_ends_included():
    space = (SearchRange("lr", "log", 1e-4, 1e-2), SearchRange("weight_decay", "log", 1e-3, 1e-1))
    grid = points(settings(search="grid", grid_points=3, trials=9), space, study=0)
    assert len(grid) == 9
    lrs = sorted({dict(p)["lr"] for p in grid})
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2])
    assert len(set(grid)) == 9


def test_a_trial_overrides_the_optimizers_fields_and_rounds_integer_ones():
    opt = OptimizerSpec(name="adamwspam", lr=1e-3, weight_decay=0.01, spam_interval=500)
    tried = apply(opt, (("lr", 2.5e-3), ("spam_interval", 612.7)))
    assert (tried.lr, tried.weight_decay, tried.spam_interval) == (2.5e-3, 0.01, 613)
    plugin = OptimizerSpec(name="lion", settings=(("lr", 1e-4), ("steps", 3)))
    assert dict(apply(plugin, (("lr", 3e-4), ("steps", 4.4))).settings) == {"lr": 3e-4, "steps": 4}


def test_every_built_in_optimizer_searches_lr_and_weight_decay_on_a_log_scale():
    for entry in catalogue.catalogue().optimizers.values():
        dims = {d.field: d.scale for d in entry.search_space}
        assert dims["lr"] == dims["weight_decay"] == "log", entry.name


# --------------------------------------------------------------------------------------------
# trials as matrix runs


def test_the_tiny_defconfig_plans_equal_trials_for_each_optimizer(tmp_path):
    config = tiny_config(tmp_path)
    specs = plan(config)
    assert [s.run_id for s in specs] == [
        f"resnet20_{key}_s50_seed{study}_study{study}_trial{trial}"
        for key in ("adamw_magnitude", "adamwprune-adamw_state-hybrid")
        for study in (0, 1)
        for trial in (0, 1)
    ]
    by_optimizer: dict[str, list[RunSpec]] = {}
    for s in specs:
        by_optimizer.setdefault(s.optimizer.name, []).append(s)
        assert s.tuning.role == "trial"
        assert (s.optimizer.lr, s.optimizer.weight_decay) == tuple(dict(s.tuning.values).values())
        assert 1e-4 <= s.optimizer.lr <= 1e-2 and 1e-5 <= s.optimizer.weight_decay <= 1e-1
        assert s.train == specs[0].train  # the same training budget for every trial
    counts = {name: len(runs) for name, runs in by_optimizer.items()}
    assert counts == {"adamw": 4, "adamwprune": 4}
    # The same quasi-random points for both optimizers (their ranges are the same here).
    assert [s.tuning.values for s in by_optimizer["adamw"]] == [
        s.tuning.values for s in by_optimizer["adamwprune"]
    ]


def test_a_trial_round_trips_through_run_json_and_an_ordinary_run_has_no_tuning_key():
    spec = plan(cfg.load(TINY))[0]
    again = RunSpec.from_json(spec.to_json())
    assert again == spec and again.run_id == spec.run_id
    assert json.loads(spec.to_json())["tuning"]["values"] == [list(v) for v in spec.tuning.values]
    ordinary = replace(spec, tuning=None, run_id="")
    assert "tuning" not in ordinary.to_dict() and ordinary.run_id.endswith("_seed0")
    rerun = replace(spec, tuning=replace(spec.tuning, role="rerun"), seed=5, run_id="")
    assert rerun.run_id.endswith("_seed5_tuned")
    assert rerun.identity() != replace(rerun, tuning=None).identity()


def test_the_gpu_defconfig_tunes_the_seeds_comparison_alike():
    config = cfg.load(cfg.DEFCONFIG_DIR / "resnet50-adamwprune-tuned")
    specs = plan(config)
    assert {o.name for o in config.optimizers} == {"adamw", "adamwspam", "adamwprune"}
    assert config.sparsities == (0.5, 0.7, 0.9)
    cells: dict[tuple[str, float], int] = {}
    for s in specs:
        cells[(s.method_key, s.pruning.target)] = cells.get((s.method_key, s.pruning.target), 0) + 1
    assert set(cells.values()) == {config.tuning.trials * config.tuning.studies}
    assert len(cells) == 3 * 3 and config.tuning.rerun_seeds == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('CONFIG_ADAMW_TUNE_LR="0,1e-2"\n', "CONFIG_ADAMW_TUNE_LR='0,1e-2' is invalid"),
        ('CONFIG_ADAMW_TUNE_LR="1e-2,1e-4"\n', "0 < low < high (log scale)"),
        ('CONFIG_ADAMW_TUNE_LR="1e-4"\n', "two numbers low,high"),
        ("CONFIG_MATRIX_SEED_COUNT=3\n", "CONFIG_MATRIX_SEED_COUNT='3' is invalid"),
        (
            'CONFIG_ADAMW_TUNE_LR=""\nCONFIG_ADAMW_TUNE_WEIGHT_DECAY=""\n',
            "AdamW searches no hyperparameter",
        ),
        (
            'CONFIG_TUNING_SEARCH_GRID=y\nCONFIG_ADAMW_TUNE_WEIGHT_DECAY=""\n',
            "now AdamW 1, AdamWPrune 2",
        ),
    ],
)
def test_a_bad_tuning_setting_is_one_line_naming_it(tmp_path, extra, message):
    with pytest.raises(ConfigError) as e:
        tiny_config(tmp_path, extra)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_grid_gives_every_optimizer_the_same_trials(tmp_path):
    config = tiny_config(tmp_path, "CONFIG_TUNING_SEARCH_GRID=y\nCONFIG_TUNING_GRID_POINTS=2\n")
    specs = plan(config)
    assert config.tuning.trials == 4 and len(specs) == 2 * 2 * 4


# --------------------------------------------------------------------------------------------
# selection


def trial(study: int, number: int, score: float | None, finished: bool = True) -> Trial:
    return Trial(
        run_id=f"r{study}{number}",
        cell=("adamw_magnitude", 0.5),
        study=study,
        trial=number,
        values=(("lr", 10.0**-number),),
        score=score,
        finished=finished,
    )


def test_each_study_selects_its_best_trial_and_the_median_study_chooses():
    trials = [
        trial(0, 0, 60.0), trial(0, 1, 70.0),  # study 0 selects trial 1 (70)
        trial(1, 0, 80.0), trial(1, 1, 75.0),  # study 1 selects trial 0 (80)
        trial(2, 0, 50.0), trial(2, 1, 65.0),  # study 2 selects trial 1 (65)
    ]  # fmt: skip
    (selection,) = select(trials)
    assert [(t.study, t.trial) for t in selection.selected] == [(0, 1), (1, 0), (2, 1)]
    assert selection.median == 70.0
    assert (selection.chosen.study, selection.chosen.trial) == (0, 1)
    assert selection.complete


def test_with_an_even_number_of_studies_the_lower_middle_study_chooses():
    (selection,) = select([trial(0, 0, 60.0), trial(1, 0, 80.0)])
    assert selection.median == 70.0 and selection.chosen.study == 0


def test_a_study_without_a_completed_trial_selects_nothing_and_is_not_complete():
    (selection,) = select([trial(0, 0, 60.0), trial(1, 0, None, finished=False)])
    assert selection.selected[1] is None and not selection.complete
    assert selection.median == 60.0


def test_selection_uses_held_out_validation_when_the_trainer_wrote_it():
    assert selection_score({"best_top1": 71.0}) == 71.0
    assert selection_score({"best_top1": 71.0, "selection_top1": 64.0}) == 64.0
    # validation on but never at target: no score, never the test set instead
    assert selection_score({"best_top1": 71.0, "selection_top1": None}) is None


# --------------------------------------------------------------------------------------------
# end to end: trials, then reruns, then the report


@pytest.fixture(scope="module")
def tuned_matrix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuning")
    config = tmp / ".config"
    config.write_text(TINY.read_text() + f'CONFIG_RESULTS_DIR="{tmp / "results"}"\n')
    res = cli("lib.cli", "olddefconfig", config=config)
    assert res.returncode == 0, res.stderr
    res = cli("lib.cli", "test-matrix", config=config)
    assert res.returncode == 0, res.stdout + res.stderr
    return config, tmp / "results" / "tuning-tiny", res.stdout


def test_the_tiny_tuning_matrix_runs_its_trials_then_reruns_the_chosen_settings(tuned_matrix):
    config, matrix_dir, out = tuned_matrix
    assert "tuning: 4 reruns of the chosen settings" in out
    manifest = json.loads((matrix_dir / "matrix.json").read_text())
    ids = [r["run_id"] for r in manifest["runs"]]
    assert len(ids) == 8 + 4 and all(r["status"] == "completed" for r in manifest["runs"])
    reruns = [RunSpec.from_dict(r["spec"]) for r in manifest["runs"] if "_tuned" in r["run_id"]]
    assert sorted({s.seed for s in reruns}) == [2, 3]  # fresh seeds: the studies used 0 and 1
    for rerun in reruns:  # each reruns a trial of its own method with that trial's values
        chosen = next(
            RunSpec.from_dict(r["spec"])
            for r in manifest["runs"]
            if r["spec"].get("tuning", {}).get("role") == "trial"
            and RunSpec.from_dict(r["spec"]).method_key == rerun.method_key
            and RunSpec.from_dict(r["spec"]).tuning.study == rerun.tuning.study
            and RunSpec.from_dict(r["spec"]).tuning.trial == rerun.tuning.trial
        )
        assert rerun.optimizer == chosen.optimizer
    # Nothing left to do: running again trains nothing and plans no new rerun.
    again = cli("lib.cli", "test-matrix", config=config)
    assert again.returncode == 0 and "starting" not in again.stdout
    assert "tuning:" not in again.stdout


def test_the_report_shows_each_studys_selection_the_median_and_the_reruns(tuned_matrix):
    from lib.tuning import trial_of
    from scripts.report.cells import resolve_comparison
    from scripts.report.data import load_matrix
    from scripts.report.sections import render_report

    _, matrix_dir, _ = tuned_matrix
    results = load_matrix(matrix_dir)
    assert len(results.trials) == 8 and len(results.runs) == 4
    text = render_report(results, resolve_comparison(results, None, None))
    tuning = text.split("## Tuning", 1)[1].split("\n#", 1)[0]
    # tuning-tiny holds out a validation split: the trainer's selection, no warning
    assert "on the **validation set**" in tuning and "**Warning**" not in tuning
    assert "they are the runs of the tables above and below" in tuning
    assert "**Tuning trials**: 8 completed (of 8 planned)" in text
    assert "**Runs**: 4 completed (of 4 planned)" in text
    selections = select(trial_of(r.spec, r.summary) for r in results.trials)
    rows = [line for line in tuning.splitlines() if line.startswith("| AdamW")]
    assert len(rows) == 2
    for selection in selections:
        row = next(r for r in rows if "50%" in r and (
            "state" in r) == ("state" in selection.cell[0]))  # fmt: skip
        assert f"{selection.median:.2f}%" in row
        for chosen in selection.selected:
            assert f"trial {chosen.trial}: {chosen.score:.2f}%" in row
        reruns = [r for r in results.runs if r.method_key == selection.cell[0]]
        values = [r.summary["best_top1"] for r in reruns]
        assert f"{sum(values) / len(values):.2f}%" in row and "(n=2)" in row


def test_a_matrix_of_trials_only_reports_its_tuning_section(tuned_matrix, tmp_path):
    import shutil

    from lib.store import seal
    from scripts.report.cells import resolve_comparison
    from scripts.report.data import load_matrix
    from scripts.report.sections import render_report

    _, matrix_dir, _ = tuned_matrix
    manifest = json.loads((matrix_dir / "matrix.json").read_text())
    manifest["runs"] = [r for r in manifest["runs"] if "_tuned" not in r["run_id"]]
    copy = tmp_path / "tuning-tiny"
    copy.mkdir()
    (copy / "matrix.json").write_text(json.dumps(seal(manifest)))  # as a runner wrote it
    for entry in manifest["runs"]:  # copies: the store follows no link
        shutil.copytree(matrix_dir / entry["run_id"], copy / entry["run_id"])
    results = load_matrix(copy)
    assert results.runs == [] and len(results.trials) == 8
    text = render_report(results, resolve_comparison(results, None, None))
    assert "## Tuning" in text and "| AdamW + magnitude | 50% |" in text
    assert "**Tuning trials**: 8 completed (of 8 planned)" in text
    assert "**Runs**: none yet" in text and "This matrix has no reruns" in text
    assert math.isfinite(max(t.summary["best_top1"] for t in results.trials))


def test_with_held_out_validation_the_report_selects_on_it_and_does_not_warn(
    tuned_matrix, tmp_path
):
    """Held-out validation top-1 (`selection_top1`, derived from the epochs' val_top1) decides,
    not test."""
    import shutil

    from scripts.report.cells import resolve_comparison
    from scripts.report.data import load_matrix
    from scripts.report.sections import render_report

    _, matrix_dir, _ = tuned_matrix
    copy = tmp_path / "tuning-tiny"
    shutil.copytree(matrix_dir, copy)
    for path in copy.glob("*_study*_trial*/metrics.json"):
        doc = json.loads(path.read_text())
        # validation prefers trial 1 of every study, whatever test said
        trial = int(path.parent.name.rsplit("_trial", 1)[1])
        for epoch in doc["epochs"]:
            epoch["val_top1"] = 50.0 + 10 * trial
        doc["summary"].update(selection_top1=50.0 + 10 * trial, selected_by="validation")
        path.write_text(json.dumps(doc))
    (copy / "index.json").unlink(missing_ok=True)
    results = load_matrix(copy)
    text = render_report(results, resolve_comparison(results, None, None))
    tuning = text.split("## Tuning", 1)[1].split("\n#", 1)[0]
    assert "on the **validation set**" in tuning and "**Warning**" not in tuning
    rows = [line for line in tuning.splitlines() if line.startswith("| AdamW")]
    assert len(rows) == 2
    for row in rows:
        assert row.count("trial 1: 60.00%") == 2 and "| 60.00% |" in row


def test_without_held_out_validation_the_report_warns_it_selected_on_test(tuned_matrix, tmp_path):
    """Runs without the split (no val_* epochs, no `selection_top1` / `selected_by`) selected
    on the test set: the section says so and warns."""
    import shutil

    from scripts.report.cells import resolve_comparison
    from scripts.report.data import load_matrix
    from scripts.report.sections import render_report

    _, matrix_dir, _ = tuned_matrix
    copy = tmp_path / "tuning-tiny"
    shutil.copytree(matrix_dir, copy)
    for path in copy.glob("*/metrics.json"):
        doc = json.loads(path.read_text())
        doc["summary"].pop("selection_top1", None)
        doc["summary"].pop("selected_by", None)
        doc["epochs"] = [
            {k: v for k, v in epoch.items() if not k.startswith("val_")} for epoch in doc["epochs"]
        ]
        path.write_text(json.dumps(doc))
    (copy / "index.json").unlink(missing_ok=True)
    results = load_matrix(copy)
    text = render_report(results, resolve_comparison(results, None, None))
    tuning = text.split("## Tuning", 1)[1].split("\n#", 1)[0]
    assert "on the **test set**" in tuning and "**Warning**" in tuning


# --------------------------------------------------------------------------------------------
# a plug-in's search space (docs/plugins.md)


def plugin_with_search_space(site: Path, dimension: str) -> None:
    from tests.test_plugins import OPTIMIZER_FRAGMENT, OPTIMIZER_MODULE, install

    fragment = OPTIMIZER_FRAGMENT.replace(
        "endmenu",
        'config {NAME}_TUNE_LR\n\tstring "Tuning: lr range"\n\tdepends on TUNING\n'
        '\tdefault "1e-3,1e-1"\n\nendmenu',
    )
    module = OPTIMIZER_MODULE.replace(
        "from lib.catalogue import OptimizerEntry, setting",
        "from lib.catalogue import OptimizerEntry, SearchDimension, setting",
    ).replace(
        "    build=build,\n)",
        f'    build=build,\n    search_space=(SearchDimension("{dimension}", "log"),),\n)',
    )
    install(site, "fake-opt", "fakeopt", module=module, fragment=fragment)


def test_a_plugin_searches_its_own_settings(site, tmp_path):
    plugin_with_search_space(site, "lr")
    config = tiny_config(
        tmp_path, "CONFIG_OPTIMIZER_FAKEOPT=y\n# CONFIG_OPTIMIZER_ADAMWPRUNE is not set\n"
    )
    trials = [s for s in plan(config) if s.optimizer.name == "fakeopt"]
    assert len(trials) == 2 * 2  # the same trials as AdamW's
    for spec in trials:
        settings = dict(spec.optimizer.settings)
        assert settings["lr"] == dict(spec.tuning.values)["lr"] and 1e-3 <= settings["lr"] <= 1e-1
        assert settings["steps"] == 3  # not searched: the menu's value
        assert spec.optimizer.lr == OptimizerSpec().lr  # a plug-in reads only its settings


def test_a_plugin_search_dimension_that_is_none_of_its_settings_is_one_line(site):
    plugin_with_search_space(site, "momentum")
    reason = catalogue.catalogue().broken["fakeopt"]
    assert "search dimension 'momentum' (log) is not accepted" in reason and "\n" not in reason


def test_make_report_writes_one_tuning_csv_row_per_trial(tuned_matrix):
    import csv

    from scripts.report.output import TUNING_CSV_FILE, write_report

    _, matrix_dir, _ = tuned_matrix
    report = write_report(matrix_dir)
    assert "## Tuning" in report.read_text()
    with open(matrix_dir / TUNING_CSV_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {"lr", "weight_decay", "selection_score"} <= set(rows[0])
    for key in ("adamw_magnitude", "adamwprune-adamw_state-hybrid"):
        mine = [r for r in rows if r["method_key"] == key]
        assert [r["selected"] for r in mine].count("true") == 2  # one per study
        (chosen,) = [r for r in mine if r["chosen"] == "true"]
        assert chosen["selected"] == "true"
        rerun = RunSpec.from_json(
            next(matrix_dir.glob(f"resnet20_{key}_s50_seed2_tuned/run.json")).read_text()
        )
        assert rerun.optimizer.lr == float(chosen["lr"])


def test_reruns_are_planned_from_finished_trials_alone(tuned_matrix, tmp_path):
    """What a later make test-matrix / continue plans (the Slurm path: trials first): the
    same reruns the first pass ran, and none for a cell with an unfinished trial."""
    import shutil

    from lib.tuning import reruns

    config_path, matrix_dir, _ = tuned_matrix
    manifest = json.loads((matrix_dir / "matrix.json").read_text())
    ran = sorted(
        (RunSpec.from_dict(r["spec"]) for r in manifest["runs"] if "_tuned" in r["run_id"]),
        key=lambda s: s.run_id,
    )
    config = cfg.load(config_path)
    trials = plan(config)
    planned = sorted(reruns(config, trials, matrix_dir), key=lambda s: s.run_id)
    assert [s.to_dict() for s in planned] == [s.to_dict() for s in ran]

    copy = tmp_path / "results" / "tuning-tiny"
    shutil.copytree(matrix_dir, copy)
    unfinished = next(s for s in trials if s.optimizer.name == "adamw")
    (copy / unfinished.run_id / "metrics.json").unlink()
    moved = [replace(s, out_dir=str(copy / s.run_id)) for s in trials]
    left = reruns(config, moved, copy)
    assert {s.optimizer.name for s in left} == {"adamwprune"} and len(left) == 2


def test_the_dry_run_shows_the_values_each_trial_will_train_with(tmp_path):
    from lib.tuning import describe_values

    config = tmp_path / ".config"
    config.write_text(TINY.read_text() + f'CONFIG_RESULTS_DIR="{tmp_path / "results"}"\n')
    res = cli("lib.cli", "dry-run", config=config)
    assert res.returncode == 0, res.stderr
    assert "tuning: halton search, 2 studies x 2 trials" in res.stdout
    for spec in plan(cfg.load(config)):
        line = (
            f"{spec.optimizer.label:<20} study {spec.tuning.study} trial {spec.tuning.trial}: "
            f"{describe_values(spec.tuning.values)}"
        )
        assert line in res.stdout
    assert "over 2 fresh seeds" in res.stdout


def test_on_slurm_the_trials_are_one_array_and_the_reruns_the_next(tuned_matrix, tmp_path):
    """The Slurm path: the first make test-matrix submits the trials; once they have finished,
    the next one submits the reruns of the chosen settings (and nothing else)."""
    import shutil

    from lib.cli import _with_reruns
    from lib.slurm import format_submission

    _, matrix_dir, _ = tuned_matrix
    results = tmp_path / "results"
    config = tiny_config(
        tmp_path, f'CONFIG_MATRIX_EXECUTOR_SLURM=y\nCONFIG_RESULTS_DIR="{results}"\n'
    )
    trials = plan(config)
    fresh = format_submission(
        _with_reruns(config, trials, results / "tuning-tiny"), results, config.matrix.slurm,
        "tuning-tiny",
    )  # fmt: skip
    assert "one job array of 8 tasks" in fresh
    shutil.copytree(
        matrix_dir, results / "tuning-tiny", ignore=shutil.ignore_patterns("*_tuned", "*.json")
    )
    for spec in trials:  # the trials' own run.json and metrics.json, as the array left them
        for name in ("run.json", "metrics.json"):
            shutil.copy(matrix_dir / spec.run_id / name, results / "tuning-tiny" / spec.run_id)
    specs = _with_reruns(config, trials, results / "tuning-tiny")
    assert len(specs) == 12
    assert "one job array of 4 tasks" in format_submission(
        specs, results, config.matrix.slurm, "tuning-tiny"
    )
