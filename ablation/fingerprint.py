"""A run's fingerprint, and finding the runs that have one: FINISHED ones to skip, KILLED/FAILED ones to continue.

The fingerprint is the SHA-256 of what determines a run's numbers: the composed config without the keys the
schema marks neutral (:data:`ablation.schema.RESULT_NEUTRAL_KEYS`: logging, output, paths), plus the SHA-256
of the weights and of every input image (so the same files elsewhere give the same fingerprint), the engine's
version (:data:`ablation.engine.ENGINE_VERSION`, bumped when its numbers change, so a fix never silently reuses
old results) and the device type (cpu, cuda: not the hardware class, so losses are reused across machines of
one type; the report groups runtimes by class). A sweep skips a job whose fingerprint has a FINISHED run and
continues one that has a KILLED or FAILED run with a checkpoint; ``run.resume=true`` continues a single run
the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from ablation.engine import ENGINE_VERSION
from ablation.engine.checkpoint import CHECKPOINT_ARTIFACT
from ablation.schema import RESULT_NEUTRAL_KEYS
from ablation.tracking import flatten

#: Bump when the fingerprint's recipe changes, so old runs are not taken for new ones.
FINGERPRINT_VERSION = 2
RESUMABLE_STATUSES = ("KILLED", "FAILED")
#: ``run.init`` values that name no file (any other value is a path, hashed by content instead).
BUILTIN_INITS = ("noise", "content")


def fingerprint_payload(
    config: Mapping[str, Any],
    weights_sha256: str,
    image_sha256: list[str],
    device: str,
    engine_version: int = ENGINE_VERSION,
) -> dict[str, str]:
    """The flat key -> value mapping a fingerprint hashes (shown so a mismatch can be explained)."""
    flat = {k: v for k, v in flatten(config).items() if k not in RESULT_NEUTRAL_KEYS}
    if flat.get("run.init") not in BUILTIN_INITS:
        flat["run.init"] = "file"  # its SHA-256 is the last of image_sha256
    flat["fingerprint.version"] = str(FINGERPRINT_VERSION)
    flat["fingerprint.engine_version"] = str(engine_version)
    flat["fingerprint.device"] = device
    flat["fingerprint.weights_sha256"] = weights_sha256
    flat["fingerprint.image_sha256"] = ",".join(image_sha256)  # content first, then styles, then an init image
    return flat


def fingerprint(
    config: Mapping[str, Any],
    weights_sha256: str,
    image_sha256: list[str],
    device: str,
    engine_version: int = ENGINE_VERSION,
) -> str:
    """SHA-256 of :func:`fingerprint_payload` as canonical JSON (sorted keys)."""
    payload = fingerprint_payload(config, weights_sha256, image_sha256, device, engine_version)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def find_finished(client: MlflowClient, experiment_id: str, job_fingerprint: str) -> str | None:
    """Id of the newest FINISHED run with this fingerprint, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.fingerprint = '{job_fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def has_checkpoint(client: MlflowClient, run_id: str) -> bool:
    folder, name = CHECKPOINT_ARTIFACT.rsplit("/", 1)
    try:
        return any(Path(f.path).name == name for f in client.list_artifacts(run_id, folder))
    except Exception:  # noqa: BLE001 - an unreadable artifact store means: nothing to resume from here
        return False


def find_resumable(client: MlflowClient, experiment_id: str, job_fingerprint: str) -> Run | None:
    """The most recently started KILLED/FAILED run with this fingerprint that holds a checkpoint.

    Runs that diverged (tag ``diverged``) are skipped: continuing them would only diverge again.
    """
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.fingerprint = '{job_fingerprint}'",
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
