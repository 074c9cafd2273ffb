"""One MLflow run as the recorder writes it: params, tags, batched step metrics with a heartbeat, artifacts, status.

Every value that reaches the store passes :func:`redact` (no secret from the config or the environment is stored)
and is cut to MLflow's limits here, once. Step metrics are buffered and put into the outbox at sync points, the
heartbeat in the same record as the last of them (:mod:`ablation.store.heartbeat`); the outbox sends every write in
order off the loop's path (:mod:`ablation.store.outbox`), and :meth:`RunLog.end` waits until the store has them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunStatus, RunTag

from ablation.store import heartbeat, outbox
from ablation.store.connection import client, redact_uri, refusals_explained, tracking_uri

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
    """One MLflow run; step metrics are buffered and put into the outbox at sync points (:mod:`ablation.store.outbox`).
    Make one with :meth:`create` or :meth:`reopen`."""

    def __init__(self, run_id: str, tags: Mapping[str, str], logged_step: int) -> None:
        self.run_id = run_id
        self.tags_at_open = dict(tags)  # the run's tags when it was opened (a reopened run's earlier life)
        self._pending: list[Metric] = []
        self.logged_step = logged_step  # the last step whose losses are sent: never logged again (see beat)
        self._queued_step = logged_step
        self._last_beat_s = time.monotonic()

    @classmethod
    def create(cls, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> RunLog:
        """A new RUNNING run with ``tags`` (redacted) and a first heartbeat."""
        name = redact({"run_name": run_name})["run_name"]
        all_tags = {t.key: t.value for t in tag_values(tags)} | heartbeat.beat_tags(-1)
        with refusals_explained():
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

    def _put(self, metrics: Iterable[Metric] = (), params: Iterable[Param] = (), tags: Iterable[RunTag] = ()) -> None:
        """Put ``log_batch`` records within MLflow's limits (1000 values, 100 params, 100 tags each); params and tags
        ride in the last one, so a heartbeat reaches the store only after every step it counts."""
        metrics, params, tags = list(metrics), list(params), list(tags)
        cut = max(len(metrics) - (MAX_BATCH - len(params) - len(tags)), 0)  # the metrics before the last record
        for start in range(0, cut, MAX_BATCH):
            outbox.put(outbox.batch(self.run_id, metrics[start : min(start + MAX_BATCH, cut)]))
        outbox.put(outbox.batch(self.run_id, metrics[cut:], params, tags))

    def params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in redact(params).items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._put(params=items[start : start + MAX_PARAMS_PER_BATCH])

    def tags(self, tags: Mapping[str, Any]) -> None:
        self._put(tags=tag_values(tags))

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
        """Put what is queued and the heartbeat in the outbox, the heartbeat in the last record: the store has the
        steps up to ``logged_step`` when it has the tag (see :mod:`ablation.store.heartbeat`).

        ``force=False`` (every sync point) beats at most every ``heartbeat.BEAT_EVERY_S`` seconds.
        """
        if not force and time.monotonic() - self._last_beat_s < heartbeat.BEAT_EVERY_S:
            return
        self._put(self._pending, tags=[RunTag(k, v) for k, v in heartbeat.beat_tags(self._queued_step).items()])
        self._pending, self.logged_step, self._last_beat_s = [], self._queued_step, time.monotonic()

    def flush(self) -> None:
        if self._pending:
            self._put(self._pending)
            self._pending = []

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Store a local file under ``folder`` (sanitised: it cannot leave the run's artifact folder). The file is
        copied at once: the caller may rewrite it."""
        path = Path(path)
        if safe_artifact_path(path.name) != path.name:
            raise ValueError(f"artifact file name {path.name!r} is not safe: use letters, digits, '.', '_', '-'")
        staged = outbox.outbox().stage(path.name)
        shutil.copyfile(path, staged)
        self._put_file(staged, safe_artifact_path(folder))

    def _put_file(self, staged: Path, folder: str | None) -> None:
        outbox.put(outbox.Op("file", tracking_uri(), self.run_id, file=str(staged), folder=folder))

    def image(self, rgb: np.ndarray, key: str, step: int) -> None:
        """One image of a series (uint8 [H, W, 3]): MLflow's image view lines runs up by ``key`` and ``step``."""
        for path in outbox.image_files(rgb, key, step):
            self._put_file(path, "images")
        self._put(tags=[RunTag(*outbox.image_tag())])

    def text(self, text: str, name: str) -> None:
        """Store ``text`` as ``name`` (sanitised like :func:`safe_artifact_path`)."""
        safe = safe_artifact_path(name)
        if safe is None:
            raise ValueError(f"artifact name {name!r} is empty after sanitising: give a file name")
        folder, _, file_name = safe.rpartition("/")
        staged = outbox.outbox().stage(file_name)
        staged.write_text(text)
        self._put_file(staged, folder or None)

    def end(self, status: str = "FINISHED", error: str | None = None, wait_s: float | None = None) -> Path | None:
        """Put what is pending and the final status (FINISHED, FAILED or KILLED), then wait until the store has it
        all, within the job's patience (or ``wait_s``). Returns the folder where what the server did not take in time
        is kept (None: all stored)."""
        self.beat()  # the last steps, and logged_step at the run's last step
        if error:
            self._put(tags=[RunTag("error", error[:MAX_TAG_CHARS])])
        final = RunStatus.to_string(getattr(RunStatus, status))
        outbox.put(outbox.Op("end", tracking_uri(), self.run_id, status=final))
        return outbox.settle(wait_s)
