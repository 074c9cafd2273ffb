"""Will the transfer fit? An estimate of its memory from the image sizes, checked before anything is allocated.

Autograd keeps every activation of the truncated network until the backward pass: each conv's input,
each activation's output, each max pool's input and its int64 indices. So for a batch of B images of
H x W the loop holds about

    B * (4 * sum_l C_l H_l W_l  +  8 * sum_maxpool C_l H_l W_l  +  2 * 4 * max_l C_l H_l W_l)  bytes

(the last term: the gradient flowing back through the largest layer and its input's gradient), plus
the image, Adam's two moments and the best image (4 image-sized tensors), the content image's target
activations, one style image's forward pass without gradients (its two largest consecutive layers)
and the conv weights. A huge ``images.width`` is refused with the width that would fit, instead of a
crash deep in torch (or the OOM killer) after minutes of setup.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ablation.engine.errors import UserError
from ablation.engine.images import content_size, image_size_wh, style_size
from ablation.engine.inputs import resolve_image
from ablation.engine.network import STAGE_CHANNELS, conv_shapes, layer_shapes
from ablation.engine.plan import RunSpec

FLOAT_BYTES = 4
INDEX_BYTES = 8


class MemoryEstimateError(UserError):
    """The run would need more memory than the device has; the message says what size would fit."""


@dataclass(frozen=True)
class Estimate:
    pixel_bytes: int  # grows with the pixel count: activations, gradients, image-sized state, targets
    fixed_bytes: int  # does not: the weights (loaded, then copied into the network) and the Grams

    @property
    def total_bytes(self) -> int:
        return self.pixel_bytes + self.fixed_bytes


def transfer_bytes(
    arch: str, last_layer: str, pooling: str, content_hw: tuple[int, int], styles_hw: list[tuple[int, int]], batch: int
) -> Estimate:
    """The estimate in the module docstring, in bytes."""
    shapes = layer_shapes(arch, last_layer, *content_hw)
    elements = [layer.elements for layer in shapes]
    pools = sum(layer.elements for layer in shapes if layer.name.startswith("pool")) if pooling == "max" else 0
    image = 3 * content_hw[0] * content_hw[1]
    per_image = FLOAT_BYTES * (sum(elements) + 2 * max(elements) + 4 * image) + INDEX_BYTES * pools
    style_peak = 0
    for hw in styles_hw:
        s = [layer.elements for layer in layer_shapes(arch, last_layer, *hw)]
        style_peak = max(style_peak, FLOAT_BYTES * max(a + b for a, b in zip(s, s[1:] + [0], strict=True)))
    weights = FLOAT_BYTES * sum(9 * i * o + o for _, i, o in conv_shapes(arch))
    grams = FLOAT_BYTES * sum(c * c for c in STAGE_CHANNELS) * max(1, len(styles_hw))
    return Estimate(batch * per_image + style_peak + FLOAT_BYTES * max(elements), 2 * weights + grams)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: CUDA's free memory, else RAM available to this process (cgroup limit
    included, as under SLURM or Docker). None when it cannot be told (MPS shares RAM: RAM is used)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            available = None
    limit, used = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        if limit.is_file() and limit.read_text().strip() != "max":
            headroom = int(limit.read_text()) - int(used.read_text())
            available = headroom if available is None else min(available, headroom)
    except (OSError, ValueError):
        pass
    return available


def planned_sizes(spec: RunSpec) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(h, w) of the content and of each style after upstream's resizing at the run's finest width (``images.width``,
    or the last of ``run.scales``), from the files' headers."""
    images = spec.images
    width = spec.stages()[-1][0]
    cw, ch = content_size(image_size_wh(resolve_image(images.content), images.exif_transpose), width)
    styles = []
    for name, scale in zip(images.styles, images.style_scales, strict=True):
        sw, sh = style_size(image_size_wh(resolve_image(name), images.exif_transpose), cw, scale)
        styles.append((sh, sw))
    return (ch, cw), styles


def check_fits(spec: RunSpec, device: torch.device) -> Estimate:
    """Refuse a run whose estimate exceeds the free memory of ``device`` (its largest batch of seeds at once),
    naming a width that fits, and one seed after another when a single seed would fit."""
    content_hw, styles_hw = planned_sizes(spec)
    batch = max(len(seeds) for seeds in spec.seed_batches(device.type))
    network = spec.network.arch, spec.last_layer, spec.network.pooling
    estimate = transfer_bytes(*network, content_hw, styles_hw, batch)
    free = available_bytes(device)
    if free is not None and estimate.total_bytes > free:
        width = content_hw[1]
        room = max(free - estimate.fixed_bytes, 0) / estimate.pixel_bytes  # memory grows with width squared
        fits = int(width * math.sqrt(room) * 0.9)
        seeds = f" of {batch} batched seeds (run.seeds={list(spec.seeds)})" if batch > 1 else ""
        one_by_one = batch > 1 and transfer_bytes(*network, content_hw, styles_hw, 1).total_bytes <= free
        raise MemoryEstimateError(
            f"a {content_hw[1]}x{content_hw[0]} px transfer{seeds} (images.width={spec.images.width}) needs about "
            f"{estimate.total_bytes / 2**30:.1f} GiB on {device}, which has {free / 2**30:.1f} GiB free: "
            + ("set run.batch_seeds=false (one seed after another) or " if one_by_one else "")
            + f"use images.width={fits} or less (or run.memory_check=false to try anyway)"
        )
    return estimate
