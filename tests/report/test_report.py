"""The report from a fixed MLflow store built here: exact numbers, golden files, same runs -> same bytes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunStatus
from PIL import Image

from ablation import report, sweep, tracking

GOLDEN = Path(__file__).resolve().parent / "golden" / "report"
START_MS = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
#: variant -> per seed: (content, style, tv, runtime_s); judge = own losses * 1.5 except for original
RUNS = {
    "original": [(1000.0, 3000.0, 200.0, 61.0), (1100.0, 2900.0, 220.0, 63.0)],
    "avg_pool": [(100.0, 400.0, 50.0, 58.0), (120.0, 380.0, 54.0, 60.0)],
    "vgg16_tanh": [(50.0, 20.0, 60.0, 40.0), (70.0, 24.0, 64.0, 42.0)],
}


def build_store(folder: Path) -> tuple[dict[str, str], str]:
    """A parent run and six child runs with fixed values, times and images, as a sweep would leave them."""
    client, experiment_id = tracking.open_store("nst-ablation")
    parent = client.create_run(
        experiment_id, start_time=START_MS, run_name="sweep-golden", tags={"sweep_role": "parent"}
    )
    parent_id = parent.info.run_id
    client.set_tag(parent_id, "sweep_id", "golden-sweep")
    client.set_tag(parent_id, "sweep_overrides", "experiment=all weights=random run.seed=0,1")
    rng = np.random.default_rng(0)
    image = folder / "img"
    image.mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(image / "content.png")
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(image / "style_0.png")
    ids = {}
    job = 0
    for variant, seeds in RUNS.items():
        for seed, (content, style, tv, runtime_s) in enumerate(seeds):
            total = content + style + tv
            tags = {"variant": variant, "seed": str(seed), "weights_source": "random", "mlflow.parentRunId": parent_id}
            run = client.create_run(
                experiment_id, start_time=START_MS + 1000 * job, tags=tags, run_name=f"{variant}-s{seed}"
            )
            run_id = run.info.run_id
            ids[run_id] = f"<{variant}-s{seed}>"
            factor = 1.0 if variant == "original" else 1.5
            finals = {"content": content, "style": style, "tv": tv, "total": total}
            metrics = {f"final_{k}": v for k, v in finals.items()}
            metrics |= {f"judge_{k}": v * factor for k, v in finals.items()}
            metrics |= {"ssim_content": 0.5 - 0.1 * job / 6, "total_s": runtime_s, "loop_s": runtime_s - 1}
            history = [Metric("total", total * (4 - step), START_MS, step) for step in range(4)]
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, START_MS, 3) for k, v in metrics.items()] + history,
                params=[
                    Param(k, v)
                    for k, v in {
                        "device": "cpu",
                        "torch_version": "2.14.1",
                        "torchvision_version": "0.29.1",
                        "weights_source": "random",
                        "weights_sha256": ("ab" if variant == "vgg16_tanh" else "cd") * 32,
                        "content_size_wh": "16x20",
                        "style_sizes_wh": "16x12",
                        "run.iterations": "3",
                        "run.precision": "fp32",
                    }.items()
                ],
            )
            Image.fromarray(np.full((20, 16, 3), 40 * job, dtype=np.uint8)).save(image / "final.png")
            client.log_artifact(run_id, str(image / "final.png"))
            client.log_artifact(run_id, str(image / "content.png"), "inputs")
            client.log_artifact(run_id, str(image / "style_0.png"), "inputs")
            client.set_terminated(run_id, "FINISHED", end_time=START_MS + 1000 * job + 500)
            job_record = sweep.SweepJob(parent_id, "golden-sweep", experiment_id, job)
            sweep.record_job(
                client, job_record, {"status": "finished", "run_id": run_id, "variant": variant, "seed": seed}
            )
            job += 1
    client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED), end_time=START_MS + 9000)
    ids[parent_id] = "<parent>"
    return ids, parent_id


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        ids, parent_id = build_store(folder)
        assert report.main(["--out", str(folder / "a")]) == 0
        assert report.main(["--sweep", parent_id, "--out", str(folder / "b")]) == 0
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return folder, ids


def normalised(path: Path, ids: dict[str, str]) -> str:
    """File text with MLflow's random run ids replaced by stable names."""
    return re.sub(r"[0-9a-f]{32}", lambda m: ids.get(m[0], m[0]), path.read_text())


@pytest.mark.parametrize("name", ["report.md", "table1.csv", "table2.csv", "judge.csv"])
def test_report_matches_the_golden_files(written, name):
    folder, ids = written
    text = normalised(folder / "a" / "golden-sweep" / name, ids)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        (GOLDEN / name).write_text(text)
    assert text == (GOLDEN / name).read_text()


def test_same_runs_give_the_same_files(written):
    folder, _ = written
    first, second = folder / "a" / "golden-sweep", folder / "b" / "golden-sweep"
    names = sorted(p.name for p in first.iterdir())
    assert names == ["curves.png", "grid.png", "judge.csv", "report.md", "runs.csv", "table1.csv", "table2.csv"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_numbers_are_the_stored_ones(written):
    folder, _ = written
    table1 = pd.read_csv(folder / "a" / "golden-sweep" / "table1.csv").set_index(["row", "variant"])
    total = table1.loc[("Total loss", "avg_pool")]
    assert total["measured_mean"] == pytest.approx((550 + 554) / 2)  # mean over the two seeds
    assert total["measured_std"] == pytest.approx(np.std([550, 554], ddof=1))  # sample std = 2.828...
    assert total["reported"] == 152630  # the report's Table 1
    assert total["reported_change_vs_original_pct"] == pytest.approx(100 * (152630 - 1191920) / 1191920)  # -87.19
    assert total["change_vs_original_pct"] == pytest.approx(100 * (552 - 4210) / 4210)
    text = (folder / "a" / "golden-sweep" / "report.md").read_text()
    assert "| Runtime | 1 min 2 sec ± 1 sec | 37 min 59 sec |" in text  # (61 + 63) / 2 s, std 1.41 s
    assert "WARNING: random weights" in text
    judge = pd.read_csv(folder / "a" / "golden-sweep" / "judge.csv").set_index(["row", "variant"])
    assert judge.loc[("Judge total loss", "vgg16_tanh"), "measured_mean"] == pytest.approx(1.5 * (130 + 158) / 2)


def test_formats_follow_the_report():
    assert report.format_runtime(2279) == "37 min 59 sec"
    assert report.format_number(1656280) == "1.65628e+06"
    assert report.format_cell(864545.0, float("nan")) == "864545"
    assert report.percent_change(152630, 1191920) == pytest.approx(-87.1946, abs=1e-4)  # "decreased 87.1946 %"


def test_unknown_sweep_is_one_clear_error(written, capsys, monkeypatch):
    folder, _ = written
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    assert report.main(["--sweep", "nope", "--out", str(folder / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sweep 'nope' is not a sweep" in err[0] and "golden-sweep" in err[0]
