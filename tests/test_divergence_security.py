"""Divergence ends a run FAILED with its step and the last good image; secrets and paths stay in their place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from ablation.engine.transfer import DivergenceError
from ablation.job import execute
from ablation.store import connection
from ablation.store.runlog import REDACTED, RunLog
from tests.support import config, run_overrides, sqlite_store


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path))
    return tmp_path


def test_divergence_fails_the_run_and_keeps_the_last_good_image(store: Path) -> None:
    """lr=1e30 moves pixels to ~1e30 after one Adam step (Adam's first step is lr * sign(grad)), so the TV
    term (squared differences ~1e60) overflows float32 to Inf at step 1; step 0 is the last finite one."""
    with pytest.raises(DivergenceError) as caught:
        execute(config(run_overrides(store, 6) + ["optim.lr=1e30"]))
    assert caught.value.step == 1
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("nst-ablation").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.metrics["diverged_step"] == 1 and run.data.metrics["last_good_step"] == 0
    assert "NaN/Inf at step 1: lower optim.lr" in run.data.tags["error"]
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"last_good.png", "losses.csv"} <= names
    last_good = np.asarray(Image.open(client.download_artifacts(run.info.run_id, "last_good.png", str(store))))
    assert last_good.shape == (16, 16, 3) and 90 < last_good.mean() < 140  # the mean colour plus faint noise


def test_secrets_are_never_logged_as_params_or_tags(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-value-42"
    monkeypatch.setenv("MY_SERVICE_TOKEN", secret)
    cfg = config(run_overrides(store, 1) + [f"tracking.run_name=run-{secret}", "+tracking.api_key=abc123xyz"])
    results = execute(cfg)
    run = MlflowClient().get_run(results["run_id"])
    stored = {**run.data.params, **run.data.tags}
    assert not [k for k, v in stored.items() if secret in v or "abc123xyz" in v]
    assert run.data.params["tracking.api_key"] == REDACTED


def test_artifact_names_cannot_leave_the_run_folder(store: Path) -> None:
    experiment_id = connection.open_store("paths")
    log = RunLog.create(experiment_id, "paths", {})
    log.text("x", "../../../escaped.txt")
    log.text("y", "/etc/cron.d/evil")
    (store / "ok.txt").write_text("z")
    log.artifact(store / "ok.txt", "../../up")
    log.end()
    run_root = store / "artifacts" / log.run_id / "artifacts"
    assert sorted(p.relative_to(run_root).as_posix() for p in run_root.rglob("*") if p.is_file()) == [
        "escaped.txt",
        "etc/cron.d/evil",
        "up/ok.txt",
    ]
    assert not list(store.glob("escaped.txt")) and not list((store / "artifacts").glob("*.txt"))
