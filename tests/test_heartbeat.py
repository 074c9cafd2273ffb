"""Heartbeats: a dead RUNNING run is taken over, a live one never; a restarted run logs no step twice."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from ablation.store import heartbeat, lookup, outbox
from ablation.store.runlog import RunLog
from tests.support import sqlite_store


def store(tmp_path: Path, monkeypatch) -> tuple[MlflowClient, str]:
    uri = sqlite_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    return client, client.create_experiment("beats")


def running(client: MlflowClient, experiment_id: str, beat_s: float | None, key: str = "f1") -> str:
    tags = {"fingerprint": key, **(heartbeat.beat_tags(-1, beat_s) if beat_s is not None else {})}
    return client.create_run(experiment_id, tags=tags).info.run_id


def test_only_runs_silent_for_longer_than_the_limit_are_taken(tmp_path: Path, monkeypatch) -> None:
    client, experiment_id = store(tmp_path, monkeypatch)
    now = 1_000_000.0
    dead = running(client, experiment_id, now - 601)  # 601 s without a heartbeat > 600 s limit
    live = running(client, experiment_id, now - 599)  # within the limit: alive
    legacy = running(client, experiment_id, None)  # no heartbeat tag (older code): never taken
    other = running(client, experiment_id, now - 10_000, key="f2")  # another fingerprint: not this job's
    found = lookup.take_over_dead(experiment_id, "f1", 600, now_s=now)
    assert found is not None and found.info.run_id == live
    status = {r: client.get_run(r).info.status for r in (dead, live, legacy, other)}
    assert status == {dead: "KILLED", live: "RUNNING", legacy: "RUNNING", other: "RUNNING"}
    tags = client.get_run(dead).data.tags
    assert tags["taken_over_after_s"] == "601.0" and "taken for dead" in tags["error"]


def test_no_live_run_means_none(tmp_path: Path, monkeypatch) -> None:
    client, experiment_id = store(tmp_path, monkeypatch)
    running(client, experiment_id, 0.0)
    assert lookup.take_over_dead(experiment_id, "f1", 600, now_s=1000.0) is None


def test_beat_stores_metrics_with_the_logged_step_and_a_reopened_run_skips_them(tmp_path: Path, monkeypatch) -> None:
    client, experiment_id = store(tmp_path, monkeypatch)
    log = RunLog.create(experiment_id, "r", {})
    log.step_metrics(["total"], [0, 1, 2], [[3.0], [2.0], [1.0]])
    log.beat()
    outbox.settle()  # the outbox sends off the caller's path: wait until the store has it
    tags = client.get_run(log.run_id).data.tags
    assert tags["logged_step"] == "2" and float(tags["heartbeat"]) > 0
    log.step_metrics(["total"], [3], [[0.5]])  # queued, never stored: lost with a hard kill
    client.set_terminated(log.run_id, "KILLED")

    again = RunLog.reopen(log.run_id)  # resumed from a checkpoint at step 1
    again.step_metrics(["total"], [1, 2, 3, 4], [[2.0], [1.0], [0.5], [0.25]])
    again.end()
    steps = sorted(m.step for m in client.get_metric_history(log.run_id, "total"))
    assert steps == [0, 1, 2, 3, 4]  # 1 and 2 were stored before: not again; 3 was lost: logged now


def test_beats_between_sync_points_are_rate_limited(tmp_path: Path, monkeypatch) -> None:
    client, experiment_id = store(tmp_path, monkeypatch)
    log = RunLog.create(experiment_id, "r", {})
    log.step_metrics(["total"], [0], [[1.0]])
    log.beat(force=False)  # right after creation: within BEAT_EVERY_S, nothing sent
    outbox.settle()
    assert client.get_run(log.run_id).data.tags["logged_step"] == "-1"
    log.beat()
    outbox.settle()
    assert client.get_run(log.run_id).data.tags["logged_step"] == "0"


def test_a_checkpoint_is_never_stored_ahead_of_the_step_metrics_it_follows(tmp_path, monkeypatch) -> None:
    """A run killed right after a checkpoint upload resumes at that step and logs only later steps, so when the
    checkpoint reaches the store every step up to it must be there already (else those steps are lost for good,
    as a SIGKILL between the upload and the next heartbeat showed on SLURM). Read back from the real store as the
    outbox sends each checkpoint of a 6-step run (at steps 2 and 4; the one at 2 is skipped when the one at 4
    replaces it before it was sent): each finds steps 0..k stored, and the last is the one at step 4."""
    import torch
    from mlflow.tracking import MlflowClient

    from ablation.engine.checkpoint import load_checkpoint
    from ablation.job import execute
    from tests.support import config, run_overrides

    uri = sqlite_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    stored_at_upload: dict[int, list[int]] = {}
    real_send = outbox.send

    def send(op: outbox.Op) -> None:
        if op.kind == "file" and op.folder == "checkpoint":
            step = load_checkpoint(op.file, torch.device("cpu"))[0].step
            stored_at_upload[step] = sorted(m.step for m in MlflowClient(uri).get_metric_history(op.run_id, "total"))
        real_send(op)

    monkeypatch.setattr(outbox, "send", send)
    overrides = [o for o in run_overrides(tmp_path, 6) if not o.startswith(("run.checkpoint_every", "run.sync_every"))]
    execute(config(overrides + ["run.checkpoint_every=2", "run.sync_every=1"]))
    assert list(stored_at_upload)[-1] == 4 and set(stored_at_upload) <= {2, 4}
    assert all(stored[: step + 1] == list(range(step + 1)) for step, stored in stored_at_upload.items())
