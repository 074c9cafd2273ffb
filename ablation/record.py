"""The recorder: the one writer of a run's life, to the store and to the terminal.

It opens a run (params and tags, SLURM's included) or reopens a stopped one from its checkpoint, consumes the
engine's progress stream, and writes it: step losses in batches at sync points with a heartbeat (only steps not
logged before a resume or a hard kill, :mod:`ablation.store.heartbeat`), checkpoints and their images (an MLflow
image series, :data:`IMAGE_SERIES_KEY`, so MLflow's image view lines runs up by step) every
``run.checkpoint_every`` steps and when a stop is requested, per-scale timings and images for coarse to fine,
at the end the final and best images, the inputs, ``losses.csv``, the results and timings, and the end status.
One code path for a fresh and a resumed run: the engine's stream looks the same, only ``first_new_step`` differs.

What a run shows while it runs (:class:`RunStatus`): a bar redrawn many times a second is right for a person at a
terminal and wrong in a SLURM log file or a CI log, which it fills with carriage returns. tqdm's ``disable=None``
turns the bar off when stderr is not a terminal; there a one-line status goes through Python logging every
``run.status_every`` steps (Hydra routes it into each job's log file and the console). ``run.quiet=true`` shows
neither.
"""

from __future__ import annotations

import csv
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from ablation.engine import ENGINE_VERSION
from ablation.engine.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from ablation.engine.colors import preserve_colors
from ablation.engine.images import save_png
from ablation.engine.plan import RunSpec
from ablation.engine.prepare import Problem
from ablation.engine.transfer import LOSS_NAMES, DivergenceError, Progress, TransferState
from ablation.engine.weights import torchvision_version
from ablation.spec import seed_config
from ablation.stopping import Interrupted, StopRequest, stop_on_signals
from ablation.store import connection, lookup, outbox, tolerance
from ablation.store.runlog import RunLog, flatten
from ablation.store.tolerance import TrackingLost

if TYPE_CHECKING:
    from ablation.job import Job, Machine

Scorer = Callable[[torch.Tensor], dict[str, float]]
#: The MLflow image series of every run: its checkpoint images and its final image, by global step.
IMAGE_SERIES_KEY = "output"

log = logging.getLogger(__name__)
status_log = logging.getLogger("ablation.run")


def slurm_tags() -> dict[str, str]:
    """The SLURM job running this run (for scontrol, scancel, its log) and how often SLURM restarted it."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    array = env.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array else env["SLURM_JOB_ID"]
    return {"slurm_job_id": job_id, "slurm_restarts": env.get("SLURM_RESTART_COUNT", "0")}


def resumed_hardware_class(before: str | None, now: str) -> str:
    """The class of a run continued on ``now``: unchanged on the same class, else ``mixed: A + B`` (a run
    whose runtime spans two machines belongs to neither's group)."""
    return now if before in (None, now) else f"mixed: {before} + {now}"


def run_params(job: Job, problem: Problem, seed: int) -> dict[str, Any]:
    """The flattened config plus what the config does not say but the numbers depend on."""
    w, (h, wd) = problem.weights, problem.images.content.shape[:2]
    return {
        **flatten(seed_config(job.config, seed)),
        "device": str(problem.device),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision_version(),
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


def run_tags(job: Job, problem: Problem, machine: Machine, seed: int) -> dict[str, str]:
    """A new run's tags: what it is, its fingerprint, MLflow's provenance, the hardware class, sweep and SLURM."""
    spec = job.spec
    return {
        "variant": spec.variant,
        "seed": str(seed),
        "weights_source": problem.weights.source,
        "fingerprint": job.fingerprints[seed],
        **connection.provenance_tags(),
        "hardware_class": machine.hardware.hardware_class(),
        **({"random_weights": "true"} if problem.weights.source == "random" else {}),
        **({"batch_seeds": ",".join(map(str, spec.seeds))} if len(spec.seeds) > 1 else {}),
        **(job.sweep.child_tags() if job.sweep is not None else {}),
        **slurm_tags(),
    }


def open_runs(job: Job, problem: Problem, machine: Machine) -> list[RunLog]:
    """One new run per seed of the batch, with its tags, params (the machine's included), resolved config and the
    machine's calibration."""
    spec, run_name, runs = job.spec, job.config["tracking"]["run_name"], []
    for seed in spec.seeds:
        name = f"{run_name}-s{seed}" if run_name and len(spec.seeds) > 1 else run_name
        run = RunLog.create(job.experiment_id, name or f"{spec.variant}-s{seed}", run_tags(job, problem, machine, seed))
        run.params({**run_params(job, problem, seed), **machine.hardware.params()})
        run.text(OmegaConf.to_yaml(OmegaConf.create(seed_config(job.config, seed))), "config.yaml")
        run.metrics({"calibration_gflops": machine.calibration_gflops}, step=0)
        runs.append(run)
    return runs


def reopen_run(job: Job, run_id: str, machine: Machine) -> tuple[RunLog, TransferState, np.ndarray]:
    """Reopen a KILLED/FAILED run, load its checkpoint (RNG states restored): the state and the rows before it.
    Its hardware class becomes ``mixed`` when it continues on another class (its params keep the first machine)."""
    with tempfile.TemporaryDirectory(prefix="nst-ablation-") as scratch:
        state, history, payload = load_checkpoint(lookup.download_checkpoint(run_id, scratch), job.device)
    restore_rng(payload["rng"])
    run = RunLog.reopen(run_id)
    before = run.tags_at_open
    run.tags({
        "resume_count": int(before.get("resume_count", "0")) + 1,
        "resumed_from_step": state.step,
        "hardware_class": resumed_hardware_class(before.get("hardware_class"), machine.hardware.hardware_class()),
        **slurm_tags(),
    })  # fmt: skip
    run.metrics({"calibration_gflops": machine.calibration_gflops}, step=state.step)
    log.warning("resuming run %s from step %s", run_id, state.step)
    return run, state, history


#: How long a run stopped by a signal waits for the store before keeping its last records on disk: SLURM sends
#: SIGKILL ``KillWait`` (30 s) after SIGTERM, and a requeue should not wait for an absent server.
SIGNAL_WAIT_S = 10.0


def end_failed(runs: list[RunLog], err: BaseException) -> None:
    """KILLED after a stop request (or a second signal) or a lost server, FAILED with ``diverged_step`` or the
    error otherwise."""
    for run in runs:
        if isinstance(err, Interrupted):
            kept = run.end("KILLED", str(err), wait_s=SIGNAL_WAIT_S)
        elif isinstance(err, KeyboardInterrupt):
            kept = run.end(
                "KILLED", "interrupted twice: no checkpoint at this step (an earlier periodic one may exist)",
                wait_s=SIGNAL_WAIT_S,
            )  # fmt: skip
        elif isinstance(err, TrackingLost):
            kept = run.end("KILLED", str(err))
        elif isinstance(err, DivergenceError):
            run.metrics({"diverged_step": err.step}, step=err.step)
            run.tags({"diverged": err.step})
            kept = run.end("FAILED", str(err))
        else:
            kept = run.end("FAILED", f"{type(err).__name__}: {err}")
        if kept is not None and not isinstance(err, TrackingLost):
            log.warning("%s: the tracking server did not answer in time%s", run.run_id, outbox.outbox().kept_note())


def end_finished(run: RunLog, results: Mapping[str, float], step: int) -> None:
    """The run's results as metrics at its last step, then FINISHED, once the store has them all: a server away
    longer than the patience raises :class:`TrackingLost` (the results kept on disk, sent by a re-run)."""
    run.metrics(results, step=step)
    if run.end("FINISHED") is not None:
        raise tolerance.lost_error(f": run {run.run_id} finished, its results not stored", run.run_id)


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory for CUDA, else the process's peak resident set (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_losses(history: list[np.ndarray], path: Path) -> Path:
    """losses.csv: one row per step (step, content, style, tv, total)."""
    table = np.concatenate(history) if history else np.zeros((0, 1 + len(LOSS_NAMES)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", *LOSS_NAMES])
        writer.writerows([[int(r[0]), *map(float, r[1:])] for r in table])
    return path


class Recorder:
    """Writes one batch of runs (``logs[i]`` is sample i of the batch) as the transfer goes.

    ``before``: loss rows [n, 5] of a resumed run's steps before its checkpoint; steps below
    ``first_new_step`` were logged by the interrupted run and are not logged again.
    """

    def __init__(
        self, spec: RunSpec, problems: list[Problem], logs: list[RunLog], folder: Path, fingerprint: str,
        first_new_step: int = 0, before: np.ndarray | None = None, status_every: int = 100,
    ) -> None:  # fmt: skip
        self.spec, self.problems, self.logs, self.folder, self.fingerprint = spec, problems, logs, folder, fingerprint
        self.pixels = problems[-1].pixels
        self.first_new_step = first_new_step
        self.histories: list[list[np.ndarray]] = [[] for _ in logs]  # per sample: [rows, 5] global step + losses
        if before is not None and len(before):
            self.histories[0].append(before)
        self.last_good: tuple[int, torch.Tensor] | None = None
        self.scale_metrics: dict[str, float] = {}
        self.final_step = sum(n for _, n in spec.stages()) + len(problems) - 1  # global step of the final image
        self.bar = RunStatus(self.final_step, max(first_new_step - 1, 0), spec.quiet, status_every)
        self.started = self.scale_started = time.perf_counter()

    def save_images(self, name: str, images: torch.Tensor, artifact_folder: str | None = None) -> None:
        for i, log in enumerate(self.logs):
            log.artifact(save_png(self.pixels.decode(images[i : i + 1]), self.folder / str(i) / name), artifact_folder)

    def log_series(self, images: torch.Tensor, step: int) -> None:
        """Each sample's image at ``step`` in the image series :data:`IMAGE_SERIES_KEY`."""
        for i, log in enumerate(self.logs):
            log.image(self.pixels.decode(images[i : i + 1]), IMAGE_SERIES_KEY, step)

    def checkpoint(self, state: TransferState, step: int) -> None:
        """``checkpoint/state.pt`` (what a resume needs) and the images at this step.

        The queued step metrics are stored first: a run killed after the upload resumes at ``step`` and logs only
        later steps, so a checkpoint must never be stored ahead of the metrics it follows.
        """
        for log in self.logs:
            log.beat()
        path = save_checkpoint(state, np.concatenate(self.histories[0]), self.folder / "state.pt", self.fingerprint)
        self.logs[0].artifact(path, "checkpoint")
        self.log_series(state.image, step)

    def observe(self, progress: Progress) -> None:
        """Log the steps of one sync point; at a scale's end, its timing and (before the last) its image."""
        steps = progress.global_steps
        logged = progress.steps % self.spec.log_every == 0
        logged[-1] |= progress.done
        logged &= steps >= self.first_new_step
        for i, log in enumerate(self.logs):
            log.step_metrics(LOSS_NAMES, steps[logged], progress.losses[logged, i, :])
            self.histories[i].append(np.column_stack([steps, progress.losses[:, i, :]]))
            log.beat(force=False)
        self.bar.update(int(steps[-1]), dict(zip(LOSS_NAMES, progress.losses[-1, 0].tolist(), strict=True)))
        if not progress.done:
            self.last_good = (progress.global_step, progress.state.image.detach().clone())
        elif len(self.problems) > 1:
            now, scale = time.perf_counter(), progress.scale
            width = self.problems[scale].images.content.shape[1]
            self.scale_metrics |= {f"scale{scale}_loop_s": now - self.scale_started, f"scale{scale}_width": width}
            self.scale_started = now
            if scale < len(self.problems) - 1:
                self.save_images(f"scale{scale}_final.png", progress.state.image, "scales")

    def diverged(self, err: DivergenceError) -> None:
        """Keep what helps to see why: the last image with finite losses, the best one and the losses."""
        self.bar.close()
        step, image = self.last_good or (0, err.state.image.detach())
        self.save_images("last_good.png", image)
        if err.state.best_image is not None and torch.isfinite(err.state.best_total).all():
            self.save_images("best.png", err.state.best_image)
        for i, log in enumerate(self.logs):
            log.artifact(write_losses(self.histories[i], self.folder / str(i) / "losses.csv"))
            log.metrics({"last_good_step": step}, step=step)

    def finish(self, state: TransferState, setup_s: float, score: Scorer | None) -> list[dict[str, float]]:
        """Final and best images, inputs, losses.csv; the results of each sample."""
        loop_s = time.perf_counter() - self.started
        self.bar.close()
        problem = self.problems[-1]
        peak_mb = peak_memory_mb(problem.device)
        self.save_images("final.png", state.image)
        self.log_series(state.image, self.final_step)
        self.save_images("best.png", state.best_image)
        results = []
        for i, log in enumerate(self.logs):
            table = np.concatenate(self.histories[i])
            results.append({
                **{f"final_{k}": float(v) for k, v in zip(LOSS_NAMES, table[-1, 1:], strict=True)},
                "best_total": float(state.best_total[i]),
                "best_step": int(state.best_step[i]),
                "setup_s": setup_s,
                "loop_s": loop_s,
                "iter_ms": 1000 * loop_s / max(self.final_step - self.first_new_step + 1, 1),
                "peak_mem_mb": peak_mb,
                "batch_size": len(self.logs),
                **self.scale_metrics,
                **(score(state.image[i : i + 1]) if score is not None else {}),
            })  # fmt: skip
            self.save_outputs(log, i, state)
        return results

    def save_outputs(self, log: RunLog, i: int, state: TransferState) -> None:
        problem, folder = self.problems[-1], self.folder / str(i)
        if self.spec.preserve_colors:
            final_rgb = self.pixels.decode(state.image[i : i + 1])
            log.artifact(save_png(preserve_colors(final_rgb, problem.images.content), folder / "final_colors.png"))
        for k, image in enumerate([problem.images.content, *problem.images.styles]):  # the report's input grid
            name = "content.png" if k == 0 else f"style_{k - 1}.png"
            log.artifact(save_png(image, folder / "inputs" / name), "inputs")
        log.artifact(write_losses(self.histories[i], folder / "losses.csv"))


def record(stream: Iterable[Progress], recorder: Recorder, stop: StopRequest) -> TransferState:
    """Drive the engine's stream through ``recorder``; at a sync point where ``stop`` is due, checkpoint and
    raise :class:`Interrupted`, and where the tracking server has been away longer than ``run.tracking_outage_s``,
    checkpoint and raise :class:`TrackingLost` (the checkpoint is kept on disk with the records the server did not
    take). Returns the final state."""
    state = None
    try:
        for progress in stream:
            recorder.observe(progress)
            state, step = progress.state, progress.global_step
            if progress.done:
                continue
            if tolerance.lost():  # the server has been away too long: stop here, as for a signal
                recorder.checkpoint(state, step)
                run_id = recorder.logs[0].run_id
                raise tolerance.lost_error(f": run {run_id} stopped at step {step} with a checkpoint", run_id)
            if stop.due(step):
                recorder.checkpoint(state, step)
                recorder.logs[0].metrics({"interrupted_step": step}, step=step)
                raise Interrupted(step, stop, recorder.logs[0].run_id)
            every = recorder.spec.checkpoint_every
            if every and step % every == 0 and step > 0:
                recorder.checkpoint(state, step)
    except DivergenceError as err:
        recorder.diverged(err)
        raise
    assert state is not None, "the engine yields at least once"
    return state


def record_transfer(
    spec: RunSpec, problems: list[Problem], runs: list[RunLog], stream: Iterable[Progress], fingerprint: str,
    resumed: tuple[TransferState, np.ndarray] | None, stop: StopRequest, setup_s: float, score: Scorer | None,
    status_every: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Write the stream of one batch of runs; a failure or stop ends them (KILLED, FAILED) and is raised again."""
    first_new = resumed[0].step + 1 if resumed is not None else 0
    before = resumed[1] if resumed is not None else None
    with tempfile.TemporaryDirectory(prefix="nst-ablation-") as scratch:
        recorder = Recorder(spec, problems, runs, Path(scratch), fingerprint, first_new, before, status_every)
        try:
            with stop_on_signals(stop) as request:
                return recorder.finish(record(stream, recorder, request), setup_s, score)
        except BaseException as err:
            end_failed(runs, err)
            raise


class RunStatus:
    """Progress of one run from step ``start`` to ``total``; :meth:`update` at every sync point."""

    def __init__(self, total: int, start: int = 0, quiet: bool = False, status_every: int = 100) -> None:
        self.bar = tqdm(total=total, disable=True if quiet else None, unit="it", dynamic_ncols=True, file=sys.stderr)
        self.bar.update(start)
        self.lines = not quiet and self.bar.disable and status_every > 0
        self.total, self.every, self.step = total, status_every, start
        self.next_line = (start // status_every + 1) * status_every if status_every > 0 else total
        self._since = (time.perf_counter(), start)

    def update(self, step: int, losses: Mapping[str, float]) -> None:
        """The run is at ``step`` with ``losses`` (name -> value)."""
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
        self.step = step
        if self.lines and (step >= self.next_line or step >= self.total):
            status_log.info(status_line(step, self.total, losses, self._rate(step)))
            self.next_line = (step // self.every + 1) * self.every

    def _rate(self, step: int) -> float:
        now = time.perf_counter()
        then, before = self._since
        self._since = (now, step)
        return (step - before) / (now - then) if now > then else 0.0

    def close(self) -> None:
        self.bar.close()


def status_line(step: int, total: int, losses: Mapping[str, float], it_per_s: float) -> str:
    """``step 200/1000 (20%): total 1.234e+05 content ... | 3.1 it/s``."""
    values = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
    return f"step {step}/{total} ({100 * step / max(total, 1):.0f}%): {values} | {it_per_s:.3g} it/s"
