"""State pruning: AdamWPrune's scores from its own Adam moments. Implemented inside
AdamWPrune (optimizers/adamwprune.py); the method key carries the score (`state-hybrid`)."""

from pathlib import Path

from lib.catalogue import PruningEntry

ENTRY = PruningEntry(
    name="state",
    display="state",
    kconfig=Path(__file__).resolve().with_name("Kconfig.state"),
    owner="adamwprune",
    variant=lambda opt: opt.prune_score,
)
