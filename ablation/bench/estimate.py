"""A sweep's cost before it starts: how many jobs, how many a FINISHED run already answers, how long the rest take
here (:mod:`ablation.bench.cost`), and for a cluster the longest job, so ``hydra.launcher.timeout_min`` can be set.

Each job's config is composed as Hydra will compose it (once per job but its seed, which changes no cost), its
fingerprint computed as the job will (:func:`ablation.job.seed_fingerprints`), and looked up in the store: a job
is reused when every seed has a FINISHED run, or when an earlier job of this sweep has its fingerprint (a condition
that a command-line value made equal to another, as a rule). The machine is calibrated once, here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ablation.bench import cost
from ablation.engine import memory
from ablation.engine.memory import planned_sizes
from ablation.engine.plan import RunSpec
from ablation.engine.prepare import pick_device
from ablation.engine.weights import load_weights
from ablation.job import Machine, as_run, seed_fingerprints
from ablation.spec import from_config
from ablation.store import lookup

SEED_KEY = "run.seed"
#: The SLURM time limit to suggest: the longest job here times this margin (a node may be slower or busier).
TIMEOUT_MARGIN = 2.0


def duration(seconds: float) -> str:
    """'42 s', '3.3 min', '2.5 h': a console line's rough time."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@dataclass
class SweepEstimate:
    """What a sweep will do and cost here, job by job."""

    jobs: int = 0
    in_store: int = 0  # every seed has a FINISHED run with its fingerprint
    repeated: int = 0  # an earlier job of this sweep has its fingerprint
    job_s: list[float] = field(default_factory=list)  # each job that will run
    reused_s: float = 0.0  # composing the reused ones
    once_s: float = 0.0  # loading each network's weights and timing the machine: once per process
    speed: cost.Speed | None = None

    @property
    def seconds(self) -> float:
        return sum(self.job_s) + self.reused_s + self.once_s

    def text(self, timeout_min: float | None = None) -> str:
        """'sweep estimate: 12 jobs, 4 reused (...), 8 to run: about 3 min 2 sec here (cpu, 14.1 GF/s), ...'."""
        reused = self.in_store + self.repeated
        line = (
            f"sweep estimate: {self.jobs} jobs, {reused} reused ({self.in_store} finished in the store, "
            f"{self.repeated} repeat an earlier job's fingerprint), {len(self.job_s)} to run: about "
            f"{duration(self.seconds)} here"
        )
        if self.speed is not None:
            line += f" ({self.speed.device}, calibration {self.speed.device_gflops:.1f} GF/s)"
        if self.job_s:
            shortest, longest = duration(min(self.job_s)), duration(max(self.job_s))
            line += f"; per job {shortest}" + (f" to {longest}" if longest != shortest else "")
        if timeout_min is not None and self.job_s:
            needed = math.ceil(TIMEOUT_MARGIN * (max(self.job_s) + self.once_s) / 60)  # a job is its own process
            line += (
                f"; SLURM: hydra.launcher.timeout_min={timeout_min:g}, the longest job at this machine's speed x"
                f"{TIMEOUT_MARGIN:g} needs {needed} (scale by a node's calibration_gflops against this one's)"
            )
        return line


def measure_speed(device: torch.device) -> cost.Speed:
    """The calibration of the runs' device and of the CPU (one figure when they are the same), as a job measures
    it: the sweep's first job, in this process under Hydra's basic launcher, reuses it instead of timing again."""
    cpu = Machine.measure(torch.device("cpu")).calibration_gflops
    on_device = cpu if device.type == "cpu" else Machine.measure(device).calibration_gflops
    return cost.Speed(device.type, on_device, cpu)


def stage_sizes(spec: RunSpec) -> list[tuple[int, int]]:
    """The content's (h, w) at each scale, from the image's header."""
    return [planned_sizes(replace(spec, images=replace(spec.images, width=width)))[0] for width, _ in spec.stages()]


def with_seed(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The composed config of one job of a group that differs only in ``run.seed``."""
    seed = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{SEED_KEY}=")), None)
    return config if seed is None else {**config, "run": {**config["run"], "seed": int(seed)}}


class Weights:
    """Each source and network's weights loaded once, as a process of jobs loads them, and how long that took."""

    def __init__(self) -> None:
        self.loaded: dict[tuple, str] = {}
        self.seconds = 0.0

    def __call__(self, spec: RunSpec) -> str:
        """The SHA-256 of ``spec``'s weights."""
        key = (spec.weights.source, spec.network.arch, tuple(sorted(spec.weights.options.items())))
        if key not in self.loaded:
            started = time.perf_counter()
            self.loaded[key] = load_weights(spec.weights.source, spec.network.arch, **spec.weights.options).sha256
            self.seconds += time.perf_counter() - started
        return self.loaded[key]


def estimate_sweep(
    jobs: list[list[str]], compose: Callable[[list[str]], dict[str, Any]], experiment_id: str
) -> SweepEstimate:
    """Every job composed (once per group that differs only in its seed), fingerprinted, looked up, costed."""
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for overrides in jobs:
        groups.setdefault(tuple(o for o in overrides if not o.startswith(f"{SEED_KEY}=")), []).append(overrides)
    found, weights, seen = SweepEstimate(jobs=len(jobs)), Weights(), set()
    for group in groups.values():
        started = time.perf_counter()
        config = compose(group[0])
        setup_s = 2 * (time.perf_counter() - started)  # the sweeper's check and the job each compose it
        for overrides in group:
            job_config = with_seed(config, overrides)
            spec = from_config(job_config)
            device = pick_device(spec.device)
            spec = memory.fit(spec, device, check=False)  # images.width=max: the width the job will choose
            job_config = as_run(job_config, spec)
            found.speed = found.speed or measure_speed(device)
            keys = set(seed_fingerprints(job_config, spec, weights(spec), device.type).values())
            repeated = keys <= seen
            in_store = not repeated and all(lookup.find_finished(experiment_id, k) for k in keys)
            found.repeated, found.in_store = found.repeated + repeated, found.in_store + in_store
            if repeated or in_store:
                found.reused_s += setup_s
            else:
                found.job_s.append(cost.job_seconds(spec, stage_sizes(spec), found.speed, setup_s))
            seen |= keys
    found.once_s = weights.seconds + (cost.CALIBRATION_S if found.job_s else 0.0)  # reused jobs load to fingerprint
    return found
