"""The stored Optuna study of ``make tune`` (hydra_plugins/nst_ablation/_study.py), in process on sqlite.

The whole path, a tuner killed and re-run, is tests/test_tune_resume.py; here each rule on its own.
"""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ablation.engine.errors import UserError
from hydra_plugins.nst_ablation import _study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study(url: str) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=_study.open_storage(url), load_if_exists=True)


def test_a_stored_study_opens_again_and_keeps_its_trials(tmp_path: Path) -> None:
    """Optuna 2.10 under SQLAlchemy 2 lost its schema stamp: the second open failed. Here it holds."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = study(url)
    first.tell(first.ask({"x": optuna.distributions.UniformDistribution(0, 1)}), 0.5)
    again = study(url)
    assert [(t.number, t.state, t.value) for t in again.trials] == [(0, TrialState.COMPLETE, 0.5)]


def test_only_trials_of_a_gone_tuner_on_this_host_are_picked_up(tmp_path: Path) -> None:
    s = study(f"sqlite:///{tmp_path / 'optuna.db'}")
    marks = {
        "gone": f"{socket.gethostname()}:{2**22 + 1}:1",  # beyond Linux's largest pid: no such process
        "elsewhere": "another-host:1:1",  # maybe running there: never touched
        "alive": _study.this_tuner(),  # this process
    }
    space = {"x": optuna.distributions.UniformDistribution(0, 1)}
    for mark in marks.values():
        trial = s.ask(space)
        s._storage.set_trial_system_attr(trial._trial_id, _study.TUNER_ATTR, mark)
    gone_params = s.trials[0].params

    assert _study.pick_up_interrupted(s) == [0]
    assert [t.state for t in s.trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING, TrialState.WAITING]
    assert s.ask(space).params == gone_params  # the queued parameters come first
    assert _study.pick_up_interrupted(s) == []  # nothing twice


def test_the_study_is_topped_up_to_n_trials(tmp_path: Path) -> None:
    s = study(f"sqlite:///{tmp_path / 'optuna.db'}")
    space = {"x": optuna.distributions.UniformDistribution(0, 1)}
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED):
        s.tell(s.ask(space), 1.0 if state == TrialState.COMPLETE else None, state=state)
    s.ask(space)  # running: not done
    assert _study.trials_to_go(s, 5) == 2  # two complete and one pruned count; the failed one is run again
    assert _study.trials_to_go(s, 2) == 0


def test_a_stored_study_needs_a_name(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="hydra.sweeper.storage needs hydra.sweeper.study_name"):
        _study.resume_study(f"sqlite:///{tmp_path / 'optuna.db'}", None, ["minimize"], 3)
