"""The run index: what the matrix commands need of each run, without reading its metrics.json.

A metrics.json of a 100-epoch ResNet-50 run holds every epoch; the dry run, `make status` and
`make continue` need only its summary, how many epochs it trained, their wall times and the
last accuracy. `results/<matrix>/index.json` keeps that record for every run whose
metrics.json has been read once, keyed by the file's modification time (ns) and size: a
record whose metrics.json was rewritten (every write replaces the file, so its time changes)
or removed since is stale and read again. A copy of the results that keeps modification
times (cp -a, rsync -a) keeps its index valid. On a matrix of 2,000 runs a command then costs one small file and a
stat per run instead of 2,000 documents of hundreds of KB (docs/metrics.md, "The run index").

The index is derived from the runs' own files and never the only copy of anything: deleting
it loses nothing (the next command rebuilds it), a damaged one is ignored and rewritten, and
where it cannot be written (a read-only copy of the results, a full disk) the commands read
the metrics.json files as before. Only this module reads or writes it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lib.metrics import METRICS_FILE, MetricsError, atomic_write_json, read_metrics

INDEX_FILE = "index.json"  # at results/<matrix>/
INDEX_VERSION = 1
SPEC_PARTS = ("model", "data", "train")
SETTLED_NS = 2_000_000_000  # FAT and some network file systems keep mtimes to 1-2 s


def run_record(doc: dict[str, Any]) -> dict[str, Any]:
    """What the matrix commands use of one metrics.json document."""
    epochs = doc.get("epochs") or []
    return {
        "run_id": doc.get("run_id"),
        # what the duration estimate compares runs by (lib.runner._speed_key)
        "spec": {k: v for k, v in (doc.get("spec") or {}).items() if k in SPEC_PARTS},
        "summary": doc.get("summary") or {},
        "epochs_completed": len(epochs),
        "epoch_seconds": [
            float(e["epoch_seconds"])
            for e in epochs
            if isinstance(e.get("epoch_seconds"), int | float)
        ],
        "latest_top1": epochs[-1].get("test_top1") if epochs else None,
    }


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


class RunIndex:
    """The index of one matrix directory: `record(run_id)` for each run, `save()` at the end."""

    def __init__(self, matrix_dir: str | os.PathLike[str]) -> None:
        self.matrix_dir = Path(matrix_dir)
        self.path = self.matrix_dir / INDEX_FILE
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") == INDEX_VERSION and isinstance(data.get("runs"), dict):
                self.entries = data["runs"]
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or damaged: rebuilt from the runs' files

    def record(self, run_id: str) -> dict[str, Any]:
        """The record of `run_id`'s metrics.json, from the index while the file is unchanged;
        raise MetricsError as read_metrics does (no such file, unreadable)."""
        path = self.matrix_dir / run_id / METRICS_FILE
        stamp = _stamp(path)
        if stamp is None:
            self._forget(run_id)
            raise MetricsError(f"{path}: no such file")
        entry = self.entries.get(run_id)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            return entry["record"]
        try:
            doc = read_metrics(path, per_layer=False)
        except MetricsError:
            self._forget(run_id)
            raise
        record = run_record(doc)
        # Kept only for a file unchanged while it was read and older than the timestamp
        # granularity of file systems (a rewrite within it could keep size and mtime: "racy"
        # files are read again until they are settled, as git does for its index).
        settled = time.time_ns() - stamp[0] > SETTLED_NS
        if settled and _stamp(path) == stamp:
            self.entries[run_id] = {"stamp": stamp, "record": record}
            self.changed = True
        return record

    def _forget(self, run_id: str) -> None:
        if self.entries.pop(run_id, None) is not None:
            self.changed = True

    def save(self) -> None:
        """Write the index if anything changed; where it cannot be written, do without."""
        if not self.changed or not self.matrix_dir.is_dir():
            return
        try:
            atomic_write_json(self.path, {"version": INDEX_VERSION, "runs": self.entries})
        except (OSError, ValueError):
            return
        self.changed = False
