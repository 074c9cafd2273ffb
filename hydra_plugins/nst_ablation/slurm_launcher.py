"""``LAUNCHER=slurm``: hydra-submitit-launcher's SLURM launcher with :mod:`ablation.cluster`'s fixes.

Hydra instantiates launchers only from the ``hydra_plugins`` package, hence this module; what it does is
explained in :mod:`ablation.cluster`.
"""

from __future__ import annotations

import logging
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

from ablation import sweep
from ablation.cluster import lost_job_message, quiet_submitit_logger, use_queue_watcher

log = logging.getLogger(__name__)


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
        sweep.record_lost(Path(str(self.config.hydra.sweep.dir)), num, list(overrides), message)
        failed = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
        failed.return_value = {"status": "failed", "error": message}
        return failed
