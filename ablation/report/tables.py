"""The report's Tables 1 and 2 measured beside its own figures, the judge's table, optimisers, tuned weights, runs.

Each table comes as Markdown (for ``report.md``) and as a tidy frame (its CSV): the frame holds the numbers, the
Markdown only formats them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablation.report.formats import (
    finite,
    format_cell,
    format_change,
    format_number,
    format_runtime,
    markdown_table,
    percent_change,
)
from ablation.report.load import HARDWARE_TAG, TUNED_PARAMS
from ablation.report.quantities import LOSSES, RUNTIME, SSIM, TOTAL_LOSS, Quantity
from ablation.report.variants import TABLE_TITLES, label, named, reported_table, table_variants, variant_order

#: The rows of Tables 1 and 2: measured (the runs' own column) beside reported.
PAPER_ROWS: tuple[Quantity, ...] = (RUNTIME, *LOSSES)
#: (row label, column) of the judge's table.
JUDGE_ROWS = [*((f"Judge {q.label}", q.judge) for q in LOSSES), (SSIM.label, SSIM.judge)]
MIXED_RUNTIME_MARK = "†"
MIXED_RUNTIME_NOTE = (
    f"{MIXED_RUNTIME_MARK} These runs ran on more than one hardware class: the runtime change compares different "
    "machines (see Runtimes by hardware class)."
)


def summary_stats(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """mean, sample std (ddof=1; NaN for one seed) and count per variant."""
    return runs.groupby("variant")[column].agg(["mean", "std", "count"])


def paper_frame(runs: pd.DataFrame, name: str, variants: list[str]) -> pd.DataFrame:
    """The tidy numbers of the report's table ``name``: one record per (row, variant), measured beside reported."""
    reported = reported_table(name)
    records = []
    for quantity in PAPER_ROWS:
        stats = summary_stats(runs, quantity.own)
        original = stats.loc["original", "mean"] if "original" in stats.index else float("nan")
        for variant in variants:
            mean, std, count = stats.loc[variant, ["mean", "std", "count"]]
            paper = float(reported.loc[variant, quantity.reported]) if variant in reported.index else float("nan")
            records.append(
                {
                    "table": name,
                    "row": quantity.title,
                    "variant": variant,
                    "measured_mean": float(mean),
                    "measured_std": float(std),
                    "n_seeds": int(count),
                    "reported": paper,
                    "change_vs_original_pct": percent_change(float(mean), float(original)),
                    "reported_change_vs_original_pct": percent_change(
                        paper, float(reported.loc["original", quantity.reported])
                    ),
                }
            )
    return pd.DataFrame(records)


def paper_markdown(frame: pd.DataFrame, title: str, mixed_hardware: bool) -> str:
    """The table as the report lays it out (measured beside reported), then the % change against original."""
    variants = list(dict.fromkeys(frame["variant"]))
    cell = {(r.row, r.variant): r for r in frame.itertuples()}
    header = [""] + [h for v in variants for h in (label(v), f"{label(v)} (reported)")]
    body = []
    for quantity in PAPER_ROWS:
        row_label, runtime = quantity.title, quantity is RUNTIME
        line = [row_label]
        for v in variants:
            r = cell[(row_label, v)]
            paper = (
                "—" if not finite(r.reported) else format_runtime(r.reported) if runtime else format_number(r.reported)
            )
            line += [format_cell(r.measured_mean, r.measured_std, runtime), paper]
        body.append(line)
    parts = [f"### {title}", "", markdown_table(header, body)]
    others = [v for v in variants if v != "original"]
    if others:
        mark = {RUNTIME.title: MIXED_RUNTIME_MARK} if mixed_hardware else {}
        change_header = ["Change vs original"] + [h for v in others for h in (label(v), f"{label(v)} (reported)")]
        change_body = [
            [row_label + mark.get(row_label, "")]
            + [
                text
                for v in others
                for text in (
                    format_change(cell[(row_label, v)].change_vs_original_pct),
                    format_change(cell[(row_label, v)].reported_change_vs_original_pct),
                )
            ]
            for row_label in (q.title for q in PAPER_ROWS)
        ]
        parts += ["", markdown_table(change_header, change_body)]
    if mixed_hardware and others:
        parts += ["", MIXED_RUNTIME_NOTE]
    return "\n".join(parts)


def paper_table(runs: pd.DataFrame, name: str) -> tuple[str, pd.DataFrame] | None:
    """The report's table ``name`` (measured beside reported) and its % change against original, as
    Markdown and as a tidy CSV frame; None when the sweep has no variant of that table."""
    variants = [v for v in table_variants(name) if v in set(runs["variant"])]
    if not set(variants) - {"original"}:
        return None
    frame = paper_frame(runs, name, variants)
    mixed = runs.loc[runs["variant"].isin(variants), HARDWARE_TAG].nunique() > 1
    return paper_markdown(frame, TABLE_TITLES[name], mixed), frame


def judge_table(runs: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Every variant scored by the one judge network, with the judge total's change against original."""
    variants = variant_order(list(runs["variant"].unique()))
    records = []
    for row_label, column in JUDGE_ROWS:
        stats = summary_stats(runs, column)
        original = stats.loc["original", "mean"] if "original" in stats.index else float("nan")
        for v in variants:
            mean, std, count = stats.loc[v, ["mean", "std", "count"]]
            records.append(
                {
                    "row": row_label,
                    "variant": v,
                    "measured_mean": float(mean),
                    "measured_std": float(std),
                    "n_seeds": int(count),
                    "change_vs_original_pct": percent_change(float(mean), float(original)),
                }
            )
    frame = pd.DataFrame(records)
    cell = {(r["row"], r["variant"]): r for r in records}
    body = [
        [row_label]
        + [format_cell(cell[(row_label, v)]["measured_mean"], cell[(row_label, v)]["measured_std"]) for v in variants]
        for row_label, _ in JUDGE_ROWS
    ]
    body.append(
        ["Judge total, change vs original"]
        + [format_change(cell[(f"Judge {TOTAL_LOSS.label}", v)]["change_vs_original_pct"]) for v in variants]
    )
    return markdown_table([""] + [label(v) for v in variants], body), frame


def optimizer_table(runs: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Each variant under each optimiser: its own final total and the judge's total (mean ± std over seeds)."""
    variants = variant_order(list(runs["variant"].unique()))
    optimisers = sorted(runs["optim"].unique(), key=lambda o: (o != "adam", o))
    columns = (TOTAL_LOSS.own, TOTAL_LOSS.judge, RUNTIME.own)
    records = [
        {
            "variant": variant,
            "optim": optimiser,
            **{f"{c}_mean": float(group[c].mean()) for c in columns},
            **{f"{c}_std": float(group[c].std()) for c in columns},
            "n_seeds": len(group),
        }
        for (variant, optimiser), group in runs.groupby(["variant", "optim"])
    ]
    cell = {(r["variant"], r["optim"]): r for r in records}
    header = ["Variant"] + [f"{h} ({o})" for o in optimisers for h in ("Own total", "Judge total", "Runtime")]
    body = []
    for v in variants:
        line = [label(v)]
        for o in optimisers:
            r = cell.get((v, o))
            line += (
                ["—"] * len(columns)
                if r is None
                else [format_cell(r[f"{c}_mean"], r[f"{c}_std"], runtime=c == RUNTIME.own) for c in columns]
            )
        body.append(line)
    return markdown_table(header, body), pd.DataFrame(records)


def tuned_frame(trials: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Each variant's best tuning trial beside the same variant at upstream's weights (this sweep's mean)."""
    default = summary_stats(runs, "judge_total")
    records = []
    for variant in variant_order(list(trials["variant"].unique())):
        group = trials[trials["variant"] == variant]
        best = group.sort_values(["judge_total", "run_id"]).iloc[0]
        at_default = float(default.loc[variant, "mean"]) if variant in default.index else float("nan")
        records.append(
            {
                "variant": variant,
                "trials": len(group),
                **{c: float(best[c]) for c in TUNED_PARAMS.values()},
                "judge_total_tuned": float(best["judge_total"]),
                "judge_total_default_weights": at_default,
                "change_pct": percent_change(float(best["judge_total"]), at_default),
                "run_id": best["run_id"],
            }
        )
    return pd.DataFrame(records)


def tuned_table(trials: pd.DataFrame, runs: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Each variant at its best tuned loss weights beside the same variant at upstream's weights (this sweep)."""
    frame = tuned_frame(trials, runs)
    header = ["Variant", "Trials", "Content w.", "Style w.", "TV w.", "Judge total, tuned", "At default weights"]
    body = [
        [
            label(r["variant"]),
            str(r["trials"]),
            *(format_number(r[c]) for c in TUNED_PARAMS.values()),
            format_number(r["judge_total_tuned"]),
            format_number(r["judge_total_default_weights"]) if np.isfinite(r["judge_total_default_weights"]) else "—",
            format_change(r["change_pct"]),
        ]
        for r in frame.to_dict("records")
    ]
    return markdown_table([*header, "Change"], body), frame


def runs_table(runs: pd.DataFrame) -> str:
    """One line per run: which variant and seed (and condition, in a sweep with conditions), where it came from, its
    totals, runtime and hardware class."""
    conditioned = "condition" in runs and bool(runs["condition"].astype(str).ne("").any())
    body = [
        [
            named(r.variant),
            *([f"`{r.condition}`"] if conditioned else []),
            str(r.seed),
            f"`{r.run_id}`",
            r.job_status,
            format_number(r.final_total),
            format_number(r.judge_total),
            format_runtime(r.runtime_s),
            r.hardware_class,
        ]
        for r in runs.itertuples()
    ]
    header = ["Variant", *(["Condition"] if conditioned else []), "Seed", "MLflow run id", "In this sweep"]
    return markdown_table([*header, "Final total", "Judge total", "Runtime", "Hardware"], body)
