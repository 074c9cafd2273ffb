"""Which reading of an ambiguous variant did the report run? Loss patterns against ``original``, compared
(see :data:`WHY`): a readings sweep (``experiment=readings``) runs ``original`` and each reading as a variant file,
and this section needs nothing else, so any variant a sweep holds takes part."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablation.paths import REPORTED_DIR
from ablation.report.formats import markdown_table
from ablation.report.quantities import LOSSES
from ablation.report.variants import label, named, reported_table, reported_variants, variant_order

WHY = (
    '"Tanh with the final layer" can be read several ways (tanh at relu5_1, with average pooling left on, at the last '
    "ReLU, after every conv; the same for VGG16), and each reading is a variant file. A variant's pattern is its four "
    "final losses divided by `original`'s (means over seeds, each by the variant's own network, as the report "
    "measured). The distance between two patterns is the root mean square of the differences of their log-ratios: "
    "0 is the same pattern, 0.1 about 10% apart per loss. For each of the report's ambiguous variants, its readings "
    "(`ablation/reported/readings.csv`, all of its network) are ranked, and the closest is named only when it is "
    "closer than the next by more than the seeds' spread of the two distances (each seed's pattern against "
    "`original`'s means; the spread of the gap is the root sum of squares of their standard deviations); else no "
    "reading stands out. With real weights a named reading is the likeliest; with random weights the section only "
    "shows the machinery. The other variants' distances stand as context, unranked."
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


def readings_of() -> dict[str, list[str]]:
    """The report's ambiguous variants -> the variant files that read each (its own first), of its network."""
    table = pd.read_csv(REPORTED_DIR / "readings.csv")
    return {of: list(group["reading"]) for of, group in table.groupby("of", sort=False)}


def seed_spreads(runs: pd.DataFrame, reported: pd.DataFrame) -> pd.DataFrame:
    """Sample std over seeds (NaN for one seed) of each measured variant's distance to each reported pattern, a
    seed's pattern being its losses over ``original``'s means (rows: variants but original; columns: the report's)."""
    columns = [q.own for q in LOSSES]
    original = runs.loc[runs["variant"] == "original", columns].mean().to_numpy(float)
    others = runs[runs["variant"] != "original"]
    per_seed = pd.DataFrame(others[columns].to_numpy(float) / original, columns=[q.name for q in LOSSES])
    table = distances(per_seed, reported)
    table.index = others["variant"].to_numpy()
    return table.groupby(level=0).std(ddof=1)


def standout(readings: list[str], table: pd.DataFrame, spread: pd.DataFrame, reported: str) -> tuple[str | None, str]:
    """The reading of ``reported`` that stands out (or None) and the sentence saying so: the closest of the measured
    readings when its distance is smaller than the next one's by more than the spread of that gap."""
    ranked = sorted((v for v in readings if v in table.index), key=lambda v: table.loc[v, reported])
    shown = ", ".join(f"{named(v)} {table.loc[v, reported]:.3f} ± {spread.loc[v, reported]:.3f}" for v in ranked)
    if len(ranked) < 2:
        ran = f"only {shown} ran" if ranked else "none ran"
        return None, f"no reading stands out: {ran}, nothing to set it against"
    best, runner_up = ranked[:2]
    gap = table.loc[runner_up, reported] - table.loc[best, reported]
    noise = float(np.hypot(spread.loc[best, reported], spread.loc[runner_up, reported]))
    if not np.isfinite(noise):
        return None, f"no reading stands out (one seed: no spread to weigh the gap of {gap:.3f} against): {shown}"
    if gap <= noise:
        return None, f"no reading stands out (gap {gap:.3f}, within the seeds' spread {noise:.3f}): {shown}"
    return best, f"{named(best)}, closer than the next by {gap:.3f} (seeds' spread {noise:.3f}): {shown}"


def readings_section(runs: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The patterns (measured and reported), the distances, and the closest reading per variant of the report."""
    measured, reported = measured_patterns(runs), reported_patterns()
    table = distances(measured, reported)
    ratio_rows = [[named(v), *(f"{measured.loc[v, q.name]:.3g}" for q in LOSSES)] for v in measured.index]
    ratio_rows += [
        [f"{label(v)} (reported)", *(f"{reported.loc[v, q.name]:.3g}" for q in LOSSES)] for v in reported.index
    ]
    spread = seed_spreads(runs, reported)
    found = {r: standout(readings, table, spread, r) for r, readings in readings_of().items()}
    distance_rows = [
        [named(v), *(f"**{table.loc[v, r]:.3f}**" if found.get(r, [None])[0] == v else f"{table.loc[v, r]:.3f}"
                     for r in table)]
        for v in table.index
    ]  # fmt: skip
    verdicts = [f"- the report's {named(r)}: {sentence}" for r, (_, sentence) in found.items()]
    parts = [
        "Loss / original's loss (own networks, mean over seeds):",
        "",
        markdown_table(["Variant", *(q.name for q in LOSSES)], ratio_rows),
        "",
        "Distance to each of the report's patterns (RMS of log-ratio differences; bold: a reading of the report's "
        "ambiguous variant that stands out among its readings):",
        "",
        markdown_table(["Measured", *(label(r) for r in table.columns)], distance_rows),
        "",
        *verdicts,
    ]
    frame = measured.add_prefix("ratio_").join(table.add_prefix("distance_"))
    frame = frame.join(spread[list(found)].add_prefix("distance_sd_")).rename_axis("variant").reset_index()
    return "\n".join(parts), frame
