"""Quantiles of the Beta distribution, for the "beta" sigma schedule.

The schedule of Lee et al. (2024, "Beta sampling is all you need") spends steps according to a
Beta(0.6, 0.6) density over the timesteps: more at both ends. Placing the steps needs the
inverse of the regularized incomplete beta function I_x(a, b). scipy has it, but scipy is not
a run-time dependency, so this small float64 implementation does the same job: a continued
fraction for I_x (DLMF 8.17.22) and a bracketed Newton iteration to invert it.
"""

from __future__ import annotations

import math

_TINY = 1e-300


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), evaluated with the modified Lentz method."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, 500):
        # Even term, then odd term, of the fraction's coefficients.
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return result


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b): the Beta(a, b) cumulative distribution function at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    # The fraction converges fast only left of the mean; use the symmetry I_x(a,b) =
    # 1 - I_{1-x}(b,a) on the right.
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_incomplete_beta(b, a, 1.0 - x)
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)) / a
    return front * _continued_fraction(a, b, x)


def beta_quantile(p: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = p (the Beta distribution's percent-point function)."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    x = 0.5
    log_norm = _log_beta(a, b)
    for _ in range(200):
        error = regularized_incomplete_beta(a, b, x) - p
        if error > 0:
            hi = x
        else:
            lo = x
        density = math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - log_norm)
        step = x - error / density if density > 0 else lo - 1.0
        # Newton while it stays inside the bracket, bisection otherwise.
        x_next = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(x_next - x) <= 1e-15 * max(x, 1e-300) or hi - lo <= 1e-16:
            return x_next
        x = x_next
    return x
