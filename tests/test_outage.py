"""A tracking server that goes away under a running sweep: stopped for a while, killed and restarted, or away longer
than ``run.tracking_outage_s``. Each runs ``make server`` on sqlite (the database is the server's own file, so the
database restarting is the server process restarting) and a real sweep in a subprocess, and then reads every step,
heartbeat, checkpoint, image and job record back from the server.

What the outbox promises (``ablation/store/outbox.py``): the runs keep computing while the server is away (steps whose
time falls inside the outage); once it is back everything is stored, each step once; a run that finished meanwhile
waited for it; past the patience the run stops with a checkpoint kept on disk, and the re-run sends it and finishes
with the losses of an uninterrupted run.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablation.job import execute
from tests.support import (
    PROJECT,
    PYTHON,
    config,
    free_port,
    job_records,
    run_overrides,
    start_server,
    stop_group,
    store_env,
)

pytestmark = pytest.mark.slow
LOSSES = ("content", "style", "tv", "total")


def sweep(folder: Path, uri: str, name: str, *overrides: str) -> subprocess.Popen:
    """``python -m ablation.run -m`` with 16 px random-weight settings against ``uri`` (60 steps, a checkpoint every
    10; ``overrides`` replace those of the same key), records kept in ``folder/unsent``."""
    base = [*run_overrides(folder, 60), "run.sync_every=2", "run.checkpoint_every=10"]
    keys = {o.split("=")[0] for o in overrides}
    args = [o for o in base if o.split("=")[0] not in keys] + list(overrides)
    return subprocess.Popen(
        [PYTHON, "-m", "ablation.run", "-m", *args, f"hydra.sweep.dir={folder / name}",
         f"tracking.unsent_dir={folder / 'unsent'}"],
        cwd=PROJECT, env=store_env(folder) | {"MLFLOW_TRACKING_URI": uri}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def children(client: MlflowClient, experiment: str = "nst-ablation") -> list:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if r.data.tags.get("sweep_role") != "parent"]


def wait_for_step(client: MlflowClient, step: int, timeout_s: float = 240) -> str:
    """The id of the first child run once its heartbeat says ``step`` is stored."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            runs = children(client)
        except Exception:  # noqa: BLE001 - no experiment yet
            runs = []
        if runs and int(runs[0].data.tags.get("logged_step", "-1")) >= step:
            return runs[0].info.run_id
        time.sleep(0.3)
    raise AssertionError(f"no run reached step {step} within {timeout_s} s")


def check_stored_once(client: MlflowClient, run, iterations: int, checkpoint_every: int) -> None:
    """Every loss at every step exactly once; the heartbeat at the last step; the checkpoint; each image once."""
    run_id = run.info.run_id
    assert run.info.status == "FINISHED", run.data.tags.get("error")
    for key in LOSSES:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(iterations + 1)), key
    assert run.data.tags["logged_step"] == str(iterations)
    assert [f.path for f in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/state.pt"]
    images = [f.path for f in client.list_artifacts(run_id, "images") if f.path.endswith(".png")]
    steps = sorted(int(re.search(r"\+step\+(\d+)\+", p)[1]) for p in images)
    assert steps == [*range(checkpoint_every, iterations, checkpoint_every), iterations]


def outage_case(tmp_path: Path, stop_sig: int, away_s: float, seeds: str) -> None:
    """A sweep over ``seeds``; the server stopped by ``stop_sig`` once the first run stored step 10, started again
    on the same port and store ``away_s`` later. Returns nothing: asserts."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    job = sweep(tmp_path, uri, "sweep", f"run.seed={seeds}")
    try:
        client = MlflowClient(uri)
        first = wait_for_step(client, 10)
        down_ms = time.time() * 1000
        stop_group(server, sig=stop_sig)
        time.sleep(away_s)
        server = start_server(tmp_path, port)
        up_ms = time.time() * 1000  # it answers /health again
        _, stderr = job.communicate(timeout=600)
        assert job.returncode == 0, stderr[-3000:]

        runs = children(client)
        assert len(runs) == len(seeds.split(","))
        for run in runs:
            check_stored_once(client, run, 60, 10)
        history = client.get_metric_history(first, "total")
        computed_away = [m.step for m in history if down_ms < m.timestamp < up_ms]
        loop_s = {r.data.tags["seed"]: round(r.data.metrics["loop_s"], 1) for r in runs}
        print(f"server away {(up_ms - down_ms) / 1000:.1f} s; steps computed meanwhile: {len(computed_away)}; "
              f"loop_s by seed: {loop_s}")  # fmt: skip
        assert len(computed_away) >= 5  # the loop went on while nothing could be stored
        parent = client.search_runs(
            [runs[0].info.experiment_id], "tags.sweep_role = 'parent'", order_by=["attributes.start_time DESC"]
        )[0]
        records = job_records(uri, parent.info.run_id)
        assert sorted(r["status"] for r in records.values()) == ["finished"] * len(runs)
        assert parent.info.status == "FINISHED" and parent.data.metrics["ran"] == len(runs)
        assert not list((tmp_path / "unsent").glob("*/*"))  # nothing was left behind
    finally:
        job.kill()
        stop_group(server)


def test_a_server_stopped_for_ten_seconds_mid_sweep_loses_nothing_and_stores_nothing_twice(tmp_path: Path) -> None:
    outage_case(tmp_path, signal.SIGTERM, 10.0, "0,1,2")


def test_a_server_killed_and_restarted_at_once_under_a_sweep_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL: requests cut mid-way, the database file left as a crash leaves it, a new process on it at once."""
    outage_case(tmp_path, signal.SIGKILL, 0.0, "0,1")


def test_past_the_patience_the_run_stops_with_a_kept_checkpoint_and_the_rerun_finishes_it(tmp_path: Path) -> None:
    """run.tracking_outage_s=3 and a server that does not come back: the job stops at a sync point, its checkpoint
    kept on disk, exit 75, one line. With the server back, the same sweep again sends what was kept (the first
    sweep's job record says killed), continues the same run and ends with the losses of an uninterrupted run."""
    iterations = 150
    slow = [f"run.iterations={iterations}", "run.sync_every=1", "run.checkpoint_every=1"]  # no result changes
    reference_folder = tmp_path / "reference"
    reference_folder.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{reference_folder / 'mlflow.db'}")
        reference = execute(config(run_overrides(tmp_path, iterations)))

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    job = sweep(tmp_path, uri, "first", *slow, "run.tracking_outage_s=3")
    try:
        client = MlflowClient(uri)
        run_id = wait_for_step(client, 4)
        stop_group(server)
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 75, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        print(last)
        assert re.match(rf"tracking lost: .* run {run_id} stopped at step \d+ with a checkpoint; .* kept in ", last)
        assert "Traceback" not in stderr
        (kept,) = (tmp_path / "unsent").glob("*/*")
        assert list(kept.glob("files/*/state.pt"))

        server = start_server(tmp_path, port)
        again = sweep(tmp_path, uri, "again", *slow)
        _, stderr = again.communicate(timeout=600)
        assert again.returncode == 0, stderr[-3000:]

        (run,) = children(client)
        assert run.info.run_id == run_id and int(run.data.tags["resume_count"]) == 1
        for key in ("final_content", "final_style", "final_tv", "final_total"):
            assert run.data.metrics[key] == pytest.approx(reference[key], rel=1e-5), key
        for key in LOSSES:
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(iterations + 1))
        parents = client.search_runs([run.info.experiment_id], "tags.sweep_role = 'parent'")
        statuses = sorted(r["status"] for p in parents for r in job_records(uri, p.info.run_id).values())
        assert statuses == ["finished", "killed"]
        assert not list((tmp_path / "unsent").glob("*/*"))
    finally:
        job.kill()
        stop_group(server)
