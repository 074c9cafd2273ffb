"""The recorder: consumes the engine's progress stream and writes it to MLflow.

Step losses go out in batches at sync points with a heartbeat (only steps not logged before a resume or a hard
kill, :mod:`ablation.heartbeat`), checkpoints and their images (an MLflow image series, :data:`IMAGE_SERIES_KEY`,
so MLflow's image view lines runs up by step) every
``run.checkpoint_every`` steps and when a stop is requested, per-scale timings and images for coarse to fine,
and at the end the final and best images, the inputs, ``losses.csv`` and the results. One code path for a
fresh and a resumed run: the engine's stream looks the same, only ``first_new_step`` differs.
"""

from __future__ import annotations

import csv
import resource
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ablation.engine.checkpoint import save_checkpoint
from ablation.engine.colors import preserve_colors
from ablation.engine.images import save_png
from ablation.engine.plan import RunSpec
from ablation.engine.prepare import Problem
from ablation.engine.transfer import LOSS_NAMES, DivergenceError, Progress, TransferState
from ablation.status import RunStatus
from ablation.stopping import Interrupted, StopRequest
from ablation.tracking import RunLog

Scorer = Callable[[torch.Tensor], dict[str, float]]
#: The MLflow image series of every run: its checkpoint images and its final image, by global step.
IMAGE_SERIES_KEY = "output"


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
    raise :class:`Interrupted`. Returns the final state."""
    state = None
    try:
        for progress in stream:
            recorder.observe(progress)
            state, step = progress.state, progress.global_step
            if progress.done:
                continue
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
