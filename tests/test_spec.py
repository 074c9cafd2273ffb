"""Config to spec: every variant file, the speed keys and the readings sweep compose into the spec they name, and
a bad type or choice is refused while Hydra parses the override. (A bad value the spec refuses, with the store
left as it was: tests/test_errors.py.)"""

import pytest
from hydra.errors import HydraException

from ablation.engine.transfer import EngineOptions
from ablation.paths import CONF_DIR
from ablation.run import one_line
from ablation.spec import from_config
from tests.support import composed, config, config_for


@pytest.mark.parametrize("variant", sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml")))
def test_every_variant_file_composes_into_a_spec_named_after_it(variant):
    spec = from_config(config_for(variant))
    assert spec.variant == variant and spec.network.final_layer in ("relu5_1", "relu5_3", "relu5_4")


def test_seeds_are_one_batch_on_a_gpu_and_one_after_another_on_a_cpu_unless_told():
    spec = from_config(config_for(**{"run.seeds": "[0,1,2,3]"}))
    assert spec.seed_batches("cuda") == [(0, 1, 2, 3)] and spec.seed_batches("cpu") == [(0,), (1,), (2,), (3,)]
    batched = from_config(config_for(**{"run.seeds": "[0,1,2,3]", "run.batch_seeds": "true"}))
    assert batched.seed_batches("cpu") == [(0, 1, 2, 3)]


def test_readings_sweep_every_reading_and_its_references():
    cfg = composed(["experiment=readings"], hydra=True)
    variants = cfg.hydra.sweeper.params["variant"].split(",")
    readings = [v for v in variants if v.startswith(("tanh_", "vgg16_tanh_"))]
    assert sorted(readings) == sorted(
        ["tanh_final", "tanh_avg_pool", "tanh_last_relu", "tanh_every_conv"]
        + ["vgg16_tanh_avg_pool", "vgg16_tanh_last_relu", "vgg16_tanh_every_conv"]
    )
    assert {"original", "avg_pool", "vgg16", "vgg16_tanh"} <= set(variants) and len(variants) == 11
    assert all((CONF_DIR / "variant" / f"{v}.yaml").is_file() for v in variants)


def test_variants_are_data():
    spec = from_config(config_for("vgg16_tanh"))
    assert (spec.network.arch, spec.network.final_activation, spec.variant) == ("vgg16", "tanh", "vgg16_tanh")
    custom = from_config(config_for("original", **{"variant.pooling": "avg", "variant.activation": "leaky_relu"}))
    assert (custom.network.pooling, custom.network.activation) == ("avg", "leaky_relu")


def test_spec_reads_the_speed_keys_and_seeds():
    speed = ["run.precision=tf32", "run.compile=true", "run.channels_last=true", "run.activation_checkpointing=true"]
    spec = from_config(config(["weights=random", *speed]))
    assert spec.engine == EngineOptions(precision="tf32", channels_last=True, compile=True, checkpointing=True)
    assert from_config(config(["weights=random"])).engine.checkpointing == "auto"
    assert spec.seeds == (0,)
    spec = from_config(config(["weights=random", "run.seeds=[3,1,2]"]))
    assert spec.seeds == (3, 1, 2) and spec.seed == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("variant.pooling=median", "variant.pooling='median': choose one of max, avg"),
        ("variant.activation=gelu", "variant.activation='gelu': choose one of relu, leaky_relu, tanh"),
        ("run.precision=fp8", "run.precision='fp8': choose one of fp32, tf32, bf16"),
        ("run.precision=fp16", "run.precision='fp16': choose one of fp32, tf32, bf16"),
        ("run.iterations=abc", "run.iterations='abc' is not an integer"),
        ("run.seeds=[0.5]", "run.seeds[0]='0.5' is not an integer"),
    ],
)
def test_types_and_choices_are_refused_when_the_override_is_parsed(override, message):
    """The schema refuses these before any check of ours runs; the CLI prints them as this one line."""
    with pytest.raises(HydraException) as caught:
        composed(["weights=random", override])
    assert one_line(caught.value) == message
