"""Where an iteration's time goes beyond the convolutions: ``torch.profiler`` self times by category."""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.profiler_util import FunctionEvent

from ablation.bench.contenders import EngineRunner
from ablation.engine.prepare import Problem
from ablation.engine.transfer import EngineOptions

#: Substrings of an op's (or an enclosing op's) name, innermost first; backward ops carry their forward's name.
CATEGORIES = {
    "convolutions": ("conv",),
    "Gram matmuls": ("bmm", "aten::mm", "addmm", "matmul"),
    "pooling": ("pool",),
    "activations": ("relu", "threshold", "tanh", "leaky"),
    "copies": ("copy", "clone", "contiguous"),
}
OTHER = "losses and the rest"


def category(event: FunctionEvent) -> str:
    """The category of one profiler event: ``optimiser`` anywhere inside ``Optimizer.*`` (Adam's step and
    zero_grad), else the first category whose substring names the event or, failing that, an enclosing op."""
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    if any(name.startswith("Optimizer.") for name in names):
        return "optimiser"
    for name in names:
        for kind, keys in CATEGORIES.items():
            if any(key in name for key in keys):
                return kind
    return OTHER


def profile_ms(problem: Problem, options: EngineOptions, iterations: int) -> dict[str, Any]:
    """ms per iteration of each category over ``iterations`` profiled iterations of the engine (after two
    warm-up iterations): CPU self time, or the device's self time on CUDA. The categories add up to the
    profiled time, which the profiler's own overhead makes a little longer than an unprofiled iteration."""
    cuda = problem.device.type == "cuda"
    runner = EngineRunner(problem, options, [problem.spec.seed], 1, iterations + 3)
    runner(), runner()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(iterations):
            runner()
    totals = dict.fromkeys([*CATEGORIES, "optimiser", OTHER], 0.0)
    for event in prof.events():
        totals[category(event)] += (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1000
    return {"iterations": iterations, "ms_per_iteration": {k: v / iterations for k, v in totals.items()}}
