"""``images.width=max`` and ``run.activation_checkpointing=auto`` as a run records them: the width chosen and the
checkpointing used are params; checkpointing is fingerprint-neutral, the chosen width is in the fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ablation.engine import memory
from ablation.job import execute
from ablation.spec import from_config
from tests.support import config, run_overrides

WIDTH = 40


def test_width_max_runs_at_the_widest_that_fits_and_logs_it(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Free memory set to what a 40 px run needs with checkpointing: width=max picks 40 and turns it on. The fixed
    cost of checkpointing (``torch.utils.checkpoint`` imports ``torch._dynamo``, 210 MiB) is left out here: it
    outweighs what checkpointing saves below about 600 px, and a test runs at 40."""
    monkeypatch.setattr(memory, "CHECKPOINTING_RUNTIME_BYTES", {})
    images = tmp_path / "images"
    images.mkdir()
    base = run_overrides(images, 2)
    spec = from_config(config([*base, f"images.width={WIDTH}"]))
    need = memory.estimate(memory.workload(spec, torch.device("cpu"), True)).total_bytes
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(need / memory.SAFETY) + 1)

    chosen = execute(config([*base, "images.width=max"]))
    run = MlflowClient(store).get_run(chosen["run_id"])
    assert run.data.params["images.width"] == str(WIDTH)
    assert run.data.params["run.activation_checkpointing"] == "True"
    assert run.data.params["content_size_wh"] == f"{WIDTH}x{WIDTH}"

    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**40)  # plenty: auto leaves it off
    plain = execute(config([*base, f"images.width={WIDTH}"]))
    same = MlflowClient(store).get_run(plain["run_id"])
    assert same.data.params["run.activation_checkpointing"] == "False"
    assert same.data.tags["fingerprint"] == run.data.tags["fingerprint"]
    assert same.data.metrics["final_total"] == pytest.approx(run.data.metrics["final_total"], rel=1e-6)
