"""Fixtures of the cluster tests: a real one-node SLURM (``.ci/slurm up``) and a real ``make server``.

Without ``sbatch`` (a laptop) the SLURM tests skip and say why; under ``CI=true`` a skip is a failure, so
``.ci/run`` cannot pass without having run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import make_server


def not_here(reason: str) -> None:
    """Skip, or fail under CI=true: CI must run every cluster test."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_partition() -> str:
    """The partition of an idle SLURM node this machine can submit to."""
    if shutil.which("sbatch") is None:
        not_here("sbatch is missing: start a one-node SLURM with `make slurm-up` (docs/cluster.md)")
    done = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=30)
    states = [line.split() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not any(state in ("idle", "mixed") for _, state in states):
        not_here(f"no idle SLURM node (sinfo: {(done.stdout + done.stderr).strip() or 'nothing'}): make slurm-up")
    return next(p.rstrip("*") for p, state in states if state in ("idle", "mixed"))


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """One ``make server`` for the module (each test uses its own experiment): its URI and process group."""
    with make_server(tmp_path_factory.mktemp("server")) as started:
        yield started


@pytest.fixture(scope="module")
def server(server_process: tuple[str, int]) -> str:
    return server_process[0]


@pytest.fixture(scope="module")
def server_pid(server_process: tuple[str, int]) -> int:
    return server_process[1]


def server_peak_mib(group: int) -> float:
    """Peak resident memory (VmHWM) of the server's processes (``make``'s process group), summed, in MiB.

    A sum of each process's own peak: an upper bound of the group's peak at any one moment.
    """
    peak_kib = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == group:
                status = (entry / "status").read_text()
                peak_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0)
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return peak_kib / 1024
