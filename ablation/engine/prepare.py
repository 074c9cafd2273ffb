"""From a RunSpec to what the loop needs: weights, images in pixel space, the network and its targets.

No Hydra or MLflow here, so the run, the benchmark, the judge and a notebook share one way in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ablation.engine.backends import configure_backends, resolve_options, set_layout
from ablation.engine.colors import match_colors
from ablation.engine.errors import DeviceError
from ablation.engine.images import (
    PixelSpace,
    check_sizes,
    content_size,
    image_size_wh,
    read_rgb,
    resize,
    size_of,
    style_size,
)
from ablation.engine.inputs import file_sha256, resolve_image
from ablation.engine.network import VGGFeatures
from ablation.engine.plan import ImagesSpec, RunSpec
from ablation.engine.transfer import Targets, compute_targets, initial_image
from ablation.engine.weights import VGGWeights, load_weights


def pick_device(name: str) -> torch.device:
    """``auto``: cuda, then mps, then cpu; otherwise the named device, refused if absent."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"run.device={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"run.device={name!r} but torch sees no CUDA device: use run.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"run.device={name!r} but MPS is not available: use run.device=auto or cpu")
    return device


@dataclass
class InputImages:
    """The inputs as uint8 RGB after upstream's resizing, with the files they came from."""

    content: np.ndarray
    styles: list[np.ndarray]
    paths: list[Path]  # content first
    sha256: list[str]


def load_images(spec: ImagesSpec, match_style_colors: bool = False, width_key: str = "images.width") -> InputImages:
    """Content resized to ``width`` (if set); each style to content width * its scale (upstream).
    With ``match_style_colors`` each style's colour histogram is matched to the content's. Sizes are checked
    before anything is resized (:func:`check_sizes`)."""
    paths = [resolve_image(spec.content)] + [resolve_image(s) for s in spec.styles]
    content, *styles = [read_rgb(path, spec.exif_transpose) for path in paths]
    check_sizes(paths, [size_of(content), *map(size_of, styles)], [spec.width], spec.style_scales, width_key)
    content = resize(content, content_size(size_of(content), spec.width))
    width = size_of(content)[0]
    styles = [resize(s, style_size(size_of(s), width, k)) for s, k in zip(styles, spec.style_scales, strict=True)]
    if match_style_colors:
        styles = [match_colors(style, content) for style in styles]
    return InputImages(content, styles, paths, [file_sha256(p) for p in paths])


def check_input_sizes(spec: RunSpec) -> None:
    """:func:`check_sizes` for every width of the run (``images.width`` or each of ``run.scales``), from the files'
    headers: a too small or oddly shaped image is refused before any pixel is decoded."""
    images = spec.images
    paths = [resolve_image(name) for name in (images.content, *images.styles)]
    sizes = [image_size_wh(path, images.exif_transpose) for path in paths]
    widths = [width for width, _ in spec.stages()]
    check_sizes(paths, sizes, widths, images.style_scales, "run.scales" if spec.scales else "images.width")


@dataclass
class Problem:
    """Everything fixed during one transfer."""

    spec: RunSpec
    device: torch.device
    weights: VGGWeights
    images: InputImages
    pixels: PixelSpace
    net: VGGFeatures
    content: torch.Tensor  # [1, 3, H, W] pixel space
    targets: Targets

    def start_image(self, seeds: list[int]) -> torch.Tensor:
        """Initial image for each seed (upstream's noise, the content, or an image file)."""
        init = self.spec.init
        if init == "noise":
            base = None
        elif init == "content":
            base = self.content
        else:
            h, w = self.images.content.shape[:2]
            picture = resize(read_rgb(resolve_image(init), self.spec.images.exif_transpose), (w, h))
            base = self.pixels.encode(picture, self.device)
        return initial_image(self.content, seeds, base, self.spec.init_noise_blend)


def build_network(spec: RunSpec, weights: VGGWeights, device: torch.device) -> VGGFeatures:
    return VGGFeatures(spec.network, weights.convs, spec.last_layer).to(device)


def prepare(spec: RunSpec, device: torch.device, weights: VGGWeights | None = None) -> Problem:
    """Load weights (unless given) and images, set the backend flags, build the truncated network in the
    engine's memory layout, compute the targets. The problem's ``spec.engine`` is resolved for ``device``
    (``channels_last`` a bool): run and record that one."""
    spec = replace(spec, engine=resolve_options(spec.engine, device))
    images = load_images(spec.images, spec.match_style_colors)  # first: a bad image is refused before weights
    if weights is None:
        weights = load_weights(spec.weights.source, spec.network.arch, **spec.weights.options)
    pixels = PixelSpace(weights.mean_pixel)
    configure_backends(spec.engine, device)
    net = set_layout(build_network(spec, weights, device), spec.engine)
    content = pixels.encode(images.content, device)
    styles = [pixels.encode(s, device) for s in images.styles]
    targets = compute_targets(net, content, styles, spec.loss, spec.images.style_blend)
    return Problem(spec, device, weights, images, pixels, net, content, targets)
