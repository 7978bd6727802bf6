"""Markdown and number formatting shared by the report and the comparison."""

from __future__ import annotations

from collections.abc import Sequence

from scripts.report.stats import Verdict


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


def printed(value: float) -> float:
    """`value` as the tables print it (two decimals), so arithmetic on what a reader sees
    gives what the report prints."""
    return float(f"{value:.2f}")


def fmt_printed_difference(a: float, b: float) -> str:
    """a - b of the two means *as printed*: 74.55 vs 73.22 gives +1.33 (never +1.32 from the
    unrounded 74.546 - 73.222). Equal as printed is a tie and has no sign: `0.00%`."""
    if printed(a) == printed(b):
        return "0.00%"
    return fmt_signed(printed(a) - printed(b))


def fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt_verdict(verdict: Verdict, interval: bool = True) -> str:
    """`[+0.50, +2.10], significant (p = 0.012, df = 2.6, Holm p = 0.024)`, or why no verdict
    exists (`no noise estimate (one seed)`)."""
    diff = verdict.difference
    if verdict.significant is None or diff.p_value is None or diff.df is None:
        return f"no noise estimate ({diff.no_noise_reason})"
    words = "significant" if verdict.significant else "not significant"
    details = f"{fmt_p(diff.p_value)}, df = {diff.df:.1f}"
    if verdict.comparisons > 1:
        details += f", Holm {fmt_p(verdict.p_adjusted)}"
    text = f"{words} ({details})"
    if interval:
        text = f"{fmt_interval(diff.ci_low, diff.ci_high, signed=True)}, {text}"
    return text
