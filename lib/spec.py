"""The typed description of one training run (RunSpec) and its parts.

Every stage after `lib.config` speaks these types: `lib.matrix` builds RunSpecs from a
Config, `lib.runner` writes them to `run.json`, `lib.train.train()` consumes one.  They are
frozen dataclasses so a run's description cannot drift while it runs, and they round-trip
through JSON exactly (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

MODELS = ("resnet50", "resnet18", "resnet20")
STEMS = ("imagenet", "cifar")
DATASETS = ("imagenet", "imagefolder", "cifar100", "cifar10", "mnist5k", "synthetic")
DECODES = ("pil", "uint8")  # DataSpec.decode: how ImageNet / ImageFolder images become batches
PRUNE_SCHEDULES = ("cubic", "linear")
PRUNE_SCOPES = ("global", "layerwise")
LR_SCHEDULES = ("cosine", "cosine_epoch", "step", "constant")
PRECISIONS = ("off", "bf16", "fp16")
DEVICES = ("auto", "cuda", "cpu")
TRACKERS = ("tensorboard", "wandb", "trackio")
WANDB_MODES = ("offline", "online")
BATCH_RULES = ("global", "per_gpu")  # what TrainSpec.batch_size means with several GPUs
DDP_BACKENDS = ("auto", "nccl", "gloo")

# A matrix name or a run id: one directory name (results/<matrix>/<run_id>), never a path.
# Both are read back from matrix.json and run.json, which anyone who can write the results
# directory can edit, so every RunSpec checks them.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_ACCEPTED = "letters, digits, '.', '_' and '-', starting with a letter or digit"


def added_field(default: Any) -> Any:
    """A field added after run.json's layout was fixed: left out of `to_dict()` (run.json,
    identity) while it holds its default, so adding an option never changes the run.json of a
    run that does not use it (finished runs stay finished; tests/test_run_json_stability.py).
    `from_dict` fills it back in from the default."""
    return field(default=default, metadata={"omit_at_default": True})


def _drop_added_defaults(obj: Any, d: dict[str, Any]) -> dict[str, Any]:
    """`d` (dataclasses.asdict(obj)) without obj's added fields that hold their defaults,
    recursively through nested specs."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("omit_at_default") and value == f.default:
            d.pop(f.name, None)
        elif dataclasses.is_dataclass(value) and isinstance(d.get(f.name), dict):
            _drop_added_defaults(value, d[f.name])
    return d


def _freeze_settings(spec: Any) -> None:
    """`settings` as a tuple of (name, value) tuples, also when read back from JSON lists, so
    that a spec compares equal to itself after a round trip through run.json."""
    frozen = tuple((str(k), v) for k, v in spec.settings)
    object.__setattr__(spec, "settings", frozen)


def is_plain_name(value: object) -> bool:
    """True when `value` is one directory name as NAME_PATTERN describes."""
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


# Number of classes each dataset has; `synthetic` takes its count from DataSpec.num_classes,
# `imagefolder` from its class folders when a run starts (lib.data.folder_classes).
DATASET_CLASSES = {"imagenet": 1000, "cifar100": 100, "cifar10": 10, "mnist5k": 10}
# Training images of the datasets whose size is fixed (mnist5k: 5,000 less its 1,000 test
# images), so a held-out split too large is refused with the config, before any run starts.
DATASET_TRAIN_IMAGES = {"cifar100": 50_000, "cifar10": 50_000, "mnist5k": 4_000}


@dataclass(frozen=True)
class ModelSpec:
    name: str = "resnet50"
    stem: str = "imagenet"  # imagenet: 7x7/2 conv + maxpool; cifar: 3x3/1 conv, no maxpool
    keep_ends_dense: bool = False  # never prune the stem conv and the classifier


@dataclass(frozen=True)
class DataSpec:
    name: str = "imagenet"
    data_dir: str = "data"
    image_size: int = 224  # input side the model sees (train crop / eval centre crop)
    workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = True
    download: bool = False  # cifar only; never on by default
    decode: str = "pil"  # imagenet: "pil" (workers decode) or "uint8" (bytes; decode on device)
    target_images_per_second: int = 3000  # imagenet: the dry run's cores estimate only
    synthetic_classes: int = 1000
    synthetic_train_size: int = 1281  # images per synthetic "epoch"
    synthetic_val_size: int = 128
    # imagefolder: your own <dir>/<class>/<image> training and validation directories. Part of
    # the identity (they name the data, unlike data_dir, which only says where ImageNet is).
    train_dir: str = added_field("")
    val_dir: str = added_field("")
    # Held-out validation (docs/protocol.md): val_size images carved from the training set,
    # class-stratified and fixed by val_seed (never by the run seed: every run of a matrix
    # selects on the same images); 0 = off, every selection then uses the test set as before.
    val_size: int = added_field(0)
    val_seed: int = added_field(0)
    # Validation top-1 (%) whose first reach is the run's time to target; 0 = none.
    val_target: float = added_field(0.0)

    @property
    def known_train_images(self) -> int | None:
        """Images of the full training set (before a held-out split) when the configuration
        fixes it; None for image folders, counted when a run starts."""
        if self.name == "synthetic":
            return self.synthetic_train_size
        return DATASET_TRAIN_IMAGES.get(self.name)

    @property
    def num_classes(self) -> int:
        """Classes of a dataset with a fixed count; imagefolder has none before its folders are
        read: use lib.data.folder_classes."""
        if self.name == "synthetic":
            return self.synthetic_classes
        if self.name == "imagefolder":
            raise ValueError("imagefolder: the class count is read from the class folders")
        return DATASET_CLASSES[self.name]


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 100
    batch_size: int = 128
    lr_schedule: str = "cosine"
    warmup_epochs: int = 0
    step_size: int = 30  # step schedule: decay every step_size epochs ...
    step_gamma: float = 0.1  # ... by this factor
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    precision: str = "off"
    channels_last: bool = False
    tf32: bool = True  # TF32 tensor cores for fp32 matmuls and convolutions (CUDA only)
    compile: bool = False
    device: str = "auto"
    checkpoint: bool = True  # keep `last` (every epoch) and `best` checkpoints
    deterministic: bool = True  # torch.use_deterministic_algorithms where supported
    max_steps_per_epoch: int = 0  # 0 = full epoch; >0 caps steps (tests, smoke runs)
    # Several GPUs per run (DistributedDataParallel, one process per GPU; docs/distributed.md)
    gpus_per_run: int = 1
    batch_rule: str = "global"  # global: batch_size is split across GPUs; per_gpu: per GPU
    sync_batchnorm: bool = True  # BatchNorm statistics over the global batch
    ddp_backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU (not part of the identity)
    ddp_mask_check: bool = True  # all-reduced mask checksums (not part of the identity)
    # Training seconds (evaluation and checkpointing excluded) after which the run stops and
    # is finished (summary stopped_by "time_budget"); 0 = no budget, the epochs decide.
    time_budget_seconds: int = added_field(0)

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step over all the GPUs of the run."""
        if self.batch_rule == "per_gpu":
            return self.batch_size * self.gpus_per_run
        return self.batch_size

    @property
    def rank_batch_size(self) -> int:
        """Images per step on each GPU (rank) of the run."""
        return self.global_batch_size // self.gpus_per_run


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "adamw"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    amsgrad: bool = False
    decay_all_parameters: bool = False  # weight decay on biases and norm layers too
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    # Fields of particular built-in optimizers: each is read and used by the catalogue entries
    # that need it (optimizers/entries/); the others leave them at these defaults.
    spam_theta: float = 5000.0
    spam_interval: int = 500
    spam_warmup_steps: int = 150
    spam_clip_delay: int = 20
    prune_base: str = "adamw"
    prune_score: str = "hybrid"
    # A plug-in optimizer (docs/plugins.md): its typed settings as (name, value) pairs, and the
    # distribution it came from, so a run records what trained it.
    settings: tuple[tuple[str, Any], ...] = added_field(())
    distribution: str = added_field("")
    distribution_version: str = added_field("")

    def __post_init__(self) -> None:
        _freeze_settings(self)

    @property
    def label(self) -> str:
        """Short readable name used in run ids and reports (`adamwprune-adamw`, `sgd`,
        `adamw-amsgrad`): the catalogue entry's label; the name when no entry is installed."""
        from lib import catalogue

        entry = catalogue.catalogue().optimizers.get(self.name)
        return entry.label_of(self) if entry is not None else self.name


@dataclass(frozen=True)
class PruningSpec:
    method: str = "none"
    sparsity: float = 0.0  # target fraction of prunable weights that are zero at the end
    schedule: str = "cubic"
    start_step: int = 100  # first optimizer step (1-based count) at which masks are updated
    end_epoch: int = 80  # masks frozen at the end of this epoch; the runner turns it into steps
    interval: int = 50  # update masks every `interval` steps between start and end
    scope: str = "global"
    # The seed's upstream semantics (lib/Kconfig.pruning, docs/reproducing.md), off by default:
    # the method's upstream score (its catalogue entry's `upstream_score`), masks rebuilt at
    # every update with regrowth, and masks applied to the weights only.
    upstream_score: bool = added_field(False)
    rebuild_masks: bool = added_field(False)
    mask_weights_only: bool = added_field(False)
    # A plug-in pruning method (docs/plugins.md): as OptimizerSpec's fields of the same names.
    settings: tuple[tuple[str, Any], ...] = added_field(())
    distribution: str = added_field("")
    distribution_version: str = added_field("")
    # N:M semi-structured sparsity (0, 0: unstructured): in every group of nm_m consecutive
    # weights along the input dimension nm_n stay nonzero (lib.pruning._nm_positions).
    nm_n: int = added_field(0)
    nm_m: int = added_field(0)

    def __post_init__(self) -> None:
        _freeze_settings(self)

    @property
    def enabled(self) -> bool:
        return self.method != "none" and self.sparsity > 0.0

    @property
    def pattern(self) -> tuple[int, int] | None:
        """(N, M) of an N:M run, None for unstructured pruning."""
        return (self.nm_n, self.nm_m) if self.nm_m else None

    @property
    def active_method(self) -> str:
        """The method a run actually prunes with: "none" for a dense run."""
        return self.method if self.enabled else "none"

    @property
    def target(self) -> float:
        """The sparsity the run targets: 0 for a dense run (the one place this rule lives)."""
        return self.sparsity if self.enabled else 0.0

    def end_step(self, steps_per_epoch: int) -> int:
        return self.end_epoch * steps_per_epoch


@dataclass(frozen=True)
class TrackingSpec:
    """Live tracking sinks (lib.tracking). Where a run is *watched*, not what is trained: not
    part of identity(), so turning a tracker on never marks finished runs CHANGED."""

    tensorboard: bool = False
    tensorboard_dir: str = ""  # "": <run dir>/tensorboard; else <dir>/<matrix>/<run id>
    wandb: bool = False
    wandb_project: str = "prunebench"
    wandb_entity: str = ""  # "": the logged-in user's default entity
    wandb_mode: str = "offline"  # offline | online
    trackio: bool = False
    trackio_project: str = ""  # "": the matrix name
    trackio_dir: str = ""  # "": trackio's own store ($TRACKIO_DIR or its default)

    @property
    def sinks(self) -> tuple[str, ...]:
        """The trackers that are on, in TRACKERS order."""
        return tuple(name for name in TRACKERS if getattr(self, name))


TUNING_ROLES = ("trial", "rerun")


@dataclass(frozen=True)
class TuningSpec:
    """Where a run sits on the tuning axis (lib/tuning.py, docs/protocol.md): trial `trial` of
    study `study`, whose hyperparameters the search drew; or a rerun of the setting chosen for
    its (optimizer, method, sparsity) on a fresh seed (study and trial then say which trial was
    chosen)."""

    role: str = "trial"  # trial | rerun
    study: int = 0
    trial: int = 0
    # The tuned hyperparameters as (field, value) pairs: what this run overrides.
    values: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.role not in TUNING_ROLES:
            raise ValueError(f"tuning role {self.role!r} is not one of {TUNING_ROLES}")
        object.__setattr__(self, "values", tuple((str(k), v) for k, v in self.values))


def _copy_containers(value: Any) -> Any:
    """A copy of nested dicts and lists; tuples and scalars (immutable) are shared."""
    if isinstance(value, dict):
        return {k: _copy_containers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_containers(v) for v in value]
    return value


@dataclass(frozen=True)
class RunSpec:
    """Everything one training run needs. The trainer reads nothing else."""

    matrix: str
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    optimizer: OptimizerSpec
    pruning: PruningSpec
    seed: int = 0
    out_dir: str = ""  # results/<matrix>/<run_id>; set by the planner
    run_id: str = field(default="")
    tracking: TrackingSpec = TrackingSpec()
    # A run of the tuning axis (None: an ordinary run; run.json unchanged).
    tuning: TuningSpec | None = added_field(None)

    def __post_init__(self) -> None:
        if not self.run_id:
            object.__setattr__(self, "run_id", derive_run_id(self))
        for what, value in (("matrix name", self.matrix), ("run id", self.run_id)):
            if not is_plain_name(value):
                raise ValueError(
                    f"{what} {value!r} is not a directory name; accepted: {NAME_ACCEPTED}"
                )

    @property
    def method_key(self) -> str:
        return method_key(self.optimizer.label, self.pruning.active_method, self.method_variant)

    @property
    def method_variant(self) -> str | None:
        """The pruning method's variant read from the optimizer (`hybrid` for state pruning's
        score), or None: the catalogue entry's `variant`."""
        from lib import catalogue

        entry = catalogue.catalogue().pruning.get(self.pruning.active_method)
        return entry.variant(self.optimizer) if entry and entry.variant else None

    def to_dict(self) -> dict[str, Any]:
        """A new dict each call (callers change theirs). The spec is frozen, so it is built
        once and copied after: a matrix of thousands of runs asks for it several times per
        run (run.json, matrix.json, identities)."""
        built = self.__dict__.get("_built_dict")
        if built is None:
            built = self._build_dict()
            object.__setattr__(self, "_built_dict", built)
        return _copy_containers(built)

    def _build_dict(self) -> dict[str, Any]:
        d = _drop_added_defaults(self, dataclasses.asdict(self))
        if self.optimizer.distribution:
            # A plug-in optimizer reads only its own `settings`: the built-ins' fields, all at
            # their defaults, would only mislead a reader of run.json. from_dict restores them.
            opt = d["optimizer"]
            for f in dataclasses.fields(self.optimizer):
                if f.name != "name" and getattr(self.optimizer, f.name) == f.default:
                    opt.pop(f.name, None)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(
            matrix=d["matrix"],
            model=ModelSpec(**d["model"]),
            data=DataSpec(**d["data"]),
            train=TrainSpec(**d["train"]),
            optimizer=OptimizerSpec(**d["optimizer"]),
            pruning=PruningSpec(**d["pruning"]),
            seed=d["seed"],
            out_dir=d.get("out_dir", ""),
            run_id=d.get("run_id", ""),
            tracking=TrackingSpec(**d.get("tracking", {})),  # absent before tracking existed
            tuning=TuningSpec(**d["tuning"]) if d.get("tuning") else None,
        )

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls.from_dict(json.loads(text))

    def identity(self) -> dict[str, Any]:
        """The settings that define *what* is trained (everything but where it is written).

        Two specs with the same run id but a different identity are two different experiments;
        the runner refuses to mix them in one results directory.
        """
        d = self.to_dict()
        d.pop("out_dir")
        d.pop("run_id")
        d.pop("matrix")
        d.pop("tracking")  # where the run is watched, not what is trained
        volatile = ("workers", "pin_memory", "persistent_workers", "data_dir", "download")
        for key in (*volatile, "target_images_per_second"):
            d["data"].pop(key)
        for how in ("ddp_backend", "ddp_mask_check"):  # how it is trained, not what
            d["train"].pop(how)
        return d

    @classmethod
    def recorded_identity(cls, identity: dict[str, Any]) -> dict[str, Any]:
        """An identity as written by an earlier version, with the fields added since then at
        their defaults, so that a checkpoint from before an upgrade still matches its run.

        An identity this version cannot read (a field it does not know) is returned as it is,
        which compares unequal: the run is refused rather than trained on a guess.
        """
        try:
            return cls.from_dict({**identity, "matrix": "recorded"}).identity()
        except (KeyError, TypeError, ValueError):
            return identity


def method_key(optimizer_label: str, pruning: str, variant: str | None) -> str:
    """The method a run belongs to, across sparsities and seeds: `adamwprune-adamw_state-hybrid`,
    `adamwspam_magnitude`, `sgd_dense`. Reports group and compare by it. `variant`: the
    pruning method's variant (RunSpec.method_variant), None for methods without one."""
    if pruning == "none":
        return f"{optimizer_label}_dense"
    if variant is not None:
        return f"{optimizer_label}_{pruning}-{variant}"
    return f"{optimizer_label}_{pruning}"


def sparsity_token(sparsity: float) -> str:
    """`0.7` -> `s70`, `0.855` -> `s85p5`."""
    return "s" + f"{round(sparsity * 100, 2):g}".replace(".", "p")


def derive_run_id(spec: RunSpec) -> str:
    """Stable, readable id: `resnet50_adamwprune-adamw_state-hybrid_s70_seed0`.

    Derived only from the axes of the matrix, so the same .config always plans the same ids.
    """
    p = spec.pruning
    level = f"_{sparsity_token(p.sparsity)}" if p.enabled else ""
    return f"{spec.model.name}_{spec.method_key}{level}_seed{spec.seed}{tuning_token(spec.tuning)}"


def tuning_token(tuning: TuningSpec | None) -> str:
    """The run id's suffix on the tuning axis: `_study1_trial3` for a trial, `_tuned` for a
    rerun of the chosen setting (its seed tells the reruns apart), `` for an ordinary run."""
    if tuning is None:
        return ""
    if tuning.role == "rerun":
        return "_tuned"
    return f"_study{tuning.study}_trial{tuning.trial}"
