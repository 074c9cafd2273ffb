"""The report's claims: verdicts on its own numbers, and on fixed runs where the truth is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ablation.report import claims
from ablation.report.quantities import QUANTITIES

#: The report's own tables against its text: three sentences its tables contradict, every other one they support.
FAILS_ON_OWN_NUMBERS = {
    "avg_pool_style",  # "average pooling increased the style loss": 34940 < 245190
    "tanh_final_least_style",  # "the least style loss": VGG16's 9680.14 is lower than tanh's 32754.3
    "vgg16_tanh_style_vs_table1",  # "style lower than any model of table 1": 10385.8 > VGG16's 9680.14
}


def claim(claim_id: str) -> pd.Series:
    table = claims.load_claims().set_index("id", drop=False)
    return table.loc[claim_id]


def runs_frame(rows: list[tuple[str, str, dict[str, float]]]) -> pd.DataFrame:
    """(variant, hardware class, {loss or runtime_s: value}) per run; total = the sum; judge columns = own columns."""
    records = []
    for seed, (variant, hardware, given) in enumerate(rows):
        values = {**given, "total": sum(v for k, v in given.items() if k != "runtime_s")}
        own = {f"final_{k}": v for k, v in values.items() if k != "runtime_s"}
        judge = {f"judge_{k}": v for k, v in values.items() if k != "runtime_s"}
        records.append(
            {
                "variant": variant,
                "seed": seed,
                "hardware_class": hardware,
                "runtime_s": values.get("runtime_s"),
                **own,
                **judge,
            }
        )
    return pd.DataFrame(records)


def test_every_claim_of_section_3_1_is_there_with_its_sentence():
    table = claims.load_claims()
    assert len(table) == 24 and table["id"].is_unique
    assert set(table["variant"]) == {"avg_pool", "leaky_relu", "tanh_final", "vgg16", "vgg16_tanh"}
    assert set(table["quantity"]) <= set(QUANTITIES) and set(table["relation"]) == {"lower", "higher"}
    assert table["sentence"].str.len().min() > 20
    assert claims.versus_variants(claim("vgg16_tanh_content_vs_table1")) == [
        "original", "avg_pool", "leaky_relu", "tanh_final", "vgg16",
    ]  # fmt: skip
    assert claims.versus_variants(claim("tanh_final_least_tv")) == ["original", "avg_pool", "leaky_relu", "vgg16"]


def test_verdicts_on_the_reports_own_numbers():
    verdicts = {row["id"]: claims.on_reported(row)[0] for _, row in claims.load_claims().iterrows()}
    assert {k for k, v in verdicts.items() if v == claims.FAILS} == FAILS_ON_OWN_NUMBERS
    assert sum(v == claims.HOLDS for v in verdicts.values()) == 21
    _, total = claims.on_reported(claim("avg_pool_total"))
    assert total.ratio == pytest.approx(152630 / 1191920)  # "decreased 87.1946 %": ratio 0.128
    _, least_tv = claims.on_reported(claim("tanh_final_least_tv"))
    assert least_tv.versus == "avg_pool" and least_tv.ratio == pytest.approx(32841.8 / 33135.6)  # 0.991: the closest
    _, tv_vs_separate = claims.on_reported(claim("vgg16_tanh_tv_vs_separate"))
    assert tv_vs_separate.versus == "vgg16" and tv_vs_separate.ratio == pytest.approx(50380.9 / 50232.6)  # 1.003


LOSSES_ORIGINAL = [{"content": c, "style": 100.0, "tv": t} for c, t in [(990, 50), (1000, 48), (1010, 52)]]
LOSSES_AVG_POOL = [{"content": c, "style": 10.0, "tv": t} for c, t in [(99, 49), (100, 51), (101, 50)]]


def test_one_claim_holds_one_fails_one_is_inconclusive():
    runs = runs_frame(
        [("original", "cpu:A", v) for v in LOSSES_ORIGINAL] + [("avg_pool", "cpu:A", v) for v in LOSSES_AVG_POOL]
    )
    verdict, content = claims.on_runs(claim("avg_pool_content"), runs, "final_content")[:2]
    assert verdict == claims.HOLDS
    assert content.ratio == pytest.approx(0.1)  # every avg_pool seed is a tenth of an original seed
    log_var = np.var(np.log([0.99, 1.0, 1.01]), ddof=1)  # the same spread on both sides: Welch's dof = 2 * (3 - 1)
    half = stats.t.ppf(0.975, 4) * math.sqrt(2 * log_var / 3)
    assert (content.ci_low, content.ci_high) == pytest.approx((0.1 * math.exp(-half), 0.1 * math.exp(half)))
    # "average pooling increased the style loss": it is a tenth of the original's on every seed
    assert claims.on_runs(claim("avg_pool_style"), runs, "judge_style")[0] == claims.FAILS
    # TV 50 +- 1 against 50 +- 2: the interval straddles 1
    verdict, tv = claims.on_runs(claim("avg_pool_tv"), runs, "final_tv")[:2]
    assert verdict == claims.INCONCLUSIVE and tv.ci_low < 1 < tv.ci_high


def test_one_seed_is_inconclusive_and_a_missing_variant_is_not_measured():
    runs = runs_frame([("original", "cpu:A", v) for v in LOSSES_ORIGINAL] + [("avg_pool", "cpu:A", LOSSES_AVG_POOL[0])])
    verdict, content = claims.on_runs(claim("avg_pool_content"), runs, "final_content")[:2]
    assert verdict == claims.ONE_SEED == "inconclusive (1 seed)"
    assert content.ratio == pytest.approx(99 / 1000) and math.isnan(content.ci_low)
    assert claims.on_runs(claim("vgg16_content"), runs, "final_content")[0] == "not measured (no runs of vgg16)"
    assert claims.on_runs(claim("vgg16_runtime"), runs, None)[0] == "no judge (runtime)"
    without_judge = runs.assign(judge_content=float("nan"))  # runs older than the judge
    verdict = claims.on_runs(claim("avg_pool_content"), without_judge, "judge_content")[0]
    assert verdict == "not measured (no judge_content in runs of avg_pool, original)"


def test_runtime_claims_use_one_hardware_class():
    cpu_original = [("original", "cpu:A", {**v, "runtime_s": 100.0 + k}) for k, v in enumerate(LOSSES_ORIGINAL)]
    gpu_tanh = [("tanh_final", "cuda:B", {**v, "runtime_s": 10.0 + k}) for k, v in enumerate(LOSSES_AVG_POOL)]
    verdict, found, hardware = claims.on_runs(
        claim("tanh_final_runtime"), runs_frame(cpu_original + gpu_tanh), "runtime_s"
    )
    # 10 s on a GPU against 100 s on a CPU says nothing about tanh: no class ran both
    assert verdict == "inconclusive (no one hardware class ran all of tanh_final, original)" and found is None
    gpu_original = [("original", "cuda:B", {**v, "runtime_s": 20.0 + k}) for k, v in enumerate(LOSSES_ORIGINAL)]
    runs = runs_frame(cpu_original + gpu_tanh + gpu_original)
    verdict, found, hardware = claims.on_runs(claim("tanh_final_runtime"), runs, "runtime_s")
    assert (verdict, hardware) == (claims.HOLDS, "cuda:B")
    assert found.versus_mean == pytest.approx(21.0)  # the GPU's originals only, not the CPU's 101 s


def test_claims_frame_has_three_verdicts_per_claim():
    runs = runs_frame(
        [("original", "cpu:A", {**v, "runtime_s": 60.0}) for v in LOSSES_ORIGINAL]
        + [("avg_pool", "cpu:A", {**v, "runtime_s": 50.0}) for v in LOSSES_AVG_POOL]
    )
    frame = claims.evaluate_claims(runs).set_index("id")
    assert list(frame.loc["avg_pool_content", ["reported_verdict", "own_verdict", "judge_verdict"]]) == ["holds"] * 3
    assert (
        frame.loc["avg_pool_style", "claim"]
        == "Average pooling (`avg_pool`): style loss higher than Original model (`original`)"
    )
    text = claims.claims_markdown(frame.reset_index())
    assert (
        "| 4 | Average pooling (`avg_pool`): total loss lower than Original model (`original`) (text: -87.19%) |"
        in text
    )
