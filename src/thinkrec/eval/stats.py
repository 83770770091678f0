"""Bootstrap confidence intervals and paired significance tests over per-user scores."""

from __future__ import annotations

import numpy as np
from scipy import stats


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean, resampling users with replacement."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    # Resample in chunks so memory stays bounded for large user sets.
    means = np.empty(n_boot)
    chunk = max(1, int(2e7 // max(1, v.size)))
    for s in range(0, n_boot, chunk):
        e = min(n_boot, s + chunk)
        idx = rng.integers(0, v.size, size=(e - s, v.size))
        means[s:e] = v[idx].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(v.mean()), float(lo), float(hi)


def paired_test(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, float]:
    """Compare two models' per-user scores on the same users: mean difference a − b with a bootstrap CI,
    a two-sided paired bootstrap p-value, the paired t-test and the Wilcoxon signed-rank p-values."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_test needs scores for the same users: shapes {a.shape} vs {b.shape}")
    d = a - b
    mean, lo, hi = bootstrap_ci(d, n_boot, alpha, seed)
    rng = np.random.default_rng(seed + 1)
    # Bootstrap under the null: centre the differences, then count resampled means at least as extreme.
    centred = d - d.mean()
    idx = rng.integers(0, d.size, size=(n_boot, d.size)) if d.size * n_boot <= 5e7 else None
    if idx is not None:
        null_means = centred[idx].mean(1)
    else:
        null_means = np.array([centred[rng.integers(0, d.size, d.size)].mean() for _ in range(n_boot)])
    p_boot = float((np.sum(np.abs(null_means) >= abs(d.mean())) + 1) / (n_boot + 1))
    nonzero = d[d != 0]
    p_t = float(stats.ttest_rel(a, b).pvalue) if d.size > 1 and d.std() > 0 else 1.0
    p_w = float(stats.wilcoxon(nonzero).pvalue) if nonzero.size > 0 else 1.0
    return {
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": mean,
        "diff_low": lo,
        "diff_high": hi,
        "p_bootstrap": p_boot,
        "p_ttest": p_t,
        "p_wilcoxon": p_w,
        "n": int(d.size),
    }
