"""Metrics against independent implementations (scikit-image, scipy, scikit-learn) and hand-worked cases."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

from pipeline_lib.metrics import (MS_SSIM_WEIGHTS, average_ranks, binary_auc, classification_scores, f1_per_class,
                                  knn_recall, ms_ssim, ms_ssim_scales, mse, per_class_scores, psnr, roc_points, ssim)


@pytest.fixture
def image_pair():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (2, 3, 32, 32))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), -1, 1)
    return a, b


def test_ssim_matches_skimage(image_pair):
    a, b = image_pair
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = [structural_similarity(x, y, channel_axis=0, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_ssim_hand_cases():
    x = torch.rand(1, 3, 16, 16)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    # Two constant images: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), the structure term is 1.
    c1 = (0.01 * 2.0) ** 2
    s = ssim(torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), -0.5)).item()
    assert s == pytest.approx((2 * 0.5 * -0.5 + c1) / (0.25 + 0.25 + c1), abs=1e-6)


def test_ssim_rejects_small_and_mismatched():
    with pytest.raises(ValueError, match="at least 11 px"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))


def _smooth_pair(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random image and a noisy copy in [-1, 1], float64 (structure at every scale)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.interpolate(torch.rand(2, 3, size // 8, size // 8, generator=g, dtype=torch.float64),
                                        size=(size, size), mode="bilinear", align_corners=False) * 2 - 1
    b = (a + 0.15 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return a, b


@pytest.mark.parametrize("size", [64, 192])
def test_ms_ssim_matches_torchmetrics_and_skimage(size):
    """The contrast-structure scales against torchmetrics (last weight 0), the coarsest-scale SSIM against
    scikit-image on ``downscale_local_mean`` images: together an independent MS-SSIM, equal within 1e-6.
    torchmetrics averages its last-scale SSIM over the reflect-padded full image rather than the pixels the
    window covers (Wang's reference), so its full MS-SSIM differs from ours by that border term only (< 0.01)."""
    from skimage.transform import downscale_local_mean
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim

    a, b = _smooth_pair(size)
    n = ms_ssim_scales(size)
    assert n == {64: 3, 192: 5}[size]
    w = torch.tensor(MS_SSIM_WEIGHTS[:n], dtype=torch.float64)
    w = (w / w.sum()).tolist()
    cs_part = tm_ms_ssim(a, b, data_range=2.0, kernel_size=11, sigma=1.5, betas=tuple(w[:-1]) + (0.0,),
                         normalize="relu", reduction="none").numpy()
    f = 2 ** (n - 1)
    coarse = [structural_similarity(downscale_local_mean(x, (1, f, f)), downscale_local_mean(y, (1, f, f)),
                                    channel_axis=0, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False) for x, y in zip(a.numpy(), b.numpy())]
    ref = cs_part * np.maximum(coarse, 0) ** w[-1]
    ours = ms_ssim(a, b).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    tm_full = tm_ms_ssim(a, b, data_range=2.0, betas=tuple(w), normalize="relu", reduction="none").numpy()
    np.testing.assert_allclose(ours, tm_full, rtol=0, atol=1e-2)


def test_ms_ssim_hand_cases():
    a, _ = _smooth_pair(64)
    np.testing.assert_allclose(ms_ssim(a, a).numpy(), 1.0, atol=1e-9)
    # One scale (11-21 px): MS-SSIM is SSIM itself.
    x, y = _smooth_pair(16)
    assert ms_ssim_scales(16) == 1 and ms_ssim_scales(43) == 2 and ms_ssim_scales(44) == 3
    np.testing.assert_allclose(ms_ssim(x, y).numpy(), ssim(x, y).numpy(), atol=1e-12)
    # Two constant images: cs = 1 at every scale, so MS-SSIM = l^w_M with l = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1).
    c1 = (0.01 * 2.0) ** 2
    lum = (2 * 0.5 * 0.3 + c1) / (0.25 + 0.09 + c1)
    v = ms_ssim(torch.full((1, 1, 32, 32), 0.5), torch.full((1, 1, 32, 32), 0.3), weights=(0.5, 0.5)).item()
    assert v == pytest.approx(lum**0.5, abs=1e-6)
    with pytest.raises(ValueError, match="MS-SSIM with 3 scales needs images of at least 44 px"):
        ms_ssim(x, y, weights=(0.2, 0.3, 0.5))
    with pytest.raises(ValueError, match="at least 11 px"):
        ms_ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_psnr_mse_match_skimage(image_pair):
    a, b = image_pair
    ours = psnr(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = [peak_signal_noise_ratio(x, y, data_range=2.0) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    # Hand case: every pixel off by 0.1 -> MSE 0.01, PSNR = 10 log10(4 / 0.01) = 26.0206 dB.
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    assert mse(x, x + 0.1).item() == pytest.approx(0.01)
    assert psnr(x, x + 0.1).item() == pytest.approx(10 * np.log10(400), abs=1e-9)


def _recall_sklearn(real, gen, k):
    nn = NearestNeighbors(n_neighbors=k + 1).fit(gen)
    tau = np.median(nn.kneighbors(gen)[0][:, k])
    kth = NearestNeighbors(n_neighbors=k).fit(gen).kneighbors(real)[0][:, k - 1]
    return np.mean(kth <= tau)


def test_knn_recall_matches_sklearn():
    rng = np.random.default_rng(3)
    real, gen = rng.normal(size=(120, 6)), rng.normal(size=(150, 6)) * 0.7 + 0.2
    assert knn_recall(real, gen, k=10) == pytest.approx(_recall_sklearn(real, gen, 10), abs=1e-12)


def test_knn_recall_hand_case():
    # Generated points 0, 1, 2, 3 on a line, k = 1: each one's nearest other point is 1 away, tau = 1.
    gen = np.array([[0.0], [1.0], [2.0], [3.0]])
    # Real points: 0.5 (nearest 0.5 <= 1), 2.9 (0.1), 4.5 (1.5 > 1), -2 (2 > 1) -> recall 2 / 4.
    real = np.array([[0.5], [2.9], [4.5], [-2.0]])
    assert knn_recall(real, gen, k=1) == pytest.approx(0.5)
    # k = 2: tau = median(2, 1, 1, 2) = 1.5; 2nd-nearest: 0.5 -> 0.5 (ok), 2.9 -> 0.9 (ok), 4.5 -> 2.5, -2 -> 3.
    assert knn_recall(real, gen, k=2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="more than 4 generated samples"):
        knn_recall(real, gen, k=4)


def test_classification_scores_against_sklearn_and_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[.8, .1, .1], [.3, .6, .1], [.2, .7, .1], [.1, .8, .1], [.1, .2, .7], [.5, .1, .4]])
    s = classification_scores(y, proba, 3)
    pred = proba.argmax(1)  # [0, 1, 1, 1, 2, 0]
    assert s["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    # By hand: class 0 P=1/2 R=1/2 F1=1/2; class 1 P=2/3 R=1 F1=4/5; class 2 P=1 R=1/2 F1=2/3.
    assert s["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert s["auc_ovr"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    assert s["accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match=r"expected probabilities of shape \(6, 4\)"):
        classification_scores(y, proba, 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_auc_and_roc_equal_sklearn_on_random_and_tied_scores(seed):
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    n, c = 200, 4
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    if seed == 2:
        logits = np.round(logits)  # many tied scores
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = proba.argmax(1)
    assert np.allclose(f1_per_class(y, pred, c), f1_score(y, pred, labels=range(c), average=None, zero_division=0))
    s = classification_scores(y, proba, c)
    assert s["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert s["auc_ovr"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-12)
    for k, row in enumerate(per_class_scores(y, proba, c)):
        fpr, tpr, thr = roc_curve(y == k, proba[:, k], drop_intermediate=False)
        assert np.allclose(row["fpr"], fpr) and np.allclose(row["tpr"], tpr)
        assert row["auc"] == pytest.approx(roc_auc_score(y == k, proba[:, k]), abs=1e-12)
    assert np.array_equal(roc_points(y == 0, proba[:, 0])[2][1:], roc_curve(y == 0, proba[:, 0],
                                                                           drop_intermediate=False)[2][1:])


def test_average_ranks_match_scipy_and_a_hand_case():
    from scipy.stats import rankdata

    assert average_ranks(np.array([0.9, 0.8, 0.8, 0.1])).tolist() == [4.0, 2.5, 2.5, 1.0]
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 500):
        for x in (rng.integers(0, 4, n).astype(float), rng.normal(size=n)):  # many ties, no ties
            assert np.array_equal(average_ranks(x), rankdata(x))


def test_auc_and_roc_by_hand_and_undefined_cases():
    # Scores 0.9 (+), 0.8 (-), 0.8 (+), 0.1 (-): pairs (+, -) ordered right 3 of 4, one tie -> (3 + 0.5) / 4.
    pos, score = np.array([1, 0, 1, 0], bool), np.array([0.9, 0.8, 0.8, 0.1])
    assert binary_auc(pos, score) == pytest.approx(3.5 / 4)
    fpr, tpr, thr = roc_points(pos, score)
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1] and thr.tolist() == [np.inf, 0.9, 0.8, 0.1]
    assert np.isnan(binary_auc(np.ones(3, bool), np.arange(3.0)))
    # F1 by hand: no sample of class 2 and none predicted -> 0, as scikit-learn's zero_division=0.
    assert f1_per_class(np.array([0, 1, 1]), np.array([0, 1, 0]), 3).tolist() == pytest.approx([2 / 3, 2 / 3, 0])
