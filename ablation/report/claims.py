"""Does the report hold? Its Section 3.1 claims (``ablation/reported/claims.csv``) judged three ways.

A claim says a variant's quantity (runtime or a loss) is ``lower`` or ``higher`` than that of one or more other
variants (``versus``: variant keys, or ``table1``/``table2`` for every other variant of that table). It gets three
verdicts: on the report's own numbers (does its table support its text?), on the sweep's runs with each variant's
own losses (what the report measured), and under the common judge (the only losses on one scale).

A measured comparison is a ratio of geometric means with a 95% confidence interval from Welch's t on the logs
of the per-seed values (losses and runtimes are positive and spread over orders of magnitude, so ratios, not
differences, are what carries over between scales): it **holds** when the whole interval lies on the claimed side
of 1, **fails** when it lies on the other side, and is **inconclusive** otherwise, or with fewer than 2 seeds. A
claim against several variants holds when every comparison holds and fails when any fails. Runtimes are compared
only between runs of one hardware class.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ablation.paths import REPORTED_DIR
from ablation.report.formats import finite, format_number, format_runtime, markdown_table
from ablation.report.load import HARDWARE_TAG
from ablation.report.quantities import QUANTITIES
from ablation.report.variants import TABLE_TITLES, named, reported_table, table_variants

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
ONE_SEED = "inconclusive (1 seed)"
NO_JUDGE = "no judge (runtime)"  # not "n/a": pandas reads that back as NaN
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """One variant against one other: ratio of (geometric) means with its 95% CI, and the verdict."""

    versus: str
    mean: float  # of the claim's variant (arithmetic, for display)
    versus_mean: float
    ratio: float
    ci_low: float
    ci_high: float
    verdict: str


def load_claims() -> pd.DataFrame:
    """The claims, one row each, in the report's order."""
    return pd.read_csv(REPORTED_DIR / "claims.csv", dtype={"stated_change_pct": float})


def versus_variants(claim: pd.Series) -> list[str]:
    """The variants a claim compares against: a table name stands for every other variant of that table."""
    names = []
    for word in claim["versus"].split():
        names += table_variants(word) if word in TABLE_TITLES else [word]
    return [v for v in dict.fromkeys(names) if v != claim["variant"]]


def direction_verdict(ratio_low: float, ratio_high: float, relation: str) -> str:
    """holds / fails / inconclusive for an interval of ratios (a point when low == high)."""
    below, above = ratio_high < 1.0, ratio_low > 1.0
    if (below and relation == "lower") or (above and relation == "higher"):
        return HOLDS
    if below or above:
        return FAILS
    return INCONCLUSIVE


def compare(values: np.ndarray, versus_values: np.ndarray, versus: str, relation: str) -> Comparison:
    """One measured comparison: the ratio of geometric means and its 95% CI (Welch's t on the logs, by scipy);
    fewer than 2 values on either side gives the ratio of means and no verdict."""
    mean, versus_mean = float(np.mean(values)), float(np.mean(versus_values))
    if min(len(values), len(versus_values)) < 2:
        return Comparison(versus, mean, versus_mean, mean / versus_mean, float("nan"), float("nan"), ONE_SEED)
    logs, versus_logs = np.log(values), np.log(versus_values)
    with warnings.catch_warnings():  # equal values on a side (a fixed runtime) warn of precision; the CI is right
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = stats.ttest_ind(logs, versus_logs, equal_var=False).confidence_interval(CONFIDENCE)
    ratio, low, high = math.exp(logs.mean() - versus_logs.mean()), math.exp(interval.low), math.exp(interval.high)
    return Comparison(versus, mean, versus_mean, ratio, low, high, direction_verdict(low, high, relation))


def combine(comparisons: list[Comparison], relation: str) -> tuple[str, Comparison]:
    """The claim's verdict over its comparisons, and the comparison closest to breaking it (shown as the effect)."""
    verdicts = {c.verdict for c in comparisons}
    if FAILS in verdicts:
        verdict = FAILS
    elif verdicts == {HOLDS}:
        verdict = HOLDS
    else:
        verdict = ONE_SEED if ONE_SEED in verdicts else INCONCLUSIVE
    sign = 1.0 if relation == "lower" else -1.0
    return verdict, max(comparisons, key=lambda c: sign * c.ratio)


def reported_value(variant: str, quantity: str) -> float:
    """The report's figure for ``variant`` (from the first of its tables that has it); NaN if it has none."""
    column = QUANTITIES[quantity].reported
    for name in TABLE_TITLES:
        table = reported_table(name)
        if variant in table.index:
            return float(table.loc[variant, column])
    return float("nan")


def on_reported(claim: pd.Series) -> tuple[str, Comparison]:
    """The claim checked against the report's own tables: one number per variant, so no interval."""
    value = reported_value(claim["variant"], claim["quantity"])
    comparisons = []
    for versus in versus_variants(claim):
        base = reported_value(versus, claim["quantity"])
        ratio = value / base
        verdict = direction_verdict(ratio, ratio, claim["relation"])
        comparisons.append(Comparison(versus, value, base, ratio, float("nan"), float("nan"), verdict))
    return combine(comparisons, claim["relation"])


def one_hardware_class(runs: pd.DataFrame, variants: list[str]) -> str | None:
    """The hardware class with runs of every one of ``variants`` (the one with most such runs; ties alphabetical)."""
    subset = runs[runs["variant"].isin(variants)]
    complete = subset.groupby(HARDWARE_TAG)["variant"].nunique() == len(variants)
    counts = subset[HARDWARE_TAG].value_counts()
    candidates = sorted(complete[complete].index, key=lambda c: (-counts[c], c))
    return candidates[0] if candidates else None


def measured_values(
    claim: pd.Series, runs: pd.DataFrame, column: str | None
) -> tuple[str | None, dict[str, np.ndarray], str]:
    """Per-seed values of ``column`` for the claim's variant and each it is compared with (in that order), and the
    hardware class of runtimes; or, first, why the claim cannot be measured on these runs (then no values)."""
    if column is None:
        return NO_JUDGE, {}, ""
    involved = [claim["variant"], *versus_variants(claim)]
    missing = [v for v in involved if v not in set(runs["variant"])]
    if missing:
        return f"not measured (no runs of {', '.join(missing)})", {}, ""
    hardware = ""
    if claim["quantity"] == "runtime":
        hardware = one_hardware_class(runs, involved)
        if hardware is None:
            return f"{INCONCLUSIVE} (no one hardware class ran all of {', '.join(involved)})", {}, ""
        runs = runs[runs[HARDWARE_TAG] == hardware]
    values = {v: runs.loc[runs["variant"] == v, column].dropna().to_numpy(float) for v in involved}
    unmeasured = [v for v in involved if not len(values[v])]
    if unmeasured:  # runs older than the metric (the judge's, as a rule)
        return f"not measured (no {column} in runs of {', '.join(unmeasured)})", {}, hardware
    return None, values, hardware


def on_runs(claim: pd.Series, runs: pd.DataFrame, column: str | None) -> tuple[str, Comparison | None, str]:
    """The claim on the sweep's runs, by ``column``: (verdict, binding comparison, hardware class of runtimes)."""
    unmeasured, values, hardware = measured_values(claim, runs, column)
    if unmeasured is not None:
        return unmeasured, None, hardware
    own, *others = values
    comparisons = [compare(values[own], values[v], v, claim["relation"]) for v in others]
    return (*combine(comparisons, claim["relation"]), hardware)


def claim_words(claim: pd.Series) -> str:
    """'Average pooling (`avg_pool`): total loss lower than Original model (`original`) (text: -87.19%)'."""
    words = claim["versus"].split()
    if len(words) == 1 and words[0] in TABLE_TITLES:
        versus = f"every other model of {TABLE_TITLES[words[0]].split(':')[0]}"
    else:
        versus = " and ".join(named(v) for v in words)
    stated = f" (text: {claim['stated_change_pct']:+.4g}%)" if finite(claim["stated_change_pct"]) else ""
    quantity = QUANTITIES[claim["quantity"]].label
    return f"{named(claim['variant'])}: {quantity} {claim['relation']} than {versus}{stated}"


def comparison_fields(prefix: str, verdict: str, found: Comparison | None) -> dict[str, object]:
    """A verdict and its binding comparison as flat CSV columns ``<prefix>_...``."""
    nan = float("nan")
    return {
        f"{prefix}_verdict": verdict,
        f"{prefix}_versus": found.versus if found else "",
        f"{prefix}_mean": found.mean if found else nan,
        f"{prefix}_versus_mean": found.versus_mean if found else nan,
        f"{prefix}_ratio": found.ratio if found else nan,
        f"{prefix}_ci_low": found.ci_low if found else nan,
        f"{prefix}_ci_high": found.ci_high if found else nan,
    }


def evaluate_claims(runs: pd.DataFrame) -> pd.DataFrame:
    """Every claim with its three verdicts and effects: the frame behind ``claims.csv``."""
    records = []
    for _, claim in load_claims().iterrows():
        quantity = QUANTITIES[claim["quantity"]]
        own_verdict, own, hardware = on_runs(claim, runs, quantity.own)
        judge_verdict, judge, _ = on_runs(claim, runs, quantity.judge)
        records.append(
            {
                **claim.to_dict(),
                "claim": claim_words(claim),
                **comparison_fields("reported", *on_reported(claim)),
                **comparison_fields("own", own_verdict, own),
                **comparison_fields("judge", judge_verdict, judge),
                "runtime_hardware_class": hardware,
            }
        )
    return pd.DataFrame(records)


def effect_text(row: dict, prefix: str, quantity: str) -> str:
    """'552 vs 4210 (`original`): x0.131 [0.128, 0.135]'; '—' when nothing was compared."""
    if not finite(row[f"{prefix}_ratio"]):
        return "—"
    show = format_runtime if quantity == "runtime" else format_number
    text = f"{show(row[f'{prefix}_mean'])} vs {show(row[f'{prefix}_versus_mean'])} (`{row[f'{prefix}_versus']}`): "
    text += f"×{format_ratio(row[f'{prefix}_ratio'])}"
    if prefix != "reported" and finite(row[f"{prefix}_ci_low"]):
        text += f" [{format_ratio(row[f'{prefix}_ci_low'])}, {format_ratio(row[f'{prefix}_ci_high'])}]"
    return text


def format_ratio(ratio: float) -> str:
    """Three decimals near 1, where claims are decided (1.003, not 1), three significant digits elsewhere."""
    return f"{ratio:.3f}" if 0.1 <= ratio < 10 else f"{ratio:.3g}"


def verdict_text(verdict: str) -> str:
    return f"**{verdict}**" if verdict in (HOLDS, FAILS) else verdict


def claims_markdown(frame: pd.DataFrame) -> str:
    """One row per claim (words, reported numbers, measured ratios with 95% CI, three verdicts), then the sentences."""
    header = ["#", "Claim", "Reported", "Measured, own losses", "Measured, judge", "Verdict: report's numbers"]
    header += ["Verdict: own losses", "Verdict: judge"]
    body, sentences = [], []
    for number, row in enumerate(frame.to_dict("records"), start=1):
        hardware = f" on `{row['runtime_hardware_class']}`" if row["runtime_hardware_class"] else ""
        body.append(
            [
                str(number),
                row["claim"],
                effect_text(row, "reported", row["quantity"]),
                effect_text(row, "own", row["quantity"]) + hardware,
                effect_text(row, "judge", row["quantity"]),
                verdict_text(row["reported_verdict"]),
                verdict_text(row["own_verdict"]),
                verdict_text(row["judge_verdict"]),
            ]
        )
        sentences.append(f"{number}. `{row['id']}`: “{row['sentence']}”")
    return "\n".join([markdown_table(header, body, numeric=False), "", "Sentences of Section 3.1:", "", *sentences])
