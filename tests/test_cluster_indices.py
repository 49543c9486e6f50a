"""Cluster validity indices against scikit-learn, brute force over scipy's pdist, and cases worked by hand."""
import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from sklearn.metrics import calinski_harabasz_score

from pipeline_lib.cluster import indices
from pipeline_lib.cluster.indices import c_index, calinski_harabasz, dunn, hartigan, hartigan_nbclust, mcclain_rao

X4 = np.array([[0.0], [1.0], [10.0], [11.0]])
L4 = np.array([0, 0, 1, 1])


def test_hand_case_four_points():
    # distances: within 1, 1; between 10, 11, 9, 10. Sorted: 1 1 9 10 10 11.
    assert c_index(X4, L4) == pytest.approx((2 - 2) / (21 - 2))
    assert dunn(X4, L4) == pytest.approx(9.0)
    assert mcclain_rao(X4, L4) == pytest.approx(1.0 / 10.0)
    # centroids 0.5 and 10.5, grand mean 5.5: SSB = 4 * 25 = 100, SSW = 4 * 0.25 = 1
    assert hartigan(X4, L4) == pytest.approx(np.log(100.0))
    assert calinski_harabasz(X4, L4) == pytest.approx((100 / 1) / (1 / 2))
    # A worse partition, {0, 10} and {1, 11}: within distances 10 and 10, S = 20; S_min = 1 + 1, S_max = 11 + 10.
    bad = np.array([0, 1, 0, 1])
    assert c_index(X4, bad) == pytest.approx((20 - 2) / (21 - 2))


def test_calinski_harabasz_matches_sklearn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)) + np.repeat(rng.normal(scale=3, size=(3, 5)), 100, axis=0)
    labels = np.repeat([0, 1, 2], 100)
    assert calinski_harabasz(X, labels) == pytest.approx(calinski_harabasz_score(X, labels), rel=1e-10)


def _brute(X, labels):
    D = squareform(pdist(X))
    iu = np.triu_indices(len(X), 1)
    d, same = D[iu], (labels[:, None] == labels[None, :])[iu]
    n_w = int(same.sum())
    s = np.sort(d)
    c = (d[same].sum() - s[:n_w].sum()) / (s[-n_w:].sum() - s[:n_w].sum())
    return {"c_index": c, "dunn": d[~same].min() / d[same].max(), "mcclain_rao": d[same].mean() / d[~same].mean()}


@pytest.mark.parametrize("integer_grid", [False, True])
def test_blockwise_indices_equal_brute_force(monkeypatch, integer_grid):
    """Small blocks and few histogram bins force many blocks and several selection rounds; an integer grid
    makes many equal distances (ties at the selection thresholds)."""
    monkeypatch.setattr(indices, "BLOCK", 16)
    monkeypatch.setattr(indices, "BINS", 8)
    rng = np.random.default_rng(1)
    X = rng.integers(0, 4, size=(230, 2)).astype(float) if integer_grid else rng.normal(size=(230, 6))
    labels = rng.integers(0, 4, size=230)
    ref = _brute(X, labels)
    assert c_index(X, labels) == pytest.approx(ref["c_index"], rel=1e-9, abs=1e-12)
    assert dunn(X, labels) == pytest.approx(ref["dunn"], rel=1e-9)
    assert mcclain_rao(X, labels) == pytest.approx(ref["mcclain_rao"], rel=1e-9)


def test_kth_smallest_is_exact_with_ties(monkeypatch):
    monkeypatch.setattr(indices, "BLOCK", 2)  # forces refinement: at most 4 values may be sorted at once
    monkeypatch.setattr(indices, "BINS", 3)
    values = np.array([5.0, 1.0, 3.0, 3.0, 3.0, 2.0, 8.0, 3.0, 7.0, 0.5])

    def passes():
        return iter(np.array_split(values, 3))

    ks = list(range(1, len(values) + 1))
    assert indices._kth_smallest(passes, ks, 0.5, np.nextafter(8.0, 9)) == list(np.sort(values))


def test_nbclust_hartigan_by_hand():
    X = np.array([[0.0], [1.0], [10.0], [11.0], [30.0]])
    k2, k3 = np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2])
    ssw2 = 0.5 + (10**2 + 11**2 + 30**2 - 51**2 / 3)  # {0, 1}: 0.5; {10, 11, 30}
    ssw3 = 0.5 + 0.5
    assert hartigan_nbclust(X, k2, k3) == pytest.approx((ssw2 / ssw3 - 1) * (5 - 2 - 1))
    with pytest.raises(ValueError, match="expected partitions into k and k \\+ 1 clusters, got 2 and 2"):
        hartigan_nbclust(X, k2, k2)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"need 2 <= k <= n - 1 clusters, got k = 1 for n = 4"):
        dunn(X4, np.zeros(4))
    with pytest.raises(ValueError, match=r"expected X of shape \(n, d\) and labels of shape \(n,\)"):
        c_index(X4, np.zeros(3))
