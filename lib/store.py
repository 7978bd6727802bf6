"""The results store: the one module that opens `results/<matrix>/` (docs/runner.md, "The
results store").

`results/` is often shared (a cluster's network file system, a group's project space): anyone
who can write it can plant links, swap directories, edit a plan or hand-write a metrics.json.
So every file read from a matrix directory goes through here, and here every open

- is relative to a file descriptor of the matrix directory (and of the run directory), with
  `O_NOFOLLOW` at every step: a link, or a run directory swapped for one between a check and
  the open, is refused, never followed (no gap between check and use);
- is of a regular file (`fstat`, opened `O_NONBLOCK` so that a FIFO cannot hang a reader), at
  most LIMITS[name] bytes, valid UTF-8 JSON nested at most MAX_DEPTH deep, of the shape its
  kind needs (an object where an object belongs; the fields a reader relies on, of their
  types; extra fields are fine);
- fails with a StoreError whose message is one line naming the file and the field.

Writes under `results/<matrix>/` are relative to descriptors opened here as well (`open_dir`,
`open_run_dir`; `lib.atomic.atomic_file(..., dir_fd=)`, `atomic_write_at`): the runner's
matrix.json and run.json, the trainer's metrics.json and checkpoints, `record_failure`, the
run index, the Slurm executor's files and the report's report.md and CSV files.

The plan (matrix.json) is sealed: the runner signs it with an HMAC under a key only its user
can read (`~/.config/prunebench/plan.key`, or PRUNEBENCH_KEY_FILE), and `make continue`, the
Slurm jobs, `make status` and the report check that seal before they submit, launch or read
anything, so a plan edited under results/ (its run list, data or tracker directories, its
executor and sbatch options) is refused in one line. Each run's metrics.json is checked
against its planned run (`identity_problem`): a run claiming another cell is excluded with
its reason.

Run states: the words in RUN_STATES are the one vocabulary the runner, the Slurm executor,
`make status` and the report use for a planned run.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import math
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from lib.errors import OneLineError

MATRIX_FILE = "matrix.json"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
TRACKING_FILE = "tracking.json"
INDEX_FILE = "index.json"
SPEEDS_FILE = "speeds.json"  # beside the index: seconds per epoch per kind of run
RECORD_FILE = "slurm.json"
LOCK_FILE = ".lock"

MiB = 1 << 20
# The largest file of each kind a reader accepts (bytes). A 2,000-run plan with every log
# tail is about 20 MiB; a 1,000-epoch metrics.json about 0.3 MiB (per-layer sparsity lives in
# sparsity_per_layer.json), one of schema 1 with it inline a few MiB.
LIMITS = {
    MATRIX_FILE: 64 * MiB,
    METRICS_FILE: 8 * MiB,
    RUN_FILE: 1 * MiB,
    TRACKING_FILE: 1 * MiB,
    INDEX_FILE: 128 * MiB,
    SPEEDS_FILE: 1 * MiB,
    RECORD_FILE: 16 * MiB,
    LOCK_FILE: 4096,
}
MAX_DEPTH = 32  # JSON nesting: a metrics.json is 4 deep, a plan 6
# A metrics.json holds at most one record per planned epoch; without a plan to say how many,
# at most this many.
MAX_EPOCHS = 100_000

# The one run-state vocabulary (docs/runner.md, "Run states"): what `make status`, the report,
# the runner's summary and the Slurm executor call a planned run.
STATE_PENDING = "pending"  # nothing trained yet (new, or set back to be trained again)
STATE_RUNNING = "running"  # being trained right now (a local child, a Slurm task)
STATE_STOPPED = "stopped"  # interrupted after some epochs; make continue resumes it
STATE_COMPLETED = "completed"  # its metrics.json says completed
STATE_FAILED = "failed"  # its metrics.json says failed (RERUN_FAILED=1 retries it)
STATE_CHANGED = "changed"  # its directory holds another configuration than the plan's
STATE_SET_ASIDE = "set aside"  # a file of it failed the store's checks: excluded, kept on disk
RUN_STATES = (
    STATE_COMPLETED,
    STATE_RUNNING,
    STATE_STOPPED,
    STATE_PENDING,
    STATE_FAILED,
    STATE_CHANGED,
    STATE_SET_ASIDE,
)

KEY_ENV = "PRUNEBENCH_KEY_FILE"
SEAL_FIELD = "seal"


class StoreError(OneLineError, ValueError):
    """A file of the results directory that cannot be used (one line naming file and field)."""


# ---------------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _refusal(path: Path, error: OSError, what: str) -> StoreError:
    if error.errno == errno.ELOOP:
        return StoreError(f"{path} is a symbolic link; the store never follows links in results/")
    if error.errno == errno.ENOTDIR:
        return StoreError(f"{path} is not a {what}")
    return StoreError(f"{path} cannot be opened ({error.strerror or error})")


def open_dir(
    path: str | os.PathLike[str], dir_fd: int | None = None, shown: Path | None = None
) -> int:
    """A descriptor of the directory `path` (relative to `dir_fd` when given); StoreError for
    a link or anything but a directory. FileNotFoundError passes through."""
    shown = shown or Path(path)
    try:
        return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            try:  # O_DIRECTORY | O_NOFOLLOW on a link says ENOTDIR: say what it is
                if stat.S_ISLNK(os.lstat(path, dir_fd=dir_fd).st_mode):
                    e = OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            except OSError:
                pass
        raise _refusal(shown, e, "directory") from None


def open_run_dir(path: str | os.PathLike[str]) -> int:
    """A descriptor of the run directory `path`, opened relative to its matrix directory with
    neither opened through a link: what the trainer and `record_failure` write through.
    StoreError for a link or anything but a directory; FileNotFoundError passes through."""
    path = Path(os.path.abspath(path))
    parent = open_dir(path.parent)
    try:
        return open_dir(path.name, parent, path)
    finally:
        os.close(parent)


def same_dir(path: str | os.PathLike[str], fd: int) -> bool:
    """Whether `path` still names the directory `fd` was opened on (not a link, not another
    directory moved in its place)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    opened = os.fstat(fd)
    return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


def open_regular(name: str | os.PathLike[str], dir_fd: int | None, shown: Path) -> int:
    """A read-only descriptor of the regular file `name` (relative to `dir_fd`), never through
    a link, never blocking on a FIFO. FileNotFoundError passes through."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _refusal(shown, e, "file") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise StoreError(f"{shown} is not a regular file; the store reads only regular files")
    return fd


def read_bytes(fd: int, limit: int, shown: Path) -> bytes:
    """At most `limit` bytes of `fd` (closed afterwards); StoreError when it holds more."""
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise StoreError(f"{shown} is {size:,} bytes, more than the {limit:,} accepted")
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while being read
                raise StoreError(f"{shown} is more than the {limit:,} bytes accepted")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _depth_problem(data: Any) -> str | None:
    level = [data] if type(data) in (dict, list) else []
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        below = []
        for value in level:  # one level at a time: C-speed filters over each container
            items = value.values() if type(value) is dict else value
            below += [v for v in items if type(v) is dict or type(v) is list]
        level = below
        depth += 1
    return None


def parse_json(raw: bytes, shown: Path, *, depth: bool = True) -> Any:
    """The JSON document in `raw`, within MAX_DEPTH; StoreError naming `shown` otherwise.
    `depth=False` leaves the depth to `check_depth` (after a cheaper shape check)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise StoreError(
            f"{shown}: not valid JSON (nested deeper than {MAX_DEPTH} levels)"
        ) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise StoreError(f"{shown}: not valid JSON ({e})") from None
    return check_depth(data, shown) if depth else data


def check_depth(data: Any, shown: Path) -> Any:
    problem = _depth_problem(data)
    if problem:
        raise StoreError(f"{shown}: not valid JSON ({problem})")
    return data


def read_json_at(dir_fd: int | None, name: str, shown: Path, kind: str | None = None) -> Any:
    """The JSON document of the regular file `name` under `dir_fd`, within the limits of its
    kind (its file name by default). FileNotFoundError passes through."""
    fd = open_regular(name, dir_fd, shown)
    return parse_json(read_bytes(fd, LIMITS.get(kind or Path(name).name, 64 * MiB), shown), shown)


def read_json_path(path: str | os.PathLike[str], kind: str | None = None) -> Any:
    """As read_json_at for a path (its last component is never followed)."""
    path = Path(path)
    return read_json_at(None, str(path), path, kind or path.name)


def expect(cond: bool, shown: Path, field: str, wanted: str, value: Any) -> None:
    if not cond:
        got = type(value).__name__ if not isinstance(value, str | int | float) else repr(value)
        raise StoreError(f"{shown}: field '{field}' is {got[:60]}, expected {wanted}")


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# ---------------------------------------------------------------------------------------------
# The plan's seal
# ---------------------------------------------------------------------------------------------


def key_path() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "prunebench" / "plan.key"


def _key(create: bool) -> bytes | None:
    """This user's sealing key (32 random bytes, a 0600 file of the user's own), created on
    first use when `create`; None when there is none (or it cannot be trusted or made)."""
    path = key_path()
    try:
        fd = open_regular(path, None, path)
    except FileNotFoundError:
        if not create:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
        except FileExistsError:
            pass  # another process made it meanwhile
        except OSError:
            return None
        return _key(create=False)
    except StoreError:
        return None
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        os.close(fd)
        return None
    try:
        text = read_bytes(fd, 4096, path).decode("ascii", "replace").strip()
    except StoreError:
        return None
    return text.encode() if len(text) >= 32 else None


def _digest(plan: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in plan.items() if k != SEAL_FIELD}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or Infinity: never in a plan the runner wrote
        return ""
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def seal(plan: dict[str, Any]) -> dict[str, Any]:
    """`plan` with the seal of this user's key (unsealed where no key can be made: the
    commands that launch anything then refuse it, naming the key file)."""
    key = _key(create=True)
    out = {k: v for k, v in plan.items() if k != SEAL_FIELD}
    if key is not None:
        out[SEAL_FIELD] = {"hmac_sha256": _digest(out, key), "uid": os.getuid()}
    return out


def seal_problem(plan: dict[str, Any], shown: Path) -> str | None:
    """Why `plan` (a matrix.json document) is not one this user's runner wrote, or None."""
    seal_ = plan.get(SEAL_FIELD)
    if not isinstance(seal_, dict) or not isinstance(seal_.get("hmac_sha256"), str):
        return (
            f"{shown} carries no seal, so nothing says it is the plan a runner wrote; "
            "make test-matrix from its .config writes a sealed one"
        )
    uid = seal_.get("uid")
    key = _key(create=False)
    if isinstance(uid, int) and uid != os.getuid():
        return (
            f"{shown} was sealed by {owner_name(uid)}, not by you; its plan is not trusted: "
            "make test-matrix from its .config plans it under your name"
        )
    if key is None:
        return f"{shown} is sealed, but your key {key_path()} is missing or readable by others"
    if not hmac.compare_digest(_digest(plan, key), seal_["hmac_sha256"]):
        return (
            f"{shown} was edited after its runner wrote it (its seal does not match); "
            "nothing is read, submitted or launched from an edited plan: make test-matrix "
            "from its .config writes it again"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def check_plan(plan: Any, shown: Path) -> dict[str, Any]:
    """matrix.json's shape: an object with a `runs` list of objects, each with a plain
    `run_id` and a `spec` object; `config` strings; `report` an object."""
    from lib.spec import NAME_ACCEPTED, is_plain_name

    if not isinstance(plan, dict):
        raise StoreError(f"{shown}: expected a JSON object, got {type(plan).__name__}")
    runs = plan.get("runs", [])
    expect(isinstance(runs, list), shown, "runs", "a list", runs)
    for i, entry in enumerate(runs):
        expect(isinstance(entry, dict), shown, f"runs[{i}]", "an object", entry)
        run_id = entry.get("run_id")
        if not is_plain_name(run_id):
            raise StoreError(
                f"{shown}: field 'runs[{i}].run_id' is {str(run_id)[:60]!r}, expected "
                f"{NAME_ACCEPTED}"
            )
        spec = entry.get("spec")
        expect(isinstance(spec, dict | None), shown, f"runs[{i}].spec", "an object", spec)
        for name in ("method_key", "status", "error", "log_tail", "started_at", "finished_at"):
            value = entry.get(name)
            expect(isinstance(value, str | None), shown, f"runs[{i}].{name}", "a string", value)
    config = plan.get("config", {})
    expect(isinstance(config, dict), shown, "config", "an object", config)
    for name, value in config.items():
        expect(isinstance(value, str), shown, f"config.{name}", "a string", value)
    report = plan.get("report", {})
    expect(isinstance(report, dict), shown, "report", "an object", report)
    for name in ("baseline", "candidate"):
        value = report.get(name)
        expect(isinstance(value, str | None), shown, f"report.{name}", "a string", value)
    plots = report.get("plots", [])
    expect(
        isinstance(plots, list) and all(isinstance(p, str) for p in plots),
        shown,
        "report.plots",
        "a list of names",
        plots,
    )
    for name in ("name", "created_at", "updated_at"):
        value = plan.get(name)
        expect(isinstance(value, str | None), shown, name, "a string", value)
    return plan


def check_metrics(doc: Any, shown: Path, max_epochs: int = MAX_EPOCHS) -> dict[str, Any]:
    """metrics.json's shape (lib.metrics' schema): the fields a reader relies on."""
    from lib.metrics import READABLE_VERSIONS

    if not isinstance(doc, dict):
        raise StoreError(f"{shown}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{shown}: schema_version {version!r} is not supported (expected one of "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    for key in ("run_id", "identity", "epochs", "summary"):
        if key not in doc:
            raise StoreError(f"{shown}: missing key {key!r}")
    expect(isinstance(doc["run_id"], str), shown, "run_id", "a string", doc["run_id"])
    for key in ("identity", "summary"):
        expect(isinstance(doc[key], dict), shown, key, "an object", doc[key])
    for key in ("spec", "model_info", "state_memory", "environment"):
        if doc.get(key) is not None:
            expect(isinstance(doc[key], dict), shown, key, "an object", doc[key])
    epochs = doc["epochs"]
    if not isinstance(epochs, list):
        raise StoreError(f"{shown}: 'epochs' must be a list")
    if len(epochs) > max_epochs:
        raise StoreError(
            f"{shown}: field 'epochs' holds {len(epochs):,} records, more than the "
            f"{max_epochs:,} epochs planned"
        )
    return doc


def planned_epochs(spec: dict[str, Any] | None) -> int:
    train = (spec or {}).get("train")
    epochs = train.get("epochs") if isinstance(train, dict) else None
    if isinstance(epochs, int) and not isinstance(epochs, bool) and 0 < epochs <= MAX_EPOCHS:
        return epochs
    return MAX_EPOCHS


# Fields of metrics.json's identity block that place a run in the report's cells.
CELL_FIELDS = ("optimizer_label", "pruning", "prune_score", "target_sparsity", "seed")


def identity_problem(
    run_id: str, planned: dict[str, Any] | None, recorded: dict[str, Any]
) -> str | None:
    """Why a run's record (metrics.json, or its run-index record) is not the planned run
    `run_id` with spec `planned`, in one line; None when it is. `recorded` needs `run_id`,
    `identity` (the cell block) and `spec_identity` (RunSpec.identity() of its spec)."""
    from lib.metrics import run_identity
    from lib.runner import identity_differences
    from lib.spec import RunSpec

    if recorded.get("run_id") != run_id:
        return (
            f"metrics.json: field 'run_id' is {str(recorded.get('run_id'))[:60]!r}, not {run_id!r}"
        )
    if not planned:
        return None
    try:
        spec = RunSpec.from_dict(planned)
    except (KeyError, TypeError, ValueError) as e:
        return f"matrix.json: the planned spec of {run_id} cannot be read ({e})"
    block = recorded.get("identity") or {}
    cell = run_identity(spec)
    for name in CELL_FIELDS:
        if name not in block:
            continue
        a, b = block[name], cell[name]
        same = a == b or (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, abs_tol=1e-9)
        )
        if not same:
            return f"metrics.json: identity '{name}' is {repr(a)[:40]}, the plan says {b!r}"
    recorded_spec = recorded.get("spec_identity")
    if recorded_spec is not None:
        differences = identity_differences(recorded_spec, spec.identity())
        if differences:
            shown = ", ".join(differences[:3]) + (", ..." if len(differences) > 3 else "")
            return f"metrics.json: another configuration than the plan's ({shown})"
    return None


def spec_identity(spec: Any) -> dict[str, Any] | None:
    """RunSpec.identity() of a metrics.json's `spec`, or None where it cannot be read."""
    from lib.spec import RunSpec

    if not isinstance(spec, dict):
        return None
    try:
        return RunSpec.from_dict(spec).identity()
    except (KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# A matrix directory
# ---------------------------------------------------------------------------------------------


class MatrixStore:
    """One matrix directory, opened once (never through a link); every file read relative to
    its descriptor. `close()` (or `with`) gives the descriptor back."""

    def __init__(self, matrix_dir: str | os.PathLike[str]) -> None:
        self.path = Path(matrix_dir)
        self.notes: list[str] = []  # what a reader must show about what it read
        self.fd = open_dir(self.path)  # FileNotFoundError, StoreError
        # Whoever wrote the plan runs its runs: a run's metrics.json of another user is
        # planted, not a result (None: no plan yet, nothing to compare with).
        self.plan_uid = self.owner(MATRIX_FILE)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> MatrixStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError, TypeError):
            pass

    # -- the plan --------------------------------------------------------------------------------

    def plan_path(self) -> Path:
        return self.path / MATRIX_FILE

    def read_plan(self, *, verify: bool = True, others: bool = False) -> dict[str, Any]:
        """matrix.json, shape-checked; FileNotFoundError when there is none.

        `verify`: its seal must be this user's and match (what launches anything needs);
        StoreError otherwise. With `others` (what only reads: status, the report) a plan
        another user wrote or sealed is read with a note in `self.notes`, never silently;
        a plan of this user's that fails its seal is refused all the same."""
        shown = self.plan_path()
        plan = check_plan(read_json_at(self.fd, MATRIX_FILE, shown), shown)
        self.notes: list[str] = []
        if not verify:
            return plan
        problem = seal_problem(plan, shown)
        if problem is None:
            return plan
        sealed_by = (
            (plan.get(SEAL_FIELD) or {}).get("uid")
            if isinstance(plan.get(SEAL_FIELD), dict)
            else None
        )
        written_by = self.owner()
        me = os.getuid()
        foreign = (isinstance(sealed_by, int) and sealed_by != me) or (
            sealed_by is None and written_by is not None and written_by != me
        )
        if others and foreign:
            who = owner_name(sealed_by if isinstance(sealed_by, int) else written_by)
            self.notes.append(
                f"note: {shown} was written by {who}, not by you; its seal cannot be checked "
                "with your key, so its results are shown as that user recorded them"
            )
            return plan
        raise StoreError(problem)

    def owner(self, name: str = MATRIX_FILE) -> int | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_uid
        except OSError:
            return None

    # -- runs ------------------------------------------------------------------------------------

    def run_dir_fd(self, run_id: str) -> int:
        from lib.spec import is_plain_name

        if not is_plain_name(run_id):
            raise StoreError(f"run id {str(run_id)[:60]!r} is not a directory name")
        return open_dir(run_id, self.fd, self.path / run_id)

    def open_run_file(self, run_id: str, name: str) -> int:
        """A descriptor of `<run_id>/<name>` (regular, never through a link, the run
        directory included). FileNotFoundError when either is missing."""
        dfd = self.run_dir_fd(run_id)
        try:
            return open_regular(name, dfd, self.path / run_id / name)
        finally:
            os.close(dfd)

    def read_run_json(self, run_id: str, name: str, kind: str | None = None) -> Any:
        fd = self.open_run_file(run_id, name)
        shown = self.path / run_id / name
        return parse_json(read_bytes(fd, LIMITS.get(kind or name, 64 * MiB), shown), shown)

    def read_metrics_fd(
        self, fd: int, run_id: str, planned: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """metrics.json from an open descriptor (closed), shape-checked, with no more epoch
        records than `planned` (its planned spec) has epochs."""
        shown = self.path / run_id / METRICS_FILE
        uid = os.fstat(fd).st_uid
        if self.plan_uid is not None and uid != self.plan_uid:
            os.close(fd)
            raise StoreError(
                f"{shown}: written by {owner_name(uid)}, not by {owner_name(self.plan_uid)} "
                "whose runner planned this matrix; not trusted as its result"
            )
        doc = parse_json(read_bytes(fd, LIMITS[METRICS_FILE], shown), shown, depth=False)
        return check_depth(check_metrics(doc, shown, planned_epochs(planned)), shown)

    def read_metrics(self, run_id: str, planned: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.read_metrics_fd(self.open_run_file(run_id, METRICS_FILE), run_id, planned)

    def read_tracking(self, run_id: str) -> dict[str, Any]:
        """tracking.json ({} when there is none or it fails the checks)."""
        try:
            state = self.read_run_json(run_id, TRACKING_FILE)
        except (OSError, StoreError):
            return {}
        return state if isinstance(state, dict) and isinstance(state.get("sinks"), dict) else {}

    def run_dirs_with(self, name: str) -> list[str]:
        """The subdirectories (not links) holding a regular `name`: what is on disk."""
        out = []
        with os.scandir(self.fd) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    os.close(self.open_run_file(entry.name, name))
                except (OSError, StoreError):
                    continue
                out.append(entry.name)
        return sorted(out)
