"""One case: a variant at one size. Every contender and the engine's per-layer limits warmed up, timed
interleaved, checked to solve the same problem, and turned into rows with speed-ups, GF/s, efficiency against the
peak and share of the limit."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ablation.bench.contenders import BaselineLoop, EngineRunner, engine_name, held_tensors, time_interleaved
from ablation.bench.flops import conv_plan, iteration_gflop
from ablation.bench.probes import LimitRunner, MemoryProbe, cpu_jiffies, stolen_share, tensors_mib
from ablation.bench.settings import LAYOUTS, Settings
from ablation.engine.backends import configure_backends
from ablation.engine.network import layer_names
from ablation.engine.prepare import Problem
from ablation.engine.transfer import TOTAL, EngineOptions, loss_terms


@dataclass
class Contender:
    name: str  # tutorial, strong, or the engine's precision/layout[/compile]
    run: Callable[[], Any]  # runs one timing sample (``chunk`` iterations)
    precision: str
    gflop: float  # analytic conv GFLOP per iteration
    peak_mib: float | None
    step0_total: float
    limit: str | None = None  # the name its per-layer limit is timed under in the rounds (engine only)


@dataclass
class Row:
    """One contender at one variant and size; ratios are filled in once every contender is timed."""

    variant: str
    size_wh: str
    contender: str
    gflop: float
    peak_mib: float | None
    step0_total: float
    samples_ms: list[float]
    limit_samples_ms: list[float] | None  # the per-layer limit's ms, one per round (engine only)
    median_ms: float = field(init=False)
    min_ms: float = field(init=False)
    gflops: float = field(init=False)
    limit_ms: float | None = field(init=False)  # the limit's median
    efficiency: float | None = None  # achieved GF/s / the machine's conv peak in this precision
    limit_share: float | None = None  # :func:`speedup` of ours over the limit: the share of it we reach
    limit_share_quartiles: tuple[float, float] | None = None
    speedup_tutorial: float | None = None  # :func:`speedup` over the tutorial
    speedup_strong: float | None = None  # :func:`speedup` over the strong baseline
    speedup_strong_quartiles: tuple[float, float] | None = None  # how far the rounds' ratios spread
    # :func:`speedup` of the limit over the strong baseline: the speed-up this row would read at 100% of its limit,
    # the most the engine can show without kernels faster than the limit's own
    strong_ceiling: float | None = None
    stolen_share: float | None = None  # of the CPU time during the rounds, what the hypervisor gave other guests

    def __post_init__(self) -> None:
        self.median_ms, self.min_ms = statistics.median(self.samples_ms), min(self.samples_ms)
        self.gflops = self.gflop / (self.median_ms / 1000)
        self.limit_ms = statistics.median(self.limit_samples_ms) if self.limit_samples_ms else None


def engine_options(settings: Settings) -> list[EngineOptions]:
    options = [EngineOptions(p, LAYOUTS[layout]) for p in settings.precisions for layout in settings.layouts]
    return options + [replace(o, compile=True) for o in options if settings.compile]


def _warm_up(run: Callable[[], Any], settings: Settings, problem: Problem, net: torch.nn.Module) -> float | None:
    """Run the warm-up samples (at least one) under the memory probe: the contender's peak MiB."""
    probe = MemoryProbe(problem.device)
    for _ in range(max(settings.warmup, 1)):
        run()
    working = probe.peak_mib()
    return None if working is None else working + tensors_mib(net, held_tensors(problem))


def engine_contenders(problem: Problem, settings: Settings) -> tuple[list[Contender], dict[str, LimitRunner]]:
    """The engine in every precision x layout asked for, warmed up, and each one's per-layer limit (one per
    precision and layout: compiled or not, the same kernels), by the name it is timed under."""
    spec, (h, w) = problem.spec, problem.content.shape[-2:]
    gflop = iteration_gflop(conv_plan(spec.network.arch, spec.last_layer, h, w, True), spec.last_layer, False)
    style_layers = [n for n, wt in spec.loss.style_layer_weights().items() if wt and spec.loss.style_weight]
    calls = max(settings.warmup, 1) + settings.iters // settings.chunk
    contenders, limits = [], {}
    for options in engine_options(settings):
        runner = EngineRunner(problem, options, [spec.seed], settings.chunk, calls)
        peak = _warm_up(runner, settings, problem, runner.net)
        limit = "limit " + engine_name(replace(options, compile=False))
        if limit not in limits:
            limits[limit] = LimitRunner(runner.net, h, w, style_layers, options, settings.chunk)
            for _ in range(max(settings.warmup, 1)):
                limits[limit]()
        contenders.append(
            Contender(engine_name(options), runner, options.precision, gflop, peak, runner.step0_total, limit)
        )
    return contenders, limits


def baseline_contenders(problem: Problem, settings: Settings) -> list[Contender]:
    """The tutorial and the strong baseline, warmed up."""
    spec, (h, w) = problem.spec, problem.content.shape[-2:]
    arch, last = spec.network.arch, spec.last_layer
    gflop = {
        "tutorial": iteration_gflop(conv_plan(arch, layer_names(arch)[-1], h, w, False), last, True),
        "strong": iteration_gflop(conv_plan(arch, last, h, w, True), last, False),
    }
    contenders = []
    for name in gflop:
        loop = BaselineLoop(problem, problem.weights, name == "strong", settings.chunk)
        peak = _warm_up(loop, settings, problem, loop.features)
        contenders.append(Contender(name, loop, "fp32", gflop[name], peak, loop.step0_total))
    return contenders


def check_same_problem(problem: Problem, contenders: list[Contender]) -> float:
    """Every fp32 contender must start from the engine's step-0 loss (the tutorial only where its pools, which
    round down, agree: both sides multiples of 16), or the speed-ups compare different problems: a bug."""
    h, w = problem.content.shape[-2:]
    options = replace(problem.spec.engine, precision="fp32", compile=False)
    configure_backends(options, problem.device)
    with torch.no_grad():
        start = problem.start_image([problem.spec.seed])
        reference = float(loss_terms(problem.net, start, problem.targets, options)[0, TOTAL])
    for c in contenders:
        compared = c.precision == "fp32" and (c.name != "tutorial" or (h % 16 == 0 and w % 16 == 0))
        if compared and not math.isclose(c.step0_total, reference, rel_tol=1e-4):
            raise RuntimeError(f"{c.name}'s step-0 loss {c.step0_total:.7g} is not the engine's {reference:.7g}")
    return reference


def speedup(theirs: list[float], ours: list[float]) -> tuple[float, float, float]:
    """Their ms over ours round by round (:func:`time_interleaved` runs each contender once a round, so a round's
    two samples share the machine's state): the median ratio and the quartiles. On a shared 2-core host one
    iteration's time spreads by a third either way, and the ratio of two medians of 8 samples read 1.16 and 1.51 on
    two runs of the same code: the quartiles say how far a ratio is to be trusted."""
    ratios = sorted(t / o for t, o in zip(theirs, ours, strict=True))
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


def bench_case(problem: Problem, settings: Settings, peaks: dict[str, float]) -> list[Row]:
    """Time every engine setting, its per-layer limit and both baselines on one variant and size, interleaved."""
    contenders, limits = engine_contenders(problem, settings)
    contenders += baseline_contenders(problem, settings) if settings.baseline else []
    check_same_problem(problem, contenders)
    rounds = settings.iters // settings.chunk
    runners = {c.name: c.run for c in contenders} | limits
    before = cpu_jiffies()
    samples = time_interleaved(runners, settings.chunk, rounds, problem.device)
    stolen = stolen_share(before, cpu_jiffies())
    h, w = problem.content.shape[-2:]
    rows = {
        c.name: Row(
            problem.spec.variant, f"{w}x{h}", c.name, c.gflop, c.peak_mib, c.step0_total, samples[c.name],
            samples[c.limit] if c.limit else None,
        )
        for c in contenders
    }  # fmt: skip
    for c, row in zip(contenders, rows.values(), strict=True):
        row.efficiency, row.stolen_share = row.gflops / peaks[f"conv_{c.precision}"], stolen
        if row.limit_samples_ms:
            row.limit_share, *quartiles = speedup(row.limit_samples_ms, row.samples_ms)
            row.limit_share_quartiles = tuple(quartiles)
        if "tutorial" in rows:
            row.speedup_tutorial = speedup(rows["tutorial"].samples_ms, row.samples_ms)[0]
        if "strong" in rows:
            row.speedup_strong, *quartiles = speedup(rows["strong"].samples_ms, row.samples_ms)
            row.speedup_strong_quartiles = tuple(quartiles)
            if row.limit_samples_ms:
                row.strong_ceiling = speedup(rows["strong"].samples_ms, row.limit_samples_ms)[0]
    return list(rows.values())
