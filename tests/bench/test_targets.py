"""The targets table: which row each target reads, and pass / FAIL / not measured, on hand-made results."""

from __future__ import annotations

import pytest

from ablation.bench.render import _layouts, _targets
from ablation.bench.targets import check_targets


def row(size_wh: str, contender: str, median_ms: float, speedup_strong=None, limit_share=None) -> dict:
    return {"variant": "original", "size_wh": size_wh, "contender": contender, "median_ms": median_ms,
            "speedup_strong": speedup_strong, "limit_share": limit_share}  # fmt: skip


def results(device: str, native: bool, layout: str, rows: list, **extra) -> dict:
    layouts = dict.fromkeys(("fp32", "tf32", "bf16"), layout)
    return {"machine": {"device": device}, "native_bf16": native, "default_layouts": layouts, "rows": rows, **extra}


def verdicts(targets: list[dict]) -> list:
    return [t["pass"] for t in targets]


def test_cpu_targets_read_the_default_layout_at_256_px():
    rows = [
        row("256x341", "fp32/nchw", 500.0, speedup_strong=0.9, limit_share=0.5),  # not the default layout here
        row("256x341", "fp32/nhwc", 400.0, speedup_strong=1.3, limit_share=0.91)
        | {"speedup_strong_quartiles": (1.1, 1.4)},
        row("256x341", "bf16/nhwc", 220.0),
        row("128x171", "fp32/nhwc", 100.0, speedup_strong=2.0, limit_share=0.99),  # not the target's size
    ]
    deviation = {"iterations": 300, "size_px": 128, "rel_deviation": {"bf16": 0.0084}}
    targets = check_targets(results("cpu", True, "nhwc", rows, deviation=deviation))
    # 1.3 >= 1.25 pass; 0.91 < 0.92 FAIL; 400 / 220 = 1.82 >= 1.7 pass; 0.84% <= 2% pass; GPU: not measured
    assert verdicts(targets) == [True, False, True, True, None, None]
    assert [t["value"] for t in targets[:4]] == pytest.approx([1.3, 0.91, 400 / 220, 0.0084])
    # the speed-up is a median of the rounds' ratios: the table shows how far they spread
    assert "| 1.3 (quartiles 1.10-1.40) | >= 1.25 | pass |" in "\n".join(_targets({"targets": targets}))


def test_no_native_bf16_leaves_the_bf16_targets_unmeasured():
    rows = [
        row("256x341", "fp32/nchw", 400.0, speedup_strong=1.2, limit_share=0.95),
        row("256x341", "bf16/nchw", 90.0),
    ]
    targets = check_targets(results("cpu", False, "nchw", rows))
    assert verdicts(targets) == [False, True, None, None, None, None]  # 1.2 < 1.25; 0.95 >= 0.92
    assert "no native bf16" in targets[2]["note"] and "no native bf16" in targets[3]["note"]


def test_a_speed_up_failing_below_its_ceiling_says_it_is_out_of_reach_here():
    # the strong baseline is 1.23x the limit: even at 100% of the limit the engine reads 1.23 < 1.25
    rows = [row("256x341", "fp32/nhwc", 400.0, speedup_strong=1.18, limit_share=0.96) | {"strong_ceiling": 1.23}]
    table = "\n".join(_targets({"targets": check_targets(results("cpu", False, "nhwc", rows))}))
    assert "| 1.18 | >= 1.25 | FAIL (out of reach here: 1.23 at 100% of the per-layer limit) |" in table
    rows[0]["strong_ceiling"] = 1.36  # reachable: a plain FAIL
    table = "\n".join(_targets({"targets": check_targets(results("cpu", False, "nhwc", rows))}))
    assert "| 1.18 | >= 1.25 | FAIL |" in table


def test_gpu_targets_from_whole_runs_and_batched_seeds():
    batched = {"seeds": 4, "size_px": 256, "time_ratio": 1.6}
    targets = check_targets(results("cuda", True, "nchw", [], full_run={"best_s": 8.2}, batched=batched))
    assert verdicts(targets) == [None, None, None, None, True, False]  # 8.2 s <= 10 s; 1.6 > 1.5


def test_the_header_names_the_layout_auto_gives_each_precision():
    """One word where every precision gets the same layout (each CPU so far), each precision's where they differ
    (CUDA: NCHW for fp32, NHWC for the tensor-core precisions)."""
    assert _layouts({"default_layouts": {"fp32": "nhwc", "bf16": "nhwc"}}) == "nhwc"
    cuda = {"fp32": "nchw", "tf32": "nhwc", "bf16": "nhwc"}
    assert _layouts({"default_layouts": cuda}) == "fp32 nchw, tf32 nhwc, bf16 nhwc"
