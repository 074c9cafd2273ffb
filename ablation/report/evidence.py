"""The evidence behind one claim's verdict: its stated magnitude against the measured one, and the seeds that would
decide it when it is inconclusive (:mod:`ablation.report.stats` computes; this module lays out)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ablation.report import claims, stats
from ablation.report.formats import finite, markdown_table

BASES = {"own": "own losses", "judge": "judge"}


def magnitude_fields(claim: pd.Series, row: dict[str, Any]) -> dict[str, Any]:
    """The stated change beside the measured one (binding comparison, 95% interval, unadjusted) and the report's."""
    stated = claim["stated_change_pct"]
    if not finite(stated):
        return {}
    reported = stats.change_pct(claims.on_reported(claim)[1].ratio)
    fields = {"reported_change_pct": reported, "reported_agrees": stats.agrees(reported, stated)}
    if finite(row.get("ci_low", math.nan)):
        low, high = stats.change_pct(row["ci_low"]), stats.change_pct(row["ci_high"])
        fields |= {"change_pct": stats.change_pct(row["ratio"]), "change_ci_low_pct": low, "change_ci_high_pct": high}
        fields["stated_inside"] = stats.inside(stated, low, high)
    return fields


def change_text(change: float, low: float, high: float) -> str:
    return f"{change:+.2f}% [{low:+.2f}%, {high:+.2f}%]"


def magnitudes_markdown(frame: pd.DataFrame) -> str:
    """Each claim with a stated change: the report's own figure, then per condition the measured change with its
    95% interval and whether the stated figure lies inside, on own losses and under the judge."""
    stated = frame[frame["stated_change_pct"].map(finite)]
    body = []
    for (claim_id, condition), rows in stated.groupby(["id", "condition"], sort=False):
        first = rows.iloc[0]
        digits = max(2, stats.stated_digits(first["stated_change_pct"]))  # as precise as the text, or 0.01%
        agreement = "agrees" if first["reported_agrees"] else "differs"
        reported = f"{first['reported_change_pct']:+.{digits}f}% ({agreement})"
        line = [f"`{claim_id}`", f"{first['stated_change_pct']:+.{digits}f}%", reported, f"`{condition}`"]
        for basis in BASES:
            row = rows[rows["basis"] == basis].iloc[0]
            if finite(row.get("change_ci_low_pct", math.nan)):
                where = "inside" if row["stated_inside"] else "outside"
                line.append(f"{change_text(row['change_pct'], row['change_ci_low_pct'], row['change_ci_high_pct'])}: "
                            f"{where}")  # fmt: skip
            else:
                line.append("not measured" if row["verdict"].startswith("not measured") else f"— ({row['verdict']})")
        body.append(line)
    header = ["Claim", "Text", "Report's tables", "Condition", "Own losses: change [95% CI]", "Judge: change [95% CI]"]
    return markdown_table(header, body, numeric=False)


def seeds_markdown(frame: pd.DataFrame) -> str:
    """Each headline-inconclusive claim measured with 2 seeds or more: how many seeds per variant would decide it."""
    body = []
    for row in frame[frame["verdict"] == claims.INCONCLUSIVE].to_dict("records"):
        if not isinstance(row.get("seeds_versus"), str):  # nothing measured with 2 seeds or more
            continue
        needed = row["seeds_needed"]
        if row["no_effect"]:
            decide = "no effect measured"
        elif needed > stats.MAX_SEEDS:
            decide = f"more than {stats.MAX_SEEDS} seeds"
        else:
            decide = f"~{needed:.0f} seeds would decide"
        effect = f"×{claims.format_ratio(row['seeds_ratio'])} [{claims.format_ratio(row['seeds_ci_low'])}, "
        effect += f"{claims.format_ratio(row['seeds_ci_high'])}] vs `{row['seeds_versus']}`"
        body.append([f"`{row['id']}`", f"`{row['condition']}`", BASES[row["basis"]], effect,
                     f"{row['seeds_now']:.0f}", decide])  # fmt: skip
    header = ["Claim", "Condition", "Basis", "Measured (95% CI)", "Seeds now", "Seeds per variant to decide"]
    return markdown_table(header, body, numeric=False) if body else "No inconclusive claim with 2 seeds or more."


MAGNITUDES_WHY = (
    "A claim that states its change (the text's figure; \"double\" is +100%): the report's own tables give it "
    "exactly or not (agrees at the text's decimals, or differs), and each condition's runs give the measured change "
    "of the geometric means with its 95% interval (unadjusted); the stated figure lies inside or outside it."
)
SEEDS_WHY = (
    "For each inconclusive headline verdict: the seeds per variant at which, with the measured effect and spreads "
    "held, the interval would exclude a ratio of 1 at the level the adjustment asks of it (0.05 / the number of "
    "comparisons, Bonferroni's, which Holm's never falls below). \"No effect measured\" when the effect is smaller "
    "than its own standard error: more seeds would only measure noise. Against several variants, the comparison "
    "that would settle the claim: one pointing against it fails it alone, else every one must hold."
)
