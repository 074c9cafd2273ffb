"""What the machine can do: peaks of single kernels, this iteration's per-layer kernel limit, and memory."""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablation.engine.backends import configure_backends, native_bf16
from ablation.engine.hardware import describe, synchronize, timed
from ablation.engine.losses import gram
from ablation.engine.network import LayerShape, VGGFeatures, layer_shapes
from ablation.engine.transfer import EngineOptions
from ablation.engine.weights import torchvision_version


def best_seconds(fn: Callable[[], Any], device: torch.device, min_s: float) -> float:
    """Seconds per call of the fastest block of calls (:func:`ablation.engine.hardware.timed` for about
    ``min_s``): a limit is what the machine can do."""
    return min(timed(fn, device, min_s).times)


def matmul_peak_gflops(device: torch.device, n: int, min_s: float) -> float:
    """GF/s of an n x n fp32 matmul (2 n^3 FLOPs), IEEE fp32 (no TF32)."""
    configure_backends(EngineOptions(precision="fp32"), device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / 1e9 / best_seconds(lambda: a @ b, device, min_s)


def _autocast(options: EngineOptions, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if options.precision == "bf16" else nullcontext()


def conv_peak_gflops(device: torch.device, precision: str, channels: int, side: int, min_s: float) -> float:
    """GF/s of a 3x3 conv, C -> C channels on a side x side map (a VGG conv3_x at 256 px), forward only,
    the better of NCHW and NHWC. A batch of 8 on CUDA, which one map would leave partly idle. Emulated
    bf16 (no native support) only in NHWC: NCHW takes seconds per call there (7 s measured)."""
    batch = 8 if device.type == "cuda" else 1
    options = EngineOptions(precision=precision)
    emulated = precision == "bf16" and not native_bf16(device)
    if not emulated:  # (configure_backends warns about emulated bf16; the bench reports it in the peaks)
        configure_backends(options, device)
    best = 0.0
    for layout in [torch.channels_last] if emulated else [torch.contiguous_format, torch.channels_last]:
        x = torch.randn(batch, channels, side, side, device=device).contiguous(memory_format=layout)
        weight = torch.randn(channels, channels, 3, 3, device=device).contiguous(memory_format=layout)

        def conv(x: torch.Tensor = x, weight: torch.Tensor = weight) -> torch.Tensor:
            with _autocast(options, device):
                return F.conv2d(x, weight, padding=1)

        gflop = 2 * 9 * channels**2 * side**2 * batch / 1e9
        best = max(best, gflop / best_seconds(conv, device, min_s))
    return best


class KernelInputs:
    """N(0, 1) inputs of the limit's kernels in the options' layout, one tensor per shape and dtype, each a leaf
    that requires grad: kernels of the same shape read the same tensor, as input or as incoming gradient (as the
    iteration's next conv reads what the last one wrote), and nothing writes to it. Held for the whole case beside
    the engine, a limit at 1024 px keeps 0.8 GiB in fp32 (1.1 in bf16) instead of 3.2 (2.1) with two per kernel."""

    def __init__(self, options: EngineOptions, device: torch.device) -> None:
        self.options, self.device = options, device
        self.made: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def __call__(self, *shape: int, half: bool = False) -> torch.Tensor:
        """The tensor of ``shape``, in bf16 where the network runs in it and ``half`` asks for it."""
        dtype = torch.bfloat16 if half and self.options.precision == "bf16" else torch.float32
        if (shape, dtype) not in self.made:
            layout = torch.channels_last if self.options.channels_last and len(shape) == 4 else torch.contiguous_format
            made = torch.randn(*shape, device=self.device, dtype=dtype).contiguous(memory_format=layout)
            self.made[shape, dtype] = made.requires_grad_(True)
        return self.made[shape, dtype]


def _conv_step(conv: nn.Conv2d, shape: LayerShape, inputs: KernelInputs) -> Callable[[], Any]:
    """One conv at its own shape: forward and the input gradient (the weights are frozen, as in the engine)."""
    h, w, options = shape.height, shape.width, inputs.options
    x = inputs(1, shape.in_channels, h, w)
    grad = inputs(1, shape.channels, h, w, half=True)

    def step() -> Any:
        with _autocast(options, inputs.device):
            out = conv(x)
        return torch.autograd.grad(out, x, grad)

    return step


def _gram_step(shape: LayerShape, inputs: KernelInputs) -> Callable[[], Any]:
    """The engine's Gram of one style layer's features (in the network's dtype and layout), forward and backward."""
    features = inputs(1, shape.channels, shape.height, shape.width, half=True)
    grad = inputs(1, shape.channels, shape.channels)
    return lambda: torch.autograd.grad(gram(features), features, grad)


def kernel_steps(
    net: VGGFeatures, height: int, width: int, style_layers: list[str], inputs: KernelInputs
) -> dict[str, Callable[[], Any]]:
    """Each kernel of one iteration alone at its own shape, in the network's order: every conv of ``net`` (forward
    and input gradient) and the Gram of each style layer (forward and backward). Together they are the iteration's
    kernel limit on this machine: what the loop would take with no pooling, activations, losses, optimiser, copies
    or launches."""
    convs = {name: layer for name, layer in zip(net.names, net.layers, strict=True) if isinstance(layer, nn.Conv2d)}
    steps: dict[str, Callable[[], Any]] = {}
    for shape in layer_shapes(net.spec.arch, net.last_layer, height, width):
        if shape.name in convs:
            steps[shape.name] = _conv_step(convs[shape.name], shape, inputs)
        if shape.name in style_layers:
            steps[f"gram {shape.name}"] = _gram_step(shape, inputs)
    return steps


class LimitRunner:
    """The per-layer limit as a contender: ``chunk`` passes over :func:`kernel_steps`, each kernel once a pass, in
    the engine's precision and layout. Timed in the same rounds as the engine, so that the share of the limit
    compares two samples taken in the same state of the machine (a limit timed in a phase of its own read 0.89 to
    1.19 of the iteration on a shared 2-core host: more than the whole, at times)."""

    def __init__(
        self, net: VGGFeatures, height: int, width: int, style_layers: list[str], options: EngineOptions, chunk: int
    ) -> None:
        self.chunk, self.inputs = chunk, KernelInputs(options, next(net.parameters()).device)
        self.steps = list(kernel_steps(net, height, width, style_layers, self.inputs).values())

    def __call__(self) -> None:
        configure_backends(self.inputs.options, self.inputs.device)
        for _ in range(self.chunk):
            for step in self.steps:
                step()


def cpu_jiffies() -> tuple[int, int] | None:
    """(stolen, total) CPU time of every core since boot in jiffies (Linux's /proc/stat; None elsewhere). Stolen is
    what the hypervisor gave other guests while this one had work: on a shared virtual machine, the noise a timing
    cannot see from inside."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def stolen_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the CPU time between two :func:`cpu_jiffies` readings that other guests took."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _status_kib(field_name: str) -> int | None:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in lines if line.startswith(field_name + ":")), None)


def _reset_cpu_peak() -> bool:
    """Return freed heap to the OS (glibc ``malloc_trim``), so that a phase re-using it shows, then reset
    the process's peak resident set (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak memory of a phase (a contender's warm-up) above what was in use when it started, in MiB: the
    iteration's working memory. CUDA: ``max_memory_allocated`` (tensors only, exact). CPU: the peak resident
    set (VmHWM), allocator slack included, approximate; None where /proc cannot tell."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.start = torch.cuda.memory_allocated(device)
        else:
            self.start = _status_kib("VmRSS") * 1024 if _reset_cpu_peak() and _status_kib("VmRSS") else None

    def peak_mib(self) -> float | None:
        synchronize(self.device)
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        peak = _status_kib("VmHWM")
        return None if self.start is None or peak is None else (peak * 1024 - self.start) / 2**20


def tensors_mib(net: nn.Module, held: list[torch.Tensor]) -> float:
    """What a run holds throughout: the network's weights and ``held`` (targets, image, Adam's moments)."""
    tensors = [*net.parameters(), *held]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def machine(device: torch.device) -> dict[str, Any]:
    """What ran the bench: what a run records of its machine (``engine.hardware``: CPU model, usable cores,
    threads, GPU, driver, hostname, hardware class), plus the CPU's capability (AVX2, AVX512...), versions, load."""
    hardware = describe(device)
    return {
        "device": str(device),
        "hardware_class": hardware.hardware_class(),
        **hardware.params(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "torchvision": torchvision_version(),
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
