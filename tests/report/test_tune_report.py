"""A 3-trial tuning sweep finishes, and the report of an adam-vs-lbfgs sweep shows the tuned and optimiser tables."""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ablation.report.__main__ import main as report_main
from tests.support import run_sweep, store_env

pytestmark = pytest.mark.slow  # starts processes (see pyproject's markers)


def test_tuning_and_optimizer_sections(tmp_path, monkeypatch):
    tuned = run_sweep(tmp_path, "tune", "experiment=tune", "variant=original", "hydra.sweeper.n_trials=3")
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "Best value:" in tuned.stdout + tuned.stderr and "3 jobs, 3 ran" in tuned.stderr
    swept = run_sweep(tmp_path, "optim", "variant=original,vgg16", "optim=adam,lbfgs", "run.seed=0")
    assert swept.returncode == 0, swept.stderr[-2000:]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_env(tmp_path)["MLFLOW_TRACKING_URI"])
    assert report_main(["--out", str(tmp_path / "reports")]) == 0
    (folder,) = (tmp_path / "reports").iterdir()
    text = (folder / "report.md").read_text()
    assert "## Optimisers" in text and "## Each variant at its best loss weights" in text

    trials = MlflowClient(store_env(tmp_path)["MLFLOW_TRACKING_URI"]).search_runs(
        [MlflowClient(store_env(tmp_path)["MLFLOW_TRACKING_URI"]).get_experiment_by_name("nst-ablation").experiment_id],
        "params.`tune.objective` = 'judge_total'",
    )
    best = min(r.data.metrics["judge_total"] for r in trials)
    tuned_csv = pd.read_csv(folder / "tuned.csv")
    assert list(tuned_csv["variant"]) == ["original"] and tuned_csv["trials"].iloc[0] == 3
    assert tuned_csv["judge_total_tuned"].iloc[0] == pytest.approx(best, rel=1e-8)  # CSV keeps 9 digits
    optim_csv = pd.read_csv(folder / "optimizers.csv")
    assert sorted(zip(optim_csv["variant"], optim_csv["optim"], strict=True)) == [
        ("original", "adam"), ("original", "lbfgs"), ("vgg16", "adam"), ("vgg16", "lbfgs"),
    ]  # fmt: skip
    # the report's own tables keep upstream's optimiser only: one seed each, no std
    table1 = pd.read_csv(folder / "table1.csv")
    assert set(table1["n_seeds"]) == {1}
