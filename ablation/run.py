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

from ablation import sweep, tracking
from ablation.engine import ENGINE_VERSION, hardware, judge
from ablation.engine.checkpoint import CheckpointError, load_checkpoint, restore_rng, save_checkpoint
from ablation.engine.colors import preserve_colors
from ablation.engine.images import ImageError, save_png
from ablation.engine.inputs import DataError, file_sha256, resolve_image
from ablation.engine.memory import MemoryEstimateError, check_fits
from ablation.engine.plan import RunSpec
from ablation.engine.prepare import Problem, pick_device, prepare
from ablation.engine.scales import Stage, coarse_to_fine
from ablation.engine.transfer import LOSS_NAMES, DivergenceError, TransferState, stylize
from ablation.engine.weights import WeightsError, load_weights
from ablation.resume import config_sha256, download_checkpoint, find_resumable
from ablation.spec import SpecError, from_config
from ablation.stopping import Interrupted, StopRequest, stop_on_signals

#: The MLflow image series of every run (its checkpoint images and its final image, by step).
IMAGE_SERIES_KEY = "output"
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
        "engine_version": ENGINE_VERSION,
    }


def describe_machine(device: torch.device) -> tuple[dict[str, str], dict[str, str], float]:
    """Tags, params and calibration GFLOP/s of the machine a run uses (about half a second, for the calibration).

    The ``hardware_class`` tag groups runs whose runtimes compare; the params say what the machine is; the
    calibration (a fixed convolution workload) puts different classes on one scale.
    """
    machine = hardware.describe(device)
    return {"hardware_class": machine.hardware_class()}, machine.params(), hardware.calibrate(device)


def resumed_hardware_class(before: str | None, now: str) -> str:
    """The class of a run continued on ``now``: unchanged on the same class, else ``mixed: A + B`` (a run
    whose runtime spans two machines belongs to neither's group)."""
    return now if before in (None, now) else f"mixed: {before} + {now}"


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
    problems: list[Problem],
    logs: list[tracking.RunLog],
    setup_s: float,
    resumed: tuple[TransferState, np.ndarray] | None = None,
    stop: StopRequest | None = None,
    config_hash: str = "",
    score: Callable[[torch.Tensor], dict[str, float]] | None = None,
) -> list[dict[str, float]]:
    """Run the loop and log it: step losses in batches, checkpoints, final images and results.

    ``problems`` holds one problem per scale, coarse to fine (one without ``run.scales``); ``logs`` one run
    per seed of ``spec.seeds``, optimised as one batch (sample i goes to ``logs[i]``). ``resumed``: a state
    and the loss rows before its step, from a checkpoint; the loop continues there and logs only steps it
    had not logged. ``stop``: when due at a sync point the full state is saved as ``checkpoint/state.pt``
    and :class:`Interrupted` is raised. On divergence the last image whose losses were all finite is kept
    as ``last_good.png``. ``score`` (the common judge) maps a final image to more result metrics.
    """
    stop = stop or StopRequest()
    problem = problems[-1]
    # yield at every checkpoint step too, so its state can be saved
    sync_every = math.gcd(spec.sync_every, spec.checkpoint_every) if spec.checkpoint_every else spec.sync_every
    histories: list[list[np.ndarray]] = [[] for _ in logs]  # per seed: [rows, 5] (global step + 4 losses)
    if resumed is None:
        stages = [Stage(p.net, p.targets, tuple(p.content.shape[-2:]), p.spec.iterations) for p in problems]
        start = problems[0].start_image(list(spec.seeds))
        stream = coarse_to_fine(stages, start, spec.optim, spec.log_every, sync_every, spec.engine)
        first_new, last_good = 0, (0, start.detach().clone())
    else:
        state, before = resumed
        histories[0], first_new = ([before] if len(before) else []), state.step + 1
        stream = stylize(problem.net, problem.targets, state, spec.iterations, spec.log_every, sync_every, spec.engine)
        last_good = (state.step, state.image.detach().clone())
    last_step = sum(n for _, n in spec.stages()) + len(problems) - 1  # global step of the final image
    bar = tqdm(total=last_step, disable=spec.quiet, unit="it", dynamic_ncols=True, file=sys.stderr)
    bar.update(last_good[0])
    loop_start = scale_start = time.perf_counter()
    scale_metrics: dict[str, float] = {}
    with tracking.scratch_dir() as scratch:
        folder = Path(scratch)

        def save_images(name: str, images: torch.Tensor, artifact_folder: str | None = None) -> None:
            for i, log in enumerate(logs):
                path = folder / str(i) / name
                log.artifact(save_png(problem_of_scale.pixels.decode(images[i : i + 1]), path), artifact_folder)

        def log_series(images: torch.Tensor, step: int) -> None:
            for i, log in enumerate(logs):
                log.image(problem_of_scale.pixels.decode(images[i : i + 1]), IMAGE_SERIES_KEY, step)

        def save_state(step: int) -> None:
            save_checkpoint(state, np.concatenate(histories[0]), folder / "state.pt", config_hash)
            logs[0].artifact(folder / "state.pt", "checkpoint")
            log_series(state.image, step)

        problem_of_scale = problems[0] if resumed is None else problem
        try:
            for progress in stream:
                state, scale = progress.state, progress.extra.get("scale", 0)
                problem_of_scale = problems[scale] if resumed is None else problem
                steps = progress.steps + progress.extra.get("offset", 0)
                logged = progress.steps % spec.log_every == 0
                logged[-1] |= progress.done
                logged &= steps >= first_new
                for i, log in enumerate(logs):
                    log.step_metrics(LOSS_NAMES, steps[logged], progress.losses[logged, i, :])
                    histories[i].append(np.column_stack([steps, progress.losses[:, i, :]]))
                bar.update(int(steps[-1]) - bar.n)
                totals = dict(zip(LOSS_NAMES, progress.losses[-1, 0], strict=True))
                bar.set_postfix({k: f"{v:.4g}" for k, v in totals.items()}, refresh=False)
                if progress.done:
                    if len(problems) > 1:
                        now = time.perf_counter()
                        width = problems[scale].images.content.shape[1]
                        scale_metrics |= {f"scale{scale}_loop_s": now - scale_start, f"scale{scale}_width": width}
                        scale_start = now
                        if scale < len(problems) - 1:
                            save_images(f"scale{scale}_final.png", state.image, "scales")
                    continue
                last_good = (int(steps[-1]), state.image.detach().clone())
                if stop.due(int(steps[-1])):
                    save_state(int(steps[-1]))
                    logs[0].metrics({"interrupted_step": int(steps[-1])}, step=int(steps[-1]))
                    raise Interrupted(int(steps[-1]), stop, logs[0].run_id)
                if spec.checkpoint_every and steps[-1] % spec.checkpoint_every == 0 and steps[-1] > 0:
                    save_state(int(steps[-1]))
        except DivergenceError as err:
            bar.close()
            state, (step, image) = err.state, last_good
            save_images("last_good.png", image)
            if state.best_image is not None and torch.isfinite(state.best_total).all():
                save_images("best.png", state.best_image)
            for i, log in enumerate(logs):
                log.artifact(write_losses(histories[i], folder / str(i) / "losses.csv"))
                log.metrics({"last_good_step": step}, step=step)
            raise err
        loop_s = time.perf_counter() - loop_start
        bar.close()
        new_steps = max(last_step - first_new + 1, 1)
        peak_mb = peak_memory_mb(problem.device)
        save_images("final.png", state.image)
        log_series(state.image, last_step)
        save_images("best.png", state.best_image)
        all_results = []
        for i, log in enumerate(logs):
            table = np.concatenate(histories[i])
            results = {
                **{f"final_{k}": float(v) for k, v in zip(LOSS_NAMES, table[-1, 1:], strict=True)},
                "best_total": float(state.best_total[i]),
                "best_step": int(state.best_step[i]),
                "setup_s": setup_s,
                "loop_s": loop_s,
                "iter_ms": 1000 * loop_s / new_steps,
                "peak_mem_mb": peak_mb,
                "batch_size": len(logs),
                **scale_metrics,
            }
            if score is not None:
                results.update(score(state.image[i : i + 1]))
            final_rgb = problem.pixels.decode(state.image[i : i + 1])
            if spec.preserve_colors:
                log.artifact(
                    save_png(preserve_colors(final_rgb, problem.images.content), folder / str(i) / "final_colors.png")
                )
            for k, image in enumerate([problem.images.content, *problem.images.styles]):  # the report's input grid
                name = "content.png" if k == 0 else f"style_{k - 1}.png"
                log.artifact(save_png(image, folder / str(i) / "inputs" / name), "inputs")
            log.artifact(write_losses(histories[i], folder / str(i) / "losses.csv"))
            all_results.append(results)
    return all_results


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


def seed_config(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """The config of one seed's run: a batched run's seed i has the fingerprint of ``run.seed=i`` alone."""
    return {**config, "run": {**config["run"], "seed": seed, "seeds": None}}


def execute(
    config: dict[str, Any], job: sweep.SweepJob | None = None, stop: StopRequest | None = None
) -> dict[str, Any]:
    """One run per seed from a resolved config: validate, check memory and the store, set up, transfer, log.

    In a sweep (``job``) each run is a child of the sweep's parent run; a seed whose fingerprint already
    has a FINISHED run is not run again (unless ``run.force``), and when none is left the result is
    ``{"status": "skipped"}``; a job whose fingerprint has a KILLED/FAILED run with a checkpoint continues
    it. A single run continues the latest KILLED/FAILED run of the same config (tag ``config_sha256``)
    only with ``run.resume=true``. SIGINT/SIGTERM (or ``stop``) end the run KILLED with a checkpoint.
    Returns the first seed's metrics and ``run_id`` (all seeds' under ``seed_results`` in a batch).
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
    inputs_sha = input_sha256(spec)
    fingerprints = {
        s: sweep.fingerprint(seed_config(config, s), weights.sha256, inputs_sha, device.type) for s in spec.seeds
    }
    force = config["run"].get("force", False)
    if job is not None and not force:
        done = {s: sweep.find_finished(client, experiment_id, f) for s, f in fingerprints.items()}
        for seed, run_id in done.items():
            if run_id is not None:
                print(
                    f"{run_id}: seed {seed} skipped, a FINISHED run has its fingerprint (run.force=true runs it)",
                    file=sys.stderr,
                )
        if all(done.values()):
            return {"status": "skipped", "run_id": done[spec.seed]}
        seeds = tuple(s for s in spec.seeds if done[s] is None)
        spec = replace(spec, seeds=seeds, seed=seeds[0])
    resuming = len(spec.seeds) == 1 and spec.scales is None
    previous = None
    if job is not None and not force and resuming:
        previous = find_resumable(client, experiment_id, fingerprints[spec.seed], tag="fingerprint")
    elif config["run"].get("resume", False):
        if not resuming:
            raise SpecError("run.resume=true continues one seed at one scale: drop run.seeds or run.scales")
        previous = find_resumable(client, experiment_id, config_hash)
        if previous is None:
            print(
                "run.resume=true: no KILLED or FAILED run of this config with a checkpoint; starting afresh",
                file=sys.stderr,
            )
    calibration_start = time.perf_counter()
    machine_tags, machine_params, calibration_gflops = describe_machine(device)
    started += time.perf_counter() - calibration_start  # the calibration is no part of the run's setup time
    problems = [
        prepare(replace(spec, images=replace(spec.images, width=width), iterations=n), device, weights)
        for width, n in spec.stages()
    ]
    problem = problems[-1]
    judge_cfg = config.get("judge") or {}
    scorer = None
    if judge_cfg.get("enabled", True):
        judge_loss = replace(spec.loss, **judge_cfg["loss"]) if judge_cfg.get("loss") else None
        judge_net = judge.build_judge(problem, judge.judge_weights(problem, judge_cfg.get("weights_path")), judge_loss)
        scorer = lambda image: judge.score(judge_net, image, problem.pixels)  # noqa: E731
    setup_s = time.perf_counter() - started
    resumed = None
    logs: list[tracking.RunLog] = []
    if previous is not None:
        log, resumed = resume_from(client, previous.info.run_id, device)
        before = log.run.data.tags.get("hardware_class")
        log.tags({"hardware_class": resumed_hardware_class(before, machine_tags["hardware_class"])})
        logs.append(log)
    else:
        run_name = config["tracking"].get("run_name")
        for seed in spec.seeds:
            tags = {
                "variant": spec.variant,
                "seed": str(seed),
                "weights_source": problem.weights.source,
                "config_sha256": config_sha256(seed_config(config, seed)),
                "fingerprint": fingerprints[seed],
                **tracking.provenance_tags(),
                **machine_tags,
                **({"random_weights": "true"} if problem.weights.source == "random" else {}),
                **({"batch_seeds": ",".join(map(str, spec.seeds))} if len(spec.seeds) > 1 else {}),
                **(job.child_tags() if job is not None else {}),
            }
            name = f"{run_name}-s{seed}" if run_name and len(spec.seeds) > 1 else run_name
            logs.append(tracking.RunLog(client, experiment_id, name or f"{spec.variant}-s{seed}", tags))
    try:
        if resumed is None:
            for seed, log in zip(spec.seeds, logs, strict=True):
                params = run_params(spec, problem, seed_config(config, seed))
                log.params({**params, **machine_params, "batch_size": len(spec.seeds)})
                log.text(OmegaConf.to_yaml(OmegaConf.create(seed_config(config, seed))), "config.yaml")
        first_step = 0 if resumed is None else resumed[0].step
        for log in logs:
            log.metrics({"calibration_gflops": calibration_gflops}, step=first_step)
        with stop_on_signals(stop or StopRequest()) as request:
            all_results = transfer_and_log(spec, problems, logs, setup_s, resumed, request, config_hash, scorer)
        for log, results in zip(logs, all_results, strict=True):
            results["total_s"] = time.perf_counter() - started
            log.metrics(results, step=spec.iterations)
    except Interrupted as err:
        for log in logs:
            log.end("KILLED", str(err))
        raise
    except KeyboardInterrupt:
        for log in logs:
            log.end("KILLED", "interrupted twice: no checkpoint at this step (an earlier periodic one may exist)")
        raise
    except DivergenceError as err:
        for log in logs:
            log.metrics({"diverged_step": err.step}, step=err.step)
            log.tags({"diverged": err.step})
            log.end("FAILED", str(err))
        raise
    except BaseException as err:
        for log in logs:
            log.end("FAILED", f"{type(err).__name__}: {err}")
        raise
    for log, results in zip(logs, all_results, strict=True):
        log.end("FINISHED")
        results.update(status="finished", run_id=log.run_id)  # type: ignore[call-arg]
    first = all_results[0]
    return {**first, "seed_results": all_results} if len(all_results) > 1 else first


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
    for seed_results in results.get("seed_results", [results]) if results["status"] == "finished" else []:
        print(
            f"{seed_results['run_id']}: total {seed_results['final_total']:.6g} (content "
            f"{seed_results['final_content']:.6g}, style {seed_results['final_style']:.6g}, tv "
            f"{seed_results['final_tv']:.6g}) in {seed_results['total_s']:.1f} s",
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
