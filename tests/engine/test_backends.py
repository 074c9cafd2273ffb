"""Engine speed settings: what each key really changes (flags, layouts, dtypes), checked on the CPU."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ablation.engine.backends import (
    PRECISIONS,
    configure_backends,
    native_bf16,
    prefers_channels_last,
    resolve_options,
    set_layout,
)
from ablation.engine.losses import LossWeights, gram
from ablation.engine.network import NetworkSpec, VGGFeatures
from ablation.engine.transfer import EngineOptions, compute_targets, initial_image, loss_terms
from ablation.engine.weights import random_weights


@pytest.fixture
def restore_backend_flags():
    saved = (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved[:2]
    torch.backends.cudnn.benchmark = saved[2]


def test_tf32_only_with_precision_tf32(restore_backend_flags):
    # torch's default lets cuDNN convolutions use TF32; fp32 (and bf16's fp32 parts) must switch it off
    configure_backends(EngineOptions(precision="fp32"), torch.device("cpu"))
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    configure_backends(EngineOptions(precision="tf32"), torch.device("cpu"))
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    cpu = torch.device("cpu")
    if native_bf16(cpu):
        configure_backends(EngineOptions(precision="bf16"), cpu)
    else:  # an AVX2-only CPU emulates bf16: the user is told it will be slow
        with pytest.warns(UserWarning, match="without native bf16"):
            configure_backends(EngineOptions(precision="bf16"), cpu)
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"


def _tiny(options: EngineOptions):
    net = set_layout(VGGFeatures(NetworkSpec(), random_weights("vgg19").convs, "relu5_1"), options)
    noise = torch.Generator().manual_seed(0)
    content = torch.randn(1, 3, 32, 32, generator=noise) * 60.0
    style = torch.randn(1, 3, 32, 32, generator=noise) * 60.0
    return net, content, compute_targets(net, content, [style], LossWeights())


def test_channels_last_reaches_weights_and_activations():
    options = EngineOptions(channels_last=True)
    net, content, targets = _tiny(options)
    for conv in (m for m in net.layers if isinstance(m, torch.nn.Conv2d)):  # NHWC weights: no copy per call
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    features = net(content.contiguous(memory_format=torch.channels_last), ["relu1_1", "relu3_1", "relu5_1"])
    for name, value in features.items():
        assert value.is_contiguous(memory_format=torch.channels_last), name
        assert not value.is_contiguous(), name  # really NHWC, not a layout-ambiguous shape
    # the same losses as NCHW up to float32 rounding (the conv sums in another order)
    image = initial_image(content, [0])
    nchw_net, _, nchw_targets = _tiny(EngineOptions())
    torch.testing.assert_close(
        loss_terms(net, image, targets, options), loss_terms(nchw_net, image, nchw_targets), rtol=1e-5, atol=0
    )


def test_bf16_runs_the_network_in_bf16_and_the_losses_in_fp32():
    features = torch.randn(2, 8, 5, 7).to(torch.bfloat16)
    g = gram(features)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, gram(features.float()), rtol=0, atol=0)  # the Gram of the cast, exactly
    net, content, targets = _tiny(EngineOptions())
    # an image with the inputs' spread, so that content and style losses are both far from 0 and from the
    # targets' own magnitude (from faint noise the style loss is ~sum A^2 and hides any Gram error)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 60.0
    fp32 = loss_terms(net, image, targets)
    bf16 = loss_terms(net, image, targets, EngineOptions(precision="bf16"))
    assert bf16.dtype == torch.float32
    # bf16 keeps 8 mantissa bits (0.4% per value); measured: content 0.09-0.35%, style 0.76-0.78%
    deviation = ((bf16 - fp32).abs() / fp32.abs())[:, :2]
    assert float(deviation.max()) < 0.02
    assert float(deviation.min()) > 1e-4  # and bf16 really ran: the numbers are not fp32's
    assert torch.equal(bf16[:, 2], fp32[:, 2])  # tv reads the image, not the network: exactly fp32


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gram_and_its_symmetric_backward_equal_the_plain_product(layout):
    """The Gram's one-bmm backward, in either layout, equals autograd through F F^T / n (float64)."""
    features = torch.randn(2, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    plain = features.detach().clone().requires_grad_(True)
    weights = torch.randn(2, 6, 6, dtype=torch.float64)  # a non-symmetric upstream gradient
    flat = plain.reshape(2, 6, 35)
    expected = torch.bmm(flat, flat.transpose(1, 2)) / (6 * 35)
    torch.testing.assert_close(gram(features), expected, rtol=1e-14, atol=0)
    (gram(features) * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(features.grad, plain.grad, rtol=1e-12, atol=1e-15)
    assert features.grad.is_contiguous(memory_format=layout)  # no layout change on the way back


def test_channels_last_auto_resolves_per_device_before_the_run():
    """auto: NHWC on a oneDNN CPU and for CUDA's tensor-core precisions (each measured faster there), NCHW for CUDA
    fp32 (measured faster too) and elsewhere; an explicit choice is kept."""
    cpu, cuda, auto = torch.device("cpu"), torch.device("cuda"), EngineOptions(channels_last="auto")
    assert resolve_options(auto, cpu).channels_last is torch.backends.mkldnn.is_available()
    assert [resolve_options(replace(auto, precision=p), cuda).channels_last for p in PRECISIONS] == [False, True, True]
    assert prefers_channels_last(torch.device("meta")) is False
    assert resolve_options(EngineOptions(channels_last=False), cpu).channels_last is False
    with pytest.raises(ValueError, match="resolve it first"):
        set_layout(VGGFeatures(NetworkSpec(), random_weights("vgg19").convs, "relu1_1"), auto)
