"""The config schema: every key, its type and its default, written once, registered in Hydra's ConfigStore.

The YAML files in ``conf/`` hold only what differs from these defaults (a variant's knobs, an experiment's
sweep). Hydra checks types and choices when an override is parsed, so ``variant.pooling=median`` or
``run.iterations=abc`` is refused before anything runs; ``ablation.spec`` adds the checks across fields.

The algorithm's defaults (loss weights, Adam, the network) come from the engine's own dataclasses, so the
engine used from a notebook and the CLI agree. A key marked :func:`neutral` changes logging, output or how a
job is run, never its numbers: fingerprints and the resume hash leave it out (:data:`RESULT_NEUTRAL_KEYS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, get_args, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ablation.engine.adam import AdamSettings
from ablation.engine.backends import PRECISIONS
from ablation.engine.losses import LossWeights
from ablation.engine.network import ACTIVATIONS, ARCHITECTURES, FINAL_ACTIVATIONS, POOLINGS, NetworkSpec
from ablation.engine.transfer import LBFGSSettings
from ablation.engine.weights import PREPROCESSINGS


def choices(name: str, values: tuple[str, ...] | list[str]) -> type[Enum]:
    """An Enum of the engine's allowed values, so OmegaConf refuses anything else at parse time."""
    return Enum(name, {v: v for v in values})  # type: ignore[return-value]


Arch = choices("Arch", sorted(ARCHITECTURES))
Pooling = choices("Pooling", POOLINGS)
Activation = choices("Activation", ACTIVATIONS)
FinalActivation = choices("FinalActivation", FINAL_ACTIVATIONS)
Precision = choices("Precision", PRECISIONS)
Preprocessing = choices("Preprocessing", PREPROCESSINGS)
LineSearch = choices("LineSearch", ("strong_wolfe",))

NEUTRAL = "neutral"


def neutral(default: Any = None) -> Any:
    """A key that never changes a run's numbers (logging, output, how a job runs, or a path whose file's
    SHA-256 is hashed instead)."""
    return field(default=default, metadata={NEUTRAL: True})


_LOSS, _ADAM, _LBFGS, _NET = LossWeights(), AdamSettings(), LBFGSSettings(), NetworkSpec()


@dataclass
class VariantConfig:
    name: str = "original"
    arch: Arch = Arch[_NET.arch]  # type: ignore[valid-type]
    pooling: Pooling = Pooling[_NET.pooling]  # type: ignore[valid-type]
    activation: Activation = Activation[_NET.activation]  # type: ignore[valid-type]
    slope: float = _NET.slope  # leaky_relu's negative slope (tf.nn.leaky_relu's default)
    final_activation: FinalActivation | None = None  # type: ignore[valid-type]  # activation of final_layer
    final_layer: str = _NET.final_layer  # relu1_1 .. relu5_4 (vgg16: relu5_3); deeper than any loss reads: no effect


@dataclass
class ImagesConfig:
    content: str = neutral(MISSING)  # a file, or a name in ABLATION_DATA_DIR / the download cache
    styles: list[str] = field(default_factory=list, metadata={NEUTRAL: True})
    style_scales: list[float] | None = None  # one per style (default 1.0): style width = content width * scale
    style_blend: list[float] | None = None  # one per style, normalised to sum 1 (default equal)
    # content width in px (height follows); None keeps the content's size; max: the widest the device fits
    width: int | str | None = None
    exif_transpose: bool = True  # apply EXIF orientation (upstream does not)


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = _ADAM.lr
    beta1: float = _ADAM.beta1
    beta2: float = _ADAM.beta2
    eps: float = _ADAM.eps


@dataclass
class LBFGSConfig:
    name: str = "lbfgs"
    lr: float = _LBFGS.lr
    history_size: int = _LBFGS.history_size
    line_search: LineSearch | None = None  # type: ignore[valid-type]


@dataclass
class TorchvisionWeights:
    source: str = "torchvision"


@dataclass
class MatconvnetWeights:
    source: str = "matconvnet"
    path: str = neutral(MISSING)


@dataclass
class FileWeights:
    source: str = "file"
    path: str = neutral(MISSING)
    preprocessing: Preprocessing = Preprocessing.torch  # type: ignore[valid-type,attr-defined]
    mean_pixel: list[float] | None = None


@dataclass
class RandomWeights:
    source: str = "random"
    seed: int = 0


@dataclass
class RunConfig:
    iterations: int = 1000  # optimiser steps (upstream and the report: 1000)
    seed: int = 0  # seeds the initial noise
    seeds: list[int] | None = None  # e.g. [0,1,2,3]: several seeds in one process, one MLflow run each
    batch_seeds: bool | None = None  # run.seeds as one batch; None: on a GPU yes, on a CPU one after another
    device: str = neutral("auto")  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    init: str = "noise"  # noise (upstream) | content | path to an image
    init_noise_blend: float | None = None  # None: 1 for noise, 0 otherwise; else image*(1-b) + noise*b
    log_every: int = neutral(1)  # steps between logged losses (and candidates for the best image)
    sync_every: int = neutral(10)  # steps between host syncs: progress, metric batches, stop requests
    checkpoint_every: int = neutral(100)  # steps between checkpoints and intermediate images (0: none)
    precision: Precision = Precision.fp32  # type: ignore[valid-type,attr-defined]  # fp32 | tf32 | bf16
    channels_last: bool | str = "auto"  # NHWC activations and conv weights: true | false | auto (per device, precision)
    compile: bool = False  # torch.compile the loss function
    # recompute each stage in the backward pass (less memory, same numbers): true | false | auto (on only when
    # the run fits with it and not without)
    activation_checkpointing: bool | str = neutral("auto")
    quiet: bool = neutral(False)  # no progress bar
    status_every: int = neutral(100)  # steps between logged status lines where stderr is no terminal (SLURM, CI)
    heartbeat_limit_s: float = neutral(600.0)  # sweeps: a RUNNING run with an older heartbeat is dead: continued
    tracking_outage_s: float = neutral(600.0)  # a tracking server silent this long stops the run, checkpoint kept
    scales: list[int] | None = None  # coarse-to-fine content widths, e.g. [256,512]
    scale_iterations: list[int] | None = None  # iterations per scale (default run.iterations each)
    debug: bool = neutral(False)  # full tracebacks instead of one-line errors
    resume: bool = neutral(False)  # continue the latest KILLED/FAILED run of this config from its checkpoint
    memory_check: bool = neutral(True)  # refuse a size whose estimated memory exceeds free device memory
    force: bool = neutral(False)  # sweeps: run a job even when a FINISHED run has its fingerprint


@dataclass
class TransferConfig:
    preserve_colors: bool = False  # also save final_colors.png: stylised luma + content chroma
    match_style_colors: bool = False  # match each style's colour histogram to the content before optimising


@dataclass
class LossConfig:
    content_weight: float = _LOSS.content_weight
    content_blend: float = _LOSS.content_blend  # relu4_2 gets blend, relu5_2 gets 1 - blend
    style_weight: float = _LOSS.style_weight
    style_layer_exp: float = _LOSS.style_layer_exp  # style layer k gets exp^k, normalised to sum 1
    tv_weight: float = _LOSS.tv_weight


@dataclass
class JudgeConfig:
    enabled: bool = True  # score every output with one fixed network: original (VGG19, max, ReLU)
    weights_path: str | None = neutral(None)  # VGG19 file when the variant's weights.path is a VGG16 one
    loss: LossConfig | None = None  # the judge's loss weights (None: the run's)


@dataclass
class TuneConfig:
    objective: str | None = neutral(None)  # experiment=tune: the metric a job returns to Optuna


@dataclass
class TrackingConfig:
    experiment: str = neutral("nst-ablation")  # MLflow experiment (store: runs/mlflow.db or MLFLOW_TRACKING_URI)
    run_name: str | None = neutral(None)  # default: <variant>-s<seed>
    unsent_dir: str | None = neutral(None)  # what a server away past run.tracking_outage_s did not take (runs/unsent)


@dataclass
class Config:
    """The whole run. ``optim`` and ``weights`` are typed by the option chosen in their group."""

    variant: VariantConfig = field(default_factory=VariantConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    weights: Any = MISSING
    optim: Any = MISSING
    run: RunConfig = field(default_factory=RunConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


#: The schema of each option of the groups whose options differ in their keys.
GROUP_OPTIONS: dict[str, dict[str, type]] = {
    "optim": {"adam": AdamConfig, "lbfgs": LBFGSConfig},
    "weights": {"torchvision": TorchvisionWeights, "matconvnet": MatconvnetWeights, "file": FileWeights,
                "random": RandomWeights},
}  # fmt: skip


def register() -> None:
    """Put the schema into Hydra's ConfigStore: ``conf/config.yaml`` starts from ``schema``, and each option
    file of ``optim/`` and ``weights/`` from ``schema_<group>_<option>`` (top-level names, not a group, so
    ``--help`` does not offer the schemas as choices)."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for group, options in GROUP_OPTIONS.items():
        for option, node in options.items():
            store.store(name=f"schema_{group}_{option}", node=node)


def _section(hint: Any) -> type | None:
    """The dataclass a field holds (``LossConfig | None`` included), or None for a plain value."""
    candidates = [hint, *get_args(hint)]
    return next((c for c in candidates if is_dataclass(c)), None)


def neutral_keys(node: type, prefix: str = "") -> frozenset[str]:
    """The dotted keys of ``node`` marked :func:`neutral`, its sections' and its groups' options' included."""
    keys: set[str] = set()
    hints = get_type_hints(node)
    for f in fields(node):
        section = _section(hints[f.name])
        if section is not None:
            keys |= neutral_keys(section, f"{prefix}{f.name}.")
        elif f.name in GROUP_OPTIONS:
            keys |= {k for option in GROUP_OPTIONS[f.name].values() for k in neutral_keys(option, f"{f.name}.")}
        elif f.metadata.get(NEUTRAL):
            keys.add(f"{prefix}{f.name}")
    return frozenset(keys)


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain data (choices as strings, ``???`` kept for a missing path)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False, enum_to_str=True)  # type: ignore[return-value]


#: The one list of keys that do not change results: used by the fingerprint (and so by resume and skip).
RESULT_NEUTRAL_KEYS = neutral_keys(Config)

register()
