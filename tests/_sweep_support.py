"""Helpers shared by the sweep, report and judge tests: a private store and a sweep run as users run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT.parent / "shared" / "data"
#: Small and fast: 32 px, 3 steps, random weights, no progress bar, no checkpoints.
TINY = ["weights=random", "images.width=32", "run.iterations=3", "run.quiet=true", "run.checkpoint_every=0"]


def store_env(folder: Path) -> dict[str, str]:
    """Environment for a subprocess using a private sqlite store in ``folder``."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    env["ABLATION_DATA_DIR"] = str(DATA_DIR)
    env["PYTHONPATH"] = str(PROJECT)
    env["OMP_NUM_THREADS"] = "1"
    return env


def sweep_command(sweep_dir: Path, *overrides: str) -> list[str]:
    """``python -m ablation.run -m`` with :data:`TINY` settings; ``overrides`` replace those with the same key."""
    keys = {o.split("=")[0] for o in overrides}
    tiny = [o for o in TINY if o.split("=")[0] not in keys]
    return [sys.executable, "-m", "ablation.run", "-m", *tiny, f"hydra.sweep.dir={sweep_dir}", *overrides]


def run_sweep(folder: Path, name: str, *overrides: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    """Run a sweep to its end in a subprocess (cwd = ``folder``), with the store in ``folder``."""
    return subprocess.run(
        sweep_command(folder / name, *overrides),
        cwd=folder,
        env=store_env(folder),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
