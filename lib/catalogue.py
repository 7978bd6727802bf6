"""The method catalogue: one entry per optimizer and per pruning method (docs/plugins.md).

An entry is everything the framework knows about a method: its name (the matrix axis value,
`CONFIG_OPTIMIZER_<NAME>` / `CONFIG_PRUNING_<NAME>`), its Kconfig fragment, its typed
settings, how it is built, which methods it combines with, its report label and its
per-method overrides. The config loader, the matrix planner, the optimizer registry, the
report and `make docs` iterate the catalogue; no other framework module names a method
(tests/test_catalogue.py greps for it).

Entries come from two places, in this order:

- the built-ins: one module each under `optimizers/entries/` and `lib/pruning_entries/`, each
  with its Kconfig fragment beside it;
- installed Python distributions, through the entry-point groups `prunebench.optimizers` and
  `prunebench.pruning` (the entry point's name is the method's name; it loads an
  `OptimizerEntry` or a `PruningEntry`).

A plug-in that cannot be used (it does not import, its name clashes, its Kconfig fragment
does not parse or does not define its symbol) is left out with its reason in `broken`: the
built-ins keep working, and choosing it fails with that one line.

This module imports neither torch nor kconfiglib at import time: `lib.spec` and the runner
use it without loading either.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib.errors import OneLineError
from lib.spec import PRUNE_SCOPES

if TYPE_CHECKING:
    import torch
    from torch import nn

    from lib.pruning import Pruner, PruningSchedule
    from lib.spec import OptimizerSpec, PruningSpec, TrainSpec

OPTIMIZER_GROUP = "prunebench.optimizers"
PRUNING_GROUP = "prunebench.pruning"
# The environment macro the Kconfig tree reads the plug-ins' generated fragments from.
PLUGIN_KCONFIG_ENV = "PRUNEBENCH_PLUGIN_KCONFIG"

# The packages of the built-in entries; each lists its modules in menu order (`BUILTIN`).
BUILTIN_PACKAGES = ("optimizers.entries", "lib.pruning_entries")

# A method's name becomes part of run ids, method keys (`<label>_<pruning>`, split on '_')
# and labels (`<name>-<base>`, split on '-'), and of Kconfig symbols (upper-cased).
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*")
NAME_ACCEPTED = "lower-case letters and digits, starting with a letter"
# The dense baseline is the framework's own, not a method.
RESERVED_NAMES = ("none", "dense")


class PluginError(OneLineError, ValueError):
    """A plug-in that cannot be used, described in one line naming its distribution and entry
    point."""


@dataclass(frozen=True)
class Origin:
    """Where a plug-in entry comes from: its distribution and entry point."""

    distribution: str
    version: str
    group: str
    entry_point: str  # `name = module:attribute` as declared

    def describe(self) -> str:
        return (
            f"distribution {self.distribution} {self.version}, entry point "
            f"{self.group}:{self.entry_point}"
        )


# --------------------------------------------------------------------------------------------
# typed settings of a plug-in


def setting(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """A field of a plug-in's settings dataclass with the range the config loader enforces:
    `lr: float = setting(1e-4, low=0, low_open=True)`. Kconfig has no float type, so a float
    setting is a `string` symbol parsed and range-checked by the loader."""
    return field(
        default=default,
        metadata={"low": low, "high": high, "low_open": low_open, "high_open": high_open},
    )


def settings_symbol(method: str, name: str) -> str:
    """The Kconfig symbol of a setting: `lion`, `lr` -> `LION_LR`."""
    return f"{method.upper()}_{name.upper()}"


def settings_pairs(settings: Any) -> tuple[tuple[str, Any], ...]:
    """A settings dataclass instance as the (name, value) pairs a spec records."""
    return tuple((f.name, getattr(settings, f.name)) for f in dataclasses.fields(settings))


def settings_from_pairs(cls: type, pairs: tuple[tuple[str, Any], ...]) -> Any:
    """The settings dataclass instance a spec's pairs describe (defaults for missing ones)."""
    return cls(**dict(pairs))


# --------------------------------------------------------------------------------------------
# search spaces (the tuning axis, lib/tuning.py)

SEARCH_SCALES = ("log", "linear")


@dataclass(frozen=True)
class SearchDimension:
    """One hyperparameter an optimizer's entry lets the tuning axis search: an OptimizerSpec
    field (`lr`) or a plug-in's setting, on a log or linear scale. Its range is the Kconfig
    string CONFIG_<NAME>_TUNE_<FIELD> (`low,high`; empty: not searched, the menu's value
    stays), which the entry's fragment defines."""

    field: str
    scale: str = "log"

    def symbol(self, method: str) -> str:
        return settings_symbol(method, f"tune_{self.field}")


# --------------------------------------------------------------------------------------------
# building an optimizer


@dataclass
class BuildContext:
    """What an entry's `build` gets: the model, its spec, the pruning in force."""

    model: nn.Module
    spec: OptimizerSpec
    pruning: PruningSpec
    schedule: PruningSchedule
    prunable: list[torch.Tensor]
    pruner: Pruner | None  # a generic pruning method's Pruner, or None (dense, or not taken)
    settings: Any = None  # a plug-in's typed settings (its `settings` dataclass)
    compiled: bool = False  # the model runs under torch.compile

    def groups(self, weight_decay: float, decay_all: bool = False) -> list[dict[str, Any]]:
        """Parameter groups: weight decay on weights only (optimizers.registry)."""
        from optimizers.registry import parameter_groups

        return parameter_groups(self.model, weight_decay, decay_all)

    def fast_path(self) -> dict[str, bool]:
        """`fused=True` or `foreach=True` for a torch Adam-family class (optimizers.registry)."""
        from optimizers.registry import fast_path

        return fast_path(self.model, self.compiled)

    def make(self, optimizer_class: type, params: Any = None, **kwargs: Any):
        """`optimizer_class(params, **kwargs)` with the run's pruning inside its `step()`:
        the class is mixed with `optimizers.masked.PruningMixin`, which scores, masks and zeroes
        pruned weights and their state. `params` defaults to `groups(0.0)`."""
        from optimizers.masked import with_pruning

        if params is None:
            params = self.groups(0.0)
        return with_pruning(optimizer_class)(params, pruner=self.pruner, **kwargs)


# --------------------------------------------------------------------------------------------
# entries


@dataclass(frozen=True)
class OptimizerEntry:
    """One optimizer. A plug-in gives name, display, kconfig, settings and build; the other
    hooks have defaults that fit any optimizer (docs/plugins.md)."""

    name: str  # matrix axis value; Kconfig CONFIG_OPTIMIZER_<NAME>, settings <NAME>_<FIELD>
    display: str  # the report's name: `Lion`
    kconfig: str | os.PathLike[str]  # its Kconfig fragment
    build: Callable[[BuildContext], Any]  # -> torch.optim.Optimizer
    settings: type | None = None  # a dataclass; each field read from CONFIG_<NAME>_<FIELD>
    # Built-ins read their OptimizerSpec fields themselves: reader -> OptimizerSpec.
    read: Callable[[Any], OptimizerSpec] | None = None
    # Takes the generic pruning methods (a Pruner inside its step()).
    takes_pruning: bool = True
    # Run-id and report label: `adamwprune-adamw`, `adam-amsgrad`; default: the name.
    label: Callable[[OptimizerSpec], str] | None = None
    # The base optimizer a wrapping optimizer steps like (metrics.json `base_optimizer`).
    base: Callable[[OptimizerSpec], str | None] | None = None
    # Training settings this optimizer brings by definition: (reader, spec, train) -> train.
    train_for: Callable[[Any, OptimizerSpec, TrainSpec], TrainSpec] | None = None
    # The OptimizerSpec fields the report's technical section shows for it, in order.
    report_fields: Callable[[dict[str, Any]], list[str]] | None = None
    # The report's default candidate is the first method of such an optimizer.
    default_candidate: bool = False
    origin: Origin | None = None  # set by discovery for plug-ins
    # What the tuning axis may search, in order (SearchDimension; its range in Kconfig).
    search_space: tuple[SearchDimension, ...] = ()

    @property
    def symbol(self) -> str:
        return f"OPTIMIZER_{self.name.upper()}"

    def label_of(self, spec: OptimizerSpec) -> str:
        return self.label(spec) if self.label else spec.name


@dataclass(frozen=True)
class PruningEntry:
    """One pruning method. A generic method scores weights for any optimizer that takes
    pruning; a method `owned` by an optimizer is implemented inside that optimizer."""

    name: str  # matrix axis value; Kconfig CONFIG_PRUNING_<NAME>
    display: str  # the report's word: `AdamW + magnitude`
    kconfig: str | os.PathLike[str]
    # lib.pruning.Pruner's score: a built-in score name, or a callable
    # (weight, optimizer_state_of_that_weight) -> Tensor of importance (low = pruned first),
    # called with `settings=` (its settings dataclass) too when the entry has settings.
    score: Any = None
    owner: str | None = None  # the optimizer that implements this method itself
    # A suffix of the method key read from the optimizer (`state-hybrid`).
    variant: Callable[[OptimizerSpec], str] | None = None
    settings: type | None = None
    origin: Origin | None = None
    # The score the upstream reference project ran under this method's name, where it differs
    # (lib.pruning.SCORES); chosen by CONFIG_<symbol>_UPSTREAM_SCORE, for reproducing the seed.
    upstream_score: str | None = None
    # The threshold scope this method's runs always use (lib.pruning.SCOPES), whatever the
    # menu's scope: layer-wise magnitude beside global magnitude in one matrix. None: the menu's.
    scope: str | None = None

    @property
    def symbol(self) -> str:
        return f"PRUNING_{self.name.upper()}"


# --------------------------------------------------------------------------------------------
# discovery


@dataclass
class Catalogue:
    optimizers: dict[str, OptimizerEntry]
    pruning: dict[str, PruningEntry]
    # Plug-ins left out, by method name: the one line that says why.
    broken: dict[str, str] = field(default_factory=dict)
    _kconfig_dir: tempfile.TemporaryDirectory | None = None

    def optimizer(self, name: str) -> OptimizerEntry:
        try:
            return self.optimizers[name]
        except KeyError:
            raise PluginError(self._unknown("optimizer", name, self.optimizers)) from None

    def pruning_method(self, name: str) -> PruningEntry:
        try:
            return self.pruning[name]
        except KeyError:
            raise PluginError(self._unknown("pruning method", name, self.pruning)) from None

    def _unknown(self, what: str, name: str, known: dict[str, Any]) -> str:
        if name in self.broken:
            return self.broken[name]
        return (
            f"{what} {name!r} is neither built in nor an installed plug-in "
            f"(known: {', '.join(known)})"
        )

    def kconfig_dir(self) -> str:
        """A directory with `Kconfig.optimizers` and `Kconfig.pruning`, which source the
        plug-ins' fragments (the main Kconfig reaches them through PLUGIN_KCONFIG_ENV)."""
        if self._kconfig_dir is None:
            self._kconfig_dir = tempfile.TemporaryDirectory(prefix="prunebench-plugins-")
            root = Path(self._kconfig_dir.name)
            for kind, entries in (("optimizers", self.optimizers), ("pruning", self.pruning)):
                lines = [
                    f'source "{Path(e.kconfig).resolve()}"\n'
                    for e in entries.values()
                    if e.origin is not None
                ]
                (root / f"Kconfig.{kind}").write_text("".join(lines), encoding="utf-8")
        return self._kconfig_dir.name

    def broken_symbol(self, symbol: str) -> str | None:
        """The reason a .config symbol is unknown, when it belongs to a broken plug-in."""
        for name, reason in self.broken.items():
            upper = name.upper()
            if symbol in (f"OPTIMIZER_{upper}", f"PRUNING_{upper}") or symbol.startswith(
                f"{upper}_"
            ):
                return reason
        return None


_CATALOGUE: Catalogue | None = None


def catalogue() -> Catalogue:
    """The catalogue of this process (built-ins, then installed plug-ins), found once."""
    global _CATALOGUE
    if _CATALOGUE is None:
        _CATALOGUE = discover()
    return _CATALOGUE


def reset() -> None:
    """Forget the catalogue (tests that install or remove a plug-in)."""
    global _CATALOGUE
    _CATALOGUE = None


def optimizer(name: str) -> OptimizerEntry:
    return catalogue().optimizer(name)


def pruning_method(name: str) -> PruningEntry:
    return catalogue().pruning_method(name)


def _builtins(package: str) -> dict[str, Any]:
    names = importlib.import_module(package).BUILTIN
    return {name: importlib.import_module(f"{package}.{name}").ENTRY for name in names}


def discover() -> Catalogue:
    """The built-ins, in menu order, then the installed plug-ins, by name."""
    optimizers, pruning = (_builtins(package) for package in BUILTIN_PACKAGES)
    cat = Catalogue(optimizers=optimizers, pruning=pruning)
    for group, kind, table in (
        (OPTIMIZER_GROUP, OptimizerEntry, optimizers),
        (PRUNING_GROUP, PruningEntry, pruning),
    ):
        for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
            origin = _origin(ep, group)
            try:
                entry = _load(ep, kind, origin, cat)
            except PluginError as e:
                cat.broken.setdefault(ep.name, str(e))
                continue
            table[entry.name] = entry
    return cat


def _origin(ep: importlib.metadata.EntryPoint, group: str) -> Origin:
    dist = getattr(ep, "dist", None)
    name = dist.metadata["Name"] if dist is not None else "?"
    version = dist.version if dist is not None else "?"
    return Origin(name, version, group, f"{ep.name} = {ep.value}")


def _load(ep, kind: type, origin: Origin, cat: Catalogue):
    where = f"plug-in {ep.name!r} ({origin.describe()})"
    try:
        entry = ep.load()
    except Exception as e:  # noqa: BLE001 - any failure of third-party code is reported
        raise PluginError(f"{where} does not import: {type(e).__name__}: {_first(e)}") from None
    if not isinstance(entry, kind):
        raise PluginError(
            f"{where} loads a {type(entry).__name__}, not a lib.catalogue.{kind.__name__}"
        )
    if entry.name != ep.name:
        raise PluginError(
            f"{where} names its entry {entry.name!r}; the entry point's name must match"
        )
    if not NAME_PATTERN.fullmatch(entry.name) or entry.name in RESERVED_NAMES:
        raise PluginError(
            f"{where}: name {entry.name!r} is not accepted ({NAME_ACCEPTED}; not none)"
        )
    taken = {**cat.optimizers, **cat.pruning}
    if entry.name in taken:
        other = taken[entry.name].origin
        by = other.describe() if other else "a built-in method"
        raise PluginError(f"{where}: name {entry.name!r} is already taken by {by}")
    if entry.settings is not None and not dataclasses.is_dataclass(entry.settings):
        raise PluginError(f"{where}: settings must be a dataclass")
    if isinstance(entry, PruningEntry) and entry.owner is None and entry.score is None:
        raise PluginError(f"{where}: a pruning entry needs a score (or an owner optimizer)")
    if isinstance(entry, PruningEntry) and entry.scope not in (None, *PRUNE_SCOPES):
        accepted = ", ".join(PRUNE_SCOPES)
        raise PluginError(f"{where}: scope {entry.scope!r} is not accepted ({accepted})")
    _check_fragment(entry, where)
    return dataclasses.replace(entry, origin=origin)


def _check_fragment(entry: OptimizerEntry | PruningEntry, where: str) -> None:
    """The fragment parses on its own and defines the entry's symbol as a prompted bool."""
    import kconfiglib

    path = Path(entry.kconfig)
    if not path.is_file():
        raise PluginError(f"{where}: Kconfig fragment {path} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "Kconfig"
        top.write_text(f'mainmenu "plug-in check"\nsource "{path.resolve()}"\n', encoding="utf-8")
        try:
            kconf = kconfiglib.Kconfig(str(top), warn_to_stderr=False)
        except kconfiglib.KconfigError as e:
            raise PluginError(f"{where}: Kconfig fragment does not parse: {_first(e)}") from None
    own = (entry.symbol, f"{entry.name.upper()}_")
    for defined in kconf.unique_defined_syms:
        if defined.name != own[0] and not defined.name.startswith(own[1]):
            raise PluginError(
                f"{where}: Kconfig fragment {path} defines {defined.name}: a plug-in defines "
                f"only {own[0]} and {own[1]}* options"
            )
    sym = kconf.syms.get(entry.symbol)
    if sym is None or sym.orig_type != kconfiglib.BOOL or not any(n.prompt for n in sym.nodes):
        raise PluginError(f"{where}: Kconfig fragment {path} defines no bool option {entry.symbol}")
    types = {
        bool: kconfiglib.BOOL,
        int: kconfiglib.INT,
        float: kconfiglib.STRING,
        str: kconfiglib.STRING,
    }
    for f in dataclasses.fields(entry.settings) if entry.settings else ():
        wanted = types.get(_field_type(f))
        name = settings_symbol(entry.name, f.name)
        got = kconf.syms.get(name)
        if wanted is None:
            raise PluginError(f"{where}: setting {f.name!r} must be a bool, int, float or str")
        if got is None or got.orig_type != wanted:
            kind = kconfiglib.TYPE_TO_STR[wanted]
            raise PluginError(
                f"{where}: Kconfig fragment {path} defines no {kind} option {name} "
                f"for setting {f.name!r}"
            )

    for dim in getattr(entry, "search_space", ()):
        names = [f.name for f in dataclasses.fields(entry.settings)] if entry.settings else []
        got = kconf.syms.get(dim.symbol(entry.name))
        if dim.field not in names or dim.scale not in SEARCH_SCALES:
            raise PluginError(
                f"{where}: search dimension {dim.field!r} ({dim.scale}) is not accepted (one of "
                f"its settings {names}, on a scale in {SEARCH_SCALES})"
            )
        if got is None or got.orig_type != kconfiglib.STRING:
            raise PluginError(
                f"{where}: Kconfig fragment {path} defines no string option "
                f"{dim.symbol(entry.name)} for the range of search dimension {dim.field!r}"
            )


def _field_type(f: dataclasses.Field) -> type | None:
    names = {"bool": bool, "int": int, "float": float, "str": str}
    return f.type if isinstance(f.type, type) else names.get(str(f.type))


def _first(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# --------------------------------------------------------------------------------------------
# reading a plug-in's settings, and checking a planned run's plug-ins


def read_settings(entry: OptimizerEntry | PruningEntry, reader: Any) -> tuple[tuple[str, Any], ...]:
    """A plug-in's typed settings from its Kconfig symbols, each checked by the loader's
    reader (one line naming the symbol, the value and what is accepted)."""
    if entry.settings is None:
        return ()
    values = {}
    for f in dataclasses.fields(entry.settings):
        symbol = settings_symbol(entry.name, f.name)
        kind = _field_type(f)
        if kind is float:
            m = f.metadata
            bounds = {"low": m.get("low") if m.get("low") is not None else -float("inf")}
            if m.get("high") is not None:
                bounds["high"] = m["high"]
            values[f.name] = reader.float(
                symbol,
                **bounds,
                low_open=m.get("low_open", False),
                high_open=m.get("high_open", False),
            )
        elif kind is int:
            values[f.name] = reader.int(symbol)
        elif kind is bool:
            values[f.name] = reader.bool(symbol)
        else:
            values[f.name] = reader.str(symbol)
    return settings_pairs(entry.settings(**values))


def plugin_problem(spec_dict: dict[str, Any]) -> str | None:
    """Why a planned run (its run.json as a dict) cannot be trained with the plug-ins installed
    now: its plug-in is uninstalled, broken, or another version. None when it can."""
    cat = catalogue()
    for part, table in (("optimizer", cat.optimizers), ("pruning", cat.pruning)):
        recorded = spec_dict.get(part, {})
        name = recorded.get("name" if part == "optimizer" else "method")
        dist = recorded.get("distribution", "")
        if not dist:
            continue
        planned = f"{dist} {recorded.get('distribution_version', '')}".strip()
        entry = table.get(name)
        if entry is None or entry.origin is None:
            reason = cat.broken.get(name)
            if reason:
                return f"planned with plug-in {name!r} from {planned}, now unusable: {reason}"
            return (
                f"planned with plug-in {name!r} from {planned}, which is no longer installed "
                f"(pip install {dist}=={recorded.get('distribution_version', '')})"
            )
        if entry.origin.version != recorded.get("distribution_version"):
            return (
                f"planned with plug-in {name!r} from {planned}, but {entry.origin.distribution} "
                f"{entry.origin.version} is installed now (reinstall {planned}, or plan a new "
                "matrix)"
            )
    return None
