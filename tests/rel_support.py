"""Shared by the reliability tests: a tiny, fast run config and a private MLflow store per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: 16 px images are all overhead: one thread beats two, and much more so on a shared, busy machine.
torch.set_num_threads(1)


def tiny_images(folder: Path, size_px: int = 16) -> tuple[Path, Path]:
    """A seeded content and style image of ``size_px`` square: the smallest the network accepts."""
    rs = np.random.RandomState(0)
    paths = []
    for name in ("content.png", "style.png"):
        pixels = rs.randint(0, 256, (size_px, size_px, 3)).astype(np.uint8)
        paths.append(folder / name)
        Image.fromarray(pixels).save(paths[-1])
    return paths[0], paths[1]


def run_overrides(folder: Path, iterations: int = 6) -> list[str]:
    content, style = tiny_images(folder)
    return [
        "weights=random",
        f"images.content={content}",
        f"images.styles=[{style}]",
        f"run.iterations={iterations}",
        "run.quiet=true",
        "run.sync_every=2",
        "run.checkpoint_every=0",
        "run.device=cpu",
    ]


def config(overrides: list[str]) -> dict[str, Any]:
    """The resolved config ``python -m ablation.run OVERRIDES`` would run."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def store_env(folder: Path) -> dict[str, str]:
    """Environment for a subprocess run against a fresh sqlite store in ``folder``."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    env.pop("HYDRA_FULL_ERROR", None)
    env["OMP_NUM_THREADS"] = "1"
    return env
