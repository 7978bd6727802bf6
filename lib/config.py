"""Load `.config` through kconfiglib into one frozen, typed Config.

This is the only module that reads Kconfig symbols. Everything after it speaks the types of
`lib.spec`. Every value is validated here: a bad one raises ConfigError whose message is one
line naming the symbol, the value and what is accepted.

Kconfig has no float type, so floats are `string` symbols parsed and range-checked here.
An assignment in `.config` that kconfiglib would silently drop (out of range, malformed, or
blocked by an unmet dependency) is an error too: a configuration is never misread.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import kconfiglib

from lib.spec import (
    NAME_ACCEPTED,
    DataSpec,
    ModelSpec,
    OptimizerSpec,
    PruningSpec,
    TrackingSpec,
    TrainSpec,
    is_plain_name,
)

ROOT = Path(__file__).resolve().parent.parent
KCONFIG = ROOT / "Kconfig"
DEFCONFIG_DIR = ROOT / "defconfigs"

OPTIMIZER_ORDER = ("sgd", "adam", "adamw", "adamwadv", "adamwspam", "adamwprune")
PRESET_SPARSITIES = (50, 70, 80, 90, 95)
PLOTS = (
    "accuracy_evolution",
    "accuracy_vs_sparsity",
    "memory",
    "memory_vs_accuracy",
    "sparsity",
)
EXECUTORS = ("local", "slurm")
_SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9._-]*$")
_SLURM_PARTITION_RE = re.compile(r"^[A-Za-z0-9._,-]*$")
_SLURM_CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9._,&|!*\[\]():=-]*$")
# sbatch options the Slurm executor sets itself (lib/slurm.py): the array, where its logs go,
# the signal that saves a run before its time limit.
SLURM_RESERVED_OPTIONS = ("array", "output", "error", "signal", "open-mode", "wrap")


class ConfigError(ValueError):
    """A configuration problem, described in one line."""


@dataclass(frozen=True)
class MatrixSettings:
    name: str
    results_dir: str
    seeds: tuple[int, ...]
    jobs: int
    gpus: tuple[str, ...]
    continue_on_failure: bool
    executor: str = "local"  # local | slurm
    slurm: SlurmSettings | None = None  # with the slurm executor


@dataclass(frozen=True)
class SlurmSettings:
    """The Slurm executor's sbatch settings (lib/Kconfig.slurm); empty strings and 0 mean
    "the cluster's default" and are left out of the job script."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    time_minutes: int = 1440
    cpus_per_gpu: int = 8
    mem_gb: int = 0
    constraint: str = ""
    array_parallelism: int = 0
    extra_args: tuple[str, ...] = ()  # long sbatch options, one argument each


@dataclass(frozen=True)
class ReportSettings:
    baseline: str
    candidate: str
    plots: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "candidate": self.candidate, "plots": list(self.plots)}


@dataclass(frozen=True)
class Config:
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    optimizers: tuple[OptimizerSpec, ...]
    adamwadv_grad_clip: float
    pruning_methods: tuple[str, ...]  # subset of none/magnitude/movement/state, menu order
    sparsities: tuple[float, ...]  # sorted, unique
    pruning: PruningSpec  # schedule template (method "none", sparsity 0)
    matrix: MatrixSettings
    report: ReportSettings
    symbols: tuple[tuple[str, str], ...]  # ("CONFIG_X", "value") as .config holds them
    tracking: TrackingSpec = TrackingSpec()

    def train_for(self, opt: OptimizerSpec) -> TrainSpec:
        """The training settings of a run with `opt`: AdamWAdv, and AdamWPrune on the AdamWAdv
        base, bring AdamWAdv's clipping and cosine schedule (ALGORITHMS.md section 6); every
        other optimizer shares them."""
        if _uses_adamwadv(opt):
            return replace(self.train, grad_clip=self.adamwadv_grad_clip, lr_schedule="cosine")
        return self.train

    def symbol_dict(self) -> dict[str, str]:
        return dict(self.symbols)


def _uses_adamwadv(opt: OptimizerSpec) -> bool:
    return opt.name == "adamwadv" or (opt.name == "adamwprune" and opt.prune_base == "adamwadv")


# --------------------------------------------------------------------------------------------
# kconfiglib access


def load_kconfig() -> kconfiglib.Kconfig:
    """Parse the Kconfig tree. `srctree` makes `source` paths resolve from the project root
    wherever the command runs."""
    old = os.environ.get("srctree")
    os.environ["srctree"] = str(ROOT)
    try:
        kconf = kconfiglib.Kconfig(str(KCONFIG), warn_to_stderr=False)
    finally:
        if old is None:
            os.environ.pop("srctree", None)
        else:
            os.environ["srctree"] = old
    return kconf


def _expected_value(sym: kconfiglib.Symbol) -> str | None:
    """The value a .config assignment asked for, in str_value form, or None if unassigned."""
    uv = sym.user_value
    if uv is None:
        return None
    if sym.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE):
        return kconfiglib.TRI_TO_STR[uv]
    if sym.orig_type in (kconfiglib.INT, kconfiglib.HEX):
        try:
            return str(int(uv, 0 if sym.orig_type == kconfiglib.HEX else 10))
        except ValueError:
            return uv
    return uv


def _range_text(sym: kconfiglib.Symbol) -> str:
    for low, high, cond in sym.ranges:
        if kconfiglib.expr_value(cond):
            return f"{low.str_value}..{high.str_value}"
    return "any integer"


def check_assignments(kconf: kconfiglib.Kconfig, path: str, *, strict: bool = True) -> None:
    """Raise ConfigError for the first assignment in `path` that did not take effect.

    Malformed and out-of-range values are always errors (a typo must not turn into a default).
    A hidden option (its dependencies unmet) is treated as the kernel's tools treat it: a
    leftover value of a hidden number or string is dropped silently, but `=y` on a hidden
    option asks for something that cannot be had (state pruning without AdamWPrune), which is
    an error when `strict` and a printed notice otherwise (olddefconfig, savedefconfig).
    An edited derived option (no prompt) is always an error: its value comes from a choice."""
    for warning in kconf.warnings:
        if "set more than once" in warning:
            continue  # a hand-edited line appended later wins, as in the kernel's tools
        # kconfiglib's own messages already name the symbol, the value and the type.
        text = warning.replace("warning: ", "").strip()
        raise ConfigError(text if text.startswith(path) else f"{path}: {text}")
    for sym in kconf.unique_defined_syms:
        if sym.choice is not None:
            continue  # choice members are resolved together; the selection is checked below
        wanted = _expected_value(sym)
        if wanted is None:
            continue
        got = sym.str_value
        if sym.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE) and wanted == "n":
            continue  # "# CONFIG_X is not set" for a hidden option is what write_config emits
        if got == wanted:
            continue
        name = f"CONFIG_{sym.name}"
        if not any(node.prompt for node in sym.nodes):
            raise ConfigError(
                f"{path}: {name}={sym.user_value!r} cannot be set directly: it is derived from "
                f"other options (now {got!r}); change those with make menuconfig"
            )
        if sym.visibility == 0:
            if sym.orig_type not in (kconfiglib.BOOL, kconfiglib.TRISTATE):
                continue  # the leftover value of a hidden option, as after a menu change
            deps = kconfiglib.expr_str(sym.direct_dep)
            message = (
                f"{path}: {name}={wanted} has no effect: it depends on {deps}, "
                "which is not satisfied"
            )
            if strict:
                raise ConfigError(f"{message} (enable that first, e.g. with make menuconfig)")
            print(f"note: {message}; dropped", file=sys.stderr)
            continue
        if sym.orig_type in (kconfiglib.INT, kconfiglib.HEX):
            raise ConfigError(
                f"{path}: {name}={sym.user_value} is out of range (accepted: {_range_text(sym)})"
            )
        raise ConfigError(f"{path}: {name}={sym.user_value} was not accepted (value now {got!r})")
    for name, _value in kconf.missing_syms:
        # kconfiglib drops these without a word; a misspelt name would silently lose the
        # user's intent. A leftover of a removed option is dropped by olddefconfig.
        message = f"{path}: CONFIG_{name} is not an option of this Kconfig (misspelt, or removed)"
        if strict:
            raise ConfigError(
                f"{message}: correct or delete that line (make olddefconfig deletes it)"
            )
        print(f"note: {message}; dropped", file=sys.stderr)
    for choice in kconf.unique_choices:
        picked = [s for s in choice.syms if s.user_value == 2]
        if len(picked) > 1 and choice.visibility:
            names = ", ".join(f"CONFIG_{s.name}" for s in picked)
            raise ConfigError(f"{path}: {names} are alternatives of one choice; set only one")


def load_kconfig_with(path: str | os.PathLike[str], *, strict: bool = True) -> kconfiglib.Kconfig:
    """Parse Kconfig and apply a .config (or defconfig) with olddefconfig semantics: options
    the file does not mention take their defaults. `strict`: see check_assignments."""
    path = str(path)
    if not os.path.exists(path):
        raise ConfigError(
            f"{path}: no such configuration; create one with make menuconfig or "
            "make defconfig-NAME (make list-defconfigs shows the names)"
        )
    kconf = load_kconfig()
    kconf.warnings.clear()
    read_config_file(kconf, path)
    check_assignments(kconf, path, strict=strict)
    return kconf


_RECREATE = "write a new one with make defconfig-NAME or make menuconfig"


def read_config_file(kconf: kconfiglib.Kconfig, path: str | os.PathLike[str]) -> None:
    """`kconf.load_config(path)`, with a file that is no configuration file at all (a
    directory, binary content, unreadable) turned into one ConfigError line."""
    path = str(path)
    if os.path.isdir(path):
        raise ConfigError(
            f"{path} is a directory, not a configuration file; KCONFIG_CONFIG must name a file "
            "(default .config)"
        )
    try:
        kconf.load_config(path)
    except (UnicodeDecodeError, kconfiglib.KconfigError):
        # kconfiglib reports undecodable bytes as a multi-line KconfigError
        raise ConfigError(
            f"{path}: not a Kconfig configuration (binary content); {_RECREATE}"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e}); {_RECREATE}") from None


def check_writable_file(path: str | os.PathLike[str]) -> None:
    """Refuse, in one line, a configuration output path that cannot become a file: a
    directory (kconfiglib would rename it to <path>.old and write a file in its place) or a
    path in a directory that does not exist."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{path} is a directory, not a configuration file; KCONFIG_CONFIG (or the output "
            "path) must name a file"
        )
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(
            f"cannot write {path}: directory {parent} does not exist (create it first)"
        )


# --------------------------------------------------------------------------------------------
# typed reading


class _Reader:
    def __init__(self, kconf: kconfiglib.Kconfig, path: str):
        self.kconf = kconf
        self.path = path

    def _sym(self, name: str) -> kconfiglib.Symbol:
        return self.kconf.syms[name]

    def fail(self, name: str, value: str, accepted: str) -> ConfigError:
        return ConfigError(
            f"{self.path}: CONFIG_{name}={value!r} is invalid (accepted: {accepted})"
        )

    def bool(self, name: str) -> bool:
        return self._sym(name).str_value == "y"

    def int(self, name: str) -> int:
        return int(self._sym(name).str_value, 0)

    def str(self, name: str) -> str:
        return self._sym(name).str_value

    def float(
        self, name: str, *, low: float, high: float = math.inf, low_open=False, high_open=False
    ) -> float:
        raw = self.str(name).strip()
        lo_b, hi_b = ("(" if low_open else "["), (")" if high_open or math.isinf(high) else "]")
        hi_txt = "inf" if math.isinf(high) else f"{high:g}"
        accepted = f"a number in {lo_b}{low:g}, {hi_txt}{hi_b}"
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(name, raw, accepted) from None
        if not math.isfinite(value):
            raise self.fail(name, raw, accepted)
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if too_low or too_high:
            raise self.fail(name, raw, accepted)
        return value

    def choice(self, prefix: str, options: tuple[str, ...]) -> str:
        for option in options:
            sym = self.kconf.syms.get(f"{prefix}_{option.upper()}")
            if sym is not None and sym.str_value == "y":
                return option
        raise ConfigError(f"{self.path}: no {prefix}_* option selected (one of {options})")

    def int_list(self, name: str, *, low: int = 0) -> tuple[int, ...]:
        raw = self.str(name)
        out = []
        for item in filter(None, (x.strip() for x in raw.split(","))):
            try:
                value = int(item)
            except ValueError:
                raise self.fail(name, raw, f"comma-separated integers >= {low}") from None
            if value < low:
                raise self.fail(name, raw, f"comma-separated integers >= {low}")
            out.append(value)
        return tuple(out)


def _optimizer(r: _Reader, name: str) -> OptimizerSpec:
    p = name.upper()
    if name == "sgd":
        return OptimizerSpec(
            name="sgd",
            lr=r.float("SGD_LR", low=0, low_open=True),
            momentum=r.float("SGD_MOMENTUM", low=0, high=1, high_open=True),
            weight_decay=r.float("SGD_WEIGHT_DECAY", low=0),
            nesterov=r.bool("SGD_NESTEROV"),
        )
    base = r.str("ADAMWPRUNE_BASE_OPTIMIZER_NAME") if name == "adamwprune" else name
    spam_from = "ADAMWSPAM" if name == "adamwspam" else "ADAMWPRUNE"
    uses_spam = base == "adamwspam"
    if base == "adamwadv":
        amsgrad = True
    elif base == "adamwspam":
        amsgrad = False
    else:
        amsgrad = r.bool(f"{p}_AMSGRAD")
    spec = OptimizerSpec(
        name=name,
        lr=r.float(f"{p}_LR", low=0, low_open=True),
        beta1=r.float(f"{p}_BETA1", low=0, high=1, high_open=True),
        beta2=r.float(f"{p}_BETA2", low=0, high=1, high_open=True),
        eps=r.float(f"{p}_EPS", low=0, low_open=True),
        weight_decay=r.float(f"{p}_WEIGHT_DECAY", low=0),
        amsgrad=amsgrad,
    )
    if uses_spam:
        spec = replace(
            spec,
            spam_theta=r.float(f"{spam_from}_SPAM_THETA", low=0),
            spam_interval=r.int(f"{spam_from}_SPAM_INTERVAL"),
            spam_warmup_steps=r.int(f"{spam_from}_SPAM_WARMUP_STEPS"),
            spam_clip_delay=r.int(f"{spam_from}_SPAM_CLIP_DELAY"),
        )
    if name == "adamwprune":
        spec = replace(
            spec,
            decay_all_parameters=r.bool("ADAMWPRUNE_DECAY_ALL_PARAMETERS"),
            prune_base=base,
            prune_score=r.choice(
                "ADAMWPRUNE_SCORE", ("hybrid", "variance", "momentum", "magnitude")
            ),
        )
    return spec


def _sparsities(r: _Reader) -> tuple[float, ...]:
    levels = {p / 100 for p in PRESET_SPARSITIES if r.bool(f"SPARSITY_{p}")}
    raw = r.str("SPARSITY_CUSTOM")
    accepted = "comma-separated fractions in (0, 1), e.g. 0.6,0.85"
    custom: set[float] = set()
    for item in filter(None, (x.strip() for x in raw.split(","))):
        try:
            value = float(item)
        except ValueError:
            raise r.fail("SPARSITY_CUSTOM", raw, accepted) from None
        if not (0.0 < value < 1.0):
            raise r.fail("SPARSITY_CUSTOM", raw, accepted)
        if round(value, 6) in custom:
            raise r.fail("SPARSITY_CUSTOM", raw, f"{accepted}, each once; {item} repeats")
        custom.add(round(value, 6))
    # A custom level that is also a selected preset is the same level: one set of runs.
    return tuple(sorted(levels | custom))


def _distributed(r: _Reader) -> dict:
    """TrainSpec fields of a run on several GPUs; TrainSpec's defaults with one GPU (the
    DDP_* options are hidden then and mean nothing)."""
    gpus = r.int("GPUS_PER_RUN")
    if gpus == 1:
        return {"gpus_per_run": 1}
    batch_rule = r.choice("DDP_BATCH", ("global", "per_gpu"))
    batch = r.int("TRAIN_BATCH_SIZE")
    if batch_rule == "global" and batch % gpus:
        raise r.fail(
            "TRAIN_BATCH_SIZE",
            str(batch),
            f"a multiple of CONFIG_GPUS_PER_RUN={gpus}: the global batch is split evenly "
            "across the GPUs of a run",
        )
    backend = r.choice("DDP_BACKEND", ("auto", "nccl", "gloo"))
    device = r.choice("TRAIN_DEVICE", ("auto", "cuda", "cpu"))
    sync_bn = r.bool("DDP_SYNC_BATCHNORM")
    if device == "cpu" and backend == "nccl":
        raise r.fail("DDP_BACKEND_NCCL", "y", "auto or gloo with CONFIG_TRAIN_DEVICE_CPU")
    if device == "cpu" and sync_bn:
        raise r.fail(
            "DDP_SYNC_BATCHNORM", "y", "n with CONFIG_TRAIN_DEVICE_CPU (SyncBatchNorm needs CUDA)"
        )
    return {
        "gpus_per_run": gpus,
        "batch_rule": batch_rule,
        "sync_batchnorm": sync_bn,
        "ddp_backend": backend,
        "ddp_mask_check": r.bool("DDP_MASK_CHECK"),
    }


def _tracking(r: _Reader) -> TrackingSpec:
    """The tracking menu; names are checked here so a typo is caught before any run starts,
    not by the tracker in the middle of the night."""
    tensorboard, wandb, trackio = (
        r.bool(f"TRACKING_{name}") for name in ("TENSORBOARD", "WANDB", "TRACKIO")
    )
    spec = TrackingSpec(
        tensorboard=tensorboard,
        tensorboard_dir=r.str("TRACKING_TENSORBOARD_DIR") if tensorboard else "",
        wandb=wandb,
        wandb_project=r.str("TRACKING_WANDB_PROJECT") if wandb else TrackingSpec.wandb_project,
        wandb_entity=r.str("TRACKING_WANDB_ENTITY") if wandb else "",
        wandb_mode=r.choice("TRACKING_WANDB_MODE", ("offline", "online")) if wandb else "offline",
        trackio=trackio,
        trackio_project=r.str("TRACKING_TRACKIO_PROJECT") if trackio else "",
        trackio_dir=r.str("TRACKING_TRACKIO_DIR") if trackio else "",
    )
    for symbol, value, may_be_empty in (
        ("TRACKING_WANDB_PROJECT", spec.wandb_project, False),
        ("TRACKING_WANDB_ENTITY", spec.wandb_entity, True),
        ("TRACKING_TRACKIO_PROJECT", spec.trackio_project, True),
    ):
        if (value or not may_be_empty) and not is_plain_name(value):
            raise r.fail(symbol, value, NAME_ACCEPTED + (", or empty" if may_be_empty else ""))
    return spec


def _slurm_extra_args(r: _Reader) -> tuple[str, ...]:
    """SLURM_EXTRA_ARGS split like a shell would split it (quotes group), never run by one."""
    name, raw = "SLURM_EXTRA_ARGS", r.str("SLURM_EXTRA_ARGS")
    accepted = "long sbatch options separated by spaces, e.g. --exclude=node07 --mail-type=END"
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise r.fail(name, raw, f"{accepted}; no newlines or control characters")
    try:
        args = tuple(shlex.split(raw))
    except ValueError as e:  # an unclosed quote
        raise r.fail(name, raw, f"{accepted} ({e})") from None
    for arg in args:
        option = arg.split("=", 1)[0]
        if not option.startswith("--") or len(option) < 3:
            raise r.fail(name, raw, f"{accepted}; {arg!r} is not a long option (--name=value)")
        if option[2:] in SLURM_RESERVED_OPTIONS:
            reserved = ", ".join(f"--{o}" for o in SLURM_RESERVED_OPTIONS)
            raise r.fail(name, raw, f"{accepted}; not {reserved}: the Slurm executor sets them")
    return args


def _slurm(r: _Reader) -> SlurmSettings:
    def text(name: str, pattern: re.Pattern[str], accepted: str) -> str:
        value = r.str(name).strip()
        if not pattern.match(value):
            raise r.fail(name, value, accepted)
        return value

    simple = "letters, digits, '.', '_' and '-', or empty for the cluster's default"
    return SlurmSettings(
        partition=text("SLURM_PARTITION", _SLURM_PARTITION_RE, f"{simple}; ',' between several"),
        account=text("SLURM_ACCOUNT", _SLURM_NAME_RE, simple),
        qos=text("SLURM_QOS", _SLURM_NAME_RE, simple),
        time_minutes=r.int("SLURM_TIME_MINUTES"),
        cpus_per_gpu=r.int("SLURM_CPUS_PER_GPU"),
        mem_gb=r.int("SLURM_MEM_GB"),
        constraint=text(
            "SLURM_CONSTRAINT",
            _SLURM_CONSTRAINT_RE,
            "node features as --constraint takes them, e.g. h100 or a100&ib, no spaces",
        ),
        array_parallelism=r.int("SLURM_ARRAY_PARALLELISM"),
        extra_args=_slurm_extra_args(r),
    )


def config_from_kconfig(kconf: kconfiglib.Kconfig, path: str = ".config") -> Config:
    """Build the typed Config from a loaded Kconfig; raise ConfigError on any bad value."""
    r = _Reader(kconf, path)
    dataset = r.choice("DATASET", ("imagenet", "cifar100", "cifar10", "mnist5k", "synthetic"))
    model = ModelSpec(
        name=r.choice("MODEL", ("resnet50", "resnet18", "resnet20")),
        stem=r.choice("MODEL_STEM", ("imagenet", "cifar")),
        keep_ends_dense=r.bool("MODEL_KEEP_ENDS_DENSE"),
    )
    synthetic = dataset == "synthetic"
    data = DataSpec(
        name=dataset,
        data_dir=r.str("DATA_DIR") or "data",
        image_size=r.int("DATA_IMAGE_SIZE"),
        workers=r.int("DATA_WORKERS"),
        pin_memory=r.bool("DATA_PIN_MEMORY"),
        persistent_workers=r.int("DATA_WORKERS") > 0,
        download=r.bool("DATA_DOWNLOAD"),
        decode=r.choice("DATA_DECODE", ("pil", "uint8")) if dataset == "imagenet" else "pil",
        target_images_per_second=(
            r.int("DATA_TARGET_IMAGES_PER_SECOND") if dataset == "imagenet" else 3000
        ),
        synthetic_classes=r.int("DATA_SYNTHETIC_CLASSES") if synthetic else 1000,
        synthetic_train_size=r.int("DATA_SYNTHETIC_TRAIN_SIZE") if synthetic else 0,
        synthetic_val_size=r.int("DATA_SYNTHETIC_VAL_SIZE") if synthetic else 0,
    )
    lr_schedule = r.choice("LR_SCHEDULE", ("cosine", "step", "constant"))
    train = TrainSpec(
        epochs=r.int("TRAIN_EPOCHS"),
        batch_size=r.int("TRAIN_BATCH_SIZE"),
        lr_schedule=lr_schedule,
        warmup_epochs=r.int("LR_WARMUP_EPOCHS"),
        step_size=r.int("LR_STEP_SIZE") if lr_schedule == "step" else 30,
        step_gamma=(
            r.float("LR_STEP_GAMMA", low=0, high=1, low_open=True) if lr_schedule == "step" else 0.1
        ),
        label_smoothing=r.float("TRAIN_LABEL_SMOOTHING", low=0, high=1, high_open=True),
        grad_clip=r.float("TRAIN_GRAD_CLIP", low=0),
        precision=r.choice("TRAIN_PRECISION", ("fp32", "bf16", "fp16")).replace("fp32", "off"),
        channels_last=r.bool("TRAIN_CHANNELS_LAST"),
        tf32=r.bool("TRAIN_TF32"),
        compile=r.bool("TRAIN_COMPILE"),
        device=r.choice("TRAIN_DEVICE", ("auto", "cuda", "cpu")),
        checkpoint=r.bool("TRAIN_CHECKPOINT"),
        deterministic=r.bool("TRAIN_DETERMINISTIC"),
        max_steps_per_epoch=r.int("TRAIN_MAX_STEPS_PER_EPOCH"),
        **_distributed(r),
    )
    if train.warmup_epochs >= train.epochs:
        raise r.fail(
            "LR_WARMUP_EPOCHS", str(train.warmup_epochs), f"0..{train.epochs - 1} (below epochs)"
        )

    optimizers = tuple(
        _optimizer(r, name) for name in OPTIMIZER_ORDER if r.bool(f"OPTIMIZER_{name.upper()}")
    )
    if not optimizers:
        raise ConfigError(f"{path}: no optimizer selected (enable at least one OPTIMIZER_* option)")
    adamwadv_clip = (
        r.float("ADAMWADV_GRAD_CLIP", low=0, low_open=True)
        if any(_uses_adamwadv(o) for o in optimizers)
        else 1.0
    )

    methods = tuple(
        m for m in ("none", "magnitude", "movement", "state") if r.bool(f"PRUNING_{m.upper()}")
    )
    if not methods:
        raise ConfigError(f"{path}: no pruning method selected (enable at least one PRUNING_*)")
    sparsities = _sparsities(r)
    if set(methods) - {"none"} and not sparsities:
        raise ConfigError(
            f"{path}: pruning methods are selected but no sparsity level "
            "(enable a SPARSITY_* level or set CONFIG_SPARSITY_CUSTOM)"
        )
    pruning = PruningSpec(
        method="none",
        sparsity=0.0,
        schedule=r.choice("PRUNING_SCHEDULE", ("cubic", "linear")),
        start_step=r.int("PRUNING_START_STEP"),
        end_epoch=r.int("PRUNING_END_EPOCH"),
        interval=r.int("PRUNING_INTERVAL"),
        scope=r.choice("PRUNING_SCOPE", ("global", "layerwise")),
    )
    if set(methods) - {"none"} and pruning.end_epoch > train.epochs:
        raise r.fail(
            "PRUNING_END_EPOCH",
            str(pruning.end_epoch),
            f"1..{train.epochs} (at most CONFIG_TRAIN_EPOCHS, or the target is never reached)",
        )

    name = r.str("MATRIX_NAME")
    if not is_plain_name(name):
        raise r.fail("MATRIX_NAME", name, NAME_ACCEPTED)
    seeds = r.int_list("MATRIX_SEEDS")
    if not seeds:
        first = r.int("TRAIN_SEED")
        seeds = tuple(range(first, first + r.int("MATRIX_SEED_COUNT")))
    if len(set(seeds)) != len(seeds):
        raise r.fail("MATRIX_SEEDS", r.str("MATRIX_SEEDS"), "distinct seeds")
    gpus = tuple(str(g) for g in r.int_list("MATRIX_GPUS"))
    if len(set(gpus)) != len(gpus):
        repeated = next(g for g in gpus if gpus.count(g) > 1)
        raise r.fail(
            "MATRIX_GPUS", r.str("MATRIX_GPUS"), f"distinct GPU indices; {repeated} repeats"
        )
    if gpus and train.gpus_per_run > len(gpus):
        raise r.fail(
            "GPUS_PER_RUN",
            str(train.gpus_per_run),
            f"1..{len(gpus)}, the number of GPUs in CONFIG_MATRIX_GPUS={r.str('MATRIX_GPUS')!r}",
        )
    executor = r.choice("MATRIX_EXECUTOR", EXECUTORS)
    matrix = MatrixSettings(
        name=name,
        results_dir=r.str("RESULTS_DIR") or "results",
        seeds=seeds,
        jobs=r.int("MATRIX_JOBS"),
        gpus=gpus,
        continue_on_failure=r.bool("MATRIX_CONTINUE_ON_FAILURE"),
        executor=executor,
        slurm=_slurm(r) if executor == "slurm" else None,
    )
    report = ReportSettings(
        baseline=r.str("REPORT_BASELINE"),
        candidate=r.str("REPORT_CANDIDATE"),
        plots=tuple(p for p in PLOTS if r.bool(f"REPORT_PLOT_{p.upper()}")),
    )
    # "# CONFIG_X is not set" is kept as CONFIG_X=n: a bool that defaults to y but is off (the
    # GPU defconfigs' TRAIN_DETERMINISTIC) must stay off when the snapshot is reloaded.
    tracking = _tracking(r)
    symbols = tuple(
        (f"CONFIG_{sym.name}", "n") if line.startswith("#") else tuple(line.split("=", 1))
        for sym in kconf.unique_defined_syms
        if (line := sym.config_string.strip())
    )
    return Config(
        model=model,
        data=data,
        train=train,
        optimizers=optimizers,
        adamwadv_grad_clip=adamwadv_clip,
        pruning_methods=methods,
        sparsities=sparsities,
        pruning=pruning,
        matrix=matrix,
        report=report,
        symbols=symbols,
        tracking=tracking,
    )


def load(path: str | os.PathLike[str] = ".config") -> Config:
    """Read, expand (olddefconfig semantics) and validate a .config into a Config."""
    return config_from_kconfig(load_kconfig_with(path), str(path))


def results_dir_setting(path: str | os.PathLike[str] | None = None) -> Path:
    """CONFIG_RESULTS_DIR of the configuration file (`KCONFIG_CONFIG`, default `.config`),
    read through kconfiglib without validating the rest: `make continue` and `make report` must
    find the matrices `make test-matrix` wrote there even while that file is half edited.
    `results` (the option's default) when the file is missing; a file that is no
    configuration at all (a directory, binary content) is a ConfigError."""
    if path is None:
        path = os.environ.get("KCONFIG_CONFIG", ".config")
    if not os.path.exists(path):
        return Path("results")
    kconf = load_kconfig()
    read_config_file(kconf, path)
    return Path(kconf.syms["RESULTS_DIR"].str_value or "results")


def load_snapshot(symbols: dict[str, str], label: str) -> Config:
    """Rebuild a Config from a symbol snapshot (matrix.json's `config`), as if it were a
    .config file."""
    import tempfile

    # A symbol a later version removed is dropped: each run's identity is checked on its own.
    known = {sym.name for sym in load_kconfig().unique_defined_syms}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ".config"
        path.write_text(
            "".join(f"{k}={v}\n" for k, v in symbols.items() if k.removeprefix("CONFIG_") in known)
        )
        kconf = load_kconfig_with(path)
    return config_from_kconfig(kconf, label)
