"""A tracking server that goes away under a running sweep: killed and away for a while, its database restarting under
it, or away longer than ``run.tracking_outage_s``. Each runs ``make server`` and a real sweep in a subprocess, and then
reads every step, heartbeat, checkpoint, image and job record back from the server. On sqlite the database is the
server's own file, so the database restarting is the server process killed, its requests cut mid-way and the file left
as a crash leaves it: the server killed and away for 10 s is that case and a 10 s outage at once. On PostgreSQL the
database restarting is PostgreSQL itself stopped and started under the running server (a private one, on its own port
and folder, so that no other test's database goes away). A server that is away, for a while or past the patience, is
the client's outbox at work whatever database the server has: those run on sqlite only (each is over a minute of a
busy CI machine).

What the outbox promises (``ablation/store/outbox.py``): the runs keep computing while the server is away (steps whose
time falls inside the outage); once it is back everything is stored, each step once; a run that finished meanwhile
waited for it; past the patience the run stops with a checkpoint kept on disk, and the re-run sends it and finishes
with the losses of an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablation.job import execute
from tests.support import (
    PROJECT,
    PYTHON,
    Postgres,
    config,
    free_port,
    job_records,
    not_here,
    replaced,
    run_overrides,
    sqlite_store,
    start_server,
    stop_group,
    store_env,
)

pytestmark = pytest.mark.slow
LOSSES = ("content", "style", "tv", "total")
POSTGRES_SCRIPT = PROJECT / ".ci" / "postgres"


@dataclass
class Backend:
    """The server's database: make's arguments and environment for it, and how to restart it under the server."""

    name: str
    make_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    restart: Callable[[float], None] | None = None  # down for that many seconds, then up (None: sqlite)


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[tuple[Postgres, Callable[[float], None]]]:
    """A PostgreSQL of its own (``.ci/postgres up`` on a free port and folder), and a function that stops it for a
    while and starts it again; stopped and removed afterwards."""
    if shutil.which("initdb") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        not_here("no PostgreSQL binaries: .ci/postgres up installs Debian's postgresql")
    state = Path(f"/var/tmp/nst-ablation-outage-{os.getpid()}")  # not under /tmp/pytest-of-*: postgres must reach it
    env = {**os.environ, "POSTGRES_STATE_DIR": str(state), "POSTGRES_PORT": str(free_port())}

    def script(command: str) -> str:
        done = subprocess.run([POSTGRES_SCRIPT, command], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def restart(down_s: float) -> None:
        script("down")
        time.sleep(down_s)
        script("up")

    script("up")
    lines = dict(line.removeprefix("export ").split("=", 1) for line in script("env").splitlines() if "=" in line)
    try:
        yield Postgres(lines["ABLATION_POSTGRES_URI"], {"PGPASSFILE": lines["PGPASSFILE"]}), restart
    finally:
        script("down")
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite")
        return
    postgres, restart = request.getfixturevalue("private_postgres")
    with postgres.database("outage") as uri:
        yield Backend("postgresql", (f"STORE_URI={uri}",), postgres.env, restart)


def sweep(folder: Path, uri: str, name: str, *overrides: str) -> subprocess.Popen:
    """``python -m ablation.run -m`` with 16 px random-weight settings against ``uri`` (60 steps, a checkpoint every
    10; ``overrides`` replace those of the same key), records kept in ``folder/unsent``."""
    base = [*run_overrides(folder, 60), "run.sync_every=2", "run.checkpoint_every=10"]
    args = replaced(base, *overrides)
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


class Server:
    """``make server`` on one port and one store for the whole test, stopped and started again at will."""

    def __init__(self, folder: Path, backend: Backend) -> None:
        self.folder, self.backend, self.port = folder, backend, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        self.proc = start_server(self.folder, self.port, *self.backend.make_args, env=self.backend.env)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_group(self.proc, sig=sig)


def server_killed_and_away_10_s(server: Server) -> None:
    """Requests cut mid-way and, on sqlite, the database file left as a crash leaves it; back 10 s later."""
    server.stop(signal.SIGKILL)
    time.sleep(10)
    server.start()


def database_restarts(server: Server) -> None:
    """PostgreSQL stopped for 8 s under the running server."""
    assert server.backend.restart is not None, "on sqlite the database is the server: server_killed_and_away_10_s"
    server.backend.restart(8)


def outage_case(tmp_path: Path, backend: Backend, interrupt: Callable[[Server], None], seeds: str) -> None:
    """A sweep over ``seeds``, interrupted once the first run stored step 10: each step of each run stored once,
    every record and status there, and the first run's loop went on meanwhile."""
    server = Server(tmp_path, backend)
    job = sweep(tmp_path, server.uri, "sweep", f"run.seed={seeds}")
    try:
        client = MlflowClient(server.uri)
        first = wait_for_step(client, 10)
        down_ms = time.time() * 1000
        interrupt(server)
        up_ms = time.time() * 1000  # it answers again
        _, stderr = job.communicate(timeout=600)
        assert job.returncode == 0, stderr[-3000:]

        runs = children(client)
        assert len(runs) == len(seeds.split(","))
        for run in runs:
            check_stored_once(client, run, 60, 10)
        history = client.get_metric_history(first, "total")
        computed_away = [m.step for m in history if down_ms < m.timestamp < up_ms]
        loop_s = {r.data.tags["seed"]: round(r.data.metrics["loop_s"], 1) for r in runs}
        print(f"{backend.name}: away {(up_ms - down_ms) / 1000:.1f} s; steps computed meanwhile: "
              f"{len(computed_away)}; loop_s by seed: {loop_s}")  # fmt: skip
        assert len(computed_away) >= 5  # the loop went on while nothing could be stored
        parent = client.search_runs(
            [runs[0].info.experiment_id], "tags.sweep_role = 'parent'", order_by=["attributes.start_time DESC"]
        )[0]
        records = job_records(server.uri, parent.info.run_id)
        assert sorted(r["status"] for r in records.values()) == ["finished"] * len(runs)
        assert parent.info.status == "FINISHED" and parent.data.metrics["ran"] == len(runs)
        assert not list((tmp_path / "unsent").glob("*/*"))  # nothing was left behind
    finally:
        job.kill()
        server.stop()


#: The server away is the same to the client on either database: sqlite only (see the module's docstring).
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_a_server_killed_and_away_ten_seconds_mid_sweep_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, backend: Backend
) -> None:
    """On sqlite this is also the database restarting (see the module's docstring)."""
    outage_case(tmp_path, backend, server_killed_and_away_10_s, "0,1,2")


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_database_restarting_under_a_running_server_loses_nothing(tmp_path: Path, backend: Backend) -> None:
    outage_case(tmp_path, backend, database_restarts, "0,1")


@SQLITE_ONLY
def test_past_the_patience_the_run_stops_with_a_kept_checkpoint_and_the_rerun_finishes_it(
    tmp_path: Path, backend: Backend
) -> None:
    """run.tracking_outage_s=3 and a server that does not come back: the job stops at a sync point, its checkpoint
    kept on disk, exit 75, one line. With the server back, the same sweep again sends what was kept (the first
    sweep's job record says killed), continues the same run and ends with the losses of an uninterrupted run."""
    iterations = 120
    # the first sweep syncs and checkpoints every step (no result changes: neutral settings) so that it stops within
    # the patience with a checkpoint of its last step; the re-run goes at the sweep's usual pace
    slow = [f"run.iterations={iterations}", "run.sync_every=1", "run.checkpoint_every=1"]
    reference_folder = tmp_path / "reference"
    reference_folder.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", sqlite_store(reference_folder))
        reference = execute(config(run_overrides(tmp_path, iterations)))

    server = Server(tmp_path, backend)
    job = sweep(tmp_path, server.uri, "first", *slow, "run.tracking_outage_s=3")
    try:
        client = MlflowClient(server.uri)
        run_id = wait_for_step(client, 4)
        server.stop()
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 75, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        print(last)
        assert re.match(rf"tracking lost: .* run {run_id} stopped at step \d+ with a checkpoint; .* kept in ", last)
        assert "Traceback" not in stderr
        (kept,) = (tmp_path / "unsent").glob("*/*")
        assert list(kept.glob("files/*/state.pt"))

        server.start()
        again = sweep(tmp_path, server.uri, "again", f"run.iterations={iterations}")
        _, stderr = again.communicate(timeout=600)
        assert again.returncode == 0, stderr[-3000:]

        (run,) = children(client)
        assert run.info.run_id == run_id and int(run.data.tags["resume_count"]) == 1
        for key in ("final_content", "final_style", "final_tv", "final_total"):
            assert run.data.metrics[key] == pytest.approx(reference[key], rel=1e-5), key
        for key in LOSSES:
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(iterations + 1))
        parents = client.search_runs([run.info.experiment_id], "tags.sweep_role = 'parent'")
        statuses = sorted(r["status"] for p in parents for r in job_records(server.uri, p.info.run_id).values())
        assert statuses == ["finished", "killed"]
        assert not list((tmp_path / "unsent").glob("*/*"))
    finally:
        job.kill()
        server.stop()
