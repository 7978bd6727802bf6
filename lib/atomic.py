"""How the framework creates files in directories others may write (a shared results tree).

Atomic writes: a reader (or a crash, or a full disk) sees the old file or the new one, never a
torn one. Every file the framework keeps (metrics.json, run.json, matrix.json, checkpoints, the
dataset cache, report.md, metrics.csv, plots) is written through `atomic_file`: its temporary
file is created exclusively under an unpredictable name (never opened through a planted
link), the rename replaces a link at the target rather than writing through it, and the file
gets the mode `open()` would give it, 0666 less the umask (not mkstemp's 0600), so teammates
can read results as they read any file of the owner.

Files appended to in place (train.log, the matrix lock) are opened with `open_no_follow`.
Under results/ the directory is opened once by lib/store.py (never through a link) and every
write is relative to its descriptor (`atomic_file(..., dir_fd=)`, `atomic_write_at`).
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Failures of the place a file is written to, not of the run: once the operator has made
# room (or remounted), the same run can simply continue.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large for this file system or ulimit",
}


# Exit status of a process that stopped on a StorageError (sysexits' EX_TEMPFAIL: try again
# later). The trainer uses it so that the runner knows even when metrics.json could not be
# written.
EXIT_ENVIRONMENT = 75


class StorageError(OSError):
    """Writing `filename` failed for lack of space (or quota, or a read-only mount): an
    environment failure. `str()` is one line: "no space left on device while writing <path>"."""

    def __str__(self) -> str:
        return f"{self.strerror} while writing {self.filename}"


def storage_error(error: BaseException, path: str | os.PathLike[str]) -> StorageError | None:
    """The environment failure behind `error`, or None. The OSError may sit in the context
    chain: torch's zip writer replaces the ENOSPC of a full disk by its own "[enforce fail at
    inline_container.cc] unexpected pos" RuntimeError while it unwinds."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, StorageError):
            return seen
        if isinstance(seen, OSError) and seen.errno in ENVIRONMENT_ERRNOS:
            return StorageError(seen.errno, ENVIRONMENT_ERRNOS[seen.errno], str(path))
        seen = seen.__cause__ or seen.__context__
    return None


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (changing it, even
    for an instant, would race with threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_no_follow(
    path: str | os.PathLike[str], flags: int, mode: int = 0o666, *, dir_fd: int | None = None
) -> int:
    """`os.open` that refuses a symbolic link at `path` (OSError, errno ELOOP) instead of
    opening the file it points to; relative to `dir_fd` when given."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def _temporary_at(dir_fd: int, name: str) -> tuple[int, str]:
    """A new file `.<name>.<random>.tmp` in the directory `dir_fd`, created exclusively and
    never through a link (mkstemp's guarantees, relative to a descriptor): (fd, its name)."""
    while True:
        candidate = f".{name}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(
                candidate,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,  # the mode is set below, as for mkstemp's file
                dir_fd=dir_fd,
            )
        except FileExistsError:
            continue
        return fd, candidate


@contextmanager
def atomic_file(
    path: str | os.PathLike[str],
    mode: str = "wb",
    newline: str | None = None,
    *,
    dir_fd: int | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on a clean exit flush, fsync and rename it over
    `path`. On any error the temporary file is removed and `path` is left untouched; a full
    disk (or quota, or read-only mount) raises StorageError naming `path`.

    With `dir_fd` (a directory lib/store.py opened without following links) the file is
    `path`'s last component in that directory: temporary file, rename and clean-up are all
    relative to the descriptor, so a directory swapped for a link after it was opened is
    never written through; `path` then only names the file in errors."""
    path = Path(path)
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": newline}
    tmp = None
    try:
        if dir_fd is None:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        else:
            fd, tmp = _temporary_at(dir_fd, path.name)
        with os.fdopen(fd, mode, **text) as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        target = path if dir_fd is None else path.name
        os.replace(tmp, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as error:
        if tmp is not None:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
        environment = storage_error(error, path)
        if environment is not None and environment is not error:
            raise environment from error
        raise


def atomic_write_at(dir_fd: int, name: str, text: str, shown: Path) -> None:
    """`atomic_write_text` relative to a directory descriptor (lib/store.py opened it without
    following links): a directory swapped for a link after it was opened is not written
    through. `shown` names the file in errors."""
    with atomic_file(Path(shown).with_name(name), "w", dir_fd=dir_fd) as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str], *, dir_fd: int | None = None) -> None:
    """torch.save through `atomic_file` (relative to `dir_fd` when given)."""
    import torch

    with atomic_file(path, "wb", dir_fd=dir_fd) as f:
        torch.save(obj, f)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) through `atomic_file`."""
    with atomic_file(path, "w") as f:
        f.write(text)


def set_aside_corrupt(path: Path, *, dir_fd: int | None = None) -> Path:
    """Rename a damaged file to `<name>.corrupt-<UTC time>` beside it (kept as evidence, out
    of the way of a fresh one); return the new path. With `dir_fd` the file is `path`'s name
    in that directory and the rename is relative to it (a link is renamed, not followed)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while exists_at(target if dir_fd is None else target.name, dir_fd):
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    if dir_fd is None:
        os.replace(path, target)
    else:
        os.replace(path.name, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return target


def exists_at(path: str | os.PathLike[str], dir_fd: int | None = None) -> bool:
    """Whether anything (a link included, never followed) is at `path`, relative to `dir_fd`
    when given."""
    try:
        os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
