"""What a run will cost before it runs, in seconds on this machine: the bench's per-iteration work model, scaled by
the machine's calibration.

An iteration's work is its convolutions (:func:`ablation.bench.flops.iteration_gflop`: the forward and input
gradients up to the deepest layer a loss reads, for the content's size), done at the device's calibrated speed
(:func:`ablation.engine.hardware.calibrate`, the GF/s every run records); the rest of an iteration (activations,
pooling, Grams, Adam, Python) and of a job (targets, the judge, MLflow) is counted in GFLOP of that same workload
run by the CPU, so a slower or busier machine is slower at both. Per job, measured where the sweep starts:
Hydra composing its config twice (the sweeper's check and the job). Once per process: loading the weights (cached)
and timing the machine (reused for a minute), which jobs that share a process (Hydra's basic launcher) pay once.

    iteration_s = CONV_FACTOR * gflop(h, w) / device_gflops + ITERATION_GFLOP / cpu_gflops  (CUDA: + ITERATION_S_CUDA)
    job_s = setup_s + JOB_GFLOP / cpu_gflops + sum over scales and seeds of iterations * iteration_s

The constants were fit on this project's 2-core machines (torch 2.14, 2 threads): the bench's 256 px figure (917 ms
per iteration of 127 GFLOP, a 2-core AMD EPYC), and sweeps of 2 and 4 jobs at 32, 64 and 128 px, 10 and 60 or 80
iterations, on a 2-core Intel Xeon alone (each job's run and the sweep's whole time, against a calibration of 115
to 155 GF/s); on a GPU they are unchecked. A sweep tags its parent run with the estimate and what it took
(``sweep_estimate_s``, ``sweep_took_s``), so the two can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass

from ablation.bench.flops import conv_plan, iteration_gflop
from ablation.engine.plan import RunSpec

#: The loop's convolutions run a little slower than the calibration's one conv (more layers, smaller maps).
CONV_FACTOR = 1.2
#: The rest of an iteration on a CPU, in GFLOP of the calibration workload (elementwise work, Adam, Python).
ITERATION_GFLOP = 3.5
#: The rest of an iteration on a GPU: kernel launches and the host's loop, seconds.
ITERATION_S_CUDA = 0.004
#: A job's targets, judge, images and MLflow records, in GFLOP of the calibration workload on the CPU.
JOB_GFLOP = 100.0
#: A process times its machine for half a second (``hardware.calibrate``), plus its warm-up, and its jobs reuse the
#: measurement for ``job.MACHINE_REUSE_S``: counted once per sweep, since a job that outlasts the minute and measures
#: afresh adds 1% to itself.
CALIBRATION_S = 0.6


@dataclass(frozen=True)
class Speed:
    """How fast this machine is, as the calibration measures it."""

    device: str  # the device type the runs will use: cpu | cuda | mps
    device_gflops: float  # the calibration on that device
    cpu_gflops: float  # the calibration on the CPU (the same figure when the device is the CPU)


def stage_gflop(spec: RunSpec, height: int, width: int) -> float:
    """Conv GFLOP of one iteration of ``spec``'s network on a ``height`` x ``width`` content (pools round up)."""
    last = spec.last_layer
    return iteration_gflop(conv_plan(spec.network.arch, last, height, width, True), last, False)


def iteration_seconds(gflop: float, speed: Speed) -> float:
    """One iteration of ``gflop`` conv work."""
    rest = ITERATION_GFLOP / speed.cpu_gflops if speed.device == "cpu" else ITERATION_S_CUDA
    return CONV_FACTOR * gflop / speed.device_gflops + rest


def job_seconds(spec: RunSpec, stage_sizes: list[tuple[int, int]], speed: Speed, setup_s: float) -> float:
    """Seconds of a job that runs: ``setup_s`` (composing: measured), its fixed work and every stage's iterations
    (``stage_sizes``: the content's (h, w) per scale) for each of its seeds."""
    stages = zip(stage_sizes, (n for _, n in spec.stages()), strict=True)
    loop_s = sum(n * iteration_seconds(stage_gflop(spec, h, w), speed) for (h, w), n in stages)
    return setup_s + JOB_GFLOP / speed.cpu_gflops + len(spec.seeds) * loop_s
