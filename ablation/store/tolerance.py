"""Riding out a tracking server that goes away: the outage clock, which errors are an outage, patient calls.

A server that restarts, is upgraded or whose login node reboots answers nothing for a while, or answers 5xx while its
database restarts. Such an error is *transient*: the same request will succeed later. A 4xx answer (a bad value, a
missing run, no permission) is *permanent*: repeating it changes nothing, so it is raised at once.

One clock per process (:func:`outage_s`) counts from the start of the first failed request of the current outage and
stops at the next success, whoever made them: the outbox's sender (:mod:`ablation.store.outbox`) or a patient call
(:func:`patient`, for the reads and the few writes that need an answer, such as creating a run). A job sets its
patience from ``run.tracking_outage_s`` (:func:`configure`); past it, the run ends at its next sync point with a local
checkpoint (:class:`TrackingLost`). A process that configured nothing (the report, a notebook) gets no patience of
ours: MLflow's own retries, as before.

MLflow's client retries each request itself (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``: 7, backoff doubling from 2 s, about
4 minutes in all) and only then raises. Inside one of its attempts nothing else is sent, and a server back after its
third failure waits up to a minute for the next try. So a configured job asks MLflow for no retries of its own
(unless the user set that variable) and retries here, every :data:`BACKOFF_S` at first, at most every
:data:`MAX_BACKOFF_S`: delivery resumes within a few seconds of the server's return, and the clock is read between
attempts. A server that hangs instead of refusing is noticed after ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (120 s).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mlflow.exceptions import MlflowException

from ablation.engine.errors import UserError
from ablation.paths import RUNS_DIR

T = TypeVar("T")
#: The first pause between two attempts; it doubles up to MAX_BACKOFF_S.
BACKOFF_S = 0.5
MAX_BACKOFF_S = 4.0
#: Where undelivered records go when the patience runs out, unless ``tracking.unsent_dir`` says otherwise.
DEFAULT_UNSENT_DIR = RUNS_DIR / "unsent"
RETRIES_VARIABLE = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"

log = logging.getLogger(__name__)


class TrackingError(UserError):
    """The tracking store cannot be reached or written."""


class TrackingLost(TrackingError):
    """The tracking server has not answered for longer than ``run.tracking_outage_s``."""

    def __init__(self, outage_s: float, limit_s: float, what: str = "", run_id: str | None = None) -> None:
        super().__init__(
            f"the tracking server has not answered for {outage_s:.0f} s (run.tracking_outage_s={limit_s:g}){what}"
        )
        self.outage_s, self.limit_s, self.run_id = outage_s, limit_s, run_id


class _Link:
    """The process's view of the server: its patience, where unsent records go, since when it has been down."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.limit_s: float | None = None  # None: not configured, no patience of ours
        self.unsent_dir: Path = DEFAULT_UNSENT_DIR
        self.down_since: float | None = None  # monotonic time of the first failed attempt of this outage


_link = _Link()


def configure(limit_s: float, unsent_dir: str | Path | None = None) -> None:
    """A job's patience (``run.tracking_outage_s``) and where its unsent records go (``tracking.unsent_dir``).

    Also asks MLflow's client to retry nothing itself, unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` is set: the
    retries happen here, where the clock is kept (the module docstring says why).
    """
    with _link.lock:
        _link.limit_s = float(limit_s)
        _link.unsent_dir = Path(unsent_dir).expanduser().resolve() if unsent_dir else DEFAULT_UNSENT_DIR
    os.environ.setdefault(RETRIES_VARIABLE, "0")


def limit_s() -> float | None:
    return _link.limit_s


def unsent_dir() -> Path:
    return _link.unsent_dir


def is_transient(err: BaseException) -> bool:
    """An outage (no connection, a timeout, 5xx, 429, a locked or restarting database), not a refusal (4xx)."""
    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return status >= 500 or status == 429
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return type(err).__module__.split(".")[0] in ("requests", "urllib3") or type(err).__name__ == "OperationalError"


def failed(started_s: float, err: BaseException) -> None:
    """An attempt begun at ``started_s`` (monotonic) failed with ``err``, an outage: it began then, unless before."""
    with _link.lock:
        first = _link.down_since is None
        if first or started_s < _link.down_since:
            _link.down_since = started_s
    if first:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        log.warning(
            "the tracking server does not answer (%s): records wait, the run goes on (run.tracking_outage_s=%g)",
            reason, _link.limit_s,
        )  # fmt: skip


def succeeded() -> None:
    with _link.lock:
        if _link.down_since is not None:
            log.warning("the tracking server answers again after %.0f s", time.monotonic() - _link.down_since)
        _link.down_since = None


def outage_s(now_s: float | None = None) -> float:
    """Seconds since the current outage began (0 while the server answers)."""
    since = _link.down_since
    return 0.0 if since is None else (time.monotonic() if now_s is None else now_s) - since


def lost() -> bool:
    """Whether the outage has lasted longer than the configured patience (never without one)."""
    limit = _link.limit_s
    return limit is not None and outage_s() > limit


def lost_error(what: str = "", run_id: str | None = None) -> TrackingLost:
    return TrackingLost(outage_s(), _link.limit_s or 0.0, what, run_id)


def backoff_s(attempt: int) -> float:
    """The pause after failed attempt ``attempt`` (0, 1, ...): doubling, capped, with a quarter of jitter so that
    many jobs do not knock at the same instant."""
    return min(BACKOFF_S * 2**attempt, MAX_BACKOFF_S) * random.uniform(0.75, 1.0)


def patient(call: Callable[[], T]) -> T:
    """``call()``, repeated through an outage until it succeeds or the patience runs out (:class:`TrackingLost`).

    A permanent error, or any error in a process without patience, is raised at once.
    """
    attempt = 0
    while True:
        started = time.monotonic()
        try:
            result = call()
        except Exception as err:
            if _link.limit_s is None or not is_transient(err):
                raise
            failed(started, err)
            if lost():
                raise lost_error() from err
            time.sleep(backoff_s(attempt))
            attempt += 1
            continue
        succeeded()
        return result
