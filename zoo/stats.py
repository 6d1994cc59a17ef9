"""Intervals shared by the evaluators and the reports."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(correct: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927, "Probable inference,
    the law of succession, and statistical inference", JASA 22(158)).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n,
    which is where HashHop accuracies live. Returns (low, high); (0, 1) when n == 0.
    """
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
