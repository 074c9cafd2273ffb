"""The sweep's parent run as the report's home: its files logged as artifacts, so the MLflow UI holds the report
(``report.html`` opens whole in the artifact viewer) next to the runs it describes."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

ARTIFACT_FOLDER = "report"


def publish(client: MlflowClient, parent_run_id: str, folder: Path) -> None:
    """Log every file of the report in ``folder`` to the run ``parent_run_id`` under ``report/`` (replacing an
    earlier copy of the same name, so publishing again after more runs finished keeps one current report)."""
    client.log_artifacts(parent_run_id, str(folder), ARTIFACT_FOLDER)
