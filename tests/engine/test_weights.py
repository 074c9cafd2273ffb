"""Weight sources agree: the same weights through MatConvNet (old and new format), a state dict and
torchvision's normalised input give the same features."""

import numpy as np
import pytest
import scipy.io
import torch

from ablation.engine import weights as weights_module
from ablation.engine.network import NetworkSpec, VGGFeatures, layer_names
from ablation.engine.weights import (
    CAFFE_MEAN_PIXEL,
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    WeightsError,
    file_weights,
    matconvnet_weights,
    random_weights,
    torchvision_weights,
)


def write_matconvnet(path, weights, old_format: bool, mean_pixel=CAFFE_MEAN_PIXEL) -> None:
    """A MatConvNet-layout .mat: kernels stored [w, h, in, out], i.e. torch's [out, in, h, w] as (3, 2, 1, 0),
    which upstream's (1, 0, 2, 3) transpose turns into TensorFlow's [h, w, in, out]."""
    names = layer_names(weights.arch)
    convs = iter(weights.convs)
    layers = np.empty((1, len(names)), dtype=object)
    for i, name in enumerate(names):
        record = {"name": name, "type": name[:4].replace("relu", "relu").replace("pool", "pool")}
        if name.startswith("conv"):
            w, b = next(convs)
            cell = np.empty((1, 2), dtype=object)
            cell[0, 0] = w.numpy().transpose(3, 2, 1, 0)
            cell[0, 1] = b.numpy().reshape(-1, 1)
            record = {"weights": cell, **record} if old_format else {**record, "weights": cell}
        layers[0, i] = record
    average = np.tile(np.array(mean_pixel, dtype=np.float32), (4, 4, 1))  # old: a full mean image
    if old_format:
        data = {"layers": layers, "normalization": {"averageImage": average, "keepAspect": 1}}
    else:
        norm = {"imageSize": np.array([224, 224, 3]), "border": np.array([0, 0]), "averageImage": average[:1, :1]}
        data = {"layers": layers, "meta": {"normalization": norm}}
    scipy.io.savemat(path, data)


def features(weights, image, arch="vgg19"):
    net = VGGFeatures(NetworkSpec(arch=arch), weights.convs, "relu5_1")
    return net(image - torch.tensor(weights.mean_pixel).view(1, 3, 1, 1), ["relu1_1", "relu5_1"])


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255


@pytest.mark.parametrize("old_format", [False, True])
def test_matconvnet_equals_state_dict(tmp_path, vgg19_random, image, old_format):
    mat = tmp_path / "vgg.mat"
    write_matconvnet(mat, vgg19_random, old_format)
    state = {
        f"features.{layer_names('vgg19').index(n)}.{k}": t
        for n, (w, b) in zip([n for n in layer_names("vgg19") if n.startswith("conv")], vgg19_random.convs, strict=True)
        for k, t in (("weight", w), ("bias", b))
    }
    torch.save(state, tmp_path / "vgg.pth")
    from_mat = matconvnet_weights("vgg19", mat)
    from_file = file_weights("vgg19", tmp_path / "vgg.pth", preprocessing="caffe")
    assert from_mat.mean_pixel == pytest.approx(CAFFE_MEAN_PIXEL, abs=1e-4)
    for (w1, b1), (w0, b0) in zip(from_mat.convs, vgg19_random.convs, strict=True):
        assert torch.equal(w1, w0) and torch.equal(b1, b0)
    a, b = features(from_mat, image), features(from_file, image)
    assert torch.equal(a["relu5_1"], b["relu5_1"]) and a["relu5_1"].abs().sum() > 0
    assert len(from_mat.sha256) == 64 and from_mat.source == "matconvnet"


def test_matconvnet_kernel_orientation_is_upstreams(tmp_path, vgg19_random):
    # an asymmetric kernel must come back unflipped: mat[kw, kh, in, out] -> torch[out, in, kh, kw]
    mat = tmp_path / "vgg.mat"
    write_matconvnet(mat, vgg19_random, old_format=False)
    raw = scipy.io.loadmat(str(mat))["layers"][0][0][0][0]["weights"][0][0]
    loaded = matconvnet_weights("vgg19", mat).convs[0][0]
    assert loaded[5, 1, 0, 2].item() == pytest.approx(float(raw[2, 0, 1, 5]))


def test_matconvnet_wrong_architecture_names_the_layer(tmp_path, vgg16_random):
    mat = tmp_path / "vgg16.mat"
    write_matconvnet(mat, vgg16_random, old_format=False)
    with pytest.raises(WeightsError, match=r"layer 16 is 'pool3' where vgg19 has 'conv3_4'"):
        matconvnet_weights("vgg19", mat)
    assert matconvnet_weights("vgg16", mat).arch == "vgg16"


def test_state_dict_wrong_shapes_named(tmp_path, vgg16_random):
    torch.save({f"{i}.{k}": torch.zeros(1) for i in range(3) for k in ("weight", "bias")}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"features.0.weight\) has shape \(1,\), vgg19 needs \(64, 3, 3, 3\)"):
        file_weights("vgg19", tmp_path / "bad.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read .*junk.pth as a torch state dict"):
        file_weights("vgg19", tmp_path / "junk.pth")
    (tmp_path / "junk.mat").write_text("not a mat file")
    with pytest.raises(WeightsError, match="cannot read .*junk.mat as a MatConvNet"):
        matconvnet_weights("vgg19", tmp_path / "junk.mat")


def test_torchvision_fold_equals_normalised_input(tmp_path, image):
    """Folding 1/(255 std) into conv1_1 on pixel-space input == torchvision's (x/255 - mean)/std input."""
    import torchvision.models  # noqa: PLC0415 - its import costs every test worker 2 s (torch._dynamo): here only

    with torch.device("meta"):  # torchvision's layout without drawing the classifier's 120 M weights (3 s)
        model = torchvision.models.vgg19(weights=None)
    model.features.to_empty(device="cpu")
    torch.manual_seed(0)
    for layer in model.features:
        if isinstance(layer, torch.nn.Conv2d):
            layer.reset_parameters()  # torchvision's own conv initialisation draws them
    torch.save({f"features.{k}": v for k, v in model.features.state_dict().items()}, tmp_path / "tv.pth")
    ours = file_weights("vgg19", tmp_path / "tv.pth", preprocessing="torch")
    assert ours.mean_pixel == pytest.approx(tuple(255 * m for m in TORCHVISION_MEAN))
    normalised = (image / 255 - torch.tensor(TORCHVISION_MEAN).view(1, 3, 1, 1)) / torch.tensor(TORCHVISION_STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        expected = model.features[: layer_names("vgg19").index("relu5_1") + 1](normalised)
    got = features(ours, image)["relu5_1"]
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.fixture
def private_hub(tmp_path):
    """torch's hub cache in the test's folder (its ``checkpoints``), and no random draw made yet in this process:
    what a test downloads or draws lands there, not among the user's files."""
    users = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    random_weights.cache_clear()
    yield tmp_path / "hub" / "checkpoints"
    random_weights.cache_clear()
    torch.hub.set_dir(users)


def test_torchvision_offline_error_says_where_to_put_the_file(private_hub, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # a closed port: no download, anywhere
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(WeightsError, match="cannot download the weights .*vgg19-dcbb9e9d.pth.*put that file at"):
        torchvision_weights("vgg19")


def test_random_weights_are_seeded_he_normal(private_hub):
    a, b = random_weights("vgg16", 3), random_weights("vgg16", 3)
    assert a.sha256 == b.sha256 and a.sha256 != random_weights("vgg16", 4).sha256
    w = a.convs[-1][0]  # conv5_3: in = 512, std sqrt(2 / 4608) = 0.0208
    assert w.std().item() == pytest.approx((2 / (9 * 512)) ** 0.5, rel=0.01)


def test_a_random_draw_is_kept_for_later_processes_and_a_damaged_one_drawn_again(private_hub, monkeypatch):
    drawn = random_weights("vgg16", 3)
    path = weights_module.random_file("vgg16", 3)
    assert path.is_file() and path.parent == private_hub
    assert drawn.sha256 == weights_module.sha256_tensors(weights_module.draw_random("vgg16", 3))

    def no_draw(arch, seed):
        raise AssertionError("drew again instead of reading the kept draw")

    with monkeypatch.context() as patch:
        patch.setattr(weights_module, "draw_random", no_draw)
        random_weights.cache_clear()  # as a new process starts
        read = random_weights("vgg16", 3)
    assert read.sha256 == drawn.sha256
    assert all(torch.equal(r, d) for r, d in zip(sum(read.convs, ()), sum(drawn.convs, ()), strict=True))

    cut = path.read_bytes()[:1000]
    path.unlink()  # not cut in place: ``read`` maps that file
    path.write_bytes(cut)  # cut short: a damaged file is not read
    assert weights_module._kept_draw(path) is None
    weights_module._keep_draw(path, drawn.convs, "0" * 64)  # whole, but not hashing to what it says
    assert weights_module._kept_draw(path) is None
    random_weights.cache_clear()
    assert random_weights("vgg16", 3).sha256 == drawn.sha256 and weights_module._kept_draw(path) is not None


def test_a_draw_that_cannot_be_kept_is_still_used_and_leaves_no_part(private_hub, monkeypatch):
    def full_disk(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(weights_module.torch, "save", full_disk)
    drawn = random_weights("vgg16", 5)
    assert drawn.sha256 == weights_module.sha256_tensors(weights_module.draw_random("vgg16", 5))
    assert list(private_hub.iterdir()) == []  # neither the file nor its part
