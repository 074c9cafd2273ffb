"""A sweep in the store: its parent run, the small file that lets its jobs find it, and one record per job.

The parent run is what a person opens in the MLflow UI to see the sweep: its overrides as params
(``variant=original,vgg16`` -> param ``variant``), its counts as metrics (``jobs``, ``ran``, ``reused``,
``failed``, ``killed``, ``lost``) and ``summary.txt``. Each job's record (``{variant, seed, overrides, status,
run_id, error}``) is one small artifact, ``jobs/job-NNNN.json``: parallel jobs never write the same file, and
hundreds of them do not crowd the overview as tags would. Sweeps recorded before that kept them as ``job.NNNN``
tags; :func:`read_job_records` reads those too.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus

from ablation.store import outbox
from ablation.store.connection import client, provenance_tags, refusals_explained, tracking_uri
from ablation.store.outcome import Outcome, count_outcomes, status_of
from ablation.store.runlog import MAX_PARAM_CHARS, MAX_PARAMS_PER_BATCH, tag_values

PARENT_FILE = "mlflow_parent.json"
JOBS_FOLDER = "jobs"
LEGACY_JOB_TAG_PREFIX = "job."
#: The parent run's count metrics, by outcome (what the UI's overview shows).
COUNT_METRICS = {
    Outcome.FINISHED: "ran",
    Outcome.SKIPPED: "reused",
    Outcome.FAILED: "failed",
    Outcome.KILLED: "killed",
    Outcome.LOST: "lost",
}


@dataclass(frozen=True)
class SweepRef:
    """Where a sweep lives in the store."""

    parent_run_id: str
    sweep_id: str
    experiment_id: str


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep, as the job sees it: its sweep and its number."""

    sweep: SweepRef
    job_num: int

    def child_tags(self) -> dict[str, str]:
        return {
            "mlflow.parentRunId": self.sweep.parent_run_id,
            "sweep_id": self.sweep.sweep_id,
            "job_num": str(self.job_num),
        }


def override_params(overrides: list[str]) -> dict[str, str]:
    """``["variant=original,vgg16", "+x=1"]`` -> ``{"variant": "original,vgg16", "x": "1"}``: the UI's params."""
    pairs = (o.lstrip("+~").split("=", 1) for o in overrides)
    return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}


def create_parent(experiment_id: str, name: str, stamp: str, sweep_dir: Path, overrides: list[str]) -> SweepRef:
    """The parent run (overrides as params, identity as tags) and the file its jobs find it by."""
    store = client()
    with refusals_explained():  # a user who may only read: one line, before any job starts
        run = store.create_run(experiment_id, run_name=f"sweep-{name}-{stamp}", tags=provenance_tags())
    parent = SweepRef(run.info.run_id, f"{name}-{stamp}-{run.info.run_id[:6]}", experiment_id)
    tags = {
        "sweep_role": "parent",
        "sweep_id": parent.sweep_id,
        "sweep_experiment": name,
        "sweep_dir": str(sweep_dir),
        "sweep_overrides": " ".join(overrides),
    }
    params = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in override_params(overrides).items()]
    store.log_batch(parent.parent_run_id, tags=tag_values(tags), params=params[:MAX_PARAMS_PER_BATCH])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PARENT_FILE).write_text(json.dumps(parent.__dict__, indent=1))
    return parent


def tag_parent(parent: SweepRef, tags: Mapping[str, str]) -> None:
    """Tags on the sweep's parent run (its pre-launch estimate)."""
    client().log_batch(parent.parent_run_id, tags=tag_values(dict(tags)))


def read_parent(sweep_dir: Path) -> SweepRef | None:
    """The sweep whose folder is ``sweep_dir`` (None when the folder has no parent file)."""
    path = sweep_dir / PARENT_FILE
    return SweepRef(**json.loads(path.read_text())) if path.is_file() else None


def job_artifact(job_num: int) -> str:
    return f"{JOBS_FOLDER}/job-{job_num:04d}.json"


def write_job_record(job: SweepJob, record: Mapping[str, Any]) -> None:
    """Store (or replace) job ``job.job_num``'s record on the parent run, through the outbox like the runs' own
    records, and wait until the store has it (within the job's patience; else it is kept with them)."""
    folder, _, name = job_artifact(job.job_num).rpartition("/")
    staged = outbox.outbox().stage(name)
    staged.write_text(json.dumps(dict(record), sort_keys=True))
    outbox.put(outbox.Op("file", tracking_uri(), job.sweep.parent_run_id, file=str(staged), folder=folder))
    outbox.settle()


def read_job_records(parent_run_id: str) -> dict[int, dict[str, Any]]:
    """job number -> record, read in one download (or from the ``job.NNNN`` tags of a sweep recorded that way)."""
    store = client()
    if not store.list_artifacts(parent_run_id, JOBS_FOLDER):
        tags = store.get_run(parent_run_id).data.tags
        prefix = LEGACY_JOB_TAG_PREFIX
        return {int(k.removeprefix(prefix)): json.loads(v) for k, v in tags.items() if k.startswith(prefix)}
    with tempfile.TemporaryDirectory(prefix="nst-jobs-") as scratch:
        folder = Path(store.download_artifacts(parent_run_id, JOBS_FOLDER, scratch))
        return {int(p.stem.removeprefix("job-")): json.loads(p.read_text()) for p in sorted(folder.glob("job-*.json"))}


def finish_parent(parent: SweepRef, jobs: Mapping[int, Mapping[str, Any]], summary: str, failed: bool) -> None:
    """The sweep's counts as metrics, its summary as ``summary.txt``, its status FAILED when a job failed."""
    counts = count_outcomes(jobs.values())
    values = {"jobs": len(jobs), **{COUNT_METRICS[o]: counts[o] for o in COUNT_METRICS}}
    run_id, uri = parent.parent_run_id, tracking_uri()
    outbox.put(outbox.batch(run_id, [Metric(k, v, int(time.time() * 1000), 0) for k, v in values.items()]))
    staged = outbox.outbox().stage("summary.txt")
    staged.write_text(summary + "\n")
    outbox.put(outbox.Op("file", uri, run_id, file=str(staged)))
    status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
    outbox.put(outbox.Op("end", uri, run_id, status=status))
    outbox.settle()


def record_lost(sweep_dir: Path, job_num: int, overrides: list[str], error: str) -> None:
    """Record, from the launching process, a job that ended without reporting back (SIGKILL, node failure).

    A job that recorded its own end (``killed`` by SIGTERM, with a checkpoint) keeps that record.
    """
    parent = read_parent(sweep_dir.resolve())
    if parent is None:
        return
    record = read_job_records(parent.parent_run_id).get(job_num, {})
    if status_of(record) in (None, Outcome.RUNNING):
        lost = {**record, "overrides": overrides, "status": Outcome.LOST, "error": error}
        write_job_record(SweepJob(parent, job_num), lost)
