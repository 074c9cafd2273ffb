"""A stored Optuna study that outlives its tuner: opened so it works, trials marked by who runs them, picked up.

Imported only when a sweep uses :class:`~hydra_plugins.nst_ablation.optuna_sweeper.OptunaSweeper` (Hydra skips
modules whose name starts with an underscore when it scans for plugins, so ``python -m ablation.run`` does not
pay for importing Optuna).

Three facts, each in one function:

- :func:`open_storage`: Optuna 2.10 (the newest that hydra-optuna-sweeper allows) stamps its schema version on a
  connection it never commits. SQLAlchemy 1.x committed it by itself; under SQLAlchemy 2 the stamp is rolled back
  and every later open of the storage fails (``assert version is not None``). One first open with autocommit
  stamps it for good; the storage the sweeper uses keeps ordinary transactions (the queue of waiting trials is
  taken under a row lock).
- :class:`TunerStorage` marks each trial it starts with its tuner (host, pid and the process's start time), so a
  later tuner can tell a trial whose tuner is gone from one another machine is still running.
- :func:`pick_up_interrupted`: a trial whose tuner on this host is gone is marked FAIL and its parameters are
  queued to be run first, so the next tuner runs it again with the same parameters, and the job (same
  fingerprint) continues its MLflow run from its checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ablation.engine.errors import UserError
from ablation.store.connection import redact_uri

log = logging.getLogger(__name__)

TUNER_ATTR = "nst_ablation.tuner"
#: Trials that count towards ``n_trials``: finished with a value (or pruned); a FAIL is run again.
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, /proc/<pid>/stat), None when there is none:
    with the pid it names one process for good, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


def this_tuner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid())}"


def tuner_gone(tuner: str) -> bool:
    """Whether the tuner named ``tuner`` (see :func:`this_tuner`) has ended; a tuner on another host is never
    taken for gone (its machine may be running it)."""
    host, pid, start = tuner.rsplit(":", 2)
    return host == socket.gethostname() and process_start(int(pid)) != start


class TunerStorage(RDBStorage):
    """Optuna's database storage that marks every trial it starts with :func:`this_tuner`.

    A trial starts either new (``_create_new_trial``, whose result Optuna's cache keeps) or taken from the queue
    of waiting trials (``set_trial_state`` to RUNNING, after which the cache reads the trial again).
    """

    def __repr__(self) -> str:  # Hydra logs the storage: its URL, without a password
        return f"{type(self).__name__}({redact_uri(self.url)})"

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)
        if trial.state == TrialState.RUNNING:
            self.set_trial_system_attr(trial._trial_id, TUNER_ATTR, this_tuner())
            trial.system_attrs[TUNER_ATTR] = this_tuner()  # the copy Optuna's cache keeps
        return trial

    def set_trial_state(self, trial_id: int, state: TrialState) -> bool:
        changed = super().set_trial_state(trial_id, state)
        if changed and state == TrialState.RUNNING:
            self.set_trial_system_attr(trial_id, TUNER_ATTR, this_tuner())
        return changed


def open_storage(url: str) -> TunerStorage:
    """The study storage at ``url`` (``sqlite:///...``, ``postgresql://...``), schema created and stamped."""
    first = RDBStorage(url, engine_kwargs={"isolation_level": "AUTOCOMMIT"})  # creates the tables, stamps them
    first.engine.dispose()
    return TunerStorage(url)


def pick_up_interrupted(study: optuna.Study) -> list[int]:
    """Mark the RUNNING trials of gone tuners FAIL and queue their parameters; their numbers."""
    picked = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tuner = trial.system_attrs.get(TUNER_ATTR)
        if tuner is None or not tuner_gone(tuner):
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        with warnings.catch_warnings():  # "enqueue_trial is experimental": it has been since Optuna 1.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.enqueue_trial(dict(trial.params))
        picked.append(trial.number)
        log.info(f"trial {trial.number} of study {study.study_name} ended with its tuner: run again, same parameters")
    return picked


def trials_to_go(study: optuna.Study, n_trials: int) -> int:
    """How many more trials make the study ``n_trials`` long (re-running a tuner tops its study up)."""
    done = len(study.get_trials(deepcopy=False, states=DONE_STATES))
    return max(0, n_trials - done)


def resume_study(storage_url: str, study_name: str | None, directions: list[Any], n_trials: int) -> tuple[Any, int]:
    """The storage for the sweeper and how many trials it should still run, after picking up interrupted ones."""
    if not study_name:
        raise UserError("hydra.sweeper.storage needs hydra.sweeper.study_name: a stored study is found by its name")
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name=study_name, storage=storage, directions=directions, load_if_exists=True)
    picked = pick_up_interrupted(study)
    to_go = trials_to_go(study, n_trials)
    log.info(
        f"study {study_name}: {n_trials - to_go} of {n_trials} trials done, {to_go} to go"
        + (f" (trials {picked} again: their tuner ended)" if picked else "")
    )
    return storage, to_go


class StoredStudySweeper(OptunaSweeperImpl):
    """hydra-optuna-sweeper's sweep, started on the stored study after picking up what a dead tuner left."""

    def sweep(self, arguments: list[str]) -> None:
        if self.storage is not None:
            self.storage, self.n_trials = resume_study(
                str(self.storage), self.study_name, self._get_directions(), self.n_trials
            )
            if hasattr(self.sampler, "reseed_rng"):  # a seeded sampler would propose the study's first trials again
                self.sampler.reseed_rng()
        return super().sweep(arguments)
