"""The outbox in process, against a real sqlite store whose sending is made to fail as a server that goes away would.

``Flaky`` stands between the outbox and MLflow: while ``down`` it raises what MLflow raises for an absent server (503)
before anything is sent; with ``lose_answers`` every record's first delivery is stored and then reported failed, as
when the server stores a request and the answer is lost, so the outbox sends it again. Every record is then read back
from the store: each step once, each image once, in order. The servers and processes of a real outage are in
``tests/test_outage.py`` (slow).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from ablation.job import execute
from ablation.store import connection, outbox, tolerance
from ablation.store.runlog import RunLog
from tests.support import config, run_overrides, sqlite_store


class Flaky:
    """``outbox.send`` with an outage switch; records what reached the store, in order."""

    def __init__(self) -> None:
        self.down = False
        self.lose_answers = False
        self.attempts = 0
        self.stored: list[outbox.Op] = []
        self.real = outbox.send

    def __call__(self, op: outbox.Op) -> None:
        self.attempts += 1
        if self.down:
            raise MlflowException("connection refused", error_code=TEMPORARILY_UNAVAILABLE)
        self.real(op)
        self.stored.append(op)
        if self.lose_answers and self.stored.count(op) == 1:
            raise MlflowException("answer lost", error_code=TEMPORARILY_UNAVAILABLE)


@pytest.fixture()
def flaky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flaky:
    """A fresh sqlite store and outbox, a patience of 30 s, records kept under tmp_path/unsent."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path))
    monkeypatch.setattr(outbox, "_outbox", outbox.Outbox())
    monkeypatch.setattr(tolerance, "BACKOFF_S", 0.05)
    monkeypatch.setattr(tolerance, "MAX_BACKOFF_S", 0.1)
    tolerance.configure(30, tmp_path / "unsent")
    sender = Flaky()
    monkeypatch.setattr(outbox, "send", sender)
    return sender


def steps_of(run_id: str, key: str = "total") -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def test_an_outage_holds_records_back_in_order_and_none_is_stored_twice(flaky: Flaky) -> None:
    """100 steps, 10 heartbeats, 2 images and a checkpoint put while the server is away: the caller is never held
    up, and once it is back the store has each step once, the heartbeat at step 99, one file per image."""
    run = RunLog.create(connection.open_store("outage"), "r", {})
    flaky.down, flaky.lose_answers = True, True
    started = time.monotonic()
    for step in range(100):
        run.step_metrics(["total"], [step], [[float(100 - step)]])
        if step % 10 == 9:
            run.beat()
        if step in (49, 99):
            run.image(np.full((8, 8, 3), step, dtype=np.uint8), "output", step)
    (Path(outbox.outbox().scratch) / "state.pt").write_bytes(b"checkpoint")
    run.artifact(Path(outbox.outbox().scratch) / "state.pt", "checkpoint")
    put_s = time.monotonic() - started
    time.sleep(0.5)
    assert tolerance.outage_s() > 0.3 and flaky.stored == []  # nothing got through, the clock runs
    flaky.down = False
    assert run.end() is None  # delivered: nothing kept on disk

    assert put_s < 2.0  # 100 steps put in far less than the outage lasted: off the caller's path
    assert tolerance.outage_s() == 0.0
    assert steps_of(run.run_id) == list(range(100))  # each step once, though every record was sent twice
    stored = MlflowClient().get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.data.tags["logged_step"] == "99"
    images = [f.path for f in MlflowClient().list_artifacts(run.run_id, "images")]
    assert sorted(p.split("+")[2] for p in images if p.endswith(".png")) == ["49", "99"]  # one file each
    once = [op for i, op in enumerate(flaky.stored) if i % 2 == 0]  # each request was sent twice (answer lost)
    assert once == flaky.stored[1::2]
    sent = [m[3] for op in once for m in op.metrics if m[0] == "total"]
    assert sent == list(range(100))  # in order, the backlog in few requests (sync points' batches merged)
    assert sum(op.kind == "batch" for op in once) < 10


def test_a_checkpoint_replaced_before_it_was_sent_is_not_sent(flaky: Flaky, tmp_path: Path) -> None:
    run = RunLog.create(connection.open_store("outage"), "r", {})
    flaky.down = True
    for content in ("first", "second"):
        (tmp_path / "state.pt").write_text(content)
        run.artifact(tmp_path / "state.pt", "checkpoint")
    time.sleep(0.2)  # the first one is in flight (failing), so it cannot be dropped; a third replaces the second
    (tmp_path / "state.pt").write_text("third")
    run.artifact(tmp_path / "state.pt", "checkpoint")
    flaky.down = False
    run.end()
    sent = [Path(op.file).name for op in flaky.stored if op.kind == "file"]
    assert sent == ["state.pt", "state.pt"]  # the first (in flight when replaced) and the third; not the second
    path = MlflowClient().download_artifacts(run.run_id, "checkpoint/state.pt", str(tmp_path / "back"))
    assert Path(path).read_text() == "third"


def test_a_full_outbox_holds_the_caller_until_the_server_takes_records(flaky: Flaky, monkeypatch) -> None:
    monkeypatch.setattr(outbox, "_outbox", outbox.Outbox(max_queued=3))
    run = RunLog.create(connection.open_store("outage"), "r", {})
    flaky.down = True
    for step in range(3):
        run.metrics({"total": 1.0}, step)
        run.flush()
    fourth = threading.Thread(target=lambda: (run.metrics({"total": 1.0}, 3), run.flush()))
    fourth.start()
    fourth.join(0.5)
    assert fourth.is_alive()  # held: three records wait
    flaky.down = False
    fourth.join(10)
    assert not fourth.is_alive()
    run.end()
    assert steps_of(run.run_id) == [0, 1, 2, 3]


def test_a_refused_record_is_raised_in_the_callers_thread_and_the_others_still_go(flaky: Flaky) -> None:
    run = RunLog.create(connection.open_store("outage"), "r", {})
    real = flaky.real

    def refuse_step_1(op: outbox.Op) -> None:
        if any(m[3] == 1 for m in op.metrics):
            raise MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)
        real(op)

    flaky.real = refuse_step_1
    for step in range(3):
        run.metrics({"total": 1.0}, step)
        run.flush()
    with pytest.raises(MlflowException, match="bad value"):
        outbox.settle()
    run.end()
    assert steps_of(run.run_id) == [0, 2]


def test_without_patience_an_outage_is_an_error_at_once(flaky: Flaky) -> None:
    run = RunLog.create(connection.open_store("outage"), "r", {})
    tolerance._link.limit_s = None  # a process that configured nothing: the report, a notebook
    flaky.down = True
    run.metrics({"total": 1.0}, 0)
    run.flush()
    with pytest.raises(MlflowException, match="connection refused"):
        outbox.settle()
    assert flaky.attempts == 1


def test_a_patient_call_waits_for_the_server_and_gives_up_past_the_patience(monkeypatch) -> None:
    monkeypatch.setattr(tolerance, "BACKOFF_S", 0.05)
    tolerance.configure(0.6)
    calls: list[float] = []

    def away_for(seconds: float):
        start = time.monotonic()

        def call() -> str:
            calls.append(time.monotonic())
            if time.monotonic() - start < seconds:
                raise MlflowException("refused", error_code=TEMPORARILY_UNAVAILABLE)
            return "answer"

        return call

    assert tolerance.patient(away_for(0.3)) == "answer" and len(calls) > 2
    assert tolerance.outage_s() == 0.0
    with pytest.raises(tolerance.TrackingLost, match=r"has not answered for \d s \(run.tracking_outage_s=0.6\)"):
        tolerance.patient(away_for(10))

    def refused() -> str:
        calls.append(time.monotonic())
        raise MlflowException("bad", error_code=INVALID_PARAMETER_VALUE)

    calls.clear()
    with pytest.raises(MlflowException, match="bad"):
        tolerance.patient(refused)
    assert len(calls) == 1  # a refusal is not repeated


def slowed_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A 40-step run whose sync points are at least 40 ms apart (so the patience below always runs out mid-run,
    however fast the machine), each with a heartbeat (so its steps go out one sync point at a time)."""
    from ablation import record  # noqa: PLC0415
    from ablation.store import heartbeat  # noqa: PLC0415

    real_observe = record.Recorder.observe
    monkeypatch.setattr(record.Recorder, "observe", lambda self, p: (time.sleep(0.04), real_observe(self, p)))
    monkeypatch.setattr(heartbeat, "BEAT_EVERY_S", 0.0)
    overrides = [o for o in run_overrides(tmp_path, 40) if not o.startswith("run.sync_every")]
    return overrides + ["run.sync_every=1", "run.checkpoint_every=0", f"tracking.unsent_dir={tmp_path / 'unsent'}"]


def test_past_the_patience_the_run_stops_with_a_checkpoint_kept_and_the_rerun_sends_it_and_continues(
    flaky: Flaky, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server goes away at step 2 and stays away longer than run.tracking_outage_s=0.4: the run stops at its
    next sync point past it, its checkpoint and unsent steps kept on disk; with the server back, run.resume=true
    sends them first (the run is KILLED with its checkpoint in the store) and continues the run to the same final
    losses as an uninterrupted one."""
    reference = execute(config(run_overrides(tmp_path, 40) + ["tracking.experiment=reference"]))  # at full speed
    overrides = slowed_overrides(tmp_path, monkeypatch)
    real = flaky.real

    def away_from_step_2(op: outbox.Op) -> None:
        flaky.down = flaky.down or any(m[3] >= 2 for m in op.metrics)
        if flaky.down:
            raise MlflowException("connection refused", error_code=TEMPORARILY_UNAVAILABLE)
        real(op)

    flaky.real = away_from_step_2
    with pytest.raises(tolerance.TrackingLost, match=r"run \w+ stopped at step \d+ with a checkpoint") as caught:
        execute(config(overrides + ["run.tracking_outage_s=0.4"]))
    stopped_at = int(re.search(r"at step (\d+)", str(caught.value))[1])
    assert 2 <= stopped_at < 40
    (kept,) = (tmp_path / "unsent").glob("*/*")
    assert list(kept.glob("files/*/state.pt"))  # the local checkpoint
    run_id = caught.value.run_id
    assert MlflowClient().get_run(run_id).info.status == "RUNNING" and steps_of(run_id)[-1] < stopped_at

    monkeypatch.setattr(outbox, "_outbox", outbox.Outbox())  # a new process, the server back
    flaky.real, flaky.down = real, False
    resumed = execute(config(overrides + ["run.resume=true"]))
    assert resumed["run_id"] == run_id and not kept.exists() and not list((tmp_path / "unsent").glob("*/*"))
    for key in ("final_content", "final_style", "final_tv", "final_total"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-5), key
    finished = MlflowClient().get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.data.tags["resumed_from_step"] == str(stopped_at)
    assert steps_of(run_id) == list(range(41))  # every step once: before, during and after the outage


def test_kept_records_are_sent_once_by_the_first_job_to_open_the_store(
    flaky: Flaky, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes kept records while the server was away. A folder another job has claimed (renamed) is left to
    it; the other is sent in order, and a record the store refuses (its run deleted meanwhile) is told, not fatal."""
    experiment_id = connection.open_store("outage")
    kept, deleted = RunLog.create(experiment_id, "kept", {}), RunLog.create(experiment_id, "deleted", {})
    flaky.down = True
    for step in range(3):
        kept.metrics({"total": float(step)}, step)
        deleted.metrics({"total": float(step)}, step)
        kept.flush()
        deleted.flush()
    first = outbox.outbox().keep()
    monkeypatch.setattr(outbox, "_outbox", outbox.Outbox())
    kept.metrics({"total": 9.0}, 9)
    kept.flush()
    second = outbox.outbox().keep()
    second.rename(second.with_name(second.name + outbox.CLAIMED))  # another job is sending it

    monkeypatch.setattr(outbox, "_outbox", outbox.Outbox())
    flaky.down = False
    MlflowClient().delete_run(deleted.run_id)
    assert outbox.send_unsent(connection.tracking_uri()) == 6
    assert steps_of(kept.run_id) == [0, 1, 2]  # the claimed folder's step 9 is not sent here
    assert not first.exists() and second.with_name(second.name + outbox.CLAIMED).exists()
    assert "refused by the store" in caplog.text
