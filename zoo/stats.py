"""Intervals shared by the evaluators and the reports: Wilson for independent trials,
`clustered` for trials grouped in clusters (queries of one HashHop sample), Student's t for the
mean of a few independent measurements (`mean_interval`); and which way each metric a sweep
selects by is better."""

from __future__ import annotations

import math

# metrics a sweep can select by, all measured at the training length -> which way is better
SELECT_METRICS = {"eval_loss": "min", "eval_acc": "max", "eval_first_acc": "max", "hashhop_accuracy": "max"}

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


BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0


def clustered(counts: list[tuple[float, float]], z: float = Z95, reps: int = BOOTSTRAP_REPS,
              seed: int = BOOTSTRAP_SEED) -> dict[str, float | int | None]:
    """A proportion over clusters with its 95% interval: `counts` is (correct, trials) per
    cluster, e.g. per HashHop sample, whose queries share one haystack and so are not
    independent.

    The variance of the pooled proportion comes from a seeded cluster bootstrap (whole
    clusters resampled with replacement, `reps` times); it gives the effective number of
    independent trials, n_eff = p (1 - p) / Var (Kish's design effect), kept between the
    number of clusters and the number of trials, and the interval is Wilson's at n_eff.
    Where every trial agrees (p = 0 or 1) the data cannot show how correlated trials are,
    so each cluster counts once. Deterministic: the same counts give the same interval.
    Returns k, n, acc, lo, hi, n_eff and clusters (acc, lo, hi None when n == 0).
    """
    import numpy as np

    ks = np.array([c[0] for c in counts if c[1] > 0], dtype=float)
    ns = np.array([c[1] for c in counts if c[1] > 0], dtype=float)
    k, n, m = float(ks.sum()), float(ns.sum()), len(ns)
    if n == 0:
        return {"k": 0, "n": 0, "acc": None, "lo": None, "hi": None, "n_eff": 0.0, "clusters": 0}
    p = k / n
    n_eff = float(m)
    if 0 < p < 1 and m > 1:
        idx = np.random.default_rng(seed).integers(0, m, size=(reps, m))
        var = float((ks[idx].sum(1) / ns[idx].sum(1)).var())
        n_eff = min(n, max(float(m), p * (1 - p) / var)) if var > 0 else n
    lo, hi = wilson(p * n_eff, n_eff, z)
    return {"k": k, "n": n, "acc": p, "lo": lo, "hi": hi, "n_eff": n_eff, "clusters": m}


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """Two-sided 95% quantile of Student's t: the table to 30 degrees of freedom, then the
    Cornish-Fisher expansion around the normal quantile (off by < 0.001 there)."""
    if df < 1:
        raise ValueError(f"t95 needs >= 1 degree of freedom, got {df}")
    if df <= len(T95):
        return T95[df - 1]
    z = Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(xs: list[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the 95% interval of the mean of independent measurements, mean
    +- t95(n - 1) s / sqrt(n); low and high are None for fewer than two."""
    n = len(xs)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    m = sum(xs) / n
    if n < 2:
        return m, None, None
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = t95(n - 1) * s / math.sqrt(n)
    return m, m - half, m + half
