"""MLflow runs of one sweep -> pandas -> the report's tables, a judge table, figures -> Markdown and CSV.

    python -m ablation.report                    # the latest sweep
    python -m ablation.report --sweep table1-20250101-120000-1a2b3c   # a sweep id (or its parent run id)

Writes ``reports/<sweep id>/``: ``report.md``, ``table1.csv``, ``table2.csv``, ``judge.csv``, ``runs.csv``,
``grid.png`` and ``curves.png``. Everything is read from the store (no clock, no machine state), and rows,
columns and figures are in a fixed order, so the same runs always give the same files.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from PIL import Image

from ablation import sweep, tracking
from ablation.engine.errors import UserError
from ablation.paths import REPORTED_DIR, REPORTS_DIR

#: Variant -> the report's column label, in the report's order.
VARIANT_LABELS = {
    "original": "Original model",
    "avg_pool": "Average pooling",
    "leaky_relu": "Leaky ReLU",
    "tanh_final": "Tanh with the final layer",
    "vgg16": "VGG16",
    "vgg16_tanh": "VGG16 + tanh",
}
#: table name -> (title, variants in the report's column order)
PAPER_TABLES = {
    "table1": ("Table 1: Performance with different modified models", list(VARIANT_LABELS)[:5]),
    "table2": ("Table 2: Original model against VGG16 + tanh", ["original", "vgg16_tanh"]),
}
#: (row label, measured column in the runs frame, column in the reported CSV)
PAPER_ROWS = [
    ("Runtime", "runtime_s", "runtime_s"),
    ("Content loss", "final_content", "content_loss"),
    ("Style loss", "final_style", "style_loss"),
    ("TV loss", "final_tv", "tv_loss"),
    ("Total loss", "final_total", "total_loss"),
]
JUDGE_ROWS = [
    ("Judge content loss", "judge_content"),
    ("Judge style loss", "judge_style"),
    ("Judge TV loss", "judge_tv"),
    ("Judge total loss", "judge_total"),
    ("SSIM(output, content)", "ssim_content"),
]
METRICS = ["final_content", "final_style", "final_tv", "final_total", "total_s", "loop_s", "iter_ms", "peak_mem_mb"]
METRICS += [name for _, name in JUDGE_ROWS]
PARAMS = {
    "device": "device",
    "torch_version": "torch",
    "torchvision_version": "torchvision",
    "weights_source": "weights_source",
    "weights_sha256": "weights_sha256",
    "content_size_wh": "content_size",
    "style_sizes_wh": "style_sizes",
    "run.iterations": "iterations",
    "run.precision": "precision",
    "optim.name": "optim",
}
#: Loss weights a tuned run is described by (param -> column).
TUNED_PARAMS = {
    "loss.content_weight": "content_weight",
    "loss.style_weight": "style_weight",
    "loss.tv_weight": "tv_weight",
}


class ReportError(UserError):
    """No sweep to report on, or a sweep without usable runs."""


def variant_order(variants: list[str]) -> list[str]:
    """The report's order first, then any other variant alphabetically."""
    known = [v for v in VARIANT_LABELS if v in variants]
    return known + sorted(set(variants) - set(known))


def label(variant: str) -> str:
    return VARIANT_LABELS.get(variant, variant)


def format_runtime(seconds: float) -> str:
    """The report's runtime format: 2279 -> '37 min 59 sec' (rounded to the second)."""
    total = int(round(seconds))
    return f"{total // 60} min {total % 60} sec"


def format_number(value: float) -> str:
    """Six significant digits, as the report prints losses (864545, 1.65628e+06)."""
    return f"{value:.6g}"


def format_cell(mean: float, std: float, runtime: bool = False) -> str:
    """'mean ± std' (sample std over seeds); the mean alone when there is one seed; '—' when missing."""
    if mean is None or not np.isfinite(mean):
        return "—"
    text = format_runtime(mean) if runtime else format_number(mean)
    if std is not None and np.isfinite(std):
        text += f" ± {round(std):d} sec" if runtime else f" ± {std:.3g}"
    return text


def format_change(change: float) -> str:
    return "—" if change is None or not np.isfinite(change) else f"{change:+.2f}%"


def percent_change(value: float, original: float) -> float:
    """(value - original) / original * 100: the report's 'decreased 87.1946%' is -87.1946 here."""
    return float("nan") if not original else 100.0 * (value - original) / original


def reported_table(name: str) -> pd.DataFrame:
    """The report's own figures for ``table1`` or ``table2``, indexed by variant."""
    return pd.read_csv(REPORTED_DIR / f"{name}.csv").set_index("variant")


@dataclass
class Sweep:
    """One sweep: its parent run, its job records and one row per run it produced or reused."""

    sweep_id: str
    parent: Run
    jobs: dict[int, dict]
    runs: pd.DataFrame  # variant, seed, run_id, job_status, metrics, params


def find_parent(client: MlflowClient, experiment_id: str, wanted: str | None) -> Run:
    """The parent run of sweep ``wanted`` (sweep id or parent run id), or the newest sweep's."""
    parents = client.search_runs(
        [experiment_id], filter_string="tags.sweep_role = 'parent'", order_by=["attributes.start_time DESC"]
    )
    if not parents:
        raise ReportError(f"no sweep in the store {tracking.tracking_uri()}: run one with make sweep")
    if wanted is None:
        return parents[0]
    for run in parents:
        if wanted in (run.data.tags.get("sweep_id"), run.info.run_id):
            return run
    known = ", ".join(r.data.tags.get("sweep_id", r.info.run_id) for r in parents[:5])
    raise ReportError(f"--sweep {wanted!r} is not a sweep in {tracking.tracking_uri()}: the latest are {known}")


def load_sweep(client: MlflowClient, parent: Run) -> Sweep:
    """The runs the sweep's jobs ran or reused (skipped jobs point to the earlier run with their fingerprint)."""
    jobs = sweep.read_jobs(client, parent.info.run_id)
    rows = []
    for num, job in sorted(jobs.items()):
        if job.get("status") not in ("finished", "skipped") or not job.get("run_id"):
            continue
        run = client.get_run(job["run_id"])
        row = {
            "job": num,
            "variant": run.data.tags.get("variant", job.get("variant")),
            "seed": int(run.data.tags.get("seed", job.get("seed"))),
            "run_id": run.info.run_id,
            "job_status": job["status"],
            "run_status": run.info.status,
            **{m: run.data.metrics.get(m, float("nan")) for m in METRICS},
            **{name: run.data.params.get(key, "") for key, name in PARAMS.items()},
        }
        row["runtime_s"] = row["total_s"]
        rows.append(row)
    sweep_id = parent.data.tags.get("sweep_id", parent.info.run_id)
    if not rows:
        raise ReportError(f"sweep {sweep_id} has no finished runs yet: let it finish, or re-run it to fill the gaps")
    frame = pd.DataFrame(rows)
    order = {v: i for i, v in enumerate(variant_order(list(frame["variant"].unique())))}
    frame = frame.sort_values(["variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c)
    return Sweep(sweep_id, parent, jobs, frame.reset_index(drop=True))


def summary_stats(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """mean, sample std (ddof=1; NaN for one seed) and count per variant."""
    return runs.groupby("variant")[column].agg(["mean", "std", "count"])


def markdown_table(header: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right-aligned when ``numeric``."""
    rule = ["---"] + ["---:" if numeric else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def paper_table(runs: pd.DataFrame, name: str) -> tuple[str, pd.DataFrame] | None:
    """The report's table ``name`` (measured beside reported) and its % change against original, as
    Markdown and as a tidy CSV frame; None when the sweep has no variant of that table."""
    title, wanted = PAPER_TABLES[name]
    variants = [v for v in wanted if v in set(runs["variant"])]
    if not set(variants) - {"original"}:
        return None
    reported = reported_table(name)
    stats = {column: summary_stats(runs, column) for _, column, _ in PAPER_ROWS}
    records = []
    for row_label, column, reported_column in PAPER_ROWS:
        for variant in variants:
            mean, std, count = stats[column].loc[variant, ["mean", "std", "count"]]
            paper = float(reported.loc[variant, reported_column]) if variant in reported.index else float("nan")
            original = stats[column].loc["original", "mean"] if "original" in stats[column].index else float("nan")
            paper_original = float(reported.loc["original", reported_column])
            records.append(
                {
                    "table": name,
                    "row": row_label,
                    "variant": variant,
                    "measured_mean": float(mean),
                    "measured_std": float(std),
                    "n_seeds": int(count),
                    "reported": paper,
                    "change_vs_original_pct": percent_change(float(mean), float(original)),
                    "reported_change_vs_original_pct": percent_change(paper, paper_original),
                }
            )
    frame = pd.DataFrame(records)
    cell = {(r["row"], r["variant"]): r for r in records}
    header = [""] + [h for v in variants for h in (label(v), f"{label(v)} (reported)")]
    body = []
    for row_label, *_ in PAPER_ROWS:
        runtime = row_label == "Runtime"
        line = [row_label]
        for v in variants:
            r = cell[(row_label, v)]
            paper = r["reported"]
            paper_text = "—" if not np.isfinite(paper) else (format_runtime(paper) if runtime else format_number(paper))
            line += [format_cell(r["measured_mean"], r["measured_std"], runtime), paper_text]
        body.append(line)
    others = [v for v in variants if v != "original"]
    parts = [f"### {title}", "", markdown_table(header, body)]
    if others:
        change_header = ["Change vs original"] + [h for v in others for h in (label(v), f"{label(v)} (reported)")]
        change_body = [
            [row_label]
            + [
                text
                for v in others
                for text in (
                    format_change(cell[(row_label, v)]["change_vs_original_pct"]),
                    format_change(cell[(row_label, v)]["reported_change_vs_original_pct"]),
                )
            ]
            for row_label, *_ in PAPER_ROWS
        ]
        parts += ["", markdown_table(change_header, change_body)]
    return "\n".join(parts), frame


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
        + [format_change(cell[("Judge total loss", v)]["change_vs_original_pct"]) for v in variants]
    )
    return markdown_table([""] + [label(v) for v in variants], body), frame


def optimizer_table(runs: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Each variant under each optimiser: its own final total and the judge's total (mean ± std over seeds)."""
    variants = variant_order(list(runs["variant"].unique()))
    optimisers = sorted(runs["optim"].unique(), key=lambda o: (o != "adam", o))
    records = []
    for (variant, optimiser), group in runs.groupby(["variant", "optim"]):
        records.append(
            {
                "variant": variant,
                "optim": optimiser,
                **{f"{c}_mean": float(group[c].mean()) for c in ("final_total", "judge_total", "runtime_s")},
                **{f"{c}_std": float(group[c].std()) for c in ("final_total", "judge_total", "runtime_s")},
                "n_seeds": len(group),
            }
        )
    frame = pd.DataFrame(records)
    cell = {(r["variant"], r["optim"]): r for r in records}
    header = ["Variant"] + [f"{h} ({o})" for o in optimisers for h in ("Own total", "Judge total", "Runtime")]
    body = []
    for v in variants:
        line = [label(v)]
        for o in optimisers:
            r = cell.get((v, o))
            line += (
                ["—"] * 3
                if r is None
                else [
                    format_cell(r["final_total_mean"], r["final_total_std"]),
                    format_cell(r["judge_total_mean"], r["judge_total_std"]),
                    format_cell(r["runtime_s_mean"], r["runtime_s_std"], runtime=True),
                ]
            )
        body.append(line)
    return markdown_table(header, body), frame


def tuned_runs(client: MlflowClient, experiment_id: str, iterations: str, content_size: str) -> pd.DataFrame:
    """Finished tuning trials (experiment=tune) at the sweep's iterations and content size, one row each."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"params.`tune.objective` = 'judge_total' and params.`run.iterations` = '{iterations}' "
        f"and params.content_size_wh = '{content_size}' and attributes.status = 'FINISHED'",
        max_results=5000,
    )
    rows = [
        {
            "variant": r.data.tags.get("variant", ""),
            "run_id": r.info.run_id,
            "judge_total": r.data.metrics.get("judge_total", float("nan")),
            **{column: float(r.data.params[key]) for key, column in TUNED_PARAMS.items()},
        }
        for r in found
    ]
    return pd.DataFrame(rows, columns=["variant", "run_id", "judge_total", *TUNED_PARAMS.values()])


def tuned_table(trials: pd.DataFrame, runs: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Each variant at its best tuned loss weights beside the same variant at upstream's weights (this sweep)."""
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
    frame = pd.DataFrame(records)
    header = [
        "Variant",
        "Trials",
        "Content w.",
        "Style w.",
        "TV w.",
        "Judge total, tuned",
        "At default weights",
        "Change",
    ]
    body = [
        [
            label(r["variant"]),
            str(r["trials"]),
            *(format_number(r[c]) for c in TUNED_PARAMS.values()),
            format_number(r["judge_total_tuned"]),
            format_number(r["judge_total_default_weights"]) if np.isfinite(r["judge_total_default_weights"]) else "—",
            format_change(r["change_pct"]),
        ]
        for r in records
    ]
    return markdown_table(header, body), frame


def runs_table(runs: pd.DataFrame) -> str:
    body = [
        [
            label(r.variant),
            str(r.seed),
            f"`{r.run_id}`",
            r.job_status,
            format_number(r.final_total),
            format_number(r.judge_total),
            format_runtime(r.runtime_s),
        ]
        for r in runs.itertuples()
    ]
    header = ["Variant", "Seed", "MLflow run id", "In this sweep", "Final total", "Judge total", "Runtime"]
    return markdown_table(header, body)


def _artifact_image(client: MlflowClient, run_id: str, path: str, scratch: Path) -> np.ndarray | None:
    try:
        local = client.download_artifacts(run_id, path, str(scratch))
    except Exception:  # noqa: BLE001 - a missing artifact leaves a blank panel, not a failed report
        return None
    with Image.open(local) as image:
        return np.asarray(image.convert("RGB"))


def image_grid(client: MlflowClient, runs: pd.DataFrame, path: Path) -> Path:
    """Content, style, then each variant's output (lowest seed): the report's Figures 3-5 in one PNG."""
    first = runs.groupby("variant", sort=False).head(1)
    with tempfile.TemporaryDirectory(prefix="nst-report-") as scratch:
        reference = first.iloc[0].run_id
        panels = [
            ("Content", _artifact_image(client, reference, "inputs/content.png", Path(scratch))),
            ("Style", _artifact_image(client, reference, "inputs/style_0.png", Path(scratch))),
        ]
        for r in first.itertuples():
            panels.append(
                (f"{label(r.variant)} (seed {r.seed})", _artifact_image(client, r.run_id, "final.png", Path(scratch)))
            )
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.4 * rows), dpi=100)
    for k, (title, image) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, k + 1)
        if image is not None:
            axes.imshow(image, interpolation="nearest")
        axes.set_title(title, fontsize=9)
        axes.axis("off")
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    return path


def loss_curves(client: MlflowClient, runs: pd.DataFrame, path: Path) -> Path:
    """Total loss against iteration, one colour per variant, one line per seed, log scale."""
    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    colours = {v: f"C{i}" for i, v in enumerate(variant_order(list(runs["variant"].unique())))}
    for r in runs.itertuples():
        history = sorted((m.step, m.value) for m in client.get_metric_history(r.run_id, "total"))
        if not history:
            continue
        steps, values = zip(*history, strict=True)
        first_seed = r.seed == runs.loc[runs["variant"] == r.variant, "seed"].min()
        axes.plot(steps, values, color=colours[r.variant], lw=1, label=label(r.variant) if first_seed else None)
    axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("total loss (own network)")
    axes.set_title("Total loss per variant (one line per seed)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    return path


def _distinct(runs: pd.DataFrame, column: str) -> str:
    values = sorted({str(v) for v in runs[column] if str(v)})
    return ", ".join(values) if values else "unknown"


def header(result: Sweep) -> str:
    """What the numbers depend on, read from the runs' params and the parent run."""
    runs, parent = result.runs, result.parent
    started = datetime.fromtimestamp(parent.info.start_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    short_sha = runs.assign(weights_sha256=runs["weights_sha256"].str[:12])
    failed = [j for j in result.jobs.values() if j.get("status") not in ("finished", "skipped")]
    lines = [f"# Ablation report: sweep `{result.sweep_id}`", ""]
    if set(runs["weights_source"]) & {"random"}:
        lines += [
            "> **WARNING: random weights.** These runs used seeded random VGG weights (`weights=random`).",
            "> Their numbers test the harness and say **nothing** about the paper or the report.",
            "",
        ]
    facts = [
        ("Sweep", f"`{result.sweep_id}`, parent run `{parent.info.run_id}` ({parent.info.status})"),
        ("Date", started),
        ("Overrides", f"`{parent.data.tags.get('sweep_overrides', '')}`"),
        ("Device", _distinct(runs, "device")),
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
    if failed:
        facts.append(
            (
                "Failed jobs",
                "; ".join(
                    f"{j.get('variant')} seed {j.get('seed')}: {j.get('error') or j.get('status')}" for j in failed
                ),
            )
        )
    lines += [markdown_table(["", ""], [[k, v] for k, v in facts], numeric=False)]
    return "\n".join(lines)


JUDGE_WHY = (
    "Each variant's own losses are measured by its own network, so a VGG16 or average-pooling loss and a VGG19 "
    "loss are different functions and their ratio says nothing about which image is better. The judge scores every "
    "output with one fixed network (the original: VGG19, max pooling, ReLU, the same weights and loss weights), so "
    "these numbers are on one scale, and SSIM against the content photo adds a measure that needs no network."
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


def write_report(client: MlflowClient, result: Sweep, out_dir: Path) -> Path:
    """All files of the report into ``out_dir``; returns the Markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    all_runs = result.runs
    several_optimisers = all_runs["optim"].nunique() > 1
    # the report's tables and the judge table are about upstream's optimiser; other optimisers get their own table
    runs = all_runs[all_runs["optim"] == "adam"] if several_optimisers else all_runs
    parts = [header(result), "", "## Tables of the report, measured", ""]
    parts += [
        "Measured values are the mean ± sample standard deviation over seeds of each run's final losses, "
        "computed by the variant's own network; runtime is the whole run (set-up, iterations, logging). "
        '"Reported" columns quote the report\'s figures (1000 iterations, full size, pretrained MatConvNet VGG '
        "on the author's machine). Change vs original is (variant - original) / original, the report's "
        '"decreased 87.19%" being -87.19%.',
        "",
    ]
    for name in PAPER_TABLES:
        table = paper_table(runs, name)
        if table is None:
            parts += [f"### {PAPER_TABLES[name][0]}", "", "No variant of this table in the sweep.", ""]
            continue
        markdown, frame = table
        frame.to_csv(out_dir / f"{name}.csv", index=False, float_format="%.9g")
        parts += [markdown, "", f"CSV: [{name}.csv]({name}.csv)", ""]
    judge_md, judge_frame = judge_table(runs)
    judge_frame.to_csv(out_dir / "judge.csv", index=False, float_format="%.9g")
    parts += ["## One judge for every variant", "", JUDGE_WHY, "", judge_md, "", "CSV: [judge.csv](judge.csv)", ""]
    if several_optimisers:
        optim_md, optim_frame = optimizer_table(all_runs)
        optim_frame.to_csv(out_dir / "optimizers.csv", index=False, float_format="%.9g")
        parts += ["## Optimisers", "", OPTIM_WHY, "", optim_md, "", "CSV: [optimizers.csv](optimizers.csv)", ""]
    trials = tuned_runs(
        client, result.parent.info.experiment_id, str(runs["iterations"].iloc[0]), str(runs["content_size"].iloc[0])
    )
    if len(trials):
        tuned_md, tuned_frame = tuned_table(trials, runs)
        tuned_frame.to_csv(out_dir / "tuned.csv", index=False, float_format="%.9g")
        parts += [
            "## Each variant at its best loss weights",
            "",
            TUNED_WHY,
            "",
            tuned_md,
            "",
            "CSV: [tuned.csv](tuned.csv)",
            "",
        ]
    image_grid(client, runs, out_dir / "grid.png")
    loss_curves(client, runs, out_dir / "curves.png")
    parts += ["## Images", "", "![content, style and each variant's output](grid.png)", ""]
    parts += ["## Loss curves", "", "![total loss against iteration, log scale](curves.png)", ""]
    runs.to_csv(out_dir / "runs.csv", index=False, float_format="%.9g")
    parts += ["## Runs", "", runs_table(runs), "", "CSV: [runs.csv](runs.csv)", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(parts))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablation.report", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", help="sweep id or parent run id (default: the latest sweep)")
    parser.add_argument("--experiment", default="nst-ablation", help="MLflow experiment (default: nst-ablation)")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR, help="folder for reports/<sweep>/")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        client = MlflowClient(tracking.tracking_uri())
        found = client.get_experiment_by_name(args.experiment)
        if found is None:
            raise ReportError(
                f"--experiment {args.experiment!r} is not in {tracking.tracking_uri()}: run make sweep first"
            )
        result = load_sweep(client, find_parent(client, found.experiment_id, args.sweep))
        path = write_report(client, result, args.out / result.sweep_id)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
