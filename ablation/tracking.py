"""MLflow run lifecycle: one store, one experiment id, params, batched step metrics, artifacts, status.

The store is absolute (``sqlite:///<project>/runs/mlflow.db``, artifacts in ``<project>/runs/artifacts``)
so ``mlflow ui`` shows every run wherever it was started; ``MLFLOW_TRACKING_URI`` wins when set.
Runs are created with an explicit experiment id: concurrent ``set_experiment`` calls silently file
runs under Default.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as run_context
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from ablation import heartbeat
from ablation.engine.errors import UserError
from ablation.paths import PROJECT_ROOT, RUNS_DIR

MAX_PARAM_CHARS = 6000
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


class TrackingError(UserError):
    """The tracking store cannot be reached or written."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{RUNS_DIR / 'mlflow.db'}"


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


def open_store(experiment: str) -> tuple[MlflowClient, str]:
    """Client and experiment id, creating the experiment once (artifacts beside a sqlite store).

    Raises :class:`TrackingError` before anything is computed when the store cannot be reached.
    Safe for jobs that start together on a fresh sqlite store (see :func:`_store_lock`).
    """
    uri = tracking_uri()
    probe_server(uri)
    db = _sqlite_path(uri)
    try:
        with _store_lock(uri):
            client = MlflowClient(tracking_uri=uri)  # creates (and migrates) a sqlite store: inside the lock
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                return client, found.experiment_id
            location = (db.parent / "artifacts").as_uri() if db is not None else None
            try:
                return client, client.create_experiment(experiment, artifact_location=location)
            except MlflowException:  # created meanwhile by a job on another machine
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                return client, found.experiment_id
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here means the store is unusable
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise TrackingError(f"cannot use the MLflow store {redact_uri(uri)}: {first_line}") from err


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


#: Names whose values are secrets: never stored as params or tags.
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|api_?key|credential|auth|private_?key)")
REDACTED = "<redacted>"


def secret_values(environ: Mapping[str, str] | None = None) -> set[str]:
    """Values of environment variables whose names look secret (at least 6 characters, to avoid noise)."""
    environ = os.environ if environ is None else environ
    return {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= 6}


def redact(values: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``values`` as strings, with secrets replaced by ``<redacted>``.

    A value is secret when its key looks secret (``tracking.api_token``) or when it contains the value
    of a secret-looking environment variable (a config that interpolated ``${oc.env:HF_TOKEN}``).
    A password in a URI is masked too.
    """
    secrets = secret_values(environ)
    clean: dict[str, str] = {}
    for key, value in values.items():
        text = str(value)
        if SECRET_NAME.search(key.rsplit(".", 1)[-1]) or any(s in text for s in secrets):
            text = REDACTED
        clean[key] = redact_uri(text) if "://" in text else text
    return clean


def safe_artifact_path(path: str | None) -> str | None:
    """An artifact path that stays inside the run's folder, whatever config value it was built from.

    Each part keeps only letters, digits, ``.``, ``_``, ``-`` and ``=`` (others become ``_``); empty,
    ``.`` and ``..`` parts are dropped, so ``../../x`` becomes ``x`` and ``/etc/passwd`` ``etc/passwd``.
    """
    if path is None:
        return None
    parts = [re.sub(r"[^A-Za-z0-9._=-]", "_", p) for p in re.split(r"[\\/]+", str(path))]
    parts = [p for p in parts if p.strip(".")]
    return "/".join(parts) or None


class RunLog:
    """One MLflow run; step metrics are buffered and sent with ``log_batch``."""

    def __init__(self, client: MlflowClient, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> None:
        self.client = client
        name = redact({"run_name": run_name})["run_name"]
        tags = {**redact(tags), **heartbeat.beat_tags(-1)}
        self.run = client.create_run(experiment_id, run_name=name, tags=tags)
        self.run_id = self.run.info.run_id
        self._pending: list[Metric] = []
        self.logged_step = -1  # the last step whose losses are stored: never logged again (see beat)
        self._queued_step = -1
        self._last_beat_s = time.monotonic()

    @classmethod
    def reopen(cls, client: MlflowClient, run_id: str) -> RunLog:
        """Continue an existing (KILLED or FAILED) run: it is RUNNING again, its history kept."""
        log = cls.__new__(cls)
        log.client = client
        client.update_run(run_id, status="RUNNING")
        log.run = client.get_run(run_id)
        if "error" in log.run.data.tags:
            client.delete_tag(run_id, "error")
        log.run_id = run_id
        log._pending = []
        log.logged_step = log._queued_step = heartbeat.logged_step(log.run)
        log.beat()
        return log

    def params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in redact(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v[:5000]) for k, v in redact(tags).items()])

    def metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in values.items()]
        if len(self._pending) >= MAX_BATCH:
            self.flush()

    def step_metrics(self, names: Iterable[str], steps: Iterable[int], rows: Iterable[Iterable[float]]) -> None:
        """Queue per-step values; steps at or before :attr:`logged_step` (stored before a restart) are dropped."""
        names = list(names)
        for step, row in zip(steps, rows, strict=True):
            if step > self.logged_step:
                self.metrics(dict(zip(names, row, strict=True)), int(step))
                self._queued_step = max(self._queued_step, int(step))

    def beat(self, force: bool = True) -> None:
        """Store what is queued and the heartbeat in one request (see :mod:`ablation.heartbeat`).

        ``force=False`` (every sync point) beats at most every ``heartbeat.BEAT_EVERY_S`` seconds.
        """
        if not force and time.monotonic() - self._last_beat_s < heartbeat.BEAT_EVERY_S:
            return
        while len(self._pending) > MAX_BATCH:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)
        tags = [RunTag(k, v) for k, v in heartbeat.beat_tags(self._queued_step).items()]
        self.client.log_batch(self.run_id, metrics=self._pending, tags=tags)
        self._pending, self.logged_step, self._last_beat_s = [], self._queued_step, time.monotonic()

    def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Store a local file under ``folder`` (sanitised: it cannot leave the run's artifact folder)."""
        path = Path(path)
        if safe_artifact_path(path.name) != path.name:
            raise ValueError(f"artifact file name {path.name!r} is not safe: use letters, digits, '.', '_', '-'")
        self.client.log_artifact(self.run_id, str(path), safe_artifact_path(folder))

    def image(self, rgb: np.ndarray, key: str, step: int) -> None:
        """One image of a series (uint8 [H, W, 3]): MLflow's image view lines runs up by ``key`` and ``step``."""
        self.client.log_image(self.run_id, rgb, key=key, step=step)

    def text(self, text: str, name: str) -> None:
        """Store ``text`` as ``name`` (sanitised like :func:`safe_artifact_path`)."""
        safe = safe_artifact_path(name)
        if safe is None:
            raise ValueError(f"artifact name {name!r} is empty after sanitising: give a file name")
        self.client.log_text(self.run_id, text, safe)

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Flush what is pending and set the final status (FINISHED, FAILED or KILLED)."""
        try:
            self.flush()
        finally:
            if error:
                self.client.set_tag(self.run_id, "error", error[:5000])
            self.client.set_terminated(self.run_id, RunStatus.to_string(getattr(RunStatus, status)))


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


def scratch_dir() -> tempfile.TemporaryDirectory:
    """A temporary folder for files on their way to the artifact store."""
    return tempfile.TemporaryDirectory(prefix="nst-ablation-")
