"""What every run records beyond its losses: the machine (hardware class, params), the calibration, MLflow's
provenance tags, the engine version, and its images as an MLflow image series by step."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ablation import job
from ablation.engine import ENGINE_VERSION, hardware
from ablation.job import execute
from ablation.record import IMAGE_SERIES_KEY, resumed_hardware_class
from tests.support import PROJECT, config, run_overrides, sqlite_store

MACHINE_PARAMS = (
    "cpu_model",
    "cpu_cores",
    "torch_threads",
    "gpu_name",
    "gpu_memory_gb",
    "gpu_driver",
    "cuda_version",
    "cudnn_version",
    "hostname",
)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """One CPU run of 6 steps with a checkpoint every 2, read back from its own store."""
    folder = tmp_path_factory.mktemp("records")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", sqlite_store(folder))
        overrides = [o for o in run_overrides(folder, 6) if not o.startswith("run.checkpoint_every")]
        results = execute(config(overrides + ["run.checkpoint_every=2"]))
        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        return client, client.get_run(results["run_id"])


def test_machine_is_recorded_as_params_and_a_hardware_class_tag(recorded_run):
    _, run = recorded_run
    params, tags = run.data.params, run.data.tags
    assert set(MACHINE_PARAMS) <= set(params)
    assert params["gpu_name"] == params["gpu_memory_gb"] == params["gpu_driver"] == "none"  # run.device=cpu
    expected = f"cpu:{params['cpu_model']} x{params['cpu_cores']} threads={params['torch_threads']}"
    assert tags["hardware_class"] == expected
    assert params["engine_version"] == str(ENGINE_VERSION)


def test_mlflow_provenance_tags_are_those_start_run_sets(recorded_run):
    _, run = recorded_run
    tags = run.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, check=True)
    assert tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert tags["mlflow.source.name"] and tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"


def test_calibration_is_logged_once_at_step_0(recorded_run):
    client, run = recorded_run
    (calibration,) = client.get_metric_history(run.info.run_id, "calibration_gflops")
    assert calibration.step == 0 and calibration.value > 0


def test_a_job_reuses_a_machine_measurement_younger_than_a_minute(
    monkeypatch: pytest.MonkeyPatch, fresh_calibration: None
) -> None:
    """Short jobs of one process share one calibration, and so does the next process of this host (its own
    measurements empty, the kept file read); an older one is measured again (the real calibration, counted)."""
    calls: list[float] = []
    real = hardware.calibrate
    monkeypatch.setattr(hardware, "calibrate", lambda device: calls.append(real(device, min_s=0.05)) or calls[-1])
    cpu = torch.device("cpu")
    first, second = job.Machine.measure(cpu), job.Machine.measure(cpu)
    assert second is first and len(calls) == 1 and first.calibration_gflops == calls[0] > 0
    monkeypatch.setattr(job, "_measured", {})  # another process
    assert job.Machine.measure(cpu) == first and len(calls) == 1
    monkeypatch.setattr(job, "MACHINE_REUSE_S", 0.0)
    assert job.Machine.measure(cpu) is not first and len(calls) == 2


def test_images_are_an_mlflow_series_at_each_checkpoint_and_the_final_step(recorded_run):
    """6 steps, a checkpoint every 2: steps 2 and 4 are checkpoints, step 6 is the final image."""
    client, run = recorded_run
    names = [Path(f.path).name for f in client.list_artifacts(run.info.run_id, "images")]
    steps = sorted(int(m[1]) for n in names if (m := re.fullmatch(rf"{IMAGE_SERIES_KEY}\+step\+(\d+)\+.*\.png", n)))
    assert steps == [2, 4, 6]
    assert run.data.tags["mlflow.loggedImages"] == "True"


def test_a_run_resumed_on_another_machine_is_of_no_single_class():
    assert resumed_hardware_class("cpu:A x2 threads=2", "cpu:A x2 threads=2") == "cpu:A x2 threads=2"
    assert resumed_hardware_class(None, "cuda:H100") == "cuda:H100"  # a run from before classes existed
    assert resumed_hardware_class("cuda:A100", "cuda:H100") == "mixed: cuda:A100 + cuda:H100"
