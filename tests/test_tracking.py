"""Live tracking sinks: what TensorBoard, W&B (offline) and trackio hold after a run, read back
with each library's own reader, must be what metrics.json says; resuming continues the same
tracker run without duplicated or missing steps; a failing tracker changes nothing else."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_config import write_config
from test_train import comparable

import lib.tracking
import lib.train
from lib import cli
from lib.config import ConfigError
from lib.metrics import read_metrics
from lib.spec import TrackingSpec
from lib.tracking import EPOCH_SCALARS, STATE_FILE, Tracker, layer_key, read_state
from lib.train import METRICS_FILE, RunInterrupted, train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ALL_SINKS = {"tensorboard": True, "wandb": True, "trackio": True}
# 2 epochs x 4 steps, pruned to 50% within epoch 1 (per-layer sparsities to compare).
OVERRIDES = {"pruning": {"method": "magnitude", "sparsity": 0.5}}
STEPS_PER_EPOCH, EPOCHS = 4, 2


@pytest.fixture(scope="module", autouse=True)
def quiet_and_offline():
    """One intra-op thread (as test_train), W&B never touches the network, and a progress
    line (so a tracker step) after every training step."""
    patch = pytest.MonkeyPatch()
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_SILENT", "true")
    patch.setattr(lib.train, "PROGRESS_SECONDS", 0.0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    patch.undo()


@pytest.fixture(scope="module")
def trackio_store(tmp_path_factory):
    """trackio reads its store directory once per process: every run here shares one."""
    return tmp_path_factory.mktemp("trackio-store")


def tracked_spec(tiny_spec, tmp_path, trackio_store, **sinks):
    spec = tiny_spec(tmp_path, **OVERRIDES)
    return dataclasses.replace(spec, tracking=TrackingSpec(**sinks, trackio_dir=str(trackio_store)))


@pytest.fixture(scope="module")
def untracked_run(tiny_spec, tmp_path_factory):
    return train(tiny_spec(tmp_path_factory.mktemp("untracked"), **OVERRIDES))


@pytest.fixture(scope="module")
def tracked_run(tiny_spec, tmp_path_factory, trackio_store):
    """One run with all three sinks on."""
    spec = tracked_spec(tiny_spec, tmp_path_factory.mktemp("tracked"), trackio_store, **ALL_SINKS)
    return spec, train(spec)


# -- each library's own reader -----------------------------------------------------------------


def tensorboard_series(spec) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(Path(spec.out_dir) / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}
    )
    events.Reload()  # applies TensorBoard's purge of steps a restarted writer rewrote
    series = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
    series.update(
        {
            tag: [(e.step, e.histogram_value.num) for e in events.Histograms(tag)]
            for tag in events.Tags()["histograms"]
        }
    )
    return series


def wandb_records(spec) -> list[dict]:
    """Every record of the run's offline .wandb files, oldest launch first, as W&B's own
    transaction-log reader (`wandb leet inspect --json`) prints them."""
    run_id = read_state(spec.out_dir)["sinks"]["wandb"]["id"]
    files = sorted(
        (Path(spec.out_dir) / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    )
    assert files, "no offline W&B run files"
    records = []
    for path in files:
        out = subprocess.run(
            [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        records += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return records


def wandb_series(spec) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for record in wandb_records(spec):
        if record["type"] != "history":
            continue
        step = int(record["history"]["step"]["num"])
        for key, value in record["history"]["item"].items():
            if key.endswith("._type"):  # a histogram, flattened: <key>._type, .bins, .values
                series.setdefault(key.removesuffix("._type"), []).append((step, value))
            elif not key.startswith("_") and "." not in key:
                series.setdefault(key, []).append((step, value))
    return series


def trackio_series(spec) -> dict[str, list[tuple[int, float]]]:
    from trackio.sqlite_storage import SQLiteStorage

    entry = read_state(spec.out_dir)["sinks"]["trackio"]
    series: dict[str, list[tuple[int, float]]] = {}
    for row in SQLiteStorage.get_logs(entry["project"], entry["run"], run_id=entry["id"]):
        for key, value in row.items():
            if key not in ("step", "timestamp"):
                series.setdefault(key, []).append((int(row["step"]), value))
    return series


READERS = {"tensorboard": tensorboard_series, "wandb": wandb_series, "trackio": trackio_series}
TOLERANCE = {"tensorboard": 1e-6, "wandb": 0.0, "trackio": 0.0}  # TensorBoard keeps float32


def assert_matches_metrics(series, doc, tolerance):
    """Same epochs, same values: every per-epoch scalar and per-layer sparsity of metrics.json
    at step epoch * steps_per_epoch, nothing at any other step."""
    epochs = doc["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
    ends = [e["epoch"] * STEPS_PER_EPOCH for e in epochs]
    for name in EPOCH_SCALARS:
        logged = series[f"epoch/{name}"]
        assert [step for step, _ in logged] == ends, name
        for (_, value), record in zip(logged, epochs, strict=True):
            assert value == pytest.approx(record[name], rel=tolerance, abs=tolerance), name
    for layer in epochs[0]["sparsity_per_layer"]:
        logged = series[layer_key(layer)]
        expected = [e["sparsity_per_layer"][layer] for e in epochs]
        assert [v for _, v in logged] == pytest.approx(expected, rel=tolerance, abs=tolerance)
    assert [step for step, _ in series["epoch/sparsity_per_layer"]] == ends  # the histogram


def assert_every_step_once(series):
    """The per-step series (one point per progress line) covers every step exactly once."""
    for name in ("train/loss", "train/top1", "train/lr", "train/images_per_second"):
        steps = [step for step, _ in series[name]]
        assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1)), name


# -- one tracked run ------------------------------------------------------------------------------


@pytest.mark.parametrize("sink", ["tensorboard", "wandb", "trackio"])
def test_sink_holds_what_metrics_json_holds(tracked_run, sink):
    spec, doc = tracked_run
    assert doc["summary"]["status"] == "completed"
    series = READERS[sink](spec)
    assert_matches_metrics(series, doc, TOLERANCE[sink])
    assert_every_step_once(series)


def test_tracking_does_not_change_the_results(tracked_run, untracked_run):
    assert comparable(tracked_run[1]) == comparable(untracked_run)


def test_run_config_and_tags_group_the_matrix(tracked_run):
    spec, _ = tracked_run
    run = next(r["run"] for r in wandb_records(spec) if r["type"] == "run")
    assert run["display_name"] == spec.run_id
    assert run["run_group"] == spec.matrix
    assert run["tags"] == ["adamw", "magnitude", "s50", "seed0"]
    assert run["config"]["update"]["method"] == "adamw_magnitude"
    assert run["config"]["update"]["target_sparsity"] == 0.5
    assert run["config"]["update"]["optimizer"]["lr"] == spec.optimizer.lr  # the full RunSpec

    from trackio.sqlite_storage import SQLiteStorage

    entry = read_state(spec.out_dir)["sinks"]["trackio"]
    config = SQLiteStorage.get_run_config(entry["project"], entry["run"], run_id=entry["id"])
    assert config["method"] == "adamw_magnitude" and config["_Group"] == "adamw_magnitude"
    assert config["pruning"]["sparsity"] == 0.5


# -- resuming -------------------------------------------------------------------------------------


def test_resumed_run_continues_the_same_tracker_runs_without_duplicate_steps(
    tiny_spec, tmp_path, trackio_store, monkeypatch, untracked_run
):
    spec = tracked_spec(tiny_spec, tmp_path, trackio_store, **ALL_SINKS)
    real_step = lib.train._Run.to_device
    calls = {"n": 0}

    def sigterm_at_epoch_2_step_2(self, images, targets):
        calls["n"] += 1
        if calls["n"] == STEPS_PER_EPOCH + 2 + 2:  # epoch 1: 4 train + 2 test batches
            signal.raise_signal(signal.SIGTERM)
        return real_step(self, images, targets)

    monkeypatch.setattr(lib.train._Run, "to_device", sigterm_at_epoch_2_step_2)
    with pytest.raises(RunInterrupted):
        train(spec)
    first = read_state(spec.out_dir)
    assert (first["last_epoch"], first["last_step"]) == (1, STEPS_PER_EPOCH + 2)
    monkeypatch.undo()

    doc = train(spec)  # replays epoch 2 from its first step
    assert comparable(doc) == comparable(untracked_run)
    state = read_state(spec.out_dir)
    assert state["sinks"]["wandb"]["id"] == first["sinks"]["wandb"]["id"]
    for sink, read in READERS.items():
        series = read(spec)
        assert_every_step_once(series)
        assert_matches_metrics(series, doc, TOLERANCE[sink])
    # W&B: two launches, one run id (wandb sync uploads them as one run, in order).
    runs = [r["run"] for r in wandb_records(spec) if r["type"] == "run"]
    assert len(runs) == 2 and {r["run_id"] for r in runs} == {state["sinks"]["wandb"]["id"]}
    from trackio.sqlite_storage import SQLiteStorage

    entry = state["sinks"]["trackio"]
    assert entry["id"] == first["sinks"]["trackio"]["id"]
    assert entry["id"] in {r["id"] for r in SQLiteStorage.get_run_records(entry["project"])}


def test_tensorboard_purges_steps_a_killed_process_logged_after_its_record(
    tiny_spec, tmp_path, trackio_store
):
    """SIGKILL can land after TensorBoard got a step but before tracking.json did: the next
    launch's purge_step hides the orphans, so no step shows twice."""
    spec = tracked_spec(tiny_spec, tmp_path, trackio_store, tensorboard=True)
    tracker = Tracker.start(spec, steps_per_epoch=STEPS_PER_EPOCH, finished_epochs=[])
    for step in (1, 2, 3):
        tracker.progress(step, loss=9.0, top1=0.0, lr=0.1, images_per_second=1.0)
    state = read_state(spec.out_dir)
    tracker.sinks[0].writer.add_scalar("train/loss", 9.0, 4)  # reached the file, not the record
    tracker.finish()
    assert state["last_step"] == 3

    tracker = Tracker.start(spec, steps_per_epoch=STEPS_PER_EPOCH, finished_epochs=[])
    for step in (3, 4, 5):  # 3 is skipped: already logged
        tracker.progress(step, loss=1.0, top1=0.0, lr=0.1, images_per_second=1.0)
    tracker.finish()
    loss = tensorboard_series(spec)["train/loss"]
    assert loss == [(1, 9.0), (2, 9.0), (3, 9.0), (4, 1.0), (5, 1.0)]


# -- failures -------------------------------------------------------------------------------------


class Broken(Exception):
    pass


class FailsToOpen(lib.tracking.Sink):
    name = "tensorboard"

    def open(self, entry, last_step):
        raise Broken("cannot open")

    def log(self, step, scalars, histograms):
        raise AssertionError("never opened, never called")


class FailsOnEveryCall(lib.tracking.Sink):
    name = "wandb"
    opened = 0

    def open(self, entry, last_step):
        FailsOnEveryCall.opened += 1
        return {"dir": "nowhere"}

    def log(self, step, scalars, histograms):
        raise OSError(28, "No space left on device")

    def flush(self):
        raise OSError(28, "No space left on device")

    def close(self, status):
        raise OSError(28, "No space left on device")


def test_failing_trackers_warn_once_each_and_change_nothing(
    tiny_spec, tmp_path, trackio_store, monkeypatch, capsys, untracked_run
):
    monkeypatch.setitem(lib.tracking.SINKS, "tensorboard", FailsToOpen)
    monkeypatch.setitem(lib.tracking.SINKS, "wandb", FailsOnEveryCall)
    monkeypatch.setitem(sys.modules, "trackio", None)  # not installed: the import fails
    spec = tracked_spec(tiny_spec, tmp_path, trackio_store, **ALL_SINKS)
    doc = train(spec)
    assert doc["summary"]["status"] == "completed"
    assert comparable(doc) == comparable(untracked_run)
    assert comparable(read_metrics(Path(spec.out_dir) / METRICS_FILE)) == comparable(untracked_run)
    assert FailsOnEveryCall.opened == 1
    warnings = [
        line for line in capsys.readouterr().out.splitlines() if "warning: tracking" in line
    ]
    assert len(warnings) == 3, warnings
    assert any("tensorboard turned off" in w and "Broken: cannot open" in w for w in warnings)
    assert any("wandb turned off" in w and "No space left on device" in w for w in warnings)
    assert any("trackio turned off" in w and "ModuleNotFoundError" in w for w in warnings), warnings


def test_only_rank_0_tracks(tiny_spec, tmp_path, trackio_store, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    spec = tracked_spec(tiny_spec, tmp_path, trackio_store, tensorboard=True)
    tracker = Tracker.start(spec, steps_per_epoch=1, finished_epochs=[])
    assert tracker.sinks == []
    assert not (Path(spec.out_dir) / STATE_FILE).exists()
    assert not (Path(spec.out_dir) / "tensorboard").exists()


# -- configuration --------------------------------------------------------------------------------


def test_tracking_menu_reads_into_every_runs_spec(tmp_path):
    from lib import config as cfg
    from lib.matrix import plan

    path = write_config(
        tmp_path,
        "demo",
        "CONFIG_TRACKING_TENSORBOARD=y",
        "CONFIG_TRACKING_WANDB=y",
        'CONFIG_TRACKING_WANDB_ENTITY="lab"',
        "CONFIG_TRACKING_TRACKIO=y",
    )
    specs = plan(cfg.load(path))
    assert {s.tracking for s in specs} == {
        TrackingSpec(
            tensorboard=True, wandb=True, wandb_entity="lab", wandb_mode="offline", trackio=True
        )
    }
    untracked = plan(cfg.load(write_config(tmp_path, "demo")))
    assert all(s.tracking == TrackingSpec() for s in untracked)
    # Not part of what is trained: turning tracking on marks no finished run CHANGED.
    assert [s.identity() for s in specs] == [s.identity() for s in untracked]
    # run.json written before tracking existed still loads.
    old = specs[0].to_dict()
    del old["tracking"]
    assert type(specs[0]).from_dict(old).tracking == TrackingSpec()


def test_bad_tracker_project_name_is_one_config_error(tmp_path):
    from lib import config as cfg

    path = write_config(
        tmp_path, "demo", "CONFIG_TRACKING_WANDB=y", 'CONFIG_TRACKING_WANDB_PROJECT="my project"'
    )
    with pytest.raises(ConfigError, match="CONFIG_TRACKING_WANDB_PROJECT='my project' is invalid"):
        cfg.load(path)


def test_tracker_not_installed_stops_the_matrix_before_any_run(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    path = write_config(
        tmp_path, "demo", f'CONFIG_RESULTS_DIR="{results}"', "CONFIG_TRACKING_WANDB=y"
    )
    monkeypatch.setenv("KCONFIG_CONFIG", str(path))
    real_find_spec = lib.tracking.importlib.util.find_spec
    monkeypatch.setattr(
        lib.tracking.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a),
    )
    assert cli.main(["test-matrix"]) == cli.EXIT_USAGE
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "CONFIG_TRACKING_WANDB=y" in error[0] and "pip install -e '.[wandb]'" in error[0]
    assert not results.exists()  # nothing launched


def test_wandb_online_without_a_login_stops_the_matrix_before_any_run(
    tmp_path, monkeypatch, capsys
):
    """No WANDB_API_KEY, no ~/.netrc, no settings: wandb itself finds no credentials."""
    results = tmp_path / "results"
    online = ("CONFIG_TRACKING_WANDB=y", "CONFIG_TRACKING_WANDB_MODE_ONLINE=y")
    path = write_config(tmp_path, "demo", f'CONFIG_RESULTS_DIR="{results}"', *online)
    monkeypatch.setenv("KCONFIG_CONFIG", str(path))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["test-matrix"]) == cli.EXIT_USAGE
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "CONFIG_TRACKING_WANDB_MODE_ONLINE=y" in error[0] and "wandb login" in error[0]
    assert not results.exists()  # nothing launched

    # Each check in a fresh process: wandb keeps what it found in the process's session.
    def refused(config_path, **env) -> bool:
        code = (
            "import sys; from lib import config as cfg; from lib.matrix import plan; "
            "from lib.tracking import wandb_login_message; "
            "print(wandb_login_message(plan(cfg.load(sys.argv[1]))) is not None)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(config_path)],
            cwd=Path(lib.tracking.__file__).parents[1],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip() == "True"

    assert refused(path)
    netrc = home / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    netrc.chmod(0o600)
    assert not refused(path, WANDB_BASE_URL="https://api.wandb.ai")  # wandb login's own file
    netrc.unlink()
    assert not refused(path, WANDB_API_KEY="b" * 40)
    offline = write_config(tmp_path, "demo", "CONFIG_TRACKING_WANDB=y")
    assert not refused(offline)  # offline needs no login


# -- the report's links ---------------------------------------------------------------------------


def test_report_links_each_run_to_its_trackers(tmp_path):
    from report_helpers import CAND_50, FakeRun, write_matrix

    from lib.metrics import atomic_write_json
    from scripts.report.data import load_matrix
    from scripts.report.output import write_report

    runs = [FakeRun("adamwprune", "state", 0.5, seed, CAND_50) for seed in (0, 1)]
    matrix = write_matrix(tmp_path, "watched", runs, baseline="", plots=[])
    assert "## Live Tracking" not in write_report(matrix).read_text()  # nothing tracked

    tracked, untracked = (r.run_id for r in load_matrix(matrix).runs)
    state = {
        "sinks": {
            "tensorboard": {"dir": str(matrix / tracked / "tensorboard")},
            "wandb": {"id": "ab12cd34", "mode": "offline", "dir": str(matrix / tracked / "wandb")},
            "trackio": {"project": "watched", "run": tracked, "id": "f00"},
        }
    }
    atomic_write_json(matrix / tracked / STATE_FILE, state)
    text = write_report(matrix).read_text()
    section = text[text.index("## Live Tracking") : text.index("## Technical Details")]
    assert f"`tensorboard --logdir {matrix}`" in section
    assert f"`wandb sync {matrix}/*/wandb`" in section
    assert "`trackio show --project watched`" in section
    row = next(line for line in section.splitlines() if line.startswith(f"| `{tracked}`"))
    assert f"[{tracked}/tensorboard]({tracked}/tensorboard)" in row  # relative to report.md
    assert f"offline run `ab12cd34` in [{tracked}/wandb]({tracked}/wandb)" in row
    assert f"project `watched`, run `{tracked}`" in row
    assert untracked not in section  # only runs that logged somewhere


def test_run_restarting_behind_its_trackers_starts_them_again(tiny_spec, tmp_path, trackio_store):
    """Checkpoint moved aside (or none kept): the run trains epoch 1 again, so the trackers
    must not keep the old attempt's epoch 2 nor skip the new attempt's steps."""
    spec = tracked_spec(tiny_spec, tmp_path, trackio_store, tensorboard=True, trackio=True)
    per_layer = {"conv1.weight": 0.5}
    old = [{"epoch": e, "test_top1": 10.0 * e, "sparsity_per_layer": per_layer} for e in (1, 2)]
    tracker = Tracker.start(spec, steps_per_epoch=STEPS_PER_EPOCH, finished_epochs=[])
    for record in old:
        tracker.epoch(record)
    tracker.finish()
    first = read_state(spec.out_dir)

    new = {"epoch": 1, "test_top1": 55.0, "sparsity_per_layer": per_layer}
    tracker = Tracker.start(spec, steps_per_epoch=STEPS_PER_EPOCH, finished_epochs=[new])
    tracker.progress(STEPS_PER_EPOCH + 1, loss=1.0, top1=50.0, lr=0.1, images_per_second=1.0)
    tracker.finish()
    state = read_state(spec.out_dir)
    assert (state["last_epoch"], state["last_step"]) == (1, STEPS_PER_EPOCH + 1)
    assert state["sinks"]["trackio"]["id"] != first["sinks"]["trackio"]["id"]  # a new run
    for read in (tensorboard_series, trackio_series):
        series = read(spec)
        assert series["epoch/test_top1"] == [(STEPS_PER_EPOCH, 55.0)]
        assert series["train/loss"] == [(STEPS_PER_EPOCH + 1, 1.0)]


def test_tracker_turned_on_later_gets_the_epochs_the_others_already_have(
    tiny_spec, tmp_path, trackio_store
):
    spec = tracked_spec(tiny_spec, tmp_path, trackio_store, tensorboard=True)
    records = [{"epoch": e, "test_top1": 10.0 * e, "sparsity_per_layer": {}} for e in (1, 2)]
    tracker = Tracker.start(spec, steps_per_epoch=STEPS_PER_EPOCH, finished_epochs=[])
    tracker.epoch(records[0])
    tracker.finish()

    spec = dataclasses.replace(spec, tracking=dataclasses.replace(spec.tracking, trackio=True))
    tracker = Tracker.start(spec, steps_per_epoch=STEPS_PER_EPOCH, finished_epochs=records[:1])
    tracker.epoch(records[1])
    tracker.finish()
    expected = [(STEPS_PER_EPOCH, 10.0), (2 * STEPS_PER_EPOCH, 20.0)]
    assert tensorboard_series(spec)["epoch/test_top1"] == expected  # epoch 1 not twice
    assert trackio_series(spec)["epoch/test_top1"] == expected  # epoch 1 caught up
