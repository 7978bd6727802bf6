"""Markdown and number formatting shared by the report and the comparison."""

from __future__ import annotations

from collections.abc import Sequence


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}%"


def fmt_signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}%"


def fmt_num(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "—" if value is None else f"{value:,.{digits}f}{unit}"


def fmt_sparsity(sparsity: float) -> str:
    return "0% (dense)" if sparsity == 0 else f"{sparsity * 100:g}%"


def fmt_interval(low: float | None, high: float | None, signed: bool = False) -> str:
    if low is None or high is None:
        return "—"
    spec = "+.2f" if signed else ".2f"
    return f"[{low:{spec}}, {high:{spec}}]"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fmt_range(values: list[float], digits: int) -> str:
    """`12,602.5` when all runs agree, else `12,596.5 – 12,792.5` (like the seed's report)."""
    if not values:
        return "—"
    low, high = min(values), max(values)
    if f"{low:,.{digits}f}" == f"{high:,.{digits}f}":
        return f"{low:,.{digits}f}"
    return f"{low:,.{digits}f} – {high:,.{digits}f}"
