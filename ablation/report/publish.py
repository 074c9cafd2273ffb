"""The sweep's parent run as the report's home: its files logged as artifacts, so the MLflow UI holds the report
(``report.html`` opens whole in the artifact viewer) next to the runs it describes."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from ablation.report.load import load_sweep
from ablation.report.render import write_report

ARTIFACT_FOLDER = "report"


def publish(client: MlflowClient, parent_run_id: str, folder: Path) -> None:
    """Log every file of the report in ``folder`` to the run ``parent_run_id`` under ``report/`` (replacing an
    earlier copy of the same name, so publishing again after more runs finished keeps one current report)."""
    client.log_artifacts(parent_run_id, str(folder), ARTIFACT_FOLDER)


def report_sweep(client: MlflowClient, parent: Run, out_root: Path, publish_it: bool = True) -> Path:
    """The whole job for one sweep (the command line's, and a sweep's at its end): load its runs, write
    ``out_root/<sweep id>/`` and log it to the parent run; returns ``report.md``."""
    result = load_sweep(client, parent)
    path = write_report(client, result, out_root / result.sweep_id)
    if publish_it:
        publish(client, parent.info.run_id, path.parent)
    return path
