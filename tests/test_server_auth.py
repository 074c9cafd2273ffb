"""``make server SERVER_AUTH=1`` lets in only its users: a real server with MLflow's basic-auth app.

One server for the module. Its admin's password is in the owner-only file ``make server`` reads; the admin makes
two users: ``alice`` runs a sweep (she creates the experiment, so she may write it) and ``bob`` gets the
server's default permission, READ. Then: a client without a password is refused (HTTP 401) and can neither read
nor write a run; bob reads but cannot write; a wrong or missing password ends a run in one line; and no
password appears in any param, tag, artifact, log line or command line.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

from ablation.report.__main__ import main as report_main
from ablation.store import connection
from ablation.store.connection import TrackingError
from ablation.store.runlog import RunLog
from tests.support import PROJECT, PYTHON, make_server, run_overrides, store_env, using_env

pytestmark = pytest.mark.slow
EXPERIMENT = "nst-ablation"


@dataclass(frozen=True)
class AuthServer:
    uri: str
    group: int
    folder: Path
    passwords: dict[str, str]  # user -> password (admin, alice, bob)

    def env(self, user: str | None, password: str | None = None) -> dict[str, str]:
        """A job's environment as ``user`` (None: no credentials at all)."""
        env = store_env(self.folder) | {"MLFLOW_TRACKING_URI": self.uri}
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        if user is not None:
            env["MLFLOW_TRACKING_USERNAME"] = user
            env["MLFLOW_TRACKING_PASSWORD"] = password or self.passwords[user]
        return env

    def client(self) -> MlflowClient:
        """An MLflow client: it sends the credentials in os.environ at each request (see :func:`as_user`)."""
        return MlflowClient(self.uri)


def as_user(server: AuthServer, user: str | None) -> dict[str, str]:
    """The credentials of ``user`` for os.environ (empty strings: MLflow sends none)."""
    if user is None:
        return {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""}
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": server.passwords[user]}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    folder = tmp_path_factory.mktemp("auth")
    passwords = {name: f"{name}-{secrets.token_hex(12)}" for name in ("admin", "alice", "bob")}
    password_file = folder / "store" / "auth" / "admin-password"
    password_file.parent.mkdir(parents=True, mode=0o700)
    password_file.touch(mode=0o600)
    password_file.write_text(passwords["admin"] + "\n")
    with make_server(folder, "SERVER_AUTH=1") as (uri, group):
        server = AuthServer(uri, group, folder, passwords)
        assert_no_secret_on_command_lines(group, passwords["admin"])
        with using_env(as_user(server, "admin")):
            admin = get_app_client("basic-auth", tracking_uri=uri)
            admin.create_user("alice", passwords["alice"])
            admin.create_user("bob", passwords["bob"])
        yield server


def assert_no_secret_on_command_lines(group: int, secret: str) -> None:
    """No process of the server (``make``, the launcher, ``mlflow server``, its workers) has ``secret`` in argv."""
    found = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == group:
                found += 1
                assert secret not in (entry / "cmdline").read_bytes().decode(errors="replace"), entry.name
        except (ProcessLookupError, FileNotFoundError):
            continue
    assert found >= 2  # make and the server at least


@pytest.fixture(scope="module")
def alice_sweep(auth_server: AuthServer) -> tuple[subprocess.CompletedProcess, Path]:
    """A two-variant sweep as alice (she creates the experiment): its process and its folder."""
    folder = auth_server.folder / "sweep"
    folder.mkdir()
    args = ["variant=original,avg_pool", f"hydra.sweep.dir={folder / 'multirun'}"]
    done = subprocess.run(
        [PYTHON, "-m", "ablation.run", "-m", *run_overrides(folder, 2), *args],
        cwd=PROJECT,
        env=auth_server.env("alice"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, folder


def api(server: AuthServer, method: str, path: str, body: dict | None = None, user: str | None = None) -> int:
    """The HTTP status of one REST call, with ``user``'s credentials or none."""
    url = f"{server.uri}/api/2.0/{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if user is not None:
        token = base64.b64encode(f"{user}:{server.passwords[user]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def sweep_runs(server: AuthServer) -> list:
    with using_env(as_user(server, "alice")):
        store = server.client()
        experiment = store.get_experiment_by_name(EXPERIMENT)
        return store.search_runs([experiment.experiment_id], max_results=100)


def test_a_sweep_and_its_report_work_through_the_server(auth_server: AuthServer, alice_sweep, tmp_path: Path) -> None:
    runs = sweep_runs(auth_server)
    jobs = [r for r in runs if r.data.tags.get("sweep_role") != "parent"]
    assert sorted(r.data.tags["variant"] for r in jobs) == ["avg_pool", "original"]
    assert all(r.info.status == "FINISHED" for r in runs)
    with using_env(as_user(auth_server, "alice") | {"MLFLOW_TRACKING_URI": auth_server.uri}):
        assert report_main(["--out", str(tmp_path / "reports")]) == 0
    (folder,) = (tmp_path / "reports").iterdir()
    assert "Average pooling" in (folder / "report.md").read_text() and (folder / "grid.png").stat().st_size > 0


def test_anonymous_client_is_refused_and_can_neither_read_nor_write(auth_server: AuthServer, alice_sweep) -> None:
    run = next(r for r in sweep_runs(auth_server) if r.data.tags.get("sweep_role") != "parent")
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    query = urllib.parse.urlencode({"run_id": run_id})
    calls = [
        ("GET", f"mlflow/runs/get?{query}", None),
        ("POST", "mlflow/runs/search", {"experiment_ids": [experiment_id]}),
        ("GET", f"mlflow/artifacts/list?{query}", None),
        ("GET", f"mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/config.yaml", None),
        ("POST", "mlflow/runs/create", {"experiment_id": experiment_id}),
        ("POST", "mlflow/runs/log-parameter", {"run_id": run_id, "key": "intruder", "value": "1"}),
        ("POST", "mlflow/runs/set-tag", {"run_id": run_id, "key": "variant", "value": "changed"}),
        ("POST", "mlflow/runs/delete", {"run_id": run_id}),
        ("POST", "mlflow/experiments/create", {"name": "intruder"}),
    ]
    assert [api(auth_server, method, path, body) for method, path, body in calls] == [401] * len(calls)
    with using_env(as_user(auth_server, None)), pytest.raises(MlflowException) as refused:
        auth_server.client().get_run(run_id)
    assert refused.value.get_http_status_code() == 401
    after = next(r for r in sweep_runs(auth_server) if r.info.run_id == run_id)
    assert after.info.lifecycle_stage == "active" and after.data.tags["variant"] == run.data.tags["variant"]
    assert "intruder" not in after.data.params


def test_a_read_only_user_reads_but_cannot_write(auth_server: AuthServer, alice_sweep) -> None:
    run = next(r for r in sweep_runs(auth_server) if r.data.tags.get("sweep_role") != "parent")
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    with using_env(as_user(auth_server, "bob")):
        bob = auth_server.client()
        assert bob.get_run(run_id).data.params == run.data.params  # READ: the server's default permission
        writes = [
            lambda: bob.log_param(run_id, "intruder", "1"),
            lambda: bob.set_tag(run_id, "variant", "changed"),
            lambda: bob.log_metric(run_id, "final_total", 0.0),
            lambda: bob.create_run(experiment_id),
            lambda: bob.delete_run(run_id),
        ]
        codes = []
        for write in writes:
            with pytest.raises(MlflowException) as refused:
                write()
            codes.append(refused.value.get_http_status_code())
    assert codes == [403] * len(writes)
    after = next(r for r in sweep_runs(auth_server) if r.info.run_id == run_id)
    assert after.data.params == run.data.params and after.data.tags["variant"] == run.data.tags["variant"]
    assert after.data.metrics == run.data.metrics and after.info.lifecycle_stage == "active"


def test_a_run_without_a_password_ends_in_one_line(auth_server: AuthServer, alice_sweep, tmp_path: Path) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "ablation.run", *run_overrides(tmp_path, 2)],
        cwd=PROJECT,
        env=auth_server.env(None),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    line = "lets in only its users: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    assert done.stderr.strip().splitlines() == [f"error: {auth_server.uri} {line} (docs/cluster.md, Only its users)"]


def test_a_wrong_password_or_a_reader_writing_is_one_clear_line(auth_server: AuthServer, alice_sweep) -> None:
    """The same refusals in process: where a job meets them (opening the store, creating its run)."""
    wrong = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "not-alices-password"}
    with using_env(wrong | {"MLFLOW_TRACKING_URI": auth_server.uri}), pytest.raises(TrackingError) as refused:
        connection.open_store(EXPERIMENT)
    check = "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    assert str(refused.value) == f"{auth_server.uri} refused user 'alice' (HTTP 401): {check}"
    with using_env(as_user(auth_server, "bob") | {"MLFLOW_TRACKING_URI": auth_server.uri}):
        experiment_id = connection.open_store(EXPERIMENT)  # bob may read it
        with pytest.raises(TrackingError, match=r"user 'bob' may read but not write here \(HTTP 403\): ask"):
            RunLog.create(experiment_id, "bobs-run", {})


def test_no_password_is_stored_or_logged(auth_server: AuthServer, alice_sweep, tmp_path: Path) -> None:
    done, sweep_folder = alice_sweep
    secrets_ = [*auth_server.passwords.values()]
    secrets_ += [base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in auth_server.passwords.items()]
    runs = sweep_runs(auth_server)
    assert len(runs) == 3  # the parent and two jobs
    texts = [done.stdout, done.stderr, (auth_server.folder / "server.log").read_text()]
    with using_env(as_user(auth_server, "alice")):
        store = auth_server.client()
        for run in runs:
            texts += [json.dumps(run.data.params), json.dumps(run.data.tags), run.info.run_name]
            local = Path(store.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
            texts += [p.read_bytes().decode(errors="replace") for p in local.rglob("*") if p.is_file()]
    texts += [p.read_bytes().decode(errors="replace") for p in sweep_folder.rglob("*") if p.is_file()]
    auth_files = [p.name for p in (auth_server.folder / "store" / "auth").iterdir()]
    texts += [(auth_server.folder / "store" / "auth" / "basic_auth.ini").read_text()]
    assert len(texts) > 10 and "admin-password" in auth_files
    leaks = [s[:6] + "..." for s in secrets_ for text in texts if s in text]
    assert leaks == []
