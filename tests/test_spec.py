"""Config validation: each bad value is refused with a message that names it."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException

from ablation import schema
from ablation.engine.errors import UserError
from ablation.paths import CONF_DIR
from ablation.run import one_line
from ablation.spec import from_config

CONF = str(CONF_DIR)


def config_for(variant: str = "original", **overrides) -> dict:
    """The resolved project config for ``variant`` with dotted overrides, as run.py sees it."""
    args = [f"variant={variant}", "weights=random"] + [f"{k}={v}" for k, v in overrides.items()]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=args)
    return schema.plain(cfg)


def test_defaults_are_upstreams():
    spec = from_config(config_for())
    assert (spec.loss.content_weight, spec.loss.style_weight, spec.loss.tv_weight) == (5.0, 500.0, 100.0)
    assert (spec.optim.lr, spec.optim.beta1, spec.optim.beta2, spec.optim.eps) == (10.0, 0.9, 0.999, 1e-8)
    assert spec.iterations == 1000 and spec.init == "noise" and spec.last_layer == "relu5_1"
    assert spec.images.width is None and spec.images.style_scales == (1.0,)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"run.iterations": 0}, "run.iterations=0 must be > 0"),
        ({"loss.style_weight": -1}, "loss.style_weight=-1.0 must be >= 0"),
        ({"optim.lr": 0}, "optim.lr=0.0 must be > 0"),
        ({"loss.content_blend": 1.5}, "loss.content_blend=1.5 must be in [0, 1]"),
        ({"images.style_blend": "[0,0]", "images.styles": "[a.jpg,b.jpg]"}, "sums to 0"),
        ({"images.width": -3}, "images.width=-3 must be > 0"),
        (
            {"variant.arch": "vgg16", "variant.final_layer": "relu5_4"},
            "variant.final_layer='relu5_4': vgg16 has no such layer; choose one of relu1_1, relu1_2, relu2_1, "
            "relu2_2, relu3_1, relu3_2, relu3_3, relu4_1, relu4_2, relu4_3, relu5_1, relu5_2, relu5_3",
        ),
        ({"optim": "lbfgs", "run.seeds": "[0,1]"}, "L-BFGS's history would couple the seeds"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        from_config(config_for(**override))


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
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=readings"], return_hydra_config=True)
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("variant.pooling=median", "variant.pooling='median': choose one of max, avg"),
        ("variant.activation=gelu", "variant.activation='gelu': choose one of relu, leaky_relu, tanh"),
        ("run.precision=fp8", "run.precision='fp8': choose one of fp32, tf32, bf16"),
        ("run.iterations=abc", "run.iterations='abc' is not an integer"),
    ],
)
def test_types_and_choices_are_refused_when_the_override_is_parsed(override, message):
    """The schema refuses these before any check of ours runs; the CLI prints them as this one line."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"), pytest.raises(HydraException) as caught:
        compose("config", overrides=["weights=random", override])
    assert one_line(caught.value) == message
