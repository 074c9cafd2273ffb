"""Activation checkpointing changes memory, not numbers: the losses and the image at every step equal the run
without it (1e-6 relative over 20 steps), in every layout and precision, for pooling and activation variants."""

from __future__ import annotations

import pytest
import torch

from ablation.engine.losses import LossWeights
from ablation.engine.network import NetworkSpec, VGGFeatures
from ablation.engine.transfer import EngineOptions, compute_targets, initial_image, new_state, stylize
from ablation.engine.weights import random_weights

STEPS = 20


def run(spec: NetworkSpec, options: EngineOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Every step's losses [STEPS + 1, 1, 4] and the final image of seed 0 on a 40x36 pair."""
    torch.manual_seed(0)
    content, style = torch.rand(1, 3, 36, 40) * 255 - 120, torch.rand(1, 3, 40, 44) * 255 - 120
    net = VGGFeatures(spec, random_weights(spec.arch, 0).convs, "relu5_1")
    if options.channels_last:
        net = net.to(memory_format=torch.channels_last)
    targets = compute_targets(net, content, [style], LossWeights())
    state = new_state(initial_image(content, [0]))
    losses = torch.cat([torch.from_numpy(p.losses) for p in stylize(net, targets, state, STEPS, 1, 5, options)])
    return losses, state.image.detach()


@pytest.mark.parametrize(
    ("spec", "precision", "channels_last"),
    [
        (NetworkSpec(), "fp32", False),
        (NetworkSpec(), "fp32", True),
        (NetworkSpec(), "bf16", True),
        (NetworkSpec(pooling="avg", activation="leaky_relu", final_activation="tanh"), "fp32", False),
        (NetworkSpec(arch="vgg16"), "fp32", True),
    ],
    ids=["nchw", "nhwc", "bf16", "avg-leaky-tanh", "vgg16"],
)
def test_checkpointed_steps_equal_the_plain_run(spec: NetworkSpec, precision: str, channels_last: bool) -> None:
    plain = run(spec, EngineOptions(precision, channels_last, checkpointing=False))
    lean = run(spec, EngineOptions(precision, channels_last, checkpointing=True))
    assert plain[0].shape == (STEPS + 1, 1, 4)
    torch.testing.assert_close(lean[0], plain[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(lean[1], plain[1], rtol=1e-6, atol=1e-6)


def test_a_stage_ends_after_its_pool() -> None:
    net = VGGFeatures(NetworkSpec(), random_weights("vgg19", 0).convs, "relu4_2")
    bounds = [(net.names[lo], net.names[hi - 1]) for lo, hi in net.stages()]
    assert bounds == [("conv1_1", "pool1"), ("conv2_1", "pool2"), ("conv3_1", "pool3"), ("conv4_1", "relu4_2")]
