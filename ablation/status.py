"""What a run shows while it runs: a progress bar on a terminal, a logged status line elsewhere.

A bar redrawn many times a second is right for a person at a terminal and wrong in a SLURM log file or a CI
log, which it fills with carriage returns. tqdm's ``disable=None`` turns the bar off when stderr is not a
terminal; there a one-line status goes through Python logging every ``run.status_every`` steps (Hydra routes
it into each job's log file and the console). ``run.quiet=true`` shows neither.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping

from tqdm import tqdm

log = logging.getLogger("ablation.run")


class RunStatus:
    """Progress of one run from step ``start`` to ``total``; :meth:`update` at every sync point."""

    def __init__(self, total: int, start: int = 0, quiet: bool = False, status_every: int = 100) -> None:
        self.bar = tqdm(total=total, disable=True if quiet else None, unit="it", dynamic_ncols=True, file=sys.stderr)
        self.bar.update(start)
        self.lines = not quiet and self.bar.disable and status_every > 0
        self.total, self.every, self.step = total, status_every, start
        self.next_line = (start // status_every + 1) * status_every if status_every > 0 else total
        self._since = (time.perf_counter(), start)

    def update(self, step: int, losses: Mapping[str, float]) -> None:
        """The run is at ``step`` with ``losses`` (name -> value)."""
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
        self.step = step
        if self.lines and (step >= self.next_line or step >= self.total):
            log.info(status_line(step, self.total, losses, self._rate(step)))
            self.next_line = (step // self.every + 1) * self.every

    def _rate(self, step: int) -> float:
        now = time.perf_counter()
        then, before = self._since
        self._since = (now, step)
        return (step - before) / (now - then) if now > then else 0.0

    def close(self) -> None:
        self.bar.close()


def status_line(step: int, total: int, losses: Mapping[str, float], it_per_s: float) -> str:
    """``step 200/1000 (20%): total 1.234e+05 content ... | 3.1 it/s``."""
    values = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
    return f"step {step}/{total} ({100 * step / max(total, 1):.0f}%): {values} | {it_per_s:.3g} it/s"
