"""Speed and memory benchmark: the engine against a tutorial and a strong baseline loop, the machine's peak
and this iteration's per-layer kernel limit.

    python -m ablation.bench                    # CPU: 128 and 256 px; CUDA: 256, 512, 1024 px; every variant
    python -m ablation.bench --quick            # a smoke run: 64 px, original, a few iterations
    python -m ablation.bench --sizes 256 --variants original --precision fp32,bf16 --layouts nchw,nhwc --profile

For each variant (the files in conf/variant) and size it times Adam iterations of the engine (the project's
own ``prepare`` and ``stylize``, for every precision x layout asked for), the tutorial baseline and the strong
baseline, interleaved in one process after a warm-up, so a machine that gets busier hurts every contender
alike; checks they start from the same loss; and reports median and min ms per iteration, speed-ups, analytic
conv GFLOP, GF/s, efficiency against the single-kernel peaks, the share of the per-layer limit reached, and
peak memory. Then the loss deviation of tf32/bf16, batched seeds against one, whole CUDA runs, the profile
(``--profile``) and the targets, pass or FAIL, into reports/bench/bench.md and bench.json.
A benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ablation.bench.render import write
from ablation.bench.settings import LAYOUTS, BenchError, Settings
from ablation.bench.suite import run_bench
from ablation.engine.backends import PRECISIONS, native_bf16
from ablation.engine.errors import UserError
from ablation.engine.prepare import pick_device
from ablation.paths import REPORTS_DIR, variant_names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ablation.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--sizes", help="content widths in px, comma-separated (CPU: 128,256; CUDA: 256,512,1024)")
    p.add_argument("--variants", default="all", help=f"comma-separated, or all: {', '.join(variant_names())}")
    p.add_argument(
        "--precision", help="engine precisions: CUDA fp32,tf32,bf16; CPU fp32,bf16 (fp32 without native bf16)"
    )
    p.add_argument("--layouts", default="nchw,nhwc", help="engine layouts: nchw, nhwc (channels_last)")
    p.add_argument("--compile", action="store_true", help="also time each engine setting with torch.compile")
    p.add_argument("--iters", type=int, help="timed iterations per contender (CPU 8, CUDA 100)")
    p.add_argument("--chunk", type=int, help="iterations per timing sample (CPU 1, CUDA 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed samples per contender")
    p.add_argument("--no-baseline", action="store_true", help="time only the engine")
    p.add_argument(
        "--weights", default="auto", help="auto (torchvision if cached, else random) | torchvision | random | PATH"
    )
    p.add_argument("--check-iters", type=int, default=300, help="tf32/bf16 deviation: iterations of one whole run")
    p.add_argument("--check-size", type=int, default=128, help="tf32/bf16 deviation: content width in px")
    p.add_argument("--batch-seeds", type=int, default=4, help="seeds in the batched-seeds timing (0: skip)")
    p.add_argument("--batch-size-px", type=int, default=256, help="content width of the batched-seeds timing")
    p.add_argument("--full-run-iters", type=int, default=1000, help="CUDA: a whole run of original at 512 px")
    p.add_argument("--profile", action="store_true", help="torch.profiler breakdown of the default engine setting")
    p.add_argument("--out", default=str(REPORTS_DIR / "bench"), help="folder for bench.md and bench.json")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 64 px, original, 3 iterations, small peaks")
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
    args = parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads={args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    quick = args.quick
    sizes = _ints(args.sizes, "--sizes") if args.sizes else (64,) if quick else (256, 512, 1024) if cuda else (128, 256)
    variants = tuple(variant_names()) if args.variants == "all" and not quick else ("original",) if quick else None
    variants = variants or _choices(args.variants, "--variants", variant_names(), " is not a variant")
    precisions = _choices(
        args.precision or ("fp32,tf32,bf16" if cuda else "fp32,bf16" if native_bf16(device) else "fp32"),
        "--precision",
        PRECISIONS,
    )
    if "tf32" in precisions and not cuda:
        raise BenchError("--precision tf32 only changes CUDA convolutions: on a CPU use fp32,bf16")
    iters = args.iters or (3 if quick else 100 if cuda else 8)
    chunk = args.chunk or (10 if cuda and not quick else 1)
    if iters < 1 or chunk < 1:
        raise BenchError(f"--iters={iters} and --chunk={chunk} must be >= 1")
    if iters < chunk:
        raise BenchError(f"--iters={iters} is below --chunk={chunk}: give at least one chunk of iterations")
    if args.warmup < 0 or args.check_iters < 0 or args.batch_seeds < 0:
        raise BenchError("--warmup, --check-iters and --batch-seeds must be >= 0")
    if min(sizes) < 16:
        raise BenchError(f"--sizes {min(sizes)} px is too small: the network needs at least 16 px")
    return Settings(
        device=str(device),
        sizes=sizes,
        variants=variants,
        precisions=precisions,
        layouts=_choices(args.layouts, "--layouts", tuple(LAYOUTS)),
        compile=args.compile,
        iters=iters,
        chunk=chunk,
        warmup=min(args.warmup, 1) if quick else args.warmup,
        baseline=not args.no_baseline,
        weights=args.weights,
        check_iters=min(args.check_iters, 20) if quick else args.check_iters,
        check_size=min(args.check_size, 64) if quick else args.check_size,
        batch_seeds=args.batch_seeds,
        batch_size_px=64 if quick else args.batch_size_px,
        full_run_iters=args.full_run_iters,
        matmul_n=512 if quick else 8192 if cuda else 2048,
        conv_side=32 if quick else 128 if cuda else 64,
        profile=args.profile,
        out=args.out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    command = "python -m ablation.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("once", message=".*without native bf16")  # the bench reports it once, in the peaks
    try:
        settings = parse_args(argv)
        results = run_bench(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    except UserError as err:  # a bad option, value, file or device; anything else is a bug: its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write(results, command, Path(settings.out))
    print(f"wrote {' and '.join(map(str, paths))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
