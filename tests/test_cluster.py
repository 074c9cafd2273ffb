"""The SLURM launcher's pieces that need no cluster: job states from squeue, SLURM's warning signal handed over."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from ablation.stopping import StopRequest, stop_on_signals
from hydra_plugins.nst_ablation import slurm_launcher as cluster


def test_squeue_lines_become_states_and_forgotten_jobs_count_as_ended() -> None:
    watcher = cluster.QueueWatcher(delay_s=10)
    for job_id in ("12_0", "12_1", "13"):
        watcher.register_job(job_id)
    info = watcher.read_info("12_0|RUNNING|vm\n12_1|REQUEUED|vm\n")  # 13 ended and was forgotten
    assert {k: v["State"] for k, v in info.items()} == {"12_0": "RUNNING", "12_1": "REQUEUED", "13": "PURGED"}
    watcher._info_dict.update(info)
    assert [watcher.is_done(j, mode="cache") for j in ("12_0", "12_1", "13")] == [False, False, True]


@pytest.mark.parametrize(
    ("setting", "off"),
    [("accounting_storage/none", True), ("accounting_storage/slurmdbd", False)],
)
def test_accounting_is_read_from_scontrol(monkeypatch: pytest.MonkeyPatch, setting: str, off: bool) -> None:
    text = f"AccountingStorageHost   = localhost\nAccountingStorageType   = {setting}\n"
    done = subprocess.CompletedProcess([], 0, stdout=text, stderr="")
    monkeypatch.setattr(cluster.subprocess, "run", lambda *a, **k: done)
    assert cluster.accounting_off() is off


def test_warning_signal_stops_first_and_hands_over_after() -> None:
    """submitit's handler (here a stand-in) runs only when the run has stopped with its checkpoint."""
    calls: list[tuple[int, object]] = []  # the signal and SIGTERM's handler meanwhile

    def requeue(signum: int, _frame: object) -> None:
        calls.append((signum, signal.getsignal(signal.SIGTERM)))

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        with stop_on_signals(StopRequest()) as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.due(10) and calls == []  # a stop request, not yet the requeue
        before = signal.getsignal(signal.SIGTERM)
        stop.hand_over()
        # the requeue ran with SIGTERM ignored (its scontrol inherits that), which comes back afterwards
        assert calls == [(signal.SIGUSR2, signal.SIG_IGN)] and signal.getsignal(signal.SIGTERM) == before
        assert stop.exit_code == 128 + signal.SIGUSR2
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_an_unarmed_warning_signal_is_left_alone() -> None:
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    with stop_on_signals(StopRequest()):
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # not taken: its default still applies
