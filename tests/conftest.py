"""Shared fixtures: the shared folder beside the checkout, seeded random weights, a private MLflow store, PostgreSQL;
the guard that keeps ``make test-fast`` fast (a test not marked ``slow`` fails when it or its fixtures start a
process); the order of the modules that lets ``make test``'s workers overlap the waiting tests with the computing
ones; and no GPU for the suite (see :func:`pytest_configure`).
"""

from __future__ import annotations

import _posixsubprocess
import os
import platform
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ablation.engine.weights import VGGWeights
    from tests.support import Postgres

# torch, MLflow and the project are imported by the fixtures that need them: xdist's controller process loads this
# file too, and runs no test.
SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
#: The test whose setup, call or teardown runs now in this process (its module fixtures' included).
_current: list[pytest.Item] = []
#: Programs any test may start: MLflow reads a run's source commit with git (GitPython), in milliseconds.
_ANY_TEST_MAY_START = {"git"}
#: Every way a process starts: subprocess (its own reference to fork_exec, or posix_spawn), multiprocessing's spawn
#: and joblib's loky workers (fork_exec), multiprocessing's fork.
_STARTERS = (
    (subprocess, "_fork_exec"),
    (_posixsubprocess, "fork_exec"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "fork"),
)


def _program(args: tuple[Any, ...]) -> str:
    """The program a starter was asked to run: fork_exec's argv[0], posix_spawn's path; a fork runs none."""
    first = args[0] if args else None
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    return Path(os.fsdecode(first)).name if isinstance(first, (str, bytes, os.PathLike)) else "a fork of itself"


def _guarded(start: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        program = _program(args)
        if _current and _current[-1].get_closest_marker("slow") is None and program not in _ANY_TEST_MAY_START:
            pytest.fail(
                f"{_current[-1].nodeid} starts a process ({program}): mark it @pytest.mark.slow "
                "(make test-fast runs none)",
                pytrace=False,
            )
        return start(*args, **kwargs)

    return guarded


#: ``make test-cuda`` sets this to run tests/cuda on the GPUs; every other run of the suite hides them.
CUDA_TESTS_VARIABLE = "ABLATION_TEST_CUDA"


def pytest_configure(config: pytest.Config) -> None:
    # The suite's expected numbers are CPU numbers (the upstream reference, bit-for-bit resumes, seeds one after
    # another): on a CUDA host a run left at run.device=auto would compute them on the GPU. So the suite, its xdist
    # workers and every process it starts see no GPU, and `make test` tests the same thing on every host. CUDA has its
    # own tests (tests/cuda, `make test-cuda`, part of `make check-cuda`). Set before anything initialises CUDA.
    if os.environ.get(CUDA_TESTS_VARIABLE) != "1":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    platform.processor()  # runs `uname -p` once and caches it (MLflow's import asks): not a test's process
    for module, name in _STARTERS:
        if hasattr(module, name):
            setattr(module, name, _guarded(getattr(module, name)))


def fast_tier(config: pytest.Config) -> bool:
    """``make test-fast``: the tests not marked slow."""
    return config.option.markexpr == "not slow"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``make test-fast`` (``-m "not slow"``) does not import the modules whose every test is slow (a module-level
    ``pytestmark = pytest.mark.slow``): their imports (MLflow's server, Optuna) cost each worker seconds, for tests it
    would deselect anyway."""
    if not fast_tier(config) or not collection_path.name.startswith("test_"):
        return None
    return "\npytestmark = pytest.mark.slow" in collection_path.read_text() or None


#: The modules that take longest under ``make test`` (its ``--durations``; 40-240 s each on the 2-core AMD EPYC),
#: longest first. xdist hands a worker its next module while the current one still has two tests to go, so a long
#: module handed out late waits behind another long one and ends the run alone on one worker (test_sweep.py ran from
#: 446 s to 506 s while the two other workers had finished at 470 s). Started first, they are done by the time the
#: short modules fill the workers at the end. A module missing here only starts later. ``make test-fast`` keeps the
#: plain order: without their slow tests these modules are short, and taking them first made it slower (95-101 s
#: against 84 s).
LONGEST_FIRST = (
    "test_outage.py",
    "cluster/test_server_load.py",
    "engine/test_checkpointing.py",
    "test_tune_resume.py",
    "test_run_cli.py",
    "test_sweep.py",
    "test_memory_measured.py",
    "report/test_tune_report.py",
    "test_server_auth.py",
    "test_server.py",
    "engine/test_transfer_reference.py",
    "test_errors.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules that wait on SLURM first, then the longest modules (:data:`LONGEST_FIRST`), then the other modules that
    start processes, then the rest: with xdist (``--dist loadscope --no-loadscope-reorder``, one module per worker at
    a time) the SLURM jobs run beside everything else, and the small in-process modules fill the workers at the end.
    A module's tests stay together."""

    modules: dict[object, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(getattr(item, "module", None), []).append(item)
    tests_dir = Path(__file__).parent

    def rank(tests: list[pytest.Item]) -> tuple[int, int]:
        if any("slurm_partition" in getattr(t, "fixturenames", ()) for t in tests):
            return 0, 0
        name = tests[0].path.relative_to(tests_dir).as_posix()
        if name in LONGEST_FIRST and not fast_tier(config):
            return 1, LONGEST_FIRST.index(name)
        return (2 if any(t.get_closest_marker("slow") for t in tests) else 3), 0

    ranks = {module: rank(tests) for module, tests in modules.items()}
    items.sort(key=lambda item: ranks[getattr(item, "module", None)])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    _current.append(item)
    try:
        return (yield)
    finally:
        _current.pop()


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "reference").is_dir():
        pytest.fail(f"{SHARED} is missing: the tests need ../shared beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def vgg19_random() -> VGGWeights:
    from ablation.engine.weights import random_weights

    return random_weights("vgg19", 0)


@pytest.fixture(scope="session")
def vgg16_random() -> VGGWeights:
    from ablation.engine.weights import random_weights

    return random_weights("vgg16", 0)


@pytest.fixture(autouse=True)
def tracking_link(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no patience configured, no outage and an outbox that sends (a test that stops a run
    for a lost server leaves its process's outbox keeping records on disk, as it should: not for the next test)."""
    from ablation.store import outbox, tolerance  # noqa: PLC0415 - imports MLflow: only once a test runs

    monkeypatch.delenv(tolerance.RETRIES_VARIABLE, raising=False)  # configure() sets it; restored afterwards
    yield
    tolerance._link.__init__()
    if outbox._outbox is not None and (outbox._outbox.spool is not None or outbox._outbox.failures):
        outbox._outbox = None


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for this test, and the report's pair from ../shared/data."""
    from tests.support import DATA_DIR, sqlite_store

    uri = sqlite_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ABLATION_DATA_DIR", str(DATA_DIR))
    return uri


@pytest.fixture
def fresh_calibration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No machine calibration kept, by this process or another (``job.MACHINE_REUSE_S``): the next job measures
    its own. The kept one lives under ``XDG_CACHE_HOME``, which also moves torch's hub folder unless ``TORCH_HOME``
    is set: the random weights' files stay where they are."""
    import torch

    from ablation import job

    monkeypatch.setenv("TORCH_HOME", str(Path(torch.hub.get_dir()).parent))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(job, "_measured", {})


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """The PostgreSQL of ``make postgres-up``; its tests skip without one (and fail under CI=true)."""
    from tests.support import find_postgres

    return find_postgres()
