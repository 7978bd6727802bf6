"""make report: tables, statistics, plots and status handling from hand-made result files.

Every number asserted here is computed by hand from the fixture's epoch records, so a wrong
definition (best over all epochs, ddof mix-up, wrong sign of an improvement) fails a test.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import time
from pathlib import Path

import pytest
from report_helpers import (
    BASE_70,
    BASELINE,
    CAND_50,
    CAND_70,
    CANDIDATE,
    PARAMETERS,
    PRUNABLE,
    FakeRun,
    pop_std,
    ramp_sparsity,
    row_dict,
    row_for,
    seed_like_runs,
    table_header,
    table_rows,
    write_matrix,
)

from lib.metrics import STATUS_FAILED
from lib.store import seal
from scripts.report import cli
from scripts.report.data import load_matrix
from scripts.report.output import write_report


@pytest.fixture
def seed_matrix(tmp_path: Path) -> Path:
    return write_matrix(tmp_path, "resnet50-seedlike", seed_like_runs())


def test_accuracy_table_matches_the_seed_format(seed_matrix: Path) -> None:
    path = write_report(seed_matrix)
    text = path.read_text()
    rows = table_rows(text, "### Accuracy Comparison")
    # Column order: candidate, baseline, Improvement; best counts only epochs at the target.
    # One seed: no lead can be judged, so nothing is bold (issue #25).
    # What the sparsity buys, from the runs' parameter and MAC counts (issue 27, item 2)
    seventy = f"{PARAMETERS / (PARAMETERS - round(0.7 * PRUNABLE)):.2f}x"
    assert seventy == "3.32x"  # the unprunable parameters (biases, BN) keep it below 1 / 0.3
    costs = {"50%": ["2.00x", "2.00x"], "70%": [seventy, f"{1 / 0.3:.2f}x"]}
    for heading in ("### Accuracy Comparison", "### Final Accuracy"):
        assert table_header(text, heading)[-3:] == [
            "Improvement", "Compression", "Theoretical speedup",
        ]  # fmt: skip
    assert row_for(rows, "50%") == ["50%", "74.54%", "73.22%", "+1.32%", *costs["50%"]]
    assert row_for(rows, "70%") == ["70%", "72.30%", "72.98%", "-0.68%", *costs["70%"]]
    finals = table_rows(text, "### Final Accuracy")
    assert row_for(finals, "50%") == ["50%", "74.08%", "72.97%", "+1.11%", *costs["50%"]]
    assert row_for(finals, "70%") == ["70%", "72.00%", "72.60%", "-0.60%", *costs["70%"]]
    assert "**" not in "".join("".join(r) for r in rows + finals)
    # The denser-than-target epoch never leaks into a number; only the per-run stability table
    # shows it, as "best of any epoch" with the sparsity it was measured at.
    assert "99.00%" not in text.split("#### Stability per run")[0]
    assert text.count("99.00%") == text.count("99.00% at ")
    assert "no noise estimate exists" in text


def test_stability_table_numbers(seed_matrix: Path) -> None:
    text = write_report(seed_matrix).read_text()
    heading = "#### Stability per run"
    run_id = "`resnet50_adamwprune-adamw_state-hybrid_s50_seed0`"
    std = pop_std(CAND_50[-10:])
    assert row_dict(text, heading, run_id) == {
        "Run": run_id,
        "Status": "completed",
        "Epochs": "12/12",
        "GPUs": "1",
        "Best top-1 (at target)": "74.54%",
        "Best epoch": "7",
        "Sparsity at best": "50.0%",
        "Target reached (epoch)": "3",
        "Best of any epoch": "99.00% at 15.0% (epoch 2)",  # denser than the target
        "Final top-1": "74.08%",
        "Final sparsity": "50.0%",
        "Std Dev (last 10 epochs)": f"{std:.2f}%",
        "Peak-to-final": "+0.46%",
    }
    base = row_dict(text, heading, "`resnet50_adamwspam_magnitude_s70_seed0`")
    assert [base[k] for k in ("Best top-1 (at target)", "Best epoch", "Final top-1")] == [
        "72.98%",
        "5",
        "72.60%",
    ]
    assert base["Std Dev (last 10 epochs)"] == f"{pop_std(BASE_70[-10:]):.2f}%"
    assert base["Peak-to-final"] == "+0.38%"
    # The seed's per-optimizer table: per method and sparsity (one seed here).
    cell = row_dict(text, "### Stability Analysis", "AdamWPrune (AdamW base) state/hybrid")
    assert cell["Std Dev (last 10 epochs)"] == f"{std:.2f}%"
    assert cell["Peak-to-final"] == "0.46%"


def test_memory_table_keeps_cuda_and_cpu_apart(tmp_path: Path) -> None:
    runs = seed_like_runs()[:2]
    runs.append(
        FakeRun(
            "adamwprune",
            "state",
            0.7,
            0,
            CAND_70,
            memory_kind="cpu_rss",
            peak_mb=3210.0,
            pruning_state_bytes=PRUNABLE,  # a bool mask: 1 B per prunable parameter
        )
    )
    matrix = write_matrix(tmp_path, "mem", runs)
    text = write_report(matrix).read_text()
    summary = table_rows(text, "### Memory")
    assert row_for(summary, "AdamWPrune (AdamW base) state/hybrid") == [
        "AdamWPrune (AdamW base) state/hybrid",
        "2",
        "12,602.5",
        "13,000.0",
        "3,210.0",
        "8.00",  # optimizer state per parameter
        "0.00 – 1.00",  # pruning state per prunable parameter (a bool mask at 70%)
        "8.00 – 9.00",  # (8 B/param optimizer + 1 B/prunable mask) / all params, rounded
    ]
    rows = table_rows(text, "#### Memory per run")
    cuda = row_for(rows, "`resnet50_adamwprune-adamw_state-hybrid_s50_seed0`")
    assert cuda[1:] == [
        "NVIDIA H100 80GB HBM3",
        "12,602.5",
        "13,000.0",
        "—",
        "8.00",
        "0.00",
        "0.00",
    ]
    cpu = row_for(rows, "`resnet50_adamwprune-adamw_state-hybrid_s70_seed0`")
    assert cpu[1:] == ["cpu", "—", "—", "3,210.0", "8.00", "1.00", "1.00"]


# --------------------------------------------------------------------------- several seeds


def multi_seed_runs() -> list[FakeRun]:
    """Three seeds per cell at 50%; constant accuracy per run so best == final == the value."""
    cand = [74.0, 74.5, 75.0]
    base = [73.0, 73.2, 73.4]
    runs = []
    for seed, (c, b) in enumerate(zip(cand, base, strict=True)):
        runs.append(FakeRun("adamwprune", "state", 0.5, seed, [c] * 4))
        runs.append(FakeRun("adamwspam", "magnitude", 0.5, seed, [b] * 4))
    # At 70% the two methods overlap: the difference is noise.
    for seed, (c, b) in enumerate(zip([72.0, 73.0, 71.0], [72.5, 71.5, 72.0], strict=True)):
        runs.append(FakeRun("adamwprune", "state", 0.7, seed, [c] * 4))
        runs.append(FakeRun("adamwspam", "magnitude", 0.7, seed, [b] * 4))
    return runs


def test_several_seeds_mean_std_confidence_and_significance(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, "seeds", multi_seed_runs())
    text = write_report(matrix).read_text()
    rows = table_rows(text, "### Accuracy Comparison")
    # mean 74.5, sample std 0.5 ; mean 73.2, sample std 0.2 ; t(0.975, 2) = 4.3027
    # Welch p = 0.032, but Holm over the 2 sparsities gives 0.065: not significant, so
    # neither the leading cell nor the improvement is bold (issue #25).
    assert row_for(rows, "50%")[:4] == ["50%", "74.50 ± 0.50%", "73.20 ± 0.20%", "+1.30% (n.s.)"]
    # 72.0 ± 1.0 vs 72.0 ± 0.5: a tie in means (unsigned), not significant
    assert row_for(rows, "70%")[3] == "0.00% (n.s.)"

    intervals = table_rows(text, "#### 95% confidence intervals")
    half_c = 4.302653 * 0.5 / math.sqrt(3)
    half_b = 4.302653 * 0.2 / math.sqrt(3)
    row50 = row_for(intervals, "50%")
    assert row50[1] == f"[{74.5 - half_c:.2f}, {74.5 + half_c:.2f}] (n=3)"
    assert row50[2] == f"[{73.2 - half_b:.2f}, {73.2 + half_b:.2f}] (n=3)"
    # Welch: se^2 = 0.25/3 + 0.04/3; df = se^4 / ((0.25/3)^2/2 + (0.04/3)^2/2) = 2.6240...
    se = math.sqrt(0.25 / 3 + 0.04 / 3)
    df = se**4 / ((0.25 / 3) ** 2 / 2 + (0.04 / 3) ** 2 / 2)
    assert df == pytest.approx(2.6240, abs=1e-4)
    from scripts.report.stats import t_critical

    half = t_critical(df) * se
    assert 3.2 < t_critical(df) < 4.31  # between t(3) and t(2)
    # The interval excludes 0 (unadjusted p = 0.032) but with two sparsity levels compared
    # the Holm-adjusted p-value is 2 * 0.032 = 0.065: not significant.
    assert row50[3] == (
        f"[{1.3 - half:+.2f}, {1.3 + half:+.2f}], not significant "
        "(p = 0.032, df = 2.6, Holm p = 0.065)"
    )
    assert row_for(intervals, "70%")[3] == (
        "[-2.08, +2.08], not significant (p = 1.000, df = 2.9, Holm p = 1.000)"
    )

    summary = text.split("## Executive Summary")[1].split("## Test Configuration")[0]
    assert "The lead is not significant (Welch p = 0.032" in summary
    assert "the seeds neither show a difference nor that there is none" in summary
    assert "seed-to-seed" not in summary and "within" not in summary  # no claim of equivalence
    assert "no noise estimate" not in text.split("## Test Configuration")[0]
    assert "- At 50% sparsity, AdamWPrune" in summary  # a lead that is not significant: not bold
    findings = text.split("## Key Findings")[1]
    assert "not significant (p = 0.032, df = 2.6, Holm p = 0.065)" in findings
    assert "within" not in findings and "noise." not in findings


def test_a_lead_beyond_the_noise_is_called_so(tmp_path: Path) -> None:
    runs = [r for r in multi_seed_runs() if r.target == 0.5]  # one comparison: no Holm
    text = write_report(write_matrix(tmp_path, "one-level", runs)).read_text()
    row = row_for(table_rows(text, "### Accuracy Comparison"), "**50%**")
    assert row[:4] == ["**50%**", "**74.50 ± 0.50%**", "73.20 ± 0.20%", "**+1.30%**"]
    summary = text.split("## Executive Summary")[1].split("## Test Configuration")[0]
    assert "The lead is **significant**" in summary and "**AdamWPrune" in summary
    assert "(Welch p = 0.032, df = 2.6; the 95% CI" in summary and "Holm" not in summary


# --------------------------------------------------------------------------- statuses


def test_failed_running_pending_and_corrupt_runs_are_listed_not_dropped(tmp_path: Path) -> None:
    runs = seed_like_runs()[:2]
    runs += [
        FakeRun(
            "adamwprune", "state", 0.7, 0, [50.0, 51.0, 52.0],
            status=STATUS_FAILED, error="loss is nan at epoch 3 step 17",
            log_tail="epoch 3\nFloatingPointError: loss is nan at epoch 3 step 17",
            planned_epochs=12,
        ),
        # The trainer still says `running`; the runner knows the process died.
        FakeRun(
            "adamwspam", "magnitude", 0.7, 0, [50.0], status="running", plan_status="failed",
            error="process killed by signal 9", planned_epochs=12,
        ),
        FakeRun("adamwprune", "state", 0.9, 0, [40.0, 45.0], status="running", planned_epochs=12),
        FakeRun("adamwspam", "magnitude", 0.9, 0, [1.0], status="pending", write_metrics=False),
        FakeRun("sgd", "magnitude", 0.5, 0, [10.0]),
    ]  # fmt: skip
    matrix = write_matrix(tmp_path, "partial", runs)
    # A hand-broken metrics.json of a planned run: listed as unreadable, never a crash.
    (matrix / "resnet50_sgd_magnitude_s50_seed0" / "metrics.json").write_text("{ not json")

    text = write_report(matrix).read_text()
    rows = table_rows(text, "## Unfinished and failed runs")
    failed = row_for(rows, "`resnet50_adamwprune-adamw_state-hybrid_s70_seed0`")
    assert failed == [failed[0], "**failed**", "3/12", "loss is nan at epoch 3 step 17"]
    killed = row_for(rows, "`resnet50_adamwspam_magnitude_s70_seed0`")
    assert killed[1:] == ["**failed**", "1/12", "process killed by signal 9"]
    assert row_for(rows, "`resnet50_adamwprune-adamw_state-hybrid_s90_seed0`")[1:3] == [
        "**running**",
        "2/12",
    ]
    assert row_for(rows, "`resnet50_adamwspam_magnitude_s90_seed0`")[1] == "**pending**"
    unreadable = row_for(rows, "`resnet50_sgd_magnitude_s50_seed0`")
    assert unreadable[1] == "**unreadable**" and "not valid JSON" in unreadable[3]
    assert "FloatingPointError: loss is nan" in text  # the log tail is shown

    accuracy = table_rows(text, "### Accuracy Comparison")
    # Unfinished cells say why they have no number; they never show partial accuracies.
    assert row_for(accuracy, "70%")[1:3] == ["*failed*", "*failed*"]
    assert row_for(accuracy, "90%")[1:3] == ["*running*", "*pending*"]
    assert "5 of 7 planned runs have no final result" in text


def test_one_run_matrix_renders(tmp_path: Path) -> None:
    matrix = write_matrix(
        tmp_path,
        "single",
        [FakeRun("adamwprune", "state", 0.5, 0, CAND_50, ramp_sparsity(0.5, 12))],
        baseline="",
    )
    text = write_report(matrix).read_text()
    assert "only **AdamWPrune (AdamW base) state/hybrid** has results: 74.54%" in text
    rows = table_rows(text, "### Accuracy Comparison")
    assert rows == [["50%", "74.54%", "2.00x", "2.00x"]]  # no baseline: no Improvement column


def test_pruned_run_that_never_reaches_its_target_has_no_best(tmp_path: Path) -> None:
    run = FakeRun("adamwprune", "state", 0.9, 0, [50.0, 60.0, 70.0], sparsity=[0.3, 0.6, 0.85])
    matrix = write_matrix(tmp_path, "short", [run], baseline="")
    text = write_report(matrix).read_text()
    assert row_for(table_rows(text, "### Accuracy Comparison"), "90%") == [
        "90%",
        "*target not reached*",
    ]
    stability = row_dict(
        text, "#### Stability per run", "`resnet50_adamwprune-adamw_state-hybrid_s90_seed0`"
    )
    assert stability["Status"] == "**target not reached**"
    assert [stability[k] for k in ("Best top-1 (at target)", "Best epoch")] == ["not reached", "—"]
    assert stability["Target reached (epoch)"] == "not reached"
    assert stability["Best of any epoch"] == "70.00% at 85.0% (epoch 3)"


# --------------------------------------------------------------------------- outputs


def test_plots_are_written_embedded_and_non_empty(seed_matrix: Path) -> None:
    text = write_report(seed_matrix).read_text()
    pngs = sorted((seed_matrix / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert names == {
        "accuracy_evolution_s50.png",
        "accuracy_evolution_s70.png",
        "accuracy_evolution_method_adamwprune-adamw_state-hybrid.png",
        "accuracy_evolution_method_adamwspam_magnitude.png",
        "accuracy_vs_sparsity.png",
        "memory.png",
        "memory_vs_accuracy.png",
        "sparsity.png",
        "accuracy_vs_compression.png",
        "accuracy_vs_speedup.png",
    }
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png.name
        assert f"](plots/{png.name})" in text  # relative link, rendered next to report.md


def test_plot_selection_follows_matrix_json(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, "fewplots", seed_like_runs(), plots=["memory"])
    stale = matrix / "plots" / "accuracy_evolution_s30.png"  # from an earlier render
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    write_report(matrix)
    assert [p.name for p in (matrix / "plots").glob("*.png")] == ["memory.png"]


def test_metrics_csv_has_one_row_per_run_with_identity_and_summary(seed_matrix: Path) -> None:
    write_report(seed_matrix)
    with open(seed_matrix / "metrics.csv", newline="") as f:
        rows = {r["run_id"]: r for r in csv.DictReader(f)}
    assert len(rows) == 4
    cand = rows["resnet50_adamwprune-adamw_state-hybrid_s50_seed0"]
    document = json.loads(
        (
            seed_matrix / "resnet50_adamwprune-adamw_state-hybrid_s50_seed0" / "metrics.json"
        ).read_text()
    )
    for block in ("identity", "summary", "model_info", "state_memory"):
        for key, value in document[block].items():
            cell = cand[f"{block}.{key}"]  # every field of metrics.json's blocks has a column
            if value is None:
                assert cell == ""
            elif isinstance(value, bool):
                assert cell == str(value).lower()
            elif isinstance(value, (int, float)):
                assert float(cell) == pytest.approx(value)
            else:
                assert cell == str(value)
    assert cand["summary.best_top1"] == "74.54" and cand["method"].startswith("AdamWPrune")
    assert "nan" not in {c.lower() for c in cand.values()}


def test_metrics_epochs_csv_has_every_epoch_of_every_run(seed_matrix: Path) -> None:
    write_report(seed_matrix)
    with open(seed_matrix / "metrics_epochs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 12
    cand = [r for r in rows if r["run_id"] == "resnet50_adamwprune-adamw_state-hybrid_s50_seed0"]
    assert [float(r["test_top1"]) for r in cand] == CAND_50
    assert cand[0]["method"] == "AdamWPrune (AdamW base) state/hybrid"
    assert cand[0]["memory_kind"] == "cuda_allocated"


def test_report_summary_is_derived_not_copied(seed_matrix: Path) -> None:
    """A stale summary in metrics.json must not change the report: it re-derives it."""
    path = seed_matrix / "resnet50_adamwprune-adamw_state-hybrid_s50_seed0" / "metrics.json"
    data = json.loads(path.read_text())
    data["summary"]["best_top1"] = 99.99
    path.write_text(json.dumps(data))
    results = load_matrix(seed_matrix)
    run = next(r for r in results.runs if r.run_id == path.parent.name)
    assert run.summary["best_top1"] == 74.54


# --------------------------------------------------------------------------- CLI


def test_cli_writes_newest_matrix_and_prints_path(tmp_path: Path, capsys) -> None:
    old = write_matrix(tmp_path, "old", seed_like_runs()[:1])
    new = write_matrix(tmp_path, "new", seed_like_runs()[:2])
    past = time.time() - 100
    os.utime(old / "matrix.json", (past, past))
    assert cli.main(["--results-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(new / "report.md")
    assert (new / "report.md").is_file() and not (old / "report.md").exists()


def test_cli_missing_matrix_is_one_clear_error(tmp_path: Path, capsys) -> None:
    write_matrix(tmp_path, "present", seed_like_runs()[:1])
    assert cli.main(["--results-dir", str(tmp_path), "--matrix", "absent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--matrix 'absent'" in err and "present" in err

    assert cli.main(["--results-dir", str(tmp_path / "nothing")]) == 2
    assert "no matrix under" in capsys.readouterr().err


def test_cli_unwritable_matrix_is_one_clear_error(tmp_path: Path, capsys, monkeypatch) -> None:
    # chmod does not stop root, so the read-only file system is simulated where plots are
    # cleaned up and files written.
    write_matrix(tmp_path, "ro", seed_like_runs()[:1])

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "ro" / "report.md"))

    monkeypatch.setattr(cli, "write_report", read_only)
    assert cli.main(["--results-dir", str(tmp_path), "--matrix", "ro"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "ro/report.md: Read-only file system" in err and "must be writable" in err


def test_cli_empty_matrix_is_an_error(tmp_path: Path, capsys) -> None:
    matrix = tmp_path / "empty"
    matrix.mkdir()
    (matrix / "matrix.json").write_text(json.dumps(seal({"name": "empty", "runs": []})))
    assert cli.main(["--results-dir", str(tmp_path), "--matrix", "empty"]) == 2
    assert "is empty" in capsys.readouterr().err


def test_cli_unknown_baseline_names_the_option_and_accepted_values(seed_matrix, capsys) -> None:
    args = ["--results-dir", str(seed_matrix.parent), "--baseline", "sgd_dense"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--baseline 'sgd_dense'" in err and BASELINE in err and CANDIDATE in err


def test_cli_baseline_override_flips_the_improvement(seed_matrix: Path) -> None:
    args = ["--results-dir", str(seed_matrix.parent), "--baseline", CANDIDATE]
    args += ["--candidate", BASELINE]
    assert cli.main(args) == 0
    rows = table_rows((seed_matrix / "report.md").read_text(), "### Accuracy Comparison")
    assert row_for(rows, "50%")[:4] == ["50%", "73.22%", "74.54%", "-1.32%"]


# --------------------------------------------------------------------------- compare


def test_compare_two_matrices_side_by_side(tmp_path: Path, capsys) -> None:
    cand_a = [[74.0] * 3, [74.5] * 3, [75.0] * 3]
    cand_b = [[75.5] * 3, [76.0] * 3, [76.5] * 3]
    runs_a = [FakeRun("adamwprune", "state", 0.5, s, acc) for s, acc in enumerate(cand_a)]
    runs_b = [FakeRun("adamwprune", "state", 0.5, s, acc) for s, acc in enumerate(cand_b)]
    runs_b.append(FakeRun("adamwspam", "magnitude", 0.5, 0, [73.0] * 3))
    write_matrix(tmp_path, "ma", runs_a, config={"CONFIG_ADAMWPRUNE_AMSGRAD": "n"})
    write_matrix(tmp_path, "mb", runs_b, config={"CONFIG_ADAMWPRUNE_AMSGRAD": "y"})
    assert cli.main(["--results-dir", str(tmp_path), "--compare", "ma", "mb"]) == 0
    path = tmp_path / "compare-ma-vs-mb" / "report.md"
    assert capsys.readouterr().out.strip() == str(path)
    text = path.read_text()
    assert row_for(
        table_rows(text, "## Configuration differences"), "`CONFIG_ADAMWPRUNE_AMSGRAD`"
    ) == [
        "`CONFIG_ADAMWPRUNE_AMSGRAD`",
        "n",
        "y",
    ]
    rows = table_rows(text, "## Best top-1 accuracy")
    cand = row_for(rows, "AdamWPrune (AdamW base) state/hybrid")
    # Equal spread (sample std 0.5, n=3 each): Welch df = 4, t = 2.7764, se = sqrt(2 * 0.25/3)
    half = 2.776445 * math.sqrt(2 * 0.25 / 3)
    assert cand == [
        cand[0],
        "50%",
        "74.50 ± 0.50%",
        "76.00 ± 0.50%",
        "+1.50%",
        f"[{1.5 - half:+.2f}, {1.5 + half:+.2f}], significant (p = 0.021, df = 4.0)",
    ]
    spam = row_for(rows, "AdamWSPAM + magnitude")
    assert spam[2:] == ["—", "73.00%", "—", "—"]  # only in B: shown, not dropped
    assert (tmp_path / "compare-ma-vs-mb" / "plots" / "accuracy_vs_sparsity.png").stat().st_size


def test_compare_rejects_baseline_and_unknown_matrix(tmp_path: Path, capsys) -> None:
    write_matrix(tmp_path, "ma", seed_like_runs()[:1])
    assert cli.main(["--results-dir", str(tmp_path), "--compare", "ma", "zz"]) == 2
    assert "--compare 'zz'" in capsys.readouterr().err
    args = ["--results-dir", str(tmp_path), "--compare", "ma", "ma", "--baseline", BASELINE]
    assert cli.main(args) == 2
    assert "not accepted with --compare" in capsys.readouterr().err
    assert cli.main(["--results-dir", str(tmp_path), "--compare", "ma", "ma"]) == 2
    assert "the same matrix twice" in capsys.readouterr().err


def test_interrupted_run_and_lifetime_rss_are_labelled(tmp_path: Path) -> None:
    runs = seed_like_runs()[:1]
    # Interrupted: the trainer's file still says running, the runner set it back to pending.
    runs.append(
        FakeRun(
            "adamwspam", "magnitude", 0.5, 0, [50.0, 55.0], status="running",
            plan_status="pending", planned_epochs=12, memory_kind="cpu_rss_lifetime",
            peak_mb=2048.0,
        )
    )  # fmt: skip
    text = write_report(write_matrix(tmp_path, "interrupted", runs)).read_text()
    row = row_for(
        table_rows(text, "## Unfinished and failed runs"),
        "`resnet50_adamwspam_magnitude_s50_seed0`",
    )
    assert row[1:] == [
        "**pending**",
        "2/12",
        "interrupted after 2 epochs; `make continue` resumes it",
    ]
    memory = row_for(table_rows(text, "#### Memory per run"), row[0])
    assert memory[2:5] == ["—", "—", "2,048.0 †"]
    assert "† The process's lifetime peak RSS" in text


def test_dense_runs_fill_the_zero_row_and_are_never_the_default_candidate(tmp_path: Path) -> None:
    runs = [
        FakeRun("adamwprune", "none", 0.0, 0, [76.0] * 3),  # the candidate's dense control
        FakeRun("adamwspam", "none", 0.0, 0, [75.5] * 3),
        FakeRun("adamwprune", "state", 0.5, 0, [74.0] * 3),
        FakeRun("adamwspam", "magnitude", 0.5, 0, [73.0] * 3),
    ]
    text = write_report(write_matrix(tmp_path, "dense", runs)).read_text()
    rows = table_rows(text, "### Accuracy Comparison")
    assert rows == [  # one seed: nothing is bold
        ["0% (dense)", "76.00%", "75.50%", "+0.50%", "1.00x", "1.00x"],
        ["50%", "74.00%", "73.00%", "+1.00%", "2.00x", "2.00x"],
    ]
    assert "— candidate" in text.split("`adamwprune-adamw_state-hybrid`")[1].splitlines()[0]


def test_accuracy_tables_show_the_range_of_costs_where_methods_differ(tmp_path: Path) -> None:
    """Methods at one target that prune to different densities (a layer-wise baseline, one
    that stops short): the row gives their range; runs written before the counts: no columns."""
    from report_helpers import MACS

    runs = [
        FakeRun("adamwprune", "state", 0.5, 0, [70.0, 71.0], sparsity=[0.5, 0.5]),
        FakeRun("adamwspam", "magnitude", 0.5, 0, [69.0, 70.0], sparsity=[0.5, 0.6]),
    ]
    text = write_report(write_matrix(tmp_path, "costs", runs)).read_text()
    compression = [PARAMETERS / (PARAMETERS - round(s * PRUNABLE)) for s in (0.5, 0.6)]
    speedup = [MACS / round(MACS * (1 - s)) for s in (0.5, 0.6)]
    row = row_dict(text, "### Accuracy Comparison", "50%")
    assert row["Compression"] == f"{compression[0]:.2f}–{compression[1]:.2f}x"
    assert row["Theoretical speedup"] == f"{speedup[0]:.2f}–{speedup[1]:.2f}x" == "2.00–2.50x"
    assert "else their range" in text

    for run in runs:
        run.extra = {"model_info": {"parameters": 1}}  # an older file: no parameters_total
    text = write_report(write_matrix(tmp_path / "old", "old", runs)).read_text()
    assert "Compression" not in table_header(text, "### Accuracy Comparison")
    assert "else their range" not in text
