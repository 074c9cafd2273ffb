"""What one bench run measures, as chosen on the command line (``__main__`` fills in the defaults)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ablation.engine.errors import UserError

LAYOUTS = {"nchw": False, "nhwc": True}  # name -> EngineOptions.channels_last


class BenchError(UserError):
    """A benchmark option that cannot be used."""


@dataclass(frozen=True)
class Settings:
    device: str
    sizes: tuple[int, ...]  # content widths, px
    variants: Sequence[str]
    precisions: tuple[str, ...]
    layouts: tuple[str, ...]
    compile: bool
    iters: int  # timed iterations per contender
    chunk: int  # iterations per timing sample
    warmup: int  # untimed samples per contender
    baseline: bool
    weights: str
    check_iters: int  # tf32/bf16 deviation: iterations of a whole run at check_size
    check_size: int
    batch_seeds: int
    batch_size_px: int
    full_run_iters: int  # CUDA: one whole run of original at 512 px, timed end to end
    matmul_n: int
    conv_side: int
    peak_s: float  # seconds of timed blocks per single-kernel peak (the fastest block counts)
    profile: bool
    out: str
