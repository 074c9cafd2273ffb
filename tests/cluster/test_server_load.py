"""``make server`` on its sqlite store under load: 16 processes log 1,000 steps of the four losses each, at once.

What must hold: nothing lost (every value of every run read back, step by step) and nothing misfiled (each
run holds only its own worker's values, under its own name and tags, in the experiment it was created in).
Each worker sends its steps as a job does, one ``log_batch`` per sync point (10 steps x 4 losses), with the
MLflow client. Throughput and the server's peak memory are printed (``pytest -s``), not asserted: they
depend on the machine.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ablation.engine.transfer import LOSS_NAMES
from tests.cluster.conftest import server_peak_mib
from tests.support import PROJECT

pytestmark = pytest.mark.slow  # starts processes (see pyproject's markers)

WORKERS = 16
STEPS = 1000
SYNC_EVERY = 10


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


def test_sixteen_jobs_lose_and_misfile_nothing(server: str, server_pid: int, tmp_path: Path) -> None:
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
    print(
        f"\nload: {WORKERS} processes x {STEPS} steps x {len(LOSS_NAMES)} losses = {metrics} metrics in "
        f"{logging_s:.1f} s: {metrics / logging_s:.0f} metrics/s, "
        f"{WORKERS * STEPS / SYNC_EVERY / logging_s:.0f} requests/s; server peak memory "
        f"{server_peak_mib(server_pid):.0f} MiB"
    )


@pytest.mark.parametrize("uri", ["postgresql://nst:secret@127.0.0.1:5432/mlflow"])
def test_make_server_takes_a_postgresql_store(uri: str) -> None:
    """``make server STORE_URI=postgresql://...`` hands the URI to ``mlflow server`` unchanged."""
    dry = subprocess.run(
        ["make", "-n", "-o", "install", "server", f"STORE_URI={uri}"], cwd=PROJECT, capture_output=True, text=True
    )
    assert f"--backend-store-uri {uri} " in dry.stdout, dry.stdout
