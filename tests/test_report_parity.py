"""Every table of the seed's results document has its counterpart, computed from the runs:
stability per method and sparsity over seeds, achieved sparsity, generated findings, memory
with its units and decimals; plus the per-run facts issue 14 asks for (sparsity at the best
epoch, GPUs per run, state bytes per parameter per method)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from report_helpers import (
    PARAMETERS,
    PRUNABLE,
    FakeRun,
    pop_std,
    render,
    row_dict,
    row_for,
    section,
    table_header,
    table_rows,
    write_matrix,
)

from lib.store import seal

CAND = "AdamWPrune (AdamW base) state/hybrid"
BASE = "AdamWSPAM + magnitude"

# Two seeds per cell at 50%, 12 epochs, target reached at epoch 3 (ramp 0.1, 0.3 of target).
CAND_SEEDS = [
    [60.0, 65.0, 70.0, 72.0, 73.0, 74.0, 74.6, 74.3, 74.2, 74.1, 74.0, 74.1],
    [61.0, 66.0, 70.5, 72.5, 73.5, 74.2, 74.4, 74.5, 74.0, 74.2, 74.3, 74.0],
]
BASE_SEEDS = [
    [60.0, 64.0, 69.0, 71.0, 72.0, 73.2, 73.0, 72.9, 73.1, 73.0, 72.9, 73.0],
    [60.5, 64.5, 69.5, 71.5, 72.5, 73.0, 73.3, 73.1, 73.2, 73.1, 73.0, 73.1],
]


def ramp(target: float, n: int = 12, final: float | None = None) -> list[float]:
    values = [0.1 * target, 0.3 * target] + [target] * (n - 2)
    if final is not None:
        values[-1] = final
    return values


def parity_runs() -> list[FakeRun]:
    runs = []
    for seed, (c, b) in enumerate(zip(CAND_SEEDS, BASE_SEEDS, strict=True)):
        runs.append(
            FakeRun("adamwprune", "state", 0.5, seed, c, ramp(0.5, final=0.5 + 0.001 * seed))
        )
        runs.append(
            FakeRun(
                "adamwspam", "magnitude", 0.5, seed, b, ramp(0.5), peak_mb=12792.5,
                optimizer_state_bytes=3 * 4 * PARAMETERS, pruning_state_bytes=PRUNABLE,
            )
        )  # fmt: skip
    return runs


def test_stability_per_method_and_sparsity_over_seeds(tmp_path: Path) -> None:
    text = render(write_matrix(tmp_path, "parity", parity_runs()))
    rows = table_rows(text, "### Stability Analysis")
    cand = row_for(rows, CAND)
    stds = [pop_std(c[-10:]) for c in CAND_SEEDS]
    p2f = [max(c[2:]) - c[-1] for c in CAND_SEEDS]  # best at target minus final
    assert cand[1:4] == ["50%", "2", f"{statistics.mean(stds):.2f} ± {statistics.stdev(stds):.2f}%"]
    assert cand[4] == f"{statistics.mean(p2f):.2f} ± {statistics.stdev(p2f):.2f}%"
    assert cand[5] == "7 – 8"  # best epochs of the two seeds
    assert cand[6] == "50.0 – 50.1%"  # achieved final sparsity (measured), over seeds
    base = row_for(rows, BASE)
    assert base[6] == "50.0%"
    assert "Std Dev (last 10 epochs)" in table_header(text, "### Stability Analysis")


def test_std_window_says_how_many_epochs_it_covers(tmp_path: Path) -> None:
    runs = [
        FakeRun("adamwprune", "state", 0.5, 0, [70.0, 71.0, 73.0, 72.0]),
        FakeRun("adamwspam", "magnitude", 0.5, 0, [70.0, 70.5, 71.0, 71.5]),
    ]
    text = render(write_matrix(tmp_path, "four", runs))
    assert "Std Dev (last 4 epochs)" in text
    assert "Std Dev (last 10 epochs" not in text


def test_sparsity_at_the_best_epoch_and_best_of_any_epoch(tmp_path: Path) -> None:
    runs = [
        # Reaches 90% at epoch 3, best at target in epoch 4 (measured 90.2%).
        FakeRun("adamwprune", "state", 0.9, 0, [50.0, 80.0, 60.0, 65.0, 64.0],
                sparsity=[0.3, 0.6, 0.9, 0.902, 0.9]),
        # The seed-as-run case: never reaches 90%; its best (epoch 2) was at 54% sparsity.
        FakeRun("adamwspam", "magnitude", 0.9, 0, [50.0, 76.1, 70.0],
                sparsity=[0.3, 0.54, 0.85]),
    ]  # fmt: skip
    text = render(write_matrix(tmp_path, "atbest", runs))
    heading = "#### Stability per run"
    reached = row_dict(text, heading, "`resnet50_adamwprune-adamw_state-hybrid_s90_seed0`")
    assert reached["Best top-1 (at target)"] == "65.00%"
    assert reached["Best epoch"] == "4"
    assert reached["Sparsity at best"] == "90.2%"
    assert reached["Best of any epoch"] == "80.00% at 60.0% (epoch 2)"
    never = row_dict(text, heading, "`resnet50_adamwspam_magnitude_s90_seed0`")
    assert never["Best top-1 (at target)"] == "not reached"
    assert never["Best of any epoch"] == "76.10% at 54.0% (epoch 2)"
    assert never["Final sparsity"] == "85.0%"


def test_gpus_per_run_default_one_when_absent(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, "gpus", parity_runs())
    plan = json.loads((matrix / "matrix.json").read_text())
    for entry in plan["runs"]:
        if "adamwspam" in entry["run_id"]:
            entry["spec"]["train"]["gpus_per_run"] = 4
        else:
            entry["spec"]["train"].pop("gpus_per_run", None)  # a matrix from before the field
    (matrix / "matrix.json").write_text(json.dumps(seal(plan)))  # as a runner wrote it
    for run_dir in matrix.iterdir():
        if (run_dir / "metrics.json").exists():  # the trainer's copy of the spec agrees
            data = json.loads((run_dir / "metrics.json").read_text())
            data["spec"] = next(e["spec"] for e in plan["runs"] if e["run_id"] == run_dir.name)
            (run_dir / "metrics.json").write_text(json.dumps(data))
    text = render(matrix)
    heading = "#### Stability per run"
    assert row_dict(text, heading, "`resnet50_adamwspam_magnitude_s50_seed0`")["GPUs"] == "4"
    assert (
        row_dict(text, heading, "`resnet50_adamwprune-adamw_state-hybrid_s50_seed0`")["GPUs"] == "1"
    )
    assert "- **GPUs per run**: 1 – 4" in text


def test_state_bytes_per_parameter_per_method(tmp_path: Path) -> None:
    text = render(write_matrix(tmp_path, "state", parity_runs()))
    base = row_dict(text, "### Memory", BASE)
    assert base["Optimizer state (B/param)"] == "12.00"
    assert base["Pruning state (B/prunable param)"] == "1.00"
    cand = row_dict(text, "### Memory", CAND)
    assert cand["Optimizer state (B/param)"] == "8.00"
    assert cand["Pruning state (B/prunable param)"] == "0.00"


def test_findings_are_generated_from_the_numbers(tmp_path: Path) -> None:
    text = render(write_matrix(tmp_path, "findings", parity_runs()))
    findings = section(text, "## Key Findings")
    cand_best = statistics.mean(max(c[2:]) for c in CAND_SEEDS)
    base_best = statistics.mean(max(b[2:]) for b in BASE_SEEDS)
    assert f"{CAND}** leads at 50%" in findings
    assert f"{cand_best:.2f}% vs {base_best:.2f}%" in findings
    # Memory: 12,602.5 vs 12,792.5 MiB: 190.0 MiB (1.49%) less, with its decimals.
    assert "190.0 MiB (1.49%) less peak CUDA memory allocated than " + BASE in findings
    assert "12,602.5 MiB vs 12,792.5 MiB" in findings

    # The same matrix with the methods' accuracies swapped: the findings follow.
    swapped = parity_runs()
    for run in swapped:
        seed = run.seed
        run.top1 = BASE_SEEDS[seed] if run.optimizer == "adamwprune" else CAND_SEEDS[seed]
    other = section(render(write_matrix(tmp_path, "swapped", swapped)), "## Key Findings")
    assert f"{BASE}** leads at 50%" in other


def test_recommendations_follow_only_from_significant_differences(tmp_path: Path) -> None:
    text = render(write_matrix(tmp_path, "recommend", parity_runs()))
    recommendations = section(text, "## Recommendations")
    cand_best = statistics.mean(max(c[2:]) for c in CAND_SEEDS)
    base_best = statistics.mean(max(b[2:]) for b in BASE_SEEDS)
    assert f"At 50% sparsity, use **{CAND}**" in recommendations
    assert f"({cand_best:.2f}%) leads {BASE} ({base_best:.2f}%)" in recommendations

    # One seed each: no noise estimate, so no recommendation, and the section says why.
    one_seed = [run for run in parity_runs() if run.seed == 0]
    single = section(render(write_matrix(tmp_path, "one-seed", one_seed)), "## Recommendations")
    assert "No recommendation" in single and "no noise estimate" in single
    assert "use **" not in single

    # Two seeds whose leads are within the noise: no recommendation either.
    close = parity_runs()
    for run in close:
        if run.optimizer == "adamwprune":
            run.top1 = BASE_SEEDS[1 - run.seed]
    tied = section(render(write_matrix(tmp_path, "close", close)), "## Recommendations")
    assert "No recommendation" in tied and "use **" not in tied


def test_base_optimizer_impact_appears_with_several_bases(tmp_path: Path) -> None:
    assert "## Base Optimizer Impact" not in render(write_matrix(tmp_path, "one", parity_runs()))
    runs = [
        FakeRun("adamwprune", "state", 0.5, seed, c, prune_base="adamw")
        for seed, c in enumerate(CAND_SEEDS)
    ] + [
        FakeRun("adamwprune", "state", 0.5, seed, b, prune_base="adamwspam")
        for seed, b in enumerate(BASE_SEEDS)
    ]
    text = render(write_matrix(tmp_path, "bases", runs))
    adamw, spam = "AdamWPrune (AdamW base) state/hybrid", "AdamWPrune (AdamWSPAM base) state/hybrid"
    row = row_dict(text, "## Base Optimizer Impact", "50%")
    cand_best = statistics.mean(max(c) for c in CAND_SEEDS)
    base_best = statistics.mean(max(b) for b in BASE_SEEDS)
    assert row[adamw].startswith(f"{cand_best:.2f} ± ")
    assert row[spam].startswith(f"{base_best:.2f} ± ")
    assert row["Lead"].startswith(f"{adamw}: +1.30 points (significant")


def test_comparison_with_previous_results_names_the_matrices_and_the_command(
    tmp_path: Path,
) -> None:
    alone = render(write_matrix(tmp_path / "a", "current", parity_runs()))
    assert "No other matrix under" in section(alone, "## Comparison with Previous Results")

    write_matrix(tmp_path / "b", "previous", parity_runs())
    write_matrix(tmp_path / "b", "unrelated", [FakeRun("sgd", "magnitude", 0.5, 0, [50.0, 51.0])])
    full = render(write_matrix(tmp_path / "b", "current", parity_runs()))
    text = section(full, "## Comparison with Previous Results")
    row = row_dict(full, "## Comparison with Previous Results", "`previous`")
    assert row["Runs"] == "4"
    assert row["Methods in common"] == f"{CAND}, {BASE}"
    assert row["Command"] == '`make report COMPARE="previous current"`'
    assert "`unrelated`" not in text
