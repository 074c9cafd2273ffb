"""The engine's host time per step, read where the arithmetic is negligible (not a test: figures for
docs/performance.md).

    python -m tests.bench.measure_host

On CUDA below 1024 px a step takes as long as the host needs to issue it: on an H200 about 10 ms in every
precision, where the strong baseline took 6.3 ms at 256 px. A CPU shows that host time once the arithmetic is
gone: VGG19's layers with every conv 1/32 as wide (the project's shape table is patched, in this process only, so
that the network takes them), a 32x42 px content and style, one thread. Three contenders, interleaved sample by
sample (15 samples of 50 steps each); printed, min and median ms per step:

- the engine, as ``stylize`` runs it;
- the engine with its three Python autograd functions (in-place ReLU, mean square, symmetric Gram) swapped for
  the plain autograd operations they replace;
- a plain loop like the strong baseline: conv, ``relu_``, max pool rounding up, ``mse_loss``, matmul Grams,
  ``torch.optim.Adam``, the loss fetched once per sample.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ablation.engine import losses, network
from ablation.engine.losses import LossWeights
from ablation.engine.network import NetworkSpec, VGGFeatures, layer_names
from ablation.engine.transfer import compute_targets, initial_image, new_state, stylize

WIDTH_DIVISOR = 32
STEPS = 50  # per sample
SAMPLES = 15
WARM_UP = 2  # samples per contender before those timed
SIZE_HW = (32, 42)
ARCH, LAST = "vgg19", "relu5_1"
REAL_SHAPES = network.conv_shapes

#: What the engine's Python autograd functions replace: the same arithmetic through autograd's own operators.
PLAIN_AUTOGRAD: dict[type, Callable] = {
    network._ReluInPlace: lambda x: torch.relu_(x),
    losses._MeanSquared: lambda a, b: (a - b).pow(2).mean(dim=tuple(range(1, a.dim()))),
    losses._SymmetricGram: lambda x, n, rows: (
        (torch.bmm(x, x.transpose(1, 2)) if rows else torch.bmm(x.transpose(1, 2), x)) / n
    ),
}


def narrow(channels: int) -> int:
    return channels if channels == 3 else max(2, channels // WIDTH_DIVISOR)


def narrow_shapes(arch: str) -> list[tuple[str, int, int]]:
    return [(name, narrow(i), narrow(o)) for name, i, o in REAL_SHAPES(arch)]


def plain_autograd(on: bool) -> None:
    """Swap the engine's Python autograd functions for plain autograd (``on``), or put them back."""
    for function, replacement in PLAIN_AUTOGRAD.items():
        if on:
            function.apply = staticmethod(replacement)
        elif "apply" in vars(function):
            del function.apply


def engine(convs: list, content: torch.Tensor, style: torch.Tensor) -> Callable[[], None]:
    """``STEPS`` steps of ``stylize`` per call."""
    net = VGGFeatures(NetworkSpec(), convs, LAST)
    targets = compute_targets(net, content, [style], LossWeights())
    iterations = STEPS * (SAMPLES + WARM_UP + 1)  # more than the samples take: the final evaluation never comes
    steps = stylize(net, targets, new_state(initial_image(content, [0])), iterations, 1, STEPS)
    next(steps)  # step 0's forward and backward: the generator is now between steps
    return lambda: next(steps) and None


def plain_loop(convs: list, content: torch.Tensor, style: torch.Tensor) -> Callable[[], None]:
    """``STEPS`` steps of a loop like the strong baseline per call, on the same layers, images and loss weights."""
    weights = LossWeights()
    content_w = {n: w for n, w in weights.content_layer_weights().items() if w}
    style_w = {n: w for n, w in weights.style_layer_weights().items() if w}
    names = layer_names(ARCH)[: layer_names(ARCH).index(LAST) + 1]

    def features(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, k = {}, 0
        for name in names:
            if name.startswith("conv"):
                x, k = F.conv2d(x, *convs[k], padding=1), k + 1
            elif name.startswith("relu"):
                x = F.relu_(x)
            else:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            if name in content_w or name in style_w:
                out[name] = x
        return out

    def gram(f: torch.Tensor) -> torch.Tensor:
        flat = f.flatten(2)
        return flat @ flat.transpose(1, 2) / flat[0].numel()

    with torch.no_grad():
        content_t = features(content)
        style_t = {n: gram(f) for n, f in features(style).items() if n in style_w}
    image = initial_image(content, [0]).requires_grad_(True)
    adam = torch.optim.Adam([image], lr=1.0)

    def run() -> None:
        for _ in range(STEPS):
            adam.zero_grad(set_to_none=True)
            f = features(image)
            total = weights.content_weight * sum(w * F.mse_loss(f[n], content_t[n]) for n, w in content_w.items())
            total = total + weights.style_weight * sum(
                w * F.mse_loss(gram(f[n]), style_t[n]) for n, w in style_w.items()
            )
            tv = F.mse_loss(image[:, :, 1:], image[:, :, :-1]) + F.mse_loss(image[..., 1:], image[..., :-1])
            (total + weights.tv_weight * tv).backward()
            adam.step()
        total.item()

    return run


def main() -> None:
    torch.set_num_threads(1)
    network.conv_shapes = narrow_shapes  # the shapes VGGFeatures checks its weights against, this process only
    generator = torch.Generator().manual_seed(0)
    convs = [
        (torch.randn(o, i, 3, 3, generator=generator) * (2 / (9 * i)) ** 0.5, torch.zeros(o))
        for _, i, o in narrow_shapes(ARCH)
    ]
    content, style = (torch.rand(1, 3, *SIZE_HW, generator=generator) * 255 - 128 for _ in range(2))
    contenders = {
        "engine": (engine(convs, content, style), False),
        "engine, plain autograd": (engine(convs, content, style), True),
        "plain loop": (plain_loop(convs, content, style), False),
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for sample in range(WARM_UP + SAMPLES):
        for name, (run, plain) in contenders.items():
            plain_autograd(plain)
            started = time.perf_counter()
            run()
            if sample >= WARM_UP:
                samples[name].append((time.perf_counter() - started) / STEPS * 1e3)
            plain_autograd(False)
    for name, ms in samples.items():
        print(f"{name}: min {min(ms):.2f} ms/step, median {statistics.median(ms):.2f}")


if __name__ == "__main__":
    main()
