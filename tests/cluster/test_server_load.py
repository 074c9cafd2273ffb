"""``make server`` under load, on each backend: 16 processes log 1,000 steps of the four losses each, at once.

Three set-ups (docs/cluster.md, Which backend): sqlite with one worker (its only sound setting), PostgreSQL
with one worker and with four (``SERVER_WORKERS=4``). PostgreSQL comes from ``make postgres-up``: without it
those two skip and say why (under CI=true they fail).

What must hold: nothing lost (every value of every run read back, step by step) and nothing misfiled (each
run holds only its own worker's values, under its own name and tags, in the experiment it was created in).
Each worker sends its steps as a job does, in one ``log_batch`` a heartbeat (every 2 s: ``ablation/store/runlog.py``),
here 100 steps x 4 losses a request: what a job at 20 ms an iteration sends (``original`` at 512 px on an H200,
docs/performance.md), 10 requests as fast as the server takes them: 16 such jobs at once at full speed. Throughput
and the server's peak memory are printed (``pytest -s``), not asserted: they depend on the machine.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ablation.engine.transfer import LOSS_NAMES
from tests.cluster.conftest import server_peak_mib
from tests.support import make_server

pytestmark = pytest.mark.slow  # starts processes (see pyproject's markers)

WORKERS = 16
STEPS = 1000
SYNC_EVERY = 100


#: set-up name -> (backend, workers)
SETUPS = {
    "sqlite-1-worker": ("sqlite", 1),
    "postgresql-1-worker": ("postgresql", 1),
    "postgresql-4-workers": ("postgresql", 4),
}


@pytest.fixture(params=list(SETUPS))
def loaded_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    """``make server`` of one set-up on a fresh store: its URI and process group."""
    backend, workers = SETUPS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    if backend == "sqlite":
        with make_server(folder) as started:
            yield started
        return
    postgres = request.getfixturevalue("postgres")
    with postgres.database("load") as uri:
        args = (f"STORE_URI={uri}", f"SERVER_WORKERS={workers}")
        with make_server(folder, *args, env=postgres.env) as started:
            yield started


def value(worker: int, step: int, loss: int) -> float:
    """A value only this worker, step and loss can have: a misfiled or shifted metric cannot match."""
    return worker * 1e6 + step * 10 + loss


def log_steps(uri: str, experiment_id: str, worker: int, start: multiprocessing.synchronize.Event) -> None:
    client = MlflowClient(uri)
    run = client.create_run(experiment_id, run_name=f"worker-{worker}", tags={"worker": str(worker)})
    start.wait()
    for first in range(0, STEPS, SYNC_EVERY):
        now = int(time.time() * 1000)
        batch = [
            Metric(name, value(worker, step, k), now, step)
            for step in range(first, first + SYNC_EVERY)
            for k, name in enumerate(LOSS_NAMES)
        ]
        client.log_batch(run.info.run_id, metrics=batch)
    client.set_terminated(run.info.run_id)


@pytest.mark.slow
def test_sixteen_jobs_lose_and_misfile_nothing(loaded_server: tuple[str, int], request: pytest.FixtureRequest) -> None:
    server, server_pid = loaded_server
    client = MlflowClient(server)
    experiment_id = client.create_experiment("load")
    other_id = client.create_experiment("load-other")  # a second experiment nothing may land in
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [context.Process(target=log_steps, args=(server, experiment_id, w, start)) for w in range(WORKERS)]
    for proc in workers:
        proc.start()
    time.sleep(2)  # every worker has its run (or is about to): the clock starts with the first step
    started = time.perf_counter()
    start.set()
    for proc in workers:
        proc.join(timeout=600)
        assert proc.exitcode == 0, f"worker {proc.name} ended with {proc.exitcode}"
    logging_s = time.perf_counter() - started

    runs = client.search_runs([experiment_id], max_results=100)
    assert len(runs) == WORKERS and not client.search_runs([other_id])
    assert sorted(r.data.tags["worker"] for r in runs) == sorted(str(w) for w in range(WORKERS))
    for run in runs:
        worker = int(run.data.tags["worker"])
        assert run.info.run_name == f"worker-{worker}" and run.info.status == "FINISHED"
        for k, name in enumerate(LOSS_NAMES):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
            assert history == [(step, value(worker, step, k)) for step in range(STEPS)], (worker, name)

    metrics = WORKERS * STEPS * len(LOSS_NAMES)
    setup = request.node.callspec.params["loaded_server"]
    print(
        f"\nload ({setup}): {WORKERS} processes x {STEPS} steps x {len(LOSS_NAMES)} losses = {metrics} metrics in "
        f"{logging_s:.1f} s: {metrics / logging_s:.0f} metrics/s, "
        f"{WORKERS * STEPS / SYNC_EVERY / logging_s:.0f} requests/s; server peak memory "
        f"{server_peak_mib(server_pid):.0f} MiB"
    )
