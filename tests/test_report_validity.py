"""Which runs go into a number: only planned, finished, comparable, undamaged runs count.

Each test builds a small matrix by hand in which one run must be kept out of every average
(a stray directory, a duplicate, a short run, a run that never reached its target, a damaged
metrics.json) and checks that the numbers equal those of the matrix without it, and that the
report lists the run with its reason.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from report_helpers import (
    BASELINE,
    FakeRun,
    render,
    row_for,
    section,
    table_rows,
    write_matrix,
)

from lib.store import seal
from scripts.report import cli
from scripts.report.data import load_matrix


def three_seeds(target: float = 0.5) -> list[FakeRun]:
    """Candidate 74.0/74.5/75.0 and baseline 73.0/73.2/73.4, constant per run."""
    runs = []
    for seed, (c, b) in enumerate(zip([74.0, 74.5, 75.0], [73.0, 73.2, 73.4], strict=True)):
        runs.append(FakeRun("adamwprune", "state", target, seed, [c] * 4))
        runs.append(FakeRun("adamwspam", "magnitude", target, seed, [b] * 4))
    return runs


CAND_RUN = "resnet50_adamwprune-adamw_state-hybrid_s50_seed0"


def rewrite_metrics(run_dir: Path, change) -> None:
    path = run_dir / "metrics.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # NaN is written as the JSON extension `NaN`


# --------------------------------------------------------------------------- the plan


def test_a_directory_the_plan_does_not_list_is_not_averaged(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, "stray", three_seeds())
    clean = table_rows(render(matrix), "### Accuracy Comparison")
    # A hand-copied seed-0 run with another accuracy: it must not become a 4th replicate.
    copy = matrix / "copy-of-seed0"
    shutil.copytree(matrix / CAND_RUN, copy)
    rewrite_metrics(copy, lambda d: [e.update(test_top1=90.0) for e in d["epochs"]])

    text = render(matrix)
    assert table_rows(text, "### Accuracy Comparison") == clean
    assert "3 per cell" in text and "(of 6 planned)" in text
    assert row_for(table_rows(text, "## Excluded runs"), "`copy-of-seed0`")[1:] == [
        "not in the plan",
        "a directory with a metrics.json that matrix.json does not list",
    ]
    assert "90.00" not in text


def test_two_planned_runs_of_one_cell_are_both_excluded_never_chosen_by_position(
    tmp_path: Path,
) -> None:
    matrix = write_matrix(tmp_path, "dup", three_seeds())
    plan = json.loads((matrix / "matrix.json").read_text())
    first = next(e for e in plan["runs"] if e["run_id"] == CAND_RUN)
    # The same (method, sparsity, seed) under another directory, and the same entry twice.
    twin = dict(first, run_id="twin-of-seed0")
    shutil.copytree(matrix / CAND_RUN, matrix / "twin-of-seed0")
    rewrite_metrics(
        matrix / "twin-of-seed0", lambda d: [e.update(test_top1=10.0) for e in d["epochs"]]
    )
    plan["runs"] += [twin, dict(first)]
    (matrix / "matrix.json").write_text(json.dumps(seal(plan)))  # as a runner wrote it

    text = render(matrix)
    # Neither claimant of the seed-0 cell counts (the plan lists it twice): two seeds remain.
    row = row_for(table_rows(text, "### Accuracy Comparison"), "50%")
    assert "(2 of 3 seeds)" in row[1], row
    assert "(of 6 planned)" in text
    rows = table_rows(text, "## Excluded runs")
    twin_row = row_for(rows, "`twin-of-seed0`")
    assert twin_row[1] == "duplicate"
    assert f"`{CAND_RUN}`" in twin_row[2] and "seed 0" in twin_row[2]
    assert "neither counts" in twin_row[2]
    ours = [r for r in rows if r[0] == f"`{CAND_RUN}`"]
    assert all(r[1] == "duplicate" for r in ours) and len(ours) == 2
    assert any("`twin-of-seed0`" in r[2] for r in ours)  # named, not silently dropped
    assert "10.00" not in text


# --------------------------------------------------------------------------- comparable runs


def test_target_not_reached_is_excluded_from_both_tables(tmp_path: Path) -> None:
    # The candidate never reaches 90% but ends with a high accuracy of a denser network.
    runs = [
        FakeRun("adamwprune", "state", 0.9, 0, [70.0, 80.0, 81.0], sparsity=[0.3, 0.6, 0.85]),
        FakeRun("adamwspam", "magnitude", 0.9, 0, [70.0, 72.0, 73.0], sparsity=[0.3, 0.9, 0.9]),
    ]
    text = render(write_matrix(tmp_path, "nottarget", runs))
    for heading in ("### Accuracy Comparison", "### Final Accuracy"):
        row = row_for(table_rows(text, heading), "90%")
        assert row[1] == "*target not reached*", heading
        assert row[2] in ("73.00%", "72.00%"), heading  # a lone number: nothing bold
        assert row[3] == "—", heading  # no improvement against a run that does not count
    assert "81.00%" not in section(text, "## Results Summary").split("### Memory")[0]
    rows = table_rows(text, "## Excluded runs")
    reason = row_for(rows, "`resnet50_adamwprune-adamw_state-hybrid_s90_seed0`")
    assert reason[1] == "target not reached"
    assert "85.0%" in reason[2] and "90%" in reason[2]


def test_a_completed_run_with_fewer_epochs_than_planned_is_excluded(tmp_path: Path) -> None:
    runs = three_seeds()
    runs[0] = FakeRun("adamwprune", "state", 0.5, 0, [99.0] * 2, planned_epochs=4)
    text = render(write_matrix(tmp_path, "short", runs))
    rows = table_rows(text, "### Accuracy Comparison")
    # Mean of the two other seeds only (74.5, 75.0), and the cell says a seed is missing.
    assert row_for(rows, "50%")[1] == "74.75 ± 0.35% (2 of 3 seeds)"  # n.s.: not bold
    assert row_for(table_rows(text, "### Final Accuracy"), "50%")[1].startswith("74.75")
    assert "99.00" not in section(text, "## Results Summary").split("### Stability")[0]
    short = row_for(table_rows(text, "## Excluded runs"), f"`{CAND_RUN}`")
    assert short[1:] == ["short run", "completed after 2 of 4 planned epochs"]


# --------------------------------------------------------------------------- damaged files


def damaged_matrix(tmp_path: Path) -> Path:
    runs = three_seeds() + three_seeds(0.7)
    matrix = write_matrix(tmp_path, "damaged", runs)
    run = "resnet50_adamwprune-adamw_state-hybrid_s{}_seed{}"

    def nan_at(index: int, field: str):
        return lambda d: d["epochs"][index].update({field: float("nan")})

    rewrite_metrics(matrix / run.format(50, 0), nan_at(0, "test_top1"))  # epoch 1
    rewrite_metrics(matrix / run.format(50, 1), nan_at(2, "test_top1"))  # the middle
    rewrite_metrics(matrix / run.format(70, 0), nan_at(3, "sparsity"))
    rewrite_metrics(matrix / run.format(70, 1), lambda d: d["epochs"][3].pop("test_top5"))
    return matrix


def test_damaged_runs_are_listed_with_the_field_and_excluded(tmp_path: Path) -> None:
    matrix = damaged_matrix(tmp_path)
    text = render(matrix)
    rows = table_rows(text, "## Unfinished and failed runs")
    reasons = {r[0]: r[3] for r in rows if r[1] == "**unreadable**"}
    run = "`resnet50_adamwprune-adamw_state-hybrid_s{}_seed{}`"
    assert "epoch 1" in reasons[run.format(50, 0)] and "test_top1" in reasons[run.format(50, 0)]
    assert "is NaN" in reasons[run.format(50, 0)]
    assert "epoch 3" in reasons[run.format(50, 1)] and "test_top1" in reasons[run.format(50, 1)]
    assert "epoch 4" in reasons[run.format(70, 0)] and "sparsity" in reasons[run.format(70, 0)]
    missing = reasons[run.format(70, 1)]
    assert "epoch 4" in missing and "'test_top5' is missing" in missing
    assert "KeyError" not in text
    accuracy = table_rows(text, "### Accuracy Comparison")
    # Only seed 2 is left of the candidate at each sparsity: one seed, its own value.
    assert row_for(accuracy, "50%")[1] == "75.00% (1 of 3 seeds)"
    for heading in ("## Executive Summary", "## Results Summary"):
        assert "nan" not in section(text, heading).lower(), heading


def test_a_damaged_matrix_still_renders_plots_and_exits_0(tmp_path: Path, capsys) -> None:
    matrix = damaged_matrix(tmp_path)
    assert cli.main(["--results-dir", str(tmp_path), "--matrix", "damaged"]) == 0
    assert capsys.readouterr().err == ""
    assert (matrix / "report.md").is_file()
    assert (matrix / "plots" / "accuracy_vs_sparsity.png").stat().st_size > 10_000


def test_runs_that_count_are_the_planned_unique_ones(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, "plain", three_seeds(), baseline=BASELINE)
    shutil.copytree(matrix / CAND_RUN, matrix / "stray")
    results = load_matrix(matrix)
    assert len(results.runs) == 6
    assert results.stray == ["stray"]


# --------------------------------------------------------------------------- statistics


def constant_cells(cand: list[float], base: list[float], target: float = 0.5) -> list[FakeRun]:
    runs = [FakeRun("adamwprune", "state", target, s, [v] * 3) for s, v in enumerate(cand)]
    runs += [FakeRun("adamwspam", "magnitude", target, s, [v] * 3) for s, v in enumerate(base)]
    return runs


def test_zero_spread_is_no_noise_estimate_not_significance(tmp_path: Path) -> None:
    text = render(write_matrix(tmp_path, "zero", constant_cells([73.01] * 3, [73.0] * 3)))
    summary = section(text, "## Executive Summary")
    assert "The lead is larger than the seed-to-seed noise" not in summary
    assert "significant" not in summary.replace("significantly", "")
    assert "zero spread" in summary and "no noise estimate" in summary
    row = row_for(table_rows(text, "### Accuracy Comparison"), "50%")
    assert row[3] == "+0.01%"  # no "(n.s.)", no significance either way, nothing bold
    interval = row_for(table_rows(text, "#### 95% confidence intervals"), "50%")[3]
    assert interval == "no noise estimate (zero spread in both cells)"


def test_a_tie_as_printed_has_no_signed_improvement(tmp_path: Path) -> None:
    runs = constant_cells([72.0, 73.0, 71.0], [72.5, 71.5, 72.0])
    text = render(write_matrix(tmp_path, "tie", runs))
    row = row_for(table_rows(text, "### Accuracy Comparison"), "50%")
    assert row[1:3] == ["72.00 ± 1.00%", "72.00 ± 0.50%"]  # nothing bold on a tie
    assert row[3] == "0.00% (n.s.)"


def test_improvement_is_the_difference_of_the_printed_means(tmp_path: Path) -> None:
    # 74.546 prints 74.55 and 73.222 prints 73.22: the reader computes +1.33, not +1.32.
    text = render(write_matrix(tmp_path, "rounding", constant_cells([74.546], [73.222])))
    row = row_for(table_rows(text, "### Accuracy Comparison"), "50%")
    assert row[:4] == ["50%", "74.55%", "73.22%", "+1.33%"]  # one seed: nothing bold
    assert "difference of the printed means" in text
    assert "1.33 points ahead" in section(text, "## Executive Summary")


def test_p_value_df_and_holm_beside_each_verdict(tmp_path: Path) -> None:
    import scipy.stats as scipy_stats

    cand50, base50 = [74.0, 74.5, 75.0], [73.0, 73.2, 73.4]
    cand70, base70 = [72.0, 73.0, 71.0], [72.5, 71.5, 72.0]
    runs = constant_cells(cand50, base50) + constant_cells(cand70, base70, 0.7)
    text = render(write_matrix(tmp_path, "holm", runs))
    p50 = scipy_stats.ttest_ind(cand50, base50, equal_var=False)
    p70 = scipy_stats.ttest_ind(cand70, base70, equal_var=False)
    holm50 = min(1.0, 2 * min(p50.pvalue, p70.pvalue))
    holm70 = max(holm50, min(1.0, p70.pvalue))
    rows = table_rows(text, "#### 95% confidence intervals")
    cell50 = row_for(rows, "50%")[3]
    assert f"p = {p50.pvalue:.3f}" in cell50 and f"df = {p50.df:.1f}" in cell50
    assert f"Holm p = {holm50:.3f}" in cell50
    assert cell50.split(" (")[0].endswith(", significant" if holm50 < 0.05 else "not significant")
    cell70 = row_for(rows, "70%")[3]
    assert f"p = {p70.pvalue:.3f}" in cell70 and f"Holm p = {holm70:.3f}" in cell70
    assert "not significant" in cell70
    assert "2 comparisons" in text and "Holm" in text


# --------------------------------------------------------------------------- all at once


def test_stray_short_nan_and_target_not_reached_together(tmp_path: Path, capsys) -> None:
    """The issue's acceptance: a matrix with a stray run, a short run, a NaN run and a
    target-not-reached run renders (CLI, exit 0), excludes each from every number and lists
    why; metrics.csv says which runs were excluded."""
    runs = three_seeds()
    runs[0] = FakeRun("adamwprune", "state", 0.5, 0, [99.0] * 2, planned_epochs=4)  # short
    runs[1] = FakeRun(  # never reaches 50%
        "adamwspam", "magnitude", 0.5, 0, [95.0] * 4, sparsity=[0.1, 0.2, 0.3, 0.4]
    )
    matrix = write_matrix(tmp_path, "mixed", runs)
    nan_run = "resnet50_adamwprune-adamw_state-hybrid_s50_seed1"
    rewrite_metrics(matrix / nan_run, lambda d: d["epochs"][1].update(test_top1=float("nan")))
    shutil.copytree(matrix / nan_run, matrix / "stray-copy")
    rewrite_metrics(
        matrix / "stray-copy", lambda d: [e.update(test_top1=88.0) for e in d["epochs"]]
    )

    assert cli.main(["--results-dir", str(tmp_path), "--matrix", "mixed"]) == 0
    assert capsys.readouterr().err == ""
    text = (matrix / "report.md").read_text()
    numbers = text.split("#### Stability per run")[0]
    for leaked in ("99.00", "95.00", "88.00", "nan"):
        assert leaked not in numbers.lower(), leaked
    rows = table_rows(text, "### Accuracy Comparison")
    assert row_for(rows, "50%")[1:3] == [
        "75.00% (1 of 3 seeds)",
        "73.30 ± 0.14% (2 of 3 seeds)",
    ]
    excluded = {r[0]: r[1] for r in table_rows(text, "## Excluded runs")}
    assert excluded == {
        f"`{CAND_RUN}`": "short run",
        "`resnet50_adamwspam_magnitude_s50_seed0`": "target not reached",
        "`stray-copy`": "not in the plan",
    }
    unfinished = {r[0]: r[1] for r in table_rows(text, "## Unfinished and failed runs")}
    assert unfinished == {f"`{nan_run}`": "**unreadable**"}
    with open(matrix / "metrics.csv", newline="") as f:
        flags = {(r["run_id"], r["excluded"]) for r in csv.DictReader(f)}
    assert (CAND_RUN, "short run") in flags
    assert ("resnet50_adamwspam_magnitude_s50_seed2", "") in flags
    assert (nan_run, "unreadable") in flags  # every planned run has its row, and says why
    assert not any(run_id == "stray-copy" for run_id, _ in flags)


def test_a_metrics_json_with_a_bad_identity_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, "identity", three_seeds())
    rewrite_metrics(matrix / CAND_RUN, lambda d: d["identity"].update(seed=None))
    other = "resnet50_adamwspam_magnitude_s50_seed1"
    rewrite_metrics(matrix / other, lambda d: d["identity"].update(target_sparsity="half"))
    text = render(matrix)
    rows = {r[0]: r for r in table_rows(text, "## Unfinished and failed runs")}
    assert rows[f"`{CAND_RUN}`"][1] == "**unreadable**" and "seed" in rows[f"`{CAND_RUN}`"][3]
    assert "target_sparsity" in rows[f"`{other}`"][3]


def test_a_tie_as_printed_is_not_ahead_in_the_summary(tmp_path: Path) -> None:
    # 73.004 and 72.996 both print 73.00: a tie, not "ahead" by an unprinted 0.008 (issue #25).
    runs = constant_cells([73.004, 73.005, 73.003], [72.996, 72.997, 72.995])
    summary = section(render(write_matrix(tmp_path, "tied", runs)), "## Executive Summary")
    assert "is ahead at 0 of 1 sparsity level (tied at 1)" in summary
    assert "significantly ahead at 0 and significantly behind at 0 of the 1 level with" in summary
    assert (
        "- At 50% sparsity, AdamWPrune (AdamW base) state/hybrid and AdamWSPAM + magnitude tie at "
        "73.00% best top-1."
    ) in summary  # a tie sets no name in bold


def test_csv_cells_are_empty_where_the_report_prints_n_a(tmp_path: Path) -> None:
    """A NaN the report shows as n/a (a loss, a learning rate) is an empty cell, never 'nan'."""
    import csv

    from scripts.report.output import write_report

    matrix = write_matrix(tmp_path, "nans", three_seeds())
    rewrite_metrics(
        matrix / CAND_RUN,
        lambda d: [e.update(train_loss=float("nan"), lr=float("inf")) for e in d["epochs"]],
    )
    write_report(matrix)
    for name in ("metrics.csv", "metrics_epochs.csv"):
        with open(matrix / name, newline="") as f:
            cells = {cell.lower() for row in csv.reader(f) for cell in row}
        assert not cells & {"nan", "inf", "-inf"}, name
    with open(matrix / "metrics_epochs.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["run_id"] == CAND_RUN]
    assert rows and all(r["train_loss"] == "" and r["lr"] == "" for r in rows)
    assert all(r["test_top1"] != "" for r in rows)


def test_evaluation_on_part_of_the_test_set_is_said(tmp_path: Path) -> None:
    """TRAIN_MAX_STEPS_PER_EPOCH caps evaluation too: the report says on how many images."""
    matrix = write_matrix(tmp_path, "capped", three_seeds())
    assert "Test images evaluated" not in render(matrix)  # nothing recorded: nothing said

    def capped(d):
        d["model_info"]["test_images"] = 10000
        for e in d["epochs"]:
            e["test_images"] = 512

    def whole(d):
        d["model_info"]["test_images"] = 10000
        for e in d["epochs"]:
            e["test_images"] = 10000

    for run_dir in matrix.iterdir():
        if (run_dir / "metrics.json").exists():
            rewrite_metrics(run_dir, whole)
    assert "Test images evaluated" not in render(matrix)
    rewrite_metrics(matrix / CAND_RUN, capped)
    text = section(render(matrix), "## Test Configuration")
    assert (
        "- **Test images evaluated**: 512 of 10,000 per epoch in 1 run: "
        "`CONFIG_TRAIN_MAX_STEPS_PER_EPOCH` caps evaluation too"
    ) in text
