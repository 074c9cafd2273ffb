"""One style transfer, configured by Hydra, logged to MLflow.

    python -m ablation.run variant=vgg16_tanh
    python -m ablation.run variant=avg_pool weights=random images.width=64 run.iterations=20
    python -m ablation.run --help          # every group and key, with defaults

This is the only module (with sweep.py) that knows both Hydra and MLflow; the engine knows neither.
"""

from __future__ import annotations

import csv
import resource
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torchvision
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ablation import tracking
from ablation.data import DataError
from ablation.images import ImageError, save_png
from ablation.problem import Problem, pick_device, prepare
from ablation.spec import RunSpec, SpecError, from_config
from ablation.transfer import LOSS_NAMES, DivergenceError, new_state, stylize
from ablation.weights import WeightsError

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
    spec: RunSpec, problem: Problem, logs: list[tracking.RunLog], setup_s: float
) -> list[dict[str, float]]:
    """Run the loop on all of ``spec.seeds`` as one batch; sample i is logged to ``logs[i]``: step losses in
    batches, checkpoint images, and its final results. The timings are the batch's, shared by its runs."""
    state = new_state(problem.start_image(list(spec.seeds)), spec.adam)
    history: list[np.ndarray] = []  # [steps, B, 4] per sync point
    steps: list[np.ndarray] = []
    bar = tqdm(total=spec.iterations, disable=spec.quiet, unit="it", dynamic_ncols=True, file=sys.stderr)
    loop_start = time.perf_counter()
    with tracking.scratch_dir() as scratch:
        for progress in stylize(
            problem.net, problem.targets, state, spec.iterations, spec.log_every, spec.sync_every, spec.engine
        ):
            logged = (progress.steps % spec.log_every == 0) | (progress.steps == spec.iterations)
            for i, log in enumerate(logs):
                log.step_metrics(LOSS_NAMES, progress.steps[logged], progress.losses[logged, i, :])
            history.append(progress.losses)
            steps.append(progress.steps)
            bar.update(progress.step - bar.n)
            first = progress.losses[-1, 0]
            bar.set_postfix({k: f"{v:.4g}" for k, v in zip(LOSS_NAMES, first, strict=True)}, refresh=False)
            if spec.checkpoint_every and progress.step % spec.checkpoint_every == 0 and not progress.done:
                name = f"step_{progress.step:06d}.png"
                for i, log in enumerate(logs):
                    image = problem.pixels.decode(state.image[i : i + 1])
                    log.artifact(save_png(image, Path(scratch) / str(i) / name), "checkpoints")
        loop_s = time.perf_counter() - loop_start
        bar.close()
        losses, all_steps = np.concatenate(history), np.concatenate(steps)
        peak_mb = peak_memory_mb(problem.device)
        all_results = []
        for i, log in enumerate(logs):
            table = np.column_stack([all_steps, losses[:, i, :]])
            final = dict(zip(LOSS_NAMES, table[-1, 1:], strict=True))
            all_results.append(
                {
                    **{f"final_{k}": float(v) for k, v in final.items()},
                    "best_total": float(state.best_total[i]),
                    "best_step": int(state.best_step[i]),
                    "setup_s": setup_s,
                    "loop_s": loop_s,
                    "iter_ms": 1000 * loop_s / spec.iterations,
                    "peak_mem_mb": peak_mb,
                    "batch_size": len(logs),
                }
            )
            folder = Path(scratch) / str(i)
            log.artifact(save_png(problem.pixels.decode(state.image[i : i + 1]), folder / "final.png"))
            log.artifact(save_png(problem.pixels.decode(state.best_image[i : i + 1]), folder / "best.png"))
            with open(folder / "losses.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["step", *LOSS_NAMES])
                writer.writerows([[int(r[0]), *map(float, r[1:])] for r in table])
            log.artifact(folder / "losses.csv")
    return all_results


def execute(config: dict[str, Any]) -> dict[str, float]:
    """One run from a resolved config: validate, check the store, set up, transfer, log. Returns metrics."""
    started = time.perf_counter()
    spec = from_config(config)
    device = pick_device(spec.device)
    client, experiment_id = tracking.open_store(config["tracking"]["experiment"])
    torch.manual_seed(spec.seed)
    problem = prepare(spec, device)
    setup_s = time.perf_counter() - started
    run_name = config["tracking"].get("run_name")
    logs: list[tracking.RunLog] = []
    try:
        for seed in spec.seeds:
            tags = {
                "variant": spec.variant,
                "seed": str(seed),
                "weights_source": problem.weights.source,
                **({"random_weights": "true"} if problem.weights.source == "random" else {}),
                **({"batch_seeds": ",".join(map(str, spec.seeds))} if len(spec.seeds) > 1 else {}),
            }
            name = f"{run_name}-s{seed}" if run_name and len(spec.seeds) > 1 else run_name
            log = tracking.RunLog(client, experiment_id, name or f"{spec.variant}-s{seed}", tags)
            logs.append(log)
            log.params({**run_params(spec, problem, config), "run.seed": seed, "batch_size": len(spec.seeds)})
            log.text(OmegaConf.to_yaml(OmegaConf.create(config)), "config.yaml")
        all_results = transfer_and_log(spec, problem, logs, setup_s)
        for log, results in zip(logs, all_results, strict=True):
            results["total_s"] = time.perf_counter() - started
            log.metrics(results, step=spec.iterations)
    except KeyboardInterrupt:
        for log in logs:
            log.end("KILLED", "interrupted")
        raise
    except DivergenceError as err:
        for log in logs:
            log.metrics({"diverged_step": err.step})
            log.end("FAILED", str(err))
        raise
    except BaseException as err:
        for log in logs:
            log.end("FAILED", f"{type(err).__name__}: {err}")
        raise
    for log, results in zip(logs, all_results, strict=True):
        log.end("FINISHED")
        results["run_id"] = log.run_id  # type: ignore[assignment]
    first = all_results[0]
    if len(all_results) > 1:
        first["seed_results"] = all_results  # type: ignore[assignment]
    return first


def debug_requested(config: dict[str, Any]) -> bool:
    import os

    return os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(config.get("run", {}).get("debug", False))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, float] | None:
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    try:
        results = execute(config)  # type: ignore[arg-type]
    except USER_ERRORS + (DivergenceError,) as err:
        if debug_requested(config):  # type: ignore[arg-type]
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for seed_results in results.get("seed_results", [results]):  # type: ignore[union-attr]
        print(
            f"{seed_results['run_id']}: total {seed_results['final_total']:.6g} (content "
            f"{seed_results['final_content']:.6g}, style {seed_results['final_style']:.6g}, tv "
            f"{seed_results['final_tv']:.6g}) in {seed_results['total_s']:.1f} s",
            file=sys.stderr,
        )
    return results


if __name__ == "__main__":
    main()
