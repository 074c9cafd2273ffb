"""The memory table's seconds per iteration: the iterations after the first, which is given apart; and
checkpointing's cost measured in one process, beside the ratio of the two cases' own s/it."""

from __future__ import annotations

import pytest

from ablation.bench.memory import render, steady_seconds


def test_the_first_iteration_is_apart_from_the_steady_ones() -> None:
    # ended at 5.7 s (kernels built, memory first touched), then every 3.3 s
    assert steady_seconds(100.0, [105.7, 109.0, 112.3]) == pytest.approx((5.7, 3.3))
    assert steady_seconds(100.0, [105.7]) == pytest.approx((5.7, 5.7))  # one iteration: nothing after it


def test_checkpointing_costs_its_steady_seconds_not_its_first_iteration() -> None:
    def case(on: bool, first: float, steady: float, ratios: list[float]) -> dict:
        return {"width": 512, "precision": "fp32", "checkpointing": on, "recomputed_stages": 2 if on else None,
                "before_mib": 500.0, "peak_mib": 1200.0 if not on else 1300.0, "estimate_mib": 1250.0,
                "s_per_it": steady, "first_it_s": first, "on_off_ratios": ratios}  # fmt: skip

    cases = [case(False, 3.5, 3.2, []), case(True, 5.7, 3.4, [1.19, 1.10, 1.14, 1.28])]
    text = render({"device_type": "cpu", "cases": cases, "widest": {}}, "a CPU", "python -m ablation.bench --memory")
    assert "| 512 | fp32 | on (2 stages recomputed) | 500 | 1300 | 1250 | 0.96 | 3.40 | 5.70 |" in text
    # peak, s/it (3.4 / 3.2, not (5.7 + 3.4) / (3.5 + 3.2)) and the rounds in one process, on / off
    assert "| 512 | fp32 | 1.08 | 1.06 | 1.17 (1.10-1.28) |" in text
