"""Load `.config` through kconfiglib into one frozen, typed Config.

This is the only module that reads Kconfig symbols: a method's own options are read by its
catalogue entry (lib/catalogue.py) through this module's reader, while the config is loaded.
Everything after it speaks the types of `lib.spec`. Every value is validated here: a bad one
raises ConfigError whose message is one line naming the symbol, the value and what is accepted.

Kconfig has no float type, so floats are `string` symbols parsed and range-checked here.
An assignment in `.config` that kconfiglib would silently drop (out of range, malformed, or
blocked by an unmet dependency) is an error too: a configuration is never misread.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import kconfiglib

from lib import catalogue
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

PRESET_SPARSITIES = (50, 70, 80, 90, 95)
PLOTS = (
    "accuracy_evolution",
    "accuracy_vs_sparsity",
    "memory",
    "memory_vs_accuracy",
    "sparsity",
    "operating_points",
    "time_to_target",
)
EXECUTORS = ("local", "slurm")
_SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9._-]*$")
_SLURM_PARTITION_RE = re.compile(r"^[A-Za-z0-9._,-]*$")
_SLURM_CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9._,&|!*\[\]():=-]*$")
# sbatch options the Slurm executor sets itself (lib/slurm.py): the array, where its logs go,
# the signal that saves a run before its time limit.
SLURM_RESERVED_OPTIONS = ("array", "output", "error", "signal", "open-mode", "wrap")
# Checked in SLURM_EXTRA_ARGS beyond the reserved ones: their values could undo what the
# executor relies on (requeueing at the time limit, the submitting environment).
SLURM_WATCHED_OPTIONS = (*SLURM_RESERVED_OPTIONS, "requeue", "no-requeue", "export")


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


TUNING_SEARCHES = ("halton", "sobol", "grid")


@dataclass(frozen=True)
class SearchRange:
    """One searched hyperparameter of one optimizer: its field, scale and range."""

    field: str
    scale: str  # log | linear (lib.catalogue.SEARCH_SCALES)
    low: float
    high: float


@dataclass(frozen=True)
class TuningSettings:
    """The tuning menu (lib/Kconfig.tuning): how lib.matrix plans trials (lib/tuning.py)."""

    search: str  # TUNING_SEARCHES
    trials: int  # per study, equal for every optimizer (grid: grid_points ** dimensions)
    studies: int
    seed: int
    rerun_seeds: int  # 0: no reruns of the chosen setting
    grid_points: int = 0  # grid search only
    # Each optimizer's searched hyperparameters, in Config.optimizers order.
    spaces: tuple[tuple[SearchRange, ...], ...] = ()


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
    pruning_methods: tuple[str, ...]  # "none" and the selected catalogue methods, menu order
    sparsities: tuple[float, ...]  # sorted, unique
    pruning: PruningSpec  # schedule template (method "none", sparsity 0)
    matrix: MatrixSettings
    report: ReportSettings
    symbols: tuple[tuple[str, str], ...]  # ("CONFIG_X", "value") as .config holds them
    tracking: TrackingSpec = TrackingSpec()
    # The training settings of each optimizer's runs, in `optimizers` order: the menu's, with
    # what the optimizer's catalogue entry brings by definition (`OptimizerEntry.train_for`,
    # e.g. AdamWAdv's clipping and cosine schedule).
    trains: tuple[TrainSpec, ...] = ()
    # A plug-in pruning method's recorded fields (settings, distribution), by method name.
    pruning_fields: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    # The methods whose upstream score is chosen (CONFIG_PRUNING_<NAME>_UPSTREAM_SCORE).
    upstream_scores: tuple[str, ...] = ()
    tuning: TuningSettings | None = None  # CONFIG_TUNING: the tuning axis

    def search_space_for(self, opt: OptimizerSpec) -> tuple[SearchRange, ...]:
        """The hyperparameters the tuning axis searches for `opt` (empty without tuning)."""
        if self.tuning is None or opt not in self.optimizers:
            return ()
        return self.tuning.spaces[self.optimizers.index(opt)]

    def train_for(self, opt: OptimizerSpec) -> TrainSpec:
        """The training settings of a run with `opt` (see `trains`)."""
        if opt in self.optimizers and self.trains:
            return self.trains[self.optimizers.index(opt)]
        return self.train

    def pruning_for(self, method: str, sparsity: float) -> PruningSpec:
        """The pruning of a run with `method` at `sparsity`: the menu's schedule template with
        the method's own recorded fields (a plug-in's settings and distribution)."""
        fields = dict(dict(self.pruning_fields).get(method, ()))
        # The seed's upstream semantics reach only the generic methods that take them; a dense
        # run and a method an optimizer implements itself keep their run.json unchanged.
        generic = method != "none" and catalogue.pruning_method(method).owner is None
        fields["upstream_score"] = method in self.upstream_scores
        if not generic:
            fields.update(rebuild_masks=False, mask_weights_only=False)
        entry = catalogue.catalogue().pruning.get(method)
        if entry is not None and entry.scope is not None:  # a method with its own scope
            fields["scope"] = entry.scope
        return replace(self.pruning, method=method, sparsity=sparsity, **fields)

    def symbol_dict(self) -> dict[str, str]:
        return dict(self.symbols)


# --------------------------------------------------------------------------------------------
# kconfiglib access


def kconfig_environment() -> dict[str, str]:
    """The environment the Kconfig tree is parsed in: `srctree` makes `source` paths resolve
    from the project root wherever the command runs; PLUGIN_KCONFIG_ENV names the generated
    file that sources the installed plug-ins' fragments (lib/catalogue.py)."""
    return {
        "srctree": str(ROOT),
        catalogue.PLUGIN_KCONFIG_ENV: catalogue.catalogue().kconfig_dir(),
    }


def load_kconfig() -> kconfiglib.Kconfig:
    """Parse the Kconfig tree, the installed plug-ins' fragments included."""
    env = kconfig_environment()
    old = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        kconf = kconfiglib.Kconfig(str(KCONFIG), warn_to_stderr=False)
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
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


def _dependency_text(sym: kconfiglib.Symbol) -> str:
    """`sym`'s dependencies in words the user can act on: a derived option (no prompt) that
    other options select, such as OPTIMIZER_TAKES_PRUNING, is shown as those options."""
    text = kconfiglib.expr_str(sym.direct_dep)
    for dep in kconfiglib.expr_items(sym.direct_dep):
        derived = isinstance(dep, kconfiglib.Symbol) and not any(n.prompt for n in dep.nodes)
        if derived and dep.rev_dep is not sym.kconfig.n:
            selected_by = kconfiglib.expr_str(dep.rev_dep)
            if text == dep.name:
                text = selected_by
            else:
                text = re.sub(rf"\b{dep.name}\b", f"({selected_by})", text)
    return text


def check_assignments(kconf: kconfiglib.Kconfig, path: str, *, strict: bool = True) -> None:
    """Raise ConfigError for the first assignment in `path` that did not take effect.

    Malformed and out-of-range values are always errors (a typo must not turn into a default).
    A hidden option (its dependencies unmet) is treated as the kernel's tools treat it: a
    leftover value of a hidden number or string is dropped silently, but `=y` on a hidden
    option asks for something that cannot be had (state pruning without AdamWPrune), which is
    an error when `strict` and a printed notice otherwise (olddefconfig, savedefconfig).
    A derived option (no prompt) is recomputed from the options it derives from, as the
    kernel's tools do, with a printed notice when not `strict` (olddefconfig, savedefconfig:
    a .config written before a choice was edited by hand, or by an older version, carries the
    old value); loading a file whose derived value disagrees is an error, as the value would
    not be the one trained with. Two alternatives of one choice set to y: the later
    assignment wins, with a notice, as in the kernel's tools."""
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
            message = f"{path}: {name}={sym.user_value!r} is derived from other options"
            if strict:
                raise ConfigError(
                    f"{message} (now {got!r}) and cannot be set directly: change those with "
                    "make menuconfig; make olddefconfig recomputes it"
                )
            print(f"note: {message}; recomputed as {got!r}", file=sys.stderr)
            continue
        if sym.visibility == 0:
            if sym.orig_type not in (kconfiglib.BOOL, kconfiglib.TRISTATE):
                continue  # the leftover value of a hidden option, as after a menu change
            deps = _dependency_text(sym)
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
    for name, value in kconf.missing_syms:
        # kconfiglib drops these without a word; a misspelt name would silently lose the
        # user's intent. A leftover of a removed option is dropped by olddefconfig.
        plugin = catalogue.catalogue().broken_symbol(name)
        if plugin is not None and value != "n":
            # The option of a plug-in that cannot be used: its reason is the one line.
            message = f"{path}: CONFIG_{name}={value} cannot be used: {plugin}"
            if strict:
                raise ConfigError(message)
            print(f"note: {message}; dropped", file=sys.stderr)
            continue
        why = "misspelt, or removed"
        if name.startswith(("OPTIMIZER_", "PRUNING_")):
            why += ", or a plug-in method that is not installed (docs/plugins.md)"
        message = f"{path}: CONFIG_{name} is not an option of this Kconfig ({why})"
        if strict:
            raise ConfigError(
                f"{message}: correct or delete that line (make olddefconfig deletes it)"
            )
        print(f"note: {message}; dropped", file=sys.stderr)
    for choice in kconf.unique_choices:
        picked = [s for s in choice.syms if s.user_value == 2]
        if len(picked) > 1 and choice.visibility and choice.user_selection is not None:
            # kconfiglib keeps the selection of the later line, as the kernel's tools do
            # (docs/cluster.md appends CONFIG_MATRIX_EXECUTOR_SLURM=y to a .config).
            names = ", ".join(f"CONFIG_{s.name}" for s in picked)
            print(
                f"note: {path}: {names} are alternatives of one choice; the later assignment, "
                f"CONFIG_{choice.user_selection.name}=y, wins",
                file=sys.stderr,
            )


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


def _optimizer(r: _Reader, entry: catalogue.OptimizerEntry) -> OptimizerSpec:
    """An optimizer's spec from its options: the entry reads them itself (built-ins), or its
    typed settings are read from CONFIG_<NAME>_<FIELD> (plug-ins)."""
    if entry.read is not None:
        return entry.read(r)
    return OptimizerSpec(name=entry.name, **_plugin_fields(r, entry))


def _plugin_fields(r: _Reader, entry) -> dict:
    """A plug-in's recorded spec fields: its typed settings and its distribution."""
    fields: dict = {"settings": catalogue.read_settings(entry, r)}
    if entry.origin is not None:
        fields["distribution"] = entry.origin.distribution
        fields["distribution_version"] = entry.origin.version
    return fields


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


def _nm_pattern(r: _Reader, sparsities: tuple[float, ...]) -> dict:
    """PruningSpec's nm_n / nm_m: N:M semi-structured sparsity, whose sparsity is (M-N)/M, so
    every selected level must be that one. Unstructured ({}) unless CONFIG_PRUNING_NM."""
    if not r.bool("PRUNING_NM"):
        return {}
    for upstream in ("PRUNING_REBUILD_MASKS", "PRUNING_MASK_WEIGHTS_ONLY"):
        if r.bool(upstream):
            raise r.fail(
                "PRUNING_NM",
                "y",
                f"n with CONFIG_{upstream}=y: the seed's upstream masks are unstructured",
            )
    n, m = r.int("PRUNING_NM_N"), r.int("PRUNING_NM_M")
    if not 1 <= n < m:
        raise r.fail("PRUNING_NM_N", str(n), f"1..{m - 1} (fewer than CONFIG_PRUNING_NM_M={m})")
    implied = (m - n) / m
    wrong = [s for s in sparsities if abs(s - implied) > 1e-9]
    if wrong:
        raise r.fail(
            "SPARSITY_*",
            ",".join(f"{s:g}" for s in sparsities),
            f"only {implied:g}: an {n}:{m} pattern prunes exactly {m - n} of every {m} weights",
        )
    return {"nm_n": n, "nm_m": m}


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


def _search_range(r: _Reader, symbol: str, field: str, scale: str) -> SearchRange | None:
    """A "low,high" range of the tuning axis; None when empty (not searched)."""
    raw = r.str(symbol).strip()
    if not raw:
        return None
    positive = "0 < low < high" if scale == "log" else "low < high"
    accepted = f"two numbers low,high with {positive} ({scale} scale), or empty"
    parts = [p.strip() for p in raw.split(",")]
    try:
        low, high = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        raise r.fail(symbol, raw, accepted) from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise r.fail(symbol, raw, accepted)
    if scale == "log" and low <= 0:
        raise r.fail(symbol, raw, accepted)
    return SearchRange(field, scale, low, high)


def _tuning(
    r: _Reader,
    entries: list[catalogue.OptimizerEntry],
    optimizers: tuple[OptimizerSpec, ...],
    seeds: tuple[int, ...],
) -> TuningSettings | None:
    """The tuning menu and each chosen optimizer's searched ranges; None with tuning off.
    Every optimizer gets the same number of trials, so a grid needs as many searched
    hyperparameters for each."""
    if not r.bool("TUNING"):
        return None
    if len(seeds) != 1:
        symbol = "MATRIX_SEEDS" if r.str("MATRIX_SEEDS").strip() else "MATRIX_SEED_COUNT"
        raise r.fail(
            symbol,
            r.str(symbol),
            "one seed with CONFIG_TUNING: study s trains with that seed + s, and "
            "CONFIG_TUNING_RERUN_SEEDS sets how many seeds rerun the chosen setting",
        )
    spaces = []
    for entry, opt in zip(entries, optimizers, strict=True):
        names = {n for n, _ in opt.settings} | {f.name for f in dataclasses.fields(opt)}
        ranges = []
        for dim in entry.search_space:
            if dim.field not in names or dim.field in ("name", "settings"):
                raise ConfigError(
                    f"{r.path}: optimizer {entry.name!r} declares search dimension "
                    f"{dim.field!r}, which is none of its settings"
                )
            found = _search_range(r, dim.symbol(entry.name), dim.field, dim.scale)
            if found is not None:
                ranges.append(found)
        if not ranges:
            symbols = ", ".join(f"CONFIG_{d.symbol(entry.name)}" for d in entry.search_space)
            raise ConfigError(
                f"{r.path}: CONFIG_TUNING=y but {entry.display} searches no hyperparameter "
                f"(set a range in {symbols or 'its menu: its entry declares no search space'})"
            )
        spaces.append(tuple(ranges))
    search = r.choice("TUNING_SEARCH", TUNING_SEARCHES)
    grid_points = r.int("TUNING_GRID_POINTS") if search == "grid" else 0
    if search == "grid":
        sizes = {len(space) for space in spaces}
        if len(sizes) > 1:
            counts = ", ".join(
                f"{e.display} {len(space)}" for e, space in zip(entries, spaces, strict=True)
            )
            raise r.fail(
                "TUNING_SEARCH_GRID",
                "y",
                "a quasi-random search, or ranges that give every optimizer as many searched "
                f"hyperparameters (now {counts}): a grid must give each the same trials",
            )
        trials = grid_points ** sizes.pop()
    else:
        trials = r.int("TUNING_TRIALS")
    return TuningSettings(
        search=search,
        trials=trials,
        studies=r.int("TUNING_STUDIES"),
        seed=r.int("TUNING_SEED"),
        rerun_seeds=r.int("TUNING_RERUN_SEEDS"),
        grid_points=grid_points,
        spaces=tuple(spaces),
    )


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
    reserved = ", ".join(f"--{o}" for o in SLURM_RESERVED_OPTIONS)
    for arg in args:
        option, has_value, value = arg.partition("=")
        if not option.startswith("--") or len(option) < 3:
            raise r.fail(name, raw, f"{accepted}; {arg!r} is not a long option (--name=value)")
        given = option[2:]
        # sbatch (getopt_long) takes any unique prefix of an option: --arr is --array.
        watched = [o for o in SLURM_WATCHED_OPTIONS if o.startswith(given)]
        if given not in SLURM_WATCHED_OPTIONS and watched:
            raise r.fail(
                name,
                raw,
                f"{accepted}; {option} abbreviates {', '.join(f'--{o}' for o in watched)} "
                "(sbatch takes prefixes): write options in full",
            )
        if given in SLURM_RESERVED_OPTIONS:
            raise r.fail(name, raw, f"{accepted}; not {reserved}: the Slurm executor sets them")
        if given == "no-requeue" or (given == "requeue" and has_value):
            raise r.fail(
                name,
                raw,
                f"{accepted}; not {arg}: the Slurm executor requeues every run at its time limit "
                "(--requeue, no value)",
            )
        if given == "export" and "ALL" not in value.split(","):
            raise r.fail(
                name,
                raw,
                f"{accepted}; not {arg}: the runs need the environment they were submitted from "
                "(PATH, tracker keys); accepted: --export=ALL or --export=ALL,NAME=value",
            )
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


def _image_folder(r: _Reader) -> dict[str, str]:
    """DataSpec fields of your own ImageFolder: two directories, neither empty nor the same.
    Whether they hold class folders is the data's business (lib.data.folder_classes, which
    check-config and the dry run call)."""
    dirs = {}
    for field, symbol in (("train_dir", "DATA_IMAGEFOLDER_TRAIN_DIR"),
                          ("val_dir", "DATA_IMAGEFOLDER_VAL_DIR")):  # fmt: skip
        value = r.str(symbol).strip()
        if not value:
            raise r.fail(symbol, value, "a directory of <class>/<image> folders")
        dirs[field] = value
    if os.path.normpath(dirs["train_dir"]) == os.path.normpath(dirs["val_dir"]):
        raise r.fail(
            "DATA_IMAGEFOLDER_VAL_DIR",
            dirs["val_dir"],
            "a directory other than CONFIG_DATA_IMAGEFOLDER_TRAIN_DIR: evaluating on the "
            "training images measures nothing",
        )
    return dirs


def _held_out(r: _Reader) -> dict[str, int | float]:
    """DataSpec fields of the held-out validation split (docs/protocol.md); none when off, so
    the run.json of a matrix without the split stays what it was."""
    size = r.int("DATA_VAL_SIZE")
    if size == 0:
        return {}
    target = r.float("DATA_VAL_TARGET", low=0, high=100)
    return {"val_size": size, "val_seed": r.int("DATA_VAL_SEED"), "val_target": target}


def _check_torchvision_model(r: _Reader, model: ModelSpec, image_size: int) -> None:
    """A model chosen by name must exist in the installed torchvision, have the chosen stem and
    take the image size (checked on the meta device: no memory, no compute)."""
    from models.zoo import model_problem

    problem = model_problem(model.name, model.stem, image_size)
    if problem is not None:
        setting, accepted = problem
        symbol, value = {
            "name": ("MODEL_TORCHVISION_NAME", model.name),
            "stem": ("MODEL_STEM_CIFAR", "y"),
            "image_size": ("DATA_IMAGE_SIZE", str(image_size)),
        }[setting]
        raise r.fail(symbol, value, accepted)


def config_from_kconfig(kconf: kconfiglib.Kconfig, path: str = ".config") -> Config:
    """Build the typed Config from a loaded Kconfig; raise ConfigError on any bad value."""
    r = _Reader(kconf, path)
    dataset = r.choice(
        "DATASET", ("imagenet", "imagefolder", "cifar100", "cifar10", "mnist5k", "synthetic")
    )
    model_choice = r.choice("MODEL", ("resnet50", "resnet18", "resnet20", "torchvision"))
    model = ModelSpec(
        name=r.str("MODEL_TORCHVISION_NAME").strip()
        if model_choice == "torchvision"
        else model_choice,
        stem=r.choice("MODEL_STEM", ("imagenet", "cifar")),
        keep_ends_dense=r.bool("MODEL_KEEP_ENDS_DENSE"),
    )
    synthetic = dataset == "synthetic"
    folders = dataset in ("imagenet", "imagefolder")  # image files: a decode path, a CPU budget
    data = DataSpec(
        name=dataset,
        data_dir=r.str("DATA_DIR") or "data",
        image_size=r.int("DATA_IMAGE_SIZE"),
        workers=r.int("DATA_WORKERS"),
        pin_memory=r.bool("DATA_PIN_MEMORY"),
        persistent_workers=r.int("DATA_WORKERS") > 0,
        download=r.bool("DATA_DOWNLOAD"),
        decode=r.choice("DATA_DECODE", ("pil", "uint8")) if folders else "pil",
        target_images_per_second=r.int("DATA_TARGET_IMAGES_PER_SECOND") if folders else 3000,
        synthetic_classes=r.int("DATA_SYNTHETIC_CLASSES") if synthetic else 1000,
        synthetic_train_size=r.int("DATA_SYNTHETIC_TRAIN_SIZE") if synthetic else 0,
        synthetic_val_size=r.int("DATA_SYNTHETIC_VAL_SIZE") if synthetic else 0,
        **_image_folder(r) if dataset == "imagefolder" else {},
        **_held_out(r),
    )
    if data.known_train_images is not None and data.val_size >= data.known_train_images:
        raise r.fail(
            "DATA_VAL_SIZE",
            str(data.val_size),
            f"0 (off) or 1..{data.known_train_images - 1}: {dataset} has "
            f"{data.known_train_images} training images and needs some left to train on",
        )
    if model_choice == "torchvision":
        _check_torchvision_model(r, model, data.image_size)
    lr_schedule = r.choice("LR_SCHEDULE", ("cosine", "cosine_epoch", "step", "constant"))
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
        time_budget_seconds=r.int("TRAIN_TIME_BUDGET_SECONDS"),
        **_distributed(r),
    )
    if train.warmup_epochs >= train.epochs:
        raise r.fail(
            "LR_WARMUP_EPOCHS", str(train.warmup_epochs), f"0..{train.epochs - 1} (below epochs)"
        )

    cat = catalogue.catalogue()
    chosen = [e for e in cat.optimizers.values() if r.bool(e.symbol)]
    optimizers = tuple(_optimizer(r, entry) for entry in chosen)
    if not optimizers:
        raise ConfigError(f"{path}: no optimizer selected (enable at least one OPTIMIZER_* option)")
    trains = tuple(
        entry.train_for(r, opt, train) if entry.train_for else train
        for entry, opt in zip(chosen, optimizers, strict=True)
    )

    chosen_methods = [e for e in cat.pruning.values() if r.bool(e.symbol)]
    methods = ("none",) * r.bool("PRUNING_NONE") + tuple(e.name for e in chosen_methods)
    pruning_fields = tuple(
        (e.name, tuple(_plugin_fields(r, e).items()))
        for e in chosen_methods
        if e.origin is not None
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
        rebuild_masks=r.bool("PRUNING_REBUILD_MASKS"),
        mask_weights_only=r.bool("PRUNING_MASK_WEIGHTS_ONLY"),
        **_nm_pattern(r, sparsities if set(methods) - {"none"} else ()),
    )
    upstream_scores = tuple(
        e.name
        for e in chosen_methods
        if e.upstream_score
        and f"{e.symbol}_UPSTREAM_SCORE" in r.kconf.syms
        and r.bool(f"{e.symbol}_UPSTREAM_SCORE")
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
    tuning = _tuning(r, chosen, optimizers, seeds)
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
        pruning_methods=methods,
        sparsities=sparsities,
        pruning=pruning,
        matrix=matrix,
        report=report,
        symbols=symbols,
        tracking=tracking,
        trains=trains,
        pruning_fields=pruning_fields,
        upstream_scores=upstream_scores,
        tuning=tuning,
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
