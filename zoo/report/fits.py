"""Fits for the report: power laws and effective context length, beside the intervals of `zoo.stats`.

Everything here is plain Python/numpy on numbers read from the store, so it is easy to
check by hand and the report never invents a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zoo.stats import Z95, clustered, wilson  # noqa: F401  (re-exported for the report modules)


@dataclass(frozen=True)
class PowerLaw:
    """y = coef * x ** exponent, fitted by least squares on log y against log x."""

    coef: float
    exponent: float
    exponent_se: float | None  # standard error of the exponent (None with 2 points)
    r2: float
    n: int

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
    return PowerLaw(float(math.exp(c0)), float(c1), se, r2, n)


def effective_context(points: list[tuple[int, float, float, float]], threshold: float = 0.9,
                      ) -> tuple[int, float, float, float] | None:
    """The largest evaluated length whose accuracy is >= threshold.

    `points` are (length, accuracy, low, high); returns that point or None when no length
    reaches the threshold. This is deliberately the plain definition (not "every shorter
    length also passes"), and the figure shows the whole curve beside it.
    """
    ok = [p for p in points if p[1] is not None and p[1] >= threshold]
    return max(ok, key=lambda p: p[0]) if ok else None
