"""One job: the decisions around a transfer. Check, skip what is done, continue what was stopped, judge.

:func:`execute` takes a composed config (a plain dict) and returns the results; the Hydra entry (``run.py``)
turns user errors into one line. A sweep job skips a seed whose fingerprint has a FINISHED run (unless
``run.force``) and continues one whose fingerprint has a KILLED/FAILED run with a checkpoint; a single run
continues only with ``run.resume=true``. SIGINT/SIGTERM end the run KILLED with a checkpoint. What is written
about a run, and when, is the recorder's (:mod:`ablation.record`); which runs exist, the store's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ablation import fingerprint, record
from ablation.engine import hardware, judge, memory
from ablation.engine.inputs import file_sha256, resolve_image
from ablation.engine.plan import RunSpec
from ablation.engine.prepare import Problem, check_input_sizes, pick_device, prepare
from ablation.engine.scales import Stage, coarse_to_fine
from ablation.engine.weights import VGGWeights, load_weights
from ablation.record import Scorer
from ablation.spec import SpecError, from_config, seed_config
from ablation.stopping import StopRequest
from ablation.store import connection, lookup, tolerance
from ablation.store.outcome import Outcome, outcome_record
from ablation.store.sweeps import SweepJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """What a job knows before it computes: the plan, where it runs, the store, the weights, each seed's key."""

    config: dict[str, Any]
    spec: RunSpec
    device: torch.device
    experiment_id: str
    weights: VGGWeights
    fingerprints: dict[int, str]
    sweep: SweepJob | None

    def with_seeds(self, seeds: tuple[int, ...]) -> Job:
        """The same job for some of its seeds (the first is the one a single-seed lookup uses)."""
        return replace(self, spec=replace(self.spec, seeds=seeds, seed=seeds[0]))


#: A job reuses a measurement of its machine younger than this, its own process's or one another process of this
#: host kept (SLURM jobs of a sweep on one node, joblib's workers): a sweep of short jobs (a tuning study, a test's
#: 3-step runs) spent more time calibrating than computing, and a minute-old figure describes the same machine; a
#: job of a real size outlasts it, so each such job measures afresh.
MACHINE_REUSE_S = 60.0
_measured: dict[tuple[str, int], tuple[float, Machine]] = {}


@dataclass(frozen=True)
class Machine:
    """The machine a job runs on, and how fast it convolves: measured at job start (about half a second), or
    taken from a measurement of this host less than :data:`MACHINE_REUSE_S` old.

    The hardware class groups runs whose runtimes compare; the calibration puts different classes on one scale.
    """

    hardware: hardware.Hardware
    calibration_gflops: float

    @classmethod
    def measure(cls, device: torch.device) -> Machine:
        key = (str(device), torch.get_num_threads())  # the threads are part of the hardware class
        found = _measured.get(key)
        if found is None or time.monotonic() - found[0] >= MACHINE_REUSE_S:
            described = hardware.describe(device)
            kept = hardware.kept_calibration(described, MACHINE_REUSE_S)
            if kept is None:
                kept = hardware.calibrate(device), 0.0
                hardware.keep_calibration(described, kept[0])
            gflops, age_s = kept
            found = _measured[key] = (time.monotonic() - age_s, cls(described, gflops))
        return found[1]


def input_sha256(spec: RunSpec) -> list[str]:
    """SHA-256 of the content, each style and an initial image file (if any), in that order."""
    names = [spec.images.content, *spec.images.styles]
    if spec.init not in fingerprint.BUILTIN_INITS:
        names.append(spec.init)
    return [file_sha256(resolve_image(name)) for name in names]


def seed_fingerprints(config: dict[str, Any], spec: RunSpec, weights_sha256: str, device_type: str) -> dict[int, str]:
    """Each seed's fingerprint: what a sweep looks its runs up by (the pre-launch estimate too)."""
    inputs = input_sha256(spec)
    return {s: fingerprint.fingerprint(seed_config(config, s), weights_sha256, inputs, device_type) for s in spec.seeds}


def as_run(config: dict[str, Any], spec: RunSpec) -> dict[str, Any]:
    """``config`` with what the memory check decided: ``images.width`` (for ``max``, the width chosen: a
    fingerprint and params name what ran) and ``run.activation_checkpointing`` (for ``auto``, on or off)."""
    images = {**config["images"], "width": spec.images.width}
    run = {**config["run"], "activation_checkpointing": spec.engine.checkpointing}
    return {**config, "images": images, "run": run}


def plan(config: dict[str, Any], sweep: SweepJob | None) -> Job:
    """Validate, check memory and the store, load the weights: every refusal comes before any run is made.

    A sweep's job waits for a server that is away (its launcher reached it) within ``run.tracking_outage_s``;
    a single run's first contact fails in seconds (a mistyped address, a server not started)."""
    spec = from_config(config)
    device = pick_device(spec.device)
    widest = spec.images.width == "max"
    if not widest:
        check_input_sizes(spec)  # a bad image is refused before the memory check reads its size
    spec = memory.fit(spec, device, check=config["run"]["memory_check"])
    if widest:
        check_input_sizes(spec)  # at the width the memory check chose
    config = as_run(config, spec)
    tolerance.configure(config["run"]["tracking_outage_s"], config["tracking"]["unsent_dir"])
    experiment_id = connection.open_store(config["tracking"]["experiment"], patient=sweep is not None)
    torch.manual_seed(spec.seed)
    weights = load_weights(spec.weights.source, spec.network.arch, **spec.weights.options)
    keys = seed_fingerprints(config, spec, weights.sha256, device.type)
    return Job(config, spec, device, experiment_id, weights, keys, sweep)


def reuses(job: Job) -> bool:
    """Whether this job reuses earlier runs (a sweep's job, unless ``run.force``)."""
    return job.sweep is not None and not job.config["run"]["force"]


def skip_finished(job: Job) -> tuple[Job, str | None]:
    """In a sweep, drop the seeds whose fingerprint has a FINISHED run: the job for the rest, and the first seed's
    run id when none is left."""
    if not reuses(job):
        return job, None
    done = {s: lookup.find_finished(job.experiment_id, f) for s, f in job.fingerprints.items()}
    for seed, run_id in done.items():
        if run_id is not None:
            log.warning(
                "%s: seed %s skipped, a FINISHED run has its fingerprint (run.force=true runs it)", run_id, seed
            )
    if all(done.values()):
        return job, done[job.spec.seed]
    return job.with_seeds(tuple(s for s in job.spec.seeds if done[s] is None)), None


def running_elsewhere(job: Job) -> str | None:
    """In a sweep, the id of a live RUNNING run with this job's fingerprint (another job is on it: skip);
    RUNNING runs whose heartbeat is older than ``run.heartbeat_limit_s`` are marked KILLED on the way, so
    :func:`find_previous` continues them (:mod:`ablation.store.heartbeat`)."""
    if not reuses(job):
        return None
    limit_s = float(job.config["run"]["heartbeat_limit_s"])
    live = lookup.take_over_dead(job.experiment_id, job.fingerprints[job.spec.seed], limit_s)
    if live is not None:
        log.warning("%s: skipped, a RUNNING run with a recent heartbeat has its fingerprint", live.info.run_id)
    return live.info.run_id if live is not None else None


def find_previous(job: Job) -> str | None:
    """The KILLED/FAILED run to continue: a sweep's by itself, a single run's with ``run.resume=true``."""
    one_seed_one_scale = len(job.spec.seeds) == 1 and job.spec.scales is None
    if not (job.config["run"]["resume"] or reuses(job)):
        return None
    if not one_seed_one_scale:
        if job.sweep is None:
            raise SpecError("run.resume=true continues one seed at one scale: drop run.seeds or run.scales")
        return None
    previous = lookup.find_resumable(job.experiment_id, job.fingerprints[job.spec.seed])
    if previous is None and job.sweep is None:
        log.warning("run.resume=true: no KILLED or FAILED run of this config with a checkpoint; starting afresh")
    return previous.info.run_id if previous is not None else None


def make_scorer(config: dict[str, Any], problem: Problem) -> Scorer | None:
    """The common judge (the original network) scoring a final image, unless ``judge.enabled=false``."""
    judge_cfg = config["judge"]
    if not judge_cfg["enabled"]:
        return None
    judge_loss = replace(problem.spec.loss, **judge_cfg["loss"]) if judge_cfg["loss"] else None
    judge_net = judge.build_judge(problem, judge.judge_weights(problem, judge_cfg["weights_path"]), judge_loss)
    return lambda image: judge.score(judge_net, image, problem.pixels)


def transfer(
    job: Job, problems: list[Problem], scorer: Scorer | None, previous: str | None, stop: StopRequest, setup_s: float,
    machine: Machine,
) -> list[tuple[record.RunLog, dict[str, Any]]]:  # fmt: skip
    """Open (or reopen) the batch's runs and run the engine's stream through the recorder."""
    spec = job.spec
    sync_every = np.gcd(spec.sync_every, spec.checkpoint_every) if spec.checkpoint_every else spec.sync_every
    if previous is None:
        runs, resumed = record.open_runs(job, problems[-1], machine), None
    else:
        run, state, before = record.reopen_run(job, previous, machine)
        runs, resumed = [run], (state, before)
    stages = [Stage(p.net, p.targets, tuple(p.content.shape[-2:]), p.spec.iterations) for p in problems]
    start = resumed[0].image if resumed is not None else problems[0].start_image(list(spec.seeds))
    engine = problems[-1].spec.engine  # resolved for the device (channels_last=auto decided)
    state = resumed[0] if resumed is not None else None
    stream = coarse_to_fine(stages, start, spec.optim, spec.log_every, int(sync_every), engine, state)
    status_every = job.config["run"]["status_every"]
    results = record.record_transfer(
        spec, problems, runs, stream, job.fingerprints[spec.seed], resumed, stop, setup_s, scorer, status_every
    )
    return list(zip(runs, results, strict=True))


def execute(config: dict[str, Any], sweep: SweepJob | None = None, stop: StopRequest | None = None) -> dict[str, Any]:
    """One run per seed of a composed config. Returns the first seed's outcome record with its metrics (every seed's
    under ``seed_results`` with several seeds), or a ``skipped`` one when a sweep finds every seed done or live."""
    started = time.perf_counter()
    job, skipped = skip_finished(plan(config, sweep))
    skipped = skipped or running_elsewhere(job)
    if skipped is not None:
        return outcome_record(Outcome.SKIPPED, skipped)
    previous = find_previous(job)
    measuring = time.perf_counter()
    machine = Machine.measure(job.device)
    started += time.perf_counter() - measuring  # the calibration is no part of the run's time
    problems = [
        prepare(replace(job.spec, images=replace(job.spec.images, width=width), iterations=n), job.device, job.weights)
        for width, n in job.spec.stages()
    ]
    scorer = make_scorer(job.config, problems[-1])
    setup_s, all_results = time.perf_counter() - started, []
    for seeds in job.spec.seed_batches(job.device.type):
        batch_started = time.perf_counter()
        for run, results in transfer(
            job.with_seeds(seeds), problems, scorer, previous, stop or StopRequest(), setup_s, machine
        ):
            results["total_s"] = setup_s + time.perf_counter() - batch_started
            record.end_finished(run, results, step=job.spec.iterations)
            all_results.append({**results, **outcome_record(Outcome.FINISHED, run.run_id)})
    first = all_results[0]
    return {**first, "seed_results": all_results} if len(all_results) > 1 else first
