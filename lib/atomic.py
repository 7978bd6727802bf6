"""How the framework creates files in directories others may write (a shared results tree).

Atomic writes: a reader (or a crash, or a full disk) sees the old file or the new one, never a
torn one. Every file the framework keeps (metrics.json, run.json, matrix.json, checkpoints, the
dataset cache, report.md, metrics.csv, plots) is written through `atomic_file`: its temporary
file is created exclusively under an unpredictable name (never opened through a planted
link), the rename replaces a link at the target rather than writing through it, and the file
gets the mode `open()` would give it, 0666 less the umask (not mkstemp's 0600), so teammates
can read results as they read any file of the owner.

Files appended to in place (train.log, the matrix lock) are opened with `open_no_follow`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


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


def open_no_follow(path: str | os.PathLike[str], flags: int, mode: int = 0o666) -> int:
    """`os.open` that refuses a symbolic link at `path` (OSError, errno ELOOP) instead of
    opening the file it points to."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


@contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: str = "wb", newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on a clean exit flush, fsync and rename it over
    `path`. On any error the temporary file is removed and `path` is left untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": newline}
    try:
        with os.fdopen(fd, mode, **text) as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save through `atomic_file`."""
    import torch

    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) through `atomic_file`."""
    with atomic_file(path, "w") as f:
        f.write(text)
