"""Classifier statistics: the bootstrap against scipy.stats.bootstrap, the weighted metrics against the plain ones
on explicit resamples, the paired difference on constructed predictions, DeLong and Holm by hand."""
from math import erfc, sqrt

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from pipeline_lib.metrics import classification_scores
from pipeline_lib.stats import (bootstrap_p, classifier_statistics, delong_contrast, delong_paired, holm,
                                percentile_interval, replicate_metrics, seed_weights, stratified_weights)


def test_stratified_weights_keep_every_class_count():
    y = np.repeat([0, 1, 2], [5, 3, 7])
    w = stratified_weights(y, 50, np.random.default_rng(0))
    assert w.shape == (50, 15) and (w >= 0).all()
    for c, n in enumerate([5, 3, 7]):
        assert (w[:, y == c].sum(1) == n).all()
    assert (seed_weights(1, 4, np.random.default_rng(0)) == 1).all()
    assert (seed_weights(3, 20, np.random.default_rng(0)).sum(1) == 3).all()


def test_percentile_bootstrap_of_a_mean_agrees_with_scipy():
    """One stratum, the mean: our resampling and percentile interval against scipy.stats.bootstrap's percentile
    method. Both are Monte-Carlo estimates of the same quantiles: they may differ by their sampling error, about
    sqrt(a (1 - a) / B) / f(q) for each (f the bootstrap distribution's density at the quantile q, normal here),
    and by sqrt(2) times that between the two; the tolerance is 5 such standard errors."""
    x = np.random.default_rng(1).normal(size=120)
    b = 4000
    w = stratified_weights(np.zeros(len(x), int), b, np.random.default_rng(2))
    ours = percentile_interval(w @ x / len(x), 0.95)
    res = sps.bootstrap((x,), np.mean, n_resamples=b, method="percentile", confidence_level=0.95,
                        random_state=np.random.default_rng(3))
    se_mean = x.std(ddof=0) / np.sqrt(len(x))
    mc = sqrt(0.025 * 0.975 / b) / sps.norm.pdf(sps.norm.ppf(0.025)) * se_mean
    assert ours[0] == pytest.approx(res.confidence_interval.low, abs=5 * sqrt(2) * mc)
    assert ours[1] == pytest.approx(res.confidence_interval.high, abs=5 * sqrt(2) * mc)


def test_weighted_metrics_equal_the_metrics_of_the_explicit_resample():
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], [20, 12, 8])
    proba = rng.dirichlet(np.ones(3), size=len(y))
    proba[np.arange(len(y)), y] += 0.3 * rng.random(len(y))
    proba[5] = proba[6]  # ties count one half in both
    w = stratified_weights(y, 30, rng)
    got = replicate_metrics(y, proba, w)
    for b in range(30):
        idx = np.repeat(np.arange(len(y)), w[b])
        want = classification_scores(y[idx], proba[idx], 3)
        assert got["f1_macro"][b] == pytest.approx(want["f1_macro"], abs=1e-12)
        assert got["auc_ovr"][b] == pytest.approx(want["auc_ovr"], abs=1e-12)


def test_delong_by_hand():
    """Positives 3, negatives 2. A: positives 0.9 0.6 0.4, negatives 0.5 0.2: V10 = (1, 1, 1/2), V01 = (2/3, 1),
    AUC 5/6. B: positives 0.8 0.3 0.2, negatives 0.6 0.1: V10 = (1, 1/2, 1/2), V01 = (1/3, 1), AUC 2/3.
    S10: var A = var B = 1/12, cov 1/24; S01: var A 1/18, var B 2/9, cov 1/9. S = S10 / 3 + S01 / 2:
    var A 1/18, var B 5/36, cov 5/72; var(A - B) = 1/18 + 5/36 - 10/72 = 1/18. z = (1/6) / sqrt(1/18) = 1/sqrt(2),
    p = erfc(1/2)."""
    positive = np.array([True, True, True, False, False])
    a = np.array([0.9, 0.6, 0.4, 0.5, 0.2])
    b = np.array([0.8, 0.3, 0.2, 0.6, 0.1])
    est, var, p = delong_contrast(positive, np.vstack([a, b]), np.array([1.0, -1.0]))
    assert est == pytest.approx(1 / 6, abs=1e-12) and var == pytest.approx(1 / 18, abs=1e-12)
    assert p == pytest.approx(erfc(0.5), abs=1e-12)
    assert delong_paired(positive, a, b) == pytest.approx((1 / 6, erfc(0.5)), abs=1e-12)
    assert delong_paired(positive, a, a) == (0.0, 1.0)
    with pytest.raises(ValueError, match="at least 2 positives and 2 negatives, got 1 and 4"):
        delong_contrast(np.array([True, False, False, False, False]), np.vstack([a, b]), np.array([1.0, -1.0]))


def test_delong_variance_of_one_auc_is_the_mann_whitney_one():
    """For one model the DeLong variance equals its S10 / m + S01 / n written out with numpy."""
    rng = np.random.default_rng(5)
    positive = rng.random(40) < 0.4
    s = rng.normal(size=40) + positive
    est, var, _ = delong_contrast(positive, s[None], np.array([1.0]))
    psi = (s[positive][:, None] > s[~positive][None, :]).astype(float)
    assert est == pytest.approx(sps.mannwhitneyu(s[positive], s[~positive]).statistic / psi.size, abs=1e-12)
    want = psi.mean(1).var(ddof=1) / positive.sum() + psi.mean(0).var(ddof=1) / (~positive).sum()
    assert var == pytest.approx(want, rel=1e-12)


def test_holm_by_hand():
    """Sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1: 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.5."""
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5], atol=1e-15)
    np.testing.assert_allclose(holm([0.3, np.nan, 0.6]), [0.6, np.nan, 0.6], atol=1e-15)
    assert holm([0.2, 0.01]).tolist() == [0.2, 0.02] and holm([0.9, 0.8]).tolist() == [1.0, 1.0]


def test_bootstrap_p_of_no_difference_is_one():
    assert bootstrap_p(np.zeros(99), 0.0) == 1.0
    assert bootstrap_p(np.full(99, 0.2) + np.linspace(-0.01, 0.01, 99), 0.2) == pytest.approx(1 / 100)


def predictions(y: np.ndarray, arms: dict[str, list[np.ndarray]], classes: list[str]) -> pd.DataFrame:
    rows = []
    for point, per_seed in arms.items():
        for seed, proba in enumerate(per_seed):
            df = pd.DataFrame({"variant": "class", "setting": "cfg", "seed": seed, "arch": "cnn", "point": point,
                               "test_set": "test", "image_id": [f"i{i:03d}" for i in range(len(y))], "y_true": y})
            rows.append(pd.concat([df, pd.DataFrame(proba, columns=[f"p_{c}" for c in classes])], axis=1))
    return pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=0)  # any row order


def test_paired_difference_on_constructed_predictions():
    rng = np.random.default_rng(6)
    classes = ["a", "b", "c"]
    y = np.repeat([0, 1, 2], 30)
    noise = [rng.dirichlet(np.ones(3), size=len(y)) for _ in range(2)]  # a chance-level classifier, two seeds
    perfect = [np.eye(3)[y] * 0.9 + 0.1 / 3 for _ in range(2)]
    df = predictions(y, {"replace_0": noise, "replace_50": noise, "replace_100": perfect}, classes)
    intervals, differences, delong = classifier_statistics(df, classes, "replace_0", n_boot=500, seed=0)
    d = differences.set_index(["point", "metric"])
    same = d.loc[("replace_50", "f1_macro")]
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0 and same["p"] == 1.0
    better = d.loc[("replace_100", "f1_macro")]
    assert better["difference"] > 0.4 and better["low"] > 0 and better["p"] == pytest.approx(1 / 501)
    assert better["test"] == "bootstrap" and np.isnan(better["p_delong"])  # three classes: DeLong per class
    assert d.loc[("replace_100", "auc_ovr"), "p_holm"] <= 2 * d.loc[("replace_100", "auc_ovr"), "p"]
    assert (delong.loc[delong["point"] == "replace_100", "p_delong"] < 1e-6).all()
    assert (delong.loc[delong["point"] == "replace_50", "p_delong"] == 1.0).all()
    ci = intervals.set_index(["point", "metric"])
    for point in ("replace_0", "replace_100"):
        row = ci.loc[(point, "f1_macro")]
        assert row["low"] <= row["mean"] <= row["high"] and row["n_seeds"] == 2 and row["n_test"] == 90
        want = np.mean([classification_scores(y, p, 3)["f1_macro"] for p in
                        {"replace_0": noise, "replace_100": perfect}[point]])
        assert row["mean"] == pytest.approx(want, abs=1e-12)


def test_two_classes_use_delong_for_the_auc_difference():
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1], 40)
    score = [np.clip(y * 0.3 + rng.random(len(y)) * 0.7, 0, 1) for _ in range(2)]
    base = [np.clip(rng.random(len(y)), 0, 1) for _ in range(2)]
    as_proba = lambda s: np.stack([1 - s, s], 1)  # noqa: E731
    df = predictions(y, {"replace_0": [as_proba(s) for s in base], "replace_100": [as_proba(s) for s in score]},
                     ["neg", "pos"])
    _, differences, _ = classifier_statistics(df, ["neg", "pos"], "replace_0", n_boot=300)
    auc = differences[differences["metric"] == "auc_ovr"].iloc[0]
    assert auc["test"] == "delong" and auc["p"] == auc["p_delong"]
    assert auc["p_delong"] == pytest.approx(delong_paired(y == 1, np.stack(score), np.stack(base))[1], abs=1e-12)


def test_missing_seed_of_an_arm_is_an_error():
    y = np.repeat([0, 1], 5)
    p = np.full((10, 2), 0.5)
    df = predictions(y, {"replace_0": [p, p], "replace_100": [p]}, ["a", "b"])
    with pytest.raises(ValueError, match=r"seeds \[0\], expected \[0, 1\]"):
        classifier_statistics(df, ["a", "b"], n_boot=100)
