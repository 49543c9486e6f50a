"""FID, k-NN recall, improved precision / recall, density / coverage and Inception Score: against direct scipy /
scikit-learn computations and small cases worked by hand."""
import numpy as np
import pytest
from scipy import linalg
from sklearn.neighbors import NearestNeighbors

from pipeline_lib.metrics import (density_coverage, fid_from_features, frechet_distance, inception_score,
                                  knn_recall, precision_recall)


def _direct_fid(a, b):
    """The textbook formula with scipy's sqrtm of the product (what the reference implementations compute)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_equals_a_direct_scipy_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16))
    b = rng.normal(loc=0.3, scale=1.2, size=(300, 16)) @ rng.normal(scale=0.5, size=(16, 16))
    assert fid_from_features(a, b) == pytest.approx(_direct_fid(a, b), rel=1e-6)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_one_dimensional_case_by_hand():
    # N(1, 2^2) and N(4, 3^2): (1 - 4)^2 + 2^2 + 3^2 - 2 * 2 * 3 = 9 + 1 = 10
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([4.0]), np.array([[9.0]]))
    assert d == pytest.approx(10.0, rel=1e-12)
    # Diagonal covariances: sum over dimensions of the 1-D terms.
    d = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.ones(2), np.diag([4.0, 16.0]))
    assert d == pytest.approx(2 + (1 - 2) ** 2 + (2 - 4) ** 2, rel=1e-12)


def test_frechet_distance_is_stable_for_singular_covariances():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 32))  # fewer samples than dimensions: rank-deficient covariances
    b = rng.normal(size=(12, 32))
    d = fid_from_features(a, b)
    assert np.isfinite(d) and d > 0
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fid_input_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"expected \(N, D\) and \(M, D\) features, got \(3, 2\) and \(3, 4\)"):
        fid_from_features(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 2 samples per set, got 1 and 3"):
        fid_from_features(np.zeros((1, 2)), np.zeros((3, 2)))


def test_knn_recall_on_constructed_sets():
    # Generated 0, 1, 2, 3, 4 with k = 1: every nearest-other distance is 1, tau = 1. Real 0.5, 2.2, 10: nearest
    # generated at 0.5, 0.2 and 6, so two of three are recalled.
    fake = np.arange(5.0)[:, None]
    assert knn_recall(np.array([[0.5], [2.2], [10.0]]), fake, k=1) == pytest.approx(2 / 3)
    # k = 2: second nearest others are 2, 1, 1, 1, 2 -> tau = 1; real 0.5 has generated 0 and 1 at 0.5: recalled,
    # real 4.6 has 4 at 0.6 and 3 at 1.6: not.
    assert knn_recall(np.array([[0.5], [4.6]]), fake, k=2) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(200, 2))
    assert knn_recall(rng.normal(size=(100, 2)) * 0.5 + 50.0, cloud, k=5) == 0.0  # nowhere near it


def test_knn_recall_matches_scikit_learn_neighbours_and_chunking():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(150, 4)), rng.normal(scale=1.3, size=(120, 4))
    k = 10
    d_rg = NearestNeighbors(n_neighbors=k).fit(fake).kneighbors(real)[0][:, -1]
    tau = np.median(NearestNeighbors(n_neighbors=k + 1).fit(fake).kneighbors(fake)[0][:, -1])
    expected = float(np.mean(d_rg <= tau))
    assert knn_recall(real, fake, k=k) == pytest.approx(expected)
    assert knn_recall(real, fake, k=k, chunk=7) == pytest.approx(expected)


def test_precision_recall_by_hand():
    # Real points on a line 0, 1, 2, 3 with k = 1: every radius is 1, so the real manifold is [-1, 4].
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [3.9], [10.0], [-2.0]])  # two inside, two outside
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(0.5)
    # Fake radii (k = 1): 0.5 -> 2.5, 3.9 -> 3.4, 10 -> 6.1, -2 -> 2.5; every real point is within one of them.
    assert recall == pytest.approx(1.0)


def test_precision_recall_and_density_coverage_against_scikit_learn():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(80, 3)), rng.normal(loc=0.5, size=(60, 3))
    k = 3
    r_real = NearestNeighbors(n_neighbors=k + 1).fit(real).kneighbors(real)[0][:, -1]
    r_fake = NearestNeighbors(n_neighbors=k + 1).fit(fake).kneighbors(fake)[0][:, -1]
    d = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # (80, 60)
    precision, recall = precision_recall(real, fake, k=k, chunk=13)
    assert precision == pytest.approx(np.mean((d <= r_real[:, None]).any(0)))
    assert recall == pytest.approx(np.mean((d <= r_fake[None, :]).any(1)))
    density, coverage = density_coverage(real, fake, k=k, chunk=13)
    assert density == pytest.approx((d <= r_real[:, None]).sum() / (k * len(fake)))
    assert coverage == pytest.approx(np.mean((d <= r_real[:, None]).any(1)))


def test_density_and_coverage_of_identical_sets():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 2))
    density, coverage = density_coverage(x, x.copy(), k=5)
    assert coverage == 1.0 and density > 0.9  # each point lies in its own ball and about k others


def test_inception_score_on_constructed_classifier_outputs():
    eye = np.eye(4)
    confident_balanced = np.repeat(eye, 25, axis=0)  # sure of each sample, all classes equally often
    mean, std = inception_score(confident_balanced, splits=1)
    assert mean == pytest.approx(4.0) and std == 0.0
    assert inception_score(np.full((40, 4), 0.25))[0] == pytest.approx(1.0)  # no confidence at all
    assert inception_score(np.tile(eye[:1], (40, 1)))[0] == pytest.approx(1.0)  # one class only
    # Two classes, p(y|x) = (0.9, 0.1) for half and (0.1, 0.9) for the other half: p(y) = (0.5, 0.5),
    # KL = 0.9 ln 1.8 + 0.1 ln 0.2 for every sample.
    p = np.array([[0.9, 0.1]] * 10 + [[0.1, 0.9]] * 10)
    assert inception_score(p)[0] == pytest.approx(np.exp(0.9 * np.log(1.8) + 0.1 * np.log(0.2)))
    mean, std = inception_score(np.repeat(eye, 25, axis=0)[np.random.default_rng(0).permutation(100)], splits=4)
    assert 1.0 < mean <= 4.0 and std >= 0.0
    with pytest.raises(ValueError, match="rows must be probabilities"):
        inception_score(np.array([[0.5, 0.6]]))
