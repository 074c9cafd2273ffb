"""``make tune`` with a study that outlives its tuner: hydra-optuna-sweeper's sweeper, plus a stored study.

``hydra.sweeper.storage`` is null by default (the study lives in the tuner's memory, as before). Given a database
URL (``sqlite:///...`` or ``postgresql://...``) and ``hydra.sweeper.study_name`` (experiment=tune names it
``tune-<variant>``), the study lives in that database:

- ``hydra.sweeper.n_trials`` is the study's size: a re-run of a killed tuner runs only the trials still missing;
- a trial its tuner was running when it died (SIGTERM, scancel, Ctrl-C, SIGKILL) runs again first, with the same
  parameters, and its job continues the MLflow run from its checkpoint (``_study.pick_up_interrupted``);
- two tuners on two machines may share one study: each samples knowing the other's finished trials, and each
  runs until the study holds ``n_trials`` finished trials counted when it started;
- each tuner reseeds its sampler at random: the sampler's seed would otherwise make a re-run (or a second tuner)
  propose the study's first trials again, so ``sampler.seed`` makes trials repeatable only in memory.

Hydra instantiates sweepers only from the ``hydra_plugins`` package, hence this module; the work is in
``_study`` (imported when a sweep starts, so runs that never tune do not import Optuna).
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl


class StoredStudySweeper(OptunaSweeperImpl):
    """hydra-optuna-sweeper's sweep, started on the stored study after picking up what a dead tuner left."""

    def sweep(self, arguments: list[str]) -> None:
        if self.storage is not None:
            from hydra_plugins.nst_ablation import _study  # noqa: PLC0415 - Optuna only when tuning

            self.storage, self.n_trials = _study.resume_study(
                str(self.storage), self.study_name, self._get_directions(), self.n_trials
            )
            if hasattr(self.sampler, "reseed_rng"):  # a seeded sampler would propose the study's first trials again
                self.sampler.reseed_rng()
        return super().sweep(arguments)


class OptunaSweeper(optuna_sweeper.OptunaSweeper):
    """``hydra/sweeper=optuna`` with :class:`StoredStudySweeper` (the same settings)."""

    def __init__(self, **settings: Any) -> None:
        self.sweeper = StoredStudySweeper(**settings)
