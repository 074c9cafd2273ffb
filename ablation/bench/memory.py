"""The bench's memory table (``python -m ablation.bench --memory``): each size x precision x checkpointing run
in a fresh process for an honest peak, beside the engine's estimate (``engine.memory``), and the widest content
each device size fits by the estimate.

A case is VGG19 ``original`` with random weights, square content and style of seeded noise, Adam for a few
iterations. CPU: the process's peak resident set (VmHWM) against what it held before the transfer plus the
estimate; CUDA: ``torch.cuda.max_memory_allocated`` against the estimate (the allocator counts tensors only), once
cuDNN has tuned every convolution the case runs (:func:`cuda_tuning_peak`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ablation.engine import memory
from ablation.engine.hardware import synchronize
from ablation.engine.plan import RunSpec
from ablation.engine.prepare import Problem, pick_device, prepare
from ablation.engine.transfer import EngineOptions, new_state, stylize
from ablation.paths import CONF_DIR

#: Device sizes the table states the widest content for, GiB.
DEVICE_GIB = (8, 16, 24, 80)
MIB = 2**20


def square_pair(width: int, folder: Path) -> tuple[Path, Path]:
    """Content and style PNGs of seeded noise, ``width`` px square (a square pair is the issue's yardstick)."""
    rng = np.random.default_rng(0)
    paths = (folder / f"content-{width}.png", folder / f"style-{width}.png")
    for path in paths:
        if not path.is_file():
            Image.fromarray(rng.integers(0, 256, (width, width, 3), dtype=np.uint8)).save(path)
    return paths


def case_spec(width: int, precision: str, checkpointing: bool, device: str, folder: Path) -> RunSpec:
    """The run's own config path (Hydra compose -> spec) for one case."""
    from hydra import compose, initialize_config_dir

    from ablation import schema
    from ablation.spec import from_config

    content, style = square_pair(width, folder)
    overrides = [
        "variant=original", "weights=random", f"images.width={width}", f"images.content={content}",
        f"images.styles=[{style}]", f"run.precision={precision}", f"run.device={device}",
        f"run.activation_checkpointing={str(checkpointing).lower()}",
    ]  # fmt: skip
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return from_config(schema.plain(compose("config", overrides=overrides)))


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_case(width: int, precision: str, checkpointing: bool, iterations: int, device_name: str) -> dict:
    """One case in this process (a fresh one: ``run_case``): estimate, measured peak, seconds per iteration."""
    device = pick_device(device_name)
    with tempfile.TemporaryDirectory() as folder:
        spec = memory.fit(case_spec(width, precision, checkpointing, str(device), Path(folder)), device, check=False)
        work = memory.workload(spec, device, checkpointing)
        estimate = memory.estimate(work, device.type)
        tuning = cuda_tuning_peak(spec, device) if device.type == "cuda" else None
        before = 0.0 if device.type == "cuda" else _status_mib("VmRSS")
        problem = prepare(spec, device)
        state = new_state(problem.start_image([spec.seed]), spec.optim)
        started = time.perf_counter()
        done_at = []  # when each step's losses reached the host: steps 0 .. iterations - 1, then the final evaluation
        for _ in stylize(problem.net, problem.targets, state, iterations, 1, 1, problem.spec.engine):
            synchronize(device)
            done_at.append(time.perf_counter())
    first_s, seconds = steady_seconds(started, done_at[:-1])
    peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else _status_mib("VmHWM")
    ratios = interleaved_ratios(problem, iterations, device) if checkpointing else []
    parts = {k: v / MIB for k, v in asdict(estimate).items()}
    return {
        "width": width, "precision": precision, "checkpointing": checkpointing, "iterations": iterations,
        "recomputed_stages": spec.engine.recomputed_stages,
        "before_mib": before, "peak_mib": peak, "estimate_mib": before + estimate.total_bytes / MIB,
        "tuning_peak_mib": tuning,
        "s_per_it": seconds, "first_it_s": first_s, "on_off_ratios": ratios, "parts_mib": parts,
    }  # fmt: skip


def first_pass(spec: RunSpec, device: torch.device) -> None:
    """One prepare and step of the case (step 0's forward and backward, then the final evaluation's forward:
    every conv shape the case runs), all of it freed on return."""
    problem = prepare(spec, device)
    state = new_state(problem.start_image([spec.seed]), spec.optim)
    deque(stylize(problem.net, problem.targets, state, 1, 1, 1, problem.spec.engine), maxlen=0)
    synchronize(device)


def cuda_tuning_peak(spec: RunSpec, device: torch.device) -> float:
    """The peak of cuDNN's tuning, MiB: :func:`first_pass`'s, after which the peak is reset.

    CUDA runs set ``cudnn.benchmark``: the first call of each conv shape tries cuDNN's algorithms, each with the
    workspace it asks for, through torch's allocator, up to what the device has free. On an H200 (139 GiB free) that
    put ``max_memory_allocated`` at 33,429 MiB at 512 px and 132,517-132,701 MiB at 1024 and 2048 px, where the
    estimate is 0.6, 1.8 and 7 GiB: the tuning's peak is the device's, not the run's (an algorithm whose workspace
    does not fit is skipped). With every shape tuned and the peak reset, the case's own prepare and steps read what
    the run needs, the chosen algorithms' workspaces included."""
    first_pass(spec, device)
    peak = torch.cuda.max_memory_allocated(device) / MIB
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)  # the peak from here: what is allocated now, then the case's own
    return peak


def interleaved_ratios(problem: Problem, rounds: int, device: torch.device) -> list[float]:
    """Checkpointing's cost as the bench's speed rows measure theirs: one forward and backward with it over one
    without, ``rounds`` times in alternating order, in the checkpointed case's process once its peak is read.

    The two cases' own s/it come from two processes, one after the other, and the host's speed moves between
    them: at 2048 px fp32 on 2 cores the same code read 1.05x and 1.36x that way, and 1.10-1.28x (median 1.17x)
    interleaved in one process."""
    spec = problem.spec
    on = spec.engine
    off = replace(on, checkpointing=False)

    def seconds(options: EngineOptions) -> float:
        state = new_state(problem.start_image([spec.seed]), spec.optim)
        started = time.perf_counter()
        next(stylize(problem.net, problem.targets, state, 1, 1, 1, options))  # step 0: forward and backward
        synchronize(device)
        return time.perf_counter() - started

    seconds(off)  # its kernels built, as the case's own first iteration built the checkpointed ones
    ratios = []
    for r in range(rounds):
        if r % 2 == 0:
            off_s = seconds(off)
            ratios.append(seconds(on) / off_s)
        else:
            on_s = seconds(on)
            ratios.append(on_s / seconds(off))
    return ratios


def steady_seconds(started: float, done_at: list[float]) -> tuple[float, float]:
    """(the first iteration's seconds, the seconds of each one after it) from when each iteration ended.

    The first pays one-off costs: oneDNN builds its kernels for each new shape (a checkpointed stage's forward
    without gradients is another kernel), the allocator first touches its pages. At 512 px fp32 on 2 cores that
    was 5.7 s against 3.3 for each later one with checkpointing, 3.5 against 3.2 without: averaged over two
    iterations (and the final evaluation's forward pass), checkpointing read 1.49x the s/it where a 1000-step run
    pays about 1.05x. With one iteration there is no later one: both are the first's."""
    ends = [started, *done_at]
    first = ends[1] - ends[0]
    return first, (ends[-1] - ends[1]) / (len(ends) - 2) if len(ends) > 2 else first


def run_case(width: int, precision: str, checkpointing: bool, iterations: int, device: str) -> dict:
    """:func:`measure_case` in a fresh Python process, so each case's peak is its own."""
    argv = [sys.executable, "-m", "ablation.bench.memory", str(width), precision, str(int(checkpointing))]
    done = subprocess.run(
        [*argv, str(iterations), device], capture_output=True, text=True, env=os.environ.copy(), check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory case {argv[3:]} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def widest(device: torch.device, precision: str, folder: Path) -> dict[str, dict[str, int | None]]:
    """The widest square content each device size fits by the estimate (``memory.SAFETY`` kept free), without and
    with checkpointing, for this device type."""
    spec = case_spec(512, precision, False, str(device), folder)
    out: dict[str, dict[str, int | None]] = {}
    for gib in DEVICE_GIB:
        room = int(gib * 2**30 * memory.SAFETY)
        out[f"{gib} GiB"] = {
            mode: memory.largest_width(spec, device, room, on) for mode, on in (("off", False), ("on", True))
        }
    return out


def memory_bench(
    sizes: Sequence[int],
    precisions: Sequence[str],
    iterations: int,
    device: torch.device,
    log: Callable[[str], None],
    save: Callable[[dict[str, Any]], None] = lambda r: None,
) -> dict[str, Any]:
    """Every size x precision x checkpointing case, then the widest content per device size; ``save`` gets the
    cases so far after each."""
    cases: list[dict] = []
    for width in sizes:
        for precision in precisions:
            for checkpointing in (False, True):
                log(f"memory: {width} px {precision} checkpointing {'on' if checkpointing else 'off'} ...")
                cases.append(run_case(width, precision, checkpointing, iterations, str(device)))
                c = cases[-1]
                log(f"  peak {c['peak_mib']:.0f} MiB, estimate {c['estimate_mib']:.0f} MiB, {c['s_per_it']:.2f} s/it")
                save({"cases": cases, "device_type": device.type})
    with tempfile.TemporaryDirectory() as folder:
        fits = {p: widest(device, p, Path(folder)) for p in precisions}
    return {"cases": cases, "widest": fits, "device_type": device.type}


def _mode(case: dict) -> str:
    if not case["checkpointing"]:
        return "off"
    n = case.get("recomputed_stages")
    return f"on ({n} stage{'' if n == 1 else 's'} recomputed)"


def render(results: dict[str, Any], machine: str, command: str) -> str:
    """memory.md: the measured peaks against the estimate, and the widest content per device size."""
    cuda = results["device_type"] == "cuda"
    peak = (
        "max_memory_allocated once cuDNN has tuned every convolution (a first prepare and step; that pass's own "
        "peak, up to the device's free memory, is the first pass column)"
        if cuda
        else "peak resident set (VmHWM) of the whole process"
    )
    tuning = " first pass MiB (cuDNN tuning) |" if cuda else ""
    lines = [
        "# Memory: measured peak against the estimate",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"VGG19 `original`, random weights, square content and style, Adam. Peak: {peak}; before: what the process "
        "held before the transfer (interpreter, torch, Hydra); estimate: before + `engine.memory.estimate`; s/it: "
        "each iteration after the first, which is given apart (it builds kernels and touches fresh memory).",
        "",
        "| width | precision | checkpointing | before MiB | peak MiB | estimate MiB | estimate / peak | s/it | "
        f"first it s |{tuning}",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else ""),
    ]
    by_key = {(c["width"], c["precision"], c["checkpointing"]): c for c in results["cases"]}
    for c in results["cases"]:
        lines.append(
            f"| {c['width']} | {c['precision']} | {_mode(c)} | {c['before_mib']:.0f} | "
            f"{c['peak_mib']:.0f} | {c['estimate_mib']:.0f} | {c['estimate_mib'] / c['peak_mib']:.2f} | "
            f"{c['s_per_it']:.2f} | {c['first_it_s']:.2f} |" + (f" {c['tuning_peak_mib']:.0f} |" if cuda else "")
        )
    lines += [
        "",
        "Checkpointing on against off at the same width and precision (s/it: the two cases' processes; in one "
        "process: a forward and backward with it over one without, rounds in alternating order):",
        "",
    ]
    lines += [
        "| width | precision | peak on / off | s/it on / off | in one process, median (min-max) |",
        "|---:|---|---:|---:|---|",
    ]
    for (width, precision, on), c in by_key.items():
        off = by_key.get((width, precision, False))
        if on and off:
            ratios = c["on_off_ratios"]  # one a round, at least one round
            spread = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            lines.append(
                f"| {width} | {precision} | {c['peak_mib'] / off['peak_mib']:.2f} | "
                f"{c['s_per_it'] / off['s_per_it']:.2f} | {spread} |"
            )
    lines += ["", f"Widest square content by the estimate ({memory.SAFETY:.0%} of the device's memory), px:", ""]
    lines += ["| precision | device | checkpointing off | on |", "|---|---|---:|---:|"]
    for precision, fits in results["widest"].items():
        for gib, widths in fits.items():
            lines.append(f"| {precision} | {gib} | {widths['off']} | {widths['on']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """One case, printed as JSON (what :func:`run_case` starts)."""
    p = argparse.ArgumentParser("python -m ablation.bench.memory", description="one memory case (see --memory)")
    for name, kind in (("width", int), ("precision", str), ("checkpointing", int), ("iterations", int)):
        p.add_argument(name, type=kind)
    p.add_argument("device", nargs="?", default="auto")
    args = p.parse_args(argv)
    case = measure_case(args.width, args.precision, bool(args.checkpointing), args.iterations, args.device)
    print(json.dumps(case))
    return 0


if __name__ == "__main__":
    sys.exit(main())
