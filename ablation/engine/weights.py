"""Where VGG weights come from, and the mean pixel that goes with them.

Every source returns :class:`VGGWeights`: the conv kernels in torch's [out, in, 3, 3] layout, in network
order, for input in upstream's pixel space (RGB 0-255 minus ``mean_pixel``). Weights trained on
torchvision's normalised input ((x/255 - mean)/std) have 1/(255*std) folded into conv1_1 so that the
optimisation, the loss weights and the learning rate keep upstream's meaning.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import importlib.util
import pickle
import re
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ablation.engine.errors import UserError
from ablation.engine.inputs import file_sha256, keep_whole
from ablation.engine.network import ARCHITECTURES, conv_shapes, layer_names

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

#: upstream's (and Caffe VGG's) ImageNet mean pixel, RGB 0-255.
CAFFE_MEAN_PIXEL = (123.68, 116.779, 103.939)
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
SOURCES = ("torchvision", "matconvnet", "file", "random")
#: What a state-dict file was trained on: torch ((x/255 - mean)/std) or caffe (0-255 minus the mean pixel).
PREPROCESSINGS = ("torch", "caffe")


class WeightsError(UserError):
    """Weights that cannot be obtained or do not fit; the message says what to do instead."""


@dataclass
class VGGWeights:
    arch: str
    convs: list[tuple[torch.Tensor, torch.Tensor]]
    mean_pixel: tuple[float, float, float]
    source: str
    sha256: str
    location: str = ""  # file the weights came from, if any
    notes: dict[str, str] = field(default_factory=dict)


def sha256_tensors(convs: list[tuple[torch.Tensor, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for weight, bias in convs:
        digest.update(weight.detach().cpu().contiguous().numpy().tobytes())
        digest.update(bias.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fold_torchvision_normalisation(
    convs: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[float, float, float]]:
    """Fold (x/255 - mean)/std into conv1_1: x_pixel = x - 255*mean, so conv1_1's input channel c is
    scaled by 1/(255*std_c). Returns the new convs and the mean pixel 255*mean."""
    weight, bias = convs[0]
    scale = torch.tensor([1.0 / (255.0 * s) for s in TORCHVISION_STD], dtype=weight.dtype)
    folded = [(weight * scale.view(1, 3, 1, 1), bias)] + list(convs[1:])
    return folded, tuple(255.0 * m for m in TORCHVISION_MEAN)  # type: ignore[return-value]


#: The draw's recipe, in the name of the file that keeps it: a new recipe must not read an old draw.
RANDOM_RECIPE = "he-normal-v1"


def hub_checkpoints() -> Path:
    """torch's cache of downloaded weights (``torch.hub.get_dir()``, moved by TORCH_HOME): torchvision's files,
    and the random draws kept beside them."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def random_file(arch: str, seed: int) -> Path:
    """Where :func:`random_weights` keeps a draw for later processes, beside torchvision's downloads."""
    return hub_checkpoints() / f"nst-ablation-random-{arch}-seed{seed}-{RANDOM_RECIPE}.pt"


def draw_random(arch: str, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Recipe (also that of the upstream reference in ``shared/reference``): numpy RandomState(seed); per
    conv in order, w = N(0,1)[out, in, 3, 3] * sqrt(2 / (9 * in)), b = N(0,1)[out] * 0.5, float32."""
    rs = np.random.RandomState(seed)
    convs = []
    for _, in_ch, out_ch in conv_shapes(arch):
        w = (rs.standard_normal((out_ch, in_ch, 3, 3)) * np.sqrt(2.0 / (9 * in_ch))).astype(np.float32)
        b = (rs.standard_normal(out_ch) * 0.5).astype(np.float32)
        convs.append((torch.from_numpy(w), torch.from_numpy(b)))
    return convs


def _kept_draw(path: Path) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str] | None:
    """The convs and SHA-256 a file keeps, or None when there is none or it does not hash to what it says."""
    try:
        kept = torch.load(path, mmap=True, weights_only=True)
        convs, expected = [(w, b) for w, b in kept["convs"]], kept["sha256"]
    except (OSError, RuntimeError, LookupError, TypeError, ValueError, pickle.UnpicklingError):
        return None  # none yet, or not one this code wrote whole
    sha256 = sha256_tensors(convs)
    return (convs, sha256) if sha256 == expected else None


def _keep_draw(path: Path, convs: list[tuple[torch.Tensor, torch.Tensor]], sha256: str) -> None:
    """Kept whole or not at all (:func:`keep_whole`): a cache that cannot be written costs the next process the
    draw again."""
    keep_whole(path, lambda part: torch.save({"sha256": sha256, "convs": convs}, part))


@functools.cache
def random_weights(arch: str, seed: int = 0) -> VGGWeights:
    """Seeded He-normal weights (:func:`draw_random`): for tests and offline smoke runs only (their results mean
    nothing).

    Drawing VGG19's 20 M normals takes 0.6 s, more than a tiny run's steps, and every job process of a test suite or
    a smoke sweep would pay it. So a draw is kept in torch's hub cache (:func:`random_file`) and later processes map
    it (0.08 s, its hash checked); within a process it is made once and shared (the network and the judge, each job
    of a sweep). Nothing modifies weights in place.
    """
    path = random_file(arch, seed)
    kept = _kept_draw(path)
    if kept is None:
        convs = draw_random(arch, seed)
        kept = convs, sha256_tensors(convs)
        _keep_draw(path, *kept)
    return VGGWeights(arch, kept[0], CAFFE_MEAN_PIXEL, "random", kept[1], f"seed={seed}")


def _layout_hint(by_index: dict[int, dict[str, torch.Tensor]], arch: str) -> str:
    """'it looks like vgg16: use variant.arch=vgg16; ' when the 4-D weights sit where another arch has its convs."""
    found = {i for i, entry in by_index.items() if getattr(entry.get("weight"), "ndim", 0) == 4}
    for other in ARCHITECTURES:
        names = layer_names(other)
        if other != arch and found == {names.index(n) for n, _, _ in conv_shapes(other)}:
            return f"its {len(found)} convs sit where {other} has them: use a {arch} file or a {other} variant; "
    return f"{len(found)} conv weights found, {arch} has {len(conv_shapes(arch))}; "


def _convs_from_state_dict(state: dict[str, torch.Tensor], arch: str, origin: str) -> list:
    """Pick features.N.weight / N.weight for every conv of ``arch`` (N = torchvision's index)."""
    names = layer_names(arch)
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = re.fullmatch(r"(?:features\.)?(\d+)\.(weight|bias)", key)
        if match:
            by_index.setdefault(int(match[1]), {})[match[2]] = value
    convs = []
    for name, in_ch, out_ch in conv_shapes(arch):
        index = names.index(name)
        entry = by_index.get(index, {})
        if "weight" not in entry or "bias" not in entry:
            raise WeightsError(
                f"{origin} has no features.{index}.weight/bias for {name}: it is not a torchvision-layout "
                f"{arch} state dict ({_layout_hint(by_index, arch)}keys found: {sorted(state)[:4]}...)"
            )
        weight, bias = entry["weight"].float(), entry["bias"].float()
        if tuple(weight.shape) != (out_ch, in_ch, 3, 3):
            raise WeightsError(
                f"{origin}: {name} (features.{index}.weight) has shape {tuple(weight.shape)}, "
                f"{arch} needs {(out_ch, in_ch, 3, 3)}: wrong architecture?"
            )
        convs.append((weight, bias.reshape(-1)))
    return convs


def torchvision_version() -> str:
    """``torchvision.__version__`` (its build tag included, e.g. ``0.29.1+cu130``) read from its ``version.py``:
    importing torchvision imports its models and with them torch._dynamo, 2 s in every run process that never
    loads torchvision's weights."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return "not installed"
    text = Path(spec.submodule_search_locations[0], "version.py").read_text()
    found = re.search(r"^__version__ = ['\"]([^'\"]+)", text, re.MULTILINE)
    return found.group(1) if found else "unknown"


def _torchvision_enum(arch: str) -> WeightsEnum:
    """torchvision's IMAGENET1K_V1 entry for ``arch`` (torchvision imported only when asked for)."""
    import torchvision.models as tvm

    return {"vgg19": tvm.VGG19_Weights, "vgg16": tvm.VGG16_Weights}[arch].IMAGENET1K_V1


def torchvision_file(arch: str) -> Path:
    """Where torchvision keeps its IMAGENET1K_V1 weights of ``arch`` once downloaded."""
    return hub_checkpoints() / Path(_torchvision_enum(arch).url).name


def torchvision_weights(arch: str) -> VGGWeights:
    """torchvision's IMAGENET1K_V1 weights, downloaded once into torch's hub cache."""
    enum, cached = _torchvision_enum(arch), torchvision_file(arch)
    try:
        state = enum.get_state_dict(progress=True, check_hash=False)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
        raise WeightsError(
            f"cannot download the weights {enum.url} ({getattr(err, 'reason', err)}): put that file at "
            f"{cached}, or use weights=matconvnet weights.path=imagenet-vgg-verydeep-19.mat, "
            f"weights=file weights.path=STATE_DICT.pth, or weights=random (smoke tests only)"
        ) from err
    convs, mean_pixel = fold_torchvision_normalisation(_convs_from_state_dict(state, arch, str(cached)))
    sha = file_sha256(cached) if cached.is_file() else sha256_tensors(convs)
    return VGGWeights(arch, convs, mean_pixel, "torchvision", sha, str(cached))


def file_weights(
    arch: str, path: str | Path, preprocessing: str = "torch", mean_pixel: tuple | None = None
) -> VGGWeights:
    """A torchvision-layout state dict (``features.N.weight`` or ``N.weight``).

    ``preprocessing=torch``: trained on (x/255 - mean)/std like torchvision's (folded into conv1_1);
    ``preprocessing=caffe``: trained on 0-255 RGB minus ``mean_pixel`` (upstream's space, used as is).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a non-checkpoint file
        raise WeightsError(f"cannot read {path} as a torch state dict ({type(err).__name__}): {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    convs = _convs_from_state_dict(state, arch, str(path))
    if preprocessing == "torch":
        convs, pixel = fold_torchvision_normalisation(convs)
    elif preprocessing == "caffe":
        pixel = tuple(float(v) for v in (mean_pixel or CAFFE_MEAN_PIXEL))
    else:
        raise WeightsError(f"weights.preprocessing={preprocessing!r}: choose torch or caffe")
    return VGGWeights(arch, convs, pixel, "file", file_sha256(path), str(path), {"preprocessing": preprocessing})


def _field(record: np.void, name: str, position: int):
    names = record.dtype.names or ()
    return record[name] if name in names else record[position]


def matconvnet_weights(arch: str, path: str | Path) -> VGGWeights:
    """imagenet-vgg-verydeep-19.mat (or -16) read exactly as upstream's ``vgg.load_net``.

    Both file formats: old (top-level ``normalization``) and new (``meta.normalization``). MatConvNet
    stores kernels [w, h, in, out]; upstream transposes (1, 0, 2, 3) to TensorFlow's [h, w, in, out],
    which is torch's [out, in, h, w] after (3, 2, 0, 1). The mean pixel comes from the file.
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"MatConvNet file not found: {path} (download imagenet-vgg-verydeep-19.mat from "
            "https://www.vlfeat.org/matconvnet/pretrained/ and pass weights.path=...)"
        )
    try:
        data = scipy.io.loadmat(str(path))
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError... for non-.mat input
        raise WeightsError(f"cannot read {path} as a MatConvNet .mat file ({type(err).__name__}: {err})") from err
    if "layers" not in data:
        raise WeightsError(f"{path} has no 'layers' array: not a MatConvNet VGG file")
    if "normalization" in data:  # old format
        average = _field(data["normalization"][0][0], "averageImage", 0)
    elif "meta" in data:  # new format
        average = _field(data["meta"][0][0]["normalization"][0][0], "averageImage", 2)
    else:
        raise WeightsError(f"{path} has neither 'normalization' nor 'meta': not a MatConvNet VGG file")
    mean_pixel = tuple(float(v) for v in np.asarray(average, dtype=np.float64).reshape(-1, 3).mean(axis=0))
    layers = data["layers"][0]
    names = layer_names(arch)
    convs = []
    for name, in_ch, out_ch in conv_shapes(arch):
        if names.index(name) >= len(layers):
            raise WeightsError(f"{path} has {len(layers)} layers, {arch} needs {name} at {names.index(name)}")
        record = layers[names.index(name)][0][0]
        file_name = str(np.squeeze(_field(record, "name", 3))) if "name" in (record.dtype.names or ()) else name
        if file_name != name:
            raise WeightsError(
                f"{path}: layer {names.index(name)} is {file_name!r} where {arch} has {name!r}: "
                "is this the -16 or the -19 file? (variant.arch must match it)"
            )
        kernels, bias = _field(record, "weights", 0)[0]
        kernels = np.transpose(np.asarray(kernels, dtype=np.float32), (1, 0, 2, 3))  # upstream's transpose
        if kernels.shape != (3, 3, in_ch, out_ch):
            raise WeightsError(
                f"{path}: {name} has kernels {kernels.shape} (h, w, in, out), {arch} needs {(3, 3, in_ch, out_ch)}"
            )
        weight = torch.from_numpy(np.ascontiguousarray(kernels.transpose(3, 2, 0, 1)))
        convs.append((weight, torch.from_numpy(np.asarray(bias, dtype=np.float32).reshape(-1))))
    return VGGWeights(arch, convs, mean_pixel, "matconvnet", file_sha256(path), str(path))


def load_weights(source: str, arch: str, **options) -> VGGWeights:
    """Dispatch on ``source`` (one of :data:`SOURCES`) with that source's options."""
    if source == "torchvision":
        return torchvision_weights(arch)
    if source == "matconvnet":
        return matconvnet_weights(arch, options["path"])
    if source == "file":
        return file_weights(arch, options["path"], options.get("preprocessing", "torch"), options.get("mean_pixel"))
    if source == "random":
        return random_weights(arch, int(options.get("seed", 0)))
    raise WeightsError(f"unknown weights source {source!r}: choose one of {', '.join(SOURCES)}")
