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
the metrics.json files as before. Only this module reads or writes it, through the results
store (lib/store.py): the index and each metrics.json are opened relative to the matrix
directory's descriptor, never through a link, and a record keeps what the store checks a run
against its plan with (its run id, identity block and spec identity).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lib.metrics import METRICS_FILE, MetricsError, atomic_write_json
from lib.store import (
    INDEX_FILE,
    MatrixStore,
    StoreError,
    planned_epochs,
    read_json_at,
    spec_identity,
)

INDEX_VERSION = 2  # 2: records keep the run's identity block and spec identity (issue 23)
SPEC_PARTS = ("model", "data", "train")
SETTLED_NS = 2_000_000_000  # FAT and some network file systems keep mtimes to 1-2 s


def run_record(doc: dict[str, Any]) -> dict[str, Any]:
    """What the matrix commands use of one metrics.json document."""
    epochs = doc.get("epochs") or []
    return {
        "run_id": doc.get("run_id"),
        # what lib.store.identity_problem checks against the plan
        "identity": doc.get("identity") or {},
        "spec_identity": spec_identity(doc.get("spec")),
        # what the duration estimate compares runs by (lib.runner._speed_key)
        "spec": {k: v for k, v in (doc.get("spec") or {}).items() if k in SPEC_PARTS},
        "summary": doc.get("summary") or {},
        "epochs_completed": len(epochs),
        "epoch_seconds": [
            float(e["epoch_seconds"])
            for e in epochs
            if isinstance(e, dict) and isinstance(e.get("epoch_seconds"), int | float)
        ],
        "latest_top1": epochs[-1].get("test_top1")
        if epochs and isinstance(epochs[-1], dict)
        else None,
    }


def _stamp(fd: int) -> list[int]:
    st = os.fstat(fd)
    return [st.st_mtime_ns, st.st_size]


class RunIndex:
    """The index of one matrix directory: `record(run_id)` for each run, `save()` at the end."""

    def __init__(self, matrix_dir: str | os.PathLike[str]) -> None:
        self.matrix_dir = Path(matrix_dir)
        self.path = self.matrix_dir / INDEX_FILE
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        self.store: MatrixStore | None = None
        self.refused: str | None = None  # why the matrix directory cannot be opened
        try:
            self.store = MatrixStore(self.matrix_dir)
        except FileNotFoundError:
            return
        except StoreError as e:
            self.refused = str(e)
            return
        try:
            data = read_json_at(self.store.fd, INDEX_FILE, self.path)
            if data.get("version") == INDEX_VERSION and isinstance(data.get("runs"), dict):
                self.entries = data["runs"]
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or damaged: rebuilt from the runs' files

    def record(self, run_id: str, planned: dict[str, Any] | None = None) -> dict[str, Any]:
        """The record of `run_id`'s metrics.json, from the index while the file is unchanged;
        raise MetricsError as read_metrics does (no such file, unreadable, a link, more epochs
        than `planned`, its planned spec, has)."""
        path = self.matrix_dir / run_id / METRICS_FILE
        if self.store is None:
            raise MetricsError(self.refused or f"{path}: no such file")
        try:
            fd = self.store.open_run_file(run_id, METRICS_FILE)
        except FileNotFoundError:
            self._forget(run_id)
            raise MetricsError(f"{path}: no such file") from None
        except StoreError as e:
            self._forget(run_id)
            raise MetricsError(str(e)) from None
        stamp = _stamp(fd)
        entry = self.entries.get(run_id)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            os.close(fd)
            record = entry.get("record")
            if isinstance(record, dict):
                limit = planned_epochs(planned)
                if record.get("epochs_completed", 0) > limit:
                    raise MetricsError(
                        f"{path}: field 'epochs' holds {record['epochs_completed']:,} records, "
                        f"more than the {limit:,} epochs planned"
                    )
                return record
            fd = self.store.open_run_file(run_id, METRICS_FILE)
        try:
            doc = self.store.read_metrics_fd(os.dup(fd), run_id, planned)
        except (OSError, StoreError) as e:
            os.close(fd)
            self._forget(run_id)
            raise MetricsError(str(e)) from None
        record = run_record(doc)
        # Kept only for a file unchanged while it was read and older than the timestamp
        # granularity of file systems (a rewrite within it could keep size and mtime: "racy"
        # files are read again until they are settled, as git does for its index).
        settled = time.time_ns() - stamp[0] > SETTLED_NS
        unchanged = _stamp(fd) == stamp
        os.close(fd)
        if settled and unchanged:
            self.entries[run_id] = {"stamp": stamp, "record": record}
            self.changed = True
        return record

    def _forget(self, run_id: str) -> None:
        if self.entries.pop(run_id, None) is not None:
            self.changed = True

    def save(self) -> None:
        """Write the index if anything changed; where it cannot be written, do without."""
        if not self.changed or self.store is None:
            return
        try:
            atomic_write_json(self.path, {"version": INDEX_VERSION, "runs": self.entries})
        except (OSError, ValueError):
            return
        self.changed = False
