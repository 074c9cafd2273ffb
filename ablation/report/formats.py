"""How the report writes numbers: its own formats for losses and runtimes, % changes, Markdown tables."""

from __future__ import annotations

import math

MINUTE_S = 60.0


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def format_runtime(seconds: float) -> str:
    """The report's format from a minute up: 2279 -> '37 min 59 sec'; below a minute '2.31 s', since a tiny run's
    seconds are the whole signal and '0 min 2 sec' hides it."""
    if seconds < MINUTE_S:
        return f"{seconds:.2f} s"
    total = int(round(seconds))
    return f"{total // 60} min {total % 60} sec"


def format_number(value: float) -> str:
    """Six significant digits, as the report prints losses (864545, 1.65628e+06)."""
    return f"{value:.6g}"


def format_cell(mean: float | None, std: float | None, runtime: bool = False) -> str:
    """'mean ± std' (sample std over seeds); the mean alone when there is one seed; '—' when missing."""
    if not finite(mean):
        return "—"
    text = format_runtime(mean) if runtime else format_number(mean)
    if finite(std):
        if not runtime:
            text += f" ± {std:.3g}"
        else:
            text += f" ± {std:.2f} s" if mean < MINUTE_S else f" ± {round(std):d} sec"
    return text


def format_change(change: float | None) -> str:
    return f"{change:+.2f}%" if finite(change) else "—"


def percent_change(value: float, original: float) -> float:
    """(value - original) / original * 100: the report's 'decreased 87.1946%' is -87.1946 here."""
    return float("nan") if not original else 100.0 * (value - original) / original


def markdown_table(header: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right-aligned when ``numeric``."""
    rule = ["---"] + ["---:" if numeric else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
