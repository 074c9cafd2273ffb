"""What a run records about its machine, the hardware class that groups comparable runtimes, the calibration."""

from __future__ import annotations

import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.flop_counter import FlopCounterMode

from ablation.engine import hardware
from ablation.engine.hardware import Hardware
from ablation.engine.inputs import keep_whole

H100 = Hardware(
    device="cuda",
    cpu_model="Intel(R) Xeon(R) Platinum 8480+",
    cpu_cores=16,
    torch_threads=16,
    gpu_name="NVIDIA H100 80GB HBM3",
    gpu_memory_gb="85.0",
    gpu_driver="550.54.15",
    cuda_version="12.4",
    cudnn_version="90100",
    hostname="node7",
)


def test_hardware_class_is_the_gpu_for_cuda_and_model_cores_threads_for_cpu():
    assert H100.hardware_class() == "cuda:NVIDIA H100 80GB HBM3"
    same_cpu_on_its_own = Hardware(**{**H100.__dict__, "device": "cpu", "torch_threads": 2})
    assert same_cpu_on_its_own.hardware_class() == "cpu:Intel(R) Xeon(R) Platinum 8480+ x16 threads=2"


def test_params_hold_every_field_the_report_reads_as_strings():
    assert H100.params() == {
        "cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
        "cpu_cores": "16",
        "torch_threads": "16",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "gpu_memory_gb": "85.0",
        "gpu_driver": "550.54.15",
        "cuda_version": "12.4",
        "cudnn_version": "90100",
        "hostname": "node7",
    }


def test_describe_on_the_cpu_says_none_for_the_gpu():
    described = hardware.describe(torch.device("cpu"))
    assert described.device == "cpu" and described.torch_threads == torch.get_num_threads()
    assert (described.gpu_name, described.gpu_memory_gb, described.gpu_driver) == ("none",) * 3
    assert described.cpu_cores >= 1 and described.cpu_model and described.hostname


def test_describe_on_cuda_reads_the_gpu(monkeypatch):
    """No GPU needed: torch's device properties and the driver stand in for an H100 (85,024,636,928 bytes)."""
    properties = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=85_024_636_928)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    monkeypatch.setattr(hardware, "gpu_driver", lambda: "550.54.15")
    described = hardware.describe(torch.device("cuda"))
    assert (described.gpu_name, described.gpu_memory_gb, described.gpu_driver) == (
        "NVIDIA H100 80GB HBM3",
        "85.0",
        "550.54.15",
    )
    assert described.hardware_class() == "cuda:NVIDIA H100 80GB HBM3"


def test_cpu_model_and_driver_are_read_from_the_kernels_files(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n")
    assert hardware.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    version = tmp_path / "version"
    version.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)\n"
        "GCC version:  gcc version 12.3.0\n"
    )
    assert hardware.gpu_driver(version) == "550.54.15"


def test_calibration_workload_is_the_flops_it_claims():
    """2 x multiply-adds of a 3x3 128->128 conv on 64x64: 2 * 128 * 128 * 9 * 4096 = 1.2080 GFLOP, as torch counts."""
    with FlopCounterMode(display=False) as counter:
        F.conv2d(torch.zeros(hardware.CALIBRATION_SHAPE), torch.zeros(128, 128, 3, 3), padding=1)
    assert counter.get_total_flops() / 1e9 == pytest.approx(hardware.CALIBRATION_GFLOP, rel=1e-12)
    assert hardware.CALIBRATION_GFLOP == pytest.approx(1.2079595, rel=1e-7)


def test_calibration_takes_about_its_budget_and_leaves_the_rng_and_backend_flags_alone():
    rng = torch.random.get_rng_state()
    flags = torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark
    start = time.perf_counter()
    gflops = hardware.calibrate(torch.device("cpu"), min_s=0.2)
    elapsed_s = time.perf_counter() - start
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark) == flags
    # warm-up (one pass) + at least 0.2 s of passes; a pass of 1.2 GFLOP takes < 0.5 s at >= 2.4 GFLOP/s
    assert 0.2 <= elapsed_s < 1.5 and gflops > 1.0


def test_a_kept_calibration_serves_its_host_and_class_until_it_is_too_old(tmp_path, monkeypatch):
    """Kept by one process, read by another of the same host and class; not by another node of the class (a shared
    home folder), not past its age, not when the file is damaged."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert hardware.kept_calibration(H100, 60) is None
    hardware.keep_calibration(H100, 1234.5)
    gflops, age_s = hardware.kept_calibration(H100, 60)
    assert gflops == 1234.5 and 0 <= age_s < 5
    assert hardware.kept_calibration(H100, age_s / 2) is None  # too old for a stricter reader
    assert hardware.kept_calibration(replace(H100, hostname="node8"), 60) is None
    assert hardware.kept_calibration(replace(H100, gpu_name="NVIDIA A100"), 60) is None
    (kept,) = (tmp_path / "nst-ablation" / "calibration").iterdir()
    kept.write_text("{not json")
    assert hardware.kept_calibration(H100, 60) is None


def test_a_calibration_that_cannot_be_kept_costs_nothing_and_leaves_no_part(tmp_path, monkeypatch):
    """A cache folder that cannot be made, or a write that fails half-way: no error, no file, no part behind."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    hardware.keep_calibration(H100, 1234.5)
    assert hardware.kept_calibration(H100, 60) is None

    def half_then_full(part) -> None:
        part.write(b'{"calibration_gflops": 1')
        raise OSError("No space left on device")

    assert not keep_whole(tmp_path / "kept" / "c.json", half_then_full)
    assert list((tmp_path / "kept").iterdir()) == []
