"""The contenders, each a callable that runs ``chunk`` Adam iterations and returns the last total loss.

- the engine: the project's own ``stylize`` on a copy of the problem's network in one precision and layout;
- the tutorial baseline: the loop most tutorials write (torchvision's whole ``features`` through relu5_x,
  parameters left requiring grad, 2x2 pools rounding down, ``.item()`` every step);
- the strong baseline: what the fastest published PyTorch implementations run (frozen weights, the stack
  truncated after the deepest layer read, in-place ReLU, pools rounding up, plain autograd Grams,
  ``torch.optim.Adam``, NCHW, the loss fetched once per sample). Its pools are the engine's, so it solves
  the engine's problem exactly: the bench checks that their step-0 losses agree.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablation.engine.backends import configure_backends, set_layout
from ablation.engine.hardware import synchronize
from ablation.engine.network import NetworkSpec, layer_names
from ablation.engine.prepare import Problem
from ablation.engine.transfer import TOTAL, EngineOptions, new_state, stylize
from ablation.engine.weights import VGGWeights


def layout_name(channels_last: bool) -> str:
    """The bench's name of a memory layout: ``nhwc`` (channels-last) or ``nchw``."""
    return "nhwc" if channels_last else "nchw"


def engine_name(options: EngineOptions) -> str:
    return f"{options.precision}/{layout_name(options.channels_last)}" + ("/compile" if options.compile else "")


def held_tensors(problem: Problem) -> list[torch.Tensor]:
    """What every contender holds throughout besides its weights: the targets, the image and Adam's moments."""
    targets = [*problem.targets.content.values(), *(g for grams in problem.targets.grams for g in grams.values())]
    return [*targets, *[problem.content] * 3]


class EngineRunner:
    """Our engine, driven by ``stylize`` in chunks: one ``next`` is ``chunk`` whole iterations (forward,
    backward, Adam), as ``stylize`` yields (and fetches the losses to the host) every ``chunk`` steps."""

    def __init__(self, problem: Problem, options: EngineOptions, seeds: Sequence[int], chunk: int, calls: int):
        self.options, self.device = options, problem.device
        configure_backends(options, self.device)
        self.net = set_layout(copy.deepcopy(problem.net), options)
        state = new_state(problem.start_image(list(seeds)), problem.spec.optim)
        iterations = chunk * calls + 1  # never reached: the final scoring forward is not part of a step
        self.steps = stylize(self.net, problem.targets, state, iterations, 1, chunk, options)
        first = next(self.steps)  # step 0's forward and backward: the generator is now between iterations
        self.step0_total = float(first.losses[0, 0, TOTAL])

    def __call__(self) -> float:
        configure_backends(self.options, self.device)
        return float(next(self.steps).losses[-1, 0, TOTAL])


def baseline_features(network: NetworkSpec, last_read: str, weights: VGGWeights, strong: bool) -> nn.Sequential:
    """torchvision's ``features`` (ReLU in place) with the variant's pooling, activation and final tanh (at
    ``network.final_layer``) and
    the given weights; through relu5_x with 2x2 pools rounding down, or (``strong``) truncated after
    ``last_read``, pools rounding up and every parameter frozen."""
    # imported here: torchvision's import pulls in torch._dynamo (2 CPU-s), which `--memory` and every test that
    # imports the bench would pay for a model only the speed rows build
    import torchvision.models  # noqa: PLC0415

    builder = {"vgg19": torchvision.models.vgg19, "vgg16": torchvision.models.vgg16}[network.arch]
    names = layer_names(network.arch)
    keep = names.index(last_read) + 1 if strong else len(names)
    with torch.device("meta"):  # no storage: every conv is overwritten below, and the classifier (120 M) dropped
        layers = list(builder(weights=None).features)[:keep]
    pool = nn.AvgPool2d if network.pooling == "avg" else nn.MaxPool2d
    for i, (name, layer) in enumerate(zip(names[:keep], layers, strict=True)):
        if name.startswith("pool"):
            layers[i] = pool(2, 2, ceil_mode=strong)
        if isinstance(layer, nn.ReLU) and network.activation != "relu":
            layers[i] = nn.LeakyReLU(network.slope, inplace=True) if network.activation == "leaky_relu" else nn.Tanh()
        if name == network.final_layer and network.final_activation == "tanh":
            layers[i] = nn.Tanh()
    features = nn.Sequential(*layers).to_empty(device="cpu")
    with torch.no_grad():
        for conv, (weight, bias) in zip([m for m in layers if isinstance(m, nn.Conv2d)], weights.convs, strict=False):
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
    return features.requires_grad_(not strong)


class BaselineLoop:
    """A plain loop (tutorial or ``strong``, see the module docstring) on the problem's weights, images, start
    image and loss weights. ``step0_total`` is the start image's total loss."""

    def __init__(self, problem: Problem, weights: VGGWeights, strong: bool, chunk: int) -> None:
        spec, self.device, self.strong, self.chunk = problem.spec, problem.device, strong, chunk
        configure_backends(EngineOptions(), self.device)  # IEEE fp32: no TF32 left over from an engine setting
        self.features = baseline_features(spec.network, spec.last_layer, weights, strong).to(self.device)
        self.loss = spec.loss
        self.content_layers = {n: w for n, w in self.loss.content_layer_weights().items() if w}
        self.style_layers = {n: w for n, w in self.loss.style_layer_weights().items() if w}
        names = layer_names(spec.network.arch)
        self.wanted = {names.index(n): n for n in [*self.content_layers, *self.style_layers]}
        self.blend = problem.targets.style_blend
        with torch.no_grad():
            self.content_targets = self.extract(problem.content)
            styles = [problem.pixels.encode(s, self.device) for s in problem.images.styles]
            self.style_targets = [{n: self.gram(f) for n, f in self.extract(s).items()} for s in styles]
        self.image = problem.start_image([spec.seed]).clone().requires_grad_(True)
        adam = spec.optim
        self.optimizer = torch.optim.Adam([self.image], lr=adam.lr, betas=(adam.beta1, adam.beta2), eps=adam.eps)
        with torch.no_grad():
            self.step0_total = float(self.total_loss())

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.wanted:
                out[self.wanted[i]] = x
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
        tv = F.mse_loss(x[:, :, 1:], x[:, :, :-1]) + F.mse_loss(x[..., 1:], x[..., :-1])
        return self.loss.content_weight * content + self.loss.style_weight * style + self.loss.tv_weight * tv

    def __call__(self) -> float:
        """``chunk`` iterations; the tutorial fetches the loss every step, the strong baseline once."""
        configure_backends(EngineOptions(), self.device)
        for _ in range(self.chunk):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.total_loss()
            loss.backward()
            self.optimizer.step()
            total = loss.detach() if self.strong else loss.item()
        return float(total)


def time_interleaved(
    runners: dict[str, Callable[[], Any]], chunk: int, rounds: int, device: torch.device
) -> dict[str, list[float]]:
    """ms per iteration of each runner, one sample per round; rounds alternate the order, so drift in the
    machine's speed (other load, clocks) is shared rather than charged to whoever runs last."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(rounds):
        for name in list(runners) if round_ % 2 == 0 else list(reversed(runners)):
            synchronize(device)
            start = time.perf_counter()
            runners[name]()
            synchronize(device)
            samples[name].append(1000 * (time.perf_counter() - start) / chunk)
    return samples
