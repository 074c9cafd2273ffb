"""From the composed config (types and choices already checked by the schema) to the engine's plan.

What the schema cannot say is checked here, one small function per section: ranges (``optim.lr > 0``) and
agreements across fields (one blend weight per style, scales from coarse to fine, L-BFGS without batched
seeds). Every refusal is one :class:`SpecError` line naming the key, the value and what is allowed, raised
before anything is loaded or computed.
"""

from __future__ import annotations

from typing import Any

from ablation.engine.adam import AdamSettings
from ablation.engine.backends import check_channels_last
from ablation.engine.errors import UserError
from ablation.engine.losses import LossWeights
from ablation.engine.network import NetworkSpec, check_final_layer
from ablation.engine.plan import ImagesSpec, RunSpec, WeightsSpec
from ablation.engine.transfer import EngineOptions, LBFGSSettings


class SpecError(UserError):
    """A configuration value that cannot be used."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def network_of(variant: dict[str, Any]) -> NetworkSpec:
    """The variant's network; its ``final_layer`` must be an activation of its ``arch``."""
    network = NetworkSpec(**{k: variant[k] for k in NetworkSpec.__dataclass_fields__})
    check_final_layer(network)
    return network


def loss_of(loss: dict[str, Any]) -> LossWeights:
    weights = LossWeights(**{k: float(loss[k]) for k in LossWeights.__dataclass_fields__})
    for key in ("content_weight", "style_weight", "tv_weight", "style_layer_exp"):
        _require(getattr(weights, key) >= 0, f"loss.{key}={getattr(weights, key)} must be >= 0")
    _require(0 <= weights.content_blend <= 1, f"loss.content_blend={weights.content_blend} must be in [0, 1]")
    _require(
        bool(weights.read_layers()), "loss.content_weight and loss.style_weight are both 0: no layer would be read"
    )
    return weights


def optim_of(optim: dict[str, Any]) -> AdamSettings | LBFGSSettings:
    if optim["name"] == "lbfgs":
        settings: AdamSettings | LBFGSSettings = LBFGSSettings(
            float(optim["lr"]), int(optim["history_size"]), optim["line_search"]
        )
        _require(settings.history_size > 0, f"optim.history_size={settings.history_size} must be > 0")
    else:
        settings = AdamSettings(**{k: float(optim[k]) for k in AdamSettings.__dataclass_fields__})
        _require(0 <= settings.beta1 < 1 and 0 <= settings.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
        _require(settings.eps > 0, f"optim.eps={settings.eps} must be > 0")
    _require(settings.lr > 0, f"optim.lr={settings.lr} must be > 0")
    return settings


def images_of(images: dict[str, Any]) -> ImagesSpec:
    styles = tuple(str(s) for s in images["styles"])
    _require(bool(styles), "images.styles is empty: give at least one style image")
    scales = tuple(float(s) for s in images["style_scales"] or [1.0] * len(styles))
    _require(len(scales) == len(styles), f"images.style_scales has {len(scales)} values for {len(styles)} styles")
    _require(all(s > 0 for s in scales), f"images.style_scales={list(scales)} must be > 0")
    blend = None if images["style_blend"] is None else tuple(float(b) for b in images["style_blend"])
    if blend is not None:
        _require(len(blend) == len(styles), f"images.style_blend has {len(blend)} values for {len(styles)} styles")
        _require(all(b >= 0 for b in blend), f"images.style_blend={list(blend)} must be >= 0")
        _require(sum(blend) > 0, f"images.style_blend={list(blend)} sums to 0: give at least one positive weight")
    width = images["width"]
    if isinstance(width, str) and width != "max":
        _require(width.isdigit(), f"images.width={width!r}: give a width in px or max (the widest that fits)")
        width = int(width)
    _require(width is None or width == "max" or width > 0, f"images.width={width} must be > 0")
    return ImagesSpec(str(images["content"]), styles, scales, blend, width, bool(images["exif_transpose"]))


def weights_of(weights: dict[str, Any]) -> WeightsSpec:
    source = weights["source"]
    if source in ("matconvnet", "file"):
        _require(weights.get("path") not in (None, "", "???"), f"weights={source} needs weights.path=/path/to/file")
    return WeightsSpec(source, {k: v for k, v in weights.items() if k != "source"})


def seeds_of(run: dict[str, Any], optim: AdamSettings | LBFGSSettings) -> tuple[int, ...]:
    """``run.seeds`` as distinct ints, or ``(run.seed,)``; L-BFGS's history would couple batched seeds, so
    several seeds with L-BFGS need ``run.batch_seeds=false`` (one after another)."""
    seeds = (run["seed"],) if run["seeds"] is None else tuple(run["seeds"])
    _require(bool(seeds), "run.seeds is empty: give at least one seed, or null to use run.seed")
    _require(len(set(seeds)) == len(seeds), f"run.seeds={list(seeds)} repeats a seed: each seed is one run")
    _require(
        len(seeds) == 1 or isinstance(optim, AdamSettings) or run["batch_seeds"] is False,
        f"run.seeds={list(seeds)} with optim=lbfgs: L-BFGS's history would couple the seeds; "
        "batch seeds with Adam, set run.batch_seeds=false, or sweep run.seed=0,1,2 instead",
    )
    return seeds


def check_run(run: dict[str, Any]) -> None:
    """Counts and the coarse-to-fine schedule."""
    _require(run["iterations"] > 0, f"run.iterations={run['iterations']} must be > 0")
    for key in ("log_every", "sync_every"):
        _require(run[key] > 0, f"run.{key}={run[key]} must be > 0")
    _require(run["checkpoint_every"] >= 0, "run.checkpoint_every must be >= 0")
    _require(run["tracking_outage_s"] > 0, f"run.tracking_outage_s={run['tracking_outage_s']} must be > 0")
    check_channels_last(run["channels_last"])
    checkpointing = run["activation_checkpointing"]
    _require(
        isinstance(checkpointing, bool) or checkpointing == "auto",
        f"run.activation_checkpointing={checkpointing!r}: give true, false or auto",
    )
    blend = run["init_noise_blend"]
    _require(blend is None or 0 <= blend <= 1, f"run.init_noise_blend={blend} must be in [0, 1]")
    scales, counts = run["scales"], run["scale_iterations"]
    if scales is not None:
        _require(all(w >= 1 for w in scales), f"run.scales={list(scales)}: give widths in px")
        _require(list(scales) == sorted(scales), f"run.scales={list(scales)} must go from coarse to fine")
    if counts is not None:
        _require(scales is not None, "run.scale_iterations needs run.scales")
        _require(
            len(counts) == len(scales) and all(i >= 1 for i in counts),
            f"run.scale_iterations={list(counts)}: one positive count per scale in run.scales",
        )


def from_config(cfg: dict[str, Any]) -> RunSpec:
    """Check a composed config (a plain dict, enums as strings) and build the engine's :class:`RunSpec`."""
    run, transfer = cfg["run"], cfg["transfer"]
    optim = optim_of(cfg["optim"])
    check_run(run)
    seeds = seeds_of(run, optim)
    _require(
        not (cfg["images"]["width"] == "max" and run["scales"]),
        "images.width=max with run.scales: run.scales gives the widths; drop one of the two",
    )
    return RunSpec(
        variant=str(cfg["variant"]["name"]),
        network=network_of(cfg["variant"]),
        loss=loss_of(cfg["loss"]),
        optim=optim,
        engine=EngineOptions(run["precision"], run["channels_last"], run["compile"], run["activation_checkpointing"]),
        images=images_of(cfg["images"]),
        weights=weights_of(cfg["weights"]),
        iterations=run["iterations"],
        seed=seeds[0],
        seeds=seeds,
        device=str(run["device"]),
        init=str(run["init"]),
        init_noise_blend=run["init_noise_blend"],
        log_every=run["log_every"],
        sync_every=run["sync_every"],
        checkpoint_every=run["checkpoint_every"],
        quiet=run["quiet"],
        preserve_colors=transfer["preserve_colors"],
        match_style_colors=transfer["match_style_colors"],
        scales=tuple(run["scales"]) if run["scales"] else None,
        scale_iterations=tuple(run["scale_iterations"]) if run["scale_iterations"] else None,
        batch_seeds=run["batch_seeds"],
    )


def seed_config(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """The config of one seed's run: a batched run's seed i has the fingerprint of ``run.seed=i`` alone."""
    return {**config, "run": {**config["run"], "seed": seed, "seeds": None}}
