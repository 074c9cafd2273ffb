"""Heartbeats: telling a run that died without a word (SIGKILL, out-of-memory killer, node failure) from a live one.

A running run's tag ``heartbeat`` holds the Unix time (s) of its last sync point, written in the same request as
the step metrics it stores, together with ``logged_step``, the last step whose losses are stored. A hard kill
leaves the run RUNNING for ever; a RUNNING run whose heartbeat is older than ``run.heartbeat_limit_s`` is dead:
the next sweep marks it KILLED and continues it from its last checkpoint, logging only steps after
``logged_step``. The limit must exceed the longest pause between sync points (setup, a checkpoint upload) plus
clock differences between nodes; a RUNNING run without the tag (written by older code) is never taken for dead.
"""

from __future__ import annotations

import logging
import time

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

HEARTBEAT_TAG = "heartbeat"
LOGGED_STEP_TAG = "logged_step"
#: Seconds between heartbeats at most, whatever run.sync_every says: far below any sensible limit,
#: and few enough requests for a shared tracking server.
BEAT_EVERY_S = 2.0

log = logging.getLogger(__name__)


def beat_tags(logged_step: int, now_s: float | None = None) -> dict[str, str]:
    """The tags one heartbeat writes."""
    return {HEARTBEAT_TAG: f"{time.time() if now_s is None else now_s:.3f}", LOGGED_STEP_TAG: str(logged_step)}


def heartbeat_age_s(run: Run, now_s: float | None = None) -> float | None:
    """Seconds since the run's last heartbeat, or None when it never wrote one."""
    beat = run.data.tags.get(HEARTBEAT_TAG)
    return None if beat is None else (time.time() if now_s is None else now_s) - float(beat)


def logged_step(run: Run) -> int:
    """The last step whose losses the run stored (-1: none)."""
    return int(run.data.tags.get(LOGGED_STEP_TAG, "-1"))


def take_over_dead(
    client: MlflowClient, experiment_id: str, fingerprint: str, limit_s: float, now_s: float | None = None
) -> Run | None:
    """Mark RUNNING runs with this fingerprint and a heartbeat older than ``limit_s`` KILLED (so they can be
    continued from their checkpoint); return a live one (heartbeat within the limit) if any, else None."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.fingerprint = '{fingerprint}' and attributes.status = 'RUNNING'"
    )
    live = None
    for run in runs:
        age = heartbeat_age_s(run, now_s)
        if age is None:
            continue
        if age <= limit_s:
            live = live or run
            continue
        reason = f"no heartbeat for {age:.0f} s (run.heartbeat_limit_s={limit_s:g}): taken for dead by a later sweep"
        log.warning(f"{run.info.run_id}: {reason}; continuing it from its last checkpoint")
        client.set_tag(run.info.run_id, "error", reason)
        client.set_tag(run.info.run_id, "taken_over_after_s", f"{age:.1f}")
        client.set_terminated(run.info.run_id, "KILLED")
    return live
