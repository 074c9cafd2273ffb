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

Before the first job it prints what the sweep will cost (:func:`estimate`: the job list as Hydra's basic sweeper
expands it, the jobs already answered by a FINISHED run, the time of the rest here) and at its end what it took.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ablation import schema
from ablation.bench.estimate import SweepEstimate, duration, estimate_sweep
from ablation.engine.errors import UserError
from ablation.store import connection, sweeps, tolerance
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


def configure(config: DictConfig) -> None:
    """The launching process's patience with the tracking server, as its jobs': ``run.tracking_outage_s``."""
    tolerance.configure(float(config.run.tracking_outage_s), OmegaConf.select(config, "tracking.unsent_dir"))


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


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides as Hydra's basic sweeper expands them (its axes, then the command line's, as a
    product: the sweeper's own ``split_arguments``, from Hydra's internal module); None under another sweeper
    (Optuna's trials are drawn one by one, not listed)."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if target.rsplit(".", 1)[-1] != BasicSweeper.__name__:
        return None
    axes = [f"{key}={value}" for key, value in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    arguments = list(OmegaConf.to_container(config.hydra.overrides.task))
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return [
        job for batch in BasicSweeper.split_arguments(parser.parse_overrides(axes + arguments), None) for job in batch
    ]


def compose_job(loader: Any, config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """One job's config from its overrides as Hydra's ``loader`` composes it for the sweeper (plain, no ``hydra``)."""
    composed = loader.load_sweep_config(config, list(overrides))
    with open_dict(composed):
        del composed["hydra"]
    return schema.plain(composed)


def estimate(config: DictConfig, experiment_id: str) -> SweepEstimate | None:
    """The sweep's jobs, how many are reused and how long the rest take here, printed before the first job starts;
    None (and a line saying why) when it cannot be told: another sweeper, or a job that will fail anyway."""
    jobs = sweep_jobs(config)
    if jobs is None:
        return None
    try:
        compose = partial(compose_job, GlobalHydra.instance().config_loader(), config)
        found = estimate_sweep(jobs, compose, experiment_id)
    except UserError as err:  # the job will say it again, in its own record
        print(f"sweep estimate: none ({err})", file=sys.stderr)
        return None
    timeout_min = OmegaConf.select(config, "hydra.launcher.timeout_min")  # a cluster launcher's time limit
    print(found.text(timeout_min), file=sys.stderr)
    return found


class SweepCallback(Callback):
    """Parent run before the first job, a record per job, a summary after the last one.

    Holds no client between calls: launchers pickle callbacks into their workers.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """The store, the experiment and the parent run; a store that cannot be used ends the sweep in one line
        (Hydra would only warn about an exception here and start every job against that store)."""
        configure(config)
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()  # resolved once here; jobs see the same value
        name = OmegaConf.select(config, "hydra.runtime.choices.experiment") or "sweep"
        overrides = list(OmegaConf.to_container(config.hydra.overrides.task))
        try:
            experiment_id = connection.open_store(str(config.tracking.experiment))  # schema + experiment
            found = estimate(config, experiment_id)
            parent = sweeps.create_parent(experiment_id, name, time.strftime("%Y%m%d-%H%M%S"), sweep_dir, overrides)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        if found is not None:
            sweeps.tag_parent(parent, {"sweep_estimate_s": f"{found.seconds:.1f}"})
        self.started_s, self.estimated_s = time.monotonic(), None if found is None else found.seconds
        print(
            f"sweep {parent.sweep_id}: parent run {parent.parent_run_id} in {connection.tracking_uri()}",
            file=sys.stderr,
        )

    def timing(self, parent: sweeps.SweepRef) -> list[str]:
        """'took 3.1 min (estimated 3.3 min)': the sweep's time from its first job against the estimate, also tagged
        on the parent run (``sweep_took_s`` beside ``sweep_estimate_s``)."""
        started = getattr(self, "started_s", None)  # None: the sweep did not start in this process
        if started is None:
            return []
        took_s = time.monotonic() - started
        sweeps.tag_parent(parent, {"sweep_took_s": f"{took_s:.1f}"})
        estimated = getattr(self, "estimated_s", None)
        return [f"took {duration(took_s)}" + (f" (estimated {duration(estimated)})" if estimated is not None else "")]

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        configure(config)
        job = current_job(config)
        if job is not None:
            sweeps.write_job_record(job, {**_config_identity(config), "status": Outcome.RUNNING})

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        configure(config)
        job = current_job(config)
        value = getattr(job_return, "_return_value", None)
        if job is None or isinstance(value, (int, float)):  # an Optuna objective: run.main recorded the outcome
            return
        sweeps.write_job_record(job, {**_config_identity(config), **returned_outcome(value)})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        configure(config)
        parent = sweeps.read_parent(Path(str(config.hydra.sweep.dir)).resolve())
        if parent is None:
            return
        jobs = sweeps.read_job_records(parent.parent_run_id)
        line, failed = summarise(parent.sweep_id, jobs)
        text = "\n".join([line, *self.timing(parent), *failed])
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
