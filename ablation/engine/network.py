"""VGG feature extractor with upstream's layer names, built from data.

The architecture is a list of stages (convs per stage), as in torchvision's ``models/vgg.py``.
Layer names and their indices in torchvision's ``features`` (and in a MatConvNet ``layers`` array)
live here and nowhere else: index ``i`` of :func:`layer_names` is module ``features[i]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ablation.engine.errors import UserError

#: Number of 3x3 convolutions in each of the five stages.
ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
STAGE_CHANNELS = (64, 128, 256, 512, 512)
#: The choices a variant has (the config schema offers exactly these).
POOLINGS = ("max", "avg")
ACTIVATIONS = ("relu", "leaky_relu", "tanh")  # tanh: after every conv
FINAL_ACTIVATIONS = ("tanh",)
#: Smallest input side for which every stage still has at least one pixel through relu5_x.
MIN_IMAGE_SIDE_PX = 16

log = logging.getLogger(__name__)


def layer_names(arch: str) -> list[str]:
    """Upstream's names (conv1_1, relu1_1, ..., pool1, ...) in network order, with the last pool dropped.

    The order is torchvision's ``features`` order and MatConvNet's ``layers`` order.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}: choose one of {sorted(ARCHITECTURES)}")
    names: list[str] = []
    for stage, n_convs in enumerate(ARCHITECTURES[arch], start=1):
        for k in range(1, n_convs + 1):
            names += [f"conv{stage}_{k}", f"relu{stage}_{k}"]
        names.append(f"pool{stage}")
    return names[:-1]  # upstream (and every loss) stops at relu5_x; pool5 is never read


def activation_layers(arch: str) -> list[str]:
    """The layers whose activation a variant may replace (relu1_1 ... relu5_x), in network order."""
    return [name for name in layer_names(arch) if name.startswith("relu")]


def conv_shapes(arch: str) -> list[tuple[str, int, int]]:
    """(name, in_channels, out_channels) of every conv in network order."""
    shapes, in_ch = [], 3
    for stage, n_convs in enumerate(ARCHITECTURES[arch], start=1):
        out_ch = STAGE_CHANNELS[stage - 1]
        for k in range(1, n_convs + 1):
            shapes.append((f"conv{stage}_{k}", in_ch, out_ch))
            in_ch = out_ch
    return shapes


@dataclass(frozen=True)
class LayerShape:
    """One layer's output for one image: channels x height x width (and, for a conv, its input channels)."""

    name: str
    in_channels: int
    channels: int
    height: int
    width: int

    @property
    def elements(self) -> int:
        return self.channels * self.height * self.width


def layer_shapes(arch: str, last_layer: str, height: int, width: int, ceil_pool: bool = True) -> list[LayerShape]:
    """Every layer up to ``last_layer`` for a ``height`` x ``width`` input, with its output shape.

    The one shape walk: the memory estimate and the benchmark's FLOP count both read it. 3x3 convs with
    padding 1 keep the size; pools halve it, rounding up (TensorFlow 'SAME', this network) or down
    (``ceil_pool=False``: torchvision's default, which tutorials run).
    """
    names = layer_names(arch)
    if last_layer not in names:
        raise ValueError(f"{arch} has no layer {last_layer!r}")
    out_channels = {name: out for name, _, out in conv_shapes(arch)}
    shapes, channels, h, w = [], 3, height, width
    for name in names[: names.index(last_layer) + 1]:
        in_channels = channels
        if name.startswith("pool"):
            h, w = ((h + 1) // 2, (w + 1) // 2) if ceil_pool else (h // 2, w // 2)
        elif name.startswith("conv"):
            channels = out_channels[name]
        shapes.append(LayerShape(name, in_channels, channels, h, w))
    return shapes


@dataclass(frozen=True)
class NetworkSpec:
    """The knobs a variant turns: architecture, pooling, activation, and an optional final activation.

    ``final_activation`` replaces the activation of one named layer, ``final_layer``, which stays put whatever
    the loss weights read (the report's "tanh with the final layer" is ambiguous, so its place is a knob).
    Tanh after every conv is ``activation="tanh"``: the activation every layer gets.
    """

    arch: str = "vgg19"
    pooling: str = "max"  # max | avg
    activation: str = "relu"  # relu | leaky_relu | tanh
    slope: float = 0.2  # leaky_relu only; TensorFlow's tf.nn.leaky_relu default
    final_activation: str | None = None  # None | tanh: replaces the activation of final_layer
    final_layer: str = "relu5_1"  # one of activation_layers(arch)


class _ReluInPlace(torch.autograd.Function):
    """ReLU whose forward overwrites its input and whose backward masks the gradient it receives in place.

    ``nn.ReLU(inplace=True)`` does the first; its backward (``threshold_backward``) still allocates and writes a
    fresh activation-sized gradient. The gradient a ReLU receives here is a buffer made for it alone (the next
    conv's input gradient, a pool's or a loss's backward, or autograd's sum of them) that nothing reads after,
    so masking it in place gives the same numbers with one activation-sized allocation and write less per ReLU
    (``torch.profiler``, VGG19 at 256 px, after :meth:`VGGFeatures._run`'s reordering: ``threshold_backward``
    15.6 -> 7.2 ms per step). A gradient whose elements overlap (an expanded one) is masked into a new tensor."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x.relu_()
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        if grad.is_contiguous() or grad.is_contiguous(memory_format=torch.channels_last):
            return relu_backward_(grad, y)
        return torch.ops.aten.threshold_backward(grad, y, 0)


def relu_backward_(grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ReLU's backward written into ``grad`` (zero where the ReLU's output ``y`` is not positive), returned."""
    return torch.ops.aten.threshold_backward.grad_input(grad, y, 0, grad_input=grad)


class ReLU(nn.ReLU):
    """In-place ReLU with an in-place backward (:class:`_ReluInPlace`); an ``nn.ReLU`` to every check."""

    def __init__(self) -> None:
        super().__init__(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReluInPlace.apply(x)


def _activation(kind: str, slope: float) -> nn.Module:
    """In place where torch has it: a conv's output is read by nothing else (a conv saves its input, not its
    output), so the activation overwrites it instead of allocating and filling another activation-sized tensor;
    the backward then reads the activation's output, which the next layer keeps anyway."""
    if kind == "relu":
        return ReLU()
    if kind == "leaky_relu":
        return nn.LeakyReLU(slope, inplace=True)
    if kind == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {kind!r}: choose one of {', '.join(ACTIVATIONS)}")


def _pool(kind: str) -> nn.Module:
    # TensorFlow 'SAME' 2x2/2 pooling == ceil_mode with no padding; avg divides by in-image cells only.
    if kind == "max":
        return nn.MaxPool2d(2, 2, ceil_mode=True)
    if kind == "avg":
        return nn.AvgPool2d(2, 2, ceil_mode=True)
    raise ValueError(f"unknown pooling {kind!r}: choose max or avg")


#: The lean ReLU + max pool's backward works on pieces of about this many bytes of the activation (whole when
#: smaller), so that recomputing the indices adds little beside the backward's peak.
LEAN_POOL_PIECE_BYTES = 64 * 2**20
_POOL_ARGS = ([2, 2], [2, 2], [0, 0], [1, 1], True)  # 2x2/2, no padding, ceil mode: _pool's max pool


def _pieces(y: torch.Tensor) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """Index tuples (activation, pooled) of the pieces a lean pool's backward works on: the whole tensor when
    small, else whole channels (NCHW) or an even number of whole rows (NHWC, so that no 2x2 window is cut),
    the axis along which a piece is one block of memory."""
    n, full = -(-y.numel() * y.element_size() // LEAN_POOL_PIECE_BYTES), slice(None)
    if n <= 1:
        return [((), ())]
    if y.is_contiguous():
        step = -(-y.shape[1] // n)
        return [((full, slice(c, c + step)),) * 2 for c in range(0, y.shape[1], step)]
    step = 2 * -(-y.shape[2] // (2 * n))
    return [
        ((full, full, slice(r, r + step)), (full, full, slice(r // 2, (r + step) // 2)))
        for r in range(0, y.shape[2], step)
    ]


class LeanReluMaxPool(torch.autograd.Function):
    """ReLU (in place) then 2x2/2 max pooling, for recomputed stages: returns (activation, pooled).

    Autograd would keep the pool's int64 indices (half an activation's bytes in float32) and the ReLU's backward
    would allocate a fresh activation-sized gradient beside the one the pool's backward made: at 2048 px the
    first stage's backward peaked at four 1 GiB tensors, the run's peak. Here the indices are recomputed from
    the kept activation in the backward pass, piece by piece (:func:`_pieces`; the same kernel on the same
    values: the same indices), and the ReLU's mask is applied to the pool's gradient in place: the same
    numbers, one activation-sized tensor less at the peak. The pool's backward writes each piece's gradient
    straight into the one returned (``grad_input=``), not into a new tensor copied there: 25-39% less time for
    this backward in pieces (64 channels at 1024 and 2048 px, 128 at 512, NHWC)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        x.relu_()
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x, nn.functional.max_pool2d(x.detach(), 2, 2, ceil_mode=True)  # detached: no indices made

    @staticmethod
    def backward(ctx: Any, grad_activation: torch.Tensor | None, grad_pooled: torch.Tensor | None) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        grad = torch.empty_like(y)
        for at, pooled_at in _pieces(y):
            part, piece = y[at], grad[at]  # each piece is one block of memory: the pool's backward writes into it
            if grad_pooled is None:
                piece.zero_()
            else:
                _, indices = torch.ops.aten.max_pool2d_with_indices(part, *_POOL_ARGS)
                torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
                    grad_pooled[pooled_at], part, *_POOL_ARGS, indices, grad_input=piece
                )
            if grad_activation is not None:  # the activation is read by a loss too
                piece.add_(grad_activation[at])
            relu_backward_(piece, part)
        return grad


def deepest(arch: str, layers: Iterable[str]) -> str:
    """The layer, of ``layers``, that comes last in the network."""
    order = {name: i for i, name in enumerate(layer_names(arch))}
    missing = [name for name in layers if name not in order]
    if missing:
        raise ValueError(f"{arch} has no layer {missing[0]!r}")
    return max(layers, key=order.__getitem__)


def check_final_layer(spec: NetworkSpec) -> None:
    """``variant.final_layer`` must be an activation of the variant's architecture; refused in one line."""
    choices = activation_layers(spec.arch)
    if spec.final_layer not in choices:
        raise UserError(
            f"variant.final_layer={spec.final_layer!r}: {spec.arch} has no such layer; "
            f"choose one of {', '.join(choices)}"
        )


def final_activation_layer(spec: NetworkSpec, last_layer: str) -> str | None:
    """Where ``spec.final_activation`` goes in a network truncated after ``last_layer``; None when nowhere.

    A final layer deeper than ``last_layer`` is allowed (no loss reads it, so it cannot change a number) and
    logged as a warning, since a variant that asks for it is then the same as one without it.
    """
    check_final_layer(spec)
    if spec.final_activation is None:
        return None
    if spec.final_layer not in layer_names(spec.arch)[: layer_names(spec.arch).index(last_layer) + 1]:
        log.warning(
            "%s at %s changes nothing: the network stops at %s, the deepest layer a loss reads",
            spec.final_activation,
            spec.final_layer,
            last_layer,
        )
        return None
    return spec.final_layer


class LoadedConv2d(nn.Conv2d):
    """A conv whose weights are copied in as soon as it is built: nn.Conv2d's own random initialisation
    (``kaiming_uniform_`` of VGG19's 20 M weights) took 0.13 s of each network built, and a job builds two (the
    run's and the judge's), all of it overwritten. ``device="meta"`` would skip it too, but its first use in a
    process costs 0.7 s."""

    def reset_parameters(self) -> None:
        """Leave the weights uninitialised: :class:`VGGFeatures` copies every one in."""


class VGGFeatures(nn.Module):
    """A frozen VGG conv stack truncated after ``last_layer``, returning the requested activations.

    ``convs`` holds (weight [out, in, 3, 3], bias [out]) for every conv of ``spec.arch`` in order;
    only those up to ``last_layer`` are used.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        convs: Sequence[tuple[torch.Tensor, torch.Tensor]],
        last_layer: str,
    ) -> None:
        super().__init__()
        names = layer_names(spec.arch)
        if last_layer not in names:
            raise ValueError(f"{spec.arch} has no layer {last_layer!r}")
        self.spec = spec
        self.last_layer = last_layer
        self.names = names[: names.index(last_layer) + 1]
        final_relu = final_activation_layer(spec, last_layer)
        shapes = {name: (i, o) for name, i, o in conv_shapes(spec.arch)}
        conv_iter = iter(convs)
        layers: list[nn.Module] = []
        for name in self.names:
            if name.startswith("conv"):
                weight, bias = next(conv_iter)
                in_ch, out_ch = shapes[name]
                if tuple(weight.shape) != (out_ch, in_ch, 3, 3) or tuple(bias.shape) != (out_ch,):
                    raise ValueError(
                        f"weights for {name} have shape {tuple(weight.shape)} / {tuple(bias.shape)}, "
                        f"{spec.arch} needs {(out_ch, in_ch, 3, 3)} / {(out_ch,)}"
                    )
                conv = LoadedConv2d(in_ch, out_ch, 3, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(weight)
                    conv.bias.copy_(bias)
                layers.append(conv)
            elif name.startswith("relu"):
                kind = spec.final_activation if name == final_relu else spec.activation
                layers.append(_activation(kind, spec.slope))
            else:
                layers.append(_pool(spec.pooling))
        self.layers = nn.ModuleList(layers)
        #: ReLUs a max pool follows: checkpointed stages run each pair as one lean step (LeanReluMaxPool)
        self.relu_before_max_pool = {
            i
            for i in range(len(layers) - 1)
            if isinstance(layers[i], nn.ReLU) and isinstance(layers[i + 1], nn.MaxPool2d)
        }
        self.requires_grad_(False)
        self.eval()

    @property
    def final_layer_activation(self) -> nn.Module:
        return self.layers[-1]

    def forward(self, image: torch.Tensor, wanted: Iterable[str]) -> dict[str, torch.Tensor]:
        """Activations of the ``wanted`` layers for ``image`` [B, 3, H, W] in pixel space."""
        return self.reduce(image, dict.fromkeys(wanted, _identity))

    def reduce(
        self, image: torch.Tensor, reducers: Mapping[str, Callable[[torch.Tensor], Any]], recomputed: int = 0
    ) -> dict[str, Any]:
        """``reducers[name](activation)`` for each named layer, computed where the activation is made and
        outside autocast (losses stay in float32), for ``image`` [B, 3, H, W] in pixel space.

        ``recomputed``: the leading stages (their convs and activations, reductions and the pool after each) run
        as ``torch.utils.checkpoint`` segments, recomputed in the backward pass, so autograd keeps only their
        inputs and the reductions' outputs between the passes instead of every activation, and a ReLU with the
        max pool after it runs as one lean step (:class:`LeanReluMaxPool`). The numbers are the same; the price
        is one more forward of those stages per step (``memory.recomputed_stages``: the fewest that give the
        lowest peak, since the deep stages' activations are small).
        """
        out: dict[str, Any] = {}
        x = image
        for k, (lo, hi) in enumerate(self.stages()):
            lean = k < recomputed
            run = partial(self._run, lo, hi, reducers, lean)
            x, reduced = checkpoint(run, x, use_reentrant=False) if lean else run(x)
            out.update(reduced)
        return out

    def stages(self) -> list[tuple[int, int]]:
        """[lo, hi) layer indices of each stage (:func:`stage_bounds`)."""
        return stage_bounds(self.names)

    def _run(
        self,
        lo: int,
        hi: int,
        reducers: Mapping[str, Callable[[torch.Tensor], Any]],
        lean: bool,
        x: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Layers ``[lo, hi)`` on ``x``: (their output, each reducer's result).

        A ReLU that no reducer reads and a max pool follows runs after the pool instead: max pooling commutes
        with ReLU (ReLU keeps the order of positive values and maps the rest to 0), so the output is the same,
        and so is every gradient: where a window's maximum is positive both orders pick the same element, where
        it is not both give the window zero. The ReLU's forward and backward then touch a quarter of the
        elements (``torch.profiler``, VGG19 at 256 px: ReLU's forward 7.2 -> 5.4 ms per step, its backward 19.0 ->
        15.6 ms)."""
        reduced, pooled, deferred = {}, None, None
        for i, (name, layer) in enumerate(zip(self.names[lo:hi], self.layers[lo:hi], strict=True), start=lo):
            if lean and i in self.relu_before_max_pool:
                x, pooled = LeanReluMaxPool.apply(x)
            elif lean and i - 1 in self.relu_before_max_pool:
                x = pooled
            elif i in self.relu_before_max_pool and name not in reducers:
                deferred = layer  # pool first, then this ReLU on a quarter of the elements (_run's docstring)
                continue
            else:
                x = layer(x)
                if deferred is not None:
                    x, deferred = deferred(x), None
            if name in reducers:
                with torch.autocast(x.device.type, enabled=False):
                    reduced[name] = reducers[name](x)
        return x, reduced


def stage_bounds(names: Sequence[str]) -> list[tuple[int, int]]:
    """[lo, hi) indices of each stage of a layer list: a stage ends after its pool (the last one at the list's end).
    The checkpointed segments, and the memory estimate's view of them."""
    ends = [i + 1 for i, name in enumerate(names) if name.startswith("pool")] + [len(names)]
    return [(lo, hi) for lo, hi in zip([0, *ends], ends, strict=False) if hi > lo]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
