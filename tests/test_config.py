"""The Kconfig menu, the defconfigs and the typed Config loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib import config as cfg
from lib.cli import defconfig_names
from lib.config import ConfigError
from lib.matrix import plan


def write_config(tmp_path, defconfig: str, *extra: str):
    """A .config made of a defconfig plus hand-edited lines (later lines win)."""
    path = tmp_path / ".config"
    text = (cfg.DEFCONFIG_DIR / defconfig).read_text()
    path.write_text(text + "".join(line + "\n" for line in extra))
    return path


def test_kconfig_parses_without_warnings():
    kconf = cfg.load_kconfig()
    assert kconf.warnings == []
    assert len(kconf.unique_defined_syms) > 100


def test_every_option_with_a_prompt_has_help_or_is_a_choice_member():
    kconf = cfg.load_kconfig()
    missing = []
    for sym in kconf.unique_defined_syms:
        for node in sym.nodes:
            if node.prompt and not node.help and sym.choice is None:
                # Sparsity presets and report plot toggles explain themselves in the prompt
                # and in their menu comment.
                if not sym.name.startswith(("SPARSITY_", "REPORT_PLOT_")):
                    missing.append(sym.name)
    assert missing == []


def test_every_int_option_has_a_range():
    kconf = cfg.load_kconfig()
    import kconfiglib

    no_range = [
        s.name for s in kconf.unique_defined_syms if s.orig_type == kconfiglib.INT and not s.ranges
    ]
    assert no_range == []


@pytest.mark.parametrize("name", defconfig_names())
def test_defconfig_round_trips_through_savedefconfig(tmp_path, name):
    kconf = cfg.load_kconfig_with(cfg.DEFCONFIG_DIR / name)
    full = tmp_path / ".config"
    kconf.write_config(str(full))
    kconf = cfg.load_kconfig_with(full)
    out = tmp_path / "defconfig"
    kconf.write_min_config(str(out), header="")
    assert out.read_text() == (cfg.DEFCONFIG_DIR / name).read_text()
    config = cfg.load(full)
    assert config.matrix.name == name


def _pruning_schedule(config):
    p = config.pruning
    return (p.schedule, p.start_step, p.end_epoch, p.interval, p.scope)


def test_corrected_comparison_defconfig():
    # resnet50-adamwprune: the seed's comparison made fair (docs/reproducing.md's table).
    config = cfg.load(cfg.DEFCONFIG_DIR / "resnet50-adamwprune")
    assert (config.model.name, config.model.stem) == ("resnet50", "imagenet")
    assert config.data.name == "imagenet" and config.data.image_size == 224
    assert (config.train.epochs, config.train.batch_size) == (100, 128)
    assert config.train.lr_schedule == "cosine"
    by_name = {o.name: o for o in config.optimizers}
    assert set(by_name) == {"adamwprune", "adamwspam"}
    prune = by_name["adamwprune"]
    assert prune.prune_base == "adamw" and prune.prune_score == "hybrid"
    assert (prune.lr, prune.beta1, prune.beta2, prune.weight_decay) == (0.001, 0.9, 0.999, 0.01)
    # No AMSGrad (its third buffer would cost +4 B/param), decay on weights only, like SPAM.
    assert prune.amsgrad is False and prune.decay_all_parameters is False
    assert prune.label == "adamwprune-adamw"
    spam = by_name["adamwspam"]
    assert spam.lr == 0.001 and spam.weight_decay == prune.weight_decay
    assert (spam.spam_theta, spam.spam_interval, spam.spam_warmup_steps) == (50.0, 1000, 100)
    assert config.pruning_methods == ("magnitude", "movement", "state")
    assert config.sparsities == (0.5, 0.7, 0.9)
    assert _pruning_schedule(config) == ("linear", 100, 80, 50, "global")
    assert config.report.baseline == "adamwspam_magnitude"


def test_seed_as_run_defconfig_expresses_every_quirk_as_an_option():
    config = cfg.load(cfg.DEFCONFIG_DIR / "resnet50-adamwprune-seed-as-run")
    assert (config.model.name, config.model.stem) == ("resnet50", "imagenet")
    assert (config.data.name, config.data.image_size) == ("cifar100", 224)
    assert (config.train.epochs, config.train.batch_size) == (100, 128)
    assert config.train.lr_schedule == "constant" and config.train.warmup_epochs == 0
    assert (config.train.precision, config.train.channels_last) == ("off", False)
    by_name = {o.name: o for o in config.optimizers}
    assert set(by_name) == {"adamw", "adamwprune"}
    prune, baseline = by_name["adamwprune"], by_name["adamw"]
    assert prune.prune_base == "adamw" and prune.prune_score == "hybrid"
    assert (prune.lr, prune.eps, prune.weight_decay) == (0.001, 1e-8, 0.01)
    assert prune.amsgrad and prune.decay_all_parameters
    # The seed's "AdamWSPAM" was AdamW + AMSGrad with decay 5e-4 on weights: named so.
    assert (baseline.lr, baseline.eps, baseline.weight_decay) == (0.001, 1e-8, 0.0005)
    assert baseline.amsgrad and not baseline.decay_all_parameters
    assert (baseline.label, prune.label) == ("adamw-amsgrad", "adamwprune-adamw-amsgrad")
    assert all(config.train_for(o) == config.train for o in config.optimizers)
    assert config.pruning_methods == ("magnitude", "movement", "state")
    assert config.sparsities == (0.5, 0.7, 0.9)
    assert _pruning_schedule(config) == ("linear", 100, 80, 50, "global")
    keys = {spec.method_key for spec in plan(config)}
    assert config.report.baseline in keys
    assert "adamwprune-adamw-amsgrad_state-hybrid" in keys


def test_resnet50_gpu_defconfigs_use_the_fast_settings_for_every_method():
    for name in defconfig_names():
        config = cfg.load(cfg.DEFCONFIG_DIR / name)
        if name in ("demo", "tuning-tiny"):  # the CPU defconfigs
            assert config.train.deterministic and config.train.device == "cpu"
            continue
        assert not config.train.deterministic, name  # determinism is an opt-in
        assert config.train.tf32, name
        if name != "resnet50-adamwprune-seed-as-run":  # the seed ran fp32, NCHW
            assert (config.train.precision, config.train.channels_last) == ("bf16", True), name
        for opt in config.optimizers:  # like for like: only AdamWAdv's own clip/schedule differ
            fields = ("precision", "channels_last", "tf32", "deterministic", "compile")
            assert all(
                getattr(config.train_for(opt), f) == getattr(config.train, f) for f in fields
            )


def test_spam_base_defconfig_carries_spam_settings_into_adamwprune():
    config = cfg.load(cfg.DEFCONFIG_DIR / "resnet50-adamwprune-spam-base")
    prune = next(o for o in config.optimizers if o.name == "adamwprune")
    spam = next(o for o in config.optimizers if o.name == "adamwspam")
    assert prune.prune_base == "adamwspam" and prune.amsgrad is False
    assert (prune.spam_theta, prune.spam_interval, prune.spam_warmup_steps) == (50.0, 1000, 100)
    # Like for like: one eps and one weight decay across AdamWPrune and AdamWSPAM.
    assert (prune.eps, prune.weight_decay) == (spam.eps, spam.weight_decay) == (1e-6, 0.01)


def test_adamwprune_on_the_adamwadv_base_gets_adamwadvs_clipping_and_schedule(tmp_path):
    path = tmp_path / ".config"
    path.write_text("CONFIG_ADAMWPRUNE_BASE_ADAMWADV=y\nCONFIG_LR_SCHEDULE_CONSTANT=y\n")
    config = cfg.load(path)
    (prune,) = config.optimizers
    assert prune.prune_base == "adamwadv" and prune.amsgrad
    assert (config.train_for(prune).grad_clip, config.train_for(prune).lr_schedule) == (
        1.0,
        "cosine",
    )
    path.write_text(path.read_text() + 'CONFIG_ADAMWADV_GRAD_CLIP="0.5"\n')
    config = cfg.load(path)
    assert config.train_for(config.optimizers[0]).grad_clip == 0.5
    # Defaults by base: the base's own (AdamW's decay 0.01, eps 1e-8); Adam decays 0.
    assert (prune.weight_decay, prune.eps) == (0.01, 1e-8)
    path.write_text("CONFIG_ADAMWPRUNE_BASE_ADAM=y\n")
    (prune,) = cfg.load(path).optimizers
    assert (prune.weight_decay, prune.eps, prune.label) == (0.0, 1e-8, "adamwprune-adam")


def test_cifar100_defconfig_uses_the_cifar_stem():
    config = cfg.load(cfg.DEFCONFIG_DIR / "resnet50-cifar100-adamwprune")
    assert config.data.name == "cifar100" and config.model.stem == "cifar"
    assert config.data.num_classes == 100 and config.data.download is False


def test_class_defaults_stay_reference_defaults_for_spam(tmp_path):
    # A fresh AdamWSPAM menu (not the ResNet-50 defconfigs) carries the paper's defaults.
    config = cfg.load(write_config(tmp_path, "demo", "CONFIG_OPTIMIZER_ADAMWSPAM=y"))
    spam = next(o for o in config.optimizers if o.name == "adamwspam")
    assert (spam.spam_theta, spam.spam_interval, spam.spam_warmup_steps) == (5000.0, 500, 150)
    assert (spam.spam_clip_delay, spam.eps) == (20, 1e-6)


def test_adamwadv_gets_its_clipping_and_cosine_schedule():
    config = cfg.load(cfg.DEFCONFIG_DIR / "resnet50-all-optimizers")
    adv = next(o for o in config.optimizers if o.name == "adamwadv")
    assert adv.amsgrad is True
    assert config.train_for(adv).grad_clip == 1.0
    assert config.train_for(adv).lr_schedule == "cosine"
    sgd = next(o for o in config.optimizers if o.name == "sgd")
    assert config.train_for(sgd).grad_clip == 0.0


@pytest.mark.parametrize(
    ("line", "symbol", "accepted"),
    [
        ('CONFIG_SPARSITY_CUSTOM="abc"', "CONFIG_SPARSITY_CUSTOM", "fractions in (0, 1)"),
        ('CONFIG_SPARSITY_CUSTOM="1.5"', "CONFIG_SPARSITY_CUSTOM", "fractions in (0, 1)"),
        ('CONFIG_SPARSITY_CUSTOM="-0.1"', "CONFIG_SPARSITY_CUSTOM", "fractions in (0, 1)"),
        ('CONFIG_ADAMWPRUNE_LR="0"', "CONFIG_ADAMWPRUNE_LR", "(0, inf)"),
        ('CONFIG_ADAMWPRUNE_LR="fast"', "CONFIG_ADAMWPRUNE_LR", "(0, inf)"),
        ('CONFIG_ADAMWPRUNE_BETA1="1.0"', "CONFIG_ADAMWPRUNE_BETA1", "[0, 1)"),
        ('CONFIG_ADAMWPRUNE_BETA2="-0.5"', "CONFIG_ADAMWPRUNE_BETA2", "[0, 1)"),
        ('CONFIG_ADAMWSPAM_EPS="nan"', "CONFIG_ADAMWSPAM_EPS", "(0, inf)"),
        ('CONFIG_TRAIN_LABEL_SMOOTHING="1"', "CONFIG_TRAIN_LABEL_SMOOTHING", "[0, 1)"),
        ("CONFIG_TRAIN_EPOCHS=0", "CONFIG_TRAIN_EPOCHS", "1..100000"),
        ("CONFIG_TRAIN_BATCH_SIZE=abc", "TRAIN_BATCH_SIZE", "int"),
        ("CONFIG_MODEL_KEEP_ENDS_DENSE=maybe", "MODEL_KEEP_ENDS_DENSE", "bool"),
        ("CONFIG_PRUNING_END_EPOCH=120", "CONFIG_PRUNING_END_EPOCH", "at most CONFIG_TRAIN_EPOCHS"),
        ('CONFIG_MATRIX_NAME="../x"', "CONFIG_MATRIX_NAME", "letters, digits"),
        ('CONFIG_MATRIX_SEEDS="0,a"', "CONFIG_MATRIX_SEEDS", "integers"),
    ],
)
def test_invalid_values_give_one_line_naming_symbol_value_and_range(
    tmp_path, line, symbol, accepted
):
    path = write_config(
        tmp_path,
        "demo" if "END_EPOCH" not in line else "resnet50-adamwprune",
        "CONFIG_OPTIMIZER_ADAMWSPAM=y",  # its options exist only when it is on
        line,
    )
    with pytest.raises(ConfigError) as err:
        cfg.load(path)
    message = str(err.value)
    assert "\n" not in message
    assert symbol in message
    assert accepted in message
    value = line.split("=", 1)[1].strip('"')
    assert value in message


def test_state_pruning_without_adamwprune_is_forbidden_by_kconfig(tmp_path):
    kconf = cfg.load_kconfig()
    kconf.load_config(str(write_config(tmp_path, "resnet50-all-optimizers")))
    assert kconf.syms["PRUNING_STATE"].str_value == "y"
    kconf.syms["OPTIMIZER_ADAMWPRUNE"].set_value("n")
    # The dependency, not a runtime check, removes the option from the menu.
    assert kconf.syms["PRUNING_STATE"].visibility == 0
    assert kconf.syms["PRUNING_STATE"].str_value == "n"
    assert kconf.syms["PRUNING_MAGNITUDE"].str_value == "y"


def test_hand_edited_state_pruning_without_adamwprune_is_an_error(tmp_path):
    path = write_config(
        tmp_path, "demo", "# CONFIG_OPTIMIZER_ADAMWPRUNE is not set", "CONFIG_PRUNING_STATE=y"
    )
    with pytest.raises(ConfigError, match="CONFIG_PRUNING_STATE=.*depends on OPTIMIZER_ADAMWPRUNE"):
        cfg.load(path)


def test_old_config_is_expanded_with_defaults_not_misread(tmp_path):
    # A .config written before most options existed: only two lines.
    path = tmp_path / ".config"
    path.write_text("CONFIG_MODEL_RESNET18=y\nCONFIG_REMOVED_OPTION=y\nCONFIG_TRAIN_EPOCHS=90\n")
    # An option this version does not know is named, never dropped without a word ...
    with pytest.raises(ConfigError, match="CONFIG_REMOVED_OPTION is not an option"):
        cfg.load(path)
    # ... and make olddefconfig drops it (with a notice), as the kernel's tools do.
    cfg.load_kconfig_with(path, strict=False).write_config(str(path))
    config = cfg.load(path)
    assert config.model.name == "resnet18"
    assert config.train.epochs == 90
    assert config.train.batch_size == 128  # the default of an option the file never saw
    assert [o.name for o in config.optimizers] == ["adamwprune"]


def test_missing_config_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"no such configuration.*make defconfig-NAME"):
        cfg.load(tmp_path / ".config")


def test_selected_pruning_without_sparsity_levels_is_an_error(tmp_path):
    lines = [f"# CONFIG_SPARSITY_{p} is not set" for p in (50, 70, 80, 90, 95)]
    with pytest.raises(ConfigError, match="no sparsity level"):
        cfg.load(write_config(tmp_path, "demo", *lines))


def test_custom_sparsities_merge_with_presets(tmp_path):
    config = cfg.load(write_config(tmp_path, "demo", 'CONFIG_SPARSITY_CUSTOM="0.85, 0.6,0.7"'))
    assert config.sparsities == (0.6, 0.7, 0.85, 0.9)  # the demo's presets: 70 and 90


def test_seed_count_and_list(tmp_path):
    config = cfg.load(
        write_config(tmp_path, "demo", "CONFIG_TRAIN_SEED=5", "CONFIG_MATRIX_SEED_COUNT=3")
    )
    assert config.matrix.seeds == (5, 6, 7)
    config = cfg.load(write_config(tmp_path, "demo", 'CONFIG_MATRIX_SEEDS="3,1"'))
    assert config.matrix.seeds == (3, 1)


def test_snapshot_reloads_to_the_same_config(tmp_path):
    config = cfg.load(cfg.DEFCONFIG_DIR / "resnet50-all-optimizers")
    again = cfg.load_snapshot(config.symbol_dict(), "snapshot")
    assert again == config


def test_results_dir_setting_reads_the_file_without_validating_it(tmp_path, monkeypatch):
    config = tmp_path / ".config"
    monkeypatch.setenv("KCONFIG_CONFIG", str(config))
    assert cfg.results_dir_setting() == Path("results")  # no file: the option's default
    config.write_text('CONFIG_TRAIN_EPOCHS=abc\nCONFIG_RESULTS_DIR="/data/r \\"x\\""\n')
    assert cfg.results_dir_setting() == Path('/data/r "x"')
    config.write_text('CONFIG_RESULTS_DIR=""\n')
    assert cfg.results_dir_setting() == Path("results")
    assert cfg.results_dir_setting(tmp_path / "absent") == Path("results")


def test_leftover_values_of_hidden_options_are_dropped_like_the_kernel_does(tmp_path):
    # Switched from synthetic to ImageNet by hand: the synthetic sizes are now hidden.
    path = write_config(
        tmp_path,
        "demo",
        "CONFIG_DATASET_IMAGENET=y",
        "# CONFIG_DATASET_MNIST5K is not set",
        "CONFIG_DATA_SYNTHETIC_CLASSES=10",
    )
    assert cfg.load(path).data.name == "imagenet"


def test_an_edited_derived_option_is_an_error_not_silently_ignored(tmp_path):
    path = write_config(tmp_path, "demo", 'CONFIG_ADAMWPRUNE_BASE_OPTIMIZER_NAME="adamwspam"')
    with pytest.raises(ConfigError, match="is derived from other options .*cannot be set directly"):
        cfg.load(path)


def test_olddefconfig_drops_a_hidden_y_with_a_notice_while_loading_refuses_it(tmp_path):
    import subprocess
    import sys

    path = write_config(
        tmp_path, "demo", "# CONFIG_OPTIMIZER_ADAMWPRUNE is not set", "CONFIG_PRUNING_STATE=y"
    )
    with pytest.raises(ConfigError, match="CONFIG_PRUNING_STATE=y has no effect"):
        cfg.load(path)
    res = subprocess.run(
        [sys.executable, "-m", "lib.cli", "olddefconfig"],
        cwd=cfg.ROOT,
        env={**__import__("os").environ, "KCONFIG_CONFIG": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "note:" in res.stderr and "CONFIG_PRUNING_STATE" in res.stderr
    assert "CONFIG_PRUNING_STATE=y" not in path.read_text()
    assert cfg.load(path).pruning_methods == ("none", "magnitude")


def test_decode_path_is_read_into_the_spec_and_is_part_of_identity(tmp_path):
    import dataclasses

    default = cfg.load(cfg.DEFCONFIG_DIR / "resnet50-adamwprune")
    assert default.data.decode == "pil"  # existing ImageNet runs keep their identity
    chosen = write_config(
        tmp_path,
        "resnet50-adamwprune",
        "# CONFIG_DATA_DECODE_PIL is not set",
        "CONFIG_DATA_DECODE_UINT8=y",
    )
    config = cfg.load(chosen)
    assert config.data.decode == "uint8"
    spec = plan(config)[0]
    pil = dataclasses.replace(spec, data=dataclasses.replace(spec.data, decode="pil"))
    assert spec.identity()["data"]["decode"] == "uint8"
    assert spec.identity() != pil.identity()  # the crops' arithmetic differs: another run
    recorded = pil.identity()
    del recorded["data"]["decode"]  # an identity written before the option existed
    assert type(spec).recorded_identity(recorded) == pil.identity()


def test_any_torchvision_model_by_name_is_read_into_the_spec(tmp_path):
    path = write_config(
        tmp_path,
        "demo",
        "# CONFIG_MODEL_RESNET18 is not set",
        "CONFIG_MODEL_TORCHVISION=y",
        'CONFIG_MODEL_TORCHVISION_NAME="vit_b_16"',
        "CONFIG_DATA_IMAGE_SIZE=32",
    )
    config = cfg.load(path)
    assert config.model.name == "vit_b_16" and config.model.stem == "imagenet"
    assert all(spec.run_id.startswith("vit_b_16_") for spec in plan(config))


@pytest.mark.parametrize(
    ("lines", "symbol", "words"),
    [
        (['CONFIG_MODEL_TORCHVISION_NAME="resnet51"'], "CONFIG_MODEL_TORCHVISION_NAME='resnet51'",
         "close: resnet50"),
        (['CONFIG_MODEL_TORCHVISION_NAME="vit_b_16"', "CONFIG_DATA_IMAGE_SIZE=36"],
         "CONFIG_DATA_IMAGE_SIZE='36'", "indivisible by patch size"),
        (['CONFIG_MODEL_TORCHVISION_NAME="convnext_tiny"', "CONFIG_MODEL_STEM_CIFAR=y",
          "# CONFIG_MODEL_STEM_IMAGENET is not set"], "CONFIG_MODEL_STEM_CIFAR='y'",
         "the ImageNet stem for convnext_tiny"),
    ],
)  # fmt: skip
def test_a_model_by_name_that_cannot_run_is_one_line_before_any_run(tmp_path, lines, symbol, words):
    path = write_config(
        tmp_path, "demo", "# CONFIG_MODEL_RESNET18 is not set", "CONFIG_MODEL_TORCHVISION=y", *lines
    )
    with pytest.raises(ConfigError) as err:
        cfg.load(path)
    message = str(err.value)
    assert "\n" not in message and symbol in message and words in message


def test_per_epoch_cosine_is_a_schedule_choice(tmp_path):
    path = write_config(
        tmp_path,
        "demo",
        "# CONFIG_LR_SCHEDULE_COSINE is not set",
        "CONFIG_LR_SCHEDULE_COSINE_EPOCH=y",
    )
    config = cfg.load(path)
    assert config.train.lr_schedule == "cosine_epoch"
    assert all(spec.train.lr_schedule == "cosine_epoch" for spec in plan(config))
    assert cfg.load(write_config(tmp_path, "demo")).train.lr_schedule == "cosine"


def test_the_later_of_two_choice_alternatives_wins_with_a_note(tmp_path, capsys):
    # As the kernel's tools do: a line appended to a .config overrides the choice above it.
    path = write_config(
        tmp_path, "demo", "CONFIG_MATRIX_EXECUTOR_LOCAL=y", "CONFIG_MATRIX_EXECUTOR_SLURM=y"
    )
    assert cfg.load(path).matrix.executor == "slurm"
    err = capsys.readouterr().err
    assert (
        "CONFIG_MATRIX_EXECUTOR_LOCAL, CONFIG_MATRIX_EXECUTOR_SLURM are alternatives of one "
        "choice; the later assignment, CONFIG_MATRIX_EXECUTOR_SLURM=y, wins"
    ) in err


def _documented_recipe() -> list[str]:
    """The shell lines of docs/cluster.md that switch a .config to the Slurm executor."""
    text = (cfg.ROOT / "docs" / "cluster.md").read_text()
    blocks = text.split("```sh\n")[1:]
    block = next(b.split("```")[0] for b in blocks if "CONFIG_MATRIX_EXECUTOR_SLURM=y" in b)
    return [line for line in block.splitlines() if line.strip()]


def test_the_cluster_docs_recipe_works_as_written(tmp_path):
    import os
    import subprocess
    import sys

    recipe = _documented_recipe()
    assert recipe[-1] == "make olddefconfig"
    for name in ("Makefile", "defconfigs", "pyproject.toml"):
        (tmp_path / name).symlink_to(cfg.ROOT / name)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL")}
    env.pop("KCONFIG_CONFIG", None)
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    make = ["make", "--no-print-directory", "-s", f"PY={sys.executable}", "SETUP_STAMP="]
    res = subprocess.run([*make, "defconfig-resnet50-adamwprune"], **run)
    assert res.returncode == 0, res.stderr
    for line in recipe:  # as written: the shell runs the printf, make runs make
        command = (
            line.replace("make ", " ".join(make) + " ", 1) if line.startswith("make ") else line
        )
        res = subprocess.run(["bash", "-c", command], **run)
        assert res.returncode == 0, (line, res.stderr)
    config = cfg.load(tmp_path / ".config")
    assert config.matrix.executor == "slurm"
    assert config.matrix.slurm.partition == "gpu"


def test_olddefconfig_recomputes_a_derived_option_left_by_an_edited_choice(
    tmp_path, capsys, monkeypatch
):
    from lib import cli

    # A .config as write_config leaves it (the derived name "adamw" written out), whose base
    # optimizer choice was then edited by hand.
    path = tmp_path / ".config"
    kconf = cfg.load_kconfig_with(cfg.DEFCONFIG_DIR / "resnet50-adamwprune")
    kconf.write_config(str(path))
    text = path.read_text()
    assert 'CONFIG_ADAMWPRUNE_BASE_OPTIMIZER_NAME="adamw"' in text
    path.write_text(
        text.replace("CONFIG_ADAMWPRUNE_BASE_ADAMW=y", "CONFIG_ADAMWPRUNE_BASE_ADAMWSPAM=y")
    )
    with pytest.raises(ConfigError, match="make olddefconfig recomputes it"):
        cfg.load(path)  # training would not use what the file says
    monkeypatch.setenv("KCONFIG_CONFIG", str(path))
    assert cli.main(["olddefconfig"]) == 0
    assert "CONFIG_ADAMWPRUNE_BASE_OPTIMIZER_NAME='adamw' is derived" in capsys.readouterr().err
    assert 'CONFIG_ADAMWPRUNE_BASE_OPTIMIZER_NAME="adamwspam"' in path.read_text()
    adamwprune = [o for o in cfg.load(path).optimizers if o.name == "adamwprune"]
    assert adamwprune and adamwprune[0].prune_base == "adamwspam"


def test_counts_of_one_are_singular(tmp_path, capsys, monkeypatch):
    from lib import cli
    from lib.text import count

    assert [count(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    path = write_config(
        tmp_path,
        "demo",
        "# CONFIG_PRUNING_MAGNITUDE is not set",
        "# CONFIG_OPTIMIZER_ADAMWPRUNE is not set",
        "CONFIG_TRAIN_EPOCHS=1",
        "CONFIG_MATRIX_SEED_COUNT=1",
        f'CONFIG_RESULTS_DIR="{tmp_path / "results"}"',
    )
    monkeypatch.setenv("KCONFIG_CONFIG", str(path))
    assert cli.main(["check-config"]) == 0
    assert "(1 run planned for matrix 'demo')" in capsys.readouterr().out
    assert cli.main(["dry-run"]) == 0
    out = capsys.readouterr().out
    assert "  1 epoch  pending" in out and "\n1 run: 1 pending\n" in out
    assert " 1 runs" not in out and " 1 epochs" not in out
