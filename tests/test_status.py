"""What a run shows off a terminal: no progress bar, a status line every ``run.status_every`` steps."""

from __future__ import annotations

import logging

import pytest

from ablation.record import RunStatus, status_line


def test_status_line_reads_in_one_line() -> None:
    line = status_line(200, 1000, {"content": 2599.84, "total": 11318.7}, 3.14159)
    assert line == "step 200/1000 (20%): content 2600 total 1.132e+04 | 3.14 it/s"


def test_off_a_terminal_a_line_every_n_steps(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ablation.run")
    status = RunStatus(total=50, start=0, quiet=False, status_every=20)  # pytest's stderr is not a terminal
    assert status.bar.disable
    for step in range(10, 51, 10):
        status.update(step, {"total": float(step)})
    status.close()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "step 20/50 (40%)",
        "step 40/50 (80%)",
        "step 50/50 (100%)",
    ]


def test_quiet_shows_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ablation.run")
    status = RunStatus(total=50, start=0, quiet=True, status_every=10)
    status.update(50, {"total": 1.0})
    assert caplog.records == []


def test_a_resumed_run_starts_counting_at_its_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ablation.run")
    status = RunStatus(total=100, start=40, quiet=False, status_every=25)
    status.update(50, {"total": 1.0})  # the first line due after step 40 is at 50
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["step 50/100"]
