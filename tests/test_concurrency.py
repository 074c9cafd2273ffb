"""Four jobs at once (joblib's process pool, as the joblib launcher runs a sweep) on one fresh sqlite store.

Without the store lock the first ones race to create MLflow's tables and the experiment; without explicit
experiment ids a run can land under Default. Expected: 4 runs, each FINISHED in its own experiment.
"""

from __future__ import annotations

import os
from pathlib import Path

from joblib import Parallel, delayed
from mlflow.tracking import MlflowClient

from tests.support import config, run_overrides


def job(folder: str, index: int) -> tuple[str, str]:
    """One run in a worker process: experiment A or B by parity, seed = index."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(folder) / 'mlflow.db'}"
    import torch

    torch.set_num_threads(1)
    from ablation.job import execute

    overrides = run_overrides(Path(folder), 1) + [f"run.seed={index}", f"tracking.experiment=exp-{'AB'[index % 2]}"]
    results = execute(config(overrides))
    return str(results["run_id"]), "AB"[index % 2]


def test_four_parallel_jobs_on_a_fresh_store_lose_nothing(tmp_path: Path) -> None:
    done = Parallel(n_jobs=4, backend="loky")(delayed(job)(str(tmp_path), i) for i in range(4))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert set(experiments) == {"Default", "exp-A", "exp-B"}
    assert client.search_runs([experiments["Default"]]) == []
    for letter in "AB":
        runs = client.search_runs([experiments[f"exp-{letter}"]])
        assert sorted(r.info.run_id for r in runs) == sorted(rid for rid, x in done if x == letter)
        assert sorted(int(r.data.tags["seed"]) % 2 for r in runs) == [0 if letter == "A" else 1] * 2
        assert all(r.info.status == "FINISHED" and "final_total" in r.data.metrics for r in runs)
