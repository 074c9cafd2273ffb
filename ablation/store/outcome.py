"""A job's outcome: one vocabulary for the job, the sweep's records, its summary and the report.

A job returns, and a sweep records, ``{"status": <Outcome>, "run_id": ..., "error": ...}``; :func:`outcome_record`
is the one place that builds that record. The values are the strings stored in the job records, so records
written before this enum read the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """How a job of a sweep (or a single run) ended."""

    RUNNING = "running"  # started, not ended yet (or ended without a word: see LOST)
    FINISHED = "finished"  # ran to the end
    SKIPPED = "skipped"  # a run with its fingerprint was FINISHED (reused) or is live elsewhere
    FAILED = "failed"  # bad input, a bug or a divergence: its error says which
    KILLED = "killed"  # stopped by a signal at a sync point, with a checkpoint: a re-run continues it
    LOST = "lost"  # ended without reporting back (SIGKILL, out of memory, node failure)

    @property
    def has_run(self) -> bool:
        """Whether the job's run holds results the report can read (it ran, or reused a finished run)."""
        return self in (Outcome.FINISHED, Outcome.SKIPPED)


def outcome_record(status: Outcome, run_id: str | None = None, error: str | None = None) -> dict[str, Any]:
    """The ``{status, run_id, error}`` record of a job's end."""
    return {"status": Outcome(status), "run_id": run_id, "error": error}


def status_of(record: Mapping[str, Any]) -> Outcome | None:
    """The outcome a stored record names, or None for a record without one (or a word this code does not know)."""
    try:
        return Outcome(record.get("status"))
    except ValueError:
        return None


def count_outcomes(records: Iterable[Mapping[str, Any]]) -> dict[Outcome, int]:
    """How many records end in each outcome (every outcome present, zeros included)."""
    statuses = [status_of(r) for r in records]
    return {o: statuses.count(o) for o in Outcome}
