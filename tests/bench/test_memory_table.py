"""The memory table's seconds per iteration: the iterations after the first, which is given apart; and
checkpointing's cost measured in one process, beside the ratio of the two cases' own s/it."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from ablation.bench import memory
from ablation.bench.memory import render, steady_seconds
from ablation.engine import memory as engine_memory
from ablation.engine.transfer import TransferState, new_state


def test_the_first_iteration_is_apart_from_the_steady_ones() -> None:
    # ended at 5.7 s (kernels built, memory first touched), then every 3.3 s
    assert steady_seconds(100.0, [105.7, 109.0, 112.3]) == pytest.approx((5.7, 3.3))
    assert steady_seconds(100.0, [105.7]) == pytest.approx((5.7, 5.7))  # one iteration: nothing after it


def case(on: bool, first: float, steady: float, ratios: list[float]) -> dict:
    return {"width": 512, "precision": "fp32", "checkpointing": on, "recomputed_stages": 2 if on else None,
            "before_mib": 500.0, "peak_mib": 1200.0 if not on else 1300.0, "estimate_mib": 1250.0,
            "s_per_it": steady, "first_it_s": first, "on_off_ratios": ratios, "tuning_peak_mib": None}  # fmt: skip


def test_checkpointing_costs_its_steady_seconds_not_its_first_iteration() -> None:
    cases = [case(False, 3.5, 3.2, []), case(True, 5.7, 3.4, [1.19, 1.10, 1.14, 1.28])]
    text = render({"device_type": "cpu", "cases": cases, "widest": {}}, "a CPU", "python -m ablation.bench --memory")
    assert "| 512 | fp32 | on (2 stages recomputed) | 500 | 1300 | 1250 | 0.96 | 3.40 | 5.70 |" in text
    # peak, s/it (3.4 / 3.2, not (5.7 + 3.4) / (3.5 + 3.2)) and the rounds in one process, on / off
    assert "| 512 | fp32 | 1.08 | 1.06 | 1.17 (1.10-1.28) |" in text


def test_on_cuda_the_peak_is_the_tuned_runs_and_the_first_pass_is_apart() -> None:
    """cuDNN's tuning takes what the device has free (an H200: 132,517 MiB at 1024 px): the table compares the estimate
    with the peak after it, and gives the first pass's peak in a column of its own."""
    cases = [case(False, 0.2, 0.05, []) | {"before_mib": 0.0, "peak_mib": 1900.0, "tuning_peak_mib": 135_000.0}]
    text = render({"device_type": "cuda", "cases": cases, "widest": {}}, "an H200", "python -m ablation.bench --memory")
    assert "| s/it | first it s | first pass MiB (cuDNN tuning) |" in text
    assert "| 512 | fp32 | off | 0 | 1900 | 1250 | 0.66 | 0.05 | 0.20 | 135000 |" in text


def test_the_first_pass_on_cuda_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    """The tuning pass before a CUDA case's measured one frees all it made, so the peak reset after it starts from
    what the case itself holds (run here on the CPU: the pass is the same code)."""
    images = []

    def tracked(image: torch.Tensor, settings: object) -> TransferState:
        state = new_state(image, settings)
        images.append(weakref.ref(state.image))
        return state

    monkeypatch.setattr(memory, "new_state", tracked)
    cpu = torch.device("cpu")
    memory.first_pass(engine_memory.fit(memory.case_spec(32, "fp32", False, "cpu", tmp_path), cpu, check=False), cpu)
    gc.collect()
    assert len(images) == 1 and images[0]() is None
