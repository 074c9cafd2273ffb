"""Analytic work of one iteration: the FLOPs of the convolutions actually run, from the network's shape walk."""

from __future__ import annotations

from collections.abc import Sequence

from ablation.engine.network import LayerShape, layer_shapes


def conv_plan(arch: str, last_layer: str, height: int, width: int, ceil_pool: bool) -> list[LayerShape]:
    """Every conv run up to ``last_layer`` for a ``height`` x ``width`` input, with its output shape."""
    return [s for s in layer_shapes(arch, last_layer, height, width, ceil_pool) if s.name.startswith("conv")]


def forward_gflop(conv: LayerShape) -> float:
    """2 * 9 * C_in * C_out * H * W: a multiply and an add per 3x3 weight per output pixel."""
    return 2 * 9 * conv.in_channels * conv.channels * conv.height * conv.width / 1e9


def iteration_gflop(plan: Sequence[LayerShape], backward_through: str, weight_grads: bool) -> float:
    """Conv GFLOP of one Adam iteration: every forward in ``plan``; for convs up to ``backward_through``
    (the deepest layer a loss reads) the input gradient (as many FLOPs as the forward), and the weight
    gradient too when parameters require grad. Convs past it get no gradient: nothing reads them."""
    total, backward = 0.0, True
    for conv in plan:
        total += forward_gflop(conv) * (1 + (1 + weight_grads) * backward)
        if conv.name.replace("conv", "relu") == backward_through:
            backward = False
    return total
