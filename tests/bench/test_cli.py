"""The bench's command line: one-line refusals, and a tiny run that writes bench.md with its targets table."""

from __future__ import annotations

import json
import statistics

import pytest

from ablation.bench.__main__ import main
from tests.support import DATA_DIR


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variants", "vgg11"], "--variants 'vgg11' is not a variant"),
        (["--sizes", "8"], "--sizes 8 px is too small"),
        (["--sizes", "a,b"], "--sizes 'a,b': give comma-separated integers"),
        (["--precision", "fp16"], "--precision 'fp16': choose from fp32, tf32, bf16"),
        (["--device", "cpu", "--precision", "tf32"], "--precision tf32 only changes CUDA convolutions"),
        (["--iters", "2", "--chunk", "5"], "--iters=2 is below --chunk=5"),
        (["--memory", "--iters", "-1"], "--iters=-1 must be >= 1"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(argv, message, capsys):
    assert main([*argv, "--device", "cpu"] if "--device" not in argv else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_help_names_every_variant_file(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "per-layer" in out and all(v in out for v in ("original", "avg_pool", "vgg16_tanh"))


def test_tiny_run_writes_rows_limit_profile_and_targets(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATION_DATA_DIR", str(DATA_DIR))  # the report's pair, no download
    argv = ["--quick", "--device", "cpu", "--sizes", "32", "--iters", "1", "--warmup", "0", "--batch-seeds", "2"]
    assert (
        main(
            [
                *argv,
                "--weights",
                "random",
                "--precision",
                "fp32",
                "--layouts",
                "nchw",
                "--profile",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "bench.json").read_text())
    # fp32/nchw, then the two baselines; the strong baseline solved the engine's problem (checked in the run)
    assert [r["contender"] for r in results["rows"]] == ["fp32/nchw", "tutorial", "strong"]
    engine, tutorial, strong = results["rows"]
    assert engine["size_wh"] == "32x42" and engine["step0_total"] == pytest.approx(strong["step0_total"], rel=1e-4)
    # the limit is timed in the same rounds, and its share read round by round
    assert engine["limit_ms"] == pytest.approx(statistics.median(engine["limit_samples_ms"])) and engine["limit_ms"] > 0
    shares = [li / e for li, e in zip(engine["limit_samples_ms"], engine["samples_ms"], strict=True)]
    assert engine["limit_share"] == pytest.approx(statistics.median(shares)) and tutorial["limit_ms"] is None
    assert 0 <= engine["stolen_share"] <= 1 and strong["stolen_share"] == engine["stolen_share"]  # one per case
    ratios = [s / e for s, e in zip(strong["samples_ms"], engine["samples_ms"], strict=True)]  # round by round
    assert engine["speedup_strong"] == pytest.approx(statistics.median(ratios))
    low, high = engine["speedup_strong_quartiles"]
    assert min(ratios) <= low <= engine["speedup_strong"] <= high <= max(ratios)
    ceilings = [s / li for s, li in zip(strong["samples_ms"], engine["limit_samples_ms"], strict=True)]
    assert engine["strong_ceiling"] == pytest.approx(statistics.median(ceilings))  # the speed-up at the limit
    assert results["batched"]["seeds"] == 2 and sum(results["profile"]["ms_per_iteration"].values()) > 0
    markdown = (tmp_path / "bench.md").read_text()
    assert "## Targets" in markdown and "## Where the time goes" in markdown
    # a 32 px CPU run measures none of the 256 px targets: each says what it needs instead of pass/FAIL
    assert markdown.count("not measured (needs") == 6
    assert not (tmp_path / "bench.partial.json").exists()  # the whole results replaced what was saved on the way


def test_a_bench_stopped_after_its_rows_keeps_them(tmp_path, monkeypatch):
    """A bench cut short (a time limit, a lost machine, ^C) leaves bench.partial.json with what it measured."""
    monkeypatch.setenv("ABLATION_DATA_DIR", str(DATA_DIR))

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ablation.bench.suite.batched_seeds", stopped)  # the stage after the rows
    argv = ["--quick", "--device", "cpu", "--sizes", "32", "--iters", "1", "--warmup", "0", "--weights", "random"]
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--precision", "fp32", "--layouts", "nchw", "--no-baseline", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench.partial.json").read_text())
    assert [r["contender"] for r in saved["rows"]] == ["fp32/nchw"] and saved["rows"][0]["size_wh"] == "32x42"
    assert not (tmp_path / "bench.json").exists()
