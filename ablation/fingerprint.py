"""A run's fingerprint: the key by which a sweep finds a job's earlier runs (:mod:`ablation.store.lookup`).

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
from typing import Any

from ablation.engine import ENGINE_VERSION
from ablation.schema import RESULT_NEUTRAL_KEYS
from ablation.store.runlog import flatten

#: Bump when the fingerprint's recipe changes, so old runs are not taken for new ones.
FINGERPRINT_VERSION = 2
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
