"""The method catalogue (lib/catalogue.py): outside a method's entry no framework module names
that method, and the entries carry what the framework used to spell out method by method."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lib import catalogue
from lib import config as cfg
from lib.spec import OptimizerSpec, PruningSpec

ROOT = Path(__file__).resolve().parent.parent

# The framework: every module of these trees...
FRAMEWORK = ("lib", "scripts", "models", "optimizers")
# ...except the methods' own code: their catalogue entries, and the implementations the
# entries wrap (the optimizers' step code, and lib/pruning.py's score maths, which the built-in
# pruning entries name by score).
METHOD_CODE = (
    "optimizers/entries/",
    "lib/pruning_entries/",
    "optimizers/adamwprune.py",
    "optimizers/spam.py",
    "optimizers/spam_kernel.py",
    "optimizers/masked.py",
    "optimizers/__init__.py",
    "lib/pruning.py",
)


# Mentions that are not a method's behaviour, each with why it stays.
ALLOWED = {
    # OptimizerSpec's field defaults are part of every recorded run.json (the digests of
    # tests/test_run_json_stability.py): the default optimizer name and AdamWPrune's default
    # base are values, not behaviour keyed on a method.
    ("lib/spec.py", "string 'adamw'"),
    # The memory table's unit: state bytes beyond AdamW's m and v (8 B/param) is a yardstick
    # every method is measured against, whichever methods the matrix ran.
    ("scripts/report/sections.py", "string \"Each run's own peaks, in MiB."),
    ("scripts/report/sections.py", "string 'Extra vs AdamW (B/prunable param)'"),
}


def allowed(mention: str) -> bool:
    path, _, rest = mention.partition(":")
    what = rest.partition(": ")[2]
    return any(path == p and what.startswith(w) for p, w in ALLOWED)


def framework_modules() -> list[Path]:
    paths = []
    for tree in FRAMEWORK:
        for path in sorted((ROOT / tree).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if not relative.startswith(METHOD_CODE):
                paths.append(path)
    return paths


def method_names() -> tuple[list[str], list[str]]:
    cat = catalogue.catalogue()
    builtin = [e for e in (*cat.optimizers.values(), *cat.pruning.values()) if e.origin is None]
    return [e.name for e in builtin if e.name in cat.optimizers], [
        e.name for e in builtin if e.name in cat.pruning
    ]


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (prose, not code)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def mentions(path: Path) -> list[str]:
    """Where `path`'s code names a built-in method: an identifier or a string (not a comment or
    a docstring) that contains an optimizer's name, or a string that is a pruning method's name
    (those are ordinary words: "state", "magnitude")."""
    optimizers, pruning = method_names()
    # Longest first, not inside a longer word: `adamw-amsgrad`, `ADAMWPRUNE_LR`, `MaskedAdamW`.
    names = "|".join(sorted(optimizers, key=len, reverse=True))
    in_string = re.compile(rf"(?<![a-z])({names})(?![a-z])", re.IGNORECASE)
    in_identifier = re.compile(rf"({names})", re.IGNORECASE)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            if in_string.search(node.value) or node.value in pruning:
                found.append(f"{where}: string {node.value[:60]!r}")
        identifiers = []
        if isinstance(node, ast.Name):
            identifiers.append(node.id)
        elif isinstance(node, ast.Attribute):
            identifiers.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            identifiers.append(node.name)
        elif isinstance(node, ast.alias):
            identifiers.append(node.asname or node.name)
        elif isinstance(node, ast.arg):
            identifiers.append(node.arg)
        for identifier in identifiers:
            if in_identifier.search(identifier):
                found.append(f"{where}: identifier {identifier}")
    return found


def test_no_framework_module_names_a_method():
    modules = framework_modules()
    assert len(modules) > 30  # the scan sees the framework
    found = [m for path in modules for m in mentions(path) if not allowed(m)]
    assert found == [], "name these methods through the catalogue:\n" + "\n".join(found)


def test_the_scan_finds_what_it_forbids(tmp_path, monkeypatch):
    """The grep must fail on the code the catalogue replaced."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Docstrings may say AdamWPrune."""\n'
        "# so may comments: sgd\n"
        "def _uses_adamwadv(opt):\n"
        '    return opt.name == "adamwadv" or opt.method == "state"\n'
        'LABEL = f"adamwprune-{base}"\n'
        'SYMBOL = "SGD_LR"\n'
    )
    found = mentions(sample)
    assert sorted(line.split(": ", 1)[1] for line in found) == [
        "identifier _uses_adamwadv",
        "string 'SGD_LR'",
        "string 'adamwadv'",
        "string 'adamwprune-'",
        "string 'state'",
    ]


def test_the_catalogue_lists_the_builtins_in_menu_order():
    cat = catalogue.catalogue()
    kconf = cfg.load_kconfig()
    menu_order = [s.name for s in kconf.unique_defined_syms]
    for entries, prefix in ((cat.optimizers, "OPTIMIZER_"), (cat.pruning, "PRUNING_")):
        builtin = [e for e in entries.values() if e.origin is None]
        symbols = [e.symbol for e in builtin]
        assert all(s.startswith(prefix) for s in symbols)
        assert symbols == sorted(symbols, key=menu_order.index)
        for entry in builtin:
            fragment = Path(entry.kconfig)
            # Each entry's fragment lives beside its module and defines its option.
            assert fragment.is_file() and f"config {entry.symbol}\n" in fragment.read_text()


def test_the_target_sparsity_rule_is_written_once():
    pattern = re.compile(r"\.sparsity if [\w.]*enabled else")
    hits = [
        f"{path.relative_to(ROOT)}"
        for path in framework_modules()
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert hits == ["lib/spec.py"]
    assert PruningSpec(method="magnitude", sparsity=0.7).target == 0.7
    assert PruningSpec(method="none", sparsity=0.7).target == 0.0
    assert PruningSpec(method="magnitude", sparsity=0.0).active_method == "none"


def test_adamwadv_brings_its_clipping_and_schedule_through_its_entry(tmp_path):
    """The per-method override lives in the entry: AdamWAdv, and AdamWPrune on its base,
    train with CONFIG_ADAMWADV_GRAD_CLIP and a cosine schedule; the others with the menu's."""
    path = tmp_path / ".config"
    path.write_text(
        "CONFIG_OPTIMIZER_ADAMW=y\nCONFIG_OPTIMIZER_ADAMWADV=y\nCONFIG_ADAMWPRUNE_BASE_ADAMWADV=y\n"
        'CONFIG_ADAMWADV_GRAD_CLIP="0.5"\nCONFIG_LR_SCHEDULE_STEP=y\nCONFIG_TRAIN_GRAD_CLIP="0"\n'
    )
    config = cfg.load(path)
    trains = {opt.label: config.train_for(opt) for opt in config.optimizers}
    assert (trains["adamw"].grad_clip, trains["adamw"].lr_schedule) == (0.0, "step")
    for label in ("adamwadv", "adamwprune-adamwadv"):
        assert (trains[label].grad_clip, trains[label].lr_schedule) == (0.5, "cosine")
    # A spec that is not one of the config's optimizers gets the menu's settings.
    assert config.train_for(replace(config.optimizers[0], lr=1.0)) == config.train


def test_reading_the_catalogue_imports_neither_torch_nor_kconfiglib():
    code = (
        "import sys; from lib import catalogue; from lib.spec import OptimizerSpec; "
        "c = catalogue.discover(); OptimizerSpec(name='adamwprune').label; "
        "print(sorted(m for m in ('torch', 'kconfiglib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_an_unknown_optimizer_is_one_line_listing_the_known_ones():
    from optimizers.registry import check_combination

    with pytest.raises(ValueError) as error:
        check_combination(OptimizerSpec(name="nadam"), PruningSpec())
    assert str(error.value) == (
        "optimizer='nadam': must be one of " + ", ".join(catalogue.catalogue().optimizers)
    )


def test_a_generic_method_without_an_optimizer_that_takes_it_names_those_optimizers(tmp_path):
    """PRUNING_MAGNITUDE depends on the derived OPTIMIZER_TAKES_PRUNING; the error names the
    options that select it, as it did when the dependency was spelt out."""
    path = tmp_path / ".config"
    path.write_text("CONFIG_PRUNING_MAGNITUDE=y\n")
    takes = [e.symbol for e in catalogue.catalogue().optimizers.values() if e.takes_pruning]
    with pytest.raises(cfg.ConfigError) as error:
        cfg.load(path)
    assert str(error.value) == (
        f"{path}: CONFIG_PRUNING_MAGNITUDE=y has no effect: it depends on "
        f"{' || '.join(takes)}, which is not satisfied (enable that first, e.g. with make "
        "menuconfig)"
    )
