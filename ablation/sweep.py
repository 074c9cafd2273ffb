"""Sweeps through Hydra: the callback that opens a sweep's parent run, records each job's outcome, sums it up.

Which jobs run is decided by their fingerprints (``ablation.fingerprint``, used by ``ablation.job``): a job
whose fingerprint already has a FINISHED run is skipped, so re-running an interrupted sweep runs only what is
missing.

:class:`SweepCallback` (a Hydra callback, see ``conf/config.yaml``) creates the store, the experiment and
the sweep's parent run in the launching process before any job starts: a fresh sqlite store hit by
parallel jobs crashes on schema creation, and concurrent ``set_experiment`` files runs under Default.
Jobs find the parent through a small file in the sweep folder, which every launcher shares. Each job
records its outcome on the parent (:mod:`ablation.store.sweeps`), whether it ran, was skipped or failed;
the report reads the sweep's runs from those records.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ablation.store import connection, sweeps
from ablation.store.outcome import Outcome, outcome_record, status_of
from ablation.store.sweeps import SweepJob


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
    parent = sweeps.read_parent(Path(str(hydra_cfg.sweep.dir)).resolve())
    return None if parent is None else SweepJob(parent, int(hydra_cfg.job.num))


def summarise(sweep_id: str, jobs: Mapping[int, Mapping[str, Any]]) -> tuple[str, list[str]]:
    """One-line summary and the names of jobs that failed (or never reported back, e.g. killed)."""
    ran = sum(1 for j in jobs.values() if status_of(j) is Outcome.FINISHED)
    skipped = sum(1 for j in jobs.values() if status_of(j) is Outcome.SKIPPED)
    failed = [
        f"job {num} ({' '.join(j.get('overrides', [])) or '-'}): {j.get('error') or j.get('status')}"
        for num, j in sorted(jobs.items())
        if status_of(j) not in (Outcome.FINISHED, Outcome.SKIPPED)
    ]
    line = (
        f"sweep {sweep_id}: {len(jobs)} jobs, {ran} ran, {skipped} skipped "
        f"(a FINISHED run has their fingerprint), {len(failed)} failed"
    )
    return line, failed


def job_identity(variant: Any, seed: Any, overrides: Any, condition: Any = None) -> dict[str, Any]:
    """What a job record says about which job it is; ``condition`` (a file of ``conf/condition/``) only when the job
    has one, so the report can set the sweep's runs side by side per condition."""
    identity = {"variant": str(variant), "seed": seed, "overrides": list(overrides)}
    return identity | ({"condition": str(condition)} if condition else {})


def _config_identity(config: DictConfig) -> dict[str, Any]:
    return job_identity(
        OmegaConf.select(config, "variant.name"),
        OmegaConf.select(config, "run.seed"),
        OmegaConf.to_container(config.hydra.overrides.task),
        OmegaConf.select(config, "hydra.runtime.choices.condition"),
    )


def returned_outcome(value: Any) -> dict[str, Any]:
    """The outcome record of what a job returned (``run.main`` returns one; anything else is a task that raised)."""
    if isinstance(value, Mapping) and status_of(value) in (Outcome.FINISHED, Outcome.SKIPPED, Outcome.FAILED):
        return outcome_record(value["status"], value.get("run_id"), value.get("error"))
    return outcome_record(Outcome.FAILED, None, f"{type(value).__name__}: {value}")


class SweepCallback(Callback):
    """Parent run before the first job, a record per job, a summary after the last one.

    Holds no client between calls: launchers pickle callbacks into their workers.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        experiment_id = connection.open_store(str(config.tracking.experiment))  # schema + experiment
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()  # resolved once here; jobs see the same value
        name = OmegaConf.select(config, "hydra.runtime.choices.experiment") or "sweep"
        overrides = list(OmegaConf.to_container(config.hydra.overrides.task))
        parent = sweeps.create_parent(experiment_id, name, time.strftime("%Y%m%d-%H%M%S"), sweep_dir, overrides)
        print(
            f"sweep {parent.sweep_id}: parent run {parent.parent_run_id} in {connection.tracking_uri()}",
            file=sys.stderr,
        )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        job = current_job(config)
        if job is not None:
            sweeps.write_job_record(job, {**_config_identity(config), "status": Outcome.RUNNING})

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        job = current_job(config)
        value = getattr(job_return, "_return_value", None)
        if job is None or isinstance(value, (int, float)):  # an Optuna objective: run.main recorded the outcome
            return
        sweeps.write_job_record(job, {**_config_identity(config), **returned_outcome(value)})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = sweeps.read_parent(Path(str(config.hydra.sweep.dir)).resolve())
        if parent is None:
            return
        jobs = sweeps.read_job_records(parent.parent_run_id)
        line, failed = summarise(parent.sweep_id, jobs)
        text = "\n".join([line, *failed])
        sweeps.finish_parent(parent, jobs, text, failed=bool(failed))
        print(text, file=sys.stderr)
        print(f"report: python -m ablation.report --sweep {parent.sweep_id}", file=sys.stderr)
        if failed:
            sys.exit(1)


def record_outcome(job: SweepJob, config: Mapping[str, Any], results: Mapping[str, Any]) -> None:
    """Record a job's outcome from inside the job (sweepers whose jobs return a bare number; a stopped job)."""
    hydra_cfg = HydraConfig.get()
    identity = job_identity(
        config["variant"]["name"],
        config["run"]["seed"],
        hydra_cfg.overrides.task,
        hydra_cfg.runtime.choices.get("condition"),
    )
    outcome = outcome_record(results["status"], results.get("run_id"), results.get("error"))
    sweeps.write_job_record(job, {**identity, **outcome})
