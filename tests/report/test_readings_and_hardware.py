"""Two tiny fixed stores through ``python -m ablation.report``: a readings sweep (which reading of tanh matches
the report's pattern) and a sweep that reused runs from another machine (runtimes kept apart by hardware class)."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from ablation.report import readings
from ablation.report.__main__ import main as report_main
from ablation.report.variants import reported_table
from tests.report.store import FakeRun, build_store

REPORTED = pd.concat([reported_table("table1"), reported_table("table2").drop(index="original")])
LOSS_COLUMNS = ["content_loss", "style_loss", "tv_loss"]


def scaled(variant: str, reading: str, seed: int, runtime_s: float = 60.0, **extra) -> FakeRun:
    """A run of ``reading`` whose losses are the report's ``variant`` losses / 100, seeds 1% apart (same mean)."""
    losses = [REPORTED.loc[variant, c] / 100 * (1 + 0.01 * (-1) ** seed) for c in LOSS_COLUMNS]
    return FakeRun(reading, seed, *losses, runtime_s, **extra)


def log_pattern(variant: str) -> list[float]:
    """The report's log loss ratios of ``variant`` to original: content, style, TV, total."""
    return [math.log(REPORTED.loc[variant, c] / REPORTED.loc["original", c]) for c in [*LOSS_COLUMNS, "total_loss"]]


def rms(values: list[float]) -> float:
    return math.sqrt(sum(x * x for x in values) / len(values))


@pytest.fixture
def readings_report(tmp_path, store):
    runs = [
        scaled(variant, reading, seed, params={"variant.arch": arch})
        for variant, reading, arch in [
            ("original", "original", "vgg19"),
            ("original", "tanh_final", "vgg19"),  # tanh where no loss reads it: the original's losses exactly
            ("avg_pool", "tanh_avg_pool", "vgg19"),  # the report's avg_pool pattern
            ("tanh_final", "vgg16_tanh_avg_pool", "vgg16"),  # the report's tanh_final pattern, but a VGG16 network
        ]
        for seed in (0, 1)
    ]
    build_store(tmp_path, runs, "readings-sweep", "experiment=readings")
    assert report_main(["--out", str(tmp_path / "out"), "--no-publish"]) == 0
    return tmp_path / "out" / "readings-sweep"


def test_readings_name_the_reading_closest_to_the_reported_pattern(readings_report):
    text = (readings_report / "report.md").read_text()
    assert "## Readings of the ambiguous variants" in text
    # a VGG16 network matches tanh_final's pattern exactly, but only tanh_final's own readings (VGG19) compete:
    # tanh_avg_pool at 0.033 against tanh_final's own file at 1.908, seeds 1% apart
    assert (
        "- the report's Tanh with the final layer (`tanh_final`): `tanh_avg_pool`, closer than the next by 1.875 "
        "(seeds' spread 0.016): `tanh_avg_pool` 0.033 ± 0.009, Tanh with the final layer (`tanh_final`) 1.908 ± 0.014"
        in text
    )
    # one reading of VGG16 + tanh ran: nothing to rank; avg_pool is no ambiguous variant, so no line names it
    assert "- the report's VGG16 + tanh (`vgg16_tanh`): no reading stands out: only `vgg16_tanh_avg_pool`" in text
    assert "the report's Average pooling" not in text and "**0.000**" not in text
    frame = pd.read_csv(readings_report / "readings.csv").set_index("variant")
    assert list(frame.index) == ["tanh_final", "tanh_avg_pool", "vgg16_tanh_avg_pool"]  # the report's first
    assert frame.loc["tanh_final", "ratio_content"] == pytest.approx(1.0)
    # the original's pattern is all ones (log-ratios 0): the RMS of the reported log-ratios of 0.0982, 0.134, 0.4, 0.126
    assert frame.loc["tanh_final", "distance_tanh_final"] == pytest.approx(rms(log_pattern("tanh_final")))  # 1.908
    difference = [a - b for a, b in zip(log_pattern("avg_pool"), log_pattern("tanh_final"), strict=True)]
    assert frame.loc["tanh_avg_pool", "distance_tanh_final"] == pytest.approx(rms(difference), rel=1e-4)  # 0.0330
    # the total is the sum of the three losses here, 5e-6 off the report's rounded total: distance ~ 2e-6
    assert frame.loc["vgg16_tanh_avg_pool", "distance_tanh_final"] == pytest.approx(0.0, abs=1e-5)


def near(variant: str, reading: str, seed: int, factors: tuple[float, float, float], noise: float) -> FakeRun:
    """A run of ``reading``: the report's ``variant`` losses / 100 times per-loss ``factors``, seeds ``noise`` apart."""
    losses = [
        REPORTED.loc[variant, c] / 100 * f * (1 + noise * (seed - 1))
        for c, f in zip(LOSS_COLUMNS, factors, strict=True)
    ]
    return FakeRun(reading, seed, *losses, 60.0)


def test_a_near_tie_names_no_reading(tmp_path, store):
    """Two VGG16 readings 10% off the report's pattern, one in content, one in style (distances 0.052 and 0.048),
    seeds 10% apart: the gap is within the spread. tanh_final's readings are far apart: the closest is named."""
    runs = [
        near(variant, reading, seed, factors, noise)
        for variant, reading, factors, noise in [
            ("original", "original", (1, 1, 1), 0.01),
            ("vgg16_tanh", "vgg16_tanh_avg_pool", (1.1, 1, 1), 0.1),
            ("vgg16_tanh", "vgg16_tanh_every_conv", (1, 1.1, 1), 0.1),
            ("tanh_final", "tanh_avg_pool", (1, 1, 1), 0.01),
            ("avg_pool", "tanh_every_conv", (1, 1, 1), 0.01),
        ]
        for seed in (0, 1, 2)
    ]
    build_store(tmp_path, runs, "tie-sweep", "experiment=readings")
    assert report_main(["--out", str(tmp_path / "out"), "--no-publish"]) == 0
    text = (tmp_path / "out" / "tie-sweep" / "report.md").read_text()
    tie = re.search(r"- the report's VGG16 \+ tanh \(`vgg16_tanh`\): no reading stands out \(gap ([\d.]+), within the "
                    r"seeds' spread ([\d.]+)\)", text)  # fmt: skip
    assert tie is not None and float(tie[1]) < float(tie[2])
    assert "- the report's Tanh with the final layer (`tanh_final`): `tanh_avg_pool`, closer than the next" in text


def test_a_sweep_of_the_reports_variants_has_no_readings_section():
    runs = pd.DataFrame({"variant": ["original", "avg_pool", "vgg16_tanh"]})
    assert not readings.has_readings(runs)
    assert readings.has_readings(pd.DataFrame({"variant": ["original", "tanh_avg_pool"]}))
    assert not readings.has_readings(pd.DataFrame({"variant": ["tanh_avg_pool"]}))  # nothing to divide by


def hardware_run(variant: str, seed: int, runtime_s: float, hardware: str, gflops: float, job_status: str) -> FakeRun:
    return scaled(
        variant, variant, seed, runtime_s, job_status=job_status,
        tags={"hardware_class": hardware}, metrics={"calibration_gflops": gflops},
    )  # fmt: skip


@pytest.fixture
def mixed_report(tmp_path, store):
    runs = [
        hardware_run("original", 0, 61.0, "cpu:EPYC x2", 20.0, "finished"),
        hardware_run("original", 1, 63.0, "cpu:EPYC x2", 20.0, "finished"),
        hardware_run("avg_pool", 0, 5.0, "cuda:H100", 400.0, "skipped"),  # reused from a sweep on a GPU node
        hardware_run("avg_pool", 1, 7.0, "cuda:H100", 400.0, "skipped"),
        hardware_run("vgg16_tanh", 0, 40.0, "cpu:EPYC x2", 20.0, "finished"),
        hardware_run("vgg16_tanh", 1, 42.0, "cpu:EPYC x2", 20.0, "finished"),
    ]
    build_store(tmp_path, runs, "mixed-sweep", "experiment=all")
    assert report_main(["--out", str(tmp_path / "out"), "--no-publish"]) == 0
    return tmp_path / "out" / "mixed-sweep"


def test_runs_from_another_hardware_class_are_named_and_kept_apart(mixed_report):
    text = (mixed_report / "report.md").read_text()
    assert (
        "> **Mixed hardware.** 2 of this sweep's 6 runs ran on another hardware class (cuda:H100) than the sweep's "
        "own (`cpu:EPYC x2`)" in text
    )
    assert "| Hardware | cpu:EPYC x2 (4 runs), cuda:H100 (2 runs) |" in text
    assert "| Runtime† | +" not in text and "| Runtime† | -" in text  # Table 1's runtime change is marked ...
    assert "† These runs ran on more than one hardware class" in text  # ... and said to compare machines
    runtimes = pd.read_csv(mixed_report / "runtimes.csv").set_index(["hardware_class", "variant"])
    gpu = runtimes.loc[("cuda:H100", "avg_pool")]
    assert gpu["runtime_s_mean"] == 6.0 and gpu["work_gflop_mean"] == 2400.0  # (5 + 7) / 2 s x 400 GFLOP/s
    assert math.isnan(gpu["runtime_change_vs_original_pct"])  # no original on the GPU: no change across machines
    cpu = runtimes.loc[("cpu:EPYC x2", "vgg16_tanh")]
    assert cpu["runtime_change_vs_original_pct"] == pytest.approx(100 * (41 - 62) / 62)  # -33.87%, same class
    claimed = pd.read_csv(mixed_report / "claims.csv").set_index("id")
    runtime = claimed.loc["vgg16_tanh_runtime"]
    assert (runtime["own_verdict"], runtime["runtime_hardware_class"]) == ("holds", "cpu:EPYC x2")
    assert runtime["judge_verdict"] == "no judge (runtime)"
