"""The memory estimate against a real peak: each case in a fresh process (``python -m ablation.bench.memory``),
its peak resident set against what it held before plus the estimate, within the issue's +-15%."""

from __future__ import annotations

import pytest

from ablation.bench.memory import run_case

pytestmark = pytest.mark.slow  # starts processes (see pyproject's markers)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_the_estimate_is_within_15_percent_of_the_measured_peak(checkpointing: bool) -> None:
    case = run_case(384, "fp32", checkpointing, 1, "cpu")
    assert case["before_mib"] > 0 and case["s_per_it"] > 0
    assert len(case["on_off_ratios"]) == (1 if checkpointing else 0)  # one round: --iters 1
    assert all(ratio > 0 for ratio in case["on_off_ratios"])
    assert case["estimate_mib"] / case["peak_mib"] == pytest.approx(1.0, abs=0.15), case
