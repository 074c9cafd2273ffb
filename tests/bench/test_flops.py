"""The benchmark's FLOP count, from the network's shape walk, against hand-computed and documented numbers."""

from __future__ import annotations

import pytest

from ablation.bench.flops import conv_plan, forward_gflop, iteration_gflop

#: torchvision's documented GFLOPS (multiply-adds, 224x224, batch 1) minus the classifier's
#: 25088*4096 + 4096*4096 + 4096*1000 = 123.6 M multiply-adds: what the conv stacks cost.
TORCHVISION_GMACS = {"vgg16": 15.47, "vgg19": 19.63}
CLASSIFIER_GMACS = (25088 * 4096 + 4096 * 4096 + 4096 * 1000) / 1e9


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_conv_flops_match_torchvision_documented_cost(arch: str):
    last = "relu5_3" if arch == "vgg16" else "relu5_4"
    plan = conv_plan(arch, last, 224, 224, ceil_pool=False)
    forward_gmacs = sum(forward_gflop(c) for c in plan) / 2
    assert forward_gmacs == pytest.approx(TORCHVISION_GMACS[arch] - CLASSIFIER_GMACS, abs=0.01)


def test_iteration_flops_engine_and_baseline():
    # 224 px: conv5_2..5_4 each 2*9*512*512*14*14 = 0.925 GFLOP forward; the rest of VGG19's convs make
    # the forward through conv5_1. Engine: forward + input gradient up to relu5_1 = 2x that forward.
    # Baseline: the full forward, plus input and weight gradients up to relu5_1.
    full = conv_plan("vgg19", "relu5_4", 224, 224, ceil_pool=False)
    to_5_1 = conv_plan("vgg19", "relu5_1", 224, 224, ceil_pool=True)
    deep = 2 * 9 * 512 * 512 * 14 * 14 / 1e9
    forward_to_5_1 = sum(forward_gflop(c) for c in to_5_1)
    assert sum(forward_gflop(c) for c in full) == pytest.approx(forward_to_5_1 + 3 * deep)
    assert iteration_gflop(to_5_1, "relu5_1", weight_grads=False) == pytest.approx(2 * forward_to_5_1)
    assert iteration_gflop(full, "relu5_1", weight_grads=True) == pytest.approx(3 * forward_to_5_1 + 3 * deep)


def test_pools_round_up_like_tensorflow_or_down_like_torchvision():
    # 341 px high (the report's content at 256 wide): 341 -> 171 -> 86 -> 43 -> 22 rounding up,
    # 341 -> 170 -> 85 -> 42 -> 21 rounding down; conv5_1 sees the last of these
    assert conv_plan("vgg19", "relu5_1", 341, 256, ceil_pool=True)[-1].height == 22
    assert conv_plan("vgg19", "relu5_1", 341, 256, ceil_pool=False)[-1].height == 21


def test_first_conv_by_hand():
    # conv1_1 at 16x16: 2 * 9 * 3 in * 64 out * 256 px = 884,736 FLOP; conv1_2: 2 * 9 * 64 * 64 * 256 = 18,874,368
    conv1_1, conv1_2 = conv_plan("vgg19", "relu1_2", 16, 16, ceil_pool=True)
    assert (conv1_1.in_channels, conv1_1.channels, conv1_2.in_channels) == (3, 64, 64)
    assert forward_gflop(conv1_1) * 1e9 == pytest.approx(884_736)
    assert iteration_gflop([conv1_1, conv1_2], "relu1_2", weight_grads=False) * 1e9 == pytest.approx(
        2 * (884_736 + 18_874_368)
    )
