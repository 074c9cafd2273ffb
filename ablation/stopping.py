"""Turning SIGINT and SIGTERM into a request to stop at the next sync point, with a checkpoint.

SLURM preemption, ``scancel`` and ``kill`` send SIGTERM; Ctrl-C sends SIGINT. Either one only sets a flag:
the loop notices it at its next sync point (every ``run.sync_every`` steps), where the state is whole,
saves a checkpoint and ends the run KILLED. A second signal gives up on the checkpoint and raises
``KeyboardInterrupt`` at once, for a user who does not want to wait.

SLURM warns a job before its time limit or a preemption with a signal (``--signal``; submitit asks for SIGUSR2)
and submitit arms it with a handler that requeues the job and exits at once, losing the steps since the last
periodic checkpoint. Where such a Python handler is armed (SIGUSR1, SIGUSR2), the signal is a stop request like
SIGTERM, and the armed handler is called afterwards (:meth:`StopRequest.hand_over`), once the checkpoint is saved
and the run ended KILLED; the requeued job then continues that run.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Signals whose armed Python handler (submitit's requeue) runs after the checkpoint instead of before it.
HAND_OVER_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class StopRequest:
    """A flag set by a signal (or by a caller, e.g. a test or a sweep) asking the loop to stop cleanly."""

    def __init__(self, at_step: int | None = None) -> None:
        self.signal: int | None = None
        self.at_step = at_step  # stop once this step is reached, as if signalled (tests, time limits)
        self.armed: Callable[[int, Any], Any] | None = None  # the handler the signal was taken from

    def hand_over(self) -> None:
        """Call the handler the stop signal was taken from (submitit: requeue, then exit), if any, with SIGTERM
        ignored by it and by the processes it starts.

        A requeue cancels the job, which signals every process in it: a ``scontrol requeue`` killed before it
        exited made submitit write the job's result as failed, and the sweep read that (once in CI, under load),
        although SLURM requeued the job and its run finished. An ignored signal stays ignored across exec.
        """
        if self.armed is not None and self.signal is not None:
            before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                self.armed(self.signal, None)
            finally:
                signal.signal(signal.SIGTERM, before)

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signal = signum

    def due(self, step: int) -> bool:
        """Whether the loop, now at ``step``, should stop."""
        if self.signal is None and self.at_step is not None and step >= self.at_step:
            self.request()
        return self.signal is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    @property
    def exit_code(self) -> int:
        """128 + signal number, the shell's convention for a process ended by a signal."""
        return 128 + int(self.signal or signal.SIGTERM)


class Interrupted(Exception):
    """The loop stopped on request at ``step`` after saving a checkpoint."""

    def __init__(self, step: int, stop: StopRequest, run_id: str = "") -> None:
        super().__init__(
            f"stopped by {stop.signal_name} at step {step}: checkpoint saved in run {run_id}; "
            "continue with the same arguments plus run.resume=true"
        )
        self.step = step
        self.stop = stop
        self.run_id = run_id


@contextmanager
def stop_on_signals(stop: StopRequest, signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Route ``signals`` to ``stop`` while the block runs; previous handlers come back afterwards.

    Signal handlers can only be set from the main thread; elsewhere (a threaded launcher) the block
    runs with the process's handlers and ``stop`` can still be set by the caller.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    armed = {s: h for s in HAND_OVER_SIGNALS if callable(h := signal.getsignal(s))}

    def handle(signum: int, _frame: object) -> None:
        if stop.signal is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        stop.armed = armed.get(signum)
        stop.request(signum)

    previous = {s: signal.signal(s, handle) for s in (*signals, *armed)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
