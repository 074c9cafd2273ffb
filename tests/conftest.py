"""Shared fixtures: the shared folder beside the checkout, seeded random weights, a private MLflow store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from ablation.weights import VGGWeights, random_weights

PROJECT = Path(__file__).resolve().parent.parent
SHARED = PROJECT.parent / "shared"
torch.set_num_threads(min(2, os.cpu_count() or 1))


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


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for this test, and the report's pair from ../shared/data."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ABLATION_DATA_DIR", str(SHARED / "data"))
    return uri


def cli_env(uri: str) -> dict[str, str]:
    """Environment for a `python -m ablation.run` subprocess against the store ``uri``."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "ABLATION_DATA_DIR": str(SHARED / "data"),
        "PYTHONPATH": str(PROJECT),
        "OMP_NUM_THREADS": "2",
    }


PYTHON = sys.executable
