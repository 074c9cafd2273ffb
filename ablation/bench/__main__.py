"""Speed and memory benchmark: the engine against a tutorial and a strong baseline loop, the machine's peak
and this iteration's per-layer kernel limit.

    python -m ablation.bench                    # CPU: original at 256 px; CUDA: every variant at 256, 512, 1024 px
    python -m ablation.bench --precision fp32 --layouts nhwc --iters 48   # the CPU fp32 targets, read closer
    python -m ablation.bench --quick            # a smoke run: 64 px, original, a few iterations
    python -m ablation.bench --sizes 256 --variants original --precision fp32,bf16 --layouts nchw,nhwc --profile
    python -m ablation.bench --device cuda --variants original --profile   # CUDA, one variant: the default runs all

For each variant (the files in conf/variant) and size it times Adam iterations of the engine (the project's
own ``prepare`` and ``stylize``, for every precision x layout asked for), the tutorial baseline and the strong
baseline, interleaved in one process after a warm-up, so a machine that gets busier hurts every contender
alike; checks they start from the same loss; and reports median and min ms per iteration, speed-ups, analytic
conv GFLOP, GF/s, efficiency against the single-kernel peaks, the share of the per-layer limit reached, and
peak memory. Then the loss deviation of tf32/bf16, batched seeds against one, whole CUDA runs, the profile
(``--profile``) and the targets, pass or FAIL, into reports/bench/bench.md and bench.json; until then
bench.partial.json holds what each stage has measured, so a bench stopped early keeps it. A FAIL of the
speed-up over the strong baseline says "out of reach here" when even 100% of the per-layer limit would miss it.
A benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from argparse import RawDescriptionHelpFormatter as RawDescription
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ablation.bench import memory
from ablation.bench.probes import machine
from ablation.bench.render import write
from ablation.bench.settings import LAYOUTS, BenchError, Settings
from ablation.bench.suite import run_bench
from ablation.engine.backends import PRECISIONS, native_bf16
from ablation.engine.errors import UserError
from ablation.engine.prepare import pick_device
from ablation.paths import REPORTS_DIR, variant_names

CPU_DEFAULTS: dict[str, Any] = {
    "sizes": "256", "variants": "original", "iters": 16, "chunk": 1, "warmup": 2, "check_iters": 300,
    "check_size": 128, "batch_size_px": 256, "matmul_n": 2048, "conv_side": 64, "peak_s": 0.5,
}  # fmt: skip
#: What an option left out means: on a CPU, on a CUDA device, or with --quick (a smoke run on either).
DEFAULTS = {
    "cpu": CPU_DEFAULTS,
    "cuda": {**CPU_DEFAULTS, "sizes": "256,512,1024", "variants": "all", "iters": 100, "chunk": 10,
             "matmul_n": 8192, "conv_side": 128},
    "quick": {**CPU_DEFAULTS, "sizes": "64", "variants": "original", "iters": 3, "warmup": 1, "check_iters": 20,
              "check_size": 64, "batch_size_px": 64, "matmul_n": 512, "conv_side": 32, "peak_s": 0.1},
}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m ablation.bench", description=__doc__, formatter_class=RawDescription)
    add = p.add_argument
    add("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add("--sizes", help="content widths in px, comma-separated (CPU: 256, the targets' size; CUDA: 256,512,1024)")
    add("--variants", help=f"comma-separated, or all (CPU: original; CUDA: all): {', '.join(variant_names())}")
    add("--precision", dest="precisions", help="CUDA: fp32,tf32,bf16; CPU: fp32,bf16 (fp32 without native bf16)")
    add("--layouts", default="nchw,nhwc", help="engine layouts: nchw, nhwc (channels_last)")
    add("--compile", action="store_true", help="also time each engine setting with torch.compile")
    add("--iters", type=int, help="timed iterations per contender (CPU 16, CUDA 100)")
    add("--chunk", type=int, help="iterations per timing sample (CPU 1, CUDA 10)")
    add("--warmup", type=int, help="untimed samples per contender (2)")
    add("--no-baseline", dest="baseline", action="store_false", help="time only the engine")
    add("--weights", default="auto", help="auto (torchvision if cached, else random) | torchvision | random | PATH")
    add("--check-iters", type=int, help="tf32/bf16 loss deviation: iterations of one whole run (300)")
    add("--check-size", type=int, help="tf32/bf16 loss deviation: content width in px (128)")
    add("--batch-seeds", type=int, default=4, help="seeds in the batched-seeds timing (0: skip)")
    add("--batch-size-px", type=int, help="content width of the batched-seeds timing (256)")
    add("--full-run-iters", type=int, default=1000, help="CUDA: one whole run of original at 512 px")
    add("--profile", action="store_true", help="torch.profiler: where the default engine setting's time goes")
    add("--out", default=str(REPORTS_DIR / "bench"), help="folder for bench.md and bench.json")
    add("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    add("--quick", action="store_true", help="a smoke run: 64 px, original, 3 iterations, small peaks")
    add("--memory", action="store_true", help="the memory table instead: measured peak vs the estimate, "
        "checkpointing off and on, per --sizes (512,1024,2048; --quick 64,128), --precision, --iters (2) each "
        "(s/it from those after the first; checkpointing's cost also timed in one process, --iters rounds), into "
        "memory.md and memory.json (memory.partial.json: the cases so far)")  # fmt: skip
    return p


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BenchError(f"{option} {text!r}: give comma-separated integers, e.g. {option} 128,256") from None
    if not values:
        raise BenchError(f"{option} is empty: give at least one value")
    return values


def _choices(text: str, option: str, allowed: Sequence[str], what: str = "") -> tuple[str, ...]:
    """The comma-separated values of ``option``, each one of ``allowed`` (``what`` names the first that is not)."""
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in chosen if v not in allowed] or ([] if chosen else [text])
    if unknown:
        raise BenchError(f"{option} {unknown[0]!r}{what}: choose from {', '.join(allowed)}")
    return chosen


def parse_args(argv: Sequence[str] | None) -> Settings:
    """Settings from the command line, defaults filled in for the device (or --quick), or a one-line refusal."""
    args = parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads={args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    given = {k: v for k, v in vars(args).items() if v is not None}
    opts = {**DEFAULTS["quick" if args.quick else "cuda" if cuda else "cpu"], **given, "device": str(device)}
    opts["sizes"] = _ints(opts["sizes"], "--sizes")
    variants = opts["variants"]
    opts["variants"] = variant_names() if variants == "all" else _choices(variants, "--variants", variant_names(),
                                                                          " is not a variant")  # fmt: skip
    default_precisions = "fp32,tf32,bf16" if cuda else "fp32,bf16" if native_bf16(device) else "fp32"
    opts["precisions"] = _choices(opts.get("precisions", default_precisions), "--precision", PRECISIONS)
    opts["layouts"] = _choices(opts["layouts"], "--layouts", tuple(LAYOUTS))
    if "tf32" in opts["precisions"] and not cuda:
        raise BenchError("--precision tf32 only changes CUDA convolutions: on a CPU use fp32,bf16")
    iters, chunk = opts["iters"], opts["chunk"]
    if iters < 1 or chunk < 1:
        raise BenchError(f"--iters={iters} and --chunk={chunk} must be >= 1")
    if iters < chunk:
        raise BenchError(f"--iters={iters} is below --chunk={chunk}: give at least one chunk of iterations")
    if min(opts["warmup"], opts["check_iters"], opts["batch_seeds"]) < 0:
        raise BenchError("--warmup, --check-iters and --batch-seeds must be >= 0")
    if min(opts["sizes"]) < 16:
        raise BenchError(f"--sizes {min(opts['sizes'])} px is too small: the network needs at least 16 px")
    return Settings(**{f.name: opts[f.name] for f in fields(Settings)})


def memory_main(argv: Sequence[str] | None, command: str) -> int:
    """``--memory``: each case in its own process (``bench.memory``), written beside bench.md."""
    args = parser().parse_args(argv)
    device = pick_device(args.device)
    sizes = _ints(args.sizes or ("64,128" if args.quick else "512,1024,2048"), "--sizes")
    default = "fp32,bf16" if native_bf16(device) else "fp32"
    precisions = _choices(args.precisions or default, "--precision", PRECISIONS)
    iterations = args.iters or (1 if args.quick else 2)
    if iterations < 1:
        raise BenchError(f"--iters={iterations} must be >= 1: each case times at least one iteration")
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    out = Path(args.out)
    partial = out / "memory.partial.json"
    results = memory.memory_bench(sizes, precisions, iterations, device, log, lambda r: save(r, partial))
    hardware = machine(device)
    threads = hardware.get("torch_threads")
    where = f"{hardware['device']}, {hardware.get('cpu_model')}, {threads} threads, torch {torch.__version__}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps({"command": command, "machine": hardware, **results}, indent=1))
    (out / "memory.md").write_text(memory.render(results, where, command))
    partial.unlink(missing_ok=True)
    print(f"wrote {out / 'memory.md'} and {out / 'memory.json'}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    command = "python -m ablation.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("once", message=".*without native bf16")  # the bench reports it once, in the peaks
    try:
        if parser().parse_args(argv).memory:
            return memory_main(argv, command)
        settings = parse_args(argv)
        partial = Path(settings.out) / "bench.partial.json"
        results = run_bench(
            settings, log=lambda line: print(line, file=sys.stderr, flush=True), save=lambda r: save(r, partial)
        )
    except UserError as err:  # a bad option, value, file or device; anything else is a bug: its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write(results, command, Path(settings.out))
    partial.unlink(missing_ok=True)
    print(f"wrote {' and '.join(map(str, paths))}", file=sys.stderr)
    return 0


def save(results: dict[str, Any], path: Path) -> None:
    """The results so far, as JSON: what a bench stopped before its end (a time limit, a lost machine) measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
