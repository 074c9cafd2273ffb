"""The per-layer limit: one timing per conv of the truncated network and per style Gram, summed."""

from __future__ import annotations

import pytest
import torch

from ablation.bench.probes import layer_limit_ms
from ablation.engine.network import NetworkSpec, VGGFeatures
from ablation.engine.transfer import EngineOptions

STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def gradient_elements_s(step) -> float:
    """A fake timer: runs the kernel once and charges 1 ns per element of the gradient it returns."""
    (grad,) = step()
    return grad.numel() * 1e-9


@pytest.mark.parametrize("channels_last", [False, True])
def test_limit_sums_every_conv_and_style_gram_at_its_own_shape(vgg19_random, channels_last):
    # 16x16 through relu5_1; each conv's input gradient has its input's size, each Gram's its features':
    # convs  3*256 + 64*256 | 64*64 + 128*64 | 128*16 + 3*256*16 | 256*4 + 3*512*4 | 512*1 = 51,456
    # Grams 64*256 + 128*64 + 256*16 + 512*4 + 512*1 = 31,232; so 82,688 ns = 0.082688 ms
    net = VGGFeatures(NetworkSpec(), vgg19_random.convs, "relu5_1")
    net = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    options = EngineOptions(channels_last=channels_last)
    limit = layer_limit_ms(net, 16, 16, STYLE_LAYERS, options, gradient_elements_s)
    assert len(limit) == 13 + 5 and list(limit)[:3] == ["conv1_1", "gram relu1_1", "conv1_2"]
    assert limit["conv1_1"] == pytest.approx(768e-6) and limit["gram relu5_1"] == pytest.approx(512e-6)
    assert sum(limit.values()) == pytest.approx(82_688e-6)
