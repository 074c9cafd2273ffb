"""Coarse-to-fine: optimise at each width in turn, each scale starting from the previous result upsampled.

One stream of :class:`Progress` comes out, as from a single ``stylize``; each progress says which scale it
belongs to and the step offset that puts its steps on one global axis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ablation.engine.adam import AdamSettings
from ablation.engine.transfer import (
    EngineOptions,
    LBFGSSettings,
    Progress,
    Targets,
    TransferState,
    new_state,
    stylize,
)


def upsample(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a pixel-space batch [B, 3, h, w] to [B, 3, H, W] (the next scale's start)."""
    if tuple(image.shape[-2:]) == tuple(size_hw):
        return image.detach().clone()
    return F.interpolate(image.detach(), size=size_hw, mode="bicubic", align_corners=False)


@dataclass
class Stage:
    """One scale: its network, targets, image size and number of iterations."""

    net: torch.nn.Module
    targets: Targets
    size_hw: tuple[int, int]
    iterations: int


def coarse_to_fine(
    stages: Sequence[Stage],
    first_image: torch.Tensor,
    settings: AdamSettings | LBFGSSettings,
    log_every: int,
    sync_every: int,
    options: EngineOptions = EngineOptions(),
    resumed: TransferState | None = None,
) -> Iterator[Progress]:
    """``stylize`` at each stage in turn; stage i > 0 starts from stage i-1's final image upsampled to its size.

    The optimiser restarts at every scale: its moments belong to the old pixel grid. Each progress carries its
    ``scale`` and ``step_offset`` (the global step of this scale's step 0). ``resumed``: a checkpointed state of
    a single-stage run, continued where it stopped (so one caller handles fresh and resumed runs alike).
    """
    if resumed is not None and len(stages) > 1:
        raise ValueError("a resumed state continues a single-scale run; coarse to fine restarts each scale")
    image, offset = first_image, 0
    for index, stage in enumerate(stages):
        state = resumed if resumed is not None else new_state(upsample(image, stage.size_hw), settings)
        for progress in stylize(stage.net, stage.targets, state, stage.iterations, log_every, sync_every, options):
            progress.scale, progress.step_offset = index, offset
            yield progress
        image = state.image.detach()
        offset += stage.iterations + 1  # step 0 of the next scale follows the last step of this one
