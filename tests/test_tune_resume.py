"""``make tune`` with a stored study: a tuner killed mid-study is continued by its re-run, no trial lost.

The tuner (``experiment=tune``, 4 trials) keeps its study in PostgreSQL (``make postgres-up``; skips without it, and
fails under CI=true), the database a cluster's tuners share. The same rules on sqlite, each on its own and in process,
are tests/test_tune_study.py: the whole path here is our code's, whichever database Optuna writes to, and a minute
and more of a busy CI machine. It is stopped with SIGTERM (as ``scancel`` or Ctrl-C would)
while a trial after the first two is running, then run again with the same command. Expected, read back from
the study and from MLflow: the finished trials are kept as they were; the interrupted one is run again first with the
same parameters and its MLflow run continues from its checkpoint (``resume_count`` 1); the study ends with 4
finished trials and has grown by the re-run's.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hydra_plugins.nst_ablation import _study
from tests.support import PROJECT, PYTHON, Postgres, run_overrides, store_env, using_env

pytestmark = pytest.mark.slow
TRIALS = 4
ITERATIONS = 150  # long enough for the test to catch the third trial running (6 s and more, polled every 0.2 s)


def tune_command(folder: Path, storage: str, name: str) -> list[str]:
    return [
        *(PYTHON, "-m", "ablation.run", "-m", "experiment=tune", "variant=original"),
        *run_overrides(folder, ITERATIONS),
        f"hydra.sweeper.n_trials={TRIALS}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={folder / name}",
    ]


def job_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("nst-ablation")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return [r for r in runs if r.data.tags.get("sweep_role") != "parent"]


def wait_for_a_later_trial(client: MlflowClient, tuner: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until two trials' runs are FINISHED and another has logged steps (its loop runs: SIGTERM stops it cleanly)."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = job_runs(client)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        running = [r for r in runs if r.info.status == "RUNNING" and int(r.data.tags.get("logged_step", -1)) >= 10]
        if len(finished) >= 2 and running:
            return
        assert tuner.poll() is None, tuner.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no later trial running after {timeout_s} s: {len(finished)} finished"
        time.sleep(0.2)


def trials(storage: str) -> list:
    study = optuna.load_study(study_name="tune-original", storage=_study.open_storage(storage))
    return study.get_trials(deepcopy=False)


@pytest.fixture
def study_storage(postgres: Postgres) -> Iterator[tuple[str, dict[str, str]]]:
    """The study's database URL and the environment its password travels in."""
    with postgres.database("optuna") as uri:
        yield uri, postgres.env


def test_a_killed_tuner_is_continued_by_its_rerun(study_storage: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    storage, pg_env = study_storage
    env = store_env(tmp_path) | pg_env
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])

    tuner = subprocess.Popen(
        tune_command(tmp_path, storage, "first"), cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_a_later_trial(client, tuner)
    tuner.send_signal(signal.SIGTERM)
    _, err = tuner.communicate(timeout=120)
    assert tuner.returncode == 128 + signal.SIGTERM, err.decode()[-3000:]

    with using_env(pg_env):
        before = trials(storage)
    done_before = {t.number: (t.params, t.value) for t in before if t.state == TrialState.COMPLETE}
    (cut,) = [t for t in before if t.state == TrialState.RUNNING]  # the tuner's mark names it and its dead process
    done = len(done_before)  # 2, or 3 on a machine fast enough to finish the third before the test sees it
    assert 2 <= done < TRIALS and len(before) == done + 1
    assert _study.tuner_gone(cut.system_attrs[_study.TUNER_ATTR])
    (killed,) = [r for r in job_runs(client) if r.info.status == "KILLED"]

    again = subprocess.run(
        tune_command(tmp_path, storage, "again"), cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    line = f"{done} of {TRIALS} trials done, {TRIALS - done} to go (trials [{cut.number}] again: their tuner ended)"
    assert f"study tune-original: {line}" in again.stdout  # Hydra's log of the sweep

    with using_env(pg_env):
        after = trials(storage)
    assert len(after) == len(before) + TRIALS - done  # grown by the re-run: the interrupted trial again, then new ones
    assert {t.number: (t.params, t.value) for t in after if t.number in done_before} == done_before
    assert [t.state for t in after if t.number == cut.number] == [TrialState.FAIL]
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == TRIALS and [t.params for t in complete].count(cut.params) == 1
    assert next(t for t in complete if t.number > cut.number).params == cut.params  # run again first

    runs = job_runs(client)
    assert len(runs) == TRIALS and all(r.info.status == "FINISHED" for r in runs)  # one run per trial, none twice
    continued = client.get_run(killed.info.run_id)
    assert continued.info.status == "FINISHED" and continued.data.tags["resume_count"] == "1"
