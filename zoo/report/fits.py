"""Fits for the report: power laws and effective context length, beside the intervals of `zoo.stats`.

Everything here is plain Python/numpy on numbers read from the store, so it is easy to
check by hand and the report never invents a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zoo.stats import Z95, clustered, t95, wilson  # noqa: F401  (re-exported for the report modules)


@dataclass(frozen=True)
class PowerLaw:
    """y = coef * x ** exponent, fitted by least squares on log y against log x."""

    coef: float
    exponent: float
    exponent_se: float | None  # standard error of the exponent (None with 2 points)
    r2: float
    n: int
    x_range: tuple[float, float] = (0.0, 0.0)  # the smallest and largest x fitted

    @property
    def exponent_ci(self) -> tuple[float, float] | None:
        """95% interval of the exponent: Student's t with n - 2 degrees of freedom, which is
        wide at few points (4.30 standard errors at 4 points), as it should be."""
        if self.exponent_se is None:
            return None
        half = t95(self.n - 2) * self.exponent_se
        return self.exponent - half, self.exponent + half

    def __call__(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.coef * np.asarray(x, dtype=float) ** self.exponent


def fit_power_law(x: list[float], y: list[float], min_points: int = 3) -> PowerLaw | None:
    """Fit y = a x^b in log-log space (the form of Kaplan et al. 2020, "Scaling Laws for
    Neural Language Models", arXiv:2001.08361, without an irreducible term, which a handful
    of toy points cannot pin down). None when fewer than `min_points` distinct positive x
    or any y <= 0."""
    pts = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None]
    if len({a for a, _ in pts}) < min_points or any(a <= 0 or b <= 0 for a, b in pts):
        return None
    lx = np.log([a for a, _ in pts])
    ly = np.log([b for _, b in pts])
    A = np.stack([np.ones_like(lx), lx], 1)
    (c0, c1), *_ = np.linalg.lstsq(A, ly, rcond=None)
    resid = ly - (c0 + c1 * lx)
    n = len(pts)
    ss_res = float(resid @ resid)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    se = None
    if n > 2:
        sxx = float(((lx - lx.mean()) ** 2).sum())
        se = math.sqrt(ss_res / (n - 2) / sxx) if sxx > 0 else None
    xs = [a for a, _ in pts]
    return PowerLaw(float(math.exp(c0)), float(c1), se, r2, n, (min(xs), max(xs)))


def crossing(a: PowerLaw, b: PowerLaw) -> float | None:
    """The x where two fitted power laws meet, when it lies inside both fits' x ranges (a
    crossing outside the measured range is an extrapolation the report does not make)."""
    if a.exponent == b.exponent:
        return None
    x = (b.coef / a.coef) ** (1.0 / (a.exponent - b.exponent))
    lo = max(a.x_range[0], b.x_range[0])
    hi = min(a.x_range[1], b.x_range[1])
    return x if lo <= x <= hi else None


def effective_context(points: list[tuple[int, float, float, float]], threshold: float = 0.9,
                      ) -> tuple[int, float, float, float] | None:
    """The largest evaluated length whose accuracy is >= threshold.

    `points` are (length, accuracy, low, high); returns that point or None when no length
    reaches the threshold. This is deliberately the plain definition (not "every shorter
    length also passes"), and the figure shows the whole curve beside it.
    """
    ok = [p for p in points if p[1] is not None and p[1] >= threshold]
    return max(ok, key=lambda p: p[0]) if ok else None
