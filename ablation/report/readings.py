"""Which reading of an ambiguous variant did the report run? Loss patterns against ``original``, compared
(see :data:`WHY`): a readings sweep (``experiment=readings``) runs ``original`` and each reading as a variant file,
and this section needs nothing else, so any variant a sweep holds takes part."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablation.report.formats import markdown_table
from ablation.report.quantities import LOSSES
from ablation.report.variants import label, named, reported_table, reported_variants, variant_order

WHY = (
    '"Tanh with the final layer" can be read several ways (tanh at relu5_1, with average pooling left on, at the last '
    "ReLU, after every conv; the same for VGG16), and each reading is a variant file. A variant's pattern is its four "
    "final losses divided by `original`'s (means over seeds, each by the variant's own network, as the report "
    "measured). The distance between two patterns is the root mean square of the differences of their log-ratios: "
    "0 is the same pattern, 0.1 about 10% apart per loss. For each variant of the report, the measured variant whose "
    "pattern lies closest to the reported one is named: with real weights that is the likeliest reading; with random "
    "weights the section only shows the machinery."
)


def has_readings(runs: pd.DataFrame) -> bool:
    """A sweep with ``original`` and a variant the report never ran (a reading) gets the section."""
    variants = set(runs["variant"])
    return "original" in variants and bool(variants - set(reported_variants()))


def measured_patterns(runs: pd.DataFrame) -> pd.DataFrame:
    """Per measured variant but original: each loss's mean over seeds / original's mean (index: variant)."""
    means = runs.groupby("variant")[[q.own for q in LOSSES]].mean()
    ratios = means.drop(index="original") / means.loc["original"]
    ratios.columns = [q.name for q in LOSSES]
    return ratios.loc[variant_order(list(ratios.index))]


def reported_patterns() -> pd.DataFrame:
    """Per variant of the report but original: its reported losses / its reported original's (index: variant)."""
    rows = {}
    for name in ("table1", "table2"):
        table = reported_table(name)
        for variant in table.index.drop("original"):
            rows[variant] = {q.name: table.loc[variant, q.reported] / table.loc["original", q.reported] for q in LOSSES}
    return pd.DataFrame.from_dict(rows, orient="index")


def distances(measured: pd.DataFrame, reported: pd.DataFrame) -> pd.DataFrame:
    """RMS of log-ratio differences: rows are measured variants, columns the report's variants."""
    log_m, log_r = np.log(measured.to_numpy(float)), np.log(reported.to_numpy(float))
    rms = np.sqrt(((log_m[:, None, :] - log_r[None, :, :]) ** 2).mean(axis=2))
    return pd.DataFrame(rms, index=measured.index, columns=reported.index)


def architectures(runs: pd.DataFrame) -> dict[str, str]:
    """Variant -> its network (param ``variant.arch``), for the variants whose runs say it."""
    known = runs[runs["arch"].astype(str) != ""] if "arch" in runs else runs.iloc[:0]
    return dict(zip(known["variant"], known["arch"], strict=True))


def closest(table: pd.DataFrame, arch: dict[str, str]) -> dict[str, str]:
    """Report's variant -> the measured variant nearest its pattern among those of its architecture (a reading of
    a VGG19 variant is a VGG19 network) when the sweep ran it and says so, else among all; ties: the table's order."""
    found = {}
    for reported in table.columns:
        same = [v for v in table.index if reported not in arch or arch.get(v) == arch[reported]]
        found[reported] = table.loc[same or list(table.index), reported].idxmin()
    return found


def readings_section(runs: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The patterns (measured and reported), the distances, and the closest reading per variant of the report."""
    measured, reported = measured_patterns(runs), reported_patterns()
    table = distances(measured, reported)
    ratio_rows = [[named(v), *(f"{measured.loc[v, q.name]:.3g}" for q in LOSSES)] for v in measured.index]
    ratio_rows += [
        [f"{label(v)} (reported)", *(f"{reported.loc[v, q.name]:.3g}" for q in LOSSES)] for v in reported.index
    ]
    nearest = closest(table, architectures(runs))
    distance_rows = [
        [named(v), *(f"**{table.loc[v, r]:.3f}**" if nearest[r] == v else f"{table.loc[v, r]:.3f}" for r in table)]
        for v in table.index
    ]
    verdicts = [f"- closest to the report's {named(r)}: {named(m)} ({table.loc[m, r]:.3f})" for r, m in nearest.items()]
    parts = [
        "Loss / original's loss (own networks, mean over seeds):",
        "",
        markdown_table(["Variant", *(q.name for q in LOSSES)], ratio_rows),
        "",
        "Distance to each of the report's patterns (RMS of log-ratio differences; bold: the closest of the same "
        "network, VGG19 or VGG16, when the sweep ran the report's variant):",
        "",
        markdown_table(["Measured", *(label(r) for r in table.columns)], distance_rows),
        "",
        *verdicts,
    ]
    frame = measured.add_prefix("ratio_").join(table.add_prefix("distance_")).rename_axis("variant").reset_index()
    return "\n".join(parts), frame
