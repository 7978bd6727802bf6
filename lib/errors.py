"""The framework's one-line errors and how any error becomes one line of a run's record.

A leaf module (it imports nothing of the project), so that the training loop, the trackers,
the data loaders and the catalogue can all use `one_line` without importing each other.
"""

from __future__ import annotations


class OneLineError(Exception):
    """An error whose message already says, in one line, what went wrong and what to do: it
    is reported as it is, without its type name."""


def one_line(error: BaseException) -> str:
    """The first line of `error`, prefixed with its type unless it is a OneLineError."""
    text = str(error).strip() or type(error).__name__
    first = text.splitlines()[0]
    if isinstance(error, OneLineError):
        return first
    return f"{type(error).__name__}: {first}"
