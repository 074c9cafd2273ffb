"""The report's figures: an image grid (its Figures 3-5 in one PNG) and the loss curves, read from MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from ablation.report.variants import label, variant_order
from ablation.store import reader


def artifact_image(run_id: str, path: str, scratch: Path) -> np.ndarray | None:
    """An image artifact as RGB pixels; None when the run lacks it (a blank panel, not a failed report)."""
    local = reader.download(run_id, path, scratch)
    if local is None:
        return None
    with Image.open(local) as image:
        return np.asarray(image.convert("RGB"))


def grid_panels(runs: pd.DataFrame) -> list[tuple[str, np.ndarray | None]]:
    """(title, pixels): content, style, then each variant's output at its lowest seed."""
    first = runs.groupby("variant", sort=False).head(1)
    with tempfile.TemporaryDirectory(prefix="nst-report-") as scratch:
        reference = first.iloc[0].run_id
        panels = [
            ("Content", artifact_image(reference, "inputs/content.png", Path(scratch))),
            ("Style", artifact_image(reference, "inputs/style_0.png", Path(scratch))),
        ]
        for r in first.itertuples():
            image = artifact_image(r.run_id, "final.png", Path(scratch))
            panels.append((f"{label(r.variant)} (seed {r.seed})", image))
    return panels


def image_grid(runs: pd.DataFrame, path: Path) -> Path:
    """Content, style, then each variant's output (lowest seed): the report's Figures 3-5 in one PNG."""
    panels = grid_panels(runs)
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


def loss_curves(runs: pd.DataFrame, path: Path) -> Path:
    """Total loss against iteration, one colour per variant, one line per seed, log scale."""
    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    colours = {v: f"C{i}" for i, v in enumerate(variant_order(list(runs["variant"].unique())))}
    for r in runs.itertuples():
        history = reader.metric_history(r.run_id, "total")
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
