"""Where do the report's claims hold? Each claim judged in each condition of a sweep (``experiment=conditions``),
its verdicts adjusted for the many comparisons (:mod:`ablation.report.stats`), the claims that flip, the stated
magnitudes against the measured ones, and the seeds that would decide the inconclusive ones.

A condition is a file of ``conf/condition/`` (a named set of overrides); each job records its condition on the
sweep, so the runs group by it. What a condition changed is read off the runs themselves: the result-changing
config keys whose value is one within each condition and not one across them (the content's size stands for
``images.width``), so a command line that overrode a condition's key shows as it ran.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pandas as pd

from ablation.report import claims, evidence, stats
from ablation.report.formats import finite, markdown_table
from ablation.report.quantities import QUANTITIES
from ablation.schema import RESULT_NEUTRAL_KEYS

BASES = evidence.BASES
SIZE_PARAM = "content_size_wh"
SYMBOLS = {claims.HOLDS: "✓", claims.FAILS: "✗", claims.INCONCLUSIVE: "?"}
WHY = (
    "The same variants and seeds ran under each condition (a named set of overrides, a file of `conf/condition/`); "
    'each claim of Section 3.1 is judged in each as in "Does the report hold?". Verdicts are adjusted for asking '
    "many questions at once: Holm's method on the comparisons' p-values (Welch's t on the logs), within each basis "
    "(own losses; judge) across all claims and conditions, so the chance that any headline verdict is wrong by "
    "chance stays under 5%. Holm rather than Benjamini-Hochberg because each verdict is quoted on its own and the "
    "comparisons are dependent (they share the original's runs), where Holm holds under any dependence. Cells read "
    "*own losses / judge*: ✓ holds, ✗ fails, ? inconclusive, ? with ¹ one seed, · no judge (runtime), — not "
    "measured; [the unadjusted verdict] where the adjustment changed it."
)


def has_conditions(runs: pd.DataFrame) -> bool:
    """A sweep whose jobs named a condition (``experiment=conditions`` or ``condition=...``) gets this section."""
    return "condition" in runs and bool((runs["condition"].astype(str) != "").any())


def condition_order(runs: pd.DataFrame) -> list[str]:
    """The conditions in the sweep's job order (the experiment's list): the first is the report's reference."""
    return list(dict.fromkeys(runs.sort_values("job")["condition"].astype(str)))


def result_keys(params: dict[str, str]) -> list[str]:
    """The params of a run that are config keys changing results, but the variant's and the seed: what a condition
    can set (``images.width`` replaced by the content's measured size)."""
    keys = [k for k in params if "." in k and k not in RESULT_NEUTRAL_KEYS and not k.startswith("variant.")]
    return sorted({SIZE_PARAM if k == "images.width" else k for k in keys} - {"run.seed"})


def condition_settings(runs: pd.DataFrame, params: dict[str, dict[str, str]]) -> pd.DataFrame:
    """Per condition (index, in order), each setting that is one value within every condition and differs across
    them (columns, as the runs' params say it)."""
    conditions = condition_order(runs)
    found: dict[str, dict[str, set[str]]] = {c: {} for c in conditions}
    for row in runs.itertuples():
        run_params = params.get(row.run_id, {})
        for key in result_keys(run_params):
            found[row.condition].setdefault(key, set()).add(run_params.get(key, ""))
    keys = sorted(set.intersection(*(set(k) for k in found.values())) if found else set())
    single = [k for k in keys if all(len(found[c][k]) == 1 for c in conditions)]
    table = pd.DataFrame({k: [next(iter(found[c][k])) for c in conditions] for k in single}, index=conditions)
    return table.loc[:, table.nunique() > 1] if len(table.columns) else table


def basis_columns(quantity: str) -> tuple[str | None, str | None]:
    """The runs frame's columns of a claim's quantity: its own measure and the judge's (None for runtime)."""
    found = QUANTITIES[quantity]
    return found.own, found.judge


def comparison_records(runs: pd.DataFrame, condition: str) -> list[dict[str, Any]]:
    """Every comparison of every claim on both bases in one condition: its ratio, interval, verdict, p-value and
    samples; a claim that cannot be measured gives one record with the reason as its verdict."""
    records = []
    for _, claim in claims.load_claims().iterrows():
        for basis, column in zip(BASES, basis_columns(claim["quantity"]), strict=True):
            key = {"condition": condition, "id": claim["id"], "basis": basis, "relation": claim["relation"]}
            unmeasured, values, _ = claims.measured_values(claim, runs, column)
            if unmeasured is not None:
                records.append({**key, "versus": "", "verdict": unmeasured, "p_value": math.nan})
                continue
            own, *others = values
            for versus in others:
                found = claims.compare(values[own], values[versus], versus, claim["relation"])
                sampled = min(len(values[own]), len(values[versus])) >= 2
                p_value = stats.welch_p_value(values[own], values[versus]) if sampled else math.nan
                records.append(
                    {**key, "versus": versus, "verdict": found.verdict, "p_value": p_value, "comparison": found,
                     "samples": (values[own], values[versus]), "seeds_now": min(len(values[own]), len(values[versus]))}
                )  # fmt: skip
    return records


def adjust(records: list[dict[str, Any]]) -> None:
    """Holm's adjustment within each basis, over every comparison with a p-value: the adjusted p and verdict, and
    the seeds that would decide an inconclusive one at the family's level (Bonferroni's alpha / m, which Holm's
    threshold never falls below, so those seeds decide it whatever the other comparisons do)."""
    for basis in BASES:
        family = [r for r in records if r["basis"] == basis]
        adjusted = stats.holm([r["p_value"] for r in family])
        tested = sum(finite(r["p_value"]) for r in family)
        for record, p_adjusted in zip(family, adjusted, strict=True):
            record["p_adjusted"], record["seeds_needed"] = p_adjusted, None
            record["verdict_adjusted"] = record["verdict"]
            if not finite(p_adjusted):
                continue
            found = record["comparison"]
            if not stats.decided(p_adjusted):
                record["verdict_adjusted"] = claims.INCONCLUSIVE
                record["seeds_needed"] = stats.seeds_needed(*record["samples"], stats.ALPHA / tested)
            else:
                record["verdict_adjusted"] = claims.direction_verdict(found.ratio, found.ratio, record["relation"])


def deciding(group: list[dict[str, Any]], relation: str) -> tuple[dict[str, Any] | None, int | None]:
    """The comparison still open after the adjustment that would settle the claim, and its seeds (None: no effect
    measured). One pointing against the claim decides it alone (fails), so the one needing fewest seeds of those;
    else the claim holds only when every open one does, so the one needing most."""
    open_ones = [r for r in group if r["verdict_adjusted"] == claims.INCONCLUSIVE and finite(r["p_value"])]
    if not open_ones:
        return None, None
    ratio = {id(r): r["comparison"].ratio for r in open_ones}
    against = [r for r in open_ones if claims.direction_verdict(ratio[id(r)], ratio[id(r)], relation) == claims.FAILS]
    if against:
        measured = [r for r in against if r["seeds_needed"] is not None]
        found = min(measured, key=lambda r: r["seeds_needed"]) if measured else against[0]
        return found, found["seeds_needed"]
    unmeasured = [r for r in open_ones if r["seeds_needed"] is None]
    found = unmeasured[0] if unmeasured else max(open_ones, key=lambda r: r["seeds_needed"])
    return found, found["seeds_needed"]


def claim_record(group: list[dict[str, Any]]) -> dict[str, Any]:
    """One claim in one condition on one basis: its comparisons combined (a claim against several variants holds
    when each comparison does), headline (adjusted) and unadjusted, the binding comparison, the weakest p-values
    and, when inconclusive, the comparison that would settle it with its seeds (:func:`deciding`)."""
    first = group[0]
    key = {k: first[k] for k in ("condition", "id", "basis")}
    if "comparison" not in first:
        return {**key, "verdict": first["verdict"], "verdict_unadjusted": first["verdict"]}
    relation = first["relation"]
    unadjusted, binding = claims.combine([r["comparison"] for r in group], relation)
    adjusted, _ = claims.combine([replace(r["comparison"], verdict=r["verdict_adjusted"]) for r in group], relation)
    settling, needed = deciding(group, relation) if adjusted == claims.INCONCLUSIVE else (None, None)
    fields = ("versus", "ratio", "ci_low", "ci_high")
    return {
        **key,
        "verdict": adjusted,
        "verdict_unadjusted": unadjusted,
        **{k: getattr(binding, k) for k in ("versus", "mean", "versus_mean", "ratio", "ci_low", "ci_high")},
        "p_value": max(r["p_value"] for r in group),
        "p_adjusted": max(r["p_adjusted"] for r in group),
        "seeds_now": min(r["seeds_now"] for r in group),
        "seeds_needed": needed,
        "no_effect": settling is not None and needed is None,
        **({f"seeds_{k}": getattr(settling["comparison"], k) for k in fields} if settling is not None else {}),
    }


def evaluate_conditions(runs: pd.DataFrame, settings: pd.DataFrame) -> pd.DataFrame:
    """The frame behind ``conditions.csv``: one row per claim, condition and basis, in the report's claim order."""
    records = [r for c in settings.index for r in comparison_records(runs[runs["condition"] == c], c)]
    adjust(records)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["condition"], record["id"], record["basis"]), []).append(record)
    table = claims.load_claims().set_index("id", drop=False)
    rows = []
    for (condition, claim_id, _), group in groups.items():
        row = claim_record(group)
        claim = table.loc[claim_id]
        row = {
            "id": claim_id,
            "claim": claims.claim_words(claim),
            **row,
            "stated_change_pct": claim["stated_change_pct"],
            **evidence.magnitude_fields(claim, row),
            **{f"setting.{k}": settings.loc[condition, k] for k in settings.columns},
        }
        rows.append(row)
    order = {c: i for i, c in enumerate(table.index)}
    frame = pd.DataFrame(rows)
    settings_columns = [c for c in frame.columns if c.startswith("setting.")]
    frame = frame[[c for c in frame.columns if c not in settings_columns] + settings_columns]  # what ran, last
    return frame.sort_values("id", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)


#: How a setting reads in a sentence ("300 iterations"); any other key reads ``key=value``.
SETTING_WORDS = {
    "run.iterations": "{} iterations",
    SIZE_PARAM: "{} px",
    "loss.style_weight": "style weight {}",
    "loss.content_weight": "content weight {}",
    "loss.tv_weight": "TV weight {}",
}


def setting_value(value: str) -> str:
    """A param as a reader writes it: '5000.0' -> '5000'."""
    try:
        return f"{float(value):g}"
    except ValueError:
        return value


def describe_setting(key: str, value: str) -> str:
    return SETTING_WORDS.get(key, f"{key}={{}}").format(setting_value(value))


def condition_words(settings: pd.DataFrame, condition: str) -> str:
    """'256x341 px, 300 iterations' (what sets the condition apart), or 'as the sweep's other settings'."""
    words = [describe_setting(k, settings.loc[condition, k]) for k in settings.columns]
    return ", ".join(words) or "the sweep's own settings"


def verdict_symbol(verdict: str) -> str:
    """✓ ✗ ? for a verdict; ?¹ with one seed; · no judge; — not measured (or a verdict this table cannot place)."""
    if verdict == claims.ONE_SEED:
        return "?¹"
    if verdict == claims.NO_JUDGE:
        return "·"
    return SYMBOLS.get(verdict.split(" (")[0], "—") if not verdict.startswith("not measured") else "—"


def cell(rows: pd.DataFrame) -> str:
    """'✓ / ?': the headline verdicts of own losses and judge, each with [unadjusted] where that differs."""
    parts = []
    for basis in BASES:
        row = rows[rows["basis"] == basis].iloc[0]
        text = verdict_symbol(row["verdict"])
        if row["verdict_unadjusted"] != row["verdict"]:
            text += f" [{verdict_symbol(row['verdict_unadjusted'])}]"
        parts.append(text)
    return " / ".join(parts)


def measured_verdicts(rows: pd.DataFrame, basis: str) -> pd.Series:
    """Condition -> headline verdict of one basis, where the claim was measured (not "not measured", no judge)."""
    mine = rows[rows["basis"] == basis].set_index("condition")["verdict"]
    return mine[~mine.str.startswith(("not measured", claims.NO_JUDGE))]


def same_everywhere(rows: pd.DataFrame) -> str:
    """'yes', or which basis changes its headline verdict between conditions: 'no (own)', 'no (judge)', 'no (both)'."""
    changed = [b for b in BASES if measured_verdicts(rows, b).nunique() > 1]
    return "yes" if not changed else f"no ({'both' if len(changed) == 2 else changed[0]})"


def flip_sentence(verdicts: pd.Series, settings: pd.DataFrame) -> str:
    """'holds at 1000 iterations, fails at 300 iterations' when one setting tells the verdicts apart, else the
    conditions by name ('holds under `base`, fails under `300it`'). ``verdicts``: condition -> headline verdict."""
    order = list(dict.fromkeys(verdicts))
    for key in settings.columns:
        by_value = verdicts.groupby(settings.loc[verdicts.index, key]).nunique()
        if (by_value == 1).all():
            values = {v: sorted({describe_setting(key, settings.loc[c, key]) for c in verdicts.index[verdicts == v]})
                      for v in order}  # fmt: skip
            return ", ".join(f"{v} at {' and '.join(values[v])}" for v in order)
    return ", ".join(f"{v} under {', '.join(f'`{c}`' for c in verdicts.index[verdicts == v])}" for v in order)


def matrix_markdown(frame: pd.DataFrame, settings: pd.DataFrame) -> tuple[str, list[str]]:
    """The claim x condition table of headline verdicts, and a sentence per claim and basis that flips."""
    conditions = list(settings.index)
    header = ["#", "Claim", *(f"`{c}`" for c in conditions), "Same in every condition"]
    body, sentences = [], []
    for number, (claim_id, rows) in enumerate(frame.groupby("id", sort=False), start=1):
        body.append([str(number), rows["claim"].iloc[0]])
        body[-1] += [cell(rows[rows["condition"] == c]) for c in conditions] + [same_everywhere(rows)]
        for basis, words in BASES.items():
            measured = measured_verdicts(rows, basis)
            if measured.nunique() > 1:
                sentences.append(f"- {number}. `{claim_id}`, {words}: {flip_sentence(measured, settings)}.")
    return markdown_table(header, body, numeric=False), sentences


def conditions_markdown(runs: pd.DataFrame, settings: pd.DataFrame) -> str:
    """Each condition: what sets it apart, its runs and seeds."""
    body = []
    for condition in settings.index:
        mine = runs[runs["condition"] == condition]
        seeds = ", ".join(str(s) for s in sorted(mine["seed"].unique()))
        body.append([f"`{condition}`", condition_words(settings, condition), str(len(mine)), seeds])
    return markdown_table(["Condition", "Settings", "Runs", "Seeds"], body, numeric=False)


def conditions_section(runs: pd.DataFrame, params: dict[str, dict[str, str]]) -> tuple[str, pd.DataFrame]:
    """The section's Markdown (conditions, matrix, flips, magnitudes, seeds needed) and its CSV frame."""
    settings = condition_settings(runs, params)
    frame = evaluate_conditions(runs, settings)
    matrix, sentences = matrix_markdown(frame, settings)
    parts = [
        conditions_markdown(runs, settings),
        "",
        matrix,
        "",
        *(["Claims whose verdict changes with the condition:", "", *sentences] if sentences else
          ["No claim changes its verdict between conditions."]),
        "",
        "### Stated magnitudes",
        "",
        evidence.MAGNITUDES_WHY,
        "",
        evidence.magnitudes_markdown(frame),
        "",
        "### Seeds needed",
        "",
        evidence.SEEDS_WHY,
        "",
        evidence.seeds_markdown(frame),
    ]  # fmt: skip
    return "\n".join(parts), frame
