"""A sweep's cost before it starts: the cost model by hand, the job list Hydra's sweeper will run, reuse by
fingerprint, and (slow) a tiny sweep whose estimate is within 3x of what it took."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from ablation.bench import cost
from ablation.bench.estimate import SweepEstimate, estimate_sweep, stage_sizes
from ablation.bench.flops import conv_plan, iteration_gflop
from ablation.job import Machine
from ablation.spec import from_config
from tests.support import config, run_sweep

SPEED = cost.Speed("cpu", 100.0, 100.0)


def test_a_jobs_seconds_by_hand(store):
    """original at 32x42, 20 iterations, one seed, 2 s of set-up, on a 100 GF/s CPU."""
    spec = from_config(config(["weights=random", "images.width=32", "run.iterations=20"]))
    gflop = iteration_gflop(conv_plan("vgg19", "relu5_1", 42, 32, True), "relu5_1", False)  # 2.08 GFLOP
    assert gflop == pytest.approx(2.0808, abs=1e-4)
    iteration_s = cost.CONV_FACTOR * gflop / 100 + cost.ITERATION_GFLOP / 100
    expected = 2.0 + cost.JOB_GFLOP / 100 + 20 * iteration_s
    assert cost.job_seconds(spec, [(42, 32)], SPEED, setup_s=2.0) == pytest.approx(expected)
    assert stage_sizes(spec) == [(42, 32)]  # the report's content, 32 px wide
    # two seeds in one job: twice the loop, the same set-up; a GPU's rest of an iteration is its launches
    two = from_config(config(["weights=random", "images.width=32", "run.iterations=20", "run.seeds=[0,1]"]))
    assert cost.job_seconds(two, [(42, 32)], SPEED, 2.0) - cost.job_seconds(spec, [(42, 32)], SPEED, 2.0) == (
        pytest.approx(20 * iteration_s)
    )
    assert cost.iteration_seconds(gflop, cost.Speed("cuda", 1000.0, 100.0)) == pytest.approx(
        cost.CONV_FACTOR * gflop / 1000 + cost.ITERATION_S_CUDA
    )


def test_the_estimate_says_what_is_reused_and_how_long_the_rest_takes():
    found = SweepEstimate(5, in_store=1, repeated=1, job_s=[30.0, 45.0, 300.0], reused_s=4.0, once_s=6.0, speed=SPEED)
    assert found.seconds == 385.0
    assert found.text() == (
        "sweep estimate: 5 jobs, 2 reused (1 finished in the store, 1 repeat an earlier job's fingerprint), 3 to run: "
        "about 6.4 min here (cpu, calibration 100.0 GF/s); per job 30 s to 5.0 min"
    )
    # a cluster: the longest job, which loads its own weights and times its own node, x2 at this machine's speed
    assert found.text(timeout_min=120).endswith(
        "; SLURM: hydra.launcher.timeout_min=120, the longest job at this machine's speed x2 needs 11 (scale by a "
        "node's calibration_gflops against this one's)"
    )


def test_jobs_with_one_fingerprint_run_once(store, fresh_calibration):
    """Two conditions that a command-line width makes equal: the second job repeats the first's fingerprint.

    The machine is timed afresh here: a calibration another test or process kept 59 s ago would be reused by the
    estimate and be too old a second later for the job (``job.MACHINE_REUSE_S``), which then measures its own."""
    tiny = ["weights=random", "images.width=32", "run.iterations=5", "experiment=conditions", "variant=original"]
    jobs = [[*tiny, "condition=base", "run.seed=0"], [*tiny, "condition=256px", "run.seed=0"]]
    composed = []

    def compose(overrides: list[str]) -> dict:
        composed.append(overrides)
        return config(overrides)

    found = estimate_sweep(jobs, compose, "0")
    assert (found.jobs, found.in_store, found.repeated, len(found.job_s)) == (2, 0, 1, 1)
    assert len(composed) == 2 and found.speed.device == "cpu" and found.speed.cpu_gflops > 0
    assert found.once_s > cost.CALIBRATION_S  # the weights drawn once, the machine timed once
    assert Machine.measure(torch.device("cpu")).calibration_gflops == found.speed.cpu_gflops  # a job reuses it
    seeds = [[*tiny, "condition=base", f"run.seed={s}"] for s in (0, 1, 2)]
    found = estimate_sweep(seeds, compose, "0")  # seeds change no cost: one compose for three jobs
    assert len(composed) == 3 and len(found.job_s) == 3 and len(set(found.job_s)) == 1


@pytest.mark.slow
def test_a_tiny_sweeps_estimate_is_within_3x_of_what_it_took(tmp_path):
    """4 jobs at 32 px, 10 iterations: the estimate printed before the first job, the time tagged after the last.
    The estimate times the machine once, before the jobs; ``make test`` runs this beside the SLURM and server tests
    on 2 cores, whose load comes and goes: took / estimated was 0.6 alone and 2.4 there (a 2x bound failed once in
    CI; 0.33 once, when each job still counted its own calibration and weights). 3x still catches a model that
    misses a factor (the seeds, the iterations, a scale)."""
    done = run_sweep(
        tmp_path, "sweep", "experiment=conditions", "variant=original,avg_pool", "condition=base,style5000",
        "run.seed=0", "run.iterations=10", timeout_s=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "sweep estimate: 4 jobs, 0 reused (0 finished in the store, 0 repeat an earlier job's fingerprint), 4 to "
        in (done.stderr)
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nst-ablation").experiment_id
    parent = client.search_runs([experiment], "tags.sweep_role = 'parent'")[0]
    estimated, took = float(parent.data.tags["sweep_estimate_s"]), float(parent.data.tags["sweep_took_s"])
    assert 1 / 3 <= took / estimated <= 3.0, (took, estimated)
    assert math.isfinite(took) and "took " in done.stderr
