"""Atomic file writes: a reader (or a crash, or a full disk) sees the old file or the new one,
never a torn one. Every result the framework keeps (metrics.json, checkpoints, the dataset
cache, matrix.json) is written through here."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on a clean exit flush, fsync and rename it over
    `path`. On any error the temporary file is removed and `path` is left untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
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
