"""The schema: every file in conf/ composes, every key it yields is the schema's and classified as changing
results or not, and the algorithm's defaults are upstream's, read from the engine's own dataclasses and the spec."""

from __future__ import annotations

import functools
from dataclasses import is_dataclass

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from ablation import schema
from ablation.engine.adam import AdamSettings
from ablation.engine.losses import LossWeights
from ablation.engine.network import NetworkSpec
from ablation.paths import CONF_DIR
from ablation.spec import from_config
from ablation.store.runlog import flatten
from tests.support import composed, config_and_hydra, config_for

GROUP_FILES = {group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) for group in ("variant", "optim",
               "weights", "images", "experiment", "condition")}  # fmt: skip
NEEDS_PATH = {"matconvnet", "file"}


def every_file() -> list[list[str]]:
    cases = [[f"{group}={name}"] for group, names in GROUP_FILES.items() for name in names]
    cases = [c + (["weights.path=x.mat"] if c[0].split("=")[1] in NEEDS_PATH else []) for c in cases]
    return cases + [["hydra/launcher=slurm"]]


def untyped_sections(node: DictConfig, path: str = "") -> list[str]:
    """Sections no schema dataclass types: OmegaConf would take any key there, unclassified."""
    found = [] if is_dataclass(OmegaConf.get_type(node)) else [path or "<root>"]
    for key, child in node.items_ex(resolve=False):
        if isinstance(child, DictConfig) and node.get(key) is not None:
            found += untyped_sections(child, f"{path}{key}.")
    return found


@functools.cache
def composed_file(overrides: tuple[str, ...]) -> tuple[DictConfig, DictConfig]:
    """Each file's composition, shared by the two tests that read every file (a compose is a quarter second)."""
    return config_and_hydra(list(overrides))


@pytest.mark.parametrize("overrides", every_file(), ids=lambda o: o[0])
def test_every_file_in_conf_composes_and_every_key_is_classified(overrides: list[str]) -> None:
    """Every section is the schema's, so a key outside it is refused, and the schema says whether it is neutral."""
    cfg, hydra = composed_file(tuple(overrides))
    assert untyped_sections(cfg) == []
    if overrides[0] == "hydra/launcher=slurm":
        assert hydra.launcher._target_.endswith("SlurmLauncher")


def test_a_key_outside_the_schema_is_refused() -> None:
    with pytest.raises(ConfigCompositionException, match="Could not override 'run.typo'"):
        composed(["weights=file", "weights.path=x.pt", "run.typo=1"])


def test_result_neutral_keys_are_exactly_these() -> None:
    """Logging, output, how a job runs, and paths whose files are hashed instead: nothing else."""
    assert schema.RESULT_NEUTRAL_KEYS == {
        "images.content", "images.styles", "weights.path", "judge.weights_path",
        "run.device", "run.log_every", "run.sync_every", "run.checkpoint_every", "run.quiet", "run.debug",
        "run.resume", "run.memory_check", "run.force", "tune.objective", "tracking.experiment", "tracking.run_name",
        "run.status_every", "run.heartbeat_limit_s", "run.tracking_outage_s", "tracking.unsent_dir",
        "run.activation_checkpointing",
    }  # fmt: skip
    # each is a key some composed config holds: the fingerprint leaves out real keys, not misspelt ones
    held = {key for overrides in every_file() for key in flatten(schema.plain(composed_file(tuple(overrides))[0]))}
    assert schema.RESULT_NEUTRAL_KEYS < held


def test_defaults_are_the_engines_which_are_upstreams() -> None:
    config = schema.plain(config_and_hydra([])[0])
    assert config["loss"] == {k: float(v) for k, v in vars(LossWeights()).items()}
    assert (LossWeights().content_weight, LossWeights().style_weight, LossWeights().tv_weight) == (5.0, 500.0, 100.0)
    adam = {k: v for k, v in config["optim"].items() if k != "name"}
    assert adam == vars(AdamSettings()) == {"lr": 10.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    network = {k: config["variant"][k] for k in vars(NetworkSpec())}
    assert network == vars(NetworkSpec()) == {
        "arch": "vgg19", "pooling": "max", "activation": "relu", "slope": 0.2, "final_activation": None,
        "final_layer": "relu5_1",
    }  # fmt: skip
    assert config["run"]["iterations"] == 1000 and config["images"]["width"] is None
    # and the spec built from them
    spec = from_config(config_for())
    assert (spec.loss.content_weight, spec.loss.style_weight, spec.loss.tv_weight) == (5.0, 500.0, 100.0)
    assert (spec.optim.lr, spec.optim.beta1, spec.optim.beta2, spec.optim.eps) == (10.0, 0.9, 0.999, 1e-8)
    assert spec.iterations == 1000 and spec.init == "noise" and spec.last_layer == "relu5_1"
    assert spec.images.width is None and spec.images.style_scales == (1.0,)
