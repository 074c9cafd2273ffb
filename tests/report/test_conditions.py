"""Where do the claims hold? A fixed store of a sweep with two conditions where the truth is known, through
``python -m ablation.report``: a claim that flips, a stated magnitude inside and outside the interval, the seeds an
inconclusive comparison needs (by hand), and Holm's adjustment turning a marginal "holds" into "inconclusive"."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from ablation.report import claims, conditions, evidence, stats
from ablation.report.__main__ import main as report_main
from tests.report.store import FakeRun, build_store
from tests.support import sqlite_store

GOLDEN = Path(__file__).resolve().parent / "golden" / "conditions"
NOISE = (0.99, 1.0, 1.01)  # content and style, seeds 0, 1, 2: 1% apart
#: condition -> iterations param, variant -> (content, style, tv, TV's per-seed factors). avg_pool's judge scores
#: are 1.2 x its own losses, original's equal its own.
FIXTURE = {
    "base": ("1000", {
        "original": (1000.0, 700.0, 30.0, (0.9, 1.0, 1.1)),
        "avg_pool": (110.0, 84.5, 27.0, (1.1, 0.9, 1.0)),  # total x0.128: the text's -87.19%
    }),
    "300it": ("300", {
        "original": (1000.0, 3000.0, 30.0, (0.96, 1.0, 1.04)),
        "avg_pool": (1200.0, 600.0, 27.0, (1.04, 0.96, 1.0)),  # content 1.2x: "lower" fails here
    }),
}  # fmt: skip


def fake_runs() -> list[FakeRun]:
    runs = []
    for condition, (iterations, variants) in FIXTURE.items():
        for variant, (content, style, tv, tv_factors) in variants.items():
            for seed, (noise, tv_factor) in enumerate(zip(NOISE, tv_factors, strict=True)):
                runs.append(
                    FakeRun(variant, seed, content * noise, style * noise, tv * tv_factor, 60.0,
                            judge_factor=1.2 if variant == "avg_pool" else 1.0, condition=condition,
                            params={"run.iterations": iterations})
                )  # fmt: skip
    return runs


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("conditions")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = sqlite_store(folder)
    try:
        ids, _ = build_store(folder, fake_runs(), "conditions-sweep", "experiment=conditions condition=base,300it")
        assert report_main(["--out", str(folder / "out"), "--no-publish"]) == 0
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    out = folder / "out" / "conditions-sweep"
    (out / "ids.txt").write_text("\n".join(f"{k} {v}" for k, v in ids.items()))
    return out


def frame(report_dir: Path) -> pd.DataFrame:
    return pd.read_csv(report_dir / "conditions.csv").set_index(["id", "condition", "basis"])


def values(condition: str, variant: str, loss: int) -> np.ndarray:
    """The fixture's per-seed values of one loss (0 content, 1 style, 2 tv) as the report reads them."""
    runs = [r for r in fake_runs() if r.condition == condition and r.variant == variant]
    return np.array([(r.content, r.style, r.tv)[loss] for r in runs])


@pytest.mark.parametrize("name", ["report.md", "conditions.csv"])
def test_conditions_report_matches_the_golden_files(report_dir, name):
    ids = dict(line.split(" ") for line in (report_dir / "ids.txt").read_text().splitlines())
    text = re.sub(r"[0-9a-f]{32}", lambda m: ids.get(m[0], m[0]), (report_dir / name).read_text())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        (GOLDEN / name).write_text(text)
    assert text == (GOLDEN / name).read_text()


def test_a_claim_that_holds_in_one_condition_and_fails_in_another(report_dir):
    found = frame(report_dir)
    assert found.loc[("avg_pool_content", "base", "own"), "verdict"] == "holds"  # content x0.11
    assert found.loc[("avg_pool_content", "300it", "own"), "verdict"] == "fails"  # content x1.2
    text = (report_dir / "report.md").read_text()
    assert "## Where do the claims hold?" in text and "CSV: [conditions.csv](conditions.csv)" in text
    assert "- 2. `avg_pool_content`, own losses: holds at 1000 iterations, fails at 300 iterations." in text
    assert "| `base` | 1000 iterations | 6 | 0, 1, 2 |" in text  # what sets the condition apart, read off the runs
    assert "| Conditions | `base`, `300it` (tables and claims: `base`) |" in text
    assert "WARNING: random weights" in text  # the numbers still mean nothing


def test_a_stated_magnitude_inside_and_one_outside_the_interval(report_dir):
    total = frame(report_dir).loc["avg_pool_total"]
    own = total.loc[("base", "own")]
    totals = {v: sum(values("base", v, loss) for loss in range(3)) for v in ("avg_pool", "original")}
    found = claims.compare(totals["avg_pool"], totals["original"], "original", "lower")  # the claims' Welch interval
    ratio, low, high = found.ratio, found.ci_low, found.ci_high
    assert own["change_pct"] == pytest.approx(100 * (ratio - 1))  # -87.20%
    assert (own["change_ci_low_pct"], own["change_ci_high_pct"]) == pytest.approx((100 * (low - 1), 100 * (high - 1)))
    assert own["change_ci_low_pct"] < -87.1946 < own["change_ci_high_pct"] and own["stated_inside"]
    assert not total.loc[("base", "judge"), "stated_inside"]  # x1.2 under the judge: -84.6%
    assert not total.loc[("300it", "own"), "stated_inside"]  # x0.45 at 300 iterations
    assert total.loc[("base", "own"), "reported_agrees"]  # 152630 / 1191920 - 1 = -87.1946%, the text's figure


def hand_seeds_needed(a: np.ndarray, b: np.ndarray, alpha: float) -> int:
    """The smallest n whose Welch interval at 1 - alpha, with these means and sample variances of the logs and n
    seeds a side, leaves out 0."""
    diff = np.log(a).mean() - np.log(b).mean()
    var_a, var_b = np.log(a).var(ddof=1), np.log(b).var(ddof=1)
    n = 2
    while True:
        se = math.sqrt((var_a + var_b) / n)
        dof = (var_a / n + var_b / n) ** 2 / ((var_a / n) ** 2 / (n - 1) + (var_b / n) ** 2 / (n - 1))
        if abs(diff) / se > scipy_stats.t.ppf(1 - alpha / 2, dof):
            return n
        n += 1


def test_an_inconclusive_comparison_says_how_many_seeds_would_decide_it(report_dir):
    tv = frame(report_dir).loc[("avg_pool_tv", "base", "own")]
    assert tv["verdict"] == tv["verdict_unadjusted"] == "inconclusive"  # x0.9, TV 10% apart between seeds
    # 8 comparisons with a p-value on own losses (avg_pool's 4 claims x 2 conditions): decided at 0.05 / 8
    expected = hand_seeds_needed(values("base", "avg_pool", 2), values("base", "original", 2), 0.05 / 8)
    assert tv["seeds_needed"] == expected == 16
    text = (report_dir / "report.md").read_text()
    assert (
        "| `avg_pool_tv` | `base` | own losses | ×0.900 [0.717, 1.130] vs `original` | 3 | ~16 seeds would decide |"
        in text
    )


def test_holms_adjustment_turns_a_marginal_holds_into_inconclusive(report_dir):
    tv = frame(report_dir).loc[("avg_pool_tv", "300it", "own")]
    assert tv["verdict_unadjusted"] == "holds" and tv["verdict"] == "inconclusive"
    assert tv["p_value"] == pytest.approx(0.0322, abs=1e-4)  # TV 4% apart between seeds, x0.9
    # second largest of 8 p-values: Holm multiplies it by 2 -> 0.064 > 0.05
    assert tv["p_adjusted"] == pytest.approx(2 * tv["p_value"])
    assert (
        "| 3 | Average pooling (`avg_pool`): TV loss lower than Original model (`original`) | ? / ? | ? [✓] / ?"
        in (report_dir / "report.md").read_text()
    )


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04 of 4: x4, x3, x2, x1 = 0.04, 0.06, 0.06 (kept monotone), 0.06 (max so far)
    assert stats.holm([0.03, 0.01, float("nan"), 0.04, 0.02]) == pytest.approx(
        [0.06, 0.04, float("nan"), 0.06, 0.06], nan_ok=True
    )
    assert stats.holm([0.5]) == [0.5] and stats.holm([0.6, 0.6]) == [1.0, 1.0]


def test_no_effect_measured_when_the_effect_is_within_its_standard_error():
    a, b = np.array([10.0, 11.0, 9.0]), np.array([10.2, 9.1, 10.9])  # means 10 and 10.07: 0.7% apart, sd 10%
    assert stats.seeds_needed(a, b) is None
    assert stats.seeds_needed(np.array([9.0, 9.9, 8.1]), b) == hand_seeds_needed(np.array([9.0, 9.9, 8.1]), b, 0.05)


#: claim -> the report's own % change against original, from its Tables 1 and 2, and whether it is the text's figure
OWN_NUMBERS = {
    "avg_pool_total": (100 * (152630 / 1191920 - 1), True),  # -87.1946%, "decreased 87.1946 %"
    "leaky_relu_content": (100 * (1656280 / 864545 - 1), False),  # +91.58%, "double the content loss": +100%
    "tanh_final_total": (100 * (150454 / 1191920 - 1), True),  # -87.37717%, "in decrease by 87.37717%"
    "vgg16_content": (100 * (45027.2 / 864545 - 1), True),  # -94.7918%, "decreases 94.7918%"
}


def test_stated_magnitudes_on_the_reports_own_numbers_claim_by_claim():
    table = claims.load_claims().set_index("id", drop=False)
    stated = table[table["stated_change_pct"].map(np.isfinite)]
    assert set(stated.index) == set(OWN_NUMBERS)
    for claim_id, (change, agrees) in OWN_NUMBERS.items():
        found = evidence.magnitude_fields(table.loc[claim_id], {})
        assert found["reported_change_pct"] == pytest.approx(change), claim_id
        assert found["reported_agrees"] == agrees, claim_id
    assert OWN_NUMBERS["leaky_relu_content"][0] == pytest.approx(91.578, abs=1e-3)


def open_comparison(versus: str, ratio: float, seeds: int | None) -> dict:
    found = claims.Comparison(versus, 1.0, 1.0, ratio, ratio * 0.9, ratio * 1.1, claims.INCONCLUSIVE)
    return {"comparison": found, "verdict_adjusted": claims.INCONCLUSIVE, "p_value": 0.2, "seeds_needed": seeds}


def test_a_claim_against_several_variants_is_settled_by_the_right_comparison():
    """ "Lower than every other": one comparison pointing against the claim fails it alone (the fewest seeds of
    those); when all point its way, it holds only once every one does (the most seeds)."""
    group = [open_comparison("a", 0.8, 20), open_comparison("b", 1.1, 9), open_comparison("c", 1.2, 6)]
    found, seeds = conditions.deciding(group, "lower")
    assert (found["comparison"].versus, seeds) == ("c", 6)
    found, seeds = conditions.deciding([open_comparison("a", 0.8, 20), open_comparison("b", 0.9, 30)], "lower")
    assert (found["comparison"].versus, seeds) == ("b", 30)
    found, seeds = conditions.deciding([open_comparison("a", 0.8, 20), open_comparison("b", 0.99, None)], "lower")
    assert (found["comparison"].versus, seeds) == ("b", None)  # no effect measured in one: it cannot hold soon
