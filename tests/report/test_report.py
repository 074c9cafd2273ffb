"""The report from a fixed MLflow store built here: exact numbers, golden files, same runs -> same bytes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ablation.report.__main__ import main as report_main
from ablation.report.formats import format_cell, format_number, format_runtime, percent_change
from tests.report.store import FakeRun, build_store
from tests.support import sqlite_store

GOLDEN = Path(__file__).resolve().parent / "golden" / "report"
#: variant -> per seed: (content, style, tv, runtime_s); judge = own losses * 1.5 except for original
RUNS = {
    "original": [(1000.0, 3000.0, 200.0, 61.0), (1100.0, 2900.0, 220.0, 63.0)],
    "avg_pool": [(100.0, 400.0, 50.0, 58.0), (120.0, 380.0, 54.0, 60.0)],
    "vgg16_tanh": [(50.0, 20.0, 60.0, 40.0), (70.0, 24.0, 64.0, 42.0)],
}
FAKE_RUNS = [
    FakeRun(variant, seed, *values, judge_factor=1.0 if variant == "original" else 1.5)
    for variant, seeds in RUNS.items()
    for seed, values in enumerate(seeds)
]


def build_golden_store(folder: Path) -> tuple[dict[str, str], str]:
    """A parent run and six child runs with fixed values, times and images, as a sweep would leave them."""
    return build_store(folder, FAKE_RUNS, "golden-sweep", "experiment=all weights=random run.seed=0,1")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = sqlite_store(folder)
    try:
        ids, parent_id = build_golden_store(folder)
        assert report_main(["--out", str(folder / "a")]) == 0
        assert report_main(["--sweep", parent_id, "--out", str(folder / "b")]) == 0
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return folder, ids


def normalised(path: Path, ids: dict[str, str]) -> str:
    """File text with MLflow's random run ids replaced by stable names."""
    return re.sub(r"[0-9a-f]{32}", lambda m: ids.get(m[0], m[0]), path.read_text())


@pytest.mark.parametrize("name", ["report.md", "table1.csv", "table2.csv", "judge.csv", "claims.csv", "runtimes.csv"])
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
    # issue 10 adds claims.csv, runtimes.csv and report.html to the files of issue 9's report
    assert names == [
        "claims.csv", "curves.png", "grid.png", "judge.csv", "report.html", "report.md", "runs.csv", "runtimes.csv",
        "table1.csv", "table2.csv",
    ]  # fmt: skip
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
    assert format_runtime(2279) == "37 min 59 sec"
    assert format_number(1656280) == "1.65628e+06"
    assert format_cell(864545.0, float("nan")) == "864545"
    assert percent_change(152630, 1191920) == pytest.approx(-87.1946, abs=1e-4)  # "decreased 87.1946 %"


def test_unknown_sweep_is_one_clear_error(written, capsys, monkeypatch):
    folder, _ = written
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    assert report_main(["--sweep", "nope", "--out", str(folder / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sweep 'nope' is not a sweep" in err[0] and "golden-sweep" in err[0]


def test_runtimes_under_a_minute_show_seconds_with_decimals():
    assert format_runtime(2.314) == "2.31 s"  # not "0 min 2 sec"
    assert format_runtime(59.994) == "59.99 s"
    assert format_runtime(60) == "1 min 0 sec"
    assert format_cell(41.0, np.std([40, 42], ddof=1), runtime=True) == "41.00 s ± 1.41 s"
    assert format_cell(62.0, np.std([61, 63], ddof=1), runtime=True) == "1 min 2 sec ± 1 sec"


def test_variant_keys_stand_beside_their_names(written):
    folder, _ = written
    text = (folder / "a" / "golden-sweep" / "report.md").read_text()
    assert "| Variants | `original` Original model, `avg_pool` Average pooling, `vgg16_tanh` VGG16 + tanh |" in text
    assert "| Average pooling (`avg_pool`) | 0 | `" in text  # the runs table


def test_report_html_is_self_contained(written):
    folder, _ = written
    page = (folder / "a" / "golden-sweep" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('src="data:image/png;base64,') == 2  # grid and curves
    assert 'src="grid.png"' not in page and "<h2>Does the report hold?</h2>" in page
    assert "<strong>WARNING: random weights.</strong>" in page
    assert '<td style="text-align:right">1050 ± 70.7</td>' in page  # Table 1, original's content loss


def test_report_is_published_to_the_sweeps_parent_run(written):
    folder, ids = written
    parent_id = next(run_id for run_id, name in ids.items() if name == "<parent>")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    published = {Path(f.path).name for f in client.list_artifacts(parent_id, "report")}
    assert published == {p.name for p in (folder / "a" / "golden-sweep").iterdir()}
    copy = client.download_artifacts(parent_id, "report/report.html", str(folder / "downloaded"))
    assert Path(copy).read_bytes() == (folder / "a" / "golden-sweep" / "report.html").read_bytes()


def test_help_says_what_the_report_holds_and_where_it_goes(capsys):
    with pytest.raises(SystemExit) as done:
        report_main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "Does the report hold?" in text and "report.html" in text and "--no-publish" in text
    assert "python -m ablation.report --sweep" in text  # an example
