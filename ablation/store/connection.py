"""The store's address and its one client: the tracking URI, a client per URI, the experiment, provenance.

:func:`client` is patient: each call rides out an outage of the server within the job's patience
(:mod:`ablation.store.tolerance`). Writes that must not hold up the loop go through the outbox instead
(:mod:`ablation.store.outbox`), which sends with :func:`raw_client`.

The store is absolute (``sqlite:///<project>/runs/mlflow.db``, artifacts in ``<project>/runs/artifacts``)
so ``mlflow ui`` shows every run wherever it was started; ``MLFLOW_TRACKING_URI`` wins when set.
Runs are created with an explicit experiment id: concurrent ``set_experiment`` calls silently file
runs under Default.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as run_context
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from ablation.paths import PROJECT_ROOT, RUNS_DIR
from ablation.store import tolerance
from ablation.store.tolerance import TrackingError, TrackingLost

__all__ = ["TrackingError", "TrackingLost", "client", "open_store", "raw_client", "tracking_uri"]


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{RUNS_DIR / 'mlflow.db'}"


def client() -> MlflowClient:
    """The patient client of the current store (one per URI: tests and users switch stores with
    MLFLOW_TRACKING_URI): every call is repeated through an outage, within the job's patience."""
    return cast(MlflowClient, _PatientClient(raw_client(tracking_uri())))


@functools.lru_cache(maxsize=8)
def raw_client(uri: str) -> MlflowClient:
    """MLflow's own client of ``uri``: one attempt per call (and MLflow's retries)."""
    # MLflow draws a progress bar for every download, even of one small file: noise in a job's log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return MlflowClient(tracking_uri=uri)


class _PatientClient:
    """An MlflowClient whose methods go through :func:`tolerance.patient`.

    A write repeated after its answer was lost may be stored twice (a second run from ``create_run``): only the few
    writes that need an answer come this way; the rest go through the outbox, whose records are stored once.
    """

    def __init__(self, raw: MlflowClient) -> None:
        self._raw = raw

    def __getattr__(self, name: str):
        attr = getattr(self._raw, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            return tolerance.patient(lambda: attr(*args, **kwargs))

        return call


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock beside a sqlite store while it is created and its experiment made.

    Without it, jobs starting together on a fresh store race to create MLflow's tables (``table
    experiments already exists``) and the experiment. Other stores serialise this themselves.
    """
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def probe_server(uri: str, timeout_s: float = 5.0, patient: bool = False) -> None:
    """Fail within ``timeout_s`` when an http(s) tracking server does not answer; with ``patient``, wait for it
    within the job's patience (a sweep's job: the server answered its launcher, so it is away, not mistyped).

    MLflow's own client retries a refused connection for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
    backoff doubling); those retries are right during a long run, wrong for the first contact.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        if patient:
            tolerance.patient(lambda: _health(uri, timeout_s))
        else:
            _health(uri, timeout_s)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={redact_uri(uri)} does not answer ({reason}): start it (make server) "
            "or unset MLFLOW_TRACKING_URI to use runs/mlflow.db"
        ) from None


def _health(uri: str, timeout_s: float) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # it answered: a proxy or an older server without /health; the client will tell more
    except urllib.error.URLError as err:
        raise ConnectionError(str(err.reason)) from err


#: MLflow's error codes for a server that refused who the client is (HTTP 401) or what it asked (HTTP 403).
UNAUTHENTICATED, PERMISSION_DENIED = "UNAUTHENTICATED", "PERMISSION_DENIED"


def refusal(err: BaseException, uri: str) -> str | None:
    """One line for a server that lets in only its users (``make server SERVER_AUTH=1``) and refused this one;
    None for any other error. The client sends ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``."""
    code = getattr(err, "error_code", None)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    where = redact_uri(uri)
    if code == UNAUTHENTICATED and not (user and os.environ.get("MLFLOW_TRACKING_PASSWORD")):
        return (
            f"{where} lets in only its users: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            "(docs/cluster.md, Only its users)"
        )
    if code == UNAUTHENTICATED:
        return f"{where} refused user {user!r} (HTTP 401): check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    if code == PERMISSION_DENIED:
        return (
            f"{where}: user {user!r} may read but not write here (HTTP 403): ask the server's admin for EDIT on "
            "the experiment (docs/cluster.md, Only its users)"
        )
    return None


@contextmanager
def refusals_explained() -> Iterator[None]:
    """A server's refusal (see :func:`refusal`) as a :class:`TrackingError` of one line; other errors unchanged."""
    try:
        yield
    except MlflowException as err:
        line = refusal(err, tracking_uri())
        if line is None:
            raise
        raise TrackingError(line) from None


def redact_uri(uri: str) -> str:
    """The URI without a password (``http://user:secret@host`` -> ``http://user:***@host``)."""
    return re.sub(r"(//[^/:@]+):[^/@]*@", r"\1:***@", uri)


def open_store(experiment: str, patient: bool = False) -> str:
    """The experiment's id, creating the store and the experiment once (artifacts beside a sqlite store), after
    sending what earlier jobs kept while the server was away (:func:`ablation.store.outbox.send_unsent`).

    Raises :class:`TrackingError` before anything is computed when the store cannot be reached (with ``patient``,
    once the job's patience is spent). Safe for jobs that start together on a fresh sqlite store (see
    :func:`_store_lock`).
    """
    uri = tracking_uri()
    probe_server(uri, patient=patient)
    experiment_id = _experiment(uri, experiment)
    from ablation.store import outbox  # noqa: PLC0415 - the outbox sends through this module: imported late

    outbox.send_unsent(uri)
    return experiment_id


def _experiment(uri: str, experiment: str) -> str:
    db = _sqlite_path(uri)
    try:
        with _store_lock(uri):
            store = client()
            found = store.get_experiment_by_name(experiment)  # creates (and migrates) a sqlite store: inside the lock
            if found is not None:
                return found.experiment_id
            location = (db.parent / "artifacts").as_uri() if db is not None else None
            try:
                return store.create_experiment(experiment, artifact_location=location)
            except MlflowException:  # created meanwhile by a job on another machine
                found = store.get_experiment_by_name(experiment)
                if found is None:
                    raise
                return found.experiment_id
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here means the store is unusable
        if line := refusal(err, uri):
            raise TrackingError(line) from None
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise TrackingError(f"cannot use the MLflow store {redact_uri(uri)}: {first_line}") from err


def provenance_tags() -> dict[str, str]:
    """MLflow's own source tags as ``mlflow.start_run`` sets them: ``mlflow.user``, ``mlflow.source.name`` and
    ``.type``, ``mlflow.source.git.commit`` and ``.branch``.

    Runs here are made with ``MlflowClient.create_run``, which sets none of them (the UI showed Source "-").
    The commit is the project's own checkout's, not that of whatever script ``argv[0]`` names, so a job
    started by a launcher's worker still records it.
    """
    tags = run_context.resolve_tags()
    commit = get_git_commit(str(PROJECT_ROOT))
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags
