"""Heartbeats: telling a run that died without a word (SIGKILL, out-of-memory killer, node failure) from a live one.

A running run's tag ``heartbeat`` holds the Unix time (s) of its last sync point, written in the same request as
the step metrics it stores, together with ``logged_step``, the last step whose losses are stored. A hard kill
leaves the run RUNNING for ever; a RUNNING run whose heartbeat is older than ``run.heartbeat_limit_s`` is dead:
the next sweep marks it KILLED (:func:`ablation.store.lookup.take_over_dead`) and continues it from its last
checkpoint, logging only steps after ``logged_step``. The limit must exceed the longest pause between sync points
(setup, a checkpoint upload) plus clock differences between nodes; a RUNNING run without the tag (written by older
code) is never taken for dead.
"""

from __future__ import annotations

import time

from mlflow.entities import Run

HEARTBEAT_TAG = "heartbeat"
LOGGED_STEP_TAG = "logged_step"
#: Seconds between heartbeats at most, whatever run.sync_every says: far below any sensible limit,
#: and few enough requests for a shared tracking server.
BEAT_EVERY_S = 2.0


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
