"""Reading and resizing images as upstream does, and the pixel space the optimisation runs in.

Pixel space (upstream's ``vgg.preprocess``): RGB float32 in 0-255 minus the weights' mean pixel,
laid out [1, 3, H, W]. Its inverse clips to 0-255 and truncates to uint8, as upstream's ``imsave``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ablation.engine.errors import UserError
from ablation.engine.network import MIN_IMAGE_SIDE_PX


class ImageError(UserError):
    """An input image that cannot be used; the message names the file and the fix."""


def read_rgb(path: str | Path, exif_transpose: bool = True) -> np.ndarray:
    """Read any Pillow-readable image as uint8 RGB [H, W, 3].

    Grey becomes three equal channels and alpha is dropped (upstream's ``imread``); palette and CMYK
    images are converted to RGB; 16-bit images are scaled to 8 bits (x / 257). With ``exif_transpose``
    the EXIF orientation is applied, so a phone photo is upright (upstream ignores it).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                wide = np.asarray(img, dtype=np.float64)
                grey = np.clip(wide / 257.0, 0, 255).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")  # then drop alpha, as upstream does
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot read {path} as an image ({err}): give a JPEG or PNG file") from err


def resize(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize uint8 RGB with Pillow's default resampling (bicubic), as upstream's ``imresize``."""
    if size_wh == (image.shape[1], image.shape[0]):
        return image
    return np.array(Image.fromarray(image).resize(size_wh))


def content_size(size_wh: tuple[int, int], width: int | None) -> tuple[int, int]:
    """(w, h) of a content of ``size_wh``: unchanged without ``width``, else (width, floor(h / w * width))."""
    w, h = size_wh
    if width is None:
        return w, h
    return width, int(math.floor(h / w * width))


def style_size(size_wh: tuple[int, int], content_width: int, style_scale: float) -> tuple[int, int]:
    """(w, h) of a style of ``size_wh`` scaled by content_width * style_scale / its own width (upstream)."""
    w, h = size_wh
    factor = content_width * style_scale / w
    return int(w * factor), int(h * factor)


def size_of(image: np.ndarray) -> tuple[int, int]:
    """(w, h) of an [H, W, C] array."""
    return image.shape[1], image.shape[0]


def smallest_width(size_wh: tuple[int, int]) -> int:
    """The least content width at which a content of ``size_wh`` keeps :data:`MIN_IMAGE_SIDE_PX` on each side."""
    w, h = size_wh
    width = max(MIN_IMAGE_SIDE_PX, math.ceil(MIN_IMAGE_SIDE_PX * w / h))
    while min(content_size(size_wh, width)) < MIN_IMAGE_SIDE_PX:
        width += 1
    return width


def check_sizes(
    paths: Sequence[str | Path], sizes_wh: Sequence[tuple[int, int]], widths: Sequence[int | None],
    style_scales: Sequence[float], width_key: str = "images.width",
) -> None:  # fmt: skip
    """Refuse, before anything is resized, a content (``paths[0]``) or style that would come out smaller than the
    network takes (:data:`MIN_IMAGE_SIDE_PX` on each side) at any of the content ``widths`` (``images.width``, or
    each of ``run.scales``: then ``width_key`` is ``run.scales``). A resize to zero pixels, or a feature map pooled
    to nothing, would otherwise end in a PIL or torch traceback; here it is one line naming the file and the key."""
    content_wh = sizes_wh[0]
    for index, width in enumerate(widths):
        key = f"{width_key}[{index}]" if width_key == "run.scales" else width_key
        cw, ch = content_size(content_wh, width)
        if min(cw, ch) < MIN_IMAGE_SIDE_PX:
            at = f"at {key}={width}" if width is not None else f"without {key}"
            raise ImageError(
                f"{paths[0]} is {content_wh[0]}x{content_wh[1]} px: {at} the content would be {cw}x{ch} px, and "
                f"the network needs at least {MIN_IMAGE_SIDE_PX} px on each side: use {key}="
                f"{smallest_width(content_wh)} or more (or a larger image)"
            )
        for k, (path, wh, scale) in enumerate(zip(paths[1:], sizes_wh[1:], style_scales, strict=True)):
            sw, sh = style_size(wh, cw, scale)
            if min(sw, sh) < MIN_IMAGE_SIDE_PX:
                raise ImageError(
                    f"{path} is {wh[0]}x{wh[1]} px: scaled to the content's {cw} px ({key}={width}) times "
                    f"images.style_scales[{k}]={scale:g} it would be {sw}x{sh} px, and the network needs at least "
                    f"{MIN_IMAGE_SIDE_PX} px on each side: raise that style scale or {key} (or use a larger image)"
                )


@dataclass(frozen=True)
class PixelSpace:
    """RGB 0-255 minus ``mean_pixel``: the space in which upstream optimises and its loss weights hold."""

    mean_pixel: tuple[float, float, float]

    def _mean(self, device: torch.device | str) -> torch.Tensor:
        return torch.tensor(self.mean_pixel, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def encode(self, image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 [H, W, 3] -> float32 [1, 3, H, W] in pixel space."""
        x = torch.from_numpy(np.ascontiguousarray(image)).to(device=device, dtype=torch.float32)
        return x.permute(2, 0, 1).unsqueeze(0) - self._mean(device)

    def decode(self, x: torch.Tensor) -> np.ndarray:
        """[1, 3, H, W] (or [3, H, W]) pixel space -> uint8 [H, W, 3]: clip(x + mean, 0, 255), truncated."""
        if x.dim() == 3:
            x = x.unsqueeze(0)
        rgb = (x.detach().float() + self._mean(x.device)).clamp(0, 255)
        return rgb[0].permute(1, 2, 0).to(torch.uint8).cpu().numpy()

    def convert(self, x: torch.Tensor, target: PixelSpace) -> torch.Tensor:
        """``x`` in this space as the same RGB in ``target``'s (unclipped): x + mean - target's mean."""
        if tuple(self.mean_pixel) == tuple(target.mean_pixel):
            return x
        return x + self._mean(x.device) - target._mean(x.device)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


#: EXIF orientations (tag 274) that swap width and height when applied.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


def image_size_wh(path: str | Path, exif_transpose: bool = True) -> tuple[int, int]:
    """(w, h) as :func:`read_rgb` would return it, from the header only (no pixels decoded).

    Lets a run check sizes and memory before a huge image is decoded or upscaled.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if exif_transpose and img.getexif().get(274) in _TRANSPOSING_ORIENTATIONS:
                w, h = h, w
            return w, h
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot read {path} as an image ({err}): give a JPEG or PNG file") from err
