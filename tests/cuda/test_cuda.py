"""The engine and a whole run on a GPU: what the CPU suite cannot check. Run by ``make test-cuda`` (part of ``make
check-cuda``); everywhere else the suite hides the GPUs (tests/conftest.py), so these skip.

- The start image's losses on the GPU equal the CPU's (fp32, 1e-4 relative): the same pixel space, Gram normalisation
  and loss weights on cuDNN's kernels as on oneDNN's.
- Activation checkpointing on the GPU changes no number: every step's losses and the final image at 1e-6 relative
  over 20 steps, as on the CPU (issue: "on CUDA when a GPU is lent: the same"), in fp32 (NCHW, its default there),
  tf32 and bf16 (NHWC, theirs).
- Seeds batched on the GPU (its default for ``run.seeds``) end where each seed run alone ends (1e-5, as on the CPU).
- A run through the harness on ``run.device=cuda`` is stored as a CUDA run: its hardware class names the GPU.
- After a run, the room the memory check sees is the room the run had: what torch's allocator keeps (cuDNN's tuning
  workspaces) counts as free, so the next job of a sweep in the same process is not refused or checkpointed for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ablation import job
from ablation.engine import memory
from ablation.engine.backends import configure_backends
from ablation.engine.network import NetworkSpec
from ablation.engine.transfer import EngineOptions
from tests.engine.test_checkpointing import run
from tests.support import config, replaced, run_overrides

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU: make test-cuda on a CUDA host (make test hides the GPUs)"
)


def on_cuda(overrides: list[str]) -> list[str]:
    """``run_overrides`` with the run moved to the GPU."""
    return replaced(overrides, "run.device=cuda")


def test_the_start_images_losses_on_the_gpu_equal_the_cpus() -> None:
    options = EngineOptions("fp32", False, checkpointing=False)
    configure_backends(options, torch.device("cuda"))
    on_gpu, on_cpu = run(NetworkSpec(), options, "cuda")[0], run(NetworkSpec(), options, "cpu")[0]
    torch.testing.assert_close(on_gpu[0], on_cpu[0], rtol=1e-4, atol=0)


@pytest.mark.parametrize(("precision", "channels_last"), [("fp32", False), ("tf32", True), ("bf16", True)])
def test_checkpointed_steps_on_the_gpu_equal_the_plain_run(precision: str, channels_last: bool) -> None:
    configure_backends(EngineOptions(precision), torch.device("cuda"))
    plain = run(NetworkSpec(), EngineOptions(precision, channels_last, checkpointing=False), "cuda")
    lean = run(NetworkSpec(), EngineOptions(precision, channels_last, checkpointing=True), "cuda")
    torch.testing.assert_close(lean[0], plain[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(lean[1], plain[1], rtol=1e-6, atol=1e-6)


def test_seeds_batched_on_the_gpu_end_where_each_alone_ends(store: str, tmp_path: Path) -> None:
    overrides = on_cuda(run_overrides(tmp_path, 5))
    both = job.execute(config([*overrides, "run.seeds=[0,1]"]))["seed_results"]
    assert [r["batch_size"] for r in both] == [2, 2]  # one batch: the GPU's default
    for seed, results in enumerate(both):
        alone = job.execute(config([*overrides, f"run.seed={seed}", "tracking.experiment=alone"]))
        assert results["final_total"] == pytest.approx(alone["final_total"], rel=1e-5)


def test_a_run_on_the_gpu_is_stored_as_one(store: str, tmp_path: Path) -> None:
    results = job.execute(config(on_cuda(run_overrides(tmp_path, 3))))
    stored = MlflowClient(store).get_run(results["run_id"])
    assert stored.info.status == "FINISHED"
    assert stored.data.tags["hardware_class"] == f"cuda:{torch.cuda.get_device_name(0)}"
    assert stored.data.tags["fingerprint"]


def test_after_a_run_the_memory_check_sees_the_room_it_had(store: str, tmp_path: Path) -> None:
    """A 512 px run: cuDNN's tuning at that size took 33,429 MiB of an H200's allocator. Afterwards the check's free
    memory is what it was before, less the tensors still allocated and 1 GiB for what CUDA's libraries keep."""
    device = torch.device("cuda")
    before = memory.available_bytes(device)
    job.execute(config(on_cuda(run_overrides(tmp_path, 2)) + ["images.width=512", "judge.enabled=false"]))
    assert memory.available_bytes(device) >= before - torch.cuda.memory_allocated(device) - 2**30
