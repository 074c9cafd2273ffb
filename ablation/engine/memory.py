"""Will the transfer fit? Its memory from the image sizes, counted as autograd holds it, before anything is allocated.

One step of the loop keeps, until its backward pass, what each operation saves for it (:func:`saved_bytes`):
a conv its input, an activation its output, a max pool its input and int64 indices (none in a recomputed
stage of a ReLU network: ``network.LeanReluMaxPool``), a Gram its input (a float32 copy under bf16), the
content loss the difference to its target, TV the image's two differences; the activations are 2 bytes under
bf16 autocast, else 4. With activation checkpointing (``run.activation_checkpointing``) the leading stages keep
only their inputs and are recomputed one at a time in the backward pass (the fewest that give the lowest peak:
:func:`recomputed_stages`). The backward pass adds its working set: the gradient of the stage's largest
activation (measured: what it makes beyond that is freed as fast, as each node frees what it saved), and where
the convolutions run on torch's reference path (bf16 on a CPU without native bf16) the im2col columns of the
stage's largest conv input, 9 x its size, which that path's backward allocates.

Around the loop: the image, its gradient, Adam's two moments, the best image and Adam's temporaries (7
image-sized tensors per seed), the targets (content activations, Grams), the targets' own pass (content and
style through the network without gradients: a layer's input and output and what is kept), the weights
(loaded, then copied into the network; a bf16 copy under autocast) and what the runtime adds on top of the
tensors (``RUNTIME_BYTES``, plus ``CHECKPOINTING_RUNTIME_BYTES`` with checkpointing; measured once per device
type). What the process held before (the interpreter, torch, MLflow) is not counted: the free memory the
estimate is compared with has it taken already.
``python -m ablation.bench --memory`` compares the estimate with the measured peak.

The check refuses a size that does not fit with the widths that would, with and without checkpointing, and
resolves ``images.width=max`` and ``run.activation_checkpointing=auto`` (:func:`fit`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ablation.engine.backends import native_bf16, resolve_options
from ablation.engine.errors import UserError
from ablation.engine.images import content_size, image_size_wh, style_size
from ablation.engine.inputs import resolve_image
from ablation.engine.losses import LossWeights
from ablation.engine.network import (
    MIN_IMAGE_SIDE_PX,
    LayerShape,
    NetworkSpec,
    conv_shapes,
    layer_shapes,
    stage_bounds,
)
from ablation.engine.plan import RunSpec

FLOAT_BYTES = 4
INDEX_BYTES = 8
#: Image-sized float32 tensors per seed around the loop: the image, its gradient, Adam's two moments, the best
#: image, and Adam's two temporaries in its update.
IMAGE_COPIES = 7
#: What the runtime holds beyond the tensors during the transfer (oneDNN's kernels, scratch and primitive cache,
#: allocator slack), per device type: the measured peak less the estimate's other parts was 115-311 MiB (median
#: 206) at 512 and 1024 px without checkpointing, fp32 and bf16 (``python -m ablation.bench --memory --iters 2``,
#: 2-core Xeon with AVX-512, torch 2.14.1). It was 360 while torch's Adam imported ``torch._dynamo`` during the
#: run (the engine's Adam no longer does), and 280 before that, while every process imported Optuna and
#: scikit-learn first: the transfer reused the heap they had freed. On CUDA the allocator's peak counts tensors
#: only; cuDNN's workspace is taken from what the device reports free. Not yet measured there, so 0, and
#: ``SAFETY`` covers it. The share moves with the machine's load, and not one way: a 384 px run peaked at
#: 1,037 MiB on a quiet CPU and at 956-968 MiB beside three busy loops, a checkpointed one at 1,093 and 1,130.
#: 170 rather than the median 206 centres those four within +-12% (and moves the 512-2048 px rows by 1-3%).
RUNTIME_BYTES = {"cpu": 170 * 2**20}
#: What checkpointing adds to it: ``torch.utils.checkpoint`` imports ``torch._dynamo`` (its modules and tables) on
#: its first call. The checkpointed rows of the same runs gave 381-509 MiB (median 420) for the two together.
CHECKPOINTING_RUNTIME_BYTES = {"cpu": 210 * 2**20}
#: Free memory a run leaves unused, so that the estimate's error and other processes do not tip it over.
SAFETY = 0.9
#: ``images.width=max`` searches no wider than this (a 16k-pixel-wide content image: no device fits more).
MAX_SEARCH_WIDTH = 16384

log = logging.getLogger(__name__)


class MemoryEstimateError(UserError):
    """The run would need more memory than the device has; the message says what size would fit."""


@dataclass(frozen=True)
class Workload:
    """What the memory of one transfer depends on."""

    network: NetworkSpec
    last_layer: str
    loss: LossWeights
    precision: str
    channels_last: bool
    content_hw: tuple[int, int]
    styles_hw: tuple[tuple[int, int], ...]
    batch: int = 1
    checkpointing: bool = False
    #: The convolutions run on torch's reference path (im2col and a matmul): bf16 on a CPU without native bf16.
    #: Its backward holds each conv input's columns, [9 x C_in, H x W], beside the gradients: measured at 512 px
    #: on a 2-core AMD EPYC (AVX2), the peak was 280 MiB over the estimate without them with checkpointing and 93
    #: over it without; the first stage's columns are 288 MiB there.
    im2col: bool = False


@dataclass(frozen=True)
class Estimate:
    """The estimate's parts in bytes; ``total_bytes`` is the peak: the weights, then the larger of the targets'
    pass and the loop (targets, image state, what autograd keeps, the backward's working set), plus the runtime."""

    weights: int
    targets: int
    targets_pass: int
    image_state: int
    saved: int
    backward: int
    runtime: int

    @property
    def loop_bytes(self) -> int:
        return self.targets + self.image_state + self.saved + self.backward

    @property
    def total_bytes(self) -> int:
        return self.weights + max(self.targets_pass, self.loop_bytes) + self.runtime


def _activation_bytes(precision: str) -> int:
    return 2 if precision == "bf16" else FLOAT_BYTES


def _loss_layers(loss: LossWeights) -> tuple[set[str], set[str]]:
    content = {n for n, w in loss.content_layer_weights().items() if w and loss.content_weight}
    style = {n for n, w in loss.style_layer_weights().items() if w and loss.style_weight}
    return content, style


def saved_bytes(work: Workload, stage: tuple[int, int] | None = None, lean: bool = False) -> int:
    """What autograd keeps of one step's forward pass for the backward (module docstring), for the whole network
    or for the layers ``[lo, hi)`` of one stage (its input excluded), for ``work.batch`` images; ``lean``: the
    stage is recomputed, its max pools keep no indices where a ReLU precedes them."""
    shapes = layer_shapes(work.network.arch, work.last_layer, *work.content_hw)
    size = _activation_bytes(work.precision)
    content, style = _loss_layers(work.loss)
    lo, hi = stage or (0, len(shapes))
    kept: set[int] = set()  # layer indices whose output is held; -1 is the network's input
    extra = 0
    for i in range(lo, hi):
        layer = shapes[i]
        kind = layer.name.rstrip("_0123456789")
        if kind == "conv":
            kept.add(i - 1)  # its input
        elif kind == "relu":
            kept.add(i)  # every activation: its output (leaky ReLU runs in place, so it keeps its result too)
        elif kind == "pool" and work.network.pooling == "max":
            kept.add(i - 1)
            indices = not (lean and work.network.activation == "relu")  # else network.LeanReluMaxPool
            extra += INDEX_BYTES * layer.elements if indices else 0
        if layer.name in content:
            extra += FLOAT_BYTES * layer.elements  # F - P
    for i in range(lo, hi):  # a Gram's input: shared with a held activation in float32, else its own
        if shapes[i].name in style and (work.precision == "bf16" or i not in kept):
            extra += FLOAT_BYTES * shapes[i].elements
    held = sum(size * shapes[i].elements for i in kept if i >= lo)
    if stage is None or lo == 0:  # the network's input: autocast's bf16 copy, the channels_last copy, or the image
        image = 3 * work.content_hw[0] * work.content_hw[1]
        held += 2 * image if work.precision == "bf16" else FLOAT_BYTES * image if work.channels_last else 0
    if stage is None:
        held += tv_bytes(work.content_hw)
    return work.batch * (held + extra)


def tv_bytes(hw: tuple[int, int]) -> int:
    """TV's two differences of one image: [3, H-1, W] and [3, H, W-1] in float32."""
    h, w = hw
    return FLOAT_BYTES * 3 * ((h - 1) * w + h * (w - 1))


def stages(work: Workload) -> list[tuple[int, int]]:
    """[lo, hi) of each stage, as the checkpointed network runs them."""
    return stage_bounds([layer.name for layer in layer_shapes(work.network.arch, work.last_layer, 1, 1)])


def _working_elements(work: Workload, shapes: list[LayerShape], stage: tuple[int, int]) -> int:
    """Elements of one stage's backward working set: the gradient of its largest activation, and on torch's
    reference path the largest im2col buffer of its convs, 9 x a conv's input."""
    largest = max(layer.elements for layer in shapes[stage[0] : stage[1]])
    if not work.im2col:
        return largest
    image = 3 * work.content_hw[0] * work.content_hw[1]
    convs = [i for i in range(*stage) if shapes[i].name.startswith("conv")]
    return largest + max(9 * (shapes[i - 1].elements if i else image) for i in convs)


def loop_peak(work: Workload, recomputed: int) -> tuple[int, int]:
    """(kept, backward working set) of one step at its peak, the leading ``recomputed`` stages recomputed.
    Without checkpointing everything is kept as the backward begins, and the first stage's activations with the
    largest working set at its end. With it, each stage's backward (last to first) holds the stages' inputs,
    what the stages before it that are not recomputed keep, and its own activations with its working set."""
    size, parts = _activation_bytes(work.precision), stages(work)
    shapes = layer_shapes(work.network.arch, work.last_layer, *work.content_hw)
    # a gradient has its activation's dtype, and so do the reference path's columns
    working = [size * work.batch * _working_elements(work, shapes, stage) for stage in parts]
    if not recomputed:
        first = saved_bytes(work, parts[0]) + work.batch * tv_bytes(work.content_hw)
        return max((saved_bytes(work), 0), (first, working[0]), key=sum)
    # the stages' inputs: the network's input (counted with the first stage, whose conv saves it too), the
    # pools' outputs, and TV's differences
    inputs = sum(size * work.batch * shapes[hi - 1].elements for _, hi in parts[:-1])
    inputs += work.batch * tv_bytes(work.content_hw)
    saved = [saved_bytes(work, stage, lean=k < recomputed) for k, stage in enumerate(parts)]
    return max(((inputs + sum(saved[recomputed:j]) + saved[j], working[j]) for j in range(len(parts))), key=sum)


def recomputed_stages(work: Workload) -> int:
    """The fewest leading stages whose recomputation gives the peak of recomputing them all: the deep stages'
    activations are small, so keeping them costs no memory at the peak (the first stage's backward) and saves
    their second forward (at 2048 px VGG19 recomputes 2 of 5 stages, a quarter of the forward's FLOPs)."""
    n = len(stages(work))
    lowest = sum(loop_peak(work, n))
    return next(k for k in range(1, n + 1) if sum(loop_peak(work, k)) <= lowest)


def loop_bytes(work: Workload) -> tuple[int, int]:
    """(kept, backward working set) of one step at its peak (:func:`loop_peak`), with the stages checkpointing
    recomputes (:func:`recomputed_stages`)."""
    return loop_peak(work, recomputed_stages(work) if work.checkpointing else 0)


def _no_grad_pass(work: Workload, hw: tuple[int, int], kept_layers: set[str]) -> int:
    """The peak of one image through the network without gradients: a layer's input and output, and the
    activations kept so far (the content target's layers; a style keeps only its Grams)."""
    peak, kept, before = 0, 0, 3 * hw[0] * hw[1]
    for layer in layer_shapes(work.network.arch, work.last_layer, *hw):
        peak = max(peak, FLOAT_BYTES * (kept + before + layer.elements))
        kept += layer.elements if layer.name in kept_layers else 0
        before = layer.elements
    return peak


def estimate(work: Workload, device_type: str = "cpu") -> Estimate:
    """The peak memory of one transfer, in parts (module docstring)."""
    content, style = _loss_layers(work.loss)
    shapes = {layer.name: layer for layer in layer_shapes(work.network.arch, work.last_layer, *work.content_hw)}
    params = sum(9 * i * o + o for _, i, o in conv_shapes(work.network.arch))
    used = sum(9 * i * o + o for n, i, o in conv_shapes(work.network.arch) if n in shapes)
    kernels = sum(9 * i * o for n, i, o in conv_shapes(work.network.arch) if n in shapes)
    weights = FLOAT_BYTES * (params + used) + (2 * kernels if work.precision == "bf16" else 0)  # autocast's copies
    grams = FLOAT_BYTES * sum(shapes[n].channels ** 2 for n in style) * len(work.styles_hw)
    targets = FLOAT_BYTES * sum(shapes[n].elements for n in content) + grams
    images = FLOAT_BYTES * 3 * sum(h * w for h, w in (work.content_hw, *work.styles_hw))
    passes = [_no_grad_pass(work, work.content_hw, content)] + [
        targets + _no_grad_pass(work, hw, set()) for hw in work.styles_hw
    ]
    image_state = IMAGE_COPIES * FLOAT_BYTES * 3 * work.content_hw[0] * work.content_hw[1] * work.batch
    kept, backward = loop_bytes(work)
    saved = kept + grams * work.batch  # + each Gram's difference to its target
    runtime = RUNTIME_BYTES.get(device_type, 0) + (
        CHECKPOINTING_RUNTIME_BYTES.get(device_type, 0) if work.checkpointing else 0
    )
    return Estimate(weights, images + targets, images + max(passes), image_state, saved, backward, runtime)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: on CUDA the driver's free memory plus what torch's caching allocator holds
    unused, else RAM available to this process (cgroup limit included, as under SLURM or Docker). None when it
    cannot be told (MPS shares RAM: RAM is used).

    The allocator keeps freed blocks, cuDNN's tuning workspaces among them (on an H200 they took 132,517 MiB tuning
    1024 px convs), and the driver counts them as used. This process gets them back (the allocator frees its cache
    and retries before it reports out of memory), so the next job of a sweep run in the same process sees the
    room the first one had, rather than a fraction that would turn checkpointing on or refuse the run."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
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


def planned_sizes(spec: RunSpec, width: int | None = None) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(h, w) of the content and of each style after upstream's resizing at ``width`` (default: the run's finest,
    ``images.width`` or the last of ``run.scales``), from the files' headers."""
    images = spec.images
    width = spec.stages()[-1][0] if width is None else width
    cw, ch = content_size(image_size_wh(resolve_image(images.content), images.exif_transpose), width)
    styles = []
    for name, scale in zip(images.styles, images.style_scales, strict=True):
        sw, sh = style_size(image_size_wh(resolve_image(name), images.exif_transpose), cw, scale)
        styles.append((sh, sw))
    return (ch, cw), styles


def workload(spec: RunSpec, device: torch.device, checkpointing: bool, width: int | None = None) -> Workload:
    """The run's workload at its finest width (or ``width``), its largest batch of seeds at once."""
    content_hw, styles_hw = planned_sizes(spec, width)
    batch = max(len(seeds) for seeds in spec.seed_batches(device.type))
    channels_last = resolve_options(spec.engine, device).channels_last is True
    im2col = spec.engine.precision == "bf16" and device.type == "cpu" and not native_bf16(device)
    return Workload(
        spec.network, spec.last_layer, spec.loss, spec.engine.precision, channels_last,
        content_hw, tuple(styles_hw), batch, checkpointing, im2col,
    )  # fmt: skip


def _fits(spec: RunSpec, device: torch.device, room: int, checkpointing: bool, width: int | None = None) -> bool:
    return estimate(workload(spec, device, checkpointing, width), device.type).total_bytes <= room


def largest_width(spec: RunSpec, device: torch.device, room: int, checkpointing: bool) -> int | None:
    """The widest content width whose estimate fits in ``room`` bytes (bisection: memory grows with width);
    None when not even the network's smallest input fits."""
    lo, hi = MIN_IMAGE_SIDE_PX, MAX_SEARCH_WIDTH
    if not _fits(spec, device, room, checkpointing, lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _fits(spec, device, room, checkpointing, mid) else (lo, mid - 1)
    return lo


def _modes(spec: RunSpec) -> tuple[bool, ...]:
    """The checkpointing settings a run may use: its own, or both for ``auto`` (the lean one last)."""
    return (False, True) if spec.engine.checkpointing == "auto" else (spec.engine.checkpointing is True,)


def fit(spec: RunSpec, device: torch.device, check: bool = True) -> RunSpec:
    """The run as it will run on ``device``: ``images.width=max`` resolved to the widest content that fits its
    free memory (times ``SAFETY``), ``run.activation_checkpointing=auto`` to on only where the run does not fit
    without it and fits with it. With ``check``, a run that does not fit is refused, naming the widths that fit
    with and without checkpointing (and one seed after another, for a batch). Free memory that cannot be told
    (MPS) leaves a fixed width unchecked, ``auto`` off, and ``max`` refused."""
    free = available_bytes(device)
    room = None if free is None else int(free * SAFETY)
    modes = _modes(spec)
    if spec.images.width == "max":
        if room is None:
            raise MemoryEstimateError(f"images.width=max: free memory on {device} cannot be told; give a width")
        width = largest_width(spec, device, room, modes[-1])
        if width is None:
            raise MemoryEstimateError(
                f"images.width=max: not even a {MIN_IMAGE_SIDE_PX} px wide transfer fits the "
                f"{free / 2**30:.1f} GiB free on {device}"
            )
        spec = replace(spec, images=replace(spec.images, width=width))
        log.warning("images.width=max: %d px, the widest that fits %.1f GiB free on %s", width, free / 2**30, device)
    chosen = next((m for m in modes if room is not None and _fits(spec, device, room, m)), modes[0])
    recomputed = recomputed_stages(workload(spec, device, True)) if chosen else None
    spec = replace(spec, engine=replace(spec.engine, checkpointing=chosen, recomputed_stages=recomputed))
    if check and room is not None and not _fits(spec, device, room, chosen):
        raise MemoryEstimateError(refusal(spec, device, free, room))
    return spec


def refusal(spec: RunSpec, device: torch.device, free: int, room: int) -> str:
    """Why the run does not fit, and the widths that would, with and without checkpointing."""
    work = workload(spec, device, spec.engine.checkpointing is True)
    need = estimate(work, device.type).total_bytes
    seeds = f" of {work.batch} batched seeds (run.seeds={list(spec.seeds)})" if work.batch > 1 else ""
    one = replace(spec, batch_seeds=False)
    one_by_one = work.batch > 1 and any(_fits(one, device, room, m) for m in (False, True))
    widths = {m: largest_width(spec, device, room, m) for m in (False, True)}
    said = [f"images.width={w}{' with run.activation_checkpointing=true' if m else ''}" for m, w in widths.items() if w]
    ways = ["set run.batch_seeds=false (one seed after another)"] if one_by_one else []
    ways += ["use " + " or ".join(said) + " or less"] if said else []
    return (
        f"a {work.content_hw[1]}x{work.content_hw[0]} px transfer{seeds} (images.width={spec.images.width}) needs "
        f"about {need / 2**30:.1f} GiB on {device}, which has {free / 2**30:.1f} GiB free: "
        + (" or ".join(ways) or "no width fits")
        + " (or run.memory_check=false to try anyway)"
    )
