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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
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
    ]


def sweep_command(sweep_dir: Path, *overrides: str) -> list[str]:
    """``python -m ablation.run -m`` with :data:`TINY` settings; ``overrides`` replace those with the same key."""
    keys = {o.split("=")[0] for o in overrides}
    tiny = [o for o in TINY if o.split("=")[0] not in keys]
    return [PYTHON, "-m", "ablation.run", "-m", *tiny, f"hydra.sweep.dir={sweep_dir}", *overrides]


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


@contextmanager
def make_server(folder: Path) -> Iterator[tuple[str, int]]:
    """``make server`` on a free loopback port with its store in ``folder``: its URI and process group id,
    once /health answers; stopped (the whole group) afterwards."""
    port = free_port()
    (folder / "store").mkdir()
    sqlite_store(folder / "store")  # the server's store, at the schema already
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["make", "-s", "-o", "install", "server", f"SERVER_PORT={port}", f"STORE_DIR={folder / 'store'}"],
        cwd=PROJECT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server's workers stop with it
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (folder / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer within 90 s"
            time.sleep(0.5)
        yield uri, proc.pid
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM to the server's process group, then wait until every member is gone (SIGKILL if need be)."""
    os.killpg(proc.pid, signal.SIGTERM)
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
