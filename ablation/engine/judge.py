"""One fixed judge for every output, so variants are compared on one scale.

A variant's own losses are measured by its own network: a VGG16 style loss and a VGG19 style loss are
different functions, so "VGG16 lowers the content loss by 95%" compares unlike numbers. The judge scores
any output with the ``original`` network (VGG19, max pooling, ReLU), the same weight source, the same
loss weights and the same (resized) inputs, so its content, style, TV and total are comparable across
variants. For an ``original`` run the judge *is* the run's own network: its numbers equal the run's final
losses. SSIM(output, content) (scikit-image) adds a measure that depends on no network at all.

No Hydra or MLflow here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ablation.engine.backends import resolve_options, set_layout
from ablation.engine.images import PixelSpace
from ablation.engine.losses import LossWeights
from ablation.engine.network import NetworkSpec, VGGFeatures
from ablation.engine.prepare import Problem, build_network
from ablation.engine.transfer import LOSS_NAMES, EngineOptions, Targets, compute_targets, loss_terms
from ablation.engine.weights import VGGWeights, load_weights

#: The judge network: the report's original model.
JUDGE_NETWORK = NetworkSpec(arch="vgg19", pooling="max", activation="relu", final_activation=None)


@dataclass
class Judge:
    """The judge network, its targets for one problem's inputs, and its pixel space."""

    net: VGGFeatures
    targets: Targets
    pixels: PixelSpace
    content_rgb: np.ndarray  # uint8 [H, W, 3], the resized content the output is compared with
    options: EngineOptions = EngineOptions()  # fp32 always; the run's memory layout


def judge_weights(problem: Problem, weights_path: str | None = None) -> VGGWeights:
    """VGG19 weights from the run's weight source: the run's own when it is VGG19, else loaded afresh.

    ``weights_path`` replaces ``weights.path`` (matconvnet/file sources) when the run's file is a VGG16 one.
    """
    if problem.weights.arch == JUDGE_NETWORK.arch and weights_path is None:
        return problem.weights
    options = dict(problem.spec.weights.options)
    if weights_path is not None:
        options["path"] = weights_path
    return load_weights(problem.spec.weights.source, JUDGE_NETWORK.arch, **options)


def judge_options(engine: EngineOptions, device: torch.device) -> EngineOptions:
    """fp32, in the layout an fp32 run takes on ``device``: the run's own where it names one, else the one
    ``run.channels_last=auto`` gives fp32. So an fp32 ``original`` run's own final losses come out to the last bit,
    and a tf32 or bf16 run on CUDA (NHWC there) is judged in NCHW, as the fp32 runs beside it are."""
    return EngineOptions(channels_last=resolve_options(replace(engine, precision="fp32"), device).channels_last)


def build_judge(problem: Problem, weights: VGGWeights, loss: LossWeights | None = None) -> Judge:
    """The original network on ``problem``'s inputs and style blend, targets computed once.

    ``loss`` fixes the judge's loss weights (tuning varies the run's own); by default they are the run's.
    The judge scores in fp32 (:func:`judge_options`).
    """
    options = judge_options(problem.spec.engine, problem.device)
    spec = replace(problem.spec, network=JUDGE_NETWORK, loss=loss or problem.spec.loss)
    net = set_layout(build_network(spec, weights, problem.device), options)
    pixels = PixelSpace(weights.mean_pixel)
    content = pixels.encode(problem.images.content, problem.device)
    styles = [pixels.encode(s, problem.device) for s in problem.images.styles]
    targets = compute_targets(net, content, styles, spec.loss, spec.images.style_blend)
    return Judge(net, targets, pixels, problem.images.content, options)


@torch.no_grad()
def score(judge: Judge, image: torch.Tensor, image_pixels: PixelSpace) -> dict[str, float]:
    """Judge losses of ``image`` [1, 3, H, W] (in ``image_pixels``' space) and SSIM of its PNG against the content.

    The losses are those of the optimised image itself (unclipped, as a run's final losses are); it is moved
    into the judge's pixel space only when the mean pixels differ. SSIM compares the saved uint8 output with
    the resized content photo (data range 255, colour channels averaged).
    """
    x = image_pixels.convert(image.detach().float(), judge.pixels)
    terms = loss_terms(judge.net, x, judge.targets, judge.options)[0].cpu().numpy()
    output_rgb = image_pixels.decode(image)
    ssim = structural_similarity(output_rgb, judge.content_rgb, channel_axis=2, data_range=255)
    return {**{f"judge_{k}": float(v) for k, v in zip(LOSS_NAMES, terms, strict=True)}, "ssim_content": float(ssim)}
