"""Fixed MLflow stores for the report's tests: a parent run and child runs with given losses, times, hardware and
images, as a sweep would leave them (job records on the parent), so every number the report prints is known."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunStatus
from PIL import Image

from ablation.store import connection, sweeps

START_MS = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
PARAMS = {
    "device": "cpu",
    "torch_version": "2.14.1",
    "torchvision_version": "0.29.1",
    "weights_source": "random",
    "content_size_wh": "16x20",
    "style_sizes_wh": "16x12",
    "run.iterations": "3",
    "run.precision": "fp32",
}


@dataclass
class FakeRun:
    """One child run: its own final losses and runtime; the judge scores ``judge_factor`` x the own losses."""

    variant: str
    seed: int
    content: float
    style: float
    tv: float
    runtime_s: float
    judge_factor: float = 1.0
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    job_status: str = "finished"  # "skipped": reused from an earlier sweep
    condition: str = ""  # the job's condition (experiment=conditions), recorded on the sweep as a job records it


def make_images(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    image = folder / "img"
    image.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(image / "content.png")
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(image / "style_0.png")
    return image


def log_run(client, experiment_id: str, parent_id: str, job: int, fake: FakeRun, image: Path) -> str:
    """A FINISHED child run with the metrics, params and artifacts a real run logs."""
    tags = {
        "variant": fake.variant,
        "seed": str(fake.seed),
        "weights_source": "random",
        "mlflow.parentRunId": parent_id,
    }
    run = client.create_run(
        experiment_id, start_time=START_MS + 1000 * job, tags=tags | fake.tags, run_name=f"{fake.variant}-s{fake.seed}"
    )
    run_id = run.info.run_id
    finals = {"content": fake.content, "style": fake.style, "tv": fake.tv}
    finals["total"] = sum(finals.values())
    metrics = {f"final_{k}": v for k, v in finals.items()} | {
        f"judge_{k}": v * fake.judge_factor for k, v in finals.items()
    }
    metrics |= {"ssim_content": 0.5 - 0.1 * job / 6, "total_s": fake.runtime_s, "loop_s": fake.runtime_s - 1}
    history = [Metric("total", finals["total"] * (4 - step), START_MS, step) for step in range(4)]
    sha = ("ab" if fake.variant == "vgg16_tanh" else "cd") * 32
    params = PARAMS | {"weights_sha256": sha} | fake.params
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, START_MS, 3) for k, v in (metrics | fake.metrics).items()] + history,
        params=[Param(k, v) for k, v in params.items()],
    )
    Image.fromarray(np.full((20, 16, 3), 40 * job % 256, dtype=np.uint8)).save(image / "final.png")
    client.log_artifact(run_id, str(image / "final.png"))
    client.log_artifact(run_id, str(image / "content.png"), "inputs")
    client.log_artifact(run_id, str(image / "style_0.png"), "inputs")
    client.set_terminated(run_id, "FINISHED", end_time=START_MS + 1000 * job + 500)
    return run_id


def build_store(folder: Path, runs: list[FakeRun], sweep_id: str, overrides: str = "") -> tuple[dict[str, str], str]:
    """A parent run with one job per fake run; returns {run id: stable name} (for golden files) and the parent id."""
    experiment_id, client = connection.open_store("nst-ablation"), connection.client()
    parent = client.create_run(
        experiment_id, start_time=START_MS, run_name=f"sweep-{sweep_id}", tags={"sweep_role": "parent"}
    )
    parent_id = parent.info.run_id
    client.set_tag(parent_id, "sweep_id", sweep_id)
    client.set_tag(parent_id, "sweep_overrides", overrides)
    image = make_images(folder)
    ids = {}
    for job, fake in enumerate(runs):
        run_id = log_run(client, experiment_id, parent_id, job, fake, image)
        ids[run_id] = f"<{fake.variant}-s{fake.seed}>"
        record = {"status": fake.job_status, "run_id": run_id, "variant": fake.variant, "seed": fake.seed}
        record |= {"condition": fake.condition} if fake.condition else {}
        sweeps.write_job_record(sweeps.SweepJob(sweeps.SweepRef(parent_id, sweep_id, experiment_id), job), record)
    client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED), end_time=START_MS + 9000)
    ids[parent_id] = "<parent>"
    return ids, parent_id
