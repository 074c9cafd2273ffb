"""A real MLflow tracking server, started by ``make server`` on a free loopback port, receives a sweep.

Checked through the server's REST API, as any client elsewhere would see it; the server is stopped by
its process group id (the PID of the ``make`` that started it). To extend (a sweep with another
launcher, a report built from the server), add a case to ``SWEEPS`` or use ``server`` in a new test.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ablation.engine.errors import UserError
from ablation.report.__main__ import main as report_main
from ablation.store import server as launcher
from tests.support import PROJECT, PYTHON, make_server, run_overrides, store_env

pytestmark = pytest.mark.slow  # starts processes (see pyproject's markers)

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


def make_server_command(*make_args: str) -> subprocess.CompletedProcess:
    """What ``make server ARGS`` would start (the launcher's --dry-run): the mlflow server command line."""
    return subprocess.run(
        ["make", "-s", "-o", "install", "server", "SERVER_ARGS=--dry-run", *make_args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_server_binds_loopback_with_one_worker_by_default() -> None:
    done = make_server_command()
    assert done.returncode == 0, done.stderr
    runs = PROJECT / "runs"
    expected = (
        f"-m mlflow server --backend-store-uri sqlite:///{runs}/mlflow.db --artifacts-destination {runs}/artifacts "
        "--host 127.0.0.1 --port 5000 --workers 1"
    )
    assert done.stdout.strip().endswith(expected), done.stdout
    assert launcher.SERVER_ENV == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def test_the_servers_pool_has_a_connection_per_request_thread_unless_the_user_says_otherwise() -> None:
    """anyio's 40 threads per worker against SQLAlchemy's 5 + overflow; a user's own setting wins, ours do not move."""
    args = launcher.parse_args(["--store-dir", "runs"])
    env = launcher.server_env(args, {"PATH": "/bin", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})
    assert env == {"PATH": "/bin", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "35", **launcher.SERVER_ENV}
    assert 5 + int(env["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]) == 40
    mine = launcher.server_env(args, {"MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "90"})
    assert mine["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"] == "90"


def test_make_server_takes_a_postgresql_store_and_workers() -> None:
    """``STORE_URI=postgresql://...`` reaches ``mlflow server`` unchanged, and four workers are allowed there."""
    uri = "postgresql://nst@127.0.0.1:5432/mlflow"
    done = make_server_command(f"STORE_URI={uri}", "SERVER_WORKERS=4", "SERVER_AUTH=1")
    assert done.returncode == 0, done.stderr
    assert f"--backend-store-uri {uri} " in done.stdout and "--workers 4 --app-name basic-auth" in done.stdout


@pytest.mark.parametrize("store", ["", "STORE_URI=sqlite:////tmp/elsewhere.db"])
def test_more_workers_on_sqlite_are_refused_in_one_line(store: str) -> None:
    done = make_server_command("SERVER_WORKERS=4", *([store] if store else []))
    assert done.returncode == 2 and done.stdout == ""
    # make's own "Error 2" line; under ``make test`` the inner make is a sub-make and says "make[1]: ***"
    (line,) = [line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert line.startswith("make server: --workers 4 needs a PostgreSQL store (STORE_URI=postgresql://...)")


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "admin-password"
    secret.write_text("a-password-of-some-length\n")
    secret.chmod(0o640)
    with pytest.raises(UserError, match=f"readable by others \\(mode 640.*chmod 600 {secret}"):
        launcher.read_owner_only(secret)
    secret.chmod(0o600)
    assert launcher.read_owner_only(secret) == "a-password-of-some-length"


def test_auth_makes_an_owner_only_password_once_and_keeps_it_off_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(launcher.ADMIN_PASSWORD_ENV, raising=False)
    monkeypatch.delenv(launcher.SECRET_KEY_ENV, raising=False)
    args = launcher.parse_args(["--store-dir", str(tmp_path), "--auth"])
    env = launcher.auth_env(args)
    made = tmp_path / "auth" / "admin-password"
    assert made.stat().st_mode & 0o777 == 0o600 and (tmp_path / "auth").stat().st_mode & 0o777 == 0o700
    password = env[launcher.ADMIN_PASSWORD_ENV]
    assert len(password) >= launcher.MIN_PASSWORD_CHARS and made.read_text().strip() == password
    assert launcher.auth_env(args)[launcher.ADMIN_PASSWORD_ENV] == password  # the second start reads the same file
    settings = Path(env["MLFLOW_AUTH_CONFIG_PATH"]).read_text()
    assert "default_permission = READ" in settings and f"sqlite:///{tmp_path}/auth/users.db" in settings
    assert "auth_cache_ttl_seconds = 60\n" in settings  # a checked password trusted for a minute, not re-hashed
    assert password not in settings and password not in " ".join(launcher.command(args))
    monkeypatch.setenv(launcher.ADMIN_PASSWORD_ENV, "short")
    with pytest.raises(UserError, match="has 5 characters: MLflow wants 12"):
        launcher.auth_env(args)


@pytest.mark.slow
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
