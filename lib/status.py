"""`make status`: one line per run of a matrix, whichever executor trains it.

The state comes from each run's metrics.json (what the trainer wrote last); whether a run is
being trained right now comes from the local runner's lock or, for runs submitted to Slurm,
from the scheduler (squeue), next to the run's array task and its scheduler state:

    resnet18_sgd_dense_seed0     completed, top-1 97.10% after 3 epochs   slurm 41_0 COMPLETED
    resnet18_adamw_dense_seed0   running epoch 2 of 3                     slurm 41_1 RUNNING
    resnet18_adam_dense_seed0    stopped after epoch 1 of 3               slurm 41_2 PENDING
    resnet18_adamw_dense_seed1   failed: training diverged: lower the learning rate ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib.catalogue import plugin_problem
from lib.lock import MatrixLock
from lib.metrics import (
    MATRIX_FILE,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_RUNNING,
    MetricsError,
)
from lib.run_index import RunIndex
from lib.slurm import (
    ENDED_STATES,
    RUNNING_STATES,
    SlurmError,
    pending_text,
    read_record,
    scheduler_queue,
    task_ids,
)
from lib.store import (
    RUN_STATES,
    STATE_CHANGED,
    STATE_COMPLETED,
    STATE_FAILED,
    STATE_PENDING,
    STATE_RUNNING,
    STATE_SET_ASIDE,
    STATE_STOPPED,
    MatrixStore,
    StoreError,
    identity_problem,
)
from lib.text import count

# lib/store.py's one vocabulary of run states
PENDING, RUNNING, STOPPED, COMPLETED, FAILED, CHANGED, SET_ASIDE = (
    STATE_PENDING,
    STATE_RUNNING,
    STATE_STOPPED,
    STATE_COMPLETED,
    STATE_FAILED,
    STATE_CHANGED,
    STATE_SET_ASIDE,
)
ORDER = RUN_STATES


class StatusError(Exception):
    """The matrix cannot be read (one-line message)."""


def _run_line(
    doc: dict[str, Any] | None,
    epochs: int,
    being_trained: bool,
    unreadable: str | None,
    changed: str | None = None,
) -> tuple[str, str]:
    """(state, text) of one run from its record in the run index (lib.run_index)."""
    if unreadable:
        return SET_ASIDE, f"metrics.json unreadable ({unreadable}); make continue rebuilds it"
    if changed:
        return CHANGED, f"excluded: {changed}"
    summary = (doc or {}).get("summary") or {}
    done = (doc or {}).get("epochs_completed") or 0
    status = summary.get("status")
    if status == STATUS_COMPLETED:
        top1 = summary.get("final_top1")
        accuracy = f", top-1 {top1:.2f}%" if isinstance(top1, int | float) else ""
        return COMPLETED, f"completed{accuracy} after {count(done, 'epoch')}"
    if status == STATUS_FAILED:
        return FAILED, f"failed: {summary.get('error') or 'no reason recorded'}"
    if being_trained:
        return RUNNING, f"running epoch {min(done + 1, epochs)} of {epochs}"
    if status == STATUS_RUNNING or done:
        return STOPPED, f"stopped after epoch {done} of {epochs}"
    return PENDING, PENDING


def status_lines(matrix_dir: Path) -> list[str]:
    """The header line and one line per run of the matrix in `matrix_dir`."""
    matrix_dir = Path(matrix_dir)
    manifest_path = matrix_dir / MATRIX_FILE
    try:
        with MatrixStore(matrix_dir) as store:  # never through a link (lib/store.py)
            manifest = store.read_plan(others=True)
            notes = list(store.notes)
    except FileNotFoundError:
        raise StatusError(f"{manifest_path}: no such matrix; run make test-matrix") from None
    except StoreError as e:
        raise StatusError(str(e)) from None
    except OSError as e:
        raise StatusError(f"{manifest_path}: unreadable matrix manifest ({e})") from None
    entries = {}
    runs = []
    for i, entry in enumerate(manifest["runs"]):
        spec = entry.get("spec") or {}
        train = spec.get("train") if isinstance(spec, dict) else None
        epochs = train.get("epochs") if isinstance(train, dict) else None
        if not isinstance(epochs, int) or isinstance(epochs, bool):
            raise StatusError(f"{manifest_path}: field 'runs[{i}].spec.train.epochs' is missing")
        runs.append((entry["run_id"], epochs))
        entries[entry["run_id"]] = entry

    local_runner = MatrixLock(matrix_dir).live_holder()
    try:
        record = read_record(matrix_dir)
    except SlurmError as e:
        record, notes = None, [f"Slurm: {e}"]
    tasks = task_ids(record)
    job_ids = [str(s["job_id"]) for s in (record or {}).get("submissions", [])]
    states: dict[str, str] | None = {}
    shown: dict[str, str] = {}  # the state as shown, with a pending task's reason
    if tasks:
        try:
            queue = scheduler_queue(job_ids)
        except SlurmError as e:
            states = None
            notes.append(f"Slurm: scheduler states unknown ({e})")
        else:
            states = {task: state for task, (state, _) in queue.items()}
            shown = {task: pending_text(*entry) for task, entry in queue.items()}

    rows = []
    counts: dict[str, int] = {}
    index = RunIndex(matrix_dir)
    for run_id, epochs in runs:
        doc, unreadable, changed = None, None, None
        try:
            doc = index.record(run_id, entries[run_id].get("spec"))
        except MetricsError as e:
            if not str(e).endswith(": no such file"):
                unreadable = str(e).split(": ", 1)[-1]
        if doc is not None:
            changed = identity_problem(run_id, entries[run_id].get("spec"), doc)
        task = tasks.get(run_id)
        scheduler = None
        if task is not None:
            if states is None:
                scheduler = f"slurm {task} (state unknown)"
            elif task in states:
                scheduler = f"slurm {task} {shown[task]}"
            else:
                scheduler = f"slurm {task} (no longer in the queue)"
        being_trained = (
            states is not None and states.get(task) in RUNNING_STATES
            if task is not None
            else local_runner is not None and entries[run_id].get("status") == STATUS_RUNNING
        )
        state, text = _run_line(doc, epochs, being_trained, unreadable, changed)
        if state != COMPLETED and (problem := plugin_problem(entries[run_id]["spec"])):
            text += f"; cannot resume: {problem}"
        counts[state] = counts.get(state, 0) + 1
        rows.append((run_id, text, scheduler or ""))

    index.save()
    header = f"matrix {matrix_dir.name} ({matrix_dir}): {count(len(runs), 'run')}: " + ", ".join(
        f"{counts[s]} {s}" for s in ORDER if counts.get(s)
    )
    if local_runner is not None:
        header += f"; local runner pid {local_runner}"
    if job_ids:
        header += f"; Slurm job {job_ids[-1]}"
    width_id = max((len(r[0]) for r in rows), default=0)
    width_text = max((len(r[1]) for r in rows if r[2]), default=0)
    lines = [header, *notes]
    for run_id, text, scheduler in rows:
        line = f"{run_id.ljust(width_id)}  {text.ljust(width_text) if scheduler else text}"
        lines.append(f"{line}  {scheduler}".rstrip() if scheduler else line)
    slurm_active = states is None or any(s not in ENDED_STATES for s in states.values())
    if counts.get(STOPPED) and local_runner is None and not slurm_active:
        lines.append("stopped runs resume with make continue")
    return lines
