"""Is a classifier arm's difference from real-only training real, or seed and test-set noise?

None of the source papers gives more than mean ± std over seeds; this module adds, for every arm (variant,
setting, arch, grid point, test set):

* a **confidence interval** of macro-F1 and of the macro one-vs-rest AUC: a percentile bootstrap over the test
  images, stratified by class (each replicate keeps every class's count, as the test set was drawn), and over
  the seeds (drawn with replacement; one seed: the test images only). A replicate's statistic is the mean over
  its drawn seeds of the metric on its drawn test images, the metric computed exactly as
  ``metrics.classification_scores`` does, with the drawn images as integer weights;
* for every arm against the real-only arm (``baseline``, replace_0) of the same variant, setting, arch and test
  set, the **paired difference**: the same seed draws (classifier seed N against classifier seed N) and the same
  test-image draws for both arms, a percentile interval, and a two-sided bootstrap p-value, the share of
  replicates whose difference lies at least as far from the observed one as the observed one lies from 0
  (Efron and Tibshirani 1993, section 16.4's shifted null), counted with the observed one: (1 + #) / (B + 1);
* **DeLong's test** (DeLong, DeLong and Clarke-Pearson 1988) of the AUC difference where it applies, a binary
  AUC on paired predictions: per class one-vs-rest, the contrast (mean over seeds of the arm's AUC) - (the same
  of the baseline) with the covariance of the 2 S AUCs from their placement values (their eq. for S10, S01);
  for two classes the macro AUC is that AUC, so its difference gets DeLong's p-value, else the bootstrap's;
* **Holm's** step-down adjustment (Holm 1979) within each paper-shaped table: all comparisons of one arch, test
  set and metric.
"""
from __future__ import annotations

import zlib
from math import erfc, sqrt
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .io import log, read_parquet, write_parquet

ARM_KEYS = ["variant", "setting", "arch", "point", "test_set"]
METRICS = ("f1_macro", "auc_ovr")


# --- resampling -------------------------------------------------------------------------------------------------

def stratified_weights(y: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of a bootstrap over the samples drawn within each class of ``y``: every row
    draws each class's count with replacement from that class."""
    y = np.asarray(y)
    w = np.zeros((n_boot, len(y)), np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        draws = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(w, (np.repeat(np.arange(n_boot), len(members)), draws.ravel()), 1)
    return w


def seed_weights(n_seeds: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_seeds) multiplicities of the seeds drawn with replacement; one seed: always itself."""
    if n_seeds == 1:
        return np.ones((n_boot, 1), np.int64)
    draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    return np.stack([np.bincount(d, minlength=n_seeds) for d in draws])


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``samples`` (NaN when any is NaN)."""
    samples = np.asarray(samples, np.float64)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if np.isnan(samples).any():
        return float("nan"), float("nan")
    a = (1 - confidence) / 2
    low, high = np.quantile(samples, [a, 1 - a])
    return float(low), float(high)


def bootstrap_p(samples: np.ndarray, observed: float) -> float:
    """Two-sided bootstrap p-value of H0 "no difference": (1 + #{|d* - d| >= |d|}) / (B + 1)."""
    samples = np.asarray(samples, np.float64)
    if np.isnan(observed) or np.isnan(samples).any():
        return float("nan")
    extreme = np.abs(samples - observed) >= abs(observed) - 1e-12 * max(1.0, abs(observed))
    return float(min(1.0, (1 + extreme.sum()) / (len(samples) + 1)))


# --- the metrics with integer weights ---------------------------------------------------------------------------

def weighted_macro_f1(y: np.ndarray, pred: np.ndarray, w: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 (``metrics.f1_per_class`` averaged over all classes) of each weight row of ``w`` (B, n)."""
    onehot = np.zeros((len(y), n_classes * n_classes))
    onehot[np.arange(len(y)), np.asarray(y) * n_classes + np.asarray(pred)] = 1.0
    cm = (np.asarray(w, np.float64) @ onehot).reshape(-1, n_classes, n_classes)  # (B, true, predicted)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denom = 2 * tp + (cm.sum(1) - tp) + (cm.sum(2) - tp)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(1)


def _pair_matrix(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """psi(X_i, Y_j) of DeLong et al.: 1 where a positive outscores a negative, 1/2 on a tie."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def weighted_macro_auc(y: np.ndarray, proba: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC (``metrics.classification_scores``: NaN when a class is absent) of each weight row:
    sum_ij w_i w_j psi(x_i, y_j) / (sum_i w_i sum_j w_j) per class, averaged."""
    y, w = np.asarray(y), np.asarray(w, np.float64)
    aucs = []
    for c in range(proba.shape[1]):
        pos, neg = y == c, y != c
        if not pos.any() or not neg.any():
            aucs.append(np.full(len(w), np.nan))
            continue
        wp, wn = w[:, pos], w[:, neg]
        aucs.append(((wp @ _pair_matrix(proba[pos, c], proba[neg, c])) * wn).sum(1) / (wp.sum(1) * wn.sum(1)))
    return np.mean(aucs, axis=0)


def replicate_metrics(y: np.ndarray, proba: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric of METRICS for every weight row; ``w`` of ones gives the plain metric."""
    return {"f1_macro": weighted_macro_f1(y, proba.argmax(1), w, proba.shape[1]),
            "auc_ovr": weighted_macro_auc(y, proba, w)}


# --- DeLong -----------------------------------------------------------------------------------------------------

def delong_contrast(positive: np.ndarray, scores: np.ndarray, contrast: np.ndarray) -> tuple[float, float, float]:
    """DeLong et al. 1988: the contrast L theta of the AUCs of the score rows (R, n) on the same samples, its
    variance L S L^T with S = S10 / m + S01 / n from the placement values, and the two-sided normal p-value.
    Returns (estimate, variance, p)."""
    positive = np.asarray(positive, bool)
    scores, contrast = np.atleast_2d(np.asarray(scores, np.float64)), np.asarray(contrast, np.float64)
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least 2 positives and 2 negatives, got {m} and {n}")
    if contrast.shape != (len(scores),):
        raise ValueError(f"expected a contrast of {len(scores)} weights, got shape {contrast.shape}")
    v10, v01, auc = [], [], []
    for s in scores:
        psi = _pair_matrix(s[positive], s[~positive])
        v10.append(psi.mean(1))  # per positive: share of negatives it outscores
        v01.append(psi.mean(0))  # per negative: share of positives that outscore it
        auc.append(psi.mean())
    cov = np.atleast_2d(np.cov(np.array(v10))) / m + np.atleast_2d(np.cov(np.array(v01))) / n
    estimate, var = float(contrast @ np.array(auc)), float(contrast @ cov @ contrast)
    if var <= 1e-15:
        return estimate, var, 1.0 if abs(estimate) < 1e-12 else 0.0
    return estimate, var, erfc(abs(estimate) / sqrt(2 * var))


def delong_paired(positive: np.ndarray, arm: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """DeLong's test of (mean over seeds of the arm's AUC) - (the same of the baseline's), the score rows of both
    (S, n) on the same samples, paired seed by seed. Returns (difference, p)."""
    arm, baseline = np.atleast_2d(arm), np.atleast_2d(baseline)
    s = len(arm)
    estimate, _, p = delong_contrast(positive, np.vstack([arm, baseline]),
                                     np.r_[np.full(s, 1.0 / s), np.full(len(baseline), -1.0 / len(baseline))])
    return estimate, p


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(pvalues, np.float64)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out


# --- the tables -------------------------------------------------------------------------------------------------

def _arm_arrays(g: pd.DataFrame, classes: list[str], image_ids: np.ndarray, seeds: list[int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(y (n,), proba (S, n, K)) of one arm, rows in ``image_ids`` order and seeds in ``seeds`` order."""
    cols = [f"p_{c}" for c in classes]
    proba, y = [], None
    for seed in seeds:
        s = g[g["seed"] == seed].set_index("image_id")
        if len(s) != len(image_ids) or not s.index.isin(image_ids).all():
            raise ValueError(f"predictions of seed {seed} do not cover the test images of the other arms")
        s = s.loc[image_ids]
        proba.append(s[cols].to_numpy(np.float64))
        y = s["y_true"].to_numpy(np.int64)
    return y, np.stack(proba)


def classifier_statistics(predictions: pd.DataFrame, classes: list[str], baseline: str | None = "replace_0",
                          n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
                          ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(intervals, differences, delong) from the test images' predictions of every classifier job (the classify
    rule's predictions.parquet tables concatenated). See the module docstring."""
    intervals, differences, delong_rows = [], [], []
    for test_set, t in predictions.groupby("test_set", sort=True):
        image_ids = np.sort(t["image_id"].unique())
        seeds = sorted(int(v) for v in t["seed"].unique())
        rng = np.random.default_rng([seed, zlib.crc32(str(test_set).encode())])
        arms = {}
        for key, g in t.groupby(ARM_KEYS, sort=True):
            own = sorted(int(v) for v in g["seed"].unique())
            if own != seeds:
                raise ValueError(f"arm {dict(zip(ARM_KEYS, key))} on {test_set}: seeds {own}, expected {seeds} as "
                                 "the other arms")
            arms[key] = _arm_arrays(g, classes, image_ids, seeds)
        y = next(iter(arms.values()))[0]
        w = stratified_weights(y, n_boot, rng)  # the same test-image draws for every arm of this test set
        m = seed_weights(len(seeds), n_boot, rng)  # and the same seed draws
        ones = np.ones((1, len(y)))

        def per_seed(proba: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:  # metric -> (S, rows)
            reps = [replicate_metrics(y, p, weights) for p in proba]
            return {k: np.stack([r[k] for r in reps]) for k in METRICS}

        full, boot = {}, {}
        for key, (_, proba) in arms.items():
            full[key] = {k: v[:, 0] for k, v in per_seed(proba, ones).items()}  # (S,)
            boot[key] = {k: (m * v.T).sum(1) / len(seeds) for k, v in per_seed(proba, w).items()}  # (B,)
            for metric in METRICS:
                low, high = percentile_interval(boot[key][metric], confidence)
                intervals.append({**dict(zip(ARM_KEYS, key)), "metric": metric, "mean": float(full[key][metric].mean()),
                                  "low": low, "high": high, "n_seeds": len(seeds), "n_test": len(y),
                                  "n_boot": n_boot, "confidence": confidence})
        for key, (_, proba) in arms.items():
            base_key = (*key[:3], baseline, key[4])
            if baseline is None or key[3] == baseline or base_key not in arms:
                continue
            base_proba = arms[base_key][1]
            for metric in METRICS:
                observed = float(full[key][metric].mean() - full[base_key][metric].mean())
                samples = boot[key][metric] - boot[base_key][metric]
                low, high = percentile_interval(samples, confidence)
                p_boot = bootstrap_p(samples, observed)
                p_delong = np.nan
                if metric == "auc_ovr" and len(classes) == 2 and (y == 1).sum() >= 2 and (y == 0).sum() >= 2:
                    p_delong = delong_paired(y == 1, proba[:, :, 1], base_proba[:, :, 1])[1]
                differences.append({**dict(zip(ARM_KEYS, key)), "baseline": baseline, "metric": metric,
                                    "difference": observed, "low": low, "high": high, "p_bootstrap": p_boot,
                                    "p_delong": p_delong,
                                    "p": p_delong if np.isfinite(p_delong) else p_boot,
                                    "test": "delong" if np.isfinite(p_delong) else "bootstrap",
                                    "n_seeds": len(seeds), "n_test": len(y), "n_boot": n_boot})
            for c, name in enumerate(classes):
                positive = y == c
                if positive.sum() < 2 or (~positive).sum() < 2:
                    continue
                diff, p = delong_paired(positive, proba[:, :, c], base_proba[:, :, c])
                delong_rows.append({**dict(zip(ARM_KEYS, key)), "baseline": baseline, "class": name,
                                    "auc_difference": diff, "p_delong": p, "n_seeds": len(seeds),
                                    "n_positive": int(positive.sum()), "n_negative": int((~positive).sum())})
    intervals = pd.DataFrame(intervals)
    differences = pd.DataFrame(differences)
    delong = pd.DataFrame(delong_rows)
    family = ["arch", "test_set", "metric"]  # one paper-shaped table
    if len(differences):
        differences["p_holm"] = differences.groupby(family, sort=False)["p"].transform(lambda p: holm(p.to_numpy()))
    if len(delong):
        delong["p_holm"] = delong.groupby(["arch", "test_set", "class"], sort=False)["p_delong"].transform(
            lambda p: holm(p.to_numpy()))
    return intervals, differences, delong


def statistics(tables: Sequence[str | Path], out_intervals: str | Path, out_differences: str | Path,
               out_delong: str | Path, params: Mapping[str, Any]) -> None:
    """Entry point of the classify_statistics rule: every classifier job's predictions table in, the three
    tables out."""
    predictions = pd.concat([read_parquet(p, required=("image_id", "y_true", "seed")) for p in tables],
                            ignore_index=True)
    intervals, differences, delong = classifier_statistics(
        predictions, list(params["classes"]), params.get("baseline"), int(params["bootstrap"]),
        float(params["confidence"]), int(params["seed"]))
    write_parquet(intervals, out_intervals)
    write_parquet(differences, out_differences)
    write_parquet(delong, out_delong)
    if len(differences):
        log.info("paired differences against %s (%d bootstrap replicates, %d seeds, %d test images):\n%s",
                 params["baseline"], int(params["bootstrap"]), differences["n_seeds"].iloc[0],
                 differences["n_test"].iloc[0],
                 differences[[*ARM_KEYS, "metric", "difference", "low", "high", "p", "p_holm"]].to_string(index=False))
