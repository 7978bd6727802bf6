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

Beside it, `results/<matrix>/speeds.json` keeps the mean seconds per epoch of the matrix's
completed runs per speed key (a few lines): the dry run's duration estimate learns from other
matrices through that file alone, so its cost does not depend on how many runs they hold. It
is written with the index by every command that reads the matrix's runs through it (dry run,
status, continue, test-matrix when its runs finish, the Slurm submission); a matrix without one
(a tree from before it) gets one from its runs' files the first time an estimate needs it; a
matrix none of whose runs has completed yet gets one that says so. Derived like the index:
deleting it loses nothing. It is read through the store too (no link, within its limit).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from lib.metrics import METRICS_FILE, STATUS_COMPLETED, MetricsError, atomic_write_json
from lib.store import (
    INDEX_FILE,
    SPEEDS_FILE,
    MatrixStore,
    StoreError,
    planned_epochs,
    read_json_at,
    spec_identity,
)

INDEX_VERSION = 2  # 2: records keep the run's identity block and spec identity (issue 23)
SPEEDS_VERSION = 1
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
        # what the duration estimate compares runs by (speed_key)
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


def speed_key(spec_dict: dict[str, Any]) -> tuple:
    """Runs whose epochs take comparable time: same network, data, size and device."""
    return (
        spec_dict["model"]["name"],
        spec_dict["data"]["name"],
        spec_dict["data"]["image_size"],
        spec_dict["train"]["batch_size"],
        spec_dict["train"]["max_steps_per_epoch"],
        spec_dict["train"]["device"],
        spec_dict["train"].get("gpus_per_run", 1),
    )


def record_speed(record: dict[str, Any]) -> tuple[tuple, float] | None:
    """(speed key, seconds per epoch) of a completed run's record; None for any other run."""
    try:
        summary = record["summary"]
        if summary.get("status") != STATUS_COMPLETED or not summary.get("epochs_completed"):
            return None
        per_epoch = float(summary["total_seconds"]) / summary["epochs_completed"]
        key = speed_key(record["spec"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return (key, per_epoch) if math.isfinite(per_epoch) and per_epoch > 0 else None


Speeds = dict[tuple, tuple[float, int]]  # speed key -> (sum of seconds per epoch, runs)


def add_speeds(into: Speeds, more: Speeds) -> None:
    for key, (seconds, runs) in more.items():
        total, n = into.get(key, (0.0, 0))
        into[key] = (total + seconds, n + runs)


def _read_speeds(store: MatrixStore) -> Speeds | None:
    """The speeds a matrix's speeds.json holds; None when absent, damaged, refused by the store
    or of another version."""
    try:
        data = read_json_at(store.fd, SPEEDS_FILE, store.path / SPEEDS_FILE)
        if data.get("version") != SPEEDS_VERSION:
            return None
        speeds: Speeds = {}
        for row in data["speeds"]:
            runs = int(row["runs"])
            mean = float(row["mean_seconds_per_epoch"])
            if runs > 0 and math.isfinite(mean) and mean > 0:
                add_speeds(speeds, {tuple(row["key"]): (mean * runs, runs)})
        return speeds
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # StoreError: ValueError
        return None


def _speeds_document(speeds: Speeds) -> dict[str, Any]:
    rows = [
        {"key": list(key), "runs": runs, "mean_seconds_per_epoch": seconds / runs}
        for key, (seconds, runs) in sorted(speeds.items(), key=lambda kv: json.dumps(kv[0]))
    ]
    return {"version": SPEEDS_VERSION, "speeds": rows}


def _stamp(fd: int) -> list[int]:
    st = os.fstat(fd)
    return [st.st_mtime_ns, st.st_size]


class RunIndex:
    """The index of one matrix directory: `record(run_id)` for each run, `save()` at the end."""

    def __init__(self, matrix_dir: str | os.PathLike[str]) -> None:
        self.matrix_dir = Path(matrix_dir)
        self.path = self.matrix_dir / INDEX_FILE
        self.entries: dict[str, dict[str, Any]] = {}
        self.seen: dict[str, dict[str, Any]] = {}  # records read by this command, settled or not
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
                self.seen[run_id] = record
                return record
            fd = self.store.open_run_file(run_id, METRICS_FILE)
        try:
            doc = self.store.read_metrics_fd(os.dup(fd), run_id, planned)
        except (OSError, StoreError) as e:
            os.close(fd)
            self._forget(run_id)
            raise MetricsError(str(e)) from None
        record = run_record(doc)
        self.seen[run_id] = record
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
        self.seen.pop(run_id, None)
        if self.entries.pop(run_id, None) is not None:
            self.changed = True

    def speeds(self) -> Speeds:
        """Seconds per epoch of the matrix's completed runs per speed key, from the records
        this command read and the index's others."""
        speeds: Speeds = {}
        records = {k: v["record"] for k, v in self.entries.items() if isinstance(v, dict)}
        for record in {**records, **self.seen}.values():
            speed = record_speed(record) if isinstance(record, dict) else None
            if speed is not None:
                add_speeds(speeds, {speed[0]: (speed[1], 1)})
        return speeds

    def save(self) -> None:
        """Write the index if anything changed, and speeds.json if its speeds did; where they
        cannot be written, do without."""
        if self.store is None:
            return
        if self.changed:
            try:
                atomic_write_json(
                    self.path,
                    {"version": INDEX_VERSION, "runs": self.entries},
                    dir_fd=self.store.fd,  # relative to the matrix directory, never a link
                )
                self.changed = False
            except (OSError, ValueError):
                pass
        document = _speeds_document(self.speeds())
        try:
            current = read_json_at(self.store.fd, SPEEDS_FILE, self.matrix_dir / SPEEDS_FILE)
        except FileNotFoundError:
            if not (self.entries or self.seen):
                return  # no run read: no file in a directory that may not be a matrix's
            current = None
        except (OSError, ValueError):  # damaged or refused (StoreError): written anew
            current = None
        if current == document:
            return
        try:
            atomic_write_json(self.matrix_dir / SPEEDS_FILE, document, dir_fd=self.store.fd)
        except (OSError, ValueError):
            pass


def matrix_speeds(matrix_dir: Path) -> Speeds:
    """The speeds of another matrix for a duration estimate: its speeds.json, or, where it has
    none (a tree from before it, a damaged file), its runs' files once, writing it."""
    try:
        with MatrixStore(matrix_dir) as store:  # never through a link
            speeds = _read_speeds(store)
    except (OSError, StoreError):  # not a directory, or refused by the store
        return {}
    if speeds is not None:
        return speeds
    index = RunIndex(matrix_dir)
    if index.store is None:
        return {}
    for run_id in index.store.run_dirs_with(METRICS_FILE):
        try:
            index.record(run_id)
        except MetricsError:
            continue
    index.save()
    return index.speeds()


def other_matrices_speeds(results_root: Path, exclude: set[str]) -> Speeds:
    """The speeds of every matrix under `results_root` but those named in `exclude`: one small
    file each, whatever their size."""
    speeds: Speeds = {}
    try:
        folders = sorted(p for p in Path(results_root).iterdir() if p.name not in exclude)
    except OSError:
        return speeds
    for folder in folders:
        if folder.is_dir():
            add_speeds(speeds, matrix_speeds(folder))
    return speeds
