"""Saving and restoring the loop's full state, so an interrupted transfer continues exactly where it stopped.

A checkpoint holds what :func:`ablation.engine.transfer.stylize` needs to go on from ``state.step`` (the image,
Adam's moments and step count, the best image, its total and step) plus the loss history so far and the
random number generators' states. Resuming recomputes the losses of step ``state.step`` from the saved
image and optimiser, which is exactly what the uninterrupted loop does next, so the final losses agree
to float rounding (bit for bit on the CPU).

No MLflow or Hydra here: the harness finds a run's checkpoint in the store (by the run's fingerprint) and
downloads it (:data:`CHECKPOINT_ARTIFACT`); this module writes and reads the file.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablation.engine.adam import AdamSettings
from ablation.engine.errors import UserError
from ablation.engine.transfer import LBFGSSettings, TransferState, new_state

CHECKPOINT_FORMAT = 1
#: The artifact path of a run's latest checkpoint.
CHECKPOINT_ARTIFACT = "checkpoint/state.pt"


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the run it should continue."""


def rng_states() -> dict[str, Any]:
    """Torch (CPU and CUDA), NumPy and Python generator states, in types ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }


def restore_rng(states: dict[str, Any]) -> None:
    """Put back what :func:`rng_states` saved (CUDA only where the same number of devices is present)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(state: TransferState, history: np.ndarray, path: str | Path, config_sha256: str = "") -> Path:
    """Write ``state`` and the loss ``history`` ([rows, 5]: step, content, style, tv, total) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config_sha256": config_sha256,
        "step": int(state.step),
        "image": state.image.detach().cpu(),
        "optimizer": state.optimizer.state_dict(),
        "optimizer_kind": "lbfgs" if isinstance(state.settings, LBFGSSettings) else "adam",
        "optimizer_settings": asdict(state.settings),
        "best_image": None if state.best_image is None else state.best_image.detach().cpu(),
        "best_total": None if state.best_total is None else state.best_total.detach().cpu(),
        "best_step": None if state.best_step is None else state.best_step.detach().cpu(),
        "history": torch.from_numpy(np.asarray(history, dtype=np.float64)),
        "rng": rng_states(),
    }
    partial = path.with_suffix(path.suffix + ".part")
    torch.save(payload, partial)
    partial.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[TransferState, np.ndarray, dict[str, Any]]:
    """The state, the history rows before ``state.step`` and the raw payload (for its RNG states and hash).

    Read with ``weights_only=True``: a checkpoint from a shared store cannot run code when loaded.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged or foreign file
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}): start afresh with run.resume=false"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of format {CHECKPOINT_FORMAT}: start with run.resume=false")
    kind = LBFGSSettings if payload.get("optimizer_kind") == "lbfgs" else AdamSettings
    state = new_state(payload["image"].to(device), kind(**payload["optimizer_settings"]))
    state.optimizer.load_state_dict(payload["optimizer"])
    state.step = int(payload["step"])
    if payload["best_total"] is not None:
        state.best_image = payload["best_image"].to(device)
        state.best_total = payload["best_total"].to(device)
        state.best_step = payload["best_step"].to(device)
    history = payload["history"].numpy()
    history = history[history[:, 0] < state.step] if history.size else history.reshape(0, 5)
    return state, history, payload
