"""Runs by fingerprint and status: the FINISHED one a sweep reuses, the KILLED/FAILED one it continues, the RUNNING
ones it leaves alone (live) or takes over (dead: no heartbeat within the limit).

One query (:func:`runs_with_fingerprint`) serves all three, so skip, resume and take-over agree on what "this
job's runs" are.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.entities import Run

from ablation.engine.checkpoint import CHECKPOINT_ARTIFACT
from ablation.store import heartbeat
from ablation.store.connection import TrackingError, client
from ablation.store.runlog import tag_values

RESUMABLE_STATUSES = ("KILLED", "FAILED")
#: How many of a fingerprint's runs a lookup reads (newest first): far more than any job's history.
MAX_RUNS = 200

log = logging.getLogger(__name__)


def runs_with_fingerprint(experiment_id: str, fingerprint: str, status: str | None = None) -> list[Run]:
    """The runs with this fingerprint (and MLflow ``status``, when given), newest first."""
    query = f"tags.fingerprint = '{fingerprint}'"
    if status is not None:
        query += f" and attributes.status = '{status}'"
    return client().search_runs(
        [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=MAX_RUNS
    )


def find_finished(experiment_id: str, fingerprint: str) -> str | None:
    """Id of the newest FINISHED run with this fingerprint, or None."""
    runs = runs_with_fingerprint(experiment_id, fingerprint, "FINISHED")
    return runs[0].info.run_id if runs else None


def has_checkpoint(run_id: str) -> bool:
    folder, name = CHECKPOINT_ARTIFACT.rsplit("/", 1)
    try:
        return any(Path(f.path).name == name for f in client().list_artifacts(run_id, folder))
    except TrackingError:
        raise  # the server is away, not the checkpoint
    except Exception:  # noqa: BLE001 - an unreadable artifact store means: nothing to resume from here
        return False


def find_resumable(experiment_id: str, fingerprint: str) -> Run | None:
    """The most recently started KILLED/FAILED run with this fingerprint that holds a checkpoint.

    Runs that diverged (tag ``diverged``) are skipped: continuing them would only diverge again.
    """
    for run in runs_with_fingerprint(experiment_id, fingerprint):
        if run.info.status not in RESUMABLE_STATUSES or "diverged" in run.data.tags:
            continue
        if has_checkpoint(run.info.run_id):
            return run
    return None


def download_checkpoint(run_id: str, folder: str | Path) -> Path:
    """The run's checkpoint file, copied into ``folder``."""
    return Path(client().download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(folder)))


def take_over_dead(experiment_id: str, fingerprint: str, limit_s: float, now_s: float | None = None) -> Run | None:
    """Mark RUNNING runs with this fingerprint and a heartbeat older than ``limit_s`` KILLED (so they can be
    continued from their checkpoint); return a live one (heartbeat within the limit) if any, else None."""
    live = None
    for run in runs_with_fingerprint(experiment_id, fingerprint, "RUNNING"):
        age = heartbeat.heartbeat_age_s(run, now_s)
        if age is None:
            continue
        if age <= limit_s:
            live = live or run
            continue
        reason = f"no heartbeat for {age:.0f} s (run.heartbeat_limit_s={limit_s:g}): taken for dead by a later sweep"
        log.warning(f"{run.info.run_id}: {reason}; continuing it from its last checkpoint")
        client().log_batch(run.info.run_id, tags=tag_values({"error": reason, "taken_over_after_s": f"{age:.1f}"}))
        client().set_terminated(run.info.run_id, "KILLED")
    return live
