"""``make server``: MLflow's tracking server on the project's store, for everyone on its network or only its users.

    python -m ablation.store.server --store-dir runs                      # sqlite in runs/, one worker
    python -m ablation.store.server --store-dir runs --store-uri postgresql://nst@db:5432/mlflow --workers 4
    python -m ablation.store.server --store-dir runs --auth               # MLflow's basic-auth app

It checks what ``mlflow server`` would only find out later or never, each refusal one line and exit code 2,
then replaces itself with ``mlflow server`` (so its pid, and its process group, are the server's):

- ``--workers`` above 1 needs a store that several processes write at once: PostgreSQL. sqlite serialises
  every write behind one file lock, so more workers only queue for it (and fail with ``database is locked``).
- ``--auth`` (only users with a password get in): the admin's password comes from ``MLFLOW_AUTH_ADMIN_PASSWORD``
  or a file readable only by its owner (``--admin-password-file``; made with a random password on the first
  start), never from the command line, and is handed to the server in its environment. The app's settings
  (its user store, the permission users get by default) are written to ``<store-dir>/auth/``.

Artifacts always go through the server (``--artifacts-destination``): jobs upload and the report downloads
over HTTP, so compute nodes need no shared filesystem.
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

from ablation.engine.errors import UserError

#: The job-execution feature (MLflow's AI tooling) would start a task queue this project has no use for.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
#: Defaults a user's environment overrides. Each uvicorn worker serves MLflow's Flask app on anyio's 40 threads,
#: but SQLAlchemy's pool holds 5 connections + 10 overflow: with the database slow (a busy machine), the 16th
#: concurrent request waited 30 s for a connection and failed with 400 "QueuePool limit ... reached", which the
#: client does not retry (16 loggers on PostgreSQL, once in CI). 5 + 35: a connection for every thread.
POOL_ENV = {"MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "35"}
#: Stores whose server may run several workers: writers that do not queue behind one file lock.
CONCURRENT_STORES = ("postgresql",)
#: The permission a user gets on an experiment they neither created nor were granted: read, not write.
DEFAULT_PERMISSION = "READ"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
#: MLflow refuses shorter passwords (mlflow.utils.validation._validate_password).
MIN_PASSWORD_CHARS = 12


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """This module's options; any other argument goes to ``mlflow server`` as it is (``--allowed-hosts ...``)."""
    parser = argparse.ArgumentParser(prog="make server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store-dir", type=Path, required=True, help="artifacts (and a sqlite store) live here")
    parser.add_argument("--store-uri", help="the backend store (default: sqlite:///<store-dir>/mlflow.db)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--auth", action="store_true", help="MLflow's basic-auth app: only its users get in")
    parser.add_argument("--auth-store-uri", help="the users' store (default: sqlite:///<store-dir>/auth/users.db)")
    parser.add_argument("--admin-password-file", type=Path, help="default: <store-dir>/auth/admin-password")
    parser.add_argument(
        "--auth-cache-s",
        type=int,
        default=60,
        help="seconds a worker trusts a checked password (0: check each request)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the mlflow server command and stop")
    args, args.mlflow_args = parser.parse_known_args(argv)
    return args


def store_uri(args: argparse.Namespace) -> str:
    return args.store_uri or f"sqlite:///{args.store_dir.resolve() / 'mlflow.db'}"


def check_workers(uri: str, workers: int) -> None:
    """More than one worker only on a store that takes concurrent writers (see the module's docstring)."""
    if workers < 1:
        raise UserError(f"--workers {workers}: a server needs at least one worker")
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if workers > 1 and scheme not in CONCURRENT_STORES:
        raise UserError(
            f"--workers {workers} needs a PostgreSQL store (STORE_URI=postgresql://...): a {scheme} store takes "
            "one writer at a time, so run its server with one worker (docs/cluster.md, Which backend)"
        )


def command(args: argparse.Namespace) -> list[str]:
    """The ``mlflow server`` command line: no secret is ever part of it."""
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri(args)]
    argv += ["--artifacts-destination", str(args.store_dir.resolve() / "artifacts")]
    argv += ["--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    return argv + (["--app-name", "basic-auth"] if args.auth else []) + list(args.mlflow_args)


def read_owner_only(path: Path) -> str:
    """A secret from a file only its owner can read (the first line); refused if others can read or change it."""
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"{path} holds a secret but is readable by others (mode {stat.S_IMODE(info.st_mode):o}, owner uid "
            f"{info.st_uid}): chmod 600 {path} as its owner"
        )
    lines = path.read_text().strip().splitlines()
    return lines[0].strip() if lines else ""


def write_owner_only(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner alone, before anything is written into it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text + "\n")


def owner_only_secret(path: Path, what: str) -> str:
    """The secret in ``path``, made (random) on first use and announced by path only."""
    if not path.exists():
        write_owner_only(path, secrets.token_urlsafe(24))
        print(f"make server: {what} made in {path} (readable only by you)", file=sys.stderr)
    return read_owner_only(path)


def admin_password(args: argparse.Namespace) -> str:
    """The admin's password: ``MLFLOW_AUTH_ADMIN_PASSWORD``, else the owner-only file (made when missing)."""
    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if password is None:
        path = args.admin_password_file or args.store_dir / "auth" / "admin-password"
        password = owner_only_secret(path.resolve(), "the admin user's password")
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"the admin's password has {len(password)} characters: MLflow wants {MIN_PASSWORD_CHARS}")
    return password


def auth_env(args: argparse.Namespace) -> dict[str, str]:
    """What the basic-auth app reads: its settings file, the admin's password, the key that signs its forms.

    MLflow checks the password of every request by its scrypt hash, 145 ms of CPU each on this project's 2-core
    machines: a job's heartbeats and steps (one request a second or more) cost the server a sixth of a core each.
    Its cache (``auth_cache_ttl_seconds``, off by default) checks a user's password once a minute per worker; a
    password changed or a user deleted through the server takes effect at once on the worker that did it, on
    the others within the minute (``--auth-cache-s 0``: every request checked)."""
    folder = args.store_dir.resolve() / "auth"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    users = args.auth_store_uri or f"sqlite:///{folder / 'users.db'}"
    settings = folder / "basic_auth.ini"
    settings.write_text(
        "# written by make server (ablation/store/server.py) at each start: edit the arguments, not this file\n"
        f"[mlflow]\ndefault_permission = {DEFAULT_PERMISSION}\ndatabase_uri = {users}\n"
        f"admin_username = {os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME', 'admin')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {args.auth_cache_s}\n"
    )
    key = os.environ.get(SECRET_KEY_ENV) or owner_only_secret(folder / "secret-key", "the key that signs forms")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(settings), ADMIN_PASSWORD_ENV: admin_password(args), SECRET_KEY_ENV: key}


def server_env(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: the pool's defaults under the caller's, our settings and basic-auth's over it."""
    return POOL_ENV | dict(environ) | SERVER_ENV | (auth_env(args) if args.auth else {})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        check_workers(store_uri(args), args.workers)
        argv_server = command(args)
        if args.dry_run:
            print(" ".join(argv_server))
            return
        env = server_env(args, os.environ)
    except UserError as err:
        print(f"make server: {err}", file=sys.stderr)
        sys.exit(2)
    args.store_dir.mkdir(parents=True, exist_ok=True)
    os.execve(sys.executable, argv_server, env)


if __name__ == "__main__":
    main()
