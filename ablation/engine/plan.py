"""The plan of one transfer: typed data the engine runs, built and checked by the harness (``ablation.spec``).

Plain frozen dataclasses, so a notebook or the bench can build one by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ablation.engine.adam import AdamSettings
from ablation.engine.losses import LossWeights
from ablation.engine.network import NetworkSpec, deepest
from ablation.engine.transfer import EngineOptions, LBFGSSettings


@dataclass(frozen=True)
class ImagesSpec:
    content: str
    styles: tuple[str, ...]
    style_scales: tuple[float, ...]
    style_blend: tuple[float, ...] | None
    width: int | None
    exif_transpose: bool = True


@dataclass(frozen=True)
class WeightsSpec:
    source: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    variant: str
    network: NetworkSpec
    loss: LossWeights
    optim: AdamSettings | LBFGSSettings
    engine: EngineOptions
    images: ImagesSpec
    weights: WeightsSpec
    iterations: int
    seed: int  # the first of ``seeds``
    seeds: tuple[int, ...]  # optimised as one batch, one MLflow run each
    device: str
    init: str
    init_noise_blend: float | None
    log_every: int
    sync_every: int
    checkpoint_every: int
    quiet: bool
    preserve_colors: bool = False
    match_style_colors: bool = False
    scales: tuple[int, ...] | None = None  # content widths, coarse to fine
    scale_iterations: tuple[int, ...] | None = None
    batch_seeds: bool | None = None  # seeds as one batch; None: on a GPU yes, on a CPU one after another

    def seed_batches(self, device_type: str) -> list[tuple[int, ...]]:
        """The seeds as one batch, or one after another (network and targets built once either way).

        ``batch_seeds=None`` batches on a GPU, which has idle compute to fill, and runs one seed after another on
        a CPU, where the bench measured a batch of 4 seeds slower than 4 single seeds (no idle compute, more memory).
        """
        batched = device_type != "cpu" if self.batch_seeds is None else self.batch_seeds
        return [self.seeds] if batched else [(seed,) for seed in self.seeds]

    def stages(self) -> list[tuple[int | None, int]]:
        """(content width, iterations) per scale: one stage at images.width unless run.scales is set."""
        if not self.scales:
            return [(self.images.width, self.iterations)]
        return list(zip(self.scales, self.scale_iterations or (self.iterations,) * len(self.scales), strict=True))

    @property
    def last_layer(self) -> str:
        """Where the network is truncated: the deepest layer with a non-zero loss weight."""
        return deepest(self.network.arch, self.loss.read_layers())
