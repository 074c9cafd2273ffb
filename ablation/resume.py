"""Finding the run to continue: the latest KILLED or FAILED run of the same configuration with a checkpoint.

A run is identified by a tag. ``config_sha256`` (set by ``ablation.run`` on every run) hashes the resolved
config without the keys that do not change the numbers (:data:`IGNORED_KEYS`); a sweep may use its own
``fingerprint`` tag instead and call :func:`find_resumable` with ``tag="fingerprint"``, or match on the
run name with ``tag="mlflow.runName"``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from ablation.engine.checkpoint import CHECKPOINT_ARTIFACT

#: Config keys that change neither the computation nor its result: excluded from ``config_sha256``.
IGNORED_KEYS = frozenset(
    {
        "run.resume",
        "run.debug",
        "run.quiet",
        "run.sync_every",
        "run.checkpoint_every",
        "run.memory_check",
        "tracking",
    }
)
RESUMABLE_STATUSES = ("KILLED", "FAILED")


def _without(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in IGNORED_KEYS:
            continue
        kept[key] = _without(value, f"{name}.") if isinstance(value, Mapping) else value
    return kept


def config_sha256(config: Mapping[str, Any]) -> str:
    """SHA-256 of the resolved config as canonical JSON (sorted keys), without :data:`IGNORED_KEYS`."""
    text = json.dumps(_without(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def has_checkpoint(client: MlflowClient, run_id: str) -> bool:
    folder, name = CHECKPOINT_ARTIFACT.rsplit("/", 1)
    try:
        return any(Path(f.path).name == name for f in client.list_artifacts(run_id, folder))
    except Exception:  # noqa: BLE001 - an unreadable artifact store means: nothing to resume from here
        return False


def find_resumable(client: MlflowClient, experiment_id: str, key: str, tag: str = "config_sha256") -> Run | None:
    """The most recently started KILLED/FAILED run with ``tags.<tag> = key`` that holds a checkpoint.

    Runs that diverged (tag ``diverged``) are skipped: continuing them would only diverge again.
    """
    quoted = key.replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tag}` = '{quoted}'",
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    for run in runs:
        if run.info.status not in RESUMABLE_STATUSES or "diverged" in run.data.tags:
            continue
        if has_checkpoint(client, run.info.run_id):
            return run
    return None


def download_checkpoint(client: MlflowClient, run_id: str, folder: str | Path) -> Path:
    """The run's checkpoint file, copied into ``folder``."""
    return Path(client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(folder)))
