"""Image-quality and classification metrics as pure functions on arrays and tensors."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from scipy.spatial.distance import cdist


# --- reconstruction -------------------------------------------------------------------------------------------

def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error; (N, C, H, W) -> (N,)."""
    return (x - y).pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB, 10 log10(L^2 / MSE); ``data_range`` L = 2 for images in [-1, 1]."""
    return 10 * torch.log10(data_range**2 / mse(x, y).clamp_min(1e-12))


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # as scipy.ndimage.gaussian_filter: 11 taps for sigma 1.5
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _ssim_maps(x: torch.Tensor, y: torch.Tensor, data_range: float, sigma: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM map and contrast-structure map ``cs`` (Wang et al. 2004, eq. 13 without the luminance factor),
    Gaussian window, over the pixels the window covers fully; both (N, C, H - 10, W - 10) for sigma 1.5.

    The local statistics are computed in float64 and the maps returned in the inputs' dtype: the variance
    E[x^2] - E[x]^2 cancels, and in float32 its error (~1e-8 for values near 1) divided by C2 = 3.6e-3 moves
    SSIM in the 6th digit (a constant image gave 0.93942 against the exact 0.93941). float64 leaves that error
    at ~1e-17 (autocast leaves float64 alone, so a bf16 run computes the same statistics)."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = x.dtype
    x, y = x.double(), y.double()
    g = _gaussian_window(sigma).to(x)
    if x.shape[-1] < g.numel() or x.shape[-2] < g.numel():
        raise ValueError(f"SSIM needs images of at least {g.numel()} px a side, got {tuple(x.shape[-2:])}")
    n = g.numel()

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        # As weighted sums of shifted views: elementwise, so the same numbers in every run (a float64 conv2d goes
        # through BLAS, whose results can change with the memory alignment of its operands between runs).
        rows = sum(g[k] * t[..., k:t.shape[-1] - n + 1 + k] for k in range(n))
        return sum(g[k] * rows[..., k:rows.shape[-2] - n + 1 + k, :] for k in range(n))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    return ((2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs).to(dtype), cs.to(dtype)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) with an 11-tap Gaussian window, averaged over channels and the pixels
    the window covers fully; matches ``skimage.metrics.structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``. Differentiable, so it also serves as the SSIM loss term. (N, C, H, W) -> (N,).
    """
    return _ssim_maps(x, y, data_range, sigma)[0].flatten(1).mean(1)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003, five scales


def ms_ssim_scales(size: int, window: int = 11, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many dyadic scales of an image ``size`` px a side still hold a full ``window``-tap SSIM window."""
    n = 0
    while n < max_scales and size // 2**n >= window:
        n += 1
    return n


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, sigma: float = 1.5,
            weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Per-image multi-scale SSIM (Wang, Simoncelli & Bovik 2003, eq. 7):
    ``prod_{j<M} relu(cs_j)^w_j * relu(ssim_M)^w_M``, halving the image by 2x2 average pooling between scales.

    With ``weights=None`` the paper's five weights are used when the image holds five scales (>= 176 px for the
    11-tap window). Smaller images keep the first M scales that fit and renormalise their weights to sum 1 (at
    11-21 px this is SSIM itself); ``ms_ssim_scales`` says how many were used. Explicit ``weights`` must fit.
    Matches ``torchmetrics``' ``multiscale_structural_similarity_index_measure(normalize="relu")`` with the same
    weights. (N, C, H, W) -> (N,).
    """
    window = _gaussian_window(sigma).numel()
    fit = ms_ssim_scales(min(x.shape[-2:]), window)
    if fit == 0:
        raise ValueError(f"MS-SSIM needs images of at least {window} px a side, got {tuple(x.shape[-2:])}")
    if weights is None:
        w = torch.tensor(MS_SSIM_WEIGHTS[:fit], dtype=torch.float64)
        w = w / w.sum()
    else:
        if len(weights) > fit:
            raise ValueError(f"MS-SSIM with {len(weights)} scales needs images of at least "
                             f"{window * 2 ** (len(weights) - 1)} px a side, got {tuple(x.shape[-2:])}")
        w = torch.tensor(weights, dtype=torch.float64)
    values = []
    for j in range(len(w)):
        s, cs = _ssim_maps(x, y, data_range, sigma)
        if j == len(w) - 1:
            values.append(s.flatten(1).mean(1))
        else:
            values.append(cs.flatten(1).mean(1))
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stack = torch.relu(torch.stack(values))  # (M, N)
    return torch.prod(stack ** w.to(stack).view(-1, 1), dim=0)


# --- distribution metrics on features ---------------------------------------------------------------------------

def _check_features(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real, fake = np.asarray(real), np.asarray(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) features, got {real.shape} and {fake.shape}")
    return real.astype(np.float64), fake.astype(np.float64)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (negative rounding-error
    eigenvalues set to 0)."""
    w, v = linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Eq. (13) of the CLUE paper, ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    Tr((S1 S2)^(1/2)) is computed as Tr((A S2 A)^(1/2)) with A = S1^(1/2) (S1 S2 is similar to A S2 A): the
    square roots of the eigenvalues of a symmetric positive semi-definite matrix, clipped at 0, instead of
    ``sqrtm`` of the non-symmetric product, which turns complex or non-finite for singular covariances."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if s1.shape != (len(mu1), len(mu1)) or s2.shape != s1.shape or mu2.shape != mu1.shape:
        raise ValueError(f"expected means (D,) and covariances (D, D), got {mu1.shape}, {s1.shape}, {mu2.shape}, "
                         f"{s2.shape}")
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    trace_sqrt = float(np.sqrt(np.clip(linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt, 0.0))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between feature sets (N, D) and (M, D): ``frechet_distance`` of their means and sample covariances
    (ddof = 1, as the reference implementations)."""
    real, fake = _check_features(real, fake)
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))


def _row_blocks(n: int, m: int, chunk: int | None):
    """Row slices so that one block of an (n, m) distance matrix stays under about 64 MB."""
    step = chunk or max(1, (64 << 20) // (8 * max(m, 1)))
    for i in range(0, n, step):
        yield slice(i, min(n, i + step))


def kth_neighbour_distance(x: np.ndarray, y: np.ndarray, k: int, exclude_self: bool = False,
                           chunk: int | None = None) -> np.ndarray:
    """For each row of x, the Euclidean distance to its k-th nearest row of y (k >= 1); with ``exclude_self``
    (x is y) the point itself is not counted. Computed in row blocks: never the full distance matrix."""
    kk = k + 1 if exclude_self else k
    if k < 1 or len(y) < kk:
        raise ValueError(f"the k-th nearest neighbour (k = {k}) needs k >= 1 and at least {kk} points, got {len(y)}")
    out = np.empty(len(x))
    for rows in _row_blocks(len(x), len(y), chunk):
        out[rows] = np.partition(cdist(x[rows], y), kk - 1, axis=1)[:, kk - 1]
    return out


def _balls(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """How many of the balls B(centre_i, radius_i) hold each point, and whether each ball holds any point."""
    counts, used = np.zeros(len(points), np.int64), np.zeros(len(centres), bool)
    for rows in _row_blocks(len(points), len(centres), chunk):
        inside = cdist(points[rows], centres) <= radii[None, :]
        counts[rows] = inside.sum(1)
        used |= inside.any(0)
    return counts, used


def knn_recall(real: np.ndarray, fake: np.ndarray, k: int = 10, chunk: int | None = None) -> float:
    """Eq. (14) of the CLUE paper: the fraction of real samples r whose k-th nearest generated sample lies
    within tau, ``1/|R| sum_r 1[d(r, NN_G^k(r)) <= tau]``, Euclidean distance in feature space.

    tau, "the median of all k-NN distances", is taken over the generated set: for every generated sample, the
    distance to its k-th nearest other generated sample (the typical radius of the generated manifold). Taking
    it over the real-to-generated distances instead would make the score 0.5 by construction.
    """
    real, fake = _check_features(real, fake)
    if len(fake) <= k:
        raise ValueError(f"k-NN recall with k={k} needs more than {k} generated samples, got {len(fake)}")
    tau = float(np.median(kth_neighbour_distance(fake, fake, k, exclude_self=True, chunk=chunk)))
    return float(np.mean(kth_neighbour_distance(real, fake, k, chunk=chunk) <= tau))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int | None = None
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-2): each set's manifold is the union of
    balls around its samples with radius the distance to the sample's k-th nearest neighbour in the set;
    precision = share of generated samples inside the real manifold, recall = share of real samples inside the
    generated one (k = 3 as the paper)."""
    real, fake = _check_features(real, fake)
    in_real, _ = _balls(fake, real, kth_neighbour_distance(real, real, k, exclude_self=True, chunk=chunk), chunk)
    in_fake, _ = _balls(real, fake, kth_neighbour_distance(fake, fake, k, exclude_self=True, chunk=chunk), chunk)
    return float(np.mean(in_real > 0)), float(np.mean(in_fake > 0))


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5, chunk: int | None = None
                     ) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, eq. 3-4) with the real samples' k-NN balls (k = 5 as the
    paper): density = 1/(kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))] (about 1 when the generated samples
    follow the real density, unbounded above); coverage = share of real balls that hold at least one
    generated sample."""
    real, fake = _check_features(real, fake)
    counts, used = _balls(fake, real, kth_neighbour_distance(real, real, k, exclude_self=True, chunk=chunk), chunk)
    return float(counts.sum() / (k * len(fake))), float(used.mean())


def inception_score(probs: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016), exp(E_x KL(p(y|x) || p(y))), from a classifier's class
    probabilities (N, C) (here the domain classifier's); with ``splits`` > 1 the mean and std over that many
    equal parts, as the original protocol (10 splits)."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-6):
        raise ValueError(f"inception_score: rows must be probabilities (N, C) that sum to 1, got shape {p.shape}")
    if not 1 <= splits <= len(p):
        raise ValueError(f"inception_score: splits must be between 1 and the {len(p)} samples, got {splits}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = np.where(part > 0, part * (np.log(np.clip(part, 1e-300, None)) - np.log(np.clip(py, 1e-300, None))), 0)
        scores.append(float(np.exp(kl.sum(1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


# --- classification ---------------------------------------------------------------------------------------------

def confusion_matrix(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows true class, columns predicted class."""
    y_true, pred = np.asarray(y_true, np.int64), np.asarray(pred, np.int64)
    return np.bincount(y_true * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def f1_per_class(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 = 2 TP / (2 TP + FP + FN) per class; 0 for a class neither present nor predicted (scikit-learn's
    zero_division=0)."""
    cm = confusion_matrix(y_true, pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    return np.divide(2 * tp, denom, out=np.zeros(n_classes), where=denom > 0)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of their ranks (scipy.stats.rankdata's "average"
    method, without importing scipy.stats, which takes a second in every job)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)  # mean of ranks start+1 .. end
    return ranks


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic: (sum of the positives' ranks - P (P + 1) / 2) / (P N),
    tied scores sharing their average rank (a tie counts one half). NaN without positives or negatives."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(np.asarray(score, np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_points(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve (fpr, tpr, thresholds) with a point at every distinct score, from (0, 0) at threshold inf:
    a sample is called positive when its score >= the threshold."""
    positive = np.asarray(positive, bool)
    order = np.argsort(-np.asarray(score, np.float64), kind="mergesort")
    s, p = np.asarray(score, np.float64)[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last sample of each run of equal scores
    tps = np.cumsum(p)[last].astype(np.float64)
    fps = (last + 1) - tps
    n_pos, n_neg = max(1, int(positive.sum())), max(1, int((~positive).sum()))
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos], np.r_[np.inf, s[last]]


def classification_scores(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """Macro-F1 of the arg-max prediction, one-vs-rest macro AUC of the probabilities (the unweighted mean of the
    per-class AUCs; NaN when a class is absent, where one-vs-rest AUC is undefined), and accuracy."""
    y_true = np.asarray(y_true)
    if proba.shape != (len(y_true), n_classes):
        raise ValueError(f"expected probabilities of shape ({len(y_true)}, {n_classes}), got {proba.shape}")
    pred = proba.argmax(1)
    aucs = [binary_auc(y_true == c, proba[:, c]) for c in range(n_classes)]
    return {"f1_macro": float(f1_per_class(y_true, pred, n_classes).mean()), "auc_ovr": float(np.mean(aucs)),
            "accuracy": float(np.mean(pred == y_true))}


def per_class_scores(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> list[dict]:
    """Per class: F1, one-vs-rest AUC and the one-vs-rest ROC curve points (``fpr``, ``tpr`` arrays)."""
    y_true = np.asarray(y_true)
    f1 = f1_per_class(y_true, proba.argmax(1), n_classes)
    rows = []
    for c in range(n_classes):
        fpr, tpr, _ = roc_points(y_true == c, proba[:, c])
        rows.append({"f1": float(f1[c]), "auc": binary_auc(y_true == c, proba[:, c]), "fpr": fpr, "tpr": tpr})
    return rows
