"""One style transfer, configured by Hydra, logged to MLflow.

    python -m ablation.run variant=vgg16_tanh
    python -m ablation.run variant=avg_pool weights=random images.width=64 run.iterations=20
    python -m ablation.run --help          # every group and key, with defaults

This is the only module (with sweep.py) that knows both Hydra and MLflow; the engine knows neither.
"""

from __future__ import annotations

import csv
import math
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torchvision
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from ablation import judge, sweep, tracking
from ablation.checkpoint import CheckpointError, load_checkpoint, restore_rng, save_checkpoint
from ablation.data import DataError, file_sha256, resolve_image
from ablation.images import ImageError, save_png
from ablation.memory import MemoryEstimateError, check_fits
from ablation.problem import Problem, pick_device, prepare
from ablation.resume import config_sha256, download_checkpoint, find_resumable
from ablation.spec import RunSpec, SpecError, from_config
from ablation.stopping import Interrupted, StopRequest, stop_on_signals
from ablation.transfer import LOSS_NAMES, DivergenceError, TransferState, new_state, stylize
from ablation.weights import WeightsError, load_weights

#: Errors that mean "bad input": one line, exit code 2, nothing stored is touched.
USER_ERRORS = (
    SpecError,
    DataError,
    ImageError,
    WeightsError,
    MemoryEstimateError,
    CheckpointError,
    tracking.TrackingError,
    ValueError,
)


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory for CUDA, else the process's peak resident set (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_params(spec: RunSpec, problem: Problem, config: dict[str, Any]) -> dict[str, Any]:
    """The flattened resolved config plus what the config does not say but the numbers depend on."""
    w = problem.weights
    h, wd = problem.images.content.shape[:2]
    return {
        **tracking.flatten(config),
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
        "truncation_layer": spec.last_layer,
        "final_layer_activation": type(problem.net.final_layer_activation).__name__,
    }


def write_losses(history: list[np.ndarray], path: Path) -> Path:
    """losses.csv: one row per step (step, content, style, tv, total)."""
    table = np.concatenate(history) if history else np.zeros((0, 1 + len(LOSS_NAMES)))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", *LOSS_NAMES])
        writer.writerows([[int(r[0]), *map(float, r[1:])] for r in table])
    return path


def transfer_and_log(
    spec: RunSpec,
    problem: Problem,
    log: tracking.RunLog,
    setup_s: float,
    resumed: tuple[TransferState, np.ndarray] | None = None,
    stop: StopRequest | None = None,
    config_hash: str = "",
    score: Callable[[torch.Tensor], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Run the loop, logging step losses in batches, checkpoint images, and the final results.

    ``resumed``: a state and the loss rows before its step, from a checkpoint; the loop continues there
    and logs only steps it had not logged. ``stop``: when it is due at a sync point the full state is
    saved as ``checkpoint/state.pt`` and :class:`Interrupted` is raised. On divergence the last image
    whose losses were all finite is kept as ``last_good.png`` before the error goes on. ``score`` (the
    common judge) maps the final image, in pixel space, to more result metrics.
    """
    stop = stop or StopRequest()
    if resumed is None:
        state, history, first_new = new_state(problem.start_image([spec.seed]), spec.optim), [], 0
    else:
        state, before = resumed
        history, first_new = ([before] if len(before) else []), state.step + 1
    last_good = (state.step, state.image.detach().clone())
    # yield at every checkpoint step too, so its state can be saved
    sync_every = math.gcd(spec.sync_every, spec.checkpoint_every) if spec.checkpoint_every else spec.sync_every
    bar = tqdm(total=spec.iterations, disable=spec.quiet, unit="it", dynamic_ncols=True, file=sys.stderr)
    bar.update(state.step)
    loop_start = time.perf_counter()
    with tracking.scratch_dir() as scratch:
        folder = Path(scratch)

        def save_state(step: int) -> None:
            save_checkpoint(state, np.concatenate(history), folder / "state.pt", config_hash)
            log.artifact(folder / "state.pt", "checkpoint")
            name = f"step_{step:06d}.png"
            log.artifact(save_png(problem.pixels.decode(state.image), folder / name), "checkpoints")

        try:
            for progress in stylize(
                problem.net, problem.targets, state, spec.iterations, spec.log_every, sync_every, spec.engine
            ):
                rows = progress.losses[:, 0, :]
                logged = (progress.steps % spec.log_every == 0) | (progress.steps == spec.iterations)
                logged &= progress.steps >= first_new
                log.step_metrics(LOSS_NAMES, progress.steps[logged], rows[logged])
                history.append(np.column_stack([progress.steps, rows]))
                if not progress.done:
                    last_good = (progress.step, state.image.detach().clone())
                bar.update(progress.step - bar.n)
                bar.set_postfix({k: f"{v:.4g}" for k, v in zip(LOSS_NAMES, rows[-1], strict=True)}, refresh=False)
                if progress.done:
                    continue
                if stop.due(progress.step):
                    save_state(progress.step)
                    log.metrics({"interrupted_step": progress.step}, step=progress.step)
                    raise Interrupted(progress.step, stop, log.run_id)
                if spec.checkpoint_every and progress.step % spec.checkpoint_every == 0 and progress.step > 0:
                    save_state(progress.step)
        except DivergenceError as err:
            bar.close()
            step, image = last_good
            log.artifact(save_png(problem.pixels.decode(image), folder / "last_good.png"))
            if state.best_image is not None and torch.isfinite(state.best_total).all():
                log.artifact(save_png(problem.pixels.decode(state.best_image), folder / "best.png"))
            log.artifact(write_losses(history, folder / "losses.csv"))
            log.metrics({"last_good_step": step}, step=step)
            raise err
        loop_s = time.perf_counter() - loop_start
        bar.close()
        table = np.concatenate(history)
        final = dict(zip(LOSS_NAMES, table[-1, 1:], strict=True))
        new_steps = max(spec.iterations - first_new + 1, 1)
        results = {
            **{f"final_{k}": float(v) for k, v in final.items()},
            "best_total": float(state.best_total[0]),
            "best_step": int(state.best_step[0]),
            "setup_s": setup_s,
            "loop_s": loop_s,
            "iter_ms": 1000 * loop_s / (spec.iterations if resumed is None else new_steps),
            "peak_mem_mb": peak_memory_mb(problem.device),
        }
        if score is not None:
            results.update(score(state.image))
        log.artifact(save_png(problem.pixels.decode(state.image), folder / "final.png"))
        for k, image in enumerate([problem.images.content, *problem.images.styles]):  # the report's input grid
            log.artifact(save_png(image, folder / ("content.png" if k == 0 else f"style_{k - 1}.png")), "inputs")
        log.artifact(save_png(problem.pixels.decode(state.best_image), folder / "best.png"))
        log.artifact(write_losses(history, folder / "losses.csv"))
    return results


def resume_from(
    client: tracking.MlflowClient, run_id: str, device: torch.device
) -> tuple[tracking.RunLog, tuple[TransferState, np.ndarray]]:
    """Reopen a KILLED/FAILED run and load its checkpoint (RNG states restored)."""
    with tracking.scratch_dir() as scratch:
        state, history, payload = load_checkpoint(download_checkpoint(client, run_id, scratch), device)
    restore_rng(payload["rng"])
    log = tracking.RunLog.reopen(client, run_id)
    count = int(log.run.data.tags.get("resume_count", "0")) + 1
    log.tags({"resume_count": count, "resumed_from_step": state.step})
    print(f"resuming run {run_id} from step {state.step}", file=sys.stderr)
    return log, (state, history)


def input_sha256(spec: RunSpec) -> list[str]:
    """SHA-256 of the content, each style and an initial image file (if any), in that order."""
    names = [spec.images.content, *spec.images.styles]
    if spec.init not in ("noise", "content"):
        names.append(spec.init)
    return [file_sha256(resolve_image(name)) for name in names]


def execute(
    config: dict[str, Any], job: sweep.SweepJob | None = None, stop: StopRequest | None = None
) -> dict[str, Any]:
    """One run from a resolved config: validate, check memory and the store, set up, transfer, log.

    In a sweep (``job``) the run is a child of the sweep's parent run; a job whose fingerprint already has
    a FINISHED run is not run again (unless ``run.force``): the result is ``{"status": "skipped"}``, and a
    job whose fingerprint has a KILLED/FAILED run with a checkpoint continues it. A single run continues
    the latest KILLED/FAILED run of the same config (tag ``config_sha256``) only with ``run.resume=true``.
    SIGINT/SIGTERM (or ``stop``) end the run KILLED with a checkpoint. Returns the metrics and ``run_id``.
    """
    started = time.perf_counter()
    spec = from_config(config)
    device = pick_device(spec.device)
    if config["run"].get("memory_check", True):
        check_fits(spec, device)
    client, experiment_id = tracking.open_store(config["tracking"]["experiment"])
    config_hash = config_sha256(config)
    torch.manual_seed(spec.seed)
    weights = load_weights(spec.weights.source, spec.network.arch, **spec.weights.options)
    fingerprint = sweep.fingerprint(config, weights.sha256, input_sha256(spec), device.type)
    force = config["run"].get("force", False)
    if job is not None and not force:
        done = sweep.find_finished(client, experiment_id, fingerprint)
        if done is not None:
            print(f"{done}: skipped, a FINISHED run has its fingerprint (run.force=true runs it)", file=sys.stderr)
            return {"status": "skipped", "run_id": done}
    if job is not None and not force:
        previous = find_resumable(client, experiment_id, fingerprint, tag="fingerprint")
    elif config["run"].get("resume", False):
        previous = find_resumable(client, experiment_id, config_hash)
        if previous is None:
            print(
                "run.resume=true: no KILLED or FAILED run of this config with a checkpoint; starting afresh",
                file=sys.stderr,
            )
    else:
        previous = None
    problem = prepare(spec, device, weights)
    judge_cfg = config.get("judge") or {}
    scorer = None
    if judge_cfg.get("enabled", True):
        judge_loss = replace(spec.loss, **judge_cfg["loss"]) if judge_cfg.get("loss") else None
        judge_net = judge.build_judge(problem, judge.judge_weights(problem, judge_cfg.get("weights_path")), judge_loss)
        scorer = lambda image: judge.score(judge_net, image, problem.pixels)  # noqa: E731
    setup_s = time.perf_counter() - started
    resumed = None
    if previous is not None:
        log, resumed = resume_from(client, previous.info.run_id, device)
    else:
        tags = {
            "variant": spec.variant,
            "seed": str(spec.seed),
            "weights_source": problem.weights.source,
            "config_sha256": config_hash,
            "fingerprint": fingerprint,
            **({"random_weights": "true"} if problem.weights.source == "random" else {}),
            **(job.child_tags() if job is not None else {}),
        }
        run_name = config["tracking"].get("run_name") or f"{spec.variant}-s{spec.seed}"
        log = tracking.RunLog(client, experiment_id, run_name, tags)
    try:
        if resumed is None:
            log.params(run_params(spec, problem, config))
            log.text(OmegaConf.to_yaml(OmegaConf.create(config)), "config.yaml")
        with stop_on_signals(stop or StopRequest()) as request:
            results = transfer_and_log(spec, problem, log, setup_s, resumed, request, config_hash, scorer)
        results["total_s"] = time.perf_counter() - started
        log.metrics(results, step=spec.iterations)
    except Interrupted as err:
        log.end("KILLED", str(err))
        raise
    except KeyboardInterrupt:
        log.end("KILLED", "interrupted twice: no checkpoint at this step (an earlier periodic one may exist)")
        raise
    except DivergenceError as err:
        log.metrics({"diverged_step": err.step}, step=err.step)
        log.tags({"diverged": err.step})
        log.end("FAILED", str(err))
        raise
    except BaseException as err:
        log.end("FAILED", f"{type(err).__name__}: {err}")
        raise
    log.end("FINISHED")
    return {**results, "status": "finished", "run_id": log.run_id}


def tune_value(results: dict[str, Any], objective: str) -> float:
    """The objective of a finished or skipped job (read back from its run); +inf for a failed one."""
    if results.get("status") == "skipped":
        uri = tracking.tracking_uri()
        return float(tracking.MlflowClient(uri).get_run(results["run_id"]).data.metrics.get(objective, float("inf")))
    return float(results.get(objective, float("inf")))


#: Set by :func:`cli` when it turns on HYDRA_FULL_ERROR itself (to catch Hydra's errors), so that jobs
#: it starts can tell that the user did not ask for tracebacks.
_CLI_MARK = "ABLATION_CLI_SET_HYDRA_FULL_ERROR"


def debug_requested(config: dict[str, Any]) -> bool:
    """Tracebacks were asked for: HYDRA_FULL_ERROR=1 set by the user, or run.debug=true."""
    by_user = os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(_CLI_MARK) != "1"
    return by_user or bool(config.get("run", {}).get("debug", False))


def one_line(err: BaseException) -> str:
    """Hydra's multi-line configuration errors as one line; an unknown group option lists the choices."""
    text = str(err)
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    options = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)+)", text)
    if missing and options:
        group, value = missing.groups()
        choices = ", ".join(o.strip() for o in options[1].splitlines() if o.strip())
        return f"{group}={value} is not a choice: choose one of {choices} (or add conf/{group}/{value}.yaml)"
    skip = ("Config search path", "provider=", "full_key", "object_type", "Set the environment variable")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(skip)]
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip().splitlines()[0] not in lines:
        lines.append(str(cause).strip().splitlines()[0])
    return "; ".join(lines[:3]) or type(err).__name__


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | float | None:
    """One job. A single run exits 2 on bad input; in a sweep a failed job returns ``status: failed`` so
    the others go on, and under Optuna (``tune.objective``) every job returns its objective."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[assignment]
    job = sweep.current_job()
    try:
        results = execute(config, job)
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(err.stop.exit_code)
    except Exception as err:
        expected = isinstance(err, USER_ERRORS + (DivergenceError,))
        if debug_requested(config) or (job is None and not expected):
            raise
        message = str(err) if expected else f"{type(err).__name__}: {err}"
        print(f"error: {message}", file=sys.stderr)
        if job is None:
            sys.exit(2)
        results = {"status": "failed", "error": message}
    objective = (config.get("tune") or {}).get("objective")
    if objective:  # the Optuna sweeper minimises what the job returns, a bare number
        if job is not None:
            sweep.record_outcome(job, config, results)
        return tune_value(results, objective)
    if results["status"] == "finished":
        print(
            f"{results['run_id']}: total {results['final_total']:.6g} (content {results['final_content']:.6g}, "
            f"style {results['final_style']:.6g}, tv {results['final_tv']:.6g}) in {results['total_s']:.1f} s",
            file=sys.stderr,
        )
    return results


def cli() -> None:
    """``python -m ablation.run``: Hydra's entry point, with its configuration errors (an unknown variant,
    a misspelt key) as one line and exit code 2 instead of a multi-line report.

    Hydra prints those itself unless HYDRA_FULL_ERROR=1, in which case it raises them; so this sets it
    (marked, see :func:`debug_requested`) and catches them. A user's own HYDRA_FULL_ERROR=1 is left alone.
    """
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(_CLI_MARK) != "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = os.environ[_CLI_MARK] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
