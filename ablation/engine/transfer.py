"""The optimisation loop: targets once, then Adam on the pixels, yielding progress to the caller.

Shape as upstream's ``stylize()``: a generator, so the caller decides what to print, log or save.
Unlike upstream the network is built once (by the caller), there is no global state, loss values stay
on the device and are fetched once per yield, and several seeds can run as one batch ([B, 3, H, W]).

Step k's losses are those of the image after k Adam steps, k = 0..iterations: the forward pass that
gives step k's gradient also gives its losses, and one extra forward scores the final image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ablation.engine.adam import AdamSettings, TF1Adam
from ablation.engine.losses import (
    LossWeights,
    content_loss,
    gram,
    mean_squared,
    style_distances,
    style_loss,
    tv_loss,
)
from ablation.engine.network import VGGFeatures

#: The loss columns, in the order of every loss table the loop yields ([..., len(LOSS_NAMES)]).
LOSS_NAMES = ("content", "style", "tv", "total")
#: The total's column: what the optimiser minimises and the best image is chosen by.
TOTAL = LOSS_NAMES.index("total")
NOISE_SCALE = 0.256  # upstream: tf.random_normal(shape) * 0.256, in pixel space


class DivergenceError(RuntimeError):
    """A loss became NaN or Inf; ``step`` is the first such step."""

    def __init__(self, step: int, state: TransferState) -> None:
        super().__init__(f"the loss became NaN/Inf at step {step}: lower optim.lr or the loss weights")
        self.step = step
        self.state = state


@dataclass(frozen=True)
class LBFGSSettings:
    """torch.optim.LBFGS as the best-known implementations use it (history 100); one iteration of the
    loop is one L-BFGS iteration, which costs one function evaluation unless a line search is asked for."""

    lr: float = 1.0
    history_size: int = 100
    line_search: str | None = None  # None | strong_wolfe (more evaluations per iteration)


@dataclass(frozen=True)
class EngineOptions:
    """Speed settings that do not change what is computed, except ``precision`` (fp32 | tf32 | bf16).

    ``channels_last``: NHWC activations and conv weights (``backends.set_layout``), or ``"auto"``, which
    ``backends.resolve_options`` turns into a bool for the device before a run; ``compile``: the loss
    function (network, Grams, losses) through ``torch.compile``. Convolutions dominate and compile calls
    the same conv kernels, so it can only save launches and elementwise passes: measured no gain on a
    CPU (``python -m ablation.bench --compile`` says whether it pays on a given GPU). ``checkpointing``:
    recompute the leading ``recomputed_stages`` stages (None: all) in the backward pass instead of keeping
    their activations (``"auto"``: the memory check turns it on only when the run fits with it and not
    without, and sets the fewest stages that give the lowest peak, ``memory.fit``).
    """

    precision: str = "fp32"
    channels_last: bool | str = False  # True | False | "auto"
    compile: bool = False
    checkpointing: bool | str = False  # True | False | "auto": activation checkpointing (VGGFeatures.reduce)
    recomputed_stages: int | None = None


def stages_to_recompute(net: VGGFeatures, options: EngineOptions) -> int:
    """How many leading stages of ``net`` the loss recomputes in its backward pass (0: checkpointing off)."""
    if options.checkpointing is not True:
        return 0
    return len(net.stages()) if options.recomputed_stages is None else options.recomputed_stages


@dataclass
class Targets:
    """What the loss compares against: content activations and each style image's Grams."""

    content: dict[str, torch.Tensor]
    grams: list[dict[str, torch.Tensor]]
    style_blend: list[float]
    weights: LossWeights


def normalised_blend(blend: Sequence[float] | None, n_styles: int) -> list[float]:
    """Style blend weights normalised to sum 1 (equal when not given), as upstream."""
    raw = [1.0] * n_styles if blend is None else [float(b) for b in blend]
    return [b / sum(raw) for b in raw]


@torch.no_grad()
def compute_targets(
    net: VGGFeatures,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    weights: LossWeights,
    style_blend: Sequence[float] | None = None,
) -> Targets:
    """Content activations and style Grams, each computed once, in pixel space."""
    content_layers = [n for n, w in weights.content_layer_weights().items() if w != 0]
    style_layers = [n for n, w in weights.style_layer_weights().items() if w != 0]
    content_feats = net(content, content_layers) if weights.content_weight else {}
    grams = []
    for style in styles:  # Grams as each layer is made: the pass keeps no style activation
        grams.append(net.reduce(style, dict.fromkeys(style_layers, gram)) if weights.style_weight else {})
    return Targets(content_feats, grams, normalised_blend(style_blend, len(styles)), weights)


def layer_reducers(targets: Targets) -> dict[str, Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
    """Per loss layer, what the loss needs of its activation: {"content": [B]} and/or {"style": [S, B]}
    (:func:`~ablation.engine.losses.mean_squared` against the content target, the style distances)."""
    w = targets.weights
    content = {n for n, v in w.content_layer_weights().items() if v != 0} if targets.content else set()
    style = {n for n, v in w.style_layer_weights().items() if v != 0} if targets.grams and targets.grams[0] else set()

    def reducer(name: str) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        def reduce(feature: torch.Tensor) -> dict[str, torch.Tensor]:
            out = {}
            if name in content:
                out["content"] = mean_squared(feature, targets.content[name])
            if name in style:
                out["style"] = style_distances(feature, [grams[name] for grams in targets.grams])
            return out

        return reduce

    return {name: reducer(name) for name in sorted(content | style)}


def loss_terms(
    net: VGGFeatures, image: torch.Tensor, targets: Targets, options: EngineOptions = EngineOptions()
) -> torch.Tensor:
    """[B, len(LOSS_NAMES)] float32: content, style, tv and total loss of each image in the batch."""
    w = targets.weights
    zero = image.new_zeros(image.shape[0])
    nhwc = options.channels_last is True  # "auto" not yet resolved: the input keeps its layout
    net_input = image.contiguous(memory_format=torch.channels_last) if nhwc else image
    autocast = torch.autocast(image.device.type, dtype=torch.bfloat16) if options.precision == "bf16" else nullcontext()
    with autocast:
        reduced = net.reduce(net_input, layer_reducers(targets), stages_to_recompute(net, options))
    distances = {kind: {n: r[kind] for n, r in reduced.items() if kind in r} for kind in ("content", "style")}
    content = (
        content_loss(distances["content"], w.content_layer_weights(), w.content_weight) if targets.content else zero
    )
    style = (
        style_loss(distances["style"], targets.style_blend, w.style_layer_weights(), w.style_weight)
        if targets.grams and targets.grams[0]
        else zero
    )
    tv = tv_loss(image, w.tv_weight)
    return torch.stack([content, style, tv, content + style + tv], dim=1)  # LOSS_NAMES' order


def initial_image(
    content: torch.Tensor,
    seeds: Sequence[int],
    init: torch.Tensor | None = None,
    noise_blend: float | None = None,
) -> torch.Tensor:
    """[len(seeds), 3, H, W]: upstream's start, image*(1-b) + noise*b with noise = N(0,1)*0.256.

    ``init=None`` is upstream's default: pure noise (b=1), or the content blended with noise when
    ``noise_blend`` < 1 is given. With an initial image (content or a file) b defaults to 0.
    Each seed draws its own noise on the CPU, so a batch equals its seeds run one by one.
    """
    shape = content.shape[1:]
    noise = torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) * NOISE_SCALE for s in seeds]
    ).to(content.device)
    base = content if init is None else init
    blend = (1.0 if init is None else 0.0) if noise_blend is None else float(noise_blend)
    return base * (1.0 - blend) + noise * blend


@dataclass
class TransferState:
    """Everything the loop needs to continue: checkpoint it to resume after an interruption."""

    image: torch.Tensor  # [B, 3, H, W], the current image (after ``step`` steps)
    optimizer: TF1Adam | torch.optim.LBFGS
    step: int = 0
    best_image: torch.Tensor | None = None
    best_total: torch.Tensor | None = None  # [B]
    best_step: torch.Tensor | None = None  # [B]
    settings: AdamSettings | LBFGSSettings = AdamSettings()
    evaluations: int = 0  # forward+backward passes so far (L-BFGS line searches add some)


def new_state(image: torch.Tensor, settings: AdamSettings | LBFGSSettings = AdamSettings()) -> TransferState:
    """The optimised image (a fresh leaf tensor) and its optimiser."""
    param = image.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
    if isinstance(settings, LBFGSSettings):
        optimizer: TF1Adam | torch.optim.LBFGS = torch.optim.LBFGS(
            [param], lr=settings.lr, max_iter=1, history_size=settings.history_size,
            line_search_fn=settings.line_search,
        )  # fmt: skip
    else:
        optimizer = TF1Adam(param, settings)
    return TransferState(param, optimizer, settings=settings)


@dataclass
class Progress:
    """Yielded at sync points. ``losses[i]`` [B, len(LOSS_NAMES)] belongs to step ``steps[i]``; ``state.image`` is
    the image after ``step`` steps; ``done`` on a scale's last yield, when ``state.image`` is that scale's final image.

    Coarse to fine numbers steps on one axis: ``scale`` is the stage, ``step_offset`` its step 0's global step.
    """

    step: int
    steps: np.ndarray
    losses: np.ndarray
    state: TransferState
    done: bool = False
    scale: int = 0
    step_offset: int = 0

    @property
    def global_steps(self) -> np.ndarray:
        return self.steps + self.step_offset

    @property
    def global_step(self) -> int:
        return self.step + self.step_offset


def stylize(
    net: VGGFeatures,
    targets: Targets,
    state: TransferState,
    iterations: int,
    log_every: int = 1,
    sync_every: int = 10,
    options: EngineOptions = EngineOptions(),
) -> Iterator[Progress]:
    """Run the optimiser (Adam or L-BFGS) from ``state.step`` to ``iterations``, yielding every ``sync_every``
    steps and at the end.

    The best image is the lowest-total one seen at steps divisible by ``log_every`` (and the last),
    kept on the device with ``torch.where`` so no step waits for the host.
    """
    x, opt = state.image, state.optimizer
    history = torch.zeros(iterations + 1, x.shape[0], len(LOSS_NAMES), device=x.device)
    if state.best_total is None:
        state.best_total = torch.full((x.shape[0],), float("inf"), device=x.device)
        state.best_step = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        state.best_image = x.detach().clone()
    synced = state.step - 1
    terms_of = torch.compile(loss_terms, dynamic=False) if options.compile else loss_terms
    for step in range(state.step, iterations + 1):
        last = step == iterations
        with torch.no_grad() if last else nullcontext():
            opt.zero_grad(set_to_none=True)
            terms = terms_of(net, x, targets, options)  # [B, len(LOSS_NAMES)]: the losses of the image now
            if not last:
                terms[:, TOTAL].sum().backward()
        history[step] = terms.detach()
        state.evaluations += 1
        if step % log_every == 0 or last:
            keep_best(state, terms[:, TOTAL].detach(), step)
        state.step = step
        if last or step % sync_every == 0:
            rows = history[synced + 1 : step + 1].cpu().numpy()
            steps = np.arange(synced + 1, step + 1)
            bad = ~np.isfinite(rows).all(axis=(1, 2))
            if bad.any():
                raise DivergenceError(int(steps[bad.argmax()]), state)
            synced = step
            yield Progress(step, steps, rows, state, done=last)
        if last:
            break
        if isinstance(opt, TF1Adam):
            opt.step()
        else:
            opt.step(lbfgs_closure(net, targets, state, terms, options))
        state.step = step + 1


def keep_best(state: TransferState, totals: torch.Tensor, step: int) -> None:
    """Keep each sample's lowest-total image so far, on the device (no host sync)."""
    better = totals < state.best_total
    state.best_total = torch.where(better, totals, state.best_total)
    state.best_step = torch.where(better, torch.full_like(state.best_step, step), state.best_step)
    state.best_image = torch.where(better.view(-1, 1, 1, 1), state.image.detach(), state.best_image)


def lbfgs_closure(
    net: VGGFeatures, targets: Targets, state: TransferState, terms: torch.Tensor, options: EngineOptions
) -> Callable[[], torch.Tensor]:
    """L-BFGS's closure: the first call returns the loss whose gradient is already in ``state.image.grad``;
    only a line search asks again, and each such evaluation is counted."""
    first = [terms[:, TOTAL].sum().detach()]

    def closure() -> torch.Tensor:
        if first:
            return first.pop()
        state.optimizer.zero_grad(set_to_none=True)
        total = loss_terms(net, state.image, targets, options)[:, TOTAL].sum()
        total.backward()
        state.evaluations += 1
        return total.detach()

    return closure
