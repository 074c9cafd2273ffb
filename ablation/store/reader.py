"""What the report reads from the store: sweeps' parent runs, runs, metric histories, artifacts; and where it
publishes itself (the parent run's ``report/`` folder, so the MLflow UI holds the report beside its runs).

Runs come back as MLflow's :class:`Run` entities (plain data: ``info``, ``data.tags``, ``.metrics``, ``.params``),
re-exported here so the report names the type without importing MLflow.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Run

from ablation.store.connection import client

__all__ = ["Run", "download", "experiment_id", "get_run", "metric_history", "publish", "search", "sweep_parents"]
#: The most runs one search returns (MLflow pages beyond its default of 1000).
MAX_RESULTS = 5000


def experiment_id(name: str) -> str | None:
    """The id of an existing experiment (None when the store has none of that name; nothing is created)."""
    found = client().get_experiment_by_name(name)
    return None if found is None else found.experiment_id


def sweep_parents(experiment_id: str) -> list[Run]:
    """Every sweep's parent run in the experiment, newest first."""
    return search(experiment_id, "tags.sweep_role = 'parent'", order_by=["attributes.start_time DESC"])


def search(experiment_id: str, query: str, order_by: list[str] | None = None) -> list[Run]:
    """Runs of the experiment matching an MLflow filter string."""
    return client().search_runs([experiment_id], filter_string=query, order_by=order_by, max_results=MAX_RESULTS)


def get_run(run_id: str) -> Run:
    return client().get_run(run_id)


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of ``key``, by step."""
    return sorted((m.step, m.value) for m in client().get_metric_history(run_id, key))


def download(run_id: str, path: str, folder: Path) -> Path | None:
    """The artifact ``path`` of the run copied into ``folder``; None when the run lacks it."""
    try:
        return Path(client().download_artifacts(run_id, path, str(folder)))
    except Exception:  # noqa: BLE001 - a missing artifact is an answer here, not an error
        return None


def publish(run_id: str, folder: Path, artifact_path: str) -> None:
    """Log every file of ``folder`` to the run under ``artifact_path`` (replacing files of the same names)."""
    client().log_artifacts(run_id, str(folder), artifact_path)
