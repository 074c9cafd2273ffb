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
``_study`` (imported when an Optuna sweep starts, so runs that never tune do not import Optuna).
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper


class OptunaSweeper(optuna_sweeper.OptunaSweeper):
    """``hydra/sweeper=optuna`` with :class:`~hydra_plugins.nst_ablation._study.StoredStudySweeper` (the same
    settings). Hydra imports every plugin module to find its plugins, in every process that composes a config:
    Optuna (with scipy, scikit-learn and matplotlib: 3 s and 240 MiB) is imported only when a sweep starts."""

    def __init__(self, **settings: Any) -> None:
        from hydra_plugins.nst_ablation._study import StoredStudySweeper  # noqa: PLC0415 - Optuna only when tuning

        self.sweeper = StoredStudySweeper(**settings)
