"""The one training loop every run uses: `train(spec) -> metrics document`.

    python -m lib.train results/<matrix>/<run-id>/run.json

Output in `spec.out_dir`:
- `metrics.json`: written atomically at the start, after every epoch and at the end.
- `checkpoint_last.pt`: after every epoch (model, optimizer incl. pruning state, LR scheduler,
  GradScaler, RNG states, epoch records). If it exists at start, the run resumes from it.
- `checkpoint_best.pt`: model weights of the selected epoch among epochs at target sparsity
  (highest held-out validation top-1 with a validation split, else highest test top-1).

The run directory is opened once (lib/store.py, never through a link) and every file above is
read and written relative to that descriptor; a run directory swapped for a link (or moved)
while the run trains stops the run with one line, nothing written through the link.

Resuming is exact (on CPU): the data order and augmentation of an epoch depend only on the run
seed and the epoch (lib.data), and every other RNG is restored from the checkpoint, so a killed
and relaunched run ends with the metrics an uninterrupted run would have had (timings aside).
Work is saved at epoch boundaries: an interrupted epoch is replayed from its start.

Exit codes of the CLI: 0 completed, 1 failed (metrics.json has status `failed` and a one-line
`error`), 2 unreadable run.json, 75 the disk is full (or over quota, or read-only: metrics.json
says `failed` with `environment_failure` where it could still be written, else `running`; the
runner relaunches it once there is room), 130 / 143 interrupted by SIGINT / SIGTERM (the run
stops at a step boundary; checkpoint and metrics.json on disk describe the last finished
epoch, status `running`; relaunching continues).

Several GPUs per run (WORLD_SIZE > 1, as torchrun sets it): `lib.distributed` joins the process
group and wraps the model in DistributedDataParallel; only rank 0 writes files
(docs/distributed.md).

The learning-rate schedule is stepped once per optimizer step (see `lr_factor`), so warmup and
cosine decay are smooth within an epoch and independent of the number of steps per epoch
(`cosine_epoch` holds each epoch's value for all its steps, as a per-epoch scheduler does).

Nothing in the step waits for the device: loss and accuracy are accumulated in device tensors
and read at epoch end and at the occasional progress line, where a non-finite loss is detected
(with the exact step it happened at) and the run stops as failed.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.atomic import (
    EXIT_ENVIRONMENT,
    StorageError,
    atomic_torch_save,
    exists_at,
    set_aside_corrupt,
    storage_error,
)
from lib.data import DataError, build_split_loaders, folder_classes
from lib.distributed import DistributedError, RunGroup
from lib.environment import capture_environment
from lib.errors import OneLineError, one_line
from lib.memory import PeakMemoryMeter
from lib.metrics import (
    METRICS_FILE,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_RUNNING,
    TIME_BUDGET_STOP,
    MetricsError,
    build_document,
    read_metrics,
    summarize,
    write_metrics_document,
)
from lib.pruning import (
    layer_macs,
    measure_sparsity,
    nonzero_cost,
    prunable_parameters,
    scheduled_sparsity,
    state_memory,
)
from lib.spec import LR_SCHEDULES, PRECISIONS, RunSpec, TrainSpec
from lib.store import (
    RUN_FILE,
    StoreError,
    open_regular,
    open_run_dir,
    read_json_path,
    same_dir,
)
from lib.tracking import Tracker
from models import build_model, count_parameters
from optimizers import build_optimizer

LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
CHECKPOINT_FORMAT = 1

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_BAD_SPEC = 2

# Seconds between in-epoch progress lines; each one reads the device once.
PROGRESS_SECONDS = 30.0


class RunError(OneLineError, RuntimeError):
    """A run that cannot start or continue as configured (one-line message)."""


class RunDirectoryMoved(RunError):
    """The run directory is no longer at its path (a link or another directory took its
    place while the run trained): the run stops without writing anything more."""


class DamagedCheckpoint(RunError):
    """checkpoint_last.pt cannot be loaded."""

    def __init__(self, path: Path, error: BaseException) -> None:
        # torch's own text runs to ~600 characters of advice; its first sentence says it all
        first = (str(error).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
        cause = f"{type(error).__name__}: {first[:100]}{'...' if len(first) > 100 else ''}"
        super().__init__(f"cannot load {path} ({cause})")
        self.path = path
        self.cause = cause


# What checkpoint_last.pt holds (save_last_checkpoint) and of which type: a file without these
# is set aside like a torn one (lib/store.py's rule for every file of a run).
CHECKPOINT_FIELDS = {
    "format": int,
    "identity": dict,
    "epochs": list,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "rng": dict,
}


def checkpoint_structure_problem(checkpoint: Any) -> str | None:
    """Why a loaded checkpoint_last.pt is not of the structure this trainer writes (naming
    the field), or None."""
    if not isinstance(checkpoint, dict):
        return f"not a checkpoint: a {type(checkpoint).__name__}, not a dict"
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        return None  # another version's: refused by its format, not set aside
    for name, kind in CHECKPOINT_FIELDS.items():
        if not isinstance(checkpoint.get(name), kind):
            return f"field '{name}' is missing or not a {kind.__name__}"
    if not all(
        isinstance(e, dict) and isinstance(e.get("epoch"), int) for e in checkpoint["epochs"]
    ):
        return "field 'epochs' holds a record that is not an epoch"
    return None


class TrainingDiverged(OneLineError, RuntimeError):
    """The loss became NaN or infinite."""

    HINT = "training diverged: lower the learning rate or enable gradient clipping"

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} ({self.HINT})")


class RunInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the run stopped at a step boundary with its state on disk."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("train device 'cuda' requested but CUDA is not available; use auto or cpu")
    if name not in ("cuda", "cpu"):
        raise RunError(f"train device {name!r} is not supported; accepted: auto, cuda, cpu")
    return torch.device(name)


def configure_determinism(deterministic: bool) -> None:
    # cuBLAS needs its workspace fixed before its first use to be deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: a few CUDA backward kernels have no deterministic version (adaptive pooling);
    # they warn instead of stopping the run. CPU training is fully deterministic.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, train: TrainSpec, steps_per_epoch: int) -> float:
    """Multiplier of the base LR for optimizer step `step` (0-based), applied per step.

    Linear warmup over `warmup_epochs` (from lr/W to lr), then
    - cosine: half-cosine from lr to 0 over the remaining steps;
    - cosine_epoch: the same half-cosine, held for each epoch: epoch e after the warmup has
      (1 + cos(pi * e / (epochs - warmup_epochs))) / 2, as CosineAnnealingLR stepped per epoch;
    - step: x`step_gamma` every `step_size` epochs counted after warmup;
    - constant: lr.
    """
    warmup_steps = train.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    after = step - warmup_steps
    if train.lr_schedule == "cosine":
        decay_steps = max(1, train.epochs * steps_per_epoch - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, after / decay_steps)))
    if train.lr_schedule == "cosine_epoch":
        decay_epochs = max(1, train.epochs - train.warmup_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (after // steps_per_epoch) / decay_epochs)))
    if train.lr_schedule == "step":
        return train.step_gamma ** ((after // steps_per_epoch) // train.step_size)
    return 1.0


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainSpec, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    if train.lr_schedule not in LR_SCHEDULES:
        raise RunError(
            f"train lr_schedule {train.lr_schedule!r} is not supported; accepted: "
            f"{', '.join(LR_SCHEDULES)}"
        )
    # A plain function (not a callable object) keeps LambdaLR's state_dict free of the TrainSpec,
    # so checkpoints stay loadable with weights_only=True; the schedule is rebuilt from the spec.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, train, steps_per_epoch)
    )


def rng_state() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [
            np_name,
            torch.from_numpy(np_keys.astype(np.int64)),
            np_pos,
            np_has_gauss,
            np_gauss,
        ],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(
        (np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss)
    )


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class _StopOnSignals:
    """Turns the first SIGINT / SIGTERM into a flag the loop checks at step boundaries.

    A second signal of the same kind gets the default behaviour (SIGINT: KeyboardInterrupt,
    SIGTERM: termination), so an impatient user or runner can still stop the process at once.
    Handlers are only installed from the main thread (Python's rule); elsewhere the flag stays
    unset and signals behave as usual.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        print(
            f"received {signal.Signals(signum).name}: stopping at the next step boundary",
            flush=True,
        )

    def check(self) -> None:
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class _Run:
    def __init__(self, spec: RunSpec, stop: _StopOnSignals, group: RunGroup, dir_fd: int) -> None:
        self.spec = spec
        self.stop = stop
        self.group = group  # the run's ranks; only rank 0 writes files
        self.out_dir = Path(spec.out_dir)
        # The run directory, opened once by train() (lib/store.py: never through a link);
        # every file of the run is read and written relative to it.
        self.dir_fd = dir_fd
        self.metrics_path = self.out_dir / METRICS_FILE
        self.last_path = self.out_dir / LAST_CHECKPOINT
        self.best_path = self.out_dir / BEST_CHECKPOINT
        self.epochs: list[dict[str, Any]] = []
        self.environment: dict[str, Any] = {}
        self.model_info: dict[str, Any] = {}
        self.state_memory: dict[str, Any] = {}
        self.tracker = Tracker()  # none until setup() opens the spec's sinks

    def here(self) -> int:
        """The run directory's descriptor, once out_dir is checked to still name it: a run
        directory swapped for a link (or moved) while the run trains stops the run, and
        nothing is written through the link (writes are relative to the descriptor anyway)."""
        if not same_dir(self.out_dir, self.dir_fd):
            raise RunDirectoryMoved(
                f"{self.out_dir} is no longer the run directory this run opened (a link or "
                "another directory took its place); stopping without writing through it"
            )
        return self.dir_fd

    # -- metrics.json ---------------------------------------------------------------------------

    def document(
        self, status: str, error: str | None = None, *, environment_failure: bool = False
    ) -> dict[str, Any]:
        return build_document(
            self.spec,
            self.epochs,
            status=status,
            error=error,
            environment=self.environment,
            model_info=self.model_info,
            state_memory=self.state_memory,
            environment_failure=environment_failure,
        )

    def write_metrics(
        self, status: str, error: str | None = None, *, environment_failure: bool = False
    ) -> dict[str, Any]:
        doc = self.document(status, error, environment_failure=environment_failure)
        if self.group.is_main:
            write_metrics_document(self.metrics_path, doc, dir_fd=self.here())
        return doc

    def fail_on_damaged_checkpoint(self, damaged: DamagedCheckpoint) -> dict[str, Any]:
        """Record the failure (so no later runner relaunches it blindly), keep the damaged file
        beside the run under another name, and say how to start the run again from scratch."""
        # Every rank finds it damaged; rank 0 moves it.
        aside = (
            set_aside_corrupt(self.last_path, dir_fd=self.here())
            if self.group.is_main
            else self.last_path
        )
        message = (
            f"{self.last_path} is damaged ({damaged.cause}); moved to {aside.name}: "
            f"make continue MATRIX={self.spec.matrix} RERUN_FAILED=1 restarts this run from "
            "epoch 1"
        )
        print(f"run failed: {message}", flush=True)
        try:  # what metrics.json recorded so far stays (train() checked that it is this run's)
            previous = read_metrics(self.metrics_path, dir_fd=self.dir_fd)
            self.epochs = list(previous["epochs"])
            self.environment = previous.get("environment") or {}
            self.model_info = previous.get("model_info") or {}
            self.state_memory = previous.get("state_memory") or {}
        except MetricsError:
            pass
        return self.write_metrics(STATUS_FAILED, message)

    def fail_on_storage(self, environment: StorageError) -> dict[str, Any]:
        """A full disk (or quota, or read-only mount): an environment failure. Recorded as such
        where it still can be; if not, metrics.json keeps status `running` of the last saved
        epoch, which the runner relaunches just the same."""
        try:
            print(f"run failed: {environment}", flush=True)
        except OSError:
            pass  # the log is on the same full disk
        try:
            return self.write_metrics(STATUS_FAILED, str(environment), environment_failure=True)
        except OSError:
            raise environment from None

    # -- lifecycle ------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        # Outside the failure handling: a checkpoint of another configuration must not get this
        # run's metrics.json written over it.
        try:
            checkpoint = self.load_last_checkpoint()
        except DamagedCheckpoint as damaged:
            return self.fail_on_damaged_checkpoint(damaged)
        if checkpoint is not None:
            self.epochs = list(checkpoint["epochs"])
        try:
            self.setup(checkpoint)
            del checkpoint  # up to a few hundred MB of host memory for the whole run
            self.loop()
        except DamagedCheckpoint as damaged:  # its state does not fit the model: set aside
            self.epochs = []
            return self.fail_on_damaged_checkpoint(damaged)
        except RunInterrupted as interrupted:
            self.write_metrics(STATUS_RUNNING)
            print(f"{interrupted}; state saved after epoch {len(self.epochs)}", flush=True)
            raise
        except RunDirectoryMoved:
            raise  # nowhere safe to record it: train()'s caller says it in one line
        except Exception as error:  # noqa: BLE001 - every failure is recorded, then reported
            if self.stop.signum is not None:
                # The signal reached the whole process group (a scheduler stopping a job) and a
                # loader worker died of it first: that is the interruption, not a failure.
                interrupted = RunInterrupted(self.stop.signum)
                self.write_metrics(STATUS_RUNNING)
                print(
                    f"{interrupted} ({one_line(error)}); state saved after epoch "
                    f"{len(self.epochs)}",
                    flush=True,
                )
                raise interrupted from error
            environment = storage_error(error, getattr(error, "filename", None) or "train.log")
            if environment is not None:
                return self.fail_on_storage(environment)
            if not isinstance(error, (DataError, RunError, TrainingDiverged, DistributedError)):
                traceback.print_exc(file=sys.stderr)
            message = one_line(error)
            print(f"run failed: {message}", flush=True)
            return self.write_metrics(STATUS_FAILED, message)
        doc = self.write_metrics(STATUS_COMPLETED)
        summary = doc["summary"]
        best = summary["best_top1"]
        print(
            f"completed {self.spec.run_id}: final top-1 {summary['final_top1']:.2f}%, best "
            + (
                f"{best:.2f}% (epoch {summary['best_epoch']}, chosen on {summary['selected_by']})"
                if best is not None
                else "n/a"
            )
            + f", total {format_duration(summary['total_seconds'])}",
            flush=True,
        )
        return doc

    def setup(self, checkpoint: dict[str, Any] | None) -> None:
        spec, train = self.spec, self.spec.train
        self.device = self.group.device(resolve_device(train.device))
        if train.precision not in PRECISIONS:
            raise RunError(
                f"train precision {train.precision!r} is not supported; accepted: "
                f"{', '.join(PRECISIONS)}"
            )
        if train.precision == "bf16" and self.device.type == "cuda":
            if not torch.cuda.is_bf16_supported():
                raise RunError("train precision 'bf16' is not supported by this GPU; use fp16")
        configure_determinism(train.deterministic)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = train.tf32
        self.environment = capture_environment(self.device)
        self.write_metrics(STATUS_RUNNING)

        # Your own ImageFolder: classes from its folders (names recorded in metrics.json).
        class_names = folder_classes(spec.data) if spec.data.name == "imagefolder" else None
        num_classes = len(class_names) if class_names else spec.data.num_classes
        seed_everything(spec.seed)
        self.model = build_model(spec.model, num_classes, spec.data.image_size)
        parameters = count_parameters(self.model)
        # What pruning buys is counted against this: each weight's MACs on one image.
        self.macs = layer_macs(self.model, spec.data.image_size)
        print(
            f"run {spec.run_id}: {spec.model.name} ({spec.model.stem} stem, {num_classes} "
            f"classes), {parameters:,} parameters, {spec.data.name} {spec.data.image_size}px, "
            f"{spec.optimizer.label}, pruning {spec.pruning.method} "
            f"{spec.pruning.sparsity:g}, seed {spec.seed}, device {self.device} "
            f"({self.environment['device_name']})",
            flush=True,
        )
        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format)

        self.model = self.group.prepare(self.model, train)
        self.train_loader, self.val_loader, self.test_loader = build_split_loaders(
            spec, self.device, self.group.rank, self.group.world
        )
        full_steps = len(self.train_loader)
        cap = train.max_steps_per_epoch
        self.steps_per_epoch = min(full_steps, cap) if cap > 0 else full_steps
        self.eval_steps = min(len(self.test_loader), cap) if cap > 0 else len(self.test_loader)
        if self.val_loader is not None:
            full_val = len(self.val_loader)
            self.val_steps = min(full_val, cap) if cap > 0 else full_val
        if self.steps_per_epoch < 1:
            raise RunError(f"{spec.data.name}: the training set is empty")
        if self.eval_steps < len(self.test_loader):
            print(
                f"note: CONFIG_TRAIN_MAX_STEPS_PER_EPOCH={cap} caps evaluation too: "
                f"{self.eval_steps} of {len(self.test_loader)} test batches per epoch",
                flush=True,
            )
        if self.val_loader is not None and self.val_steps < len(self.val_loader):
            print(
                f"note: CONFIG_TRAIN_MAX_STEPS_PER_EPOCH={cap} caps validation too: "
                f"{self.val_steps} of {len(self.val_loader)} validation batches per epoch",
                flush=True,
            )

        self.optimizer = build_optimizer(
            self.model,
            spec.optimizer,
            spec.pruning,
            steps_per_epoch=self.steps_per_epoch,
            keep_ends_dense=spec.model.keep_ends_dense,
            compiled=train.compile,
        )
        self.scheduler = build_lr_scheduler(self.optimizer, train, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=train.precision == "fp16")
        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.precision)
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=autocast_dtype))
            if autocast_dtype is not None
            else nullcontext
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
        self.meter = PeakMemoryMeter(self.device)

        prunable = prunable_parameters(self.model, spec.model.keep_ends_dense)
        self.model_info = {
            "parameters": parameters,
            "prunable_parameters": sum(p.numel() for _, p in prunable),
            "steps_per_epoch": self.steps_per_epoch,
            "train_images": self.train_loader.num_samples,
            "test_images": self.test_loader.num_samples,
            "num_classes": num_classes,
            "parameters_total": sum(p.numel() for p in self.model.parameters()),
            "macs_dense": sum(self.macs.values()),
        }
        if self.val_loader is not None:  # the held-out part of the training set
            self.model_info["val_images"] = self.val_loader.num_samples
        if class_names is not None:
            self.model_info["class_names"] = class_names
        if checkpoint is not None:
            try:  # a state of the right keys but the wrong shapes is as damaged as a torn file
                self.model.load_state_dict(checkpoint["model"])
                self.optimizer.load_state_dict(checkpoint["optimizer"])
                self.scheduler.load_state_dict(checkpoint["scheduler"])
                self.scaler.load_state_dict(checkpoint["scaler"])
                set_rng_state(checkpoint["rng"])
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
                raise DamagedCheckpoint(self.last_path, e) from None
            # Measured from the restored state, so a metrics.json rebuilt from the checkpoint
            # of a finished run (no epoch left to train) keeps its memory figures.
            self.state_memory = state_memory(self.optimizer, self.model, spec.model.keep_ends_dense)
            print(f"resumed from {self.last_path} after epoch {len(self.epochs)}", flush=True)
        self.forward_model = torch.compile(self.model) if train.compile else self.model
        self.train_model = self.forward_model  # the training step's module: DDP on several GPUs
        if self.group.distributed:
            ddp = self.group.wrap(self.model, self.device)
            self.train_model = torch.compile(ddp) if train.compile else ddp
        self.tracker = Tracker.start(
            spec,
            steps_per_epoch=self.steps_per_epoch,
            finished_epochs=self.epochs,
            dir_fd=self.here() if self.group.is_main else self.dir_fd,
        )
        self.write_metrics(STATUS_RUNNING)

    def load_last_checkpoint(self) -> dict[str, Any] | None:
        try:  # relative to the run directory, never through a link (lib/store.py)
            fd = open_regular(LAST_CHECKPOINT, self.dir_fd, self.last_path)
        except FileNotFoundError:
            return None
        except StoreError as e:  # a link, a FIFO, a directory: set aside like a torn file
            raise DamagedCheckpoint(self.last_path, e) from None
        try:
            with os.fdopen(fd, "rb") as f:
                checkpoint = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a torn/foreign file must not be trained on
            raise DamagedCheckpoint(self.last_path, e) from None
        problem = checkpoint_structure_problem(checkpoint)
        if problem is not None:  # loadable, but not what save_last_checkpoint writes
            raise DamagedCheckpoint(self.last_path, ValueError(problem))
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise RunError(
                f"{self.last_path} has checkpoint format {checkpoint.get('format')!r}, "
                f"expected {CHECKPOINT_FORMAT}"
            )
        if RunSpec.recorded_identity(checkpoint["identity"]) != self.spec.identity():
            raise RunError(
                f"{self.last_path} belongs to a different configuration than {self.spec.run_id}; "
                "move it away or use another results directory"
            )
        return checkpoint

    def save_last_checkpoint(self) -> None:
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "identity": self.spec.identity(),
                "epoch": len(self.epochs),
                "epochs": self.epochs,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(),
            },
            self.last_path,
            dir_fd=self.here(),
        )

    def save_best_checkpoint(self, record: dict[str, Any]) -> None:
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "identity": self.spec.identity(),
                "epoch": record["epoch"],
                "record": record,
                "model": self.model.state_dict(),
            },
            self.best_path,
            dir_fd=self.here(),
        )

    # -- epochs ---------------------------------------------------------------------------------

    def loop(self) -> None:
        spec = self.spec
        total_epochs = spec.train.epochs
        budget = spec.train.time_budget_seconds
        launch_seconds: list[float] = []
        if any(rec.get(TIME_BUDGET_STOP) for rec in self.epochs):
            return  # resumed after the budget ran out: the run is finished
        for epoch in range(len(self.epochs) + 1, total_epochs + 1):
            self.stop.check()
            self.meter.reset()
            started = time.perf_counter()
            # Training time left (the finished epochs' training seconds count against it).
            trained = sum(rec["train_seconds"] for rec in self.epochs)
            deadline = started + budget - trained if budget > 0 else None
            train_stats = self.train_one_epoch(epoch, deadline)
            train_seconds = time.perf_counter() - started
            rank_images = train_stats.pop("rank_images")
            if self.val_loader is not None:
                train_stats.update(self.evaluate(epoch, self.val_loader, self.val_steps, "val"))
            test_stats = self.evaluate(epoch, self.test_loader, self.eval_steps, "test")
            epoch_seconds = time.perf_counter() - started
            sparsity, per_layer = measure_sparsity(self.model, spec.model.keep_ends_dense)
            record = {
                "epoch": epoch,
                **train_stats,
                **test_stats,
                "sparsity": sparsity,
                "sparsity_per_layer": per_layer,
                **nonzero_cost(self.model, self.macs),
                "scheduled_sparsity": scheduled_sparsity(self.optimizer),
                # measured: to the millisecond and the tenth of an image per second
                "epoch_seconds": round(epoch_seconds, 3),
                "train_seconds": round(train_seconds, 3),
                "images_per_second": round(train_stats["train_images"] / train_seconds, 1),
                **self.group.epoch_resources(rank_images, train_seconds, self.meter.read()),
            }
            self.epochs.append(record)
            self.state_memory = state_memory(self.optimizer, self.model, spec.model.keep_ends_dense)
            target = spec.pruning.target
            summary = summarize(
                self.epochs, target, status=STATUS_RUNNING, model_info=self.model_info
            )
            if spec.train.checkpoint and self.group.is_main:
                try:
                    if summary["best_epoch"] == epoch:
                        self.save_best_checkpoint(record)
                    self.save_last_checkpoint()
                except BaseException:
                    # Not on disk, so not recorded: a relaunch trains this epoch again.
                    self.epochs.pop()
                    raise
            self.write_metrics(STATUS_RUNNING)
            self.tracker.epoch(record)

            launch_seconds.append(epoch_seconds)
            remaining = total_epochs - epoch
            eta = remaining * sum(launch_seconds) / len(launch_seconds)
            print(
                f"epoch {epoch}/{total_epochs} | train loss {record['train_loss']:.4f} "
                f"top-1 {record['train_top1']:.2f}% | "
                + (f"val top-1 {record['val_top1']:.2f}% | " if "val_top1" in record else "")
                + f"test loss {record['test_loss']:.4f} "
                f"top-1 {record['test_top1']:.2f}% top-5 {record['test_top5']:.2f}% | "
                f"sparsity {sparsity:.4f} (scheduled {record['scheduled_sparsity']:.4f}) | "
                f"lr {record['lr']:.3g} | {record['images_per_second']:.1f} img/s | "
                f"{format_duration(epoch_seconds)} | ETA {format_duration(eta)}",
                flush=True,
            )
            if record.get(TIME_BUDGET_STOP):
                print(
                    f"training-time budget of {budget} s spent after epoch {epoch} "
                    f"({record['train_steps']} of {self.steps_per_epoch} steps): the run is "
                    "finished",
                    flush=True,
                )
                break

    def to_device(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # contiguous(): mnist5k's grey images arrive channel-expanded (stride 0), which .to()
        # would pass through unchanged and every convolution would then read slowly.
        images = images.to(self.device, non_blocking=True)
        images = images.contiguous(memory_format=self.memory_format)
        return images, targets.to(self.device, non_blocking=True)

    def _check_finite(self, losses: torch.Tensor, count: int, epoch: int, offset: int) -> None:
        finite = torch.isfinite(losses[:count])
        if bool(finite.all()):
            return
        bad = int((~finite).nonzero()[0, 0])
        value = float(losses[bad])
        raise TrainingDiverged(f"loss is {value} at epoch {epoch} step {offset + bad + 1}")

    def train_one_epoch(self, epoch: int, deadline: float | None = None) -> dict[str, Any]:
        """One epoch of training; with a `deadline` (time.perf_counter() value: the training
        budget), the epoch ends at the first step boundary past it, and the record says so
        unless that was the run's very last step anyway."""
        model, optimizer, scaler, device = (
            self.train_model,
            self.optimizer,
            self.scaler,
            self.device,
        )
        clip = self.spec.train.grad_clip
        steps = self.steps_per_epoch
        batch = self.spec.train.global_batch_size
        # Per-step results stay on the device; one copy kernel per step, read at progress lines.
        step_losses = torch.zeros(steps, device=device)
        step_correct = torch.zeros(steps, device=device, dtype=torch.int64)
        batch_sizes: list[int] = []
        self.train_loader.set_epoch(epoch)
        model.train()
        started = last_report = time.perf_counter()
        reported_steps = 0
        budget_spent = False
        last_lr = optimizer.param_groups[0]["lr"]
        for step, (images, targets) in enumerate(self.train_loader):
            if step >= steps:
                break
            self.stop.check()
            images, targets = self.to_device(images, targets)
            with self.autocast():
                logits = model(images)
                loss = self.criterion(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            global_batch = min(batch, self.train_loader.num_samples - step * batch)
            scaler.scale(self.group.rank_loss(loss, targets.shape[0], global_batch)).backward()
            if clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            scaler.step(optimizer)
            if self.spec.train.ddp_mask_check:
                self.group.check_masks(optimizer, self.model)
            scaler.update()
            last_lr = optimizer.param_groups[0]["lr"]  # the LR this step used
            self.scheduler.step()
            step_losses[step].copy_(loss.detach())
            step_correct[step].copy_((logits.detach().argmax(dim=1) == targets).sum())
            batch_sizes.append(targets.shape[0])

            now = time.perf_counter()
            if deadline is not None and self.group.any(now >= deadline, device):
                last = step + 1 >= steps and epoch >= self.spec.train.epochs
                budget_spent = not last
                break
            if self.group.is_main and now - last_report >= PROGRESS_SECONDS:
                done = step + 1
                self._check_finite(step_losses, done, epoch, 0)
                window = slice(reported_steps, done)
                window_images = sum(batch_sizes[window])
                loss_avg = float(step_losses[window].mean())
                top1 = 100.0 * float(step_correct[window].sum()) / window_images
                rate = self.group.world * sum(batch_sizes) / (now - started)  # whole run
                eta = (steps - done) * (now - started) / done
                print(
                    f"  epoch {epoch} step {done}/{steps} | loss {loss_avg:.4f} top-1 "
                    f"{top1:.2f}% | lr {optimizer.param_groups[0]['lr']:.3g} | {rate:.1f} img/s "
                    f"| epoch ETA {format_duration(eta)}",
                    flush=True,
                )
                self.tracker.progress(
                    (epoch - 1) * steps + done,
                    loss=loss_avg,
                    top1=top1,
                    lr=last_lr,
                    images_per_second=rate,
                )
                last_report, reported_steps = now, done
        done = len(batch_sizes)
        sizes = torch.tensor(batch_sizes, device=device, dtype=step_losses.dtype)
        rank_images = sum(batch_sizes)
        sums = torch.stack(
            [
                (step_losses[:done] * sizes).sum().double(),
                step_correct[:done].sum().double(),
                torch.tensor(float(rank_images), device=device, dtype=torch.float64),
            ]
        )
        # Every rank's sums (one all-reduce per epoch), so all ranks see a divergence together.
        loss_sum, correct, images_seen = self.group.sum(sums).tolist()
        if not math.isfinite(loss_sum):
            self._check_finite(step_losses, done, epoch, 0)  # the exact step, on its rank
            raise TrainingDiverged(f"loss is {loss_sum} at epoch {epoch} on another GPU")
        images_seen = int(images_seen)
        stats = {
            "train_loss": loss_sum / images_seen,
            "train_top1": 100.0 * correct / images_seen,
            "train_images": images_seen,
            "train_steps": done,
            "rank_images": rank_images,
            "lr": last_lr,
        }
        if budget_spent:
            stats[TIME_BUDGET_STOP] = True
        return stats

    @torch.inference_mode()
    def evaluate(self, epoch: int, loader: Any, max_steps: int, split: str) -> dict[str, Any]:
        """Loss (plain cross-entropy, comparable across label-smoothing settings), top-1 and
        top-5 on `loader`, keyed `<split>_loss` ... (`split`: "test", or "val" for the
        held-out validation split)."""
        model, device = self.forward_model, self.device
        model.eval()
        loader.set_epoch(epoch)
        totals = torch.zeros(3, device=device, dtype=torch.float64)
        count = 0
        full = 0
        for step, (images, targets) in enumerate(loader):
            if step >= max_steps:
                break
            self.stop.check()
            images, targets = self.to_device(images, targets)
            count_here = targets.shape[0]
            full = full or count_here  # this rank's share of a full batch: the first one
            if self.spec.train.compile and count_here < full:
                # A last batch of another size would compile the model again: pad it with
                # copies of its last image (eval-mode layers treat images independently).
                extra = images[-1:].expand(full - count_here, -1, -1, -1)
                images = torch.cat([images, extra]).contiguous(memory_format=self.memory_format)
            with self.autocast():
                logits = model(images)[:count_here]
            logits = logits.float()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            hits = topk == targets.unsqueeze(1)
            totals += torch.stack(
                [
                    F.cross_entropy(logits, targets, reduction="sum").double(),
                    hits[:, 0].sum().double(),
                    hits.any(dim=1).sum().double(),
                ]
            )
            count += targets.shape[0]
        totals = torch.cat([totals, totals.new_tensor([count])])
        loss_sum, top1, top5, count = self.group.sum(totals).tolist()  # sharded across ranks
        if not math.isfinite(loss_sum):
            raise TrainingDiverged(f"{split} loss is {loss_sum} at epoch {epoch}")
        return {
            f"{split}_loss": loss_sum / count,
            f"{split}_top1": 100.0 * top1 / count,
            f"{split}_top5": 100.0 * top5 / count,
            # TRAIN_MAX_STEPS_PER_EPOCH caps evaluation too: what the accuracies are over,
            # against model_info's test_images (the whole set); the report says when it differs.
            f"{split}_images": int(count),
        }


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _spec_identity(document: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return RunSpec.from_dict(document["spec"]).identity()
    except (KeyError, TypeError, ValueError):
        return None


def train(spec: RunSpec) -> dict[str, Any]:
    """Train one run and return its metrics document (also in `spec.out_dir/metrics.json`).

    A run whose metrics.json says `completed` is returned as it is. Failures (divergence, bad
    data, ...) are recorded as status `failed` with a one-line error and returned. SIGINT /
    SIGTERM raise `RunInterrupted` after the state of the last finished epoch is on disk.
    """
    if not spec.out_dir:
        raise RunError(f"run {spec.run_id} has no out_dir; the planner sets it")
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:  # opened once, never through a link; the run's files are all relative to it
        dir_fd = open_run_dir(out_dir)
    except StoreError as e:
        raise RunError(str(e)) from None
    try:
        return _train_in(spec, dir_fd)
    finally:
        os.close(dir_fd)


def _train_in(spec: RunSpec, dir_fd: int) -> dict[str, Any]:
    metrics_path = Path(spec.out_dir) / METRICS_FILE
    if exists_at(METRICS_FILE, dir_fd):
        try:
            previous = read_metrics(metrics_path, dir_fd=dir_fd)
        except MetricsError:
            previous = None  # torn or foreign: rebuilt from the checkpoint below
        if previous is not None and _spec_identity(previous) != spec.identity():
            raise RunError(
                f"{metrics_path} belongs to a different run than {spec.run_id}; move it away "
                "or use another results directory"
            )
        if previous is not None and previous["summary"]["status"] == STATUS_COMPLETED:
            print(f"run {spec.run_id} already completed; nothing to do", flush=True)
            return previous
    with _StopOnSignals() as stop, RunGroup.start(spec.train, resolve_device) as group:
        run = _Run(spec, stop, group, dir_fd)
        status = STATUS_RUNNING  # interrupted, unless execute() returns
        try:
            doc = run.execute()
            status = doc["summary"]["status"]
            return doc
        finally:
            run.tracker.finish(status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib.train", description="Train one run described by a run.json."
    )
    parser.add_argument("run_json", help="path to the run's run.json (a serialised RunSpec)")
    args = parser.parse_args(argv)
    path = Path(args.run_json)
    try:
        spec = RunSpec.from_dict(read_json_path(path, RUN_FILE))  # never through a link
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: cannot read run spec {path}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_BAD_SPEC
    # A run.json lives in its run's directory and the run writes only there: an empty out_dir
    # means "here", any other place is refused (the file may have been edited).
    if spec.out_dir and Path(spec.out_dir).resolve() != path.parent.resolve():
        print(
            f"error: {path}: out_dir {spec.out_dir!r} is not the directory of this run.json; "
            "a run writes only beside its run.json (set out_dir to that directory or remove it)",
            file=sys.stderr,
        )
        return EXIT_BAD_SPEC
    spec = RunSpec.from_dict({**spec.to_dict(), "out_dir": str(path.parent)})
    try:
        doc = train(spec)
    except RunInterrupted as interrupted:
        return interrupted.exit_code
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except (RunError, DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        environment = storage_error(e, e.filename or spec.out_dir)
        if environment is None:
            raise
        print(f"error: {environment}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    if doc["summary"].get("environment_failure"):
        return EXIT_ENVIRONMENT
    return EXIT_COMPLETED if doc["summary"]["status"] == STATUS_COMPLETED else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
