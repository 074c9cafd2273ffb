"""Activation checkpointing changes memory, not numbers: the losses and the image at every step equal the run
without it (1e-6 relative over 20 steps), in every layout and precision, for pooling and activation variants,
with every stage recomputed or only the leading ones."""

from __future__ import annotations

import functools

import pytest
import torch

from ablation.engine import network
from ablation.engine.backends import native_bf16
from ablation.engine.losses import LossWeights
from ablation.engine.network import LeanReluMaxPool, NetworkSpec, VGGFeatures
from ablation.engine.transfer import EngineOptions, compute_targets, initial_image, new_state, stylize
from ablation.engine.weights import random_weights

STEPS = 20
#: Where the CPU has no native bf16, the bf16 case runs on torch's reference convolutions: 14 s on a 2-core AMD EPYC
#: (AVX2), against 2-5 s for each fp32 case. There it runs in `make test` only, so that `make test-fast` keeps its
#: 90 s bound; on a CPU with native bf16 it stays in both.
EMULATED_BF16 = () if native_bf16(torch.device("cpu")) else pytest.mark.slow


@functools.cache  # the plain runs are shared by the cases that differ only in what is recomputed
def run(spec: NetworkSpec, options: EngineOptions, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Every step's losses [STEPS + 1, 1, 4] and the final image (on the CPU) of seed 0 on a 20x18 pair: small enough
    for a CPU without native bf16 (torch's slow reference path: 40 s for a 40x36 pair), and still odd sides at pool2
    to pool4 and 2x2 pixels at relu5_1. The same pair, weights and start on every ``device`` (drawn on the CPU)."""
    torch.manual_seed(0)
    h, w = 18, 20
    content, style = torch.rand(1, 3, h, w) * 255 - 120, torch.rand(1, 3, h + 4, w + 4) * 255 - 120
    content, style = content.to(device), style.to(device)
    net = VGGFeatures(spec, random_weights(spec.arch, 0).convs, "relu5_1").to(device)
    if options.channels_last:
        net = net.to(memory_format=torch.channels_last)
    targets = compute_targets(net, content, [style], LossWeights())
    state = new_state(initial_image(content, [0]))
    losses = torch.cat([torch.from_numpy(p.losses) for p in stylize(net, targets, state, STEPS, 1, 5, options)])
    return losses, state.image.detach().cpu()


@pytest.mark.parametrize(
    ("spec", "precision", "channels_last", "stages"),
    [
        (NetworkSpec(), "fp32", False, None),
        (NetworkSpec(), "fp32", True, None),
        pytest.param(NetworkSpec(), "bf16", True, None, marks=EMULATED_BF16),
        (NetworkSpec(pooling="avg", activation="leaky_relu", final_activation="tanh"), "fp32", False, None),
        (NetworkSpec(arch="vgg16"), "fp32", True, None),
        (NetworkSpec(), "fp32", True, 2),
    ],
    ids=["nchw", "nhwc", "bf16", "avg-leaky-tanh", "vgg16", "nhwc-2-of-5-stages"],
)
def test_checkpointed_steps_equal_the_plain_run(
    spec: NetworkSpec, precision: str, channels_last: bool, stages: int | None
) -> None:
    plain = run(spec, EngineOptions(precision, channels_last, checkpointing=False))
    lean = run(spec, EngineOptions(precision, channels_last, checkpointing=True, recomputed_stages=stages))
    assert plain[0].shape == (STEPS + 1, 1, 4)
    torch.testing.assert_close(lean[0], plain[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(lean[1], plain[1], rtol=1e-6, atol=1e-6)


def test_a_stage_ends_after_its_pool() -> None:
    net = VGGFeatures(NetworkSpec(), random_weights("vgg19", 0).convs, "relu4_2")
    bounds = [(net.names[lo], net.names[hi - 1]) for lo, hi in net.stages()]
    assert bounds == [("conv1_1", "pool1"), ("conv2_1", "pool2"), ("conv3_1", "pool3"), ("conv4_1", "relu4_2")]


@pytest.mark.parametrize("piece_bytes", [2**26, 4096], ids=["whole", "in-pieces"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_lean_relu_max_pool_equals_relu_then_max_pool_bit_for_bit(
    dtype: torch.dtype, channels_last: bool, piece_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recomputed stages' fused ReLU + pool: the same activation, pooled values and input gradient as
    nn.ReLU(inplace=True) then the 2x2/2 ceil-mode max pool, with ties (a flat region) and odd sides, its
    backward on the whole tensor or in pieces (whole channels in NCHW, pairs of rows in NHWC)."""
    monkeypatch.setattr(network, "LEAN_POOL_PIECE_BYTES", piece_bytes)
    torch.manual_seed(0)
    x = torch.randn(2, 40, 9, 11).to(dtype)
    x[:, :, :4, :4] = 0.5  # ties inside windows: the pool must pick the same cell
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weights = torch.randn(2, 40, 9, 11).to(dtype), torch.randn(2, 40, 5, 6).to(dtype)
    results = []
    for fused in (False, True):
        leaf = x.clone().requires_grad_(True)
        conv_out = leaf * 1  # as a conv's output: a fresh tensor the ReLU may overwrite
        if fused:
            act, pooled = LeanReluMaxPool.apply(conv_out)
        else:
            act = torch.relu_(conv_out)
            pooled = torch.nn.functional.max_pool2d(act, 2, 2, ceil_mode=True)
        ((act * weights[0]).sum() + (pooled * weights[1]).sum()).backward()
        results.append((act.detach(), pooled.detach(), leaf.grad))
    for plain, lean in zip(*results, strict=True):
        assert torch.equal(plain, lean)
    assert results[1][1].shape == (2, 40, 5, 6)
    assert (len(network._pieces(x)) > 1) == (piece_bytes == 4096)  # the backward did work in pieces
