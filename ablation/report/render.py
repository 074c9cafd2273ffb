"""The report's files: ``report.md`` and the same as one self-contained ``report.html`` (images embedded, so MLflow's
artifact viewer shows it whole), with every table as CSV, ``grid.png`` and ``curves.png``.

Everything is read from the store (no clock, no machine state), and rows, columns and figures are in a fixed
order, so the same runs always give the same files.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ablation.report import claims, conditions, figures, hardware, readings, tables
from ablation.report.formats import markdown_table
from ablation.report.html_page import markdown_to_html
from ablation.report.load import Sweep, tuned_runs
from ablation.report.variants import TABLE_TITLES, label, variant_order
from ablation.store.outcome import status_of

RANDOM_WEIGHTS_WARNING = [
    "> **WARNING: random weights.** These runs used seeded random VGG weights (`weights=random`).",
    "> Their numbers test the harness and say **nothing** about the paper or the report.",
    "",
]
TABLES_WHY = (
    "Measured values are the mean ± sample standard deviation over seeds of each run's final losses, "
    "computed by the variant's own network; runtime is the whole run (set-up, iterations, logging). "
    '"Reported" columns quote the report\'s figures (1000 iterations, full size, pretrained MatConvNet VGG '
    "on the author's machine). Change vs original is (variant - original) / original, the report's "
    '"decreased 87.19%" being -87.19%.'
)
JUDGE_WHY = (
    "Each variant's own losses are measured by its own network, so a VGG16 or average-pooling loss and a VGG19 "
    "loss are different functions and their ratio says nothing about which image is better. The judge scores every "
    "output with one fixed network (the original: VGG19, max pooling, ReLU, the same weights and loss weights), so "
    "these numbers are on one scale, and SSIM against the content photo adds a measure that needs no network."
)
CLAIMS_WHY = (
    "Each claim of the report's Section 3.1 (`ablation/reported/claims.csv`), checked three ways: on the report's own "
    "numbers (does its table support its text?), on this sweep's runs with each variant's own losses (as the report "
    "measured), and under the common judge (one scale for all). Measured effects are ratios of geometric means over "
    "seeds with a 95% confidence interval (Welch's t on the logs): a claim holds when the whole interval lies on its "
    "side of 1, fails when it lies on the other, and is inconclusive otherwise or with one seed. Against several "
    "variants, the comparison closest to breaking the claim is shown. Runtimes are compared within one hardware class."
)
OPTIM_WHY = (
    "Upstream optimises with Adam; the original paper used L-BFGS. Both rows use the same loss, so each variant's own "
    "totals compare the optimisers for that network, and the judge's totals compare everything on one scale."
)
TUNED_WHY = (
    "The report keeps loss weights tuned for VGG19 with max pooling, so part of each difference it measures is how "
    "well those weights suit another network. Here each variant's content, style and TV weights were searched "
    "(experiment=tune, Optuna, log scales) to minimise the judge's total, which always uses upstream's weights "
    "(5, 500, 100), at this sweep's iteration budget and image size."
)
RUNTIME_WHY = (
    "A runtime is comparable only to runtimes of the same hardware class (runs record theirs as the tag "
    "`hardware_class`; older runs are `unknown`): a sweep reuses finished runs made elsewhere, and a cluster puts each "
    "job on some node. Each run also times a fixed convolution workload at start (`calibration_gflops`); runtime x "
    "calibration is the run's cost in GFLOP at its machine's speed, a rough normalisation that moves far less "
    "between machines than seconds do. Changes against original are computed within a class only."
)


def _distinct(runs: pd.DataFrame, column: str) -> str:
    values = sorted({str(v) for v in runs[column] if str(v)})
    return ", ".join(values) if values else "unknown"


def header_facts(result: Sweep) -> list[tuple[str, str]]:
    """What the numbers depend on, read from the runs' params and the parent run."""
    runs, parent = result.runs, result.parent
    started = datetime.fromtimestamp(parent.info.start_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    short_sha = runs.assign(weights_sha256=runs["weights_sha256"].str[:12])
    variants = variant_order(list(runs["variant"].unique()))
    return [
        ("Sweep", f"`{result.sweep_id}`, parent run `{parent.info.run_id}` ({parent.info.status})"),
        ("Date", started),
        ("Overrides", f"`{parent.data.tags.get('sweep_overrides', '')}`"),
        ("Variants", ", ".join(f"`{v}` {label(v)}" if label(v) != v else f"`{v}`" for v in variants)),
        ("Device", _distinct(runs, "device")),
        ("Hardware", hardware.hardware_fact(runs)),
        ("Versions", f"torch {_distinct(runs, 'torch')}, torchvision {_distinct(runs, 'torchvision')}"),
        ("Weights", f"{_distinct(runs, 'weights_source')} (SHA-256 {_distinct(short_sha, 'weights_sha256')})"),
        ("Content size (w x h)", _distinct(runs, "content_size")),
        ("Style sizes (w x h)", _distinct(runs, "style_sizes")),
        ("Iterations", _distinct(runs, "iterations")),
        ("Precision", _distinct(runs, "precision")),
        ("Seeds", ", ".join(str(s) for s in sorted(runs["seed"].unique()))),
        (
            "Runs",
            f"{len(runs)} ({(runs.job_status == 'finished').sum()} ran in this sweep, "
            f"{(runs.job_status == 'skipped').sum()} reused from earlier runs with the same fingerprint)",
        ),
    ]


def header(result: Sweep) -> str:
    """Title, the random-weights and mixed-hardware warnings, and the facts table."""
    lines = [f"# Ablation report: sweep `{result.sweep_id}`", ""]
    if set(result.runs["weights_source"]) & {"random"}:
        lines += RANDOM_WEIGHTS_WARNING
    lines += hardware.mixed_hardware_warning(result)
    facts = header_facts(result)
    if conditions.has_conditions(result.runs):
        order = conditions.condition_order(result.runs)
        facts.append(("Conditions", f"{', '.join(f'`{c}`' for c in order)} (tables and claims: `{order[0]}`)"))
    failed = [j for j in result.jobs.values() if (s := status_of(j)) is None or not s.has_run]
    if failed:
        errors = "; ".join(
            f"{j.get('variant')} seed {j.get('seed')}: {j.get('error') or j.get('status')}" for j in failed
        )
        facts.append(("Failed jobs", errors))
    lines += [markdown_table(["", ""], [[k, v] for k, v in facts], numeric=False)]
    return "\n".join(lines)


def section(title: str, why: str, markdown: str, frame: pd.DataFrame, out_dir: Path, csv_name: str) -> list[str]:
    """A ``## title`` section with its explanation and table, its frame written to ``csv_name``."""
    frame.to_csv(out_dir / csv_name, index=False, float_format="%.9g")
    return [f"## {title}", "", *([why, ""] if why else []), markdown, "", f"CSV: [{csv_name}]({csv_name})", ""]


def paper_sections(runs: pd.DataFrame, out_dir: Path) -> list[str]:
    """Tables 1 and 2 of the report, measured beside its figures (a CSV each)."""
    parts = ["## Tables of the report, measured", "", TABLES_WHY, ""]
    for name, title in TABLE_TITLES.items():
        table = tables.paper_table(runs, name)
        if table is None:
            parts += [f"### {title}", "", "No variant of this table in the sweep.", ""]
            continue
        markdown, frame = table
        frame.to_csv(out_dir / f"{name}.csv", index=False, float_format="%.9g")
        parts += [markdown, "", f"CSV: [{name}.csv]({name}.csv)", ""]
    return parts


def optional_sections(result: Sweep, runs: pd.DataFrame, out_dir: Path) -> list[str]:
    """Sections only some sweeps have: optimisers, tuned weights, readings."""
    parts = []
    if result.runs["optim"].nunique() > 1:
        parts += section("Optimisers", OPTIM_WHY, *tables.optimizer_table(result.runs), out_dir, "optimizers.csv")
    experiment_id = result.parent.info.experiment_id
    trials = tuned_runs(experiment_id, str(runs["iterations"].iloc[0]), str(runs["content_size"].iloc[0]))
    if len(trials):
        tuned = tables.tuned_table(trials, runs)
        parts += section("Each variant at its best loss weights", TUNED_WHY, *tuned, out_dir, "tuned.csv")
    if readings.has_readings(runs):
        parts += section(
            "Readings of the ambiguous variants",
            readings.WHY,
            *readings.readings_section(runs),
            out_dir,
            "readings.csv",
        )
    return parts


def reference_runs(result: Sweep) -> pd.DataFrame:
    """The runs the single-setting sections read: with conditions, the first condition's (the reference)."""
    if not conditions.has_conditions(result.runs):
        return result.runs
    return result.runs[result.runs["condition"] == conditions.condition_order(result.runs)[0]]


def conditions_part(result: Sweep, runs: pd.DataFrame, out_dir: Path) -> list[str]:
    """The section "Where do the claims hold?" for a sweep with conditions (its optimiser's runs, as above)."""
    if not conditions.has_conditions(result.runs):
        return []
    reference = conditions.condition_order(result.runs)[0]
    why = f"{conditions.WHY} The sections above and below are of the first condition, `{reference}`."
    section_text, frame = conditions.conditions_section(runs, result.params)
    return section("Where do the claims hold?", why, section_text, frame, out_dir, "conditions.csv")


def report_markdown(result: Sweep, out_dir: Path) -> str:
    """Every section of the report, writing its CSVs and figures into ``out_dir`` on the way."""
    # the report's tables, claims and judge are about upstream's optimiser; other optimisers get their own table
    adam = result.runs[result.runs["optim"] == "adam"] if result.runs["optim"].nunique() > 1 else result.runs
    runs = adam[adam["run_id"].isin(reference_runs(result)["run_id"])]
    parts = [header(result), "", *paper_sections(runs, out_dir)]
    judged = tables.judge_table(runs)
    parts += section("One judge for every variant", JUDGE_WHY, *judged, out_dir, "judge.csv")
    verdicts = claims.evaluate_claims(runs)
    parts += section(
        "Does the report hold?", CLAIMS_WHY, claims.claims_markdown(verdicts), verdicts, out_dir, "claims.csv"
    )
    parts += conditions_part(result, adam, out_dir)
    parts += section("Runtimes by hardware class", RUNTIME_WHY, *hardware.runtime_table(runs), out_dir, "runtimes.csv")
    parts += optional_sections(result, runs, out_dir)
    figures.image_grid(runs, out_dir / "grid.png")
    figures.loss_curves(runs, out_dir / "curves.png")
    parts += ["## Images", "", "![content, style and each variant's output](grid.png)", ""]
    parts += ["## Loss curves", "", "![total loss against iteration, log scale](curves.png)", ""]
    parts += section("Runs", "", tables.runs_table(adam), adam, out_dir, "runs.csv")  # every condition's
    return "\n".join(parts)


def write_report(result: Sweep, out_dir: Path) -> Path:
    """All files of the report into ``out_dir``; returns the Markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = report_markdown(result, out_dir)
    path = out_dir / "report.md"
    path.write_text(text)
    (out_dir / "report.html").write_text(markdown_to_html(text, out_dir, f"Ablation report: {result.sweep_id}"))
    return path
