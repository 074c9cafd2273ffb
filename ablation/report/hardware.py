"""Runtimes that say which machine they come from.

A sweep reuses finished runs by fingerprint, which ignores the machine, and a cluster sweep lands each job on some
node: a runtime is only comparable to runtimes of the same ``hardware_class``. Each run also times a fixed
convolution workload at start (``calibration_gflops``, GFLOP/s); ``runtime_s * calibration_gflops`` is the run's
cost in GFLOP at that machine's speed, which moves far less between machines than seconds do (a rough
normalisation: it assumes the run scales like the calibration workload).
"""

from __future__ import annotations

import pandas as pd

from ablation.report.formats import format_cell, format_change, markdown_table, percent_change
from ablation.report.load import HARDWARE_TAG, Sweep
from ablation.report.variants import label, variant_order
from ablation.store.outcome import Outcome


def home_class(result: Sweep) -> str:
    """The sweep's own hardware: the parent run's tag, else the most common class among the runs this sweep ran
    (ties: alphabetical), else among all its runs."""
    tagged = result.parent.data.tags.get(HARDWARE_TAG)
    if tagged:
        return tagged
    runs = result.runs
    ran = runs[runs["job_status"] == Outcome.FINISHED]
    counts = (ran if len(ran) else runs)[HARDWARE_TAG].value_counts()
    return sorted(counts.index, key=lambda c: (-counts[c], c))[0]


def hardware_fact(runs: pd.DataFrame) -> str:
    """'cpu:X (4 runs), cuda:Y (2 runs)' for the header."""
    counts = runs[HARDWARE_TAG].value_counts()
    return ", ".join(f"{c} ({counts[c]} {'run' if counts[c] == 1 else 'runs'})" for c in sorted(counts.index))


def mixed_hardware_warning(result: Sweep) -> list[str]:
    """A warning for the header when some of the sweep's runs (reused ones, as a rule) ran on another class."""
    home = home_class(result)
    foreign = result.runs[result.runs[HARDWARE_TAG] != home]
    if foreign.empty:
        return []
    classes = ", ".join(sorted(set(foreign[HARDWARE_TAG])))
    return [
        f"> **Mixed hardware.** {len(foreign)} of this sweep's {len(result.runs)} runs ran on another hardware class "
        f"({classes}) than the sweep's own (`{home}`), most likely reused from an earlier sweep with the same "
        "fingerprint. Runtimes are compared only within one class; see Runtimes by hardware class.",
        "",
    ]


def runtime_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Per hardware class and variant: runtime mean/std, calibration speed, runtime x speed, change vs original
    within the class (NaN when the class has no original run)."""
    work = runs.assign(work_gflop=runs["runtime_s"] * runs["calibration_gflops"])
    records = []
    for hardware, group in work.groupby(HARDWARE_TAG, sort=True):
        stats = group.groupby("variant")[["runtime_s", "work_gflop", "calibration_gflops"]].agg(["mean", "std"])
        original = stats.loc["original", ("runtime_s", "mean")] if "original" in stats.index else float("nan")
        for variant in variant_order(list(group["variant"].unique())):
            row = stats.loc[variant]
            records.append(
                {
                    HARDWARE_TAG: hardware,
                    "variant": variant,
                    "n_runs": int((group["variant"] == variant).sum()),
                    "runtime_s_mean": float(row[("runtime_s", "mean")]),
                    "runtime_s_std": float(row[("runtime_s", "std")]),
                    "calibration_gflops_mean": float(row[("calibration_gflops", "mean")]),
                    "work_gflop_mean": float(row[("work_gflop", "mean")]),
                    "work_gflop_std": float(row[("work_gflop", "std")]),
                    "runtime_change_vs_original_pct": percent_change(float(row[("runtime_s", "mean")]), original),
                }
            )
    return pd.DataFrame(records)


def runtime_table(runs: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Runtimes grouped by hardware class, raw and normalised; the change against original only within a class."""
    frame = runtime_frame(runs)
    header = ["Hardware class", "Variant", "Runs", "Runtime", "Calibration (GFLOP/s)", "Runtime x calibration (GFLOP)"]
    body = [
        [
            f"`{r[HARDWARE_TAG]}`",
            label(r["variant"]),
            str(r["n_runs"]),
            format_cell(r["runtime_s_mean"], r["runtime_s_std"], runtime=True),
            format_cell(r["calibration_gflops_mean"], None),
            format_cell(r["work_gflop_mean"], r["work_gflop_std"]),
            format_change(r["runtime_change_vs_original_pct"]),
        ]
        for r in frame.to_dict("records")
    ]
    return markdown_table([*header, "Runtime vs original, same class"], body), frame
