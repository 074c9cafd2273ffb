"""End to end through the real CLI: every variant writes an MLflow run whose params, step metrics, final
metrics and artifacts read back; `make demo` stops clearly without weights and runs with random ones."""

import subprocess

import pytest
from mlflow.tracking import MlflowClient

from ablation.paths import variant_names
from tests.support import PROJECT, PYTHON, store_env

pytestmark = pytest.mark.slow  # starts processes (see pyproject's markers)

VARIANTS = variant_names()  # every file of conf/variant, end to end
ITERATIONS = 20


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cmd = [
        PYTHON, "-m", "ablation.run", "-m", f"variant={','.join(VARIANTS)}", "weights=random",
        "images.width=32", f"run.iterations={ITERATIONS}", "run.quiet=true", "run.checkpoint_every=15",
        f"hydra.sweep.dir={tmp / 'hydra'}",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=PROJECT, env=store_env(tmp), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("nst-ablation")
    runs = client.search_runs([experiment.experiment_id], "tags.variant != ''")
    return client, {r.data.tags["variant"]: r for r in runs if "variant" in r.data.tags}


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_logs_a_complete_run(variant_runs, variant):
    client, runs = variant_runs
    run = runs[variant]
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert params["variant.name"] == variant and params["truncation_layer"] == "relu5_1"
    tanh_built = "tanh" in variant and not variant.endswith("last_relu")  # relu5_4/5_3 lie past the truncation
    assert params["final_layer_activation"] == (
        "Tanh" if tanh_built else "ReLU" if variant != "leaky_relu" else "LeakyReLU"
    )
    assert params["weights_source"] == "random" and len(params["weights_sha256"]) == 64
    assert params["content_size_wh"] == "32x42" and params["style_sizes_wh"] == "32x25"
    assert tags["random_weights"] == "true"
    totals = sorted(client.get_metric_history(run.info.run_id, "total"), key=lambda m: m.step)
    assert [m.step for m in totals] == list(range(ITERATIONS + 1))
    assert metrics["final_total"] == pytest.approx(totals[-1].value)
    if variant.endswith("tanh_every_conv"):
        # tanh after every conv saturates on pixel-space input (measured: 97% of relu1_1 beyond |0.99|), so content
        # and style start ~0.2 and ~0.002 and fall, while Adam's steps of about lr=10 on near-zero gradients
        # roughen the image: TV (26 at the start) grows and dominates the total
        for term in ("content", "style"):
            history = sorted(client.get_metric_history(run.info.run_id, term), key=lambda m: m.step)
            assert history[-1].value < history[0].value
    else:
        assert totals[-1].value < totals[0].value  # the optimisation lowers the loss
    for key in ("setup_s", "loop_s", "iter_ms", "total_s", "peak_mem_mb", "best_total", "final_content"):
        assert metrics[key] >= 0
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"final.png", "best.png", "losses.csv", "config.yaml", "images"} <= files
    series = [f.path for f in client.list_artifacts(run.info.run_id, "images") if f.path.endswith(".png")]
    assert sorted(int(path.split("+")[2]) for path in series) == [15, ITERATIONS]  # a checkpoint, the final image


def history(client: MlflowClient, run, term: str) -> list[tuple[int, float]]:
    """(step, value) of every logged step of ``term``, in step order."""
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, term), key=lambda m: m.step)]


@pytest.mark.parametrize(("reading", "reference"), [("tanh_last_relu", "original"), ("vgg16_tanh_last_relu", "vgg16")])
def test_tanh_at_the_last_relu_logs_the_references_numbers_exactly(variant_runs, reading, reference):
    """No loss reads relu5_4 (relu5_3 in VGG16): the network stops at relu5_1, so the same seed gives every step's
    losses and the judge's bitwise equal (rtol 0), the loop really ran (the total falls), and a tanh that is built
    (tanh_final, at relu5_1) does change the numbers."""
    client, runs = variant_runs
    terms = ("content", "style", "tv", "total")
    for term in terms:
        histories = [history(client, runs[v], term) for v in (reading, reference)]
        assert len(histories[0]) == ITERATIONS + 1 and histories[0] == histories[1]
    built = [[history(client, runs[v], term)[1:] for term in terms] for v in ("tanh_final", "original")]
    assert built[0] != built[1]
    totals = history(client, runs[reading], "total")
    assert totals[-1][1] < totals[0][1]
    finals = [{k: v for k, v in runs[name].data.metrics.items() if k.startswith(("final_", "judge_"))}
              for name in (reading, reference)]  # fmt: skip
    assert len(finals[0]) == 8 and finals[0] == finals[1]  # final_ and judge_ content, style, tv, total


def test_demo_without_network_stops_with_a_clear_message(tmp_path):
    env = {
        **store_env(tmp_path),
        "TORCH_HOME": str(tmp_path),
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    demo = ["make", "-s", "demo", f"DEMO_ARGS=hydra.run.dir={tmp_path / 'hydra'}"]  # not in the checkout's runs/
    done = subprocess.run(demo, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot download the weights" in lines[0] and "put that file at" in lines[0]
    assert "Traceback" not in done.stderr


def test_demo_runs_with_random_weights(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = f"DEMO_ARGS=weights=random images.width=32 run.iterations=3 run.quiet=true hydra.run.dir={tmp_path / 'h'}"
    done = subprocess.run(
        ["make", "-s", "demo", args], cwd=PROJECT, env=store_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("nst-ablation").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["images.width"] == "32"
