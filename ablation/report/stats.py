"""How sure a comparison is: its p-value, the verdicts adjusted for asking many questions at once, how many seeds
would decide it, and whether a figure the report states lies inside the measured interval.

A comparison is the log of one variant's per-seed values against another's (see :mod:`ablation.report.claims`):
Welch's t on the logs, two-sided, so p < 0.05 exactly when the 95% interval of the ratio excludes 1.

**Many claims at once: Holm's method.** 24 claims, each at 95%, give about one wrong "holds" or "fails" by chance
alone, and conditions multiply the claims. The headline verdicts therefore use Holm's step-down adjustment of the
comparisons' p-values (family-wise error rate 5%: the chance that *any* headline verdict of the family is wrong by
chance stays under 5%). Holm, not Benjamini-Hochberg, because each verdict is read and quoted on its own ("claim 4
fails"), so the guarantee wanted is on every verdict, not on the share of wrong ones among the decided (BH's false
discovery rate); and because the comparisons are dependent (they share the original's runs, and one claim's own
and judge numbers come from the same images), where Holm holds under any dependence and BH's guarantee needs
independence or positive dependence. The price is power: a marginal verdict becomes inconclusive, which more seeds
(:func:`seeds_needed`) can settle.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05
#: Seeds per variant beyond which "would decide" is not worth saying: the effect is too small for the spread.
MAX_SEEDS = 1000


def log_samples(values: np.ndarray, versus: np.ndarray) -> tuple[float, float, float]:
    """(difference of mean logs, sample variance of each side's logs): what the t-test and its extrapolation read."""
    a, b = np.log(np.asarray(values, float)), np.log(np.asarray(versus, float))
    return float(a.mean() - b.mean()), float(a.var(ddof=1)), float(b.var(ddof=1))


def welch_p_value(values: np.ndarray, versus: np.ndarray) -> float:
    """Two-sided p of Welch's t on the logs (2 values a side or more); 0 or 1 when neither side varies."""
    diff, var_a, var_b = log_samples(values, versus)
    if var_a == var_b == 0.0:
        return 1.0 if diff == 0.0 else 0.0
    return float(stats.ttest_ind(np.log(values), np.log(versus), equal_var=False).pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order (NaN stays NaN and does not count).

    Sorted ascending, the k-th smallest (k from 0) of m becomes max over j <= k of min(1, (m - j) * p_(j)).
    """
    found = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    m, adjusted, running = len(found), [float("nan")] * len(p_values), 0.0
    for rank, (p, i) in enumerate(sorted(found)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def decided(p_value: float, alpha: float = ALPHA) -> bool:
    return not math.isnan(p_value) and p_value < alpha


def seeds_needed(values: np.ndarray, versus: np.ndarray, alpha: float = ALPHA) -> int | None:
    """Seeds per variant at which, with the measured effect and spreads held, Welch's interval at 1 - ``alpha``
    excludes a ratio of 1: the smallest n >= 2 with |d| / sqrt((s_a^2 + s_b^2) / n) > t(1 - alpha / 2, dof(n)),
    dof(n) = (n - 1) (s_a^2 + s_b^2)^2 / (s_a^4 + s_b^4) (Welch-Satterthwaite with n a side). None when no effect
    was measured: the difference is smaller than its own standard error, so any n would extrapolate noise; and
    :data:`MAX_SEEDS` + 1 when even that many would not do."""
    diff, var_a, var_b = log_samples(values, versus)
    se_now = math.sqrt(var_a / len(values) + var_b / len(versus))
    if se_now == 0.0 or abs(diff) <= se_now:
        return None
    total = var_a + var_b
    for n in range(2, MAX_SEEDS + 1):
        dof = (n - 1) * total**2 / (var_a**2 + var_b**2)
        if abs(diff) / math.sqrt(total / n) > stats.t.ppf(1 - alpha / 2, dof):
            return n
    return MAX_SEEDS + 1


def change_pct(ratio: float) -> float:
    """A ratio as the report's % change: 0.128 -> -87.2 (%)."""
    return 100.0 * (ratio - 1.0)


def stated_digits(stated: float) -> int:
    """Decimals the text gives its figure with (-87.1946 -> 4, 100 -> 0)."""
    text = repr(float(stated)).removesuffix(".0")
    return len(text.split(".")[1]) if "." in text else 0


def agrees(measured_pct: float, stated_pct: float) -> bool:
    """The report's own numbers against its text: equal at the text's decimals (152630 / 1191920 - 1 is -87.1946%)."""
    return round(measured_pct, stated_digits(stated_pct)) == round(stated_pct, stated_digits(stated_pct))


def inside(stated_pct: float, low_pct: float, high_pct: float) -> bool:
    return low_pct <= stated_pct <= high_pct
