"""The store's address and its one client: the tracking URI, a client per URI, the experiment, provenance.

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

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as run_context
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from ablation.engine.errors import UserError
from ablation.paths import PROJECT_ROOT, RUNS_DIR


class TrackingError(UserError):
    """The tracking store cannot be reached or written."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{RUNS_DIR / 'mlflow.db'}"


def client() -> MlflowClient:
    """The client of the current store (one per URI: tests and users switch stores with MLFLOW_TRACKING_URI)."""
    return _client_for(tracking_uri())


@functools.lru_cache(maxsize=8)
def _client_for(uri: str) -> MlflowClient:
    # MLflow draws a progress bar for every download, even of one small file: noise in a job's log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return MlflowClient(tracking_uri=uri)


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


def probe_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail within ``timeout_s`` when an http(s) tracking server does not answer.

    MLflow's own client retries a refused connection for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
    backoff doubling); those retries are right during a long run, wrong for the first contact.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # it answered: a proxy or an older server without /health; the client will tell more
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={redact_uri(uri)} does not answer ({reason}): start it (make server) "
            "or unset MLFLOW_TRACKING_URI to use runs/mlflow.db"
        ) from None


def redact_uri(uri: str) -> str:
    """The URI without a password (``http://user:secret@host`` -> ``http://user:***@host``)."""
    return re.sub(r"(//[^/:@]+):[^/@]*@", r"\1:***@", uri)


def open_store(experiment: str) -> str:
    """The experiment's id, creating the store and the experiment once (artifacts beside a sqlite store).

    Raises :class:`TrackingError` before anything is computed when the store cannot be reached.
    Safe for jobs that start together on a fresh sqlite store (see :func:`_store_lock`).
    """
    uri = tracking_uri()
    probe_server(uri)
    db = _sqlite_path(uri)
    try:
        with _store_lock(uri):
            store = _client_for(uri)
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
