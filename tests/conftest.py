"""Shared fixtures: the shared folder beside the checkout, seeded random weights, a private MLflow store, PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ablation.engine.weights import VGGWeights, random_weights
from tests.support import DATA_DIR, PROJECT, Postgres, find_postgres

SHARED = PROJECT.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "reference").is_dir():
        pytest.fail(f"{SHARED} is missing: the tests need ../shared beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def vgg19_random() -> VGGWeights:
    return random_weights("vgg19", 0)


@pytest.fixture(scope="session")
def vgg16_random() -> VGGWeights:
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
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ABLATION_DATA_DIR", str(DATA_DIR))
    return uri


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """The PostgreSQL of ``make postgres-up``; its tests skip without one (and fail under CI=true)."""
    return find_postgres()
