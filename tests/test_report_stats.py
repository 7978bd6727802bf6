"""The report's statistics against textbook values and an independent numerical check."""

from __future__ import annotations

import math

import pytest
import scipy.stats as scipy_stats  # dev dependency: the independent reference

from scripts.report.stats import (
    estimate,
    holm_adjust,
    judge,
    student_t_two_sided_tail,
    t_critical,
    welch_difference,
)

# Two-sided 95% Student t quantiles (t_{0.975, df}) from the standard tables.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 29: 2.045,
           30: 2.042, 60: 2.000, 120: 1.980}  # fmt: skip


@pytest.mark.parametrize(("df", "expected"), sorted(T_TABLE.items()))
def test_t_critical_matches_the_table(df: int, expected: float) -> None:
    assert t_critical(df) == pytest.approx(expected, abs=5e-4)


def test_t_critical_tends_to_the_normal_quantile() -> None:
    assert t_critical(1e7) == pytest.approx(1.95996, abs=1e-4)


def test_t_critical_other_confidence() -> None:
    assert t_critical(10, confidence=0.99) == pytest.approx(3.169, abs=5e-4)
    assert t_critical(1, confidence=0.5) == pytest.approx(1.0, abs=1e-9)  # tan(pi/4)


def _t_density(x: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


@pytest.mark.parametrize("df", [1.5, 2.624, 7.3])
def test_fractional_df_tail_matches_numerical_integration(df: float) -> None:
    """Welch's df is fractional, where no table helps: integrate the density instead."""
    t = t_critical(df)
    steps = 20000  # Simpson's rule on [0, t]
    h = t / steps
    total = _t_density(0, df) + _t_density(t, df)
    total += sum((4 if i % 2 else 2) * _t_density(i * h, df) for i in range(1, steps))
    central = 2 * total * h / 3
    assert central == pytest.approx(0.95, abs=1e-6)
    assert student_t_two_sided_tail(t, df) == pytest.approx(0.05, abs=1e-9)


def test_estimate_uses_sample_std_and_t_interval() -> None:
    est = estimate([74.0, 74.5, 75.0])
    assert est.mean == pytest.approx(74.5)
    assert est.std == pytest.approx(0.5)  # ddof=1; ddof=0 would be 0.408
    half = 4.302653 * 0.5 / math.sqrt(3)
    assert (est.ci_low, est.ci_high) == pytest.approx((74.5 - half, 74.5 + half), abs=1e-5)


def test_single_value_has_no_noise_estimate() -> None:
    est = estimate([73.2])
    assert est.std is None and est.ci_low is None and not est.has_noise_estimate
    diff = welch_difference(est, estimate([72.0, 72.5]))
    assert diff.diff == pytest.approx(73.2 - 72.25)
    assert diff.significant is None and not diff.has_noise_estimate


def test_welch_difference_significance_rule() -> None:
    a = estimate([74.0, 74.5, 75.0])
    b = estimate([72.5, 73.0, 73.5])
    diff = welch_difference(a, b)
    assert diff.df == pytest.approx(4.0)  # equal variances and sizes: n1 + n2 - 2
    half = 2.776445 * math.sqrt(0.25 / 3 * 2)
    assert (diff.ci_low, diff.ci_high) == pytest.approx((1.5 - half, 1.5 + half), abs=1e-5)
    assert diff.significant is True  # [+0.37, +2.63] excludes 0

    closer = welch_difference(a, estimate([73.0, 73.5, 74.0]))
    assert closer.ci_low < 0 < closer.ci_high  # [-0.13, +2.13]: a 1-point lead, noise
    assert closer.significant is False

    overlapping = welch_difference(estimate([72.0, 73.0, 71.0]), estimate([72.5, 71.5, 72.0]))
    assert overlapping.ci_low < 0 < overlapping.ci_high
    assert overlapping.significant is False


def test_zero_spread_on_both_sides_gives_no_noise_estimate() -> None:
    # With no spread there is no noise estimate: a 0.01-point difference is not "significant".
    diff = welch_difference(estimate([73.01] * 3), estimate([73.0] * 3))
    assert diff.diff == pytest.approx(0.01)
    assert diff.significant is None and not diff.has_noise_estimate
    assert diff.p_value is None and diff.df is None
    assert diff.no_noise_reason == "zero spread in both cells"
    assert welch_difference(estimate([1.0]), estimate([2.0, 3.0])).no_noise_reason == "one seed"


def test_zero_spread_on_one_side_still_has_welch_df() -> None:
    diff = welch_difference(estimate([74.0, 74.0, 74.0]), estimate([72.5, 73.0, 73.5]))
    assert diff.df == pytest.approx(2.0)  # only the baseline's variance: n - 1
    assert diff.has_noise_estimate


def test_welch_p_value_and_df_match_scipy() -> None:
    cases = [
        ([74.0, 74.5, 75.0], [73.0, 73.2, 73.4]),
        ([72.0, 73.0, 71.0], [72.5, 71.5, 72.0]),
        ([70.1, 70.9, 71.4, 70.2, 70.6], [70.0, 70.3]),
    ]
    for a, b in cases:
        diff = welch_difference(estimate(a), estimate(b))
        expected = scipy_stats.ttest_ind(a, b, equal_var=False)
        assert diff.p_value == pytest.approx(expected.pvalue, rel=1e-9)
        assert diff.df == pytest.approx(expected.df, rel=1e-12)


@pytest.mark.parametrize("df", [1, 1.5, 2, 2.624, 3.7, 7, 12.3, 30, 200, 5000])
def test_t_quantile_and_tail_are_exact_against_scipy(df: float) -> None:
    for confidence in (0.9, 0.95, 0.99):
        expected = scipy_stats.t.ppf(0.5 + confidence / 2, df)
        assert t_critical(df, confidence) == pytest.approx(expected, rel=1e-9)
    for t in (0.1, 1.0, 2.5, 8.0):
        assert student_t_two_sided_tail(t, df) == pytest.approx(
            2 * scipy_stats.t.sf(t, df), rel=1e-9
        )


def test_holm_adjustment_by_hand() -> None:
    # Sorted 0.01 < 0.02 < 0.04: 3*0.01 = 0.03, max(0.03, 2*0.02) = 0.04, max(0.04, 0.04).
    assert holm_adjust([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjust([0.03]) == [0.03]  # one comparison: unchanged
    assert holm_adjust([]) == []


def test_judge_applies_holm_over_the_comparisons_with_noise() -> None:
    strong = welch_difference(estimate([74.0, 74.5, 75.0]), estimate([73.0, 73.2, 73.4]))
    noise = welch_difference(estimate([72.0, 73.0, 71.0]), estimate([72.5, 71.5, 72.0]))
    single = welch_difference(estimate([74.0]), estimate([73.0]))
    verdicts = judge([strong, None, noise, single])
    assert verdicts[1] is None
    assert verdicts[3].significant is None and verdicts[3].comparisons == 2
    assert verdicts[0].comparisons == 2
    assert verdicts[0].p_adjusted == pytest.approx(2 * strong.p_value)
    assert verdicts[2].p_adjusted == pytest.approx(max(2 * strong.p_value, noise.p_value))
    assert verdicts[0].significant is (2 * strong.p_value < 0.05)
    assert verdicts[2].significant is False


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_critical(0)
    with pytest.raises(ValueError, match="confidence"):
        t_critical(5, confidence=1.0)
    with pytest.raises(ValueError, match="at least one value"):
        estimate([])
