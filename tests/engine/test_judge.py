"""The common judge: the original network scores every output on one scale."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from ablation.engine import judge
from ablation.engine.prepare import prepare
from ablation.engine.transfer import EngineOptions
from ablation.job import execute
from ablation.report.quantities import JUDGE_METRICS
from ablation.spec import from_config
from tests.support import DATA_DIR, TINY, config, sqlite_store


@pytest.fixture(autouse=True)
def private_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path))
    monkeypatch.setenv("ABLATION_DATA_DIR", str(DATA_DIR))


def test_judge_of_an_original_run_equals_its_own_final_losses():
    # The judge is the original network with the same weights, inputs and loss weights, scoring the same
    # final image: its four numbers must be the run's own final losses, to the last bit.
    results = execute(config([*TINY, "variant=original"]))
    assert results["status"] == "finished"
    for name in ("content", "style", "tv", "total"):
        assert results[f"judge_{name}"] == results[f"final_{name}"], name
    assert 0.0 < results["ssim_content"] < 1.0  # three steps from noise: far from the content photo
    logged = MlflowClient().get_run(results["run_id"]).data.metrics
    assert {k: logged[k] for k in JUDGE_METRICS} == {k: results[k] for k in JUDGE_METRICS}  # the report's names


def test_judge_scores_a_vgg16_run_with_vgg19_on_the_same_inputs():
    spec = from_config(config([*TINY, "variant=vgg16_tanh"]))
    problem = prepare(spec, torch.device("cpu"))
    weights = judge.judge_weights(problem)
    assert weights.arch == "vgg19" and weights.source == "random"
    referee = judge.build_judge(problem, weights)
    assert referee.net.spec == judge.JUDGE_NETWORK and referee.net.last_layer == "relu5_1"
    # The content photo itself: zero content loss (relu4_2 features equal their target) and SSIM exactly 1.
    scores = judge.score(referee, problem.content, problem.pixels)
    assert set(scores) == set(JUDGE_METRICS)  # the engine names its scores as the report reads them
    assert scores["judge_content"] == 0.0
    assert scores["ssim_content"] == pytest.approx(1.0, abs=1e-12)
    assert scores["judge_style"] > 0 and scores["judge_total"] == pytest.approx(
        scores["judge_content"] + scores["judge_style"] + scores["judge_tv"], rel=1e-6
    )


def test_the_judge_scores_in_fp32_in_the_layout_an_fp32_run_takes_on_the_device():
    """On CUDA ``auto`` gives tf32 and bf16 NHWC and fp32 NCHW: every run there is judged in NCHW, as its fp32 runs
    are; a layout the run names is kept (an fp32 run's own final losses come out to the last bit)."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for precision in ("fp32", "tf32", "bf16"):
        options = judge.judge_options(EngineOptions(precision, "auto"), cuda)
        assert (options.precision, options.channels_last) == ("fp32", False)
    assert judge.judge_options(EngineOptions("bf16", True), cuda).channels_last is True
    assert judge.judge_options(EngineOptions("bf16", "auto"), cpu).channels_last is torch.backends.mkldnn.is_available()
