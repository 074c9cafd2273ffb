"""Speed and memory benchmark: our engine against a plain baseline loop and against the machine's peak.

    python -m ablation.bench                     # CPU: 128 and 256 px; CUDA: 256, 512, 1024 px; all variants
    python -m ablation.bench --quick             # about a minute: 64 px, original, a few iterations
    python -m ablation.bench --sizes 256 --variants original --precision fp32,bf16 --layouts nchw,nhwc

For each variant and size it times Adam iterations of (a) the engine, run through the project's own
``prepare`` and ``stylize`` for every precision x layout asked for, and (b) the loop most implementations
and tutorials write: torchvision's full ``features`` stack through relu5_x, parameters left requiring
grad, NCHW, a ``.item()`` per step. All in one process, interleaved round by round after a warm-up, so
a machine that gets busier or throttles hurts every contender alike. Per contender: median and min ms
per iteration, speed-up over the baseline, analytic GFLOP per iteration (forward and backward of the
convolutions actually run), achieved GF/s, efficiency against the machine's peak measured in the same
run (a large fp32 matmul and a 3x3 convolution), and peak memory. Then the bf16 loss deviation from fp32
after a full run, batched seeds against one, and the issue's targets, pass or fail. Output:
``reports/bench/bench.md`` and ``bench.json``. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ablation import schema
from ablation.engine.backends import PRECISIONS, configure_backends, native_bf16, set_layout
from ablation.engine.errors import UserError
from ablation.engine.images import ImageError
from ablation.engine.inputs import DataError
from ablation.engine.losses import LossWeights
from ablation.engine.network import ARCHITECTURES, NetworkSpec, conv_shapes, layer_names
from ablation.engine.prepare import Problem, pick_device, prepare
from ablation.engine.transfer import EngineOptions, new_state, stylize
from ablation.engine.weights import VGGWeights, WeightsError, load_weights
from ablation.paths import CONF_DIR, REPORTS_DIR
from ablation.spec import SpecError, from_config

VARIANTS = ("original", "avg_pool", "leaky_relu", "tanh_final", "vgg16", "vgg16_tanh")
LAYOUTS = {"nchw": False, "nhwc": True}
DEFAULT_SIZES = {"cpu": (128, 256), "cuda": (256, 512, 1024)}


class BenchError(UserError):
    """A benchmark option that cannot be used."""


# --- analytic work ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvWork:
    """One convolution as run: its channels and output size (padding 1 keeps the input's)."""

    name: str
    in_ch: int
    out_ch: int
    height: int
    width: int

    @property
    def forward_gflop(self) -> float:
        """2 * 9 * C_in * C_out * H * W: a multiply and an add per weight per output pixel."""
        return 2 * 9 * self.in_ch * self.out_ch * self.height * self.width / 1e9


def conv_plan(arch: str, last_layer: str, height: int, width: int, ceil_pool: bool) -> list[ConvWork]:
    """Every conv run up to ``last_layer`` for an input of ``height`` x ``width``, with its output size.

    Pools halve the size, rounding up (TensorFlow 'SAME', our network) or down (torchvision's default).
    """
    shapes = {name: (i, o) for name, i, o in conv_shapes(arch)}
    plan, h, w = [], height, width
    for name in layer_names(arch)[: layer_names(arch).index(last_layer) + 1]:
        if name.startswith("conv"):
            plan.append(ConvWork(name, *shapes[name], h, w))
        elif name.startswith("pool"):
            h, w = ((h + 1) // 2, (w + 1) // 2) if ceil_pool else (h // 2, w // 2)
    return plan


def iteration_gflop(plan: Sequence[ConvWork], backward_through: str, weight_grads: bool) -> float:
    """Conv GFLOP of one Adam iteration: every forward in ``plan``; for convs up to ``backward_through``
    (the deepest layer a loss reads) the input gradient (as many FLOPs as the forward), and the weight
    gradient too when parameters require grad. Convs past it get no gradient: nothing reads them."""
    total, backward = 0.0, True
    for conv in plan:
        total += conv.forward_gflop * (1 + (1 + weight_grads) * backward)
        if conv.name.replace("conv", "relu") == backward_through:
            backward = False
    return total


# --- machine peak ----------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one untimed call (the peak is what the machine can do)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_gflops(device: torch.device, n: int, repeats: int) -> float:
    """GF/s of an n x n fp32 matmul (2 n^3 FLOPs), IEEE fp32 (no TF32)."""
    configure_backends(EngineOptions(precision="fp32"), device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / 1e9 / best_seconds(lambda: a @ b, device, repeats)


def conv_peak_gflops(device: torch.device, precision: str, channels: int, side: int, repeats: int) -> float:
    """GF/s of a 3x3 conv, C -> C channels on a side x side map (a VGG conv3_x at 256 px), forward only,
    in ``precision``; the better of the NCHW and NHWC layouts. A batch of 8 on CUDA, which one map
    would leave partly idle."""
    batch = 8 if device.type == "cuda" else 1
    options = EngineOptions(precision=precision)
    if precision != "bf16" or native_bf16(device):
        configure_backends(options, device)
        layouts = (torch.contiguous_format, torch.channels_last)
    else:  # emulated bf16: NCHW takes seconds per call (measured 7 s for 128 ch at 64x64); NHWC tells enough
        layouts = (torch.channels_last,)
    best = 0.0
    for layout in layouts:
        x = torch.randn(batch, channels, side, side, device=device).contiguous(memory_format=layout)
        weight = torch.randn(channels, channels, 3, 3, device=device).contiguous(memory_format=layout)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32

        def conv(x=x, weight=weight, dtype=dtype) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
                return F.conv2d(x, weight, padding=1)

        gflop = batch * ConvWork("peak", channels, channels, side, side).forward_gflop
        best = max(best, gflop / best_seconds(conv, device, repeats))
    return best


# --- memory ----------------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Return freed heap to the OS (glibc ``malloc_trim``), so that a phase re-using it shows, then reset
    the process's peak resident set (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak memory of a phase (a contender's warm-up iterations) above what was in use when it started,
    in MiB: the iteration's working memory (activations, gradients, temporaries).

    CUDA: ``max_memory_allocated`` (tensors only, exact). CPU: the process's peak resident set (VmHWM),
    so it includes allocator slack and is approximate; None where /proc cannot tell.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.start = torch.cuda.memory_allocated(device)
        else:
            self.start = _status_kib("VmRSS") * 1024 if _reset_cpu_peak() and _status_kib("VmRSS") else None

    def peak_mib(self) -> float | None:
        _sync(self.device)
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        peak = _status_kib("VmHWM")
        return None if self.start is None or peak is None else (peak * 1024 - self.start) / 2**20


def tensors_mib(net: nn.Module, problem: Problem) -> float:
    """What a run holds throughout: the network's weights, the targets, the image and Adam's two moments."""
    held = sum(p.numel() * p.element_size() for p in net.parameters())
    targets = [*problem.targets.content.values(), *(g for grams in problem.targets.grams for g in grams.values())]
    held += sum(t.numel() * t.element_size() for t in targets)
    held += 3 * problem.content.numel() * problem.content.element_size()
    return held / 2**20


def _plus(working: float | None, held: float) -> float | None:
    return None if working is None else working + held


# --- the contenders --------------------------------------------------------------------------------------


class EngineRunner:
    """Our engine: a copy of the problem's network in the asked layout, driven by ``stylize`` in chunks.

    ``stylize`` yields (and fetches the losses to the host) every ``chunk`` steps, so one ``next`` is
    ``chunk`` full iterations: forward, backward, Adam.
    """

    def __init__(self, problem: Problem, options: EngineOptions, seeds: Sequence[int], chunk: int, calls: int):
        self.options, self.device, self.chunk = options, problem.device, chunk
        configure_backends(options, self.device)
        self.net = set_layout(copy.deepcopy(problem.net), options)
        self.state = new_state(problem.start_image(list(seeds)), problem.spec.optim)
        iterations = chunk * calls + 1  # never reached: the final scoring forward is not part of a step
        self.steps = stylize(self.net, problem.targets, self.state, iterations, 1, chunk, options)
        first = next(self.steps)  # step 0's forward and backward: the generator is now between iterations
        self.step0_total = float(first.losses[0, 0, 3])

    def __call__(self) -> float:
        configure_backends(self.options, self.device)
        return float(next(self.steps).losses[-1, 0, 3])


def torchvision_features(network: NetworkSpec, last_read: str) -> nn.Sequential:
    """torchvision's ``features`` through relu5_x (pool5 dropped), as tutorials use it: ReLU in place,
    2x2 pools rounding down; pooling and activation swapped for the variant's; tanh at ``last_read``."""
    builder = {"vgg19": torchvision.models.vgg19, "vgg16": torchvision.models.vgg16}[network.arch]
    layers = list(builder(weights=None).features)[:-1]
    names = layer_names(network.arch)
    for i, (name, layer) in enumerate(zip(names, layers, strict=True)):
        if isinstance(layer, nn.MaxPool2d) and network.pooling == "avg":
            layers[i] = nn.AvgPool2d(2, 2)
        if isinstance(layer, nn.ReLU) and network.activation == "leaky_relu":
            layers[i] = nn.LeakyReLU(network.slope, inplace=True)
        if name == last_read and network.final_activation == "tanh":
            layers[i] = nn.Tanh()
    return nn.Sequential(*layers)


class BaselineLoop:
    """The loop as tutorials write it, on the same weights, images, start image and loss weights."""

    def __init__(self, problem: Problem, weights: VGGWeights) -> None:
        spec, self.device = problem.spec, problem.device
        self.features = torchvision_features(spec.network, spec.last_layer)
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for conv, (weight, bias) in zip(convs, weights.convs, strict=True):
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
        self.features.to(self.device)  # parameters keep requires_grad=True, as in most implementations
        self.loss: LossWeights = spec.loss
        self.content_layers = {n: w for n, w in self.loss.content_layer_weights().items() if w}
        self.style_layers = {n: w for n, w in self.loss.style_layer_weights().items() if w}
        self.index = {name: i for i, name in enumerate(layer_names(spec.network.arch))}
        self.blend = problem.targets.style_blend
        styles = [problem.pixels.encode(s, self.device) for s in problem.images.styles]
        with torch.no_grad():
            self.content_targets = self.extract(problem.content)
            self.style_targets = [{n: self.gram(f) for n, f in self.extract(s).items()} for s in styles]
        self.image = problem.start_image([spec.seed]).clone().requires_grad_(True)
        adam = spec.optim
        self.optimizer = torch.optim.Adam([self.image], lr=adam.lr, betas=(adam.beta1, adam.beta2), eps=adam.eps)
        with torch.no_grad():
            self.step0_total = float(self.total_loss())

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = {self.index[n]: n for n in [*self.content_layers, *self.style_layers]}
        out = {}
        for i, layer in enumerate(self.features):  # the whole stack, through relu5_x
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return out

    @staticmethod
    def gram(x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        f = x.view(c, h * w)
        return f @ f.t() / (c * h * w)

    def total_loss(self) -> torch.Tensor:
        feats = self.extract(self.image)
        content = sum(w * F.mse_loss(feats[n], self.content_targets[n]) for n, w in self.content_layers.items())
        style = sum(
            b * w * F.mse_loss(self.gram(feats[n]), targets[n])
            for targets, b in zip(self.style_targets, self.blend, strict=True)
            for n, w in self.style_layers.items()
        )
        x = self.image
        tv = F.mse_loss(x[:, :, 1:], x[:, :, :-1], reduction="mean") + F.mse_loss(x[..., 1:], x[..., :-1])
        return self.loss.content_weight * content + self.loss.style_weight * style + self.loss.tv_weight * tv

    def step(self) -> float:
        self.optimizer.zero_grad()
        loss = self.total_loss()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def runner(self, chunk: int) -> Callable[[], float]:
        def run() -> float:
            for _ in range(chunk):
                total = self.step()
            return total

        return run


# --- timing ----------------------------------------------------------------------------------------------


def time_interleaved(runners: dict[str, Callable[[], Any]], chunk: int, rounds: int, device: torch.device):
    """ms per iteration of each runner, one sample per round; rounds alternate the order, so drift in the
    machine's speed (other load, clocks) is shared rather than charged to whoever runs last."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(rounds):
        order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
        for name in order:
            _sync(device)
            start = time.perf_counter()
            runners[name]()
            _sync(device)
            samples[name].append(1000 * (time.perf_counter() - start) / chunk)
    return samples


@dataclass
class Row:
    """One contender at one variant and size."""

    variant: str
    size_wh: str
    contender: str  # baseline, or the engine's precision/layout[/compile]
    median_ms: float
    min_ms: float
    gflop: float
    peak_mib: float | None
    samples_ms: list[float] = field(default_factory=list)
    step0_total: float | None = None  # the start image's total loss: both contenders solve one problem
    speedup: float | None = None  # baseline median / this median
    gflops: float | None = None
    efficiency: float | None = None  # achieved / the machine's conv peak in this precision


def engine_name(options: EngineOptions) -> str:
    layout = "nhwc" if options.channels_last else "nchw"
    return f"{options.precision}/{layout}" + ("/compile" if options.compile else "")


# --- the benchmark ---------------------------------------------------------------------------------------


@dataclass
class Settings:
    device: str
    sizes: tuple[int, ...]
    variants: tuple[str, ...]
    precisions: tuple[str, ...]
    layouts: tuple[str, ...]
    compile: bool
    iters: int  # timed iterations per contender
    chunk: int  # iterations per timing sample
    warmup: int  # untimed chunks per contender
    baseline: bool
    weights: str
    check_iters: int  # bf16 deviation: iterations of a full run at check_size
    check_size: int
    batch_seeds: int
    batch_size_px: int
    full_run_iters: int  # CUDA: one whole run of original at 512 px, timed end to end
    matmul_n: int
    conv_side: int
    out: str
    quick: bool = False


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m ablation.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--sizes", help="content widths in px, comma-separated (CPU: 128,256; CUDA: 256,512,1024)")
    parser.add_argument("--variants", default="all", help=f"comma-separated, or all: {', '.join(VARIANTS)}")
    parser.add_argument(
        "--precision", help="engine precisions: CUDA fp32,tf32,bf16; CPU fp32,bf16, or fp32 without native bf16"
    )
    parser.add_argument("--layouts", default="nchw,nhwc", help="engine layouts: nchw, nhwc (channels_last)")
    parser.add_argument("--compile", action="store_true", help="also time each engine setting with torch.compile")
    parser.add_argument("--iters", type=int, help="timed iterations per contender (CPU 8, CUDA 100)")
    parser.add_argument("--chunk", type=int, help="iterations per timing sample (CPU 1, CUDA 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed chunks per contender")
    parser.add_argument("--no-baseline", action="store_true", help="time only the engine")
    parser.add_argument(
        "--weights", default="auto", help="auto (torchvision if cached, else random) | torchvision | random | PATH"
    )
    parser.add_argument("--check-iters", type=int, default=300, help="bf16 deviation: iterations of one run")
    parser.add_argument("--check-size", type=int, default=128, help="bf16 deviation: content width in px")
    parser.add_argument("--batch-seeds", type=int, default=4, help="seeds in the batched-seeds timing (0: skip)")
    parser.add_argument("--batch-size-px", type=int, default=256, help="content width of the batched-seeds timing")
    parser.add_argument("--full-run-iters", type=int, default=1000, help="CUDA: a whole run of original at 512 px")
    parser.add_argument("--out", default=str(REPORTS_DIR / "bench"), help="folder for bench.md/.json")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="64 px, original, a few iterations: a smoke run")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads={args.threads} must be >= 1")
        torch.set_num_threads(args.threads)

    device = pick_device(args.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    if args.quick:
        sizes = _ints(args.sizes, "--sizes") if args.sizes else (64,)
        variants = args.variants if args.variants != "all" else "original"
        iters, chunk, warmup = args.iters or 3, args.chunk or 1, min(args.warmup, 1)
        check_iters, check_size, batch_px = min(args.check_iters, 20), min(args.check_size, 64), 64
        matmul_n, conv_side = 512, 32
    else:
        sizes = _ints(args.sizes, "--sizes") if args.sizes else DEFAULT_SIZES[kind]
        variants = args.variants
        iters, chunk, warmup = args.iters or (100 if kind == "cuda" else 8), args.chunk, args.warmup
        chunk = chunk or (10 if kind == "cuda" else 1)
        check_iters, check_size, batch_px = args.check_iters, args.check_size, args.batch_size_px
        matmul_n, conv_side = (8192, 128) if kind == "cuda" else (2048, 64)
    chosen = VARIANTS if variants == "all" else tuple(v.strip() for v in variants.split(",") if v.strip())
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise BenchError(f"--variants {unknown[0]!r} is not a variant: choose from {', '.join(VARIANTS)} or all")
    default_precisions = "fp32,tf32,bf16" if kind == "cuda" else ("fp32,bf16" if native_bf16(device) else "fp32")
    precisions = tuple((args.precision or default_precisions).split(","))
    for p in precisions:
        if p not in PRECISIONS:
            raise BenchError(f"--precision {p!r}: choose from {', '.join(PRECISIONS)}")
        if p == "tf32" and kind != "cuda":
            raise BenchError("--precision tf32 only changes CUDA convolutions: on a CPU use fp32,bf16")
    layouts = tuple(args.layouts.split(","))
    if any(layout not in LAYOUTS for layout in layouts):
        raise BenchError(f"--layouts {args.layouts!r}: give nchw, nhwc or nchw,nhwc")
    for name, value in (("--iters", iters), ("--chunk", chunk)):
        if value < 1:
            raise BenchError(f"{name}={value} must be >= 1")
    if iters < chunk:
        raise BenchError(f"--iters={iters} is below --chunk={chunk}: give at least one chunk of iterations")
    if warmup < 0 or args.check_iters < 0 or args.batch_seeds < 0:
        raise BenchError("--warmup, --check-iters and --batch-seeds must be >= 0")
    if min(sizes) < 16:
        raise BenchError(f"--sizes {min(sizes)} px is too small: the network needs at least 16 px")
    return Settings(
        device=str(device),
        sizes=sizes,
        variants=chosen,
        precisions=precisions,
        layouts=layouts,
        compile=args.compile,
        iters=iters,
        chunk=chunk,
        warmup=warmup,
        baseline=not args.no_baseline,
        weights=args.weights,
        check_iters=check_iters,
        check_size=check_size,
        batch_seeds=args.batch_seeds,
        batch_size_px=batch_px,
        full_run_iters=args.full_run_iters,
        matmul_n=matmul_n,
        conv_side=conv_side,
        out=args.out,
        quick=args.quick,
    )


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BenchError(f"{option} {text!r}: give comma-separated integers, e.g. {option} 128,256") from None
    if not values:
        raise BenchError(f"{option} is empty: give at least one value")
    return values


def load_bench_weights(choice: str, arch: str) -> VGGWeights:
    """``auto``: torchvision's if already in torch's cache (no download attempt), else seeded random
    weights, which time the same (dense convolutions do not look at the values) but make the bf16
    deviation a statement about random filters; the report says which were used."""
    if choice == "auto":
        import torchvision.models as tvm

        enum = {"vgg19": tvm.VGG19_Weights, "vgg16": tvm.VGG16_Weights}[arch].IMAGENET1K_V1
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        choice = "torchvision" if cached.is_file() else "random"
    if choice in ("torchvision", "random"):
        return load_weights(choice, arch)
    path = Path(choice).expanduser()
    if not path.is_file():
        raise BenchError(f"--weights {choice!r}: not torchvision, random, auto or an existing file")
    return load_weights("matconvnet" if path.suffix == ".mat" else "file", arch, path=str(path))


def bench_problem(variant: str, width: int, device: torch.device, weights: VGGWeights) -> Problem:
    """The run's own set-up (Hydra config -> spec -> prepare) for the report's pair at ``width``."""
    from hydra import compose, initialize_config_dir

    overrides = [f"variant={variant}", f"images.width={width}", "weights=random", f"run.device={device}"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        config = schema.plain(compose("config", overrides=overrides))
    return prepare(from_config(config), device, weights)  # type: ignore[arg-type]


def engine_options(settings: Settings) -> list[EngineOptions]:
    options = [EngineOptions(p, LAYOUTS[layout]) for p in settings.precisions for layout in settings.layouts]
    if settings.compile:
        options += [EngineOptions(o.precision, o.channels_last, compile=True) for o in options]
    return options


def bench_case(problem: Problem, weights: VGGWeights, settings: Settings, peaks: dict[str, float]) -> list[Row]:
    """Time every engine setting and the baseline on one variant and size, interleaved."""
    device, spec = problem.device, problem.spec
    h, w = problem.content.shape[-2:]
    warmup = max(settings.warmup, 1)  # at least one: the memory probe watches it
    calls = warmup + settings.iters // settings.chunk
    runners: dict[str, Callable[[], Any]] = {}
    memory: dict[str, float | None] = {}
    gflop: dict[str, float] = {}
    step0: dict[str, float] = {}
    engine_plan = conv_plan(spec.network.arch, spec.last_layer, h, w, ceil_pool=True)
    for options in engine_options(settings):
        name = engine_name(options)
        runner = EngineRunner(problem, options, [spec.seed], settings.chunk, calls)
        probe = MemoryProbe(device)
        for _ in range(warmup):
            runner()
        memory[name], runners[name] = _plus(probe.peak_mib(), tensors_mib(runner.net, problem)), runner
        step0[name] = runner.step0_total
        gflop[name] = iteration_gflop(engine_plan, spec.last_layer, weight_grads=False)
    if settings.baseline:
        baseline = BaselineLoop(problem, weights)
        runners["baseline"] = baseline.runner(settings.chunk)
        probe = MemoryProbe(device)
        for _ in range(warmup):
            runners["baseline"]()
        step0["baseline"] = baseline.step0_total
        memory["baseline"] = _plus(probe.peak_mib(), tensors_mib(baseline.features, problem))
        full = conv_plan(spec.network.arch, layer_names(spec.network.arch)[-1], h, w, ceil_pool=False)
        gflop["baseline"] = iteration_gflop(full, spec.last_layer, weight_grads=True)
    samples = time_interleaved(runners, settings.chunk, settings.iters // settings.chunk, device)
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        precision = name.split("/")[0] if name != "baseline" else "fp32"
        gflops = gflop[name] / (median / 1000)
        rows.append(
            Row(
                spec.variant,
                f"{w}x{h}",
                name,
                median,
                min(values),
                gflop[name],
                memory[name],
                values,
                gflops=gflops,
                efficiency=gflops / peaks[f"conv_{precision}"],
                step0_total=step0[name],
            )
        )
    if "baseline" in samples:
        base = statistics.median(samples["baseline"])
        for row in rows:
            row.speedup = base / row.median_ms
    return rows


def final_total(problem: Problem, options: EngineOptions, iterations: int, seeds: Sequence[int]) -> np.ndarray:
    """Final total loss of each seed after a whole run with ``options`` (the reported loss)."""
    configure_backends(options, problem.device)
    net = set_layout(copy.deepcopy(problem.net), options)
    state = new_state(problem.start_image(list(seeds)), problem.spec.optim)
    for progress in stylize(net, problem.targets, state, iterations, 1, max(iterations, 1), options):
        last = progress.losses[-1, :, 3]
    return last


def timed_run_s(problem: Problem, options: EngineOptions, iterations: int, sync_every: int = 50) -> float:
    """Seconds for one whole run of ``iterations`` (one warm-up run of 3 first, for kernels and autotuning)."""
    configure_backends(options, problem.device)
    net = set_layout(copy.deepcopy(problem.net), options)
    for _ in stylize(net, problem.targets, new_state(problem.start_image([0])), 3, options=options):
        pass
    state = new_state(problem.start_image([0]), problem.spec.optim)
    _sync(problem.device)
    start = time.perf_counter()
    for _ in stylize(net, problem.targets, state, iterations, 1, sync_every, options):
        pass
    _sync(problem.device)
    return time.perf_counter() - start


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "device": str(device),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def best_row(rows: list[Row], variant: str, width: int, precision: str) -> Row | None:
    """The fastest engine row of ``precision`` for ``variant`` at content width ``width``."""
    found = [
        r
        for r in rows
        if r.variant == variant and r.size_wh.startswith(f"{width}x") and r.contender.split("/")[0] == precision
    ]
    return min(found, key=lambda r: r.median_ms) if found else None


def check_targets(results: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value, or why it was not measured in this run."""
    rows = [Row(**r) for r in results["rows"]]
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float | None, op: str, bound: float, why_missing: str) -> None:
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        targets.append({"target": name, "value": value, "op": op, "bound": bound, "pass": ok, "note": why_missing})

    cpu = device.type == "cpu"
    fp32 = best_row(rows, "original", 256, "fp32") if cpu else None
    missing = "needs a CPU run with original at 256 px" + (" and the baseline" if cpu else "")
    add("CPU fp32 speed-up over the baseline, VGG19 256 px", fp32 and fp32.speedup, ">=", 1.5, missing)
    add("CPU fp32 efficiency vs the conv peak, VGG19 256 px", fp32 and fp32.efficiency, ">=", 0.8, missing)
    bf16 = best_row(rows, "original", 256, "bf16") if cpu else None
    ratio = fp32.median_ms / bf16.median_ms if fp32 and bf16 else None
    no_bf16 = "" if results["native_bf16"] else "; this CPU has no native bf16, see the conv peaks"
    add("CPU bf16 speed-up over our fp32, VGG19 256 px", ratio, ">=", 1.7, "needs fp32 and bf16 at 256 px" + no_bf16)
    check = results.get("bf16_check") or {}
    at_target = check.get("iterations") == 300 and check.get("size_px") == 128
    deviation = check.get("max_rel_deviation") if at_target else None
    add(
        "bf16 final total within 2% of fp32 (300 it, 128 px)",
        deviation,
        "<=",
        0.02,
        "needs --precision with bf16, --check-iters 300 --check-size 128" + no_bf16,
    )
    full = results.get("full_run") or {}
    add("GPU: 1000 iterations of original at 512 px, s", full.get("best_s"), "<=", 10.0, "needs a CUDA run with 512 px")
    batched = results.get("batched") or {}
    batch_ok = device.type == "cuda" and batched.get("seeds") == 4 and batched.get("size_px") == 256
    add(
        "GPU: 4 batched seeds at 256 px vs one, time ratio",
        batched.get("time_ratio") if batch_ok else None,
        "<=",
        1.5,
        "needs a CUDA run with 4 seeds at 256 px",
    )
    return targets


def run_bench(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    device = torch.device(settings.device)
    started = time.perf_counter()
    results: dict[str, Any] = {"settings": asdict(settings), "machine": machine(device)}
    log(f"machine: {results['machine']}")
    peaks = {"matmul_fp32": matmul_peak_gflops(device, settings.matmul_n, 5)}
    conv_channels = 256
    results["native_bf16"] = native_bf16(device)
    for precision in dict.fromkeys(["fp32", *settings.precisions, "bf16"]):  # bf16 always: is it worth it here?
        peaks[f"conv_{precision}"] = conv_peak_gflops(device, precision, conv_channels, settings.conv_side, 5)
    results["peaks_gflops"] = peaks
    results["peak_shapes"] = {
        "matmul": f"{settings.matmul_n}x{settings.matmul_n} @ {settings.matmul_n}x{settings.matmul_n} fp32",
        "conv": f"3x3, {conv_channels}->{conv_channels} ch, {8 if device.type == 'cuda' else 1}x{settings.conv_side}"
        f"x{settings.conv_side}, forward",
    }
    log("peak GF/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))

    weights_by_arch = {arch: load_bench_weights(settings.weights, arch) for arch in ARCHITECTURES}
    results["weights"] = {arch: w.source for arch, w in weights_by_arch.items()}
    rows: list[Row] = []
    for variant in settings.variants:
        for width in settings.sizes:
            problem = bench_problem(variant, width, device, weights_by_arch[_arch(variant)])
            case = bench_case(problem, weights_by_arch[_arch(variant)], settings, peaks)
            rows += case
            for row in case:
                log(
                    f"{row.variant:>11} {row.size_wh:>9} {row.contender:<18} median {row.median_ms:8.1f} ms "
                    f"min {row.min_ms:8.1f} ms  speed-up {_fmt(row.speedup, '.2f'):>4}  {row.gflops:6.0f} GF/s "
                    f"eff {row.efficiency:.0%}  peak {_fmt(row.peak_mib, '.0f')} MiB"
                )
            del problem
    results["rows"] = [asdict(r) for r in rows]

    if "bf16" in settings.precisions and settings.check_iters:
        problem = bench_problem("original", settings.check_size, device, weights_by_arch["vgg19"])
        nhwc = "nhwc" in settings.layouts  # emulated bf16 (no native support) is far slower in NCHW
        fp32 = final_total(problem, EngineOptions("fp32", nhwc), settings.check_iters, [0])
        bf16 = final_total(problem, EngineOptions("bf16", nhwc), settings.check_iters, [0])
        results["bf16_check"] = {
            "iterations": settings.check_iters,
            "size_px": settings.check_size,
            "final_total_fp32": float(fp32[0]),
            "final_total_bf16": float(bf16[0]),
            "max_rel_deviation": float(np.max(np.abs(bf16 - fp32) / np.abs(fp32))),
        }
        log(f"bf16 check: {results['bf16_check']}")

    if settings.batch_seeds > 1:
        problem = bench_problem("original", settings.batch_size_px, device, weights_by_arch["vgg19"])
        calls = settings.warmup + settings.iters // settings.chunk
        one = EngineRunner(problem, EngineOptions(), [0], settings.chunk, calls)
        many = EngineRunner(problem, EngineOptions(), list(range(settings.batch_seeds)), settings.chunk, calls)
        for _ in range(settings.warmup):
            one(), many()
        rounds = settings.iters // settings.chunk
        samples = time_interleaved({"one": one, "batch": many}, settings.chunk, rounds, device)
        one_ms, many_ms = statistics.median(samples["one"]), statistics.median(samples["batch"])
        results["batched"] = {
            "seeds": settings.batch_seeds,
            "size_px": settings.batch_size_px,
            "one_seed_ms": one_ms,
            "batch_ms": many_ms,
            "time_ratio": many_ms / one_ms,
        }
        log(f"batched seeds: {results['batched']}")
        del one, many, problem

    if device.type == "cuda" and 512 in settings.sizes and "original" in settings.variants:
        problem = bench_problem("original", 512, device, weights_by_arch["vgg19"])
        layouts = [LAYOUTS[layout] for layout in settings.layouts]
        runs = {
            engine_name(o): timed_run_s(problem, o, settings.full_run_iters)
            for o in [EngineOptions(p, cl) for p in settings.precisions for cl in layouts]
        }
        results["full_run"] = {"iterations": settings.full_run_iters, "seconds": runs, "best_s": min(runs.values())}
        log(f"full run: {results['full_run']}")

    results["targets"] = check_targets(results, device)
    results["bench_s"] = time.perf_counter() - started
    return results


def _arch(variant: str) -> str:
    return "vgg16" if variant.startswith("vgg16") else "vgg19"


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def to_markdown(results: dict[str, Any], command: str) -> str:
    m, s = results["machine"], results["settings"]
    memory_kind = "allocated tensors" if "cuda" in m["device"] else "peak resident set, approximate"
    lines = [
        "# Benchmark: engine vs a plain baseline loop",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['device']}, {m.get('gpu', m['cpu'])}, {m['cpu_cores']} cores, {m['torch_threads']} torch "
        f"threads, torch {m['torch']}, load average {_fmt(m['load_average_1m'], '.2f')} at the start  ",
        f"Weights: {', '.join(f'{a} {src}' for a, src in results['weights'].items())} "
        "(timing does not depend on the values; the bf16 deviation does)  ",
        f"Timing: {s['iters']} iterations per contender in samples of {s['chunk']}, {s['warmup']} warm-up "
        f"sample(s), contenders interleaved; {results['bench_s']:.0f} s in all.",
        "",
        "## Machine peak (same run)",
        "",
        "| kernel | shape | GF/s |",
        "|---|---|---:|",
        f"| matmul fp32 | {results['peak_shapes']['matmul']} | {results['peaks_gflops']['matmul_fp32']:.0f} |",
    ]
    for key, value in results["peaks_gflops"].items():
        if key.startswith("conv_"):
            lines.append(f"| conv {key[5:]} | {results['peak_shapes']['conv']} | {value:.0f} |")
    lines += [
        "",
        "## Per iteration",
        "",
        "`baseline`: torchvision `features` through relu5_x, parameters requiring grad, NCHW, `.item()` per step. "
        "Engine: precision/layout. GFLOP: convolutions only (forward; input gradients up to the deepest layer "
        "read; weight gradients for the baseline). Efficiency: achieved / the conv peak of that precision. "
        "Step-0 loss: the start image's total, the same problem for all (the baseline's pools round down, so it "
        "differs slightly where the size is not a multiple of 16). "
        "Peak memory: the tensors a run holds (weights, targets, image, Adam moments) plus the iteration's peak "
        f"working memory ({memory_kind}).",
        "",
        "| variant | size | contender | median ms | min ms | speed-up | GFLOP/it | GF/s | efficiency | peak MiB "
        "| step-0 loss |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['variant']} | {r['size_wh']} | {r['contender']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
            f"{_fmt(r['speedup'], '.2f')} | {r['gflop']:.1f} | {r['gflops']:.0f} | {r['efficiency']:.0%} | "
            f"{_fmt(r['peak_mib'], '.0f')} | {_fmt(r['step0_total'], '.6g')} |"
        )
    check = results.get("bf16_check")
    if check:
        lines += [
            "",
            "## bf16 loss deviation",
            "",
            f"original at {check['size_px']} px, {check['iterations']} iterations, seed 0: final total fp32 "
            f"{check['final_total_fp32']:.6g}, bf16 {check['final_total_bf16']:.6g}, relative deviation "
            f"{check['max_rel_deviation']:.2%}.",
        ]
    batched = results.get("batched")
    if batched:
        lines += [
            "",
            "## Batched seeds",
            "",
            f"original at {batched['size_px']} px, fp32/nchw: one seed {batched['one_seed_ms']:.1f} ms/it, "
            f"{batched['seeds']} seeds as one batch {batched['batch_ms']:.1f} ms/it: {batched['time_ratio']:.2f}x "
            f"the time for {batched['seeds']}x the work.",
        ]
    full = results.get("full_run")
    if full:
        lines += ["", "## Whole runs (CUDA)", "", f"original at 512 px, {full['iterations']} iterations:"]
        lines += [f"- {name}: {sec:.2f} s" for name, sec in full["seconds"].items()]
    lines += ["", "## Targets", "", "| target | measured | bound | result |", "|---|---:|---:|---|"]
    for t in results["targets"]:
        verdict = {True: "pass", False: "FAIL", None: f"not measured ({t['note']})"}[t["pass"]]
        lines.append(f"| {t['target']} | {_fmt(t['value'], '.3g')} | {t['op']} {t['bound']:g} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    command = "python -m ablation.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("once", message=".*without native bf16")  # the bench reports it once, in the peaks
    try:
        settings = parse_args(argv)
        results = run_bench(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    except (BenchError, SpecError, DataError, ImageError, WeightsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"command": command, **results}, indent=2) + "\n")
    (out / "bench.md").write_text(to_markdown(results, command))
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
