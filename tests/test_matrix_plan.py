"""Matrix planning: Config -> RunSpecs, a pure function with stable ids."""

from __future__ import annotations

import pytest

from lib import config as cfg
from lib.config import ConfigError
from lib.matrix import plan
from lib.spec import RunSpec


def planned_ids(defconfig: str) -> list[str]:
    return [s.run_id for s in plan(cfg.load(cfg.DEFCONFIG_DIR / defconfig))]


def test_seed_defconfig_plans_exactly_the_seed_comparison():
    assert planned_ids("resnet50-adamwprune") == [
        "resnet50_adamwspam_magnitude_s50_seed0",
        "resnet50_adamwspam_magnitude_s70_seed0",
        "resnet50_adamwspam_magnitude_s90_seed0",
        "resnet50_adamwspam_movement_s50_seed0",
        "resnet50_adamwspam_movement_s70_seed0",
        "resnet50_adamwspam_movement_s90_seed0",
        "resnet50_adamwprune-adamw_state-hybrid_s50_seed0",
        "resnet50_adamwprune-adamw_state-hybrid_s70_seed0",
        "resnet50_adamwprune-adamw_state-hybrid_s90_seed0",
    ]


def test_all_optimizers_plans_valid_pairs_and_one_baseline_per_optimizer():
    ids = planned_ids("resnet50-all-optimizers")
    dense = [i for i in ids if "_dense_" in i]
    assert dense == [
        f"resnet50_{o}_dense_seed0"
        for o in ("sgd", "adam", "adamw", "adamwadv", "adamwspam", "adamwprune-adamw")
    ]
    # five optimizers x (magnitude, movement) x 3 levels + AdamWPrune state x 3 + 6 baselines
    assert len(ids) == 5 * 2 * 3 + 3 + 6
    assert not any("adamwprune" in i and ("magnitude" in i or "movement" in i) for i in ids)
    assert all("adamwprune" in i for i in ids if "state" in i)


def test_demo_plan():
    """Dense, AdamWPrune's state pruning and AdamW with magnitude pruning at 70 and 90 %, four
    seeds each: enough for the report's intervals and tests (docs/quickstart.md)."""
    ids = planned_ids("demo")
    cells = [
        "resnet20_adamw_dense",
        "resnet20_adamw_magnitude_s70",
        "resnet20_adamw_magnitude_s90",
        "resnet20_adamwprune-adamw_dense",
        "resnet20_adamwprune-adamw_state-hybrid_s70",
        "resnet20_adamwprune-adamw_state-hybrid_s90",
    ]
    assert ids == [f"{cell}_seed{seed}" for cell in cells for seed in range(4)]


def test_seeds_are_an_axis(tmp_path):
    path = tmp_path / ".config"
    path.write_text((cfg.DEFCONFIG_DIR / "demo").read_text() + 'CONFIG_MATRIX_SEEDS="0,1,2"\n')
    specs = plan(cfg.load(path))
    assert len(specs) == 6 * 3
    assert {s.seed for s in specs} == {0, 1, 2}
    assert len({s.run_id for s in specs}) == len(specs)


def test_plan_is_stable_and_specs_round_trip_through_json():
    config = cfg.load(cfg.DEFCONFIG_DIR / "resnet50-all-optimizers")
    first, second = plan(config), plan(config)
    assert first == second
    for spec in first:
        again = RunSpec.from_json(spec.to_json())
        assert again == spec and again.run_id == spec.run_id
        assert spec.out_dir == f"results/resnet50-all-optimizers/{spec.run_id}"


def test_adamwadv_runs_carry_their_clipping():
    specs = plan(cfg.load(cfg.DEFCONFIG_DIR / "resnet50-all-optimizers"))
    for spec in specs:
        expected = 1.0 if spec.optimizer.name == "adamwadv" else 0.0
        assert spec.train.grad_clip == expected


def test_a_config_that_plans_nothing_is_refused(tmp_path):
    path = tmp_path / ".config"
    path.write_text(
        "CONFIG_OPTIMIZER_ADAMWPRUNE=y\n# CONFIG_PRUNING_NONE is not set\n"
        "# CONFIG_PRUNING_STATE is not set\n"
    )
    with pytest.raises(ConfigError, match="no pruning method selected"):
        plan(cfg.load(path))


def test_kconfig_dependencies_make_every_selected_method_plannable(tmp_path):
    # magnitude/movement depend on a non-AdamWPrune optimizer, state on AdamWPrune, so a
    # method can never be selected with no optimizer to run it.
    path = tmp_path / ".config"
    path.write_text("CONFIG_OPTIMIZER_ADAMWPRUNE=y\nCONFIG_PRUNING_MAGNITUDE=y\n")
    with pytest.raises(ConfigError, match="CONFIG_PRUNING_MAGNITUDE=.*has no effect"):
        cfg.load(path)


def test_random_and_layerwise_baselines_are_rows_beside_global_magnitude(tmp_path):
    """ShrinkBench's controls in one matrix: random pruning and layer-wise magnitude pruning
    beside global magnitude pruning, each its own method key (report row)."""
    path = tmp_path / ".config"
    path.write_text(
        (cfg.DEFCONFIG_DIR / "demo").read_text()
        + "CONFIG_PRUNING_RANDOM=y\nCONFIG_PRUNING_LAYERMAGNITUDE=y\n"
    )
    specs = plan(cfg.load(path))
    adamw = [s for s in specs if s.optimizer.name == "adamw" and s.seed == 0]
    assert [s.run_id for s in adamw] == [
        "resnet20_adamw_dense_seed0",
        "resnet20_adamw_magnitude_s70_seed0",
        "resnet20_adamw_magnitude_s90_seed0",
        "resnet20_adamw_random_s70_seed0",
        "resnet20_adamw_random_s90_seed0",
        "resnet20_adamw_layermagnitude_s70_seed0",
        "resnet20_adamw_layermagnitude_s90_seed0",
    ]
    scopes = {s.pruning.method: s.pruning.scope for s in adamw}
    assert scopes == {"none": "global", "magnitude": "global", "random": "global",
                      "layermagnitude": "layerwise"}  # fmt: skip
    # AdamWPrune prunes by itself: no baseline runs of it.
    assert not any(s.optimizer.name == "adamwprune" and s.pruning.method in scopes
                   and s.pruning.method not in ("none",) and s.pruning.method != "state"
                   for s in specs)  # fmt: skip


def test_nm_pattern_reaches_every_method_and_fixes_the_sparsity(tmp_path):
    path = tmp_path / ".config"
    base = (cfg.DEFCONFIG_DIR / "demo").read_text() + "CONFIG_PRUNING_NM=y\n"
    path.write_text(base + "# CONFIG_SPARSITY_70 is not set\n# CONFIG_SPARSITY_90 is not set\n"
                    'CONFIG_SPARSITY_CUSTOM="0.5"\n')  # fmt: skip
    specs = [s for s in plan(cfg.load(path)) if s.pruning.enabled]
    assert {s.pruning.method for s in specs} == {"magnitude", "state"}
    assert {(s.pruning.nm_n, s.pruning.nm_m, s.pruning.sparsity) for s in specs} == {(2, 4, 0.5)}
    assert all(RunSpec.from_json(s.to_json()) == s for s in specs)
    # The demo's 70 and 90 % are not 2:4's 50 %: one line naming the options and the answer.
    path.write_text(base)
    with pytest.raises(ConfigError, match=r"CONFIG_SPARSITY_\*='0.7,0.9'.*only 0.5"):
        cfg.load(path)
    path.write_text(base + "CONFIG_PRUNING_NM_N=4\n")
    with pytest.raises(ConfigError, match=r"CONFIG_PRUNING_NM_N='4'.*1\.\.3"):
        cfg.load(path)
