"""Each variant builds exactly the expected modules: pooling, activations, the tanh, the truncation point."""

import logging

import pytest
import torch
from torch import nn

from ablation.engine import network
from ablation.engine.errors import UserError
from ablation.engine.losses import LossWeights
from ablation.engine.network import NetworkSpec, VGGFeatures, deepest, layer_names, layer_shapes
from ablation.spec import from_config
from tests.support import config_for

#: The report's six variants, whose modules this file spells out by name
VARIANTS = ["original", "avg_pool", "leaky_relu", "tanh_final", "vgg16", "vgg16_tanh"]


def build(variant: str, weights19, weights16, **overrides) -> VGGFeatures:
    spec = from_config(config_for(variant, **overrides))
    weights = weights16 if spec.network.arch == "vgg16" else weights19
    return VGGFeatures(spec.network, weights.convs, spec.last_layer)


def test_layer_names_follow_upstream():
    names = layer_names("vgg19")
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names[-1] == "relu5_4" and len(names) == 36  # upstream's VGG19_LAYERS
    assert len(layer_names("vgg16")) == 30 and layer_names("vgg16")[-1] == "relu5_3"


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_modules(variant, vgg19_random, vgg16_random):
    net = build(variant, vgg19_random, vgg16_random)
    arch = "vgg16" if variant.startswith("vgg16") else "vgg19"
    # default loss weights read relu5_1 deepest (relu5_2 has weight 1 - blend = 0): nothing after it is built
    assert net.names[-1] == "relu5_1"
    assert net.names == layer_names(arch)[: layer_names(arch).index("relu5_1") + 1]
    pools = [m for m in net.layers if "Pool" in type(m).__name__]
    assert len(pools) == 4 and all(p.ceil_mode for p in pools)
    want_pool = nn.AvgPool2d if variant == "avg_pool" else nn.MaxPool2d
    assert all(type(p) is want_pool for p in pools)
    acts = [m for n, m in zip(net.names, net.layers, strict=True) if n.startswith("relu")]
    want_act = nn.LeakyReLU if variant == "leaky_relu" else network.ReLU  # in place both ways
    assert all(type(a) is want_act for a in acts[:-1])
    assert type(acts[-1]) is (nn.Tanh if variant.endswith("tanh") or variant == "tanh_final" else want_act)
    if variant == "leaky_relu":
        assert all(a.negative_slope == 0.2 for a in acts)
    assert not any(p.requires_grad for p in net.parameters())
    n_convs = sum(isinstance(m, nn.Conv2d) for m in net.layers)
    assert n_convs == (11 if arch == "vgg16" else 13)  # conv1_1..conv5_1: 2+2+3+3+1 or 2+2+4+4+1


def test_tanh_stays_at_final_layer_whatever_the_losses_read(vgg19_random, vgg16_random):
    # content_blend 0.5 reads relu5_2 too, so the network grows to relu5_2; tanh stays at relu5_1
    net = build("tanh_final", vgg19_random, vgg16_random, **{"loss.content_blend": 0.5})
    assert net.names[-1] == "relu5_2" and isinstance(net.layers[-1], nn.ReLU)
    assert isinstance(net.layers[net.names.index("relu5_1")], nn.Tanh)
    moved = build("tanh_final", vgg19_random, vgg16_random, **{"variant.final_layer": "relu3_1"})
    tanhs = [name for name, layer in zip(moved.names, moved.layers, strict=True) if isinstance(layer, nn.Tanh)]
    assert tanhs == ["relu3_1"]


@pytest.mark.parametrize("variant", ["tanh_every_conv", "vgg16_tanh_every_conv"])
def test_tanh_after_every_conv(variant, vgg19_random, vgg16_random):
    net = build(variant, vgg19_random, vgg16_random)
    acts = [layer for name, layer in zip(net.names, net.layers, strict=True) if name.startswith("relu")]
    # relu1_1..relu5_1, the network stops there: 2+2+3+3+1 or 2+2+4+4+1 activations
    assert len(acts) == (11 if variant.startswith("vgg16") else 13) and all(isinstance(a, nn.Tanh) for a in acts)


def test_final_layer_deeper_than_any_read_changes_no_module_and_warns(vgg19_random, vgg16_random, caplog):
    with caplog.at_level(logging.WARNING, logger="ablation.engine.network"):
        net = build("tanh_last_relu", vgg19_random, vgg16_random)
    assert not any(isinstance(layer, nn.Tanh) for layer in net.layers)
    (record,) = caplog.records
    assert (
        record.getMessage()
        == "tanh at relu5_4 changes nothing: the network stops at relu5_1, the deepest layer a loss reads"
    )


def test_final_layer_the_architecture_lacks_is_refused_naming_the_choices(vgg19_random):
    with pytest.raises(UserError, match=r"='relu5_4': vgg16 has no such layer; choose one of relu1_1, .*, relu5_3$"):
        VGGFeatures(NetworkSpec(arch="vgg16", final_layer="relu5_4"), vgg19_random.convs, "relu5_1")


def test_leaky_slope_is_configurable(vgg19_random, vgg16_random):
    net = build("leaky_relu", vgg19_random, vgg16_random, **{"variant.slope": 0.01})
    assert net.layers[1].negative_slope == 0.01


def test_ceil_pooling_shapes_on_odd_sizes(vgg19_random):
    # the report's content is 400x533: TensorFlow 'SAME' pooling gives ceil(533/16) = 34 rows at relu5_1
    net = VGGFeatures(NetworkSpec(), vgg19_random.convs, "relu5_1")
    out = net(torch.zeros(1, 3, 33, 17), ["relu5_1", "relu2_1"])
    assert out["relu5_1"].shape[-2:] == (3, 2) and out["relu2_1"].shape[-2:] == (17, 9)


def test_avg_pool_divides_by_in_image_cells_only(vgg19_random):
    pool = VGGFeatures(NetworkSpec(pooling="avg"), vgg19_random.convs, "relu5_1").layers[4]
    x = torch.arange(9.0).view(1, 1, 3, 3)  # last row/column windows hold 2 and 1 cells
    assert pool(x)[0, 0].tolist() == [[2.0, 3.5], [6.5, 8.0]]


def test_deepest_and_errors():
    assert deepest("vgg19", LossWeights().read_layers()) == "relu5_1"
    with pytest.raises(ValueError, match="relu5_4"):
        deepest("vgg16", ["relu5_4"])


def test_layer_shapes_walk_by_hand():
    # 33x17 through relu2_1: conv1_x keep 33x17 at 64 ch, pool1 rounds up to 17x9, conv2_1 makes 128 ch
    shapes = layer_shapes("vgg19", "relu2_1", 33, 17)
    assert [s.name for s in shapes] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1", "relu2_1"]
    assert (shapes[0].in_channels, shapes[0].channels, shapes[0].height, shapes[0].width) == (3, 64, 33, 17)
    assert (shapes[4].height, shapes[4].width, shapes[5].in_channels, shapes[5].elements) == (17, 9, 64, 128 * 17 * 9)
    assert layer_shapes("vgg19", "pool1", 33, 17, ceil_pool=False)[-1].height == 16  # torchvision's default


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_relu_after_its_pool_and_in_place_backward_give_autograds_numbers(vgg19_random, layout):
    """The network pools before a ReLU that no loss reads and masks gradients in place; activations and the
    image's gradient equal torch's own modules run in network order (out-of-place ReLU), bit for bit."""
    net = VGGFeatures(NetworkSpec(), vgg19_random.convs, "relu3_1").to(memory_format=layout)
    plain = [nn.ReLU() if isinstance(m, nn.ReLU) else m for m in net.layers]
    wanted = ["relu1_1", "relu2_1", "relu3_1"]
    torch.manual_seed(0)
    image = (torch.randn(1, 3, 38, 50) * 60).contiguous(memory_format=layout)  # ceil pooling: odd sizes too
    ours_image, plain_image = image.clone().requires_grad_(True), image.clone().requires_grad_(True)
    relu1_2 = net.layers[net.names.index("relu1_2")]
    shapes = []
    relu1_2.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    ours = net(ours_image, wanted)
    assert shapes == [(1, 64, 19, 25)]  # relu1_2 ran on pool1's output
    theirs, x = {}, plain_image
    for name, module in zip(net.names, plain, strict=True):
        x = module(x)
        theirs[name] = x
    probes = {name: torch.randn(ours[name].shape) for name in wanted}
    for features in (ours, theirs):
        sum((features[n] * probes[n]).sum() for n in wanted).backward()
    assert all(torch.equal(ours[n], theirs[n]) for n in wanted)
    pooled = nn.functional.max_pool2d(theirs["relu1_2"], 2, 2, ceil_mode=True)
    assert (pooled == 0).float().mean() > 0.1  # windows with no positive value occur, and are zero both ways
    assert torch.equal(ours_image.grad, plain_image.grad)
