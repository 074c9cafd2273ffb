"""How MLflow's own retries interact with the outbox, measured (not a test: figures for docs/cluster.md).

    python -m tests.cluster.measure_outage outbox      # the outbox, MLflow's retries off (what a job sets)
    python -m tests.cluster.measure_outage outbox7     # the outbox, MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 (its default)
    python -m tests.cluster.measure_outage sync        # before: log_batch on the loop's path, MLflow's defaults

One client logs 10 sync points a second (one step's loss and a heartbeat each) to ``make server`` on sqlite; the
server is stopped 6 s after the client's run exists and started again ``AWAY_S`` (20) seconds later. Printed: the
loop's longest stall, the sync points it got through while the server was away, and how long after the server
answered ``/health`` again the first record, and the whole backlog, were stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support import PROJECT, free_port, start_server, stop_group

AWAY_S = float(os.environ.get("AWAY_S", "20"))
RUN_S = 120.0  # the client's loop: long enough to outlast the outage and a slow restart


def client(mode: str, uri: str, out: str) -> None:
    """The logging process: a loop of RUN_S seconds; its stalls, step times and backlog written to ``out``."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from mlflow.entities import Metric  # noqa: PLC0415 - in the client process only

    from ablation.store import connection, outbox, tolerance  # noqa: PLC0415
    from ablation.store.runlog import RunLog  # noqa: PLC0415

    if mode != "sync":
        tolerance.configure(600)
    run = RunLog.create(connection.open_store("measure-outage"), "m", {})
    Path(out + ".ready").write_text("1")
    stalls, steps, returns, backlog = [], [], [], []

    def watch() -> None:
        box = outbox.outbox()
        while True:
            backlog.append((time.time(), box.next_seq - 1 - box.done_seq))
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    start, step = time.time(), 0
    while time.time() - start < RUN_S:
        began = time.time()
        if mode == "sync":
            metric = Metric("total", float(step), int(began * 1000), step)
            connection.raw_client(uri).log_batch(run.run_id, metrics=[metric])
        else:
            run.step_metrics(["total"], [step], [[float(step)]])
            run.beat()
        stalls.append(time.time() - began)
        steps.append(began)
        returns.append(time.time())
        step += 1
        time.sleep(0.1)
    run.end()
    Path(out).write_text(json.dumps({"stalls": stalls, "steps": steps, "returns": returns, "backlog": backlog}))


def measure(mode: str) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"measure-outage-{mode}-"))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(folder, port)
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    if mode == "outbox7":
        env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "7"
    out = folder / "out.json"
    proc = subprocess.Popen([sys.executable, "-m", "tests.cluster.measure_outage", "client", mode, uri, str(out)],
                            cwd=PROJECT, env=env)  # fmt: skip
    while not Path(f"{out}.ready").exists():
        time.sleep(0.2)
    time.sleep(6)
    down = time.time()
    stop_group(server)
    time.sleep(AWAY_S)
    server = start_server(folder, port)
    up = time.time()
    proc.wait(timeout=900)
    stop_group(server)
    data = json.loads(out.read_text())
    if mode == "sync":
        first = drained = min(t for t in data["returns"] if t > up - 1)
    else:
        first, _ = max(data["backlog"], key=lambda sample: sample[1])  # the backlog starts to shrink
        drained = min(t for t, n in data["backlog"] if t > first and n <= 2)
    return {
        "mode": mode,
        "away_s": round(up - down, 1),
        "loop_stall_max_s": round(max(data["stalls"]), 2),
        "sync_points_while_away": sum(1 for t in data["steps"] if down < t < up),
        "of": int((up - down) / 0.1),
        "first_stored_after_up_s": round(first - up, 2),
        "backlog_stored_after_up_s": round(drained - up, 2),
    }


if __name__ == "__main__":
    if sys.argv[1] == "client":
        client(*sys.argv[2:])
    else:
        print(json.dumps(measure(sys.argv[1])))
