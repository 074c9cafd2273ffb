"""One style transfer, configured by Hydra, logged to MLflow.

    python -m ablation.run variant=vgg16_tanh
    python -m ablation.run variant=avg_pool weights=random images.width=64 run.iterations=20
    python -m ablation.run --help          # every group and key, with defaults

This is the only module (with sweep.py) that knows both Hydra and MLflow; the engine knows neither.
"""

from __future__ import annotations

import csv
import math
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
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ablation import judge, sweep, tracking
from ablation.data import DataError, file_sha256, resolve_image
from ablation.images import ImageError, save_png
from ablation.problem import Problem, pick_device, prepare
from ablation.spec import RunSpec, SpecError, from_config
from ablation.transfer import LOSS_NAMES, DivergenceError, new_state, stylize
from ablation.weights import WeightsError, load_weights

#: Errors that mean "bad input": one line, exit code 2, nothing stored is touched.
USER_ERRORS = (SpecError, DataError, ImageError, WeightsError, tracking.TrackingError, ValueError)


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


def transfer_and_log(
    spec: RunSpec,
    problem: Problem,
    log: tracking.RunLog,
    setup_s: float,
    score: Callable[[torch.Tensor], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Run the loop, logging step losses in batches, checkpoint images, and the final results.

    ``score`` (the common judge) maps the final image, in pixel space, to more result metrics.
    """
    state = new_state(problem.start_image([spec.seed]), spec.optim)
    history: list[np.ndarray] = []
    # yield at every checkpoint step too, so its image can be saved
    sync_every = math.gcd(spec.sync_every, spec.checkpoint_every) if spec.checkpoint_every else spec.sync_every
    bar = tqdm(total=spec.iterations, disable=spec.quiet, unit="it", dynamic_ncols=True, file=sys.stderr)
    loop_start = time.perf_counter()
    with tracking.scratch_dir() as scratch:
        for progress in stylize(
            problem.net, problem.targets, state, spec.iterations, spec.log_every, sync_every, spec.engine
        ):
            rows = progress.losses[:, 0, :]
            logged = (progress.steps % spec.log_every == 0) | (progress.steps == spec.iterations)
            log.step_metrics(LOSS_NAMES, progress.steps[logged], rows[logged])
            history.append(np.column_stack([progress.steps, rows]))
            bar.update(progress.step - bar.n)
            bar.set_postfix({k: f"{v:.4g}" for k, v in zip(LOSS_NAMES, rows[-1], strict=True)}, refresh=False)
            if (
                spec.checkpoint_every
                and progress.step % spec.checkpoint_every == 0
                and 0 < progress.step < spec.iterations
            ):
                name = f"step_{progress.step:06d}.png"
                log.artifact(save_png(problem.pixels.decode(state.image), Path(scratch) / name), "checkpoints")
        loop_s = time.perf_counter() - loop_start
        bar.close()
        table = np.concatenate(history)
        final = dict(zip(LOSS_NAMES, table[-1, 1:], strict=True))
        results = {
            **{f"final_{k}": float(v) for k, v in final.items()},
            "best_total": float(state.best_total[0]),
            "best_step": int(state.best_step[0]),
            "setup_s": setup_s,
            "loop_s": loop_s,
            "iter_ms": 1000 * loop_s / spec.iterations,
            "peak_mem_mb": peak_memory_mb(problem.device),
        }
        if score is not None:
            results.update(score(state.image))
        folder = Path(scratch)
        log.artifact(save_png(problem.pixels.decode(state.image), folder / "final.png"))
        for k, image in enumerate([problem.images.content, *problem.images.styles]):  # the report's input grid
            log.artifact(save_png(image, folder / ("content.png" if k == 0 else f"style_{k - 1}.png")), "inputs")
        log.artifact(save_png(problem.pixels.decode(state.best_image), folder / "best.png"))
        with open(folder / "losses.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", *LOSS_NAMES])
            writer.writerows([[int(r[0]), *map(float, r[1:])] for r in table])
        log.artifact(folder / "losses.csv")
    return results


def input_sha256(spec: RunSpec) -> list[str]:
    """SHA-256 of the content, each style and an initial image file (if any), in that order."""
    names = [spec.images.content, *spec.images.styles]
    if spec.init not in ("noise", "content"):
        names.append(spec.init)
    return [file_sha256(resolve_image(name)) for name in names]


def execute(config: dict[str, Any], job: sweep.SweepJob | None = None) -> dict[str, Any]:
    """One run from a resolved config: validate, check the store, set up, transfer, log. Returns metrics.

    In a sweep (``job``) the run is a child of the sweep's parent run, and a job whose fingerprint already
    has a FINISHED run is not run again (unless ``run.force``): the result is ``{"status": "skipped"}``.
    """
    started = time.perf_counter()
    spec = from_config(config)
    device = pick_device(spec.device)
    client, experiment_id = tracking.open_store(config["tracking"]["experiment"])
    torch.manual_seed(spec.seed)
    weights = load_weights(spec.weights.source, spec.network.arch, **spec.weights.options)
    fingerprint = sweep.fingerprint(config, weights.sha256, input_sha256(spec), device.type)
    if job is not None and not config["run"].get("force", False):
        done = sweep.find_finished(client, experiment_id, fingerprint)
        if done is not None:
            print(f"{done}: skipped, a FINISHED run has its fingerprint (run.force=true runs it)", file=sys.stderr)
            return {"status": "skipped", "run_id": done}
    problem = prepare(spec, device, weights)
    judge_cfg = config.get("judge") or {}
    scorer = None
    if judge_cfg.get("enabled", True):
        judge_loss = replace(spec.loss, **judge_cfg["loss"]) if judge_cfg.get("loss") else None
        judge_net = judge.build_judge(problem, judge.judge_weights(problem, judge_cfg.get("weights_path")), judge_loss)
        scorer = lambda image: judge.score(judge_net, image, problem.pixels)  # noqa: E731
    setup_s = time.perf_counter() - started
    tags = {
        "variant": spec.variant,
        "seed": str(spec.seed),
        "weights_source": problem.weights.source,
        "fingerprint": fingerprint,
        **({"random_weights": "true"} if problem.weights.source == "random" else {}),
        **(job.child_tags() if job is not None else {}),
    }
    run_name = config["tracking"].get("run_name") or f"{spec.variant}-s{spec.seed}"
    log = tracking.RunLog(client, experiment_id, run_name, tags)
    try:
        log.params(run_params(spec, problem, config))
        log.text(OmegaConf.to_yaml(OmegaConf.create(config)), "config.yaml")
        results = transfer_and_log(spec, problem, log, setup_s, scorer)
        results["total_s"] = time.perf_counter() - started
        log.metrics(results, step=spec.iterations)
    except KeyboardInterrupt:
        log.end("KILLED", "interrupted")
        raise
    except DivergenceError as err:
        log.metrics({"diverged_step": err.step})
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


def debug_requested(config: dict[str, Any]) -> bool:
    import os

    return os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(config.get("run", {}).get("debug", False))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | float | None:
    """One job. A single run exits 2 on bad input; in a sweep a failed job returns ``status: failed`` so
    the others go on, and under Optuna (``tune.objective``) every job returns its objective."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[assignment]
    job = sweep.current_job()
    try:
        results = execute(config, job)
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


if __name__ == "__main__":
    main()
