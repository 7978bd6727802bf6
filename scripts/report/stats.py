"""Statistics the report uses: mean +- sample std, Student's t intervals, Welch differences.

Seeds are replicates of one (method, sparsity) cell. With n >= 2 replicates a cell gets a
mean, a sample standard deviation (ddof=1) and a 95% confidence interval of the mean,
`mean +- t(0.975, n-1) * std / sqrt(n)`. Two cells are compared with Welch's unequal-variance
interval for the difference of means, with its two-sided p-value and Welch-Satterthwaite
degrees of freedom. With one replicate on either side, or zero spread in both cells, no noise
estimate exists and nothing is called significant. Several differences of one table (the
sparsity levels) are judged together: `judge` adjusts their p-values with Holm's step-down
method, and a difference is *significant* when its adjusted p-value is below 0.05 (with one
comparison that is exactly "the 95% interval excludes 0").

The t distribution is computed here (regularized incomplete beta function; the quantile by
bisection) rather than read from a table, because Welch's degrees of freedom are not integers.
It is exact to about 1e-12 and checked against scipy in the tests; scipy is a development
dependency only, so a report needs nothing beyond the standard library for its statistics.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction for the regularized incomplete beta (modified Lentz's method)."""
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        # Even step of the fraction.
        numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        fraction *= c * d
        # Odd step.
        numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        delta = c * d
        fraction *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return fraction


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The fraction converges fast only on this side of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - front * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def student_t_two_sided_tail(t: float, df: float) -> float:
    """P(|T| > t) for Student's t with `df` degrees of freedom."""
    t = abs(t)
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


@functools.lru_cache(maxsize=4096)
def t_critical(df: float, confidence: float = CONFIDENCE) -> float:
    """The t value with P(|T| <= t) = confidence (1.96 in the normal limit for 95%).

    Cached: a report of thousands of runs asks for the same few degrees of freedom thousands
    of times, and each answer is a bisection of 40-odd incomplete beta functions."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    alpha = 1.0 - confidence
    low, high = 0.0, 2.0
    while student_t_two_sided_tail(high, df) > alpha:
        high *= 2.0
    # The tail is monotone in t, so bisection converges without any tuning.
    for _ in range(200):
        mid = 0.5 * (low + high)
        if student_t_two_sided_tail(mid, df) > alpha:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Estimate:
    """A cell's replicates: mean, sample std and 95% CI of the mean (None with n < 2)."""

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def has_noise_estimate(self) -> bool:
        return self.std is not None


def estimate(values: Sequence[float]) -> Estimate:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("estimate() needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Estimate(n=n, mean=mean, std=None, ci_low=None, ci_high=None)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half_width = t_critical(n - 1) * std / math.sqrt(n)
    return Estimate(n=n, mean=mean, std=std, ci_low=mean - half_width, ci_high=mean + half_width)


@dataclass(frozen=True)
class Difference:
    """candidate - baseline; the interval, df and p-value exist only with a noise estimate."""

    diff: float
    ci_low: float | None
    ci_high: float | None
    df: float | None
    p_value: float | None = None  # two-sided Welch p-value (unadjusted)
    no_noise_reason: str | None = None  # "one seed" | "zero spread in both cells"
    candidate_mean: float | None = None
    baseline_mean: float | None = None

    @property
    def has_noise_estimate(self) -> bool:
        return self.ci_low is not None

    @property
    def significant(self) -> bool | None:
        """True when the 95% interval excludes 0; None when no noise estimate exists."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low > 0.0 or self.ci_high < 0.0


def welch_difference(candidate: Estimate, baseline: Estimate) -> Difference:
    """Welch's interval and p-value for mean(candidate) - mean(baseline).

    df by Welch-Satterthwaite. When both samples have zero spread there is no estimate of the
    seed-to-seed noise at all, so no interval and no verdict (a 0.01-point difference between
    two constant cells is not evidence of anything).
    """
    diff = candidate.mean - baseline.mean
    means = {"candidate_mean": candidate.mean, "baseline_mean": baseline.mean}
    if candidate.std is None or baseline.std is None:
        return Difference(diff, None, None, None, no_noise_reason="one seed", **means)
    var_c = candidate.std**2 / candidate.n
    var_b = baseline.std**2 / baseline.n
    standard_error = math.sqrt(var_c + var_b)
    if standard_error == 0.0:
        return Difference(
            diff, None, None, None, no_noise_reason="zero spread in both cells", **means
        )
    df = (var_c + var_b) ** 2 / (var_c**2 / (candidate.n - 1) + var_b**2 / (baseline.n - 1))
    half_width = t_critical(df) * standard_error
    p_value = student_t_two_sided_tail(diff / standard_error, df)
    return Difference(diff, diff - half_width, diff + half_width, df, p_value=p_value, **means)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes
    max over j <= i of min(1, (m - j + 1) * p_(j)); the order of the input is kept."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class Verdict:
    """One difference judged within its family of `comparisons` (Holm-adjusted)."""

    difference: Difference
    p_adjusted: float | None
    comparisons: int  # how many differences with a noise estimate were judged together

    @property
    def significant(self) -> bool | None:
        if self.p_adjusted is None:
            return None
        return self.p_adjusted < 1.0 - CONFIDENCE


def judge(differences: Sequence[Difference | None]) -> list[Verdict | None]:
    """Judge a table's differences together: Holm over those with a noise estimate."""
    with_noise = [i for i, d in enumerate(differences) if d is not None and d.p_value is not None]
    adjusted = holm_adjust([differences[i].p_value for i in with_noise])
    by_index = dict(zip(with_noise, adjusted, strict=True))
    return [
        None if d is None else Verdict(d, by_index.get(i), len(with_noise))
        for i, d in enumerate(differences)
    ]


# ---------------------------------------------------------------------------------------------
# Time to target: censored times (Kaplan-Meier) and performance profiles (docs/protocol.md)


def kaplan_meier(times: Sequence[float], reached: Sequence[bool]) -> list[tuple[float, float]]:
    """The product-limit estimate of S(t), the fraction of runs not yet at the target after t:
    one (t, S(t)) step at each time where some run reached it. A run that never reached it
    (`reached` False) is censored at its time: it counts as at risk up to and including that
    time (at a tie, reaching comes before censoring, the usual convention)."""
    if len(times) != len(reached):
        raise ValueError("kaplan_meier: times and reached differ in length")
    at_risk = len(times)
    survival = 1.0
    steps: list[tuple[float, float]] = []
    for t in sorted(set(times)):
        events = sum(1 for u, r in zip(times, reached, strict=True) if u == t and r)
        leaving = sum(1 for u in times if u == t)
        if events:
            survival *= 1.0 - events / at_risk
            steps.append((float(t), survival))
        at_risk -= leaving
    return steps


def median_time(times: Sequence[float], reached: Sequence[bool]) -> float | None:
    """The median time to target: the plain median when every run reached it, else the
    Kaplan-Meier median (the first time S(t) <= 0.5); None when fewer than half reached it
    (the median is not reached within the runs' time)."""
    if not times:
        return None
    if all(reached):
        ordered = sorted(times)
        middle = len(ordered) // 2
        if len(ordered) % 2:
            return float(ordered[middle])
        return (ordered[middle - 1] + ordered[middle]) / 2.0
    for t, survival in kaplan_meier(times, reached):
        if survival <= 0.5 + 1e-12:
            return t
    return None


def performance_profile(
    times: dict[str, Sequence[float | None]], taus: Sequence[float]
) -> dict[str, list[float]]:
    """Dolan and Moré's performance profile: `times[method][p]` is the method's time on
    problem p (None: never reached); rho_m(tau) is the fraction of problems that m solves
    within tau times the fastest method's time on that problem. Problems no method solved
    count in the denominator and are solved by none."""
    problems = {len(v) for v in times.values()}
    if len(problems) > 1:
        raise ValueError("performance_profile: every method needs one time per problem")
    count = problems.pop() if problems else 0
    fastest = []
    for p in range(count):
        solved = [v[p] for v in times.values() if v[p] is not None]
        fastest.append(min(solved) if solved else None)
    profile = {}
    for method, values in times.items():
        ratios = [
            v / best if v is not None and best else (1.0 if v is not None else math.inf)
            for v, best in zip(values, fastest, strict=True)
        ]
        profile[method] = [
            sum(1 for r in ratios if r <= tau) / count if count else 0.0 for tau in taus
        ]
    return profile
