"""A run as typed, validated data, built from the resolved Hydra config.

Validation lives here so every bad value is refused before anything is loaded or computed, with a
message that names the key, the value and what is allowed.
"""

from __future__ import annotations

from typing import Any

from ablation.engine.backends import PRECISIONS
from ablation.engine.losses import LossWeights
from ablation.engine.network import ACTIVATIONS, ARCHITECTURES, NetworkSpec, activation_layers
from ablation.engine.plan import ImagesSpec, RunSpec, WeightsSpec
from ablation.engine.transfer import AdamSettings, EngineOptions, LBFGSSettings
from ablation.engine.weights import SOURCES


class SpecError(ValueError):
    """A configuration value that cannot be used."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def _number(section: dict, key: str, where: str, kind: type = float) -> Any:
    value = section.get(key)
    try:
        if isinstance(value, bool) or value is None:
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise SpecError(f"{where}.{key}={value!r} is not a {kind.__name__}") from None


def _floats(values: Any, key: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, (str, int, float)):
        values = [values]
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise SpecError(f"{key}={values!r}: give a list of numbers") from None


def _seeds(values: Any, seed: int) -> tuple[int, ...]:
    """``run.seeds`` as a tuple of distinct ints; ``(run.seed,)`` when it is null."""
    if values is None:
        return (seed,)
    if isinstance(values, (int, str)) and not isinstance(values, bool):
        values = [values]
    try:
        if any(isinstance(v, (bool, float)) for v in values):
            raise TypeError
        seeds = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise SpecError(f"run.seeds={values!r}: give a list of integers, e.g. run.seeds=[0,1,2,3]") from None
    _require(bool(seeds), "run.seeds is empty: give at least one seed, or null to use run.seed")
    _require(len(set(seeds)) == len(seeds), f"run.seeds={list(seeds)} repeats a seed: each seed is one run")
    return seeds


def from_config(cfg: dict[str, Any]) -> RunSpec:
    """Build and validate a :class:`RunSpec` from a resolved config (a plain dict)."""
    run, loss, optim = cfg["run"], cfg["loss"], cfg["optim"]
    variant, images, weights = cfg["variant"], cfg["images"], cfg["weights"]

    arch = variant.get("arch")
    _require(arch in ARCHITECTURES, f"variant.arch={arch!r}: choose one of {sorted(ARCHITECTURES)}")
    _require(variant.get("pooling") in ("max", "avg"), f"variant.pooling={variant.get('pooling')!r}: choose max or avg")
    _require(
        variant.get("activation") in ACTIVATIONS,
        f"variant.activation={variant.get('activation')!r}: choose one of {', '.join(ACTIVATIONS)}",
    )
    _require(
        variant.get("final_activation") in (None, "tanh"),
        f"variant.final_activation={variant.get('final_activation')!r}: choose null or tanh",
    )
    final_layer = variant.get("final_layer", NetworkSpec.final_layer)
    _require(
        final_layer in activation_layers(arch),
        f"variant.final_layer={final_layer!r}: {arch} has no such layer; "
        f"choose one of {', '.join(activation_layers(arch))}",
    )
    network = NetworkSpec(
        arch=arch,
        pooling=variant["pooling"],
        activation=variant["activation"],
        slope=_number(variant, "slope", "variant"),
        final_activation=variant.get("final_activation"),
        final_layer=final_layer,
    )

    weights_ = LossWeights(**{k: _number(loss, k, "loss") for k in LossWeights.__dataclass_fields__})
    for key in ("content_weight", "style_weight", "tv_weight", "style_layer_exp"):
        _require(getattr(weights_, key) >= 0, f"loss.{key}={getattr(weights_, key)} must be >= 0")
    _require(0 <= weights_.content_blend <= 1, f"loss.content_blend={weights_.content_blend} must be in [0, 1]")
    _require(
        bool(weights_.read_layers()),
        "loss.content_weight and loss.style_weight are both 0: no layer would be read",
    )

    optim_name = optim.get("name", "adam")
    if optim_name == "adam":
        settings: AdamSettings | LBFGSSettings = AdamSettings(
            **{k: _number(optim, k, "optim") for k in AdamSettings.__dataclass_fields__}
        )
        _require(0 <= settings.beta1 < 1 and 0 <= settings.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
        _require(settings.eps > 0, f"optim.eps={settings.eps} must be > 0")
    elif optim_name == "lbfgs":
        line_search = optim.get("line_search")
        _require(
            line_search in (None, "strong_wolfe"), f"optim.line_search={line_search!r}: choose null or strong_wolfe"
        )
        settings = LBFGSSettings(
            lr=_number(optim, "lr", "optim"),
            history_size=_number(optim, "history_size", "optim", int),
            line_search=line_search,
        )
        _require(settings.history_size > 0, f"optim.history_size={settings.history_size} must be > 0")
    else:
        raise SpecError(f"optim.name={optim_name!r}: choose adam or lbfgs (optim=adam | optim=lbfgs)")
    _require(settings.lr > 0, f"optim.lr={settings.lr} must be > 0")

    styles = images.get("styles")
    if isinstance(styles, str):
        styles = [styles]
    _require(bool(styles), "images.styles is empty: give at least one style image")
    scales = _floats(images.get("style_scales"), "images.style_scales") or (1.0,) * len(styles)
    _require(len(scales) == len(styles), f"images.style_scales has {len(scales)} values for {len(styles)} styles")
    _require(all(s > 0 for s in scales), f"images.style_scales={list(scales)} must be > 0")
    blend = _floats(images.get("style_blend"), "images.style_blend")
    if blend is not None:
        _require(len(blend) == len(styles), f"images.style_blend has {len(blend)} values for {len(styles)} styles")
        _require(all(b >= 0 for b in blend), f"images.style_blend={list(blend)} must be >= 0")
        _require(sum(blend) > 0, f"images.style_blend={list(blend)} sums to 0: give at least one positive weight")
    width = images.get("width")
    if width is not None:
        width = _number(images, "width", "images", int)
        _require(width > 0, f"images.width={width} must be > 0")
    images_ = ImagesSpec(
        content=str(images.get("content")),
        styles=tuple(str(s) for s in styles),
        style_scales=scales,
        style_blend=blend,
        width=width,
        exif_transpose=bool(images.get("exif_transpose", True)),
    )

    source = weights.get("source")
    _require(source in SOURCES, f"weights.source={source!r}: choose one of {', '.join(SOURCES)}")
    if source in ("matconvnet", "file"):
        _require(weights.get("path") not in (None, "", "???"), f"weights={source} needs weights.path=/path/to/file")

    iterations = _number(run, "iterations", "run", int)
    _require(iterations > 0, f"run.iterations={iterations} must be > 0")
    for key in ("log_every", "sync_every"):
        _require(_number(run, key, "run", int) > 0, f"run.{key}={run[key]} must be > 0")
    _require(_number(run, "checkpoint_every", "run", int) >= 0, "run.checkpoint_every must be >= 0")
    noise_blend = run.get("init_noise_blend")
    if noise_blend is not None:
        noise_blend = _number(run, "init_noise_blend", "run")
        _require(0 <= noise_blend <= 1, f"run.init_noise_blend={noise_blend} must be in [0, 1]")
    precision = run.get("precision", "fp32")
    _require(precision in PRECISIONS, f"run.precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    seed = _number(run, "seed", "run", int)
    seeds = _seeds(run.get("seeds"), seed)
    _require(
        len(seeds) == 1 or isinstance(settings, AdamSettings),
        f"run.seeds={list(seeds)} with optim=lbfgs: L-BFGS's history would couple the seeds; "
        "batch seeds with Adam, or sweep run.seed=0,1,2 instead",
    )

    scales = _floats(run.get("scales"), "run.scales")
    scale_iterations = _floats(run.get("scale_iterations"), "run.scale_iterations")
    if scales is not None:
        _require(all(w >= 1 and w == int(w) for w in scales), f"run.scales={list(scales)}: give widths in px")
        _require(list(scales) == sorted(scales), f"run.scales={list(scales)} must go from coarse to fine")
    if scale_iterations is not None:
        _require(scales is not None, "run.scale_iterations needs run.scales")
        _require(
            len(scale_iterations) == len(scales) and all(i >= 1 for i in scale_iterations),
            f"run.scale_iterations={list(scale_iterations)}: one positive count per scale in run.scales",
        )
    transfer = cfg.get("transfer", {})

    return RunSpec(
        variant=str(variant.get("name", "custom")),
        network=network,
        loss=weights_,
        optim=settings,
        engine=EngineOptions(
            precision=precision,
            channels_last=bool(run.get("channels_last", False)),
            compile=bool(run.get("compile", False)),
        ),
        images=images_,
        weights=WeightsSpec(source, {k: v for k, v in weights.items() if k != "source"}),
        iterations=iterations,
        seed=seeds[0],
        seeds=seeds,
        device=str(run.get("device", "auto")),
        init=str(run.get("init", "noise")),
        init_noise_blend=noise_blend,
        log_every=int(run["log_every"]),
        sync_every=int(run["sync_every"]),
        checkpoint_every=int(run["checkpoint_every"]),
        quiet=bool(run.get("quiet", False)),
        preserve_colors=bool(transfer.get("preserve_colors", False)),
        match_style_colors=bool(transfer.get("match_style_colors", False)),
        scales=tuple(int(w) for w in scales) if scales else None,
        scale_iterations=tuple(int(i) for i in scale_iterations) if scale_iterations else None,
    )
