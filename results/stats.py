"""Confidence intervals for a delta over a few trials: paired t or Welch's t.

With 5 trials per side the normal approximation understates the interval badly
(t(0.975, 4) = 2.78 vs z = 1.96), so Student t quantiles are needed; scipy is not a
dependency, so the t distribution is computed here from the regularized incomplete beta
function (continued fraction, Lentz's method) and inverted by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

_EPS = 1e-15
_TINY = 1e-300


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (converges for x < (a+1)/(a+b+2))."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t with ``df`` (real, > 0) degrees of freedom."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_ppf needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class DeltaCI:
    delta: float         # mean(candidate) - mean(baseline)
    low: float
    high: float
    test: str            # "paired t" | "Welch t"
    df: float
    n_candidate: int
    n_baseline: int

    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "within noise"


def _mean_var(x: Sequence[float]) -> tuple[float, float]:
    m = sum(x) / len(x)
    return m, sum((v - m) ** 2 for v in x) / (len(x) - 1)


def paired_ci(candidate: Sequence[float], baseline: Sequence[float], alpha: float = 0.05) -> DeltaCI:
    """CI of the mean per-seed difference (seeds matched: shared data order cancels out)."""
    if len(candidate) != len(baseline) or len(candidate) < 2:
        raise ValueError("paired t needs two equally long samples of at least 2 trials")
    diffs = [c - b for c, b in zip(candidate, baseline)]
    mean, var = _mean_var(diffs)
    df = len(diffs) - 1
    half = t_ppf(1 - alpha / 2, df) * math.sqrt(var / len(diffs))
    return DeltaCI(mean, mean - half, mean + half, "paired t", df, len(candidate), len(baseline))


def welch_ci(candidate: Sequence[float], baseline: Sequence[float], alpha: float = 0.05) -> DeltaCI:
    """CI of the difference of means without assuming equal variances (Welch-Satterthwaite df)."""
    if len(candidate) < 2 or len(baseline) < 2:
        raise ValueError("Welch's t needs at least 2 trials on each side")
    (mc, vc), (mb, vb) = _mean_var(candidate), _mean_var(baseline)
    sc, sb = vc / len(candidate), vb / len(baseline)
    delta = mc - mb
    se2 = sc + sb
    if se2 == 0:
        return DeltaCI(delta, delta, delta, "Welch t", math.inf, len(candidate), len(baseline))
    df = se2 ** 2 / (sc ** 2 / (len(candidate) - 1) + sb ** 2 / (len(baseline) - 1))
    half = t_ppf(1 - alpha / 2, df) * math.sqrt(se2)
    return DeltaCI(delta, delta - half, delta + half, "Welch t", df, len(candidate), len(baseline))
