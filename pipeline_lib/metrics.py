"""Image-quality and classification metrics as pure functions on arrays and tensors."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


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
    Gaussian window, over the pixels the window covers fully; both (N, C, H - 10, W - 10) for sigma 1.5."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = _gaussian_window(sigma).to(x)
    if x.shape[-1] < g.numel() or x.shape[-2] < g.numel():
        raise ValueError(f"SSIM needs images of at least {g.numel()} px a side, got {tuple(x.shape[-2:])}")
    c = x.shape[1]
    kx = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    return (2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs, cs


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

def fid_from_stats(mu_r: np.ndarray, sigma_r: np.ndarray, mu_g: np.ndarray, sigma_g: np.ndarray) -> float:
    """Eq. (13) of the CLUE paper: ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))."""
    diff = mu_r - mu_g
    covmean = linalg.sqrtm(sigma_r @ sigma_g)
    if not np.isfinite(covmean).all():  # singular product: regularise as in Heusel et al.'s reference code
        eps = np.eye(sigma_r.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma_r + eps) @ (sigma_g + eps))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma_r) + np.trace(sigma_g) - 2 * np.trace(covmean))


def fid(real: np.ndarray, gen: np.ndarray) -> float:
    """FID between two feature sets (N, D) and (M, D); sample covariances (ddof = 1)."""
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) features, got {real.shape} and {gen.shape}")
    if len(real) < 2 or len(gen) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(real)} and {len(gen)}")
    real, gen = real.astype(np.float64), gen.astype(np.float64)
    return fid_from_stats(real.mean(0), np.cov(real, rowvar=False), gen.mean(0), np.cov(gen, rowvar=False))


def knn_recall(real: np.ndarray, gen: np.ndarray, k: int = 10) -> float:
    """Eq. (14) of the CLUE paper: the fraction of real samples r whose k-th nearest generated sample lies
    within tau, ``1/|R| sum_r 1[d(r, NN_G^k(r)) <= tau]``, Euclidean distance in feature space.

    tau, "the median of all k-NN distances", is taken over the generated set: for every generated sample, the
    distance to its k-th nearest other generated sample (the typical radius of the generated manifold). Taking
    it over the real-to-generated distances instead would make the score 0.5 by construction.
    """
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) features, got {real.shape} and {gen.shape}")
    if len(gen) <= k:
        raise ValueError(f"k-NN recall with k={k} needs more than {k} generated samples, got {len(gen)}")
    real, gen = real.astype(np.float64), gen.astype(np.float64)
    d_rg = linalg.norm(real[:, None, :] - gen[None, :, :], axis=-1)  # (N, M)
    d_gg = linalg.norm(gen[:, None, :] - gen[None, :, :], axis=-1)  # (M, M), diagonal = self
    kth_rg = np.sort(d_rg, axis=1)[:, k - 1]
    kth_gg = np.sort(d_gg, axis=1)[:, k]  # column 0 is the sample itself
    tau = float(np.median(kth_gg))
    return float(np.mean(kth_rg <= tau))


# --- classification ---------------------------------------------------------------------------------------------

def classification_scores(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """Macro-F1 of the arg-max prediction, one-vs-rest macro AUC of the probabilities, and accuracy."""
    y_true = np.asarray(y_true)
    if proba.shape != (len(y_true), n_classes):
        raise ValueError(f"expected probabilities of shape ({len(y_true)}, {n_classes}), got {proba.shape}")
    pred = proba.argmax(1)
    labels = list(range(n_classes))
    f1 = f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)
    if len(np.unique(y_true)) == n_classes:
        auc = roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels)
    else:
        auc = float("nan")  # one-vs-rest AUC is undefined when a class is absent from the test set
    return {"f1_macro": float(f1), "auc_ovr": float(auc), "accuracy": float(accuracy_score(y_true, pred))}
