"""The machine a run ran on, and how fast it convolves: so runtimes are compared only where they can be.

A runtime says as much about the machine as about the variant. Every run therefore records what it ran on
(:func:`describe`) and a *hardware class* (:meth:`Hardware.hardware_class`): runs of one class can be compared
on runtime, runs of different classes cannot without saying so. :func:`calibrate` times one fixed
convolution workload, so runtimes from different classes can at least be put on one scale (runtime times
GFLOP/s is roughly constant for conv-bound work).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention

from ablation.engine.inputs import cache_dir, keep_whole

if TYPE_CHECKING:
    from torch.utils.benchmark import Measurement

#: What a field holds when the machine has none (no GPU, a CPU-only torch build): MLflow params are strings.
ABSENT = "none"
#: The calibration's workload: a 3x3 conv, 128 -> 128 channels, on one 64x64 image (VGG's conv2_2 at 128 px).
CALIBRATION_SHAPE = (1, 128, 64, 64)
CALIBRATION_GFLOP = 2 * 128 * 128 * 3 * 3 * 64 * 64 / 1e9  # multiply-adds x 2: 1.208 GFLOP per pass


@dataclass(frozen=True)
class Hardware:
    """What runtimes depend on: processor, threads, GPU, driver and library versions, host."""

    device: str  # the device type the run used: cpu | cuda | mps
    cpu_model: str
    cpu_cores: int  # usable by this process (its affinity), not the whole machine's
    torch_threads: int
    gpu_name: str
    gpu_memory_gb: str  # total memory in GB (1e9 bytes), one decimal, or "none"
    gpu_driver: str
    cuda_version: str  # the CUDA torch was built with
    cudnn_version: str
    hostname: str

    def hardware_class(self) -> str:
        """Runs of one class are comparable on runtime: ``cuda:<GPU name>``, else ``cpu:<model> x<cores> threads=<n>``.

        A GPU run's speed is its GPU's; a CPU run's depends on the model, the cores it may use and torch's threads.
        """
        if self.device == "cuda":
            return f"cuda:{self.gpu_name}"
        return f"{self.device}:{self.cpu_model} x{self.cpu_cores} threads={self.torch_threads}"

    def params(self) -> dict[str, str]:
        """Every field but ``device`` (already a run param) as strings, named as the report reads them."""
        return {k: str(v) for k, v in asdict(self).items() if k != "device"}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's name: Linux's ``model name`` line, else what :mod:`platform` says."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
    except OSError:
        found = None
    return (found[1].strip() if found else platform.processor() or platform.machine()) or ABSENT


def cpu_cores() -> int:
    """Cores this process may run on (a container or ``taskset`` limits them), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_driver(version_file: Path = Path("/proc/driver/nvidia/version")) -> str:
    """The NVIDIA driver version (torch does not expose it): the kernel module's file, else ``nvidia-smi``."""
    try:
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", version_file.read_text())
        if found:
            return found[1]
    except OSError:
        pass
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip().splitlines()[0] or ABSENT
    except (OSError, subprocess.SubprocessError, IndexError):
        return ABSENT


def describe(device: torch.device) -> Hardware:
    """The machine as ``device`` uses it. GPU fields describe ``device`` when it is CUDA, else say ``none``."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    gpu_name = gpu_memory_gb = driver = ABSENT
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        gpu_name, gpu_memory_gb, driver = properties.name, f"{properties.total_memory / 1e9:.1f}", gpu_driver()
    return Hardware(
        device=device.type,
        cpu_model=cpu_model(),
        cpu_cores=cpu_cores(),
        torch_threads=torch.get_num_threads(),
        gpu_name=gpu_name,
        gpu_memory_gb=gpu_memory_gb,
        gpu_driver=driver,
        cuda_version=torch.version.cuda or ABSENT,
        cudnn_version=str(cudnn) if cudnn else ABSENT,
        hostname=socket.gethostname(),
    )


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has run the kernels queued on it (a CPU runs them as they are called)."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, min_s: float) -> Measurement:
    """``fn`` timed by torch's ``Timer.blocked_autorange``: warm-up calls size a block of calls, then blocks run
    until they took ``min_s`` in all. On this process's torch threads (Timer's default is one), the clock read
    only after ``device`` has finished, so a block's time is the kernels' and not their launch."""

    def clock() -> float:
        synchronize(device)
        return time.perf_counter()

    # Imported here, quietly: its import loads cpp_extension, which warns on a machine with a CUDA toolkit and no GPU.
    cpp_extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_extension_log.level
    cpp_extension_log.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        cpp_extension_log.setLevel(level)
    timer = Timer("fn()", globals={"fn": fn}, timer=clock, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_s)


def calibrate(device: torch.device, min_s: float = 0.5) -> float:
    """GFLOP/s of one fixed fp32 workload (:data:`CALIBRATION_SHAPE`) on ``device``, timed for about ``min_s``:
    :data:`CALIBRATION_GFLOP` / the mean seconds per pass over the timed blocks (:func:`timed`).

    Blocks of passes amortise the synchronisation: a GPU (tens of microseconds a pass) and a CPU (tens of
    milliseconds on two cores) both give a steady figure. cuDNN runs IEEE fp32 with autotuning, whatever an
    earlier job in this process set (every device does the same arithmetic; flags are restored). The inputs are
    constants: the global RNG, which seeds the run, is left alone.
    """
    cudnn = torch.backends.cudnn
    saved = cudnn.conv.fp32_precision, cudnn.benchmark
    cudnn.conv.fp32_precision, cudnn.benchmark = "ieee", True  # as a run at run.precision=fp32 has them
    try:
        images = torch.full(CALIBRATION_SHAPE, 0.5, device=device)
        weight = torch.full((128, 128, 3, 3), 0.01, device=device)
        return CALIBRATION_GFLOP / timed(lambda: F.conv2d(images, weight, padding=1), device, min_s).mean
    finally:
        cudnn.conv.fp32_precision, cudnn.benchmark = saved


def kept_calibration(machine: Hardware, max_age_s: float) -> tuple[float, float] | None:
    """(GFLOP/s, age in s) of the calibration a process of this host kept for ``machine``'s class
    (:func:`keep_calibration`) less than ``max_age_s`` ago; None when there is none, it is older, or it cannot be
    read."""
    try:
        kept = json.loads(_calibration_file(machine).read_text())
        age = time.time() - float(kept["measured_at"])
        return (float(kept["calibration_gflops"]), age) if 0 <= age < max_age_s else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep_calibration(machine: Hardware, gflops: float) -> None:
    """Keep a calibration for this host's other processes, whole or not at all (:func:`keep_whole`)."""
    kept = {"calibration_gflops": gflops, "measured_at": time.time()}
    keep_whole(_calibration_file(machine), lambda part: part.write(json.dumps(kept).encode()))


def _calibration_file(machine: Hardware) -> Path:
    """One file per host and hardware class: a home folder shared by a cluster's nodes holds each node's own."""
    key = hashlib.sha256(f"{machine.hostname}\n{machine.hardware_class()}".encode()).hexdigest()[:16]
    return cache_dir() / "calibration" / f"{key}.json"
