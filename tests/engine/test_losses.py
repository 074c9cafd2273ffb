"""Loss formulas against values computed by hand on tiny tensors."""

import pytest
import torch

from ablation.engine.losses import (
    LossWeights,
    content_loss,
    gram,
    mean_squared,
    style_distances,
    style_loss,
    tv_loss,
)


def test_gram_is_ftf_over_hwc():
    # F (HW x C) = [[1, 2], [3, 4]] from a [1, C=2, H=1, W=2] tensor: F^T F = [[10, 14], [14, 20]], / (1*2*2)
    features = torch.tensor([[[[1.0, 3.0]], [[2.0, 4.0]]]])
    assert torch.allclose(gram(features), torch.tensor([[[2.5, 3.5], [3.5, 5.0]]]))


def test_gram_is_per_sample():
    a = torch.randn(1, 3, 4, 5)
    both = gram(torch.cat([a, 2 * a]))
    assert torch.allclose(both[1], 4 * both[0])


def test_content_loss_weights_layers_by_blend():
    feats = {"relu4_2": torch.ones(1, 1, 2, 2), "relu5_2": torch.zeros(1, 1, 1, 1)}
    targets = {"relu4_2": torch.zeros(1, 1, 2, 2), "relu5_2": torch.full((1, 1, 1, 1), 2.0)}
    # mean((1-0)^2) = 1 on relu4_2, mean((0-2)^2) = 4 on relu5_2; blend 0.25: 5 * (0.25 * 1 + 0.75 * 4) = 16.25
    weights = LossWeights(content_blend=0.25).content_layer_weights()
    distances = {n: mean_squared(feats[n], targets[n]) for n in feats}
    assert content_loss(distances, weights, 5.0).item() == pytest.approx(16.25)


def test_style_loss_blends_styles_and_layers():
    feats = {"relu1_1": torch.tensor([[[[1.0, 3.0]], [[2.0, 4.0]]]])}  # Gram [[2.5, 3.5], [3.5, 5]]
    zero, ones = torch.zeros(1, 2, 2), torch.ones(1, 2, 2)
    # vs zeros: mean(2.5^2, 3.5^2, 3.5^2, 5^2) = 13.9375; vs ones: mean(1.5^2, 2.5^2, 2.5^2, 4^2) = 7.6875
    distances = {"relu1_1": style_distances(feats["relu1_1"], [zero, ones])}
    value = style_loss(distances, [0.75, 0.25], {"relu1_1": 1.0}, 500.0)
    assert value.item() == pytest.approx(500 * (0.75 * 13.9375 + 0.25 * 7.6875))


def test_style_layer_weights_are_exponential_and_normalised():
    weights = LossWeights(style_layer_exp=2.0).style_layer_weights()
    assert list(weights.values()) == pytest.approx([1 / 31, 2 / 31, 4 / 31, 8 / 31, 16 / 31])
    assert list(LossWeights().style_layer_weights().values()) == pytest.approx([0.2] * 5)


def test_tv_loss_on_a_ramp():
    # x = column index (0..3) in every channel: dx = 1 everywhere, dy = 0 -> tv = tvw * (0 + 1)
    image = torch.arange(4.0).repeat(1, 3, 3, 1)
    assert tv_loss(image, 100.0).item() == pytest.approx(100.0)
    # a checkerboard of +-1: dy^2 = dx^2 = 4 -> tv = 2 * (4 + 4) = 16
    board = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(2, 2).expand(1, 3, 4, 4)
    assert tv_loss(board, 2.0).item() == pytest.approx(16.0)


def test_mean_squared_matches_upstream_l2_loss_form():
    a, b = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 7)
    upstream = 2 * (0.5 * ((a[1] - b[1]) ** 2).sum()) / a[1].numel()  # 2 * tf.nn.l2_loss(d) / size
    assert mean_squared(a, b)[1].item() == pytest.approx(upstream.item(), rel=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_mean_squared_gradient_is_autograds_bit_for_bit(layout):
    """The written-out backward, d * (2 g / n), against autograd's own chain through pow and mean."""
    a = torch.randn(2, 8, 5, 7).contiguous(memory_format=layout).requires_grad_(True)
    b = torch.randn(2, 8, 5, 7).contiguous(memory_format=layout)
    grad = torch.tensor([0.7, -3.1])
    ours = mean_squared(a, b)
    (ours * grad).sum().backward()
    ours_grad, a.grad = a.grad, None
    autograd = (a - b).pow(2).flatten(1).mean(dim=1)
    (autograd * grad).sum().backward()
    assert torch.allclose(ours, autograd, rtol=1e-6, atol=0)  # the sum's order follows the memory layout
    assert torch.equal(ours_grad, a.grad)


def test_read_layers_skip_zero_weights():
    assert LossWeights().read_layers() == ["relu4_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    assert "relu5_2" in LossWeights(content_blend=0.5).read_layers()
    assert LossWeights(style_weight=0).read_layers() == ["relu4_2"]
