"""A whole bench run, in order: peaks; every variant x size (``cases``); the tf32/bf16 loss deviation; batched
seeds; whole CUDA runs; the profile; the targets. Returns the results as plain data for ``render``."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ablation.bench.breakdown import profile_ms
from ablation.bench.cases import bench_case, engine_options
from ablation.bench.contenders import EngineRunner, engine_name, layout_name, time_interleaved
from ablation.bench.probes import conv_peak_gflops, machine, matmul_peak_gflops
from ablation.bench.settings import BenchError, Settings
from ablation.bench.targets import check_targets
from ablation.engine.backends import PRECISIONS, configure_backends, native_bf16, prefers_channels_last, set_layout
from ablation.engine.hardware import synchronize
from ablation.engine.prepare import Problem, prepare
from ablation.engine.transfer import TOTAL, EngineOptions, new_state, stylize
from ablation.engine.weights import VGGWeights, load_weights, torchvision_file
from ablation.paths import CONF_DIR


def load_bench_weights(choice: str, arch: str) -> VGGWeights:
    """``auto``: torchvision's if already in torch's cache (no download attempt), else seeded random
    weights, which time the same (dense convolutions do not look at the values) but make the bf16
    deviation a statement about random filters; the report says which were used."""
    if choice == "auto":
        choice = "torchvision" if torchvision_file(arch).is_file() else "random"
    if choice in ("torchvision", "random"):
        return load_weights(choice, arch)
    path = Path(choice).expanduser()
    if not path.is_file():
        raise BenchError(f"--weights {choice!r}: not torchvision, random, auto or an existing file")
    return load_weights("matconvnet" if path.suffix == ".mat" else "file", arch, path=str(path))


class Problems:
    """The run's own set-up (Hydra config -> spec -> prepare) of the report's pair for a variant and width;
    the architecture is the variant file's ``arch``, and each architecture's weights are loaded once."""

    def __init__(self, device: torch.device, weights: str) -> None:
        self.device, self.choice, self.weights = device, weights, {}

    def __call__(self, variant: str, width: int) -> Problem:
        from hydra import compose, initialize_config_dir

        from ablation import schema
        from ablation.spec import from_config

        overrides = [f"variant={variant}", f"images.width={width}", "weights=random", f"run.device={self.device}"]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            spec = from_config(schema.plain(compose("config", overrides=overrides)))
        arch = spec.network.arch
        if arch not in self.weights:
            self.weights[arch] = load_bench_weights(self.choice, arch)
        return prepare(spec, self.device, self.weights[arch])


def measure_peaks(settings: Settings, device: torch.device) -> dict[str, Any]:
    """Single-kernel peaks: an fp32 matmul, and a 3x3 conv in every precision (bf16 always: is it worth it here?)."""
    peaks = {"matmul_fp32": matmul_peak_gflops(device, settings.matmul_n, settings.peak_s)}
    for precision in dict.fromkeys(["fp32", *settings.precisions, "bf16"]):
        peaks[f"conv_{precision}"] = conv_peak_gflops(device, precision, 256, settings.conv_side, settings.peak_s)
    n, side, batch = settings.matmul_n, settings.conv_side, 8 if device.type == "cuda" else 1
    shapes = {"matmul": f"{n}x{n} @ {n}x{n} fp32", "conv": f"3x3, 256->256 ch, {batch}x{side}x{side}, forward"}
    return {"peaks_gflops": peaks, "peak_shapes": shapes}


def _engine_run(problem: Problem, options: EngineOptions, iterations: int, sync_every: int) -> float:
    """One whole run of seed 0 with ``options``: its final total loss (the reported loss)."""
    configure_backends(options, problem.device)
    net = set_layout(copy.deepcopy(problem.net), options)
    state = new_state(problem.start_image([0]), problem.spec.optim)
    for progress in stylize(net, problem.targets, state, iterations, 1, sync_every, options):
        last = progress.losses[-1, 0, TOTAL]
    return float(last)


def deviation_check(problem: Problem, settings: Settings) -> dict[str, Any]:
    """Final total of a whole run in each reduced precision asked for (tf32, bf16) against fp32, seed 0, each in
    the layout ``run.channels_last=auto`` gives it on this device."""
    iters, precisions = settings.check_iters, [p for p in settings.precisions if p != "fp32"]
    totals = {
        p: _engine_run(problem, EngineOptions(p, prefers_channels_last(problem.device, p)), iters, iters)
        for p in ["fp32", *precisions]
    }
    deviation = {p: abs(t - totals["fp32"]) / abs(totals["fp32"]) for p, t in totals.items() if p != "fp32"}
    return {"iterations": iters, "size_px": settings.check_size, "final_total": totals, "rel_deviation": deviation}


def batched_seeds(problem: Problem, settings: Settings, options: EngineOptions) -> dict[str, Any]:
    """ms per iteration of ``batch_seeds`` seeds as one batch against one seed, interleaved."""
    calls, rounds = settings.warmup + settings.iters // settings.chunk, settings.iters // settings.chunk
    one = EngineRunner(problem, options, [0], settings.chunk, calls)
    many = EngineRunner(problem, options, list(range(settings.batch_seeds)), settings.chunk, calls)
    for _ in range(settings.warmup):
        one(), many()
    samples = time_interleaved({"one": one, "batch": many}, settings.chunk, rounds, problem.device)
    one_ms, many_ms = statistics.median(samples["one"]), statistics.median(samples["batch"])
    return {
        "seeds": settings.batch_seeds,
        "size_px": settings.batch_size_px,
        "layout": engine_name(options),
        "one_seed_ms": one_ms,
        "batch_ms": many_ms,
        "time_ratio": many_ms / one_ms,
    }


def full_runs(problem: Problem, settings: Settings) -> dict[str, Any]:
    """Seconds of one whole run of ``full_run_iters`` per engine setting (after a 3-iteration warm-up run)."""
    seconds = {}
    for options in engine_options(settings):
        _engine_run(problem, options, 3, 3)
        synchronize(problem.device)
        start = time.perf_counter()
        _engine_run(problem, options, settings.full_run_iters, 50)
        synchronize(problem.device)
        seconds[engine_name(options)] = time.perf_counter() - start
    return {"iterations": settings.full_run_iters, "seconds": seconds, "best_s": min(seconds.values())}


def run_bench(
    settings: Settings, log: Callable[[str], None] = print, save: Callable[[dict[str, Any]], None] = lambda r: None
) -> dict[str, Any]:
    """Every stage in turn; ``save`` gets the results so far after each (a bench cut short keeps what it measured)."""
    device, started = torch.device(settings.device), time.perf_counter()
    default = EngineOptions(channels_last=prefers_channels_last(device))  # fp32 with run.channels_last=auto here
    results: dict[str, Any] = {"settings": asdict(settings), "machine": machine(device)}
    # the layout run.channels_last=auto gives each precision on this device
    layouts = {p: layout_name(prefers_channels_last(device, p)) for p in PRECISIONS}
    results |= {"native_bf16": native_bf16(device), "default_layouts": layouts}
    log(f"machine: {results['machine']}")
    results |= measure_peaks(settings, device)
    log("peak GF/s: " + ", ".join(f"{k} {v:.0f}" for k, v in results["peaks_gflops"].items()))
    problems, rows = Problems(device, settings.weights), []
    for variant in settings.variants:
        for width in settings.sizes:
            case = bench_case(problems(variant, width), settings, results["peaks_gflops"])
            rows += case
            log("\n".join(f"{r.variant} {r.size_wh} {r.contender}: median {r.median_ms:.1f} ms/it" for r in case))
            save(results | {"rows": [asdict(r) for r in rows]})
    results["rows"] = [asdict(r) for r in rows]
    results["weights"] = {arch: w.source for arch, w in problems.weights.items()}
    if settings.check_iters and set(settings.precisions) - {"fp32"}:
        results["deviation"] = deviation_check(problems("original", settings.check_size), settings)
        save(results)
    if settings.batch_seeds > 1:
        results["batched"] = batched_seeds(problems("original", settings.batch_size_px), settings, default)
        save(results)
    if device.type == "cuda" and 512 in settings.sizes and "original" in settings.variants:
        results["full_run"] = full_runs(problems("original", 512), settings)
        save(results)
    if settings.profile:
        problem = problems(settings.variants[0], max(settings.sizes))
        results["profile"] = {
            "variant": problem.spec.variant,
            "size_px": max(settings.sizes),
            "contender": engine_name(default),
            **profile_ms(problem, default, settings.iters),
        }
    results["targets"] = check_targets(results)
    results["bench_s"] = time.perf_counter() - started
    return results
