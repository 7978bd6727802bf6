"""First-order movement pruning (Sanh et al. 2020): score accumulates -g*w
(lib/pruning.py's Pruner keeps the accumulated score)."""

from pathlib import Path

from lib.catalogue import PruningEntry

ENTRY = PruningEntry(
    name="movement",
    display="movement",
    kconfig=Path(__file__).resolve().with_name("Kconfig.movement"),
    score="movement",
    upstream_score="displacement",
)
