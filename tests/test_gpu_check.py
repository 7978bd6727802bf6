"""make gpu-check without a GPU: one line and exit 3; its wheel plan; its JSON from a CPU dry run.

The GPU parts themselves run only on a GPU machine (docs/benchmarks.md, "GPU check"); the CPU
dry run executes the same part code at tiny sizes, which is what is checked here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_wheels  # noqa: E402

NO_GPU = dict(os.environ, CUDA_VISIBLE_DEVICES="")


def run_script(*args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env or NO_GPU,
        timeout=timeout,
    )


# -- no GPU -----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", [["run"], ["preflight"]])
def test_without_a_gpu_the_check_prints_one_line_and_exits_3(action):
    result = run_script(*action)
    assert result.returncode == gpu_check.EXIT_NO_GPU == 3
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("gpu-check: no CUDA GPU visible to ")
    assert "nothing checked" in lines[0]
    assert result.stderr == ""


def test_make_gpu_check_without_a_gpu_stops_before_installing_anything(tmp_path):
    """make passes the check's status on as make does ("Error 3", make's own exit 2), after
    the check's one line and before any wheel is installed."""
    site = tmp_path / "site"
    result = subprocess.run(
        ["make", "--no-print-directory", "gpu-check", f"GPU_SITE={site}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=NO_GPU,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stdout.splitlines() == [
        line for line in result.stdout.splitlines() if line.startswith("gpu-check: no CUDA GPU")
    ]
    assert len(result.stdout.splitlines()) == 1
    assert "Error 3" in result.stderr and "Traceback" not in result.stderr
    assert not site.exists()


# -- wheels for a bare machine ------------------------------------------------------------------


def test_wheel_collection_plan_builds_the_project_and_pins_pure_wheels(tmp_path):
    plan = gpu_wheels.collect_plan(tmp_path / "wh", python="py")
    build, requirements, backports = plan
    assert build[:4] == ["py", "-m", "pip", "wheel"] and build[-1] == str(ROOT)
    assert "--no-deps" in build and str(tmp_path / "wh") in build
    for download in (requirements, backports):
        assert download[:4] == ["py", "-m", "pip", "download"]
        assert "--only-binary=:all:" in download
        assert download[download.index("--platform") + 1] == "any"
        assert download[download.index("--dest") + 1] == str(tmp_path / "wh")
    import importlib.metadata

    for name in gpu_wheels.REQUIREMENTS:
        assert f"{name}=={importlib.metadata.version(name)}" in requirements
    assert backports[backports.index("--python-version") + 1] == "3.10"
    assert set(gpu_wheels.BACKPORTS) <= set(backports)


def test_install_plan_reads_the_wheelhouse_only(tmp_path):
    wheelhouse = tmp_path / "wh"
    wheelhouse.mkdir()
    for name in ("pytest-8.0.0", "pytest-9.0.3", "pytest-9.0.10", "kconfiglib-14.1.0"):
        (wheelhouse / f"{name}-py3-none-any.whl").touch()
    project, requirements = gpu_wheels.install_plan(wheelhouse, tmp_path / "site", python="py")
    for command in (project, requirements):
        assert command[:4] == ["py", "-m", "pip", "install"]
        assert "--no-index" in command
        assert command[command.index("--find-links") + 1] == str(wheelhouse)
        assert command[command.index("--target") + 1] == str(tmp_path / "site")
    assert "--no-deps" in project and project[-1].startswith("prunebench==")
    assert requirements[-2:] == ["kconfiglib==14.1.0", "pytest==9.0.10"]


def test_install_without_a_wheelhouse_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert gpu_wheels.main(["install", "--wheelhouse", str(missing)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and f"{missing} not found" in out[0] and "make gpu-wheels" in out[0]
    missing.mkdir()
    (missing / "pytest-9.0.3-py3-none-any.whl").touch()
    assert gpu_wheels.main(["install", "--wheelhouse", str(missing)]) == 2
    assert "no wheel for prunebench, kconfiglib" in capsys.readouterr().out


# -- figures and goals ------------------------------------------------------------------------


def pruned_document(zeros: int, scheduled: float, total: int = 1000, target: float = 0.7):
    return {
        "spec": {"pruning": {"method": "state", "sparsity": target}},
        "model_info": {"prunable_parameters": total},
        "epochs": [
            {"sparsity": 0.0, "scheduled_sparsity": 0.0},
            {"sparsity": zeros / total, "scheduled_sparsity": scheduled},
        ],
    }


def test_masks_exact_counts_the_zeros_the_last_update_selected():
    assert gpu_check.masks_exact(pruned_document(700, 0.7)) is True
    assert gpu_check.masks_exact(pruned_document(699, 0.7)) is False  # a pruned weight came back
    assert gpu_check.masks_exact(pruned_document(701, 0.7)) is False
    assert gpu_check.masks_exact(pruned_document(500, 0.5)) is False  # target not reached
    dense = pruned_document(0, 0.0)
    dense["spec"]["pruning"]["method"] = "none"
    assert gpu_check.masks_exact(dense) is None


def test_the_throughput_goal_names_the_input_pipeline_when_it_is_lower():
    setting = gpu_check.gpu_setting()

    def parts(ceiling, rate, ratio):
        return {
            "input-pipeline": {"figures": {"images_per_second": ceiling}},
            "resnet50-adamw": {"figures": {"images_per_second": rate}},
            "bench-optimizers": {
                "figures": {"methods": [{"label": "AdamWPrune hybrid", "amortised_ratio": ratio}]}
            },
        }

    prune, speed = gpu_check.goals(parts(2500.0, 2400.0, 1.01), setting)
    assert prune["met"] is True and prune["measured"] == 1.01
    assert speed["target"] == 2500.0 and "input pipeline's measured ceiling" in speed["goal"]
    assert speed["met"] is False
    prune, speed = gpu_check.goals(parts(9000.0, 3100.0, 1.05), setting)
    assert prune["met"] is False
    assert speed["target"] == 3000 and speed["met"] is True
    prune, speed = gpu_check.goals({}, setting)
    assert prune["met"] is None and speed["met"] is None


def test_pytest_summary_is_read_into_counts():
    output = "....\n2 passed, 1 skipped, 640 deselected, 1 error in 12.30s\n"
    assert gpu_check.pytest_counts(output) == {
        "passed": 2,
        "skipped": 1,
        "deselected": 640,
        "error": 1,
    }


def test_only_files_with_gpu_tests_are_collected():
    files = gpu_check.gpu_test_files()
    assert "tests/test_train.py" in files and "tests/test_data.py" in files
    assert all("\n@pytest.mark.gpu\n" in (ROOT / f).read_text() for f in files)
    assert "tests/test_gpu_check.py" not in files  # names the marker, holds no GPU test
    assert "tests/test_report_stats.py" not in files  # imports scipy, not carried


# -- the CPU dry run ----------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_dry_run_writes_every_part_and_goal_to_one_json(tmp_path):
    """Two parts through their own processes on the CPU: the environment and one training
    run through the real (uint8) input pipeline with AdamWPrune's state pruning."""
    out = tmp_path / "check" / "gpu-check.json"
    selected = "environment,resnet50-adamwprune"
    result = run_script(
        "run",
        "--cpu-dry-run",
        "--parts",
        selected,
        "--out",
        str(out),
        "--data-root",
        str(tmp_path / "data"),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines if line.startswith(("PASS", "FAIL"))] == [
        ["PASS", "environment"],
        ["PASS", "resnet50-adamwprune"],
    ]
    document = json.loads(out.read_text())
    assert document["schema"] == 1 and document["mode"] == "cpu-dry-run"
    assert document["passed"] is True
    assert list(document["parts"]) == list(gpu_check.PARTS)
    for name, part in document["parts"].items():
        expected = "pass" if name in selected.split(",") else "not run"
        assert part["status"] == expected, (name, part["line"])
    assert document["environment"]["torch"] and document["environment"]["device"] == "cpu"
    figures = document["parts"]["resnet50-adamwprune"]["figures"]
    setting = document["setting"]
    assert figures["status"] == "completed"
    assert figures["steps"] == setting["epochs"] * setting["steps"]
    assert len(figures["train_loss_per_epoch"]) == setting["epochs"]
    assert figures["loss_falling"] is True and figures["masks_exact"] is True
    assert figures["images_per_second"] > 0 and figures["peak_memory_mb"] > 0
    assert figures["pruning_state_bytes_per_param"] == 0.0  # AdamWPrune keeps no buffer
    # Neither goal's figure was measured (no benchmark, no AdamW run): reported as such.
    assert [(g["measured"], g["met"]) for g in document["goals"]] == [(None, None)] * 2
    assert all(g["note"] == "cpu dry run: not the goal's setting" for g in document["goals"])
    assert out.parent.joinpath("runs", "train-adamwprune", "metrics.json").is_file()
    # Reusing a folder with runs in it would report them again: refused.
    again = run_script("run", "--cpu-dry-run", "--parts", "environment", "--out", str(out))
    assert again.returncode == 2 and "already holds" in again.stdout


def test_a_part_without_time_left_in_the_budget_is_skipped_and_says_so(tmp_path):
    part = gpu_check.execute_part("compile", gpu_check.gpu_setting(), tmp_path, seconds_left=12.0)
    assert part["status"] == "skipped"
    assert part["line"] == "not run: 12 s of the budget left"
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_the_setting_a_part_reads_back_is_the_one_the_check_wrote():
    setting = gpu_check.cpu_dry_setting()
    again = gpu_check.Setting.from_dict(json.loads(json.dumps(dataclasses.asdict(setting))))
    assert again == setting and again.limit("compile") == setting.limit("compile")
