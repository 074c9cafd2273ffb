"""Loss terms of Gatys et al. as anishathalye/neural-style computes them. Pure tensor functions.

Every function keeps the batch axis and returns one value per sample ([B]), so several seeds can be
optimised as one batch; the backward pass uses the sum, which leaves each sample's gradient unchanged.
Features are [B, C, H, W]; all reductions run in float32 at least (bf16 features are upcast; float64 stays).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclass(frozen=True)
class LossWeights:
    """Loss weights with upstream's defaults (neural_style.py)."""

    content_weight: float = 5.0
    content_blend: float = 1.0  # relu4_2 gets blend, relu5_2 gets 1 - blend
    style_weight: float = 500.0
    style_layer_exp: float = 1.0  # style layer k gets exp^k, normalised to sum 1
    tv_weight: float = 100.0

    def content_layer_weights(self) -> dict[str, float]:
        return {"relu4_2": self.content_blend, "relu5_2": 1.0 - self.content_blend}

    def style_layer_weights(self) -> dict[str, float]:
        """w_k = exp^k / sum_j exp^j over relu1_1..relu5_1."""
        raw = [self.style_layer_exp**k for k in range(len(STYLE_LAYERS))]
        return {name: w / sum(raw) for name, w in zip(STYLE_LAYERS, raw, strict=True)}

    def read_layers(self) -> list[str]:
        """Layers whose loss weight is non-zero: the only ones the network must compute."""
        layers = []
        if self.content_weight != 0:
            layers += [n for n, w in self.content_layer_weights().items() if w != 0]
        if self.style_weight != 0:
            layers += [n for n, w in self.style_layer_weights().items() if w != 0]
        return layers


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def gram(features: torch.Tensor) -> torch.Tensor:
    """G = F^T F / (H * W * C) with F the [H*W, C] feature matrix; [B, C, C], float32 (or float64).

    F is read as a view in whichever layout the features have (NCHW: [C, HW] rows; channels_last:
    [HW, C]), so neither direction copies the activations, and the backward uses G's symmetry.
    """
    b, c, h, w = features.shape
    features = _at_least_fp32(features)
    if not features.is_contiguous() and features.is_contiguous(memory_format=torch.channels_last):
        return _SymmetricGram.apply(features.permute(0, 2, 3, 1).reshape(b, h * w, c), c * h * w, False)
    return _SymmetricGram.apply(features.reshape(b, c, h * w), c * h * w, True)


class _SymmetricGram(torch.autograd.Function):
    """G = X X^T / n for X [B, C, N] (``rows``), or X^T X / n for X [B, N, C].

    Autograd's backward of a product of X with itself is two batched matmuls (one per operand); as G is
    symmetric they add up to one: dX = ((dG + dG^T) / n) X (or X (dG + dG^T) / n), a third of the Gram's
    cost saved per style layer and step. Dividing the C x C matrix instead of the [C, HW] result saves a pass
    over the activation and an activation-sized buffer (the backward's peak). The forward is a plain bmm.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int, rows: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.n, ctx.rows = n, rows
        return (torch.bmm(x, x.transpose(1, 2)) if rows else torch.bmm(x.transpose(1, 2), x)) / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        sym = (grad + grad.transpose(1, 2)) / ctx.n  # 1/n on the C x C matrix, not on the activation-sized result
        return (torch.bmm(sym, x) if ctx.rows else torch.bmm(x, sym)), None, None


def mean_squared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean((a - b)^2) over every axis but the batch: upstream's 2 * l2_loss(a - b) / size; ``b`` is a target
    (no gradient)."""
    return _MeanSquared.apply(_at_least_fp32(a), _at_least_fp32(b))


class _MeanSquared(torch.autograd.Function):
    """mean((a - b)^2) per sample, with the gradient d * (2 g / n) for d = a - b written out.

    It is what autograd computes for ``(a - b).pow(2).mean()``, bit for bit (the factor 2 is exact), but
    autograd's chain multiplies an expanded [B, ...] gradient into a channels-last ``d``, a slow strided
    loop (4 ms per step on relu4_2 at 256 px), and the mean over a flattened channels-last tensor copies it
    in both passes. The reduction runs over the axes in memory order instead of flattening.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = a - b
        ctx.save_for_backward(d)
        return d.pow(2).mean(dim=tuple(range(1, d.dim())))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (d,) = ctx.saved_tensors
        scale = (grad / d[0].numel() * 2).view(-1, *[1] * (d.dim() - 1))
        return d * scale, None


def style_distances(feature: torch.Tensor, target_grams: Sequence[torch.Tensor]) -> torch.Tensor:
    """[len(target_grams), B]: mean((G - A_i)^2) of the feature's Gram G against each style image's Gram A_i."""
    g = gram(feature)
    return torch.stack([mean_squared(g, target) for target in target_grams])


def content_loss(
    distances: Mapping[str, torch.Tensor], layer_weights: Mapping[str, float], content_weight: float
) -> torch.Tensor:
    """content = cw * sum_l w_l * mean((F_l - P_l)^2), over layers with w_l != 0; ``distances[l]`` is
    mean((F_l - P_l)^2) ([B], :func:`mean_squared`), computed where the layer's activation is (the network's
    ``reduce``), so a checkpointed segment keeps only this number."""
    terms = [w * distances[n] for n, w in layer_weights.items() if w != 0]
    return content_weight * torch.stack(terms).sum(dim=0)


def style_loss(
    distances: Mapping[str, torch.Tensor],
    blend_weights: Sequence[float],
    layer_weights: Mapping[str, float],
    style_weight: float,
) -> torch.Tensor:
    """style = sw * sum_i blend_i * sum_l w_l * mean((G_l - A_il)^2), A_il the Gram of style image i;
    ``distances[l]`` [S, B] is :func:`style_distances` of layer l."""
    layers = [n for n, w in layer_weights.items() if w != 0]
    per_style = [
        blend * torch.stack([layer_weights[n] * distances[n][i] for n in layers]).sum(0)
        for i, blend in enumerate(blend_weights)
    ]
    return style_weight * torch.stack(per_style).sum(dim=0)


def tv_loss(image: torch.Tensor, tv_weight: float) -> torch.Tensor:
    """tv = tvw * (mean(dy^2) + mean(dx^2)) over the 3-channel image [B, 3, H, W]."""
    dy = image[:, :, 1:, :] - image[:, :, :-1, :]
    dx = image[:, :, :, 1:] - image[:, :, :, :-1]
    return tv_weight * (dy.pow(2).flatten(1).mean(dim=1) + dx.pow(2).flatten(1).mean(dim=1))
