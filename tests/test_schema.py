"""The schema: every file in conf/ composes, every key it yields is the schema's and classified as changing
results or not, and the algorithm's defaults are upstream's, read from the engine's own dataclasses."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from ablation import schema
from ablation.engine.losses import LossWeights
from ablation.engine.network import NetworkSpec
from ablation.engine.transfer import AdamSettings
from ablation.paths import CONF_DIR
from ablation.store.runlog import flatten

GROUP_FILES = {group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) for group in ("variant", "optim",
               "weights", "images", "experiment", "condition")}  # fmt: skip
NEEDS_PATH = {"matconvnet", "file"}


def composed(overrides: list[str]) -> tuple[dict, DictConfig]:
    """The config (plain) and Hydra's own node (unresolved: it needs a running job to resolve)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    hydra = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    return schema.plain(cfg), hydra


def every_file() -> list[list[str]]:
    cases = [[f"{group}={name}"] for group, names in GROUP_FILES.items() for name in names]
    cases = [c + (["weights.path=x.mat"] if c[0].split("=")[1] in NEEDS_PATH else []) for c in cases]
    return cases + [["hydra/launcher=slurm"]]


@pytest.mark.parametrize("overrides", every_file(), ids=lambda o: o[0])
def test_every_file_in_conf_composes_and_every_key_is_classified(overrides: list[str]) -> None:
    config, hydra = composed(overrides)
    keys = set(flatten(config))
    unknown = keys - schema.schema_keys()
    assert not unknown, f"keys outside the schema (so unclassified): {sorted(unknown)}"
    if overrides[0] == "hydra/launcher=slurm":
        assert hydra.launcher._target_.endswith("SlurmLauncher")


def test_result_neutral_keys_are_exactly_these() -> None:
    """Logging, output, how a job runs, and paths whose files are hashed instead: nothing else."""
    assert schema.RESULT_NEUTRAL_KEYS == {
        "images.content", "images.styles", "weights.path", "judge.weights_path",
        "run.device", "run.log_every", "run.sync_every", "run.checkpoint_every", "run.quiet", "run.debug",
        "run.resume", "run.memory_check", "run.force", "tune.objective", "tracking.experiment", "tracking.run_name",
        "run.status_every", "run.heartbeat_limit_s",
    }  # fmt: skip
    assert schema.RESULT_NEUTRAL_KEYS < schema.schema_keys()


def test_defaults_are_the_engines_which_are_upstreams() -> None:
    config, _ = composed([])
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
