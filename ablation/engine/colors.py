"""Keeping the content photo's colours: upstream's luminance transfer and style colour matching.

Two ways, which can be combined and are logged as separate settings:

- ``preserve_colors`` (post-process, upstream's ``--preserve-colors``): the stylised image's Rec.601 luma
  with the content's chroma, recombined in Pillow's YCbCr. The optimisation is unchanged.
- ``match_style_colors`` (before optimising): each style image's colour histogram is matched to the
  content's (scikit-image's ``match_histograms``, per channel), so the style loss itself asks for the
  content's palette.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.exposure import match_histograms

REC601_LUMA = np.array([0.299, 0.587, 0.114])


def luminance_transfer_ycbcr(stylised: np.ndarray, content: np.ndarray) -> np.ndarray:
    """uint8 YCbCr [H, W, 3]: Y from the stylised image's grey (Rec.601), Cb and Cr from the content, exactly.

    The grey is truncated to uint8 before Pillow's YCbCr conversion, as upstream does.
    """
    grey = np.clip(stylised.astype(np.float64) @ REC601_LUMA, 0, 255).astype(np.uint8)
    grey_ycbcr = np.array(Image.fromarray(np.dstack([grey] * 3)).convert("YCbCr"))
    content_ycbcr = np.array(Image.fromarray(content).convert("YCbCr"))
    return np.dstack([grey_ycbcr[..., 0], content_ycbcr[..., 1], content_ycbcr[..., 2]])


def preserve_colors(stylised: np.ndarray, content: np.ndarray) -> np.ndarray:
    """uint8 RGB: the stylised image in the content's colours (upstream's luminance transfer)."""
    if stylised.shape != content.shape:
        raise ValueError(f"stylised {stylised.shape} and content {content.shape} differ in size")
    return np.array(Image.fromarray(luminance_transfer_ycbcr(stylised, content), "YCbCr").convert("RGB"))


def match_colors(style: np.ndarray, content: np.ndarray) -> np.ndarray:
    """uint8 RGB: ``style`` with each channel's histogram matched to ``content``'s."""
    matched = match_histograms(style, content, channel_axis=-1)
    return np.clip(np.round(matched), 0, 255).astype(np.uint8)
