"""A real MLflow tracking server, started by ``make server`` on a free loopback port, receives a sweep.

Checked through the server's REST API, as any client elsewhere would see it; the server is stopped by
its process group id (the PID of the ``make`` that started it). To extend (a sweep with another
launcher, a report built from the server), add a case to ``SWEEPS`` or use ``server`` in a new test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ablation.report.__main__ import main as report_main
from tests.support import PROJECT, PYTHON, make_server, run_overrides, store_env

#: launcher name -> extra Hydra arguments for ``python -m ablation.run -m``
SWEEPS: dict[str, list[str]] = {"submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]}


def api(uri: str, path: str, body: dict | None = None, query: dict | None = None) -> dict:
    url = f"{uri}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    """``make server`` on a free port with its store in tmp_path; yields the URI, then stops it."""
    with make_server(tmp_path) as (uri, _):
        yield uri


def test_make_server_binds_loopback_by_default() -> None:
    dry = subprocess.run(["make", "-n", "-o", "install", "server"], cwd=PROJECT, capture_output=True, text=True)
    assert "--host 127.0.0.1" in dry.stdout and "--workers 1" in dry.stdout
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in dry.stdout


@pytest.mark.parametrize("launcher", list(SWEEPS))
def test_two_variant_sweep_against_a_real_server(server: str, tmp_path: Path, launcher: str) -> None:
    env = store_env(tmp_path) | {"MLFLOW_TRACKING_URI": server}
    args = ["variant=original,avg_pool", f"hydra.sweep.dir={tmp_path / 'multirun'}", *SWEEPS[launcher]]
    done = subprocess.run(
        [PYTHON, "-m", "ablation.run", "-m", *run_overrides(tmp_path, 2), *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    experiment = api(server, "experiments/get-by-name", query={"experiment_name": "nst-ablation"})["experiment"]
    found = api(server, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
    roles = [{t["key"]: t["value"] for t in r["data"]["tags"]}.get("sweep_role") for r in found]
    assert roles.count("parent") == 1  # the sweep's parent run, made before the jobs started
    runs = [r for r, role in zip(found, roles, strict=True) if role != "parent"]
    assert len(runs) == 2
    by_variant = {next(t["value"] for t in r["data"]["tags"] if t["key"] == "variant"): r for r in runs}
    assert set(by_variant) == {"original", "avg_pool"}
    for run in runs:
        assert run["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert math.isfinite(metrics["final_total"]) and metrics["final_total"] > 0
        files = api(server, "artifacts/list", query={"run_id": run["info"]["run_id"]}).get("files", [])
        assert {"final.png", "losses.csv", "config.yaml"} <= {f["path"] for f in files}
    params = {p["key"]: p["value"] for p in by_variant["avg_pool"]["data"]["params"]}
    assert params["variant.pooling"] == "avg"

    # the report is built from the server, as on a cluster
    os.environ["MLFLOW_TRACKING_URI"] = server
    try:
        assert report_main(["--out", str(tmp_path / "reports")]) == 0
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    (folder,) = (tmp_path / "reports").iterdir()
    text = (folder / "report.md").read_text()
    assert "Average pooling" in text and (folder / "grid.png").stat().st_size > 0
