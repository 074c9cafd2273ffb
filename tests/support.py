"""Shared by the tests: paths, a tiny fast run config, a private MLflow store per test, sweeps as users run them."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict
from PIL import Image

from ablation import schema
from ablation.paths import CONF_DIR

PROJECT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT.parent / "shared" / "data"
PYTHON = sys.executable
#: Tiny images are all overhead: one thread beats two, and much more so on a shared, busy machine.
torch.set_num_threads(1)
#: Small and fast: 32 px, 3 steps, random weights, no progress bar, no checkpoints.
TINY = ["weights=random", "images.width=32", "run.iterations=3", "run.quiet=true", "run.checkpoint_every=0"]


def store_env(folder: Path, fresh: bool = False) -> dict[str, str]:
    """Environment for a subprocess using a private sqlite store in ``folder`` and the report's pair. The store is
    a copy of an empty one (:func:`sqlite_store`), or, when ``fresh``, none yet: the subprocess creates it."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}" if fresh else sqlite_store(folder)
    env["ABLATION_DATA_DIR"] = str(DATA_DIR)
    env["PYTHONPATH"] = str(PROJECT)
    env["OMP_NUM_THREADS"] = "1"
    return env


@functools.cache
def _empty_store() -> Path:
    """An MLflow sqlite store with no runs, at this MLflow's schema, made once per test process and deleted at exit."""
    folder = Path(tempfile.mkdtemp(prefix="nst-ablation-empty-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()  # creates and migrates the tables
    return folder / "mlflow.db"


def sqlite_store(folder: Path) -> str:
    """The URI of the sqlite store ``folder/mlflow.db``, a copy of an empty one when there is none yet.

    MLflow creates a fresh store by running its migrations, 3-10 s on a busy 2-core machine; a copy takes
    milliseconds. A test of a store made from nothing (jobs racing to create it) uses ``store_env(folder, fresh=True)``.
    """
    db = folder / "mlflow.db"
    if not db.exists():
        shutil.copyfile(_empty_store(), db)
    return f"sqlite:///{db}"


def composed(overrides: Sequence[str] = (), hydra: bool = False) -> DictConfig:
    """conf/config.yaml with ``overrides``, as ``python -m ablation.run OVERRIDES`` composes it (raising what the
    command line refuses); with Hydra's own node ``hydra`` (unresolved: it needs a running job) when asked."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved config ``python -m ablation.run OVERRIDES`` would run."""
    return schema.plain(composed(overrides))


def config_and_hydra(overrides: Sequence[str] = ()) -> tuple[DictConfig, DictConfig]:
    """The composed config (typed by the schema's dataclasses; ``schema.plain`` makes it :func:`config`) and Hydra's
    own node, apart (unresolved: it needs a running job to resolve)."""
    cfg = composed(overrides, hydra=True)
    hydra = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, hydra


def config_for(variant: str = "original", **overrides: object) -> dict[str, Any]:
    """:func:`config` of ``variant`` with random weights and dotted keys, e.g. ``**{"run.iterations": 3}``."""
    return config([f"variant={variant}", "weights=random", *(f"{k}={v}" for k, v in overrides.items())])


def tiny_images(folder: Path, size_px: int = 16) -> tuple[Path, Path]:
    """A seeded content and style image of ``size_px`` square: the smallest the network accepts."""
    rs = np.random.RandomState(0)
    paths = []
    for name in ("content.png", "style.png"):
        pixels = rs.randint(0, 256, (size_px, size_px, 3)).astype(np.uint8)
        paths.append(folder / name)
        Image.fromarray(pixels).save(paths[-1])
    return paths[0], paths[1]


def run_overrides(folder: Path, iterations: int = 6) -> list[str]:
    content, style = tiny_images(folder)
    return [
        "weights=random",
        f"images.content={content}",
        f"images.styles=[{style}]",
        f"run.iterations={iterations}",
        "run.quiet=true",
        "run.sync_every=2",
        "run.checkpoint_every=0",
        "run.device=cpu",
        f"hydra.run.dir={folder / 'hydra'}",  # a single run's log and config: not in the checkout's runs/
    ]


def replaced(base: Sequence[str], *overrides: str) -> list[str]:
    """``base`` without the keys ``overrides`` set, then ``overrides``: Hydra refuses a key given twice."""
    keys = {o.split("=")[0] for o in overrides}
    return [o for o in base if o.split("=")[0] not in keys] + list(overrides)


def sweep_command(sweep_dir: Path, *overrides: str) -> list[str]:
    """``python -m ablation.run -m`` with :data:`TINY` settings; ``overrides`` replace those with the same key."""
    return [PYTHON, "-m", "ablation.run", "-m", *replaced(TINY, *overrides), f"hydra.sweep.dir={sweep_dir}"]


def run_sweep(
    folder: Path, name: str, *overrides: str, timeout_s: float = 240, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run a sweep to its end in a subprocess (cwd = ``folder``), with the store in ``folder`` (:func:`store_env`)."""
    return subprocess.run(
        sweep_command(folder / name, *overrides),
        cwd=folder,
        env=store_env(folder, fresh),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def not_here(reason: str) -> None:
    """Skip, or fail under CI=true: CI must run every cluster, PostgreSQL and server test."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def wait_healthy(uri: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    """Until ``uri``/health answers 200 (unauthenticated even with basic-auth); fail if the server exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"mlflow server did not answer within {timeout_s:.0f} s"
        time.sleep(0.5)


@contextmanager
def make_server(
    folder: Path, *make_args: str, env: Mapping[str, str] | None = None, port: int | None = None
) -> Iterator[tuple[str, int]]:
    """``make server`` on a free loopback port (or ``port``) with its store in ``folder``: its URI and process group
    id, once /health answers; stopped (the whole group) afterwards. ``make_args`` (``STORE_URI=...``,
    ``SERVER_WORKERS=4``, ``SERVER_AUTH=1``) and ``env`` (``PGPASSFILE``, the admin's password) go to make."""
    port = port or free_port()
    if not (folder / "store").exists():
        (folder / "store").mkdir()
        sqlite_store(folder / "store")  # the server's store, at the schema already
    proc = start_server(folder, port, *make_args, env=env)
    try:
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop_group(proc)


def start_server(folder: Path, port: int, *make_args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """``make server`` on ``port`` with its store in ``folder`` (``folder/store``, or ``STORE_URI=...`` among
    ``make_args``), once /health answers; its log appended to ``folder/server.log``. The caller stops it with
    :func:`stop_group`, and may start it again on the same port and store (a restart)."""
    with open(folder / "server.log", "a") as log:
        proc = subprocess.Popen(
            ["make", "-s", "-o", "install", "server", f"SERVER_PORT={port}", f"STORE_DIR={folder / 'store'}",
             *make_args],
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: the server's workers stop with it
        )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, folder / "server.log")
    except BaseException:
        stop_group(proc)
        raise
    return proc


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server the tests may create databases on (``.ci/postgres up``): its URI without a database,
    and the environment that carries its password (``PGPASSFILE``), never the URI."""

    base_uri: str
    env: dict[str, str]

    def uri(self, database: str) -> str:
        return f"{self.base_uri}/{database}"

    @contextmanager
    def database(self, prefix: str = "test") -> Iterator[str]:
        """A fresh database for one test (MLflow's or Optuna's tables from scratch), dropped afterwards."""
        import psycopg  # noqa: PLC0415 - only the PostgreSQL tests need it

        name = f"{prefix}_{os.getpid()}_{time.monotonic_ns()}"
        with using_env(self.env), psycopg.connect(self.uri("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.uri(name)
        finally:
            with using_env(self.env), psycopg.connect(self.uri("postgres"), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def find_postgres() -> Postgres:
    """The PostgreSQL of ``.ci/postgres up`` (or ``ABLATION_POSTGRES_URI`` with ``PGPASSFILE``), once it answers;
    skips (fails under CI=true) with the reason when there is none."""
    try:
        import psycopg  # noqa: PLC0415 - only the PostgreSQL tests need it
    except ImportError:
        not_here("psycopg is missing: pip install -e '.[postgres]'")
    base = os.environ.get("ABLATION_POSTGRES_URI")
    env = {k: os.environ[k] for k in ("PGPASSFILE", "PGPASSWORD") if k in os.environ}
    if not base:
        lines = subprocess.run([PROJECT / ".ci" / "postgres", "env"], capture_output=True, text=True).stdout
        found = dict(line.removeprefix("export ").split("=", 1) for line in lines.splitlines() if "=" in line)
        if "ABLATION_POSTGRES_URI" not in found:
            not_here("no PostgreSQL: start one with `make postgres-up` (.ci/postgres up; docs/cluster.md)")
        base, env = found["ABLATION_POSTGRES_URI"], {"PGPASSFILE": found["PGPASSFILE"]}
    server = Postgres(base.rstrip("/"), env)
    try:
        with using_env(env), psycopg.connect(server.uri("postgres"), connect_timeout=5):
            pass
    except psycopg.OperationalError as err:
        not_here(f"PostgreSQL at {base} does not answer ({str(err).strip().splitlines()[0]}): make postgres-up")
    return server


@contextmanager
def using_env(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in os.environ for a block (in-process clients: psycopg reads PGPASSFILE from there)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def stop_group(proc: subprocess.Popen, timeout_s: float = 30, sig: int = signal.SIGTERM) -> None:
    """``sig`` to the server's process group, then wait until every member is gone (SIGKILL if need be); a group
    already gone is left alone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    proc.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(proc.pid, 0 if time.monotonic() < deadline else signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.2)


@contextmanager
def using_store(uri: str) -> Iterator[None]:
    """The store functions (which read MLFLOW_TRACKING_URI, as a job does) pointed at ``uri`` for a block."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def job_records(uri: str, parent_run_id: str) -> dict[int, dict[str, Any]]:
    """A sweep's job records as the report reads them, from the store at ``uri``."""
    from ablation.store.sweeps import read_job_records  # noqa: PLC0415 - imports MLflow: only the tests that need it

    with using_store(uri):
        return read_job_records(parent_run_id)
