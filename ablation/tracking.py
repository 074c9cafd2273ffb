"""MLflow run lifecycle: one store, one experiment id, params, batched step metrics, artifacts, status.

The store is absolute (``sqlite:///<project>/runs/mlflow.db``, artifacts in ``<project>/runs/artifacts``)
so ``mlflow ui`` shows every run wherever it was started; ``MLFLOW_TRACKING_URI`` wins when set.
Runs are created with an explicit experiment id: concurrent ``set_experiment`` calls silently file
runs under Default.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = PROJECT_ROOT / "runs"
MAX_PARAM_CHARS = 6000
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{RUNS_DIR / 'mlflow.db'}"


def open_store(experiment: str) -> tuple[MlflowClient, str]:
    """Client and experiment id, creating the experiment once (artifacts under runs/ for the default store).

    Raises :class:`TrackingError` before anything is computed when the store cannot be reached.
    """
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        # a sqlite store keeps its artifacts beside it (MLflow's default is ./mlruns under the current folder)
        location = (
            (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
            if uri.startswith("sqlite:///")
            else None
        )
        try:
            return client, client.create_experiment(experiment, artifact_location=location)
        except MlflowException:  # created meanwhile by a parallel job
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return client, found.experiment_id
    except Exception as err:  # noqa: BLE001 - any failure here means the store is unusable
        raise TrackingError(f"cannot use the MLflow store {uri}: {str(err).splitlines()[0][:300]}") from err


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'run': {'seed': 0}} -> {'run.seed': '0'}; values as strings, cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


class RunLog:
    """One MLflow run; step metrics are buffered and sent with ``log_batch``."""

    def __init__(self, client: MlflowClient, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> None:
        self.client = client
        self.run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = self.run.info.run_id
        self._pending: list[Metric] = []

    def params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in values.items()]
        if len(self._pending) >= MAX_BATCH:
            self.flush()

    def step_metrics(self, names: Iterable[str], steps: Iterable[int], rows: Iterable[Iterable[float]]) -> None:
        names = list(names)
        for step, row in zip(steps, rows, strict=True):
            self.metrics(dict(zip(names, row, strict=True)), int(step))

    def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Flush what is pending and set the final status (FINISHED, FAILED or KILLED)."""
        try:
            self.flush()
        finally:
            if error:
                self.client.set_tag(self.run_id, "error", error[:5000])
            self.client.set_terminated(self.run_id, RunStatus.to_string(getattr(RunStatus, status)))


def scratch_dir() -> tempfile.TemporaryDirectory:
    """A temporary folder for files on their way to the artifact store."""
    return tempfile.TemporaryDirectory(prefix="nst-ablation-")
