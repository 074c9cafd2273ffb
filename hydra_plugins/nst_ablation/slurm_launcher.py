"""``LAUNCHER=slurm``: hydra-submitit-launcher's SLURM launcher, made to work where accounting is off.

Hydra instantiates launchers only from the ``hydra_plugins`` package, hence this module.

submitit learns a job's state from ``sacct``. On a cluster without accounting (a test cluster, ``.ci/slurm``)
every poll fails and logs "Bypassing sacct error" (three lines each, from its own handlers and Hydra's), and a
job that ends without writing its result (killed with SIGKILL, out of memory, its node gone) stays "UNKNOWN":
the sweep waits forever. Here the states come from ``squeue`` (slurmctld keeps finished jobs for
``MinJobAge`` seconds; a job it no longer knows has ended) when ``scontrol show config`` says accounting is
off, and a job that ended without a result becomes a failed job of the sweep with one line naming its
SLURM state and log, instead of a traceback that abandons the others.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf
from submitit.core.utils import UncompletedJobError
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from ablation.store.outcome import Outcome, outcome_record

log = logging.getLogger(__name__)

#: Seconds between state polls at most: an ended job is seen soon, and long before slurmctld forgets it
#: (MinJobAge, 300 s by default).
POLL_MAX_S = 10
NO_ACCOUNTING = "accounting_storage/none"


def accounting_off() -> bool:
    """Whether this cluster keeps no job accounting (``sacct`` would fail on every call)."""
    try:
        text = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    settings = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return any(k.strip() == "AccountingStorageType" and v.strip() == NO_ACCOUNTING for k, v in settings)


class QueueWatcher(SlurmInfoWatcher):
    """Job states from ``squeue --states=all`` (same fields as submitit's ``sacct`` call).

    A registered job that ``squeue`` no longer lists has ended and been forgotten: its state is ``PURGED``,
    which submitit counts as done (then the result file, or its absence, tells the outcome).
    """

    def _make_command(self) -> list[str] | None:
        if not self._registered - self._finished:
            return None
        # all of this user's jobs: with -j, squeue fails outright when one of the ids has been forgotten
        return ["squeue", "--noheader", "--states=all", "--array", "--me", "-o", "%i|%T|%N"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("JobID|State|NodeList\n" + text)
        for job_id in self._registered - self._finished:
            info.setdefault(job_id, {"JobID": job_id, "State": "PURGED", "NodeList": ""})
        return info


def use_queue_watcher() -> None:
    """Make every SLURM job of this process read its state from ``squeue`` (accounting off only)."""
    if not isinstance(SlurmJob.watcher, QueueWatcher) and accounting_off():
        SlurmJob.watcher = QueueWatcher(delay_s=POLL_MAX_S)
        log.info("SLURM accounting is off: job states come from squeue")


def quiet_submitit_logger() -> None:
    """submitit logs through its own handlers (stdout, and stderr from WARNING) and again through the root
    logger, which Hydra sends to the console and each job's log: every line came twice or three times."""
    logging.getLogger("submitit").propagate = False


def lost_job_message(job: submitit.Job) -> str:
    """One line for a job that ended without a result: its SLURM state and where its log is."""
    return (
        f"SLURM job {job.job_id} ended {job.state} without a result (SIGKILL, out of memory or node failure?); "
        f"log {job.paths.stderr}; re-run the same make sweep to continue it from its checkpoint"
    )


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher, with :func:`use_queue_watcher` and lost jobs reported.

    ``launch`` is the plugin's own, except that a job without a result fails alone (``status: failed``
    on the sweep's parent run) instead of raising out of the sweep.
    """

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        quiet_submitit_logger()
        use_queue_watcher()
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=self.params["submitit_folder"], slurm_max_num_timeout=self.params["max_num_timeout"]
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in self.params.items() if k not in init_keys}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        nums = range(initial_job_idx, initial_job_idx + len(job_overrides))
        for num, overrides in zip(nums, job_overrides, strict=True):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        args = [(list(o), "hydra.sweep.dir", n, f"job_id_for_{n}", state) for n, o in enumerate(job_overrides, nums[0])]
        jobs = executor.map_array(self, *zip(*args, strict=True))
        return [self._outcome(job, n, o) for job, n, o in zip(jobs, nums, job_overrides, strict=True)]

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """The job, on its node: submitit's log lines once each."""
        quiet_submitit_logger()
        return super().__call__(*args, **kwargs)

    def _outcome(self, job: submitit.Job, num: int, overrides: Sequence[str]) -> JobReturn:
        try:
            return job.results()[0]
        except UncompletedJobError:
            message = lost_job_message(job)
        log.error(f"job {num}: {message}")
        from ablation.store import sweeps  # noqa: PLC0415 - MLflow only when a job is lost, not in every compose

        sweeps.record_lost(Path(str(self.config.hydra.sweep.dir)), num, list(overrides), message)
        failed = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
        failed.return_value = outcome_record(Outcome.FAILED, None, message)
        return failed
