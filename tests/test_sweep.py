"""Sweeps: fingerprints, a killed sweep resumed, a repeated sweep skipped, parallel jobs on a fresh store.

The sweeps run as users run them (``python -m ablation.run -m experiment=table2 ...`` in a subprocess) at
32 px, 3 steps, with random weights, each against its own sqlite store in a temporary folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablation import fingerprint, sweep
from ablation.engine import ENGINE_VERSION
from ablation.report.__main__ import main as report_main
from ablation.store.sweeps import PARENT_FILE
from tests.support import TINY, job_records, run_sweep, store_env, sweep_command

CONFIG = {
    "run": {"iterations": 3, "seed": 0, "quiet": False, "log_every": 1, "sync_every": 10, "device": "auto"},
    "loss": {"content_weight": 5.0, "style_weight": 500.0},
    "images": {"content": "a.jpg", "styles": ["b.jpg"], "width": 32},
    "tracking": {"experiment": "x", "run_name": None},
}


def fp(config: dict = CONFIG, weights: str = "w", images: tuple = ("c", "s"), device: str = "cpu") -> str:
    return fingerprint.fingerprint(config, weights, list(images), device)


def with_value(section: str, key: str, value: object) -> dict:
    return {**CONFIG, section: {**CONFIG[section], key: value}}


def test_fingerprint_ignores_logging_and_output_settings():
    base = fp()
    assert fp(with_value("run", "quiet", True)) == base
    assert fp(with_value("run", "log_every", 5)) == base
    assert fp(with_value("run", "sync_every", 1)) == base
    assert fp(with_value("tracking", "experiment", "elsewhere")) == base
    assert fp(with_value("images", "content", "/other/folder/a.jpg")) == base  # the file's hash counts, not its path


def test_fingerprint_changes_with_what_determines_the_result():
    base = fp()
    changed = [
        fp(with_value("run", "seed", 1)),
        fp(with_value("run", "iterations", 4)),
        fp(with_value("loss", "style_weight", 501.0)),
        fp(weights="other weights"),
        fp(images=("c", "other style")),
        fp(device="cuda"),
        fingerprint.fingerprint(CONFIG, "w", ["c", "s"], "cpu", engine_version=ENGINE_VERSION + 1),
    ]
    assert len({base, *changed}) == 1 + len(changed)  # all distinct
    assert len(base) == 64 and int(base, 16) >= 0  # a SHA-256 hex digest


def test_fingerprint_holds_the_engine_version_and_the_device_type_not_the_machine():
    payload = fingerprint.fingerprint_payload(CONFIG, "w", ["c", "s"], "cuda")
    assert payload["fingerprint.engine_version"] == str(ENGINE_VERSION)
    assert payload["fingerprint.device"] == "cuda"  # an H100 and an A100 share losses; runtimes are grouped by class
    assert not {"hardware_class", "hostname", "gpu_name", "calibration_gflops"} & {k.split(".")[-1] for k in payload}


def test_summary_names_failed_and_lost_jobs():
    jobs = {
        0: {"status": "finished", "overrides": ["variant=original"]},
        1: {"status": "skipped", "overrides": ["variant=vgg16"]},
        2: {"status": "failed", "error": "images.width=8 ...", "overrides": ["variant=avg_pool"]},
        3: {"status": "running", "overrides": ["variant=tanh_final"]},  # never reported back: killed
    }
    line, failed = sweep.summarise("s", jobs)
    assert line.startswith("sweep s: 4 jobs, 1 ran, 1 skipped") and line.endswith("2 failed")
    assert failed == ["job 2 (variant=avg_pool): images.width=8 ...", "job 3 (variant=tanh_final): running"]


def client_for(folder: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def parent_jobs(folder: Path, sweep_dir: Path) -> dict[int, dict]:
    parent = json.loads((sweep_dir / PARENT_FILE).read_text())
    return job_records(f"sqlite:///{folder / 'mlflow.db'}", parent["parent_run_id"])


def finished_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("nst-ablation")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    return [r for r in runs if r.data.tags.get("sweep_role") != "parent"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """table2 x seeds 0,1 (4 jobs): killed after its first finished run, re-run, then re-run again."""
    folder = tmp_path_factory.mktemp("sweep")
    first_dir = folder / "killed"
    proc = subprocess.Popen(
        sweep_command(first_dir, "experiment=table2", "run.seed=0,1"),
        cwd=folder,
        env=store_env(folder),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    done_before_kill: list = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (first_dir / PARENT_FILE).is_file():  # the callback created the store: safe to read
                done_before_kill = finished_runs(client_for(folder))
                if done_before_kill:
                    break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before_kill = finished_runs(client_for(folder))
    second = run_sweep(folder, "resumed", "experiment=table2", "run.seed=0,1")
    after_second = finished_runs(client_for(folder))
    third = run_sweep(folder, "again", "experiment=table2", "run.seed=0,1")
    return {
        "folder": folder,
        "done_before_kill": done_before_kill,
        "second": second,
        "after_second": after_second,
        "third": third,
        "after_third": finished_runs(client_for(folder)),
    }


@pytest.mark.slow
def test_killed_sweep_reruns_only_the_missing_jobs(resumed):
    killed = len(resumed["done_before_kill"])
    assert 1 <= killed < 4, "the first sweep should be killed midway"
    assert resumed["second"].returncode == 0, resumed["second"].stderr[-2000:]
    jobs = parent_jobs(resumed["folder"], resumed["folder"] / "resumed")
    statuses = sorted(j["status"] for j in jobs.values())
    assert statuses == ["finished"] * (4 - killed) + ["skipped"] * killed
    skipped_ids = {j["run_id"] for j in jobs.values() if j["status"] == "skipped"}
    assert skipped_ids == {r.info.run_id for r in resumed["done_before_kill"]}
    assert len(resumed["after_second"]) == 4  # one FINISHED run per job, none twice
    assert len({r.data.tags["fingerprint"] for r in resumed["after_second"]}) == 4
    ran = [r for r in resumed["after_second"] if r.info.run_id not in skipped_ids]
    parent = json.loads((resumed["folder"] / "resumed" / PARENT_FILE).read_text())
    assert {r.data.tags["mlflow.parentRunId"] for r in ran} == {parent["parent_run_id"]}
    parent_tags = client_for(resumed["folder"]).get_run(parent["parent_run_id"]).data.tags
    assert len(parent_tags["mlflow.source.git.commit"]) == 40 and parent_tags["mlflow.user"]  # provenance, as children
    assert {(r.data.tags["variant"], r.data.tags["seed"]) for r in resumed["after_second"]} == {
        (v, s) for v in ("original", "vgg16_tanh") for s in ("0", "1")
    }


@pytest.mark.slow
def test_repeated_sweep_launches_nothing(resumed):
    assert resumed["third"].returncode == 0, resumed["third"].stderr[-2000:]
    jobs = parent_jobs(resumed["folder"], resumed["folder"] / "again")
    assert [j["status"] for j in jobs.values()] == ["skipped"] * 4
    assert {r.info.run_id for r in resumed["after_third"]} == {r.info.run_id for r in resumed["after_second"]}
    assert "4 jobs, 0 ran, 4 skipped" in resumed["third"].stderr


@pytest.mark.slow
def test_the_parent_run_shows_overrides_as_params_counts_as_metrics_and_no_job_tags(resumed):
    """What the MLflow UI's overview of the sweep shows: its overrides and counts; job records are artifacts."""
    parent_id = json.loads((resumed["folder"] / "again" / PARENT_FILE).read_text())["parent_run_id"]
    client = client_for(resumed["folder"])
    parent = client.get_run(parent_id)
    tiny = dict(o.split("=", 1) for o in TINY)
    assert parent.data.params == {**tiny, "experiment": "table2", "run.seed": "0,1"}
    assert parent.data.metrics == {"jobs": 4, "ran": 0, "reused": 4, "failed": 0, "killed": 0, "lost": 0}
    assert not [t for t in parent.data.tags if t.startswith("job.")]
    records = sorted(Path(f.path).name for f in client.list_artifacts(parent_id, "jobs"))
    assert records == [f"job-000{n}.json" for n in range(4)]


@pytest.mark.slow
def test_report_of_the_repeated_sweep_has_every_variant_and_seed(resumed, monkeypatch):
    folder = resumed["folder"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    assert report_main(["--out", str(folder / "reports")]) == 0  # default: the latest sweep, the repeated one
    (out,) = (folder / "reports").iterdir()
    assert out.name.startswith("table2-")
    text = (out / "report.md").read_text()
    assert "WARNING: random weights" in text
    assert "| Total loss |" in text and "1.19192e+06" in text and "105642" in text  # the reported columns
    assert "One judge for every variant" in text
    table2 = __import__("pandas").read_csv(out / "table2.csv")
    assert set(table2["variant"]) == {"original", "vgg16_tanh"} and set(table2["n_seeds"]) == {2}
    for name in ("grid.png", "curves.png", "judge.csv", "runs.csv"):
        assert (out / name).stat().st_size > 0


@pytest.mark.slow
def test_parallel_jobs_on_a_fresh_store_lose_nothing_and_a_failed_job_stops_no_other(tmp_path):
    # Eight jobs, two at a time (joblib's process pool), on a store that does not exist yet, into two experiments
    # that the jobs create: the first two both want exp-A, the next two exp-B. images.width=8 is too small for the
    # network, so those four jobs fail at set-up while the others run: the sweep ends non-zero and names them.
    # Without the store lock the jobs race to create the experiments; without explicit experiment ids a run can
    # land under Default.
    result = run_sweep(
        tmp_path,
        "parallel",
        "variant=original,avg_pool",
        "tracking.experiment=exp-A,exp-B",
        "images.width=32,8",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        timeout_s=400,
        fresh=True,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "8 jobs, 4 ran, 0 skipped" in result.stderr and "4 failed" in result.stderr
    assert result.stderr.count("images.width=8") >= 4  # the summary names every failed job
    client = client_for(tmp_path)
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert set(experiments) == {"Default", "nst-ablation", "exp-A", "exp-B"}  # nst-ablation: the parent run
    assert client.search_runs([experiments["Default"]]) == []
    jobs = parent_jobs(tmp_path, tmp_path / "parallel")
    assert sorted(j["status"] for j in jobs.values()) == ["failed"] * 4 + ["finished"] * 4
    finished_ids = []
    for name in ("exp-A", "exp-B"):
        runs = client.search_runs([experiments[name]])
        assert sorted(r.data.tags["variant"] for r in runs) == ["avg_pool", "original"]
        assert all(r.data.params["tracking.experiment"] == name for r in runs)  # each in the experiment it asked for
        assert all(r.info.status == "FINISHED" and "final_total" in r.data.metrics for r in runs)
        assert all(len(client.get_metric_history(r.info.run_id, "total")) == 4 for r in runs)  # steps 0..3
        finished_ids += [r.info.run_id for r in runs]
    assert sorted(finished_ids) == sorted(j["run_id"] for j in jobs.values() if j["status"] == "finished")


@pytest.mark.slow
def test_single_run_is_not_a_sweep_job_and_bad_input_is_one_line(tmp_path):
    # Outside -m the callback and run.main must not look for a sweep; a bad value is one line and exit code 2.
    command = [sys.executable, "-m", "ablation.run", "weights=random", "images.width=8", f"hydra.run.dir={tmp_path}/h"]
    result = subprocess.run(command, cwd=tmp_path, env=store_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "INFO" not in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "images.width" in errors[0]
