"""Intervals shared by the evaluators and the reports: Wilson for independent trials,
`clustered` for trials grouped in clusters (queries of one HashHop sample); and which way each
metric a sweep selects by is better."""

from __future__ import annotations

import math

# metrics a sweep can select by, all measured at the training length -> which way is better
SELECT_METRICS = {"eval_loss": "min", "eval_acc": "max", "hashhop_accuracy": "max"}

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
