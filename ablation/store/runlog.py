"""One MLflow run as the recorder writes it: params, tags, batched step metrics with a heartbeat, artifacts, status.

Every value that reaches the store passes :func:`redact` (no secret from the config or the environment is stored)
and is cut to MLflow's limits here, once. Step metrics are buffered and sent with ``log_batch`` at sync points,
in the same request as the heartbeat (:mod:`ablation.store.heartbeat`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunStatus, RunTag

from ablation.store import heartbeat
from ablation.store.connection import client, redact_uri

MAX_PARAM_CHARS = 6000  # MLflow's limit of a param value
MAX_TAG_CHARS = 5000  # what we keep of a tag value (MLflow's limit is higher; an error message needs no more)
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_PARAMS_PER_BATCH = 100  # MLflow's limit of params per log_batch call


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


def tag_values(tags: Mapping[str, Any]) -> list[RunTag]:
    """Tags as MLflow wants them: redacted, cut to :data:`MAX_TAG_CHARS`."""
    return [RunTag(k, v[:MAX_TAG_CHARS]) for k, v in redact(tags).items()]


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
    """One MLflow run; step metrics are buffered and sent with ``log_batch``. Make one with :meth:`create` or
    :meth:`reopen`."""

    def __init__(self, run_id: str, tags: Mapping[str, str], logged_step: int) -> None:
        self.run_id = run_id
        self.tags_at_open = dict(tags)  # the run's tags when it was opened (a reopened run's earlier life)
        self._pending: list[Metric] = []
        self.logged_step = logged_step  # the last step whose losses are stored: never logged again (see beat)
        self._queued_step = logged_step
        self._last_beat_s = time.monotonic()

    @classmethod
    def create(cls, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> RunLog:
        """A new RUNNING run with ``tags`` (redacted) and a first heartbeat."""
        name = redact({"run_name": run_name})["run_name"]
        all_tags = {t.key: t.value for t in tag_values(tags)} | heartbeat.beat_tags(-1)
        run = client().create_run(experiment_id, run_name=name, tags=all_tags)
        return cls(run.info.run_id, all_tags, -1)

    @classmethod
    def reopen(cls, run_id: str) -> RunLog:
        """Continue an existing (KILLED or FAILED) run: it is RUNNING again, its history kept, its error gone."""
        store = client()
        store.update_run(run_id, status="RUNNING")
        run = store.get_run(run_id)
        if "error" in run.data.tags:
            store.delete_tag(run_id, "error")
        log = cls(run_id, run.data.tags, heartbeat.logged_step(run))
        log.beat()
        return log

    def params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in redact(params).items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            client().log_batch(self.run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def tags(self, tags: Mapping[str, Any]) -> None:
        client().log_batch(self.run_id, tags=tag_values(tags))

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
        """Store what is queued and the heartbeat in one request (see :mod:`ablation.store.heartbeat`).

        ``force=False`` (every sync point) beats at most every ``heartbeat.BEAT_EVERY_S`` seconds.
        """
        if not force and time.monotonic() - self._last_beat_s < heartbeat.BEAT_EVERY_S:
            return
        while len(self._pending) > MAX_BATCH:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            client().log_batch(self.run_id, metrics=batch)
        tags = [RunTag(k, v) for k, v in heartbeat.beat_tags(self._queued_step).items()]
        client().log_batch(self.run_id, metrics=self._pending, tags=tags)
        self._pending, self.logged_step, self._last_beat_s = [], self._queued_step, time.monotonic()

    def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            client().log_batch(self.run_id, metrics=batch)

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Store a local file under ``folder`` (sanitised: it cannot leave the run's artifact folder)."""
        path = Path(path)
        if safe_artifact_path(path.name) != path.name:
            raise ValueError(f"artifact file name {path.name!r} is not safe: use letters, digits, '.', '_', '-'")
        client().log_artifact(self.run_id, str(path), safe_artifact_path(folder))

    def image(self, rgb: np.ndarray, key: str, step: int) -> None:
        """One image of a series (uint8 [H, W, 3]): MLflow's image view lines runs up by ``key`` and ``step``."""
        client().log_image(self.run_id, rgb, key=key, step=step)

    def text(self, text: str, name: str) -> None:
        """Store ``text`` as ``name`` (sanitised like :func:`safe_artifact_path`)."""
        safe = safe_artifact_path(name)
        if safe is None:
            raise ValueError(f"artifact name {name!r} is empty after sanitising: give a file name")
        client().log_text(self.run_id, text, safe)

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Flush what is pending and set the final status (FINISHED, FAILED or KILLED)."""
        try:
            self.flush()
        finally:
            if error:
                client().set_tag(self.run_id, "error", error[:MAX_TAG_CHARS])
            client().set_terminated(self.run_id, RunStatus.to_string(getattr(RunStatus, status)))
