"""Small wording helpers shared by the command lines and the report."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 run`, `2 runs`, `0 runs`: a number with its noun in the right form."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
