import numpy as np

from thinkrec.eval.stats import bootstrap_ci, paired_test


def test_bootstrap_ci_covers_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(100)
    large = rng.random(10_000)
    m, lo, hi = bootstrap_ci(small, 500)
    assert lo < m < hi
    _, lo2, hi2 = bootstrap_ci(large, 500)
    assert (hi2 - lo2) < (hi - lo) / 5


def test_paired_test_detects_real_difference_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.random(2000)
    better = base + 0.05 + rng.normal(0, 0.05, 2000)
    res = paired_test(better, base, 500)
    assert res["diff"] > 0.04 and res["diff_low"] > 0
    assert res["p_ttest"] < 1e-6 and res["p_bootstrap"] < 0.01 and res["p_wilcoxon"] < 1e-6
    same = paired_test(base + rng.normal(0, 0.05, 2000), base + rng.normal(0, 0.05, 2000), 500)
    assert same["p_ttest"] > 0.001 and same["diff_low"] < 0 < same["diff_high"]
