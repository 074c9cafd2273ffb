"""The per-layer limit: one kernel step per conv of the truncated network and per style Gram, at its own shape."""

from __future__ import annotations

import pytest
import torch

from ablation.bench.probes import KernelInputs, LimitRunner, cpu_jiffies, kernel_steps, stolen_share
from ablation.engine.network import NetworkSpec, VGGFeatures
from ablation.engine.transfer import EngineOptions

STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


@pytest.mark.parametrize("channels_last", [False, True])
def test_limit_runs_every_conv_and_style_gram_at_its_own_shape(vgg19_random, channels_last):
    # 16x16 through relu5_1; each conv's input gradient has its input's size, each Gram's its features':
    # convs  3*256 + 64*256 | 64*64 + 128*64 | 128*16 + 3*256*16 | 256*4 + 3*512*4 | 512*1 = 51,456
    # Grams 64*256 + 128*64 + 256*16 + 512*4 + 512*1 = 31,232; so 82,688 gradient elements
    net = VGGFeatures(NetworkSpec(), vgg19_random.convs, "relu5_1")
    net = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    options = EngineOptions(channels_last=channels_last)
    inputs = KernelInputs(options, torch.device("cpu"))
    steps = kernel_steps(net, 16, 16, STYLE_LAYERS, inputs)
    elements = {name: step()[0].numel() for name, step in steps.items()}
    assert len(elements) == 13 + 5 and list(elements)[:3] == ["conv1_1", "gram relu1_1", "conv1_2"]
    assert elements["conv1_1"] == 768 and elements["gram relu5_1"] == 512
    assert sum(elements.values()) == 82_688
    # kernels of one shape share their inputs (a conv's incoming gradient is the next conv's input, and the Gram's
    # features too): per level the maps of each width and the Gram's C x C, 3 + 3 + 3 + 3 + 1 = 13 tensors (the
    # C x C of relu5_1 is relu4_1's) instead of two per kernel (36)
    assert len(inputs.made) == 13
    runner = LimitRunner(net, 16, 16, STYLE_LAYERS, options, chunk=2)
    runner()  # two passes over the 18 kernels
    assert len(runner.steps) == 18


def test_stolen_share_is_the_hypervisors_part_of_the_cpu_time_between_two_readings():
    assert stolen_share((100, 1_000), (150, 2_000)) == pytest.approx(0.05)  # 50 of 1,000 jiffies
    assert stolen_share(None, (150, 2_000)) is None and stolen_share((100, 1_000), (100, 1_000)) is None
    now = cpu_jiffies()  # this machine's /proc/stat: stolen no more than the whole
    assert now is None or 0 <= now[0] <= now[1]
