"""Live experiment tracking: TensorBoard, Weights & Biases and trackio as optional sinks.

metrics.json stays the source of truth; a tracker is a live view of the same numbers. The
training loop holds one `Tracker` and calls it at three places:

- `progress(step, ...)` at its progress lines, with the values that line has already read
  to the host (so tracking adds no device synchronisation);
- `epoch(record)` after every epoch, with the record metrics.json just got;
- `finish(status)` when the run ends, however it ends.

A sink that fails in any call (library missing, no network, bad credentials, disk error)
prints one warning line and is off for the rest of that run; the run never fails for it.
Only rank 0 of a multi-GPU run tracks.

Steps: the x-axis is the global optimizer step (1-based). Progress values are logged at the
step they were read, an epoch's record at `epoch * steps_per_epoch`.

Resuming: `tracking.json` in the run directory keeps each sink's run id and directory and the
last step and epoch that reached the sinks. A relaunched run continues the same tracker run,
skips the steps already logged (an interrupted epoch is replayed from its start), logs the
finished epochs that never reached the sinks (a tracker turned on for a half-done run gets
them too), and TensorBoard purges events that a killed process wrote after the last
recorded step (`purge_step`), so no step appears twice. A run that restarts further back
than its trackers got starts new W&B / trackio runs and purges TensorBoard from step 1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lib.errors import one_line
from lib.metrics import STATUS_FAILED, STATUS_RUNNING, atomic_write_json
from lib.spec import TRACKERS, RunSpec, sparsity_token

STATE_FILE = "tracking.json"
# What the trackers write in a run directory (TensorBoard where CONFIG_TRACKING_TENSORBOARD_DIR
# is empty; wandb's own subdirectory of dir=<run directory>).
TENSORBOARD_RUN_DIR = "tensorboard"
WANDB_RUN_DIR = "wandb"
RUN_PATHS = (STATE_FILE, TENSORBOARD_RUN_DIR, WANDB_RUN_DIR)
STATE_VERSION = 1

# Per-epoch values, named as in metrics.json's epoch records; logged as `epoch/<name>`.
EPOCH_SCALARS = (
    "train_loss",
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top5",
    "lr",
    "sparsity",
    "scheduled_sparsity",
    "images_per_second",
    "peak_memory_mb",
)
# The held-out validation split's, logged as `epoch/<name>` when the run has one.
HELD_OUT_SCALARS = ("val_loss", "val_top1", "val_top5")
# Per-step values at the progress cadence; logged as `train/<name>`.
STEP_SCALARS = ("loss", "top1", "lr", "images_per_second")
LAYER_PREFIX = "sparsity_layer/"  # one scalar per prunable layer, per epoch
LAYER_HISTOGRAM = "epoch/sparsity_per_layer"  # the same values as one histogram


def layer_key(parameter_name: str) -> str:
    """`layer1.0.conv1.weight` -> `sparsity_layer/layer1_0_conv1_weight` (W&B reads dots in
    a key as nesting)."""
    return LAYER_PREFIX + parameter_name.replace(".", "_")


# ---------------------------------------------------------------------------------------------
# Before a matrix starts
# ---------------------------------------------------------------------------------------------


def missing_libraries(specs: Iterable[RunSpec]) -> list[str]:
    """The trackers some run of `specs` wants whose library cannot be imported."""
    wanted = {name for spec in specs for name in spec.tracking.sinks}
    return [name for name in TRACKERS if name in wanted and importlib.util.find_spec(name) is None]


def missing_libraries_message(specs: Iterable[RunSpec]) -> str | None:
    """One line naming the trackers that are on but not installed, and how to fix it."""
    missing = missing_libraries(specs)
    if not missing:
        return None
    names = ", ".join(missing)
    options = ", ".join(f"CONFIG_TRACKING_{name.upper()}" for name in missing)
    extras = ",".join(missing)
    return (
        f"tracking with {names} is on ({options}=y) but {names} "
        f"{'is' if len(missing) == 1 else 'are'} not installed: "
        f".venv/bin/pip install -e '.[{extras}]', or turn it off in make menuconfig"
    )


def wandb_login_message(specs: Iterable[RunSpec]) -> str | None:
    """One line when W&B is to stream online and no W&B credentials are configured here.

    Without credentials every run's W&B sink would only warn and turn itself off, days of
    training untracked. Credentials are whatever wandb itself accepts (WANDB_API_KEY, an
    identity token file, a settings file, ~/.netrc): the environment is read first, then
    `wandb.login(prompt=False, verify=False)`, which neither prompts nor contacts the server
    when none is configured. Whether the key is valid and the server reachable is left to the
    run (its sink says so); this only catches the login that was never made.
    """
    online = any(
        "wandb" in spec.tracking.sinks and spec.tracking.wandb_mode == "online" for spec in specs
    )
    if not online or importlib.util.find_spec("wandb") is None:
        return None  # a missing library is missing_libraries_message's line
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None
    # The sink passes mode="online" to wandb.init, which overrides WANDB_MODE; wandb.login
    # would read WANDB_MODE=offline as "not logged in", so the check is made without it.
    mode = os.environ.pop("WANDB_MODE", None)
    try:
        import wandb

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            logged_in = wandb.login(prompt=False, verify=False)
    except Exception:  # noqa: BLE001 - cannot tell here: the run's sink will say what it meets
        return None
    finally:
        if mode is not None:
            os.environ["WANDB_MODE"] = mode
    if logged_in:
        return None
    return (
        "tracking with wandb is online (CONFIG_TRACKING_WANDB_MODE_ONLINE=y) but no W&B login "
        "is configured on this machine: run `wandb login` (or set WANDB_API_KEY), or choose "
        "offline in make menuconfig"
    )


# ---------------------------------------------------------------------------------------------
# Sinks: one per library, the same three calls each
# ---------------------------------------------------------------------------------------------


def run_config(spec: RunSpec) -> dict[str, Any]:
    """The tracker's config: the full RunSpec plus the two keys a matrix is grouped by."""
    target = spec.pruning.target
    return {**spec.to_dict(), "method": spec.method_key, "target_sparsity": target}


def run_tags(spec: RunSpec) -> list[str]:
    """Optimizer, pruning method, target sparsity and seed: `adamwspam magnitude s50 seed0`."""
    target = spec.pruning.target
    method = spec.pruning.active_method
    return [spec.optimizer.label, method, sparsity_token(target), f"seed{spec.seed}"]


class Sink:
    """A tracker backend. `open` returns what tracking.json keeps for it (its run id, its
    directory); `entry` is what an earlier launch of the same run kept (empty the first
    time); `last_step` is the last step that reached the sinks before."""

    name = ""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec

    def open(self, entry: dict[str, Any], last_step: int) -> dict[str, Any]:
        raise NotImplementedError

    def log(self, step: int, scalars: dict[str, float], histograms: dict[str, list[float]]):
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self, status: str) -> None:
        pass

    def where(self, entry: dict[str, Any]) -> str:
        """One line telling the user where to look."""
        return entry.get("dir", "")


class TensorBoardSink(Sink):
    name = "tensorboard"

    def log_dir(self) -> Path:
        tracking = self.spec.tracking
        if tracking.tensorboard_dir:
            return Path(tracking.tensorboard_dir) / self.spec.matrix / self.spec.run_id
        return Path(self.spec.out_dir) / TENSORBOARD_RUN_DIR

    def open(self, entry: dict[str, Any], last_step: int) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        log_dir = self.log_dir()
        # purge_step: TensorBoard drops what an earlier (killed) process wrote from this step
        # on, so the steps it logged after tracking.json was last written do not show twice.
        self.writer = SummaryWriter(
            str(log_dir), purge_step=last_step + 1 if entry else None, flush_secs=30
        )
        if not entry:
            spec = self.spec
            self.writer.add_text("config", f"```json\n{spec.to_json()}\n```", 0)
            target = spec.pruning.target
            # The HPARAMS tab lists and groups the matrix's runs by these.
            for summary in hparams(
                {
                    "method": spec.method_key,
                    "optimizer": spec.optimizer.label,
                    "pruning": spec.pruning.active_method,
                    "target_sparsity": target,
                    "seed": spec.seed,
                    "model": spec.model.name,
                    "dataset": spec.data.name,
                },
                {"epoch/test_top1": 0.0, "epoch/test_top5": 0.0, "epoch/sparsity": 0.0},
            ):
                self.writer.file_writer.add_summary(summary)
        return {"dir": str(log_dir)}

    def log(self, step, scalars, histograms):
        import numpy as np

        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        for key, values in histograms.items():
            self.writer.add_histogram(key, np.asarray(values, dtype=np.float64), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()

    def where(self, entry):
        tracking = self.spec.tracking
        matrix_dir = (
            Path(tracking.tensorboard_dir) / self.spec.matrix
            if tracking.tensorboard_dir
            else Path(self.spec.out_dir).parent
        )
        return f"{entry['dir']} (the matrix: tensorboard --logdir {matrix_dir})"


class WandbSink(Sink):
    name = "wandb"

    def open(self, entry: dict[str, Any], last_step: int) -> dict[str, Any]:
        import wandb

        tracking, spec = self.spec.tracking, self.spec
        run_id = entry.get("id") or secrets.token_hex(4)
        # Offline: each launch writes its own wandb/offline-run-*-<id> directory and
        # `wandb sync` uploads them, in order, as one run.
        self.run = wandb.init(
            project=tracking.wandb_project,
            entity=tracking.wandb_entity or None,
            id=run_id,
            name=spec.run_id,
            group=spec.matrix,
            job_type=spec.method_key,
            tags=run_tags(spec),
            config=run_config(spec),
            dir=spec.out_dir,
            mode=tracking.wandb_mode,
            resume="allow",
            settings=wandb.Settings(console="off", silent=True, init_timeout=60),
        )
        self.histogram = wandb.Histogram
        return {
            "id": run_id,
            "project": tracking.wandb_project,
            "entity": tracking.wandb_entity,
            "mode": tracking.wandb_mode,
            "dir": str(Path(spec.out_dir) / WANDB_RUN_DIR),
            "url": self.run.url if tracking.wandb_mode == "online" else None,
        }

    def log(self, step, scalars, histograms):
        data: dict[str, Any] = dict(scalars)
        data.update({key: self.histogram(values) for key, values in histograms.items()})
        self.run.log(data, step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=1 if status == STATUS_FAILED else 0)

    def where(self, entry):
        if entry.get("url"):
            return entry["url"]
        return f"run {entry['id']} offline in {entry['dir']} (upload: wandb sync {entry['dir']})"


class TrackioSink(Sink):
    name = "trackio"

    def open(self, entry: dict[str, Any], last_step: int) -> dict[str, Any]:
        tracking, spec = self.spec.tracking, self.spec
        store = Path(tracking.trackio_dir).resolve() if tracking.trackio_dir else None
        previous = os.environ.get("TRACKIO_DIR")
        if store is not None:
            os.environ["TRACKIO_DIR"] = str(store)  # trackio reads it once, on import
        try:
            import trackio
        finally:
            if store is not None:
                if previous is None:
                    os.environ.pop("TRACKIO_DIR", None)
                else:
                    os.environ["TRACKIO_DIR"] = previous
        loaded = Path(trackio.utils.TRACKIO_DIR).resolve()
        if store is not None and loaded != store:
            raise RuntimeError(f"trackio was already loaded in this process with store {loaded}")
        project = tracking.trackio_project or spec.matrix
        # A run is found again by its name; within another matrix's project it needs the
        # matrix in it to stay unique.
        name = spec.run_id if project == spec.matrix else f"{spec.matrix}-{spec.run_id}"
        with contextlib.redirect_stdout(io.StringIO()):  # its banner would fill train.log
            self.run = trackio.init(
                project=project,
                name=name,
                group=spec.method_key,
                config=run_config(spec),
                # First launch: a new run, even where an older results directory of the
                # same matrix left one of this name in the store.
                resume="allow" if entry else "never",
                embed=False,
                auto_log_cpu=False,
                auto_log_gpu=False,
            )
        self.trackio = trackio
        return {"project": project, "run": name, "id": self.run.id, "dir": str(loaded)}

    def log(self, step, scalars, histograms):
        data: dict[str, Any] = dict(scalars)
        data.update({key: self.trackio.Histogram(values) for key, values in histograms.items()})
        self.run.log(data, step=step)

    def close(self, status: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            if self.trackio.context_vars.current_run.get() is self.run:
                self.trackio.finish()  # also forgets it, or trackio finishes it again at exit
            else:
                self.run.finish()

    def where(self, entry):
        return f"project {entry['project']} run {entry['run']} (trackio show --project {entry['project']})"


SINKS: dict[str, type[Sink]] = {
    "tensorboard": TensorBoardSink,
    "wandb": WandbSink,
    "trackio": TrackioSink,
}


# ---------------------------------------------------------------------------------------------
# The training loop's handle
# ---------------------------------------------------------------------------------------------


def _is_rank_zero() -> bool:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except Exception:  # noqa: BLE001 - no usable torch.distributed: a single process
        pass
    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


def read_state(run_dir: str | os.PathLike[str], dir_fd: int | None = None) -> dict[str, Any]:
    """A run's tracking.json ({} when there is none or it cannot be read). With `dir_fd` (the
    run directory, opened by lib/store.py) it is read relative to that descriptor."""
    from lib.store import read_json_at

    path = Path(run_dir) / STATE_FILE
    try:
        state = read_json_at(dir_fd, STATE_FILE if dir_fd is not None else str(path), path)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and isinstance(state.get("sinks"), dict) else {}


class Tracker:
    """Every sink of one run. `Tracker()` is the one with none: each call returns at once."""

    def __init__(self, spec: RunSpec | None = None, steps_per_epoch: int = 1) -> None:
        self.sinks: list[Sink] = []
        self.spec = spec
        self.steps_per_epoch = steps_per_epoch
        self.state: dict[str, Any] = {}
        self.dir_fd: int | None = None  # the run directory's descriptor, when the trainer has one

    @classmethod
    def start(
        cls,
        spec: RunSpec,
        *,
        steps_per_epoch: int,
        finished_epochs: list[dict[str, Any]],
        dir_fd: int | None = None,
    ) -> Tracker:
        """Open the run's sinks (continuing their earlier runs) and log the finished epochs
        that have not reached them yet. tracking.json is read and written relative to
        `dir_fd` (the run directory the trainer opened) when given."""
        tracker = cls(spec, steps_per_epoch)
        tracker.dir_fd = dir_fd
        if not spec.tracking.sinks or not _is_rank_zero():
            return tracker
        state = read_state(spec.out_dir, dir_fd)
        state.setdefault("sinks", {})
        state.update(version=STATE_VERSION, steps_per_epoch=steps_per_epoch)
        state.setdefault("last_step", 0)
        state.setdefault("last_epoch", 0)
        if state["last_epoch"] > len(finished_epochs):
            # The run went back further than its trackers (a checkpoint moved aside, or none
            # kept): W&B and trackio cannot take steps back, so they start new runs;
            # TensorBoard purges from step 1. Every finished epoch is logged again below.
            print(
                f"tracking: the run restarts after epoch {len(finished_epochs)} but its trackers "
                f"got epoch {state['last_epoch']}: new W&B and trackio runs",
                flush=True,
            )
            state.update(last_step=0, last_epoch=0)
            for name in ("wandb", "trackio"):
                state["sinks"].pop(name, None)
        tracker.state = state
        for name in spec.tracking.sinks:
            sink = SINKS[name](spec)
            earlier = state["sinks"].get(name, {})
            try:
                entry = sink.open(earlier, state["last_step"])
                print(f"tracking: {name}: {sink.where(entry)}", flush=True)
            except Exception as error:  # noqa: BLE001 - a tracker never stops the run
                tracker._turn_off(sink, error)
                continue
            state["sinks"][name] = entry
            tracker.sinks.append(sink)
            if not earlier:  # turned on after other trackers: the epochs they already got
                for record in finished_epochs:
                    if record["epoch"] <= state["last_epoch"]:
                        tracker._call(sink, sink.log, *tracker._epoch_values(record))
        tracker._save()
        for record in finished_epochs:
            tracker.epoch(record)
        return tracker

    # -- the three calls ----------------------------------------------------------------------

    def progress(
        self, step: int, *, loss: float, top1: float, lr: float, images_per_second: float
    ) -> None:
        if not self.sinks or step <= self.state["last_step"]:
            return  # nothing on, or replaying a step an earlier launch already logged
        values = dict(zip(STEP_SCALARS, (loss, top1, lr, images_per_second), strict=True))
        self._log(step, {f"train/{k}": float(v) for k, v in values.items()}, {})
        self.state["last_step"] = step
        self._save()

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.sinks or record["epoch"] <= self.state["last_epoch"]:
            return
        step, scalars, histograms = self._epoch_values(record)
        self._log(step, scalars, histograms)
        for sink in list(self.sinks):
            self._call(sink, sink.flush)
        self.state["last_epoch"] = record["epoch"]
        self.state["last_step"] = max(self.state["last_step"], step)
        self._save()

    def _epoch_values(self, record: dict[str, Any]):
        """(step, scalars, histograms) of one epoch record."""
        scalars = {
            f"epoch/{k}": float(record[k])
            for k in (*EPOCH_SCALARS, *HELD_OUT_SCALARS)
            if record.get(k) is not None
        }
        per_layer = record.get("sparsity_per_layer") or {}
        scalars.update({layer_key(name): float(v) for name, v in per_layer.items()})
        histograms = {LAYER_HISTOGRAM: [float(v) for v in per_layer.values()]} if per_layer else {}
        return record["epoch"] * self.steps_per_epoch, scalars, histograms

    def finish(self, status: str = STATUS_RUNNING) -> None:
        for sink in self.sinks:
            try:
                sink.close(status)
            except Exception as error:  # noqa: BLE001
                print(f"warning: tracking: {sink.name} did not close cleanly ({one_line(error)})")
        self.sinks = []

    # -- failures -----------------------------------------------------------------------------

    def _log(self, step: int, scalars: dict[str, float], histograms: dict[str, list[float]]):
        for sink in list(self.sinks):
            self._call(sink, sink.log, step, scalars, histograms)

    def _call(self, sink: Sink, method, *args) -> None:
        try:
            method(*args)
        except Exception as error:  # noqa: BLE001 - a tracker never stops the run
            self._turn_off(sink, error)

    def _turn_off(self, sink: Sink, error: BaseException) -> None:
        print(
            f"warning: tracking: {sink.name} turned off for this run ({one_line(error)}); "
            "metrics.json is unaffected",
            flush=True,
        )
        if sink in self.sinks:
            self.sinks.remove(sink)
            with contextlib.suppress(Exception):
                sink.close(STATUS_FAILED)

    def _save(self) -> None:
        if not self.sinks:
            return
        try:
            atomic_write_json(Path(self.spec.out_dir) / STATE_FILE, self.state, dir_fd=self.dir_fd)
        except Exception as error:  # noqa: BLE001 - disk full, read-only: the run goes on
            # Without its record a relaunch would log steps twice: stop tracking instead.
            for sink in list(self.sinks):
                self._turn_off(sink, error)
