"""Methods as plug-ins (lib/catalogue.py, docs/plugins.md): an installed distribution adds an
optimizer or a pruning method through an entry point, with no file of the project edited; a
broken one is one line naming its distribution and entry point, and the built-ins keep working.

The distributions here are installed the way pip leaves them (a `*.dist-info` directory with
`entry_points.txt` beside the package) into a temporary directory on sys.path.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib import catalogue
from lib import config as cfg
from lib.catalogue import PluginError
from lib.cli import main as cli_main
from lib.config import ConfigError
from lib.errors import one_line
from lib.matrix import plan
from lib.pruning import measure_sparsity
from lib.spec import RunSpec
from optimizers import build_optimizer
from scripts.report.data import method_display_name

ROOT = Path(__file__).resolve().parent.parent

OPTIMIZER_FRAGMENT = """\
config OPTIMIZER_{NAME}
\tbool "{display} (plug-in)"
\tdefault n
\tselect OPTIMIZER_TAKES_PRUNING
\thelp
\t  A test optimizer.

menu "{display}"
\tdepends on OPTIMIZER_{NAME}

config {NAME}_LR
\tstring "Learning rate"
\tdefault "0.05"

config {NAME}_STEPS
\tint "Some integer"
\tdefault 3

config {NAME}_NESTEROV
\tbool "Nesterov"
\tdefault y

endmenu
"""

OPTIMIZER_MODULE = """\
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lib.catalogue import OptimizerEntry, setting


@dataclass(frozen=True)
class Settings:
    lr: float = setting(0.05, low=0, low_open=True)
    steps: int = 3
    nesterov: bool = True


def build(ctx):
    {build}


ENTRY = OptimizerEntry(
    name="{name}",
    display="{display}",
    kconfig=Path(__file__).resolve().with_name("Kconfig"),
    settings=Settings,
    build=build,
)
"""

PRUNING_FRAGMENT = """\
config PRUNING_{NAME}
\tbool "{display} (plug-in)"
\tdepends on OPTIMIZER_TAKES_PRUNING
\tdefault n

config {NAME}_SIGN
\tint "Sign of the score"
\tdepends on PRUNING_{NAME}
\tdefault -1
"""

PRUNING_MODULE = """\
from dataclasses import dataclass
from pathlib import Path

from lib.catalogue import PruningEntry


@dataclass(frozen=True)
class Settings:
    sign: int = -1


def score(weight, state, settings):
    # sign -1 prunes the largest weights first: the opposite of magnitude pruning.
    return settings.sign * weight.abs()


ENTRY = PruningEntry(
    name="{name}",
    display="{display}",
    kconfig=Path(__file__).resolve().with_name("Kconfig"),
    score=score,
    settings=Settings,
)
"""

SGD_BUILD = "return ctx.make(torch.optim.SGD, ctx.groups(0.0), lr=ctx.settings.lr, momentum=0.9)"


def install(
    site: Path,
    dist: str,
    name: str,
    *,
    group: str = catalogue.OPTIMIZER_GROUP,
    module: str | None = None,
    fragment: str | None = None,
    version: str = "1.0",
    display: str = "FakeOpt",
    build: str = SGD_BUILD,
) -> None:
    """A distribution `dist` whose entry point `name` in `group` loads `<package>:ENTRY`."""
    package = f"{dist.replace('-', '_')}_pkg"
    root = site / package
    root.mkdir(parents=True)
    pruning = group == catalogue.PRUNING_GROUP
    values = {"name": name, "NAME": name.upper(), "display": display, "build": build}
    module = module if module is not None else (PRUNING_MODULE if pruning else OPTIMIZER_MODULE)
    fragment = (
        fragment if fragment is not None else (PRUNING_FRAGMENT if pruning else OPTIMIZER_FRAGMENT)
    )
    (root / "__init__.py").write_text(module.format(**values))
    (root / "Kconfig").write_text(fragment.format(**values))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {package}:ENTRY\n")
    importlib.invalidate_caches()
    catalogue.reset()


TINY = """\
CONFIG_MODEL_RESNET18=y
CONFIG_MODEL_STEM_CIFAR=y
CONFIG_DATASET_SYNTHETIC=y
CONFIG_DATA_IMAGE_SIZE=8
CONFIG_DATA_SYNTHETIC_CLASSES=10
CONFIG_DATA_SYNTHETIC_TRAIN_SIZE=8
CONFIG_DATA_SYNTHETIC_VAL_SIZE=8
CONFIG_TRAIN_EPOCHS=1
CONFIG_TRAIN_BATCH_SIZE=8
CONFIG_TRAIN_DEVICE_CPU=y
CONFIG_OPTIMIZER_ADAMW=y
# CONFIG_OPTIMIZER_ADAMWPRUNE is not set
CONFIG_PRUNING_MAGNITUDE=y
# CONFIG_PRUNING_STATE is not set
# CONFIG_SPARSITY_70 is not set
# CONFIG_SPARSITY_90 is not set
CONFIG_PRUNING_START_STEP=1
CONFIG_PRUNING_END_EPOCH=1
CONFIG_PRUNING_INTERVAL=1
CONFIG_MATRIX_NAME="plug"
CONFIG_REPORT_BASELINE="adamw_magnitude"
"""


def write_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "plug.config"
    path.write_text(
        TINY + extra + f'CONFIG_RESULTS_DIR="{tmp_path}/results"\nCONFIG_DATA_DIR="{tmp_path}/d"\n'
    )
    return path


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def take_steps(model: torch.nn.Module, optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=generator)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


# --------------------------------------------------------------------------------------------
# a working plug-in


def test_a_plugin_optimizer_is_read_planned_recorded_and_labelled(site, tmp_path):
    install(site, "fake-opt", "fakeopt")
    kconf = cfg.load_kconfig()
    assert kconf.syms["OPTIMIZER_FAKEOPT"].nodes[0].prompt[0] == "FakeOpt (plug-in)"
    path = write_config(tmp_path, 'CONFIG_OPTIMIZER_FAKEOPT=y\nCONFIG_FAKEOPT_LR="0.02"\n')
    config = cfg.load(path)
    specs = plan(config)
    ids = [s.run_id for s in specs]
    assert ids == [
        "resnet18_adamw_dense_seed0",
        "resnet18_adamw_magnitude_s50_seed0",
        "resnet18_fakeopt_dense_seed0",
        "resnet18_fakeopt_magnitude_s50_seed0",
    ]
    spec = specs[-1]
    assert spec.optimizer.settings == (("lr", 0.02), ("steps", 3), ("nesterov", True))
    assert (spec.optimizer.distribution, spec.optimizer.distribution_version) == (
        "fake-opt",
        "1.0",
    )
    recorded = json.loads(spec.to_json())
    assert recorded["optimizer"] == {
        "name": "fakeopt",
        "settings": [["lr", 0.02], ["steps", 3], ["nesterov", True]],
        "distribution": "fake-opt",
        "distribution_version": "1.0",
    }
    assert RunSpec.from_json(spec.to_json()) == spec
    assert method_display_name(spec.method_key) == "FakeOpt + magnitude"

    # It trains through the shared machinery, pruning included.
    model = tiny_model()
    optimizer = build_optimizer(model, spec.optimizer, spec.pruning, steps_per_epoch=2)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.pruner is not None
    take_steps(model, optimizer, 3)
    assert measure_sparsity(model)[0] == pytest.approx(0.5, abs=0.01)
    # Its checkpoint carries the pruning state and resumes into a fresh build.
    saved = optimizer.state_dict()
    assert saved["pruning"]["step"] == 3
    resumed = build_optimizer(model, spec.optimizer, spec.pruning, steps_per_epoch=2)
    resumed.load_state_dict(saved)
    assert resumed.pruner.step == 3 and resumed.pruner.sparsity == optimizer.pruner.sparsity


def test_a_plugin_setting_out_of_range_is_one_line_naming_its_symbol(site, tmp_path):
    install(site, "fake-opt", "fakeopt")
    path = write_config(tmp_path, 'CONFIG_OPTIMIZER_FAKEOPT=y\nCONFIG_FAKEOPT_LR="-1"\n')
    with pytest.raises(ConfigError) as error:
        cfg.load(path)
    assert str(error.value) == (
        f"{path}: CONFIG_FAKEOPT_LR='-1' is invalid (accepted: a number in (0, inf))"
    )


def test_builtins_plan_the_same_run_json_with_a_plugin_installed(site):
    from tests.test_run_json_stability import RECORDED, planned_digests

    install(site, "fake-opt", "fakeopt")
    install(site, "fake-prune", "fakeprune", group=catalogue.PRUNING_GROUP, display="reverse")
    assert set(catalogue.catalogue().optimizers) >= {"fakeopt"}
    assert RECORDED, "tests/data/run_json_digests.json is missing"
    for name in RECORDED:
        assert planned_digests(name) == RECORDED[name], name


def test_a_plugin_pruning_method_scores_with_its_own_function(site, tmp_path):
    install(site, "fake-prune", "fakeprune", group=catalogue.PRUNING_GROUP, display="reverse")
    path = write_config(
        tmp_path,
        "CONFIG_OPTIMIZER_ADAMWPRUNE=y\nCONFIG_PRUNING_STATE=y\nCONFIG_PRUNING_FAKEPRUNE=y\n",
    )
    specs = plan(cfg.load(path))
    keys = [s.method_key for s in specs]
    # The generic method goes with AdamW; AdamWPrune takes only its own state pruning.
    assert "adamw_fakeprune" in keys and not any(
        k.startswith("adamwprune") and "fakeprune" in k for k in keys
    )
    spec = next(s for s in specs if s.method_key == "adamw_fakeprune")
    assert spec.pruning.distribution == "fake-prune"
    assert spec.pruning.settings == (("sign", -1),)
    assert method_display_name(spec.method_key) == "AdamW + reverse"
    model = tiny_model()
    first = model[0].weight.detach().clone()
    optimizer = build_optimizer(model, spec.optimizer, spec.pruning, steps_per_epoch=2)
    take_steps(model, optimizer, 3)
    # The largest weights of the start were pruned, not the smallest.
    pruned = model[0].weight == 0
    assert first.abs()[pruned].mean() > first.abs()[~pruned].mean()


# --------------------------------------------------------------------------------------------
# broken plug-ins


BROKEN = {
    "does not import": {"module": "import not_a_module_anywhere\n"},
    "clashes with a built-in": {"name": "adamw"},
    "fragment does not parse": {"fragment": "config OPTIMIZER_{NAME}\n\tboool 'x'\n"},
    "fragment lacks its symbol": {"fragment": "config SOMETHING_ELSE\n\tbool 'x'\n"},
    "not an entry": {"module": "ENTRY = 42\n"},
    "fragment redefines a built-in option": {
        "fragment": OPTIMIZER_FRAGMENT + "\nconfig TRAIN_EPOCHS\n\tstring 'epochs'\n"
    },
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_is_one_line_and_the_builtins_keep_working(site, tmp_path, case):
    options = dict(BROKEN[case])
    name = options.pop("name", "fakeopt")
    install(site, "broken-dist", name, **options)
    cat = catalogue.catalogue()
    reason = cat.broken[name]
    assert "\n" not in reason
    assert "distribution broken-dist 1.0" in reason
    assert f"entry point prunebench.optimizers:{name} = broken_dist_pkg:ENTRY" in reason
    assert cat.optimizers["adamw"].origin is None  # a clash never replaces the built-in

    # Not chosen: the built-ins plan as before, with a note.
    path = write_config(tmp_path, "")
    assert len(plan(cfg.load(path))) == 2

    # Chosen: one line, non-zero exit.
    if name == "fakeopt":
        chosen = write_config(tmp_path, "CONFIG_OPTIMIZER_FAKEOPT=y\n")
        with pytest.raises(ConfigError) as error:
            cfg.load(chosen)
        assert str(error.value) == f"{chosen}: CONFIG_OPTIMIZER_FAKEOPT=y cannot be used: {reason}"


def test_a_broken_plugin_is_noted_and_choosing_it_exits_non_zero(
    site, tmp_path, monkeypatch, capsys
):
    install(site, "broken-dist", "fakeopt", module="raise RuntimeError('no GPU here')\n")
    monkeypatch.setenv("KCONFIG_CONFIG", str(write_config(tmp_path, "")))
    assert cli_main(["dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "note: plug-in 'fakeopt' (distribution broken-dist 1.0, entry point "
        "prunebench.optimizers:fakeopt = broken_dist_pkg:ENTRY) does not import: "
        "RuntimeError: no GPU here; left out"
    ]
    monkeypatch.setenv(
        "KCONFIG_CONFIG", str(write_config(tmp_path, "CONFIG_OPTIMIZER_FAKEOPT=y\n"))
    )
    assert cli_main(["dry-run"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "broken-dist 1.0" in last and "does not import" in last


def test_two_plugins_with_one_name_keep_the_first_and_name_both(site):
    install(site, "first-dist", "fakeopt")
    install(site, "second-dist", "fakeopt", display="Other")
    cat = catalogue.catalogue()
    assert cat.optimizers["fakeopt"].origin.distribution == "first-dist"
    assert "second-dist" in cat.broken["fakeopt"] and "first-dist" in cat.broken["fakeopt"]


def test_a_factory_that_raises_fails_in_one_line_naming_the_plugin(site, tmp_path):
    install(site, "fake-opt", "fakeopt", build="raise ValueError('lr too large\\nsecond line')")
    spec = plan(cfg.load(write_config(tmp_path, "CONFIG_OPTIMIZER_FAKEOPT=y\n")))[-1]
    with pytest.raises(PluginError) as error:
        build_optimizer(tiny_model(), spec.optimizer, spec.pruning, steps_per_epoch=2)
    assert one_line(error.value) == (
        "plug-in optimizer 'fakeopt' (distribution fake-opt 1.0, entry point "
        "prunebench.optimizers:fakeopt = fake_opt_pkg:ENTRY) failed to build: "
        "ValueError: lr too large"
    )


def test_a_factory_that_drops_the_pruning_is_refused(site, tmp_path):
    install(site, "fake-opt", "fakeopt", build="return torch.optim.SGD(ctx.groups(0.0), lr=0.1)")
    spec = plan(cfg.load(write_config(tmp_path, "CONFIG_OPTIMIZER_FAKEOPT=y\n")))[-1]
    assert spec.pruning.enabled
    with pytest.raises(PluginError, match="dropped the run's pruning: build it with ctx.make"):
        build_optimizer(tiny_model(), spec.optimizer, spec.pruning, steps_per_epoch=2)


# --------------------------------------------------------------------------------------------
# a planned run whose plug-in changed


def _planned_matrix(tmp_path: Path) -> Path:
    from lib.runner import open_matrix

    config = cfg.load(write_config(tmp_path, "CONFIG_OPTIMIZER_FAKEOPT=y\n"))
    matrix_dir = tmp_path / "results" / "plug"
    runner = open_matrix(
        plan(config), matrix_dir, config_snapshot=config.symbol_dict(), report_settings={}
    )
    runner.write_manifest()
    runner.lock.release()
    return matrix_dir


def test_a_config_choosing_a_plugin_that_is_not_installed_says_so(tmp_path):
    path = write_config(tmp_path, "CONFIG_OPTIMIZER_LION=y\n")
    with pytest.raises(ConfigError) as error:
        cfg.load(path)
    assert str(error.value) == (
        f"{path}: CONFIG_OPTIMIZER_LION is not an option of this Kconfig (misspelt, or removed, "
        "or a plug-in method that is not installed (docs/plugins.md)): correct or delete that "
        "line (make olddefconfig deletes it)"
    )


@pytest.mark.parametrize("change", ["uninstalled", "new version"])
def test_status_and_continue_say_the_plugin_changed_since_planning(
    site, tmp_path, monkeypatch, capsys, change
):
    from lib.status import status_lines

    install(site, "fake-opt", "fakeopt")
    matrix_dir = _planned_matrix(tmp_path)
    for path in site.iterdir():
        if path.name.endswith(".dist-info"):
            if change == "uninstalled":
                for f in path.iterdir():
                    f.unlink()
                path.rmdir()
            else:
                (path / "METADATA").write_text(
                    "Metadata-Version: 2.1\nName: fake-opt\nVersion: 2.0\n"
                )
    importlib.invalidate_caches()
    catalogue.reset()
    want = (
        "which is no longer installed (pip install fake-opt==1.0)"
        if change == "uninstalled"
        else "but fake-opt 2.0 is installed now"
    )
    lines = status_lines(matrix_dir)
    plugin_lines = [line for line in lines if "fakeopt" in line.split()[0]]
    assert len(plugin_lines) == 2
    assert all("cannot resume: planned with plug-in 'fakeopt' from fake-opt 1.0" in line
               and want in line for line in plugin_lines)  # fmt: skip
    assert not any("cannot resume" in line for line in lines if "adamw" in line.split()[0])

    monkeypatch.setenv("KCONFIG_CONFIG", str(tmp_path / "plug.config"))
    assert cli_main(["continue", "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {matrix_dir / 'matrix.json'}: run ")
    assert want in err[0] and err[0].endswith("(and 1 more runs)")


# --------------------------------------------------------------------------------------------
# the shipped example, installed as a researcher would


EXAMPLE = ROOT / "examples" / "plugin-optimizer"


def _pip_install(target: Path) -> None:
    """pip install the example into `target`: without build isolation when the environment
    can build a wheel by itself (no download), else with it (pip fetches setuptools from the
    configured index)."""
    import setuptools

    offline = tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1)
    if not offline:
        offline = importlib.util.find_spec("wheel") is not None
    isolation = ["--no-build-isolation"] if offline else []
    # From a copy: pip builds in the source tree (build/, *.egg-info), which stays clean.
    source = target.parent / "plugin-optimizer"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation,
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def example_site(tmp_path, monkeypatch):
    """The example installed with pip into a fresh directory, on sys.path for this process;
    forgotten again afterwards."""
    target = tmp_path / "site"
    _pip_install(target)
    monkeypatch.syspath_prepend(str(target))
    importlib.invalidate_caches()
    catalogue.reset()
    yield target
    for module in [m for m in sys.modules if m.startswith("prunebench_lion")]:
        del sys.modules[module]
    catalogue.reset()


@pytest.mark.slow
def test_the_example_plugin_installs_trains_beside_adamw_and_is_a_report_row(
    example_site, tmp_path, monkeypatch, capsys
):
    from scripts.report.cli import main as report_main

    # The example's own tests, run against the installed distribution.
    loader = importlib.util.spec_from_file_location(
        "lion_tests", EXAMPLE / "tests" / "test_lion.py"
    )
    tests = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(tests)
    assert Path(sys.modules["prunebench_lion"].__file__).is_relative_to(example_site)
    names = [name for name in vars(tests) if name.startswith("test_")]
    assert len(names) == 3
    for name in names:
        getattr(tests, name)()
    assert catalogue.optimizer("lion").origin.distribution == "prunebench-lion"

    # The matrix through the CLI: the runner's children find the plug-in on PYTHONPATH.
    config = write_config(tmp_path, "CONFIG_OPTIMIZER_LION=y\nCONFIG_MATRIX_JOBS=2\n")
    monkeypatch.setenv("KCONFIG_CONFIG", str(config))
    assert cli_main(["dry-run"]) == 0
    planned = capsys.readouterr().out
    assert "resnet18_lion_dense_seed0" in planned and "resnet18_lion_magnitude_s50_seed0" in planned
    env = {
        **os.environ,
        "PYTHONPATH": str(example_site),
        "OMP_NUM_THREADS": "1",
        "KCONFIG_CONFIG": str(config),
    }
    matrix = subprocess.run(
        [sys.executable, "-m", "lib.cli", "test-matrix"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert matrix.returncode == 0, matrix.stdout[-2000:] + matrix.stderr[-2000:]
    assert "matrix plug: 4/4 completed" in matrix.stdout

    results = tmp_path / "results" / "plug"
    metrics = json.loads(
        (results / "resnet18_lion_magnitude_s50_seed0" / "metrics.json").read_text()
    )
    assert metrics["summary"]["status"] == "completed"
    assert metrics["identity"]["optimizer_distribution"] == "prunebench-lion 0.1.0"
    assert metrics["summary"]["final_sparsity"] == pytest.approx(0.5, abs=0.01)

    assert report_main(["--results-dir", str(tmp_path / "results"), "--matrix", "plug"]) == 0
    text = (results / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| Sparsity | "))
    assert header == (
        "| Sparsity | AdamW + magnitude | Lion + magnitude | Compression | Theoretical speedup |"
    )
    assert "  - Lion (dense) (`lion_dense`)" in text
    assert 'optimizer.distribution = "prunebench-lion"' in text
    assert 'optimizer.distribution_version = "0.1.0"' in text
