"""Gradual magnitude pruning (Zhu & Gupta 2017): score |w|, lib/pruning.py's Pruner."""

from pathlib import Path

from lib.catalogue import PruningEntry

ENTRY = PruningEntry(
    name="magnitude",
    display="magnitude",
    kconfig=Path(__file__).resolve().with_name("Kconfig.magnitude"),
    score="magnitude",
)
