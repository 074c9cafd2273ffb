"""Sweeps: one MLflow parent run per sweep, each job's outcome recorded on it, a summary at the end.

Which jobs run is decided by their fingerprints (``ablation.fingerprint``, used by ``ablation.job``): a job
whose fingerprint already has a FINISHED run is skipped, so re-running an interrupted sweep runs only what is
missing.

:class:`SweepCallback` (a Hydra callback, see ``conf/config.yaml``) creates the store, the experiment and
the sweep's parent run in the launching process before any job starts: a fresh sqlite store hit by
parallel jobs crashes on schema creation, and concurrent ``set_experiment`` files runs under Default.
Jobs find the parent through a small file in the sweep folder, which every launcher shares. Each job
records its outcome on the parent as a ``job.NNNN`` tag (JSON), whether it ran, was skipped or failed;
the report reads the sweep's runs from those tags.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from ablation import tracking

PARENT_FILE = "mlflow_parent.json"
JOB_TAG_PREFIX = "job."


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep, as the job sees it: where its parent run is and which job it is."""

    parent_run_id: str
    sweep_id: str
    experiment_id: str
    job_num: int

    def child_tags(self) -> dict[str, str]:
        return {"mlflow.parentRunId": self.parent_run_id, "sweep_id": self.sweep_id, "job_num": str(self.job_num)}


def _sweep_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir)).resolve()


def current_job(config: DictConfig | None = None) -> SweepJob | None:
    """The running sweep job (``-m``), or None for a single run or a sweep started without the callback."""
    if config is None:
        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
    else:
        hydra_cfg = config.hydra
    if hydra_cfg.mode != RunMode.MULTIRUN:  # a single run has no job number and no sweep folder
        return None
    sweep_dir = Path(str(hydra_cfg.sweep.dir)).resolve()
    if not (sweep_dir / PARENT_FILE).is_file():
        return None
    num = hydra_cfg.job.num
    parent = json.loads((sweep_dir / PARENT_FILE).read_text())
    return SweepJob(parent["parent_run_id"], parent["sweep_id"], parent["experiment_id"], int(num))


def job_key(job_num: int) -> str:
    return f"{JOB_TAG_PREFIX}{job_num:04d}"


def record_job(client: MlflowClient, job: SweepJob, record: Mapping[str, Any]) -> None:
    """Store a job's outcome on the parent run (one tag per job: parallel jobs never write the same key)."""
    client.set_tag(job.parent_run_id, job_key(job.job_num), json.dumps(dict(record), sort_keys=True)[:5000])


def read_jobs(client: MlflowClient, parent_run_id: str) -> dict[int, dict[str, Any]]:
    """job number -> record, from the parent run's ``job.NNNN`` tags."""
    tags = client.get_run(parent_run_id).data.tags
    return {int(k.removeprefix(JOB_TAG_PREFIX)): json.loads(v) for k, v in tags.items() if k.startswith(JOB_TAG_PREFIX)}


def summarise(sweep_id: str, jobs: Mapping[int, Mapping[str, Any]]) -> tuple[str, list[str]]:
    """One-line summary and the names of jobs that failed (or never reported back, e.g. killed)."""
    counts = {s: sum(1 for j in jobs.values() if j.get("status") == s) for s in ("finished", "skipped")}
    failed = [
        f"job {num} ({' '.join(j.get('overrides', [])) or '-'}): {j.get('error') or j.get('status')}"
        for num, j in sorted(jobs.items())
        if j.get("status") not in ("finished", "skipped")
    ]
    line = (
        f"sweep {sweep_id}: {len(jobs)} jobs, {counts['finished']} ran, {counts['skipped']} skipped "
        f"(a FINISHED run has their fingerprint), {len(failed)} failed"
    )
    return line, failed


class SweepCallback(Callback):
    """Parent run before the first job, a ``job.NNNN`` record per job, a summary after the last one.

    Holds no client between calls: launchers pickle callbacks into their workers.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        client, experiment_id = tracking.open_store(str(config.tracking.experiment))  # schema + experiment
        sweep_dir = _sweep_dir(config)  # resolved once here; jobs see the same ${now:...} value
        sweep_dir.mkdir(parents=True, exist_ok=True)
        name = OmegaConf.select(config, "hydra.runtime.choices.experiment") or "sweep"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        overrides = " ".join(OmegaConf.to_container(config.hydra.overrides.task))
        tags = {"sweep_role": "parent", **tracking.provenance_tags()}
        run = client.create_run(experiment_id, run_name=f"sweep-{name}-{stamp}", tags=tags)
        sweep_id = f"{name}-{stamp}-{run.info.run_id[:6]}"
        client.log_batch(
            run.info.run_id,
            tags=[
                RunTag(k, v)
                for k, v in {
                    "sweep_id": sweep_id,
                    "sweep_experiment": name,
                    "sweep_dir": str(sweep_dir),
                    "sweep_overrides": overrides,
                }.items()
            ],
        )
        parent = {"parent_run_id": run.info.run_id, "sweep_id": sweep_id, "experiment_id": experiment_id}
        (sweep_dir / PARENT_FILE).write_text(json.dumps(parent, indent=1))
        print(f"sweep {sweep_id}: parent run {run.info.run_id} in {tracking.tracking_uri()}", file=sys.stderr)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        job = current_job(config)
        if job is not None:
            client = MlflowClient(tracking.tracking_uri())
            record_job(client, job, {**_job_identity(config), "status": "running"})

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        job = current_job(config)
        if job is None:
            return
        value = getattr(job_return, "_return_value", None)
        if isinstance(value, (int, float)):  # an Optuna objective: run.main recorded the outcome itself
            return
        if isinstance(value, Mapping) and value.get("status") in ("finished", "skipped", "failed"):
            outcome = {"status": value["status"], "run_id": value.get("run_id"), "error": value.get("error")}
        else:  # the task raised (it should not: run.main turns errors into a failed result)
            outcome = {"status": "failed", "run_id": None, "error": f"{type(value).__name__}: {value}"}
        record_job(MlflowClient(tracking.tracking_uri()), job, {**_job_identity(config), **outcome})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        parent = json.loads((sweep_dir / PARENT_FILE).read_text())
        client = MlflowClient(tracking.tracking_uri())
        jobs = read_jobs(client, parent["parent_run_id"])
        line, failed = summarise(parent["sweep_id"], jobs)
        text = "\n".join([line, *failed])
        client.log_text(parent["parent_run_id"], text + "\n", "summary.txt")
        status = "FAILED" if failed else "FINISHED"
        client.set_terminated(parent["parent_run_id"], RunStatus.to_string(getattr(RunStatus, status)))
        print(text, file=sys.stderr)
        print(f"report: python -m ablation.report --sweep {parent['sweep_id']}", file=sys.stderr)
        if failed:
            sys.exit(1)


def record_outcome(job: SweepJob, config: Mapping[str, Any], results: Mapping[str, Any]) -> None:
    """Record a job's outcome from inside the job, for sweepers whose jobs must return a bare number."""
    identity = {
        "variant": str(config["variant"]["name"]),
        "seed": config["run"]["seed"],
        "overrides": list(HydraConfig.get().overrides.task),
    }
    outcome = {k: results.get(k) for k in ("status", "run_id", "error")}
    record_job(MlflowClient(tracking.tracking_uri()), job, {**identity, **outcome})


def _job_identity(config: DictConfig) -> dict[str, Any]:
    return {
        "variant": str(OmegaConf.select(config, "variant.name")),
        "seed": OmegaConf.select(config, "run.seed"),
        "overrides": list(OmegaConf.to_container(config.hydra.overrides.task)),
    }


def record_lost(sweep_dir: Path, job_num: int, overrides: list[str], error: str) -> None:
    """Record, from the launching process, a job that ended without reporting back (SIGKILL, node failure).

    A job that recorded its own end (``killed`` by SIGTERM, with a checkpoint) keeps that record.
    """
    parent = json.loads((sweep_dir.resolve() / PARENT_FILE).read_text())
    job = SweepJob(parent["parent_run_id"], parent["sweep_id"], parent["experiment_id"], job_num)
    client = MlflowClient(tracking.tracking_uri())
    record = read_jobs(client, job.parent_run_id).get(job_num, {})
    if record.get("status") in (None, "running"):
        record_job(client, job, {**record, "overrides": overrides, "status": "lost", "error": error})
