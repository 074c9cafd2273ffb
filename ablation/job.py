"""One job: the decisions around a transfer. Check, skip what is done, continue what was stopped, judge.

:func:`execute` takes a composed config (a plain dict) and returns the results; the Hydra entry (``run.py``)
turns user errors into one line. A sweep job skips a seed whose fingerprint has a FINISHED run (unless
``run.force``) and continues one whose fingerprint has a KILLED/FAILED run with a checkpoint; a single run
continues only with ``run.resume=true``. SIGINT/SIGTERM end the run KILLED with a checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from omegaconf import OmegaConf

from ablation import fingerprint, heartbeat, tracking
from ablation.engine import ENGINE_VERSION, hardware, judge
from ablation.engine.checkpoint import load_checkpoint, restore_rng
from ablation.engine.inputs import file_sha256, resolve_image
from ablation.engine.memory import check_fits
from ablation.engine.plan import RunSpec
from ablation.engine.prepare import Problem, pick_device, prepare
from ablation.engine.scales import Stage, coarse_to_fine
from ablation.engine.transfer import DivergenceError, TransferState
from ablation.engine.weights import VGGWeights, load_weights
from ablation.record import Recorder, Scorer, record
from ablation.spec import SpecError, from_config
from ablation.stopping import Interrupted, StopRequest, stop_on_signals
from ablation.sweep import SweepJob

log = logging.getLogger(__name__)


@dataclass
class Job:
    """What a job knows before it computes: the plan, where it runs, the store, the weights, each seed's key."""

    config: dict[str, Any]
    spec: RunSpec
    device: torch.device
    client: tracking.MlflowClient
    experiment_id: str
    weights: VGGWeights
    fingerprints: dict[int, str]
    sweep: SweepJob | None


@dataclass(frozen=True)
class Machine:
    """The machine a job runs on, and how fast it convolves: measured once at job start (about half a second).

    The hardware class groups runs whose runtimes compare; the calibration puts different classes on one scale.
    """

    hardware: hardware.Hardware
    calibration_gflops: float

    @classmethod
    def measure(cls, device: torch.device) -> Machine:
        return cls(hardware.describe(device), hardware.calibrate(device))

    def tags(self) -> dict[str, str]:
        return {"hardware_class": self.hardware.hardware_class()}


def resumed_hardware_class(before: str | None, now: str) -> str:
    """The class of a run continued on ``now``: unchanged on the same class, else ``mixed: A + B`` (a run
    whose runtime spans two machines belongs to neither's group)."""
    return now if before in (None, now) else f"mixed: {before} + {now}"


def seed_config(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """The config of one seed's run: a batched run's seed i has the fingerprint of ``run.seed=i`` alone."""
    return {**config, "run": {**config["run"], "seed": seed, "seeds": None}}


def input_sha256(spec: RunSpec) -> list[str]:
    """SHA-256 of the content, each style and an initial image file (if any), in that order."""
    names = [spec.images.content, *spec.images.styles]
    if spec.init not in fingerprint.BUILTIN_INITS:
        names.append(spec.init)
    return [file_sha256(resolve_image(name)) for name in names]


def plan(config: dict[str, Any], sweep: SweepJob | None) -> Job:
    """Validate, check memory and the store, load the weights: every refusal comes before any run is made."""
    spec = from_config(config)
    device = pick_device(spec.device)
    if config["run"]["memory_check"]:
        check_fits(spec, device)
    client, experiment_id = tracking.open_store(config["tracking"]["experiment"])
    torch.manual_seed(spec.seed)
    weights = load_weights(spec.weights.source, spec.network.arch, **spec.weights.options)
    inputs = input_sha256(spec)
    keys = {s: fingerprint.fingerprint(seed_config(config, s), weights.sha256, inputs, device.type) for s in spec.seeds}
    return Job(config, spec, device, client, experiment_id, weights, keys, sweep)


def skip_finished(job: Job) -> str | None:
    """In a sweep, drop the seeds whose fingerprint has a FINISHED run; the first one's id when none is left."""
    if job.sweep is None or job.config["run"]["force"]:
        return None
    done = {s: fingerprint.find_finished(job.client, job.experiment_id, f) for s, f in job.fingerprints.items()}
    for seed, run_id in done.items():
        if run_id is not None:
            log.warning(
                "%s: seed %s skipped, a FINISHED run has its fingerprint (run.force=true runs it)", run_id, seed
            )
    if all(done.values()):
        return done[job.spec.seed]
    seeds = tuple(s for s in job.spec.seeds if done[s] is None)
    job.spec = replace(job.spec, seeds=seeds, seed=seeds[0])
    return None


def slurm_tags() -> dict[str, str]:
    """The SLURM job running this run (for scontrol, scancel, its log) and how often SLURM restarted it."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    array = env.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array else env["SLURM_JOB_ID"]
    return {"slurm_job_id": job_id, "slurm_restarts": env.get("SLURM_RESTART_COUNT", "0")}


def running_elsewhere(job: Job) -> str | None:
    """In a sweep, the id of a live RUNNING run with this job's fingerprint (another job is on it: skip);
    RUNNING runs whose heartbeat is older than ``run.heartbeat_limit_s`` are marked KILLED on the way, so
    :func:`find_previous` continues them (:mod:`ablation.heartbeat`)."""
    if job.sweep is None or job.config["run"]["force"]:
        return None
    limit_s = float(job.config["run"]["heartbeat_limit_s"])
    live = heartbeat.take_over_dead(job.client, job.experiment_id, job.fingerprints[job.spec.seed], limit_s)
    if live is not None:
        log.warning("%s: skipped, a RUNNING run with a recent heartbeat has its fingerprint", live.info.run_id)
    return live.info.run_id if live is not None else None


def find_previous(job: Job) -> str | None:
    """The KILLED/FAILED run to continue: a sweep's by itself, a single run's with ``run.resume=true``."""
    one_seed_one_scale = len(job.spec.seeds) == 1 and job.spec.scales is None
    wanted = job.config["run"]["resume"] or (job.sweep is not None and not job.config["run"]["force"])
    if not wanted:
        return None
    if not one_seed_one_scale:
        if job.sweep is None:
            raise SpecError("run.resume=true continues one seed at one scale: drop run.seeds or run.scales")
        return None
    previous = fingerprint.find_resumable(job.client, job.experiment_id, job.fingerprints[job.spec.seed])
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


def run_params(job: Job, problem: Problem, seed: int) -> dict[str, Any]:
    """The flattened config plus what the config does not say but the numbers depend on."""
    w, (h, wd) = problem.weights, problem.images.content.shape[:2]
    return {
        **tracking.flatten(seed_config(job.config, seed)),
        "device": str(problem.device),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "weights_source": w.source,
        "weights_sha256": w.sha256,
        "weights_location": w.location,
        "mean_pixel": [round(m, 4) for m in w.mean_pixel],
        "content_size_wh": f"{wd}x{h}",
        "style_sizes_wh": ",".join(f"{s.shape[1]}x{s.shape[0]}" for s in problem.images.styles),
        "content_sha256": problem.images.sha256[0],
        "style_sha256": ",".join(problem.images.sha256[1:]),
        "truncation_layer": job.spec.last_layer,
        "channels_last_resolved": problem.spec.engine.channels_last,
        "final_layer_activation": type(problem.net.final_layer_activation).__name__,
        "engine_version": ENGINE_VERSION,
        "batch_size": len(job.spec.seeds),
    }


def open_runs(job: Job, problem: Problem, machine: Machine) -> list[tracking.RunLog]:
    """One new MLflow run per seed, with its tags (MLflow's provenance and the hardware class included), params
    (the machine's included) and resolved config."""
    spec, run_name, logs = job.spec, job.config["tracking"]["run_name"], []
    for seed in spec.seeds:
        tags = {
            "variant": spec.variant,
            "seed": str(seed),
            "weights_source": problem.weights.source,
            "fingerprint": job.fingerprints[seed],
            **tracking.provenance_tags(),
            **machine.tags(),
            **({"random_weights": "true"} if problem.weights.source == "random" else {}),
            **({"batch_seeds": ",".join(map(str, spec.seeds))} if len(spec.seeds) > 1 else {}),
            **(job.sweep.child_tags() if job.sweep is not None else {}),
            **slurm_tags(),
        }
        name = f"{run_name}-s{seed}" if run_name and len(spec.seeds) > 1 else run_name
        run = tracking.RunLog(job.client, job.experiment_id, name or f"{spec.variant}-s{seed}", tags)
        run.params({**run_params(job, problem, seed), **machine.hardware.params()})
        run.text(OmegaConf.to_yaml(OmegaConf.create(seed_config(job.config, seed))), "config.yaml")
        logs.append(run)
    return logs


def reopen_run(job: Job, run_id: str, machine: Machine) -> tuple[tracking.RunLog, TransferState, np.ndarray]:
    """Reopen a KILLED/FAILED run, load its checkpoint (RNG states restored): the state and the rows before it.
    Its hardware class becomes ``mixed`` when it continues on another class (its params keep the first machine)."""
    with tracking.scratch_dir() as scratch:
        path = fingerprint.download_checkpoint(job.client, run_id, scratch)
        state, history, payload = load_checkpoint(path, job.device)
    restore_rng(payload["rng"])
    run = tracking.RunLog.reopen(job.client, run_id)
    tags = run.run.data.tags
    run.tags({
        "resume_count": int(tags.get("resume_count", "0")) + 1,
        "resumed_from_step": state.step,
        "hardware_class": resumed_hardware_class(tags.get("hardware_class"), machine.tags()["hardware_class"]),
        **slurm_tags(),
    })  # fmt: skip
    log.warning("resuming run %s from step %s", run_id, state.step)
    return run, state, history


def transfer(
    job: Job, problems: list[Problem], scorer: Scorer | None, previous: str | None, stop: StopRequest, setup_s: float,
    machine: Machine,
) -> list[tuple[tracking.RunLog, dict[str, Any]]]:  # fmt: skip
    """Open (or reopen) the runs, stream the engine's progress through the recorder, end each run's status."""
    spec = job.spec
    sync_every = np.gcd(spec.sync_every, spec.checkpoint_every) if spec.checkpoint_every else spec.sync_every
    resumed, before = None, None
    logs = open_runs(job, problems[-1], machine) if previous is None else None
    if previous is not None:
        run, resumed, before = reopen_run(job, previous, machine)
        logs = [run]
    for run in logs:
        run.metrics({"calibration_gflops": machine.calibration_gflops}, step=resumed.step if resumed else 0)
    stages = [Stage(p.net, p.targets, tuple(p.content.shape[-2:]), p.spec.iterations) for p in problems]
    start = resumed.image if resumed is not None else problems[0].start_image(list(spec.seeds))
    engine = problems[-1].spec.engine  # resolved for the device (channels_last=auto decided)
    stream = coarse_to_fine(stages, start, spec.optim, spec.log_every, int(sync_every), engine, resumed)
    first_new = resumed.step + 1 if resumed is not None else 0
    with tracking.scratch_dir() as scratch:
        status_every = job.config["run"]["status_every"]
        recorder = Recorder(
            spec, problems, logs, Path(scratch), job.fingerprints[spec.seed], first_new, before, status_every
        )
        try:
            with stop_on_signals(stop) as request:
                results = recorder.finish(record(stream, recorder, request), setup_s, scorer)
        except BaseException as err:
            end_failed(logs, err)
            raise
    for run, result in zip(logs, results, strict=True):
        run.metrics(result, step=spec.iterations)
    return list(zip(logs, results, strict=True))


def end_failed(logs: list[tracking.RunLog], err: BaseException) -> None:
    """KILLED after a stop request (or a second signal), FAILED with ``diverged_step`` or the error otherwise."""
    for run in logs:
        if isinstance(err, Interrupted):
            run.end("KILLED", str(err))
        elif isinstance(err, KeyboardInterrupt):
            run.end("KILLED", "interrupted twice: no checkpoint at this step (an earlier periodic one may exist)")
        elif isinstance(err, DivergenceError):
            run.metrics({"diverged_step": err.step}, step=err.step)
            run.tags({"diverged": err.step})
            run.end("FAILED", str(err))
        else:
            run.end("FAILED", f"{type(err).__name__}: {err}")


def seed_batches(job: Job) -> list[tuple[int, ...]]:
    """The seeds as one batch, or one after another (network and targets built once either way).

    ``run.batch_seeds=null`` batches on a GPU, which has idle compute to fill, and runs one seed after another on
    a CPU, where the bench measured a batch of 4 seeds slower than 4 single seeds (no idle compute, more memory).
    """
    batched = job.config["run"]["batch_seeds"]
    if batched is None:
        batched = job.device.type != "cpu"
    return [job.spec.seeds] if batched else [(seed,) for seed in job.spec.seeds]


def execute(config: dict[str, Any], sweep: SweepJob | None = None, stop: StopRequest | None = None) -> dict[str, Any]:
    """One run per seed of a composed config. Returns the first seed's metrics and ``run_id`` (every seed's under
    ``seed_results`` with several seeds), or ``{"status": "skipped"}`` when a sweep finds every seed done."""
    started = time.perf_counter()
    job = plan(config, sweep)
    skipped = skip_finished(job)
    if skipped is not None:
        return {"status": "skipped", "run_id": skipped}
    live = running_elsewhere(job)
    if live is not None:
        return {"status": "skipped", "run_id": live}
    previous = find_previous(job)
    measuring = time.perf_counter()
    machine = Machine.measure(job.device)
    started += time.perf_counter() - measuring  # the calibration is no part of the run's time
    problems = [
        prepare(replace(job.spec, images=replace(job.spec.images, width=width), iterations=n), job.device, job.weights)
        for width, n in job.spec.stages()
    ]
    scorer = make_scorer(job.config, problems[-1])
    setup_s, all_results, spec = time.perf_counter() - started, [], job.spec
    for seeds in seed_batches(job):
        job.spec, batch_started = replace(spec, seeds=seeds, seed=seeds[0]), time.perf_counter()
        for run, results in transfer(job, problems, scorer, previous, stop or StopRequest(), setup_s, machine):
            results["total_s"] = setup_s + time.perf_counter() - batch_started
            run.metrics({"total_s": results["total_s"]}, step=spec.iterations)
            run.end("FINISHED")
            all_results.append({**results, "status": "finished", "run_id": run.run_id})
    first = all_results[0]
    return {**first, "seed_results": all_results} if len(all_results) > 1 else first
