"""Cluster validity indices of section 4.2 of the cLDM paper, as pure functions ``(X (n, d), labels (n,)) -> float``.

Euclidean distances. No n x n matrix is held: pairwise distances are computed in blocks of at most
``BLOCK`` x ``BLOCK`` pairs (memory O(BLOCK^2)), and the C-index's sums of the N_w smallest and largest of all
n (n - 1) / 2 distances are found exactly by histogram selection over repeated block passes instead of sorting
every pair.

- Calinski-Harabasz: [SSB / (k - 1)] / [SSW / (n - k)] (larger is better).
- Dunn: the smallest distance between points of different clusters over the largest intra-cluster diameter
  (larger is better).
- C-index: (S - S_min) / (S_max - S_min), S the sum of the N_w within-cluster distances, S_min and S_max the
  sums of the N_w smallest and the N_w largest distances over all pairs (smaller is better).
- Hartigan: log(SSB / SSW) (larger is better). R's NbClust computes another index under this name, comparing
  k with k + 1 clusterings: ``hartigan_nbclust``.
- McClain-Rao: mean within-cluster distance / mean between-cluster distance (smaller is better).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

BLOCK = 2048  # rows and columns of one block of pairwise distances (32 MiB in float64)
BINS = 4096  # histogram bins per selection pass


def _check(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, labels = np.asarray(X, dtype=np.float64), np.asarray(labels)
    if X.ndim != 2 or labels.shape != (X.shape[0],):
        raise ValueError(f"expected X of shape (n, d) and labels of shape (n,), got {X.shape} and {labels.shape}")
    ids, codes = np.unique(labels, return_inverse=True)
    if not 2 <= len(ids) <= len(X) - 1:
        raise ValueError(f"cluster indices need 2 <= k <= n - 1 clusters, got k = {len(ids)} for n = {len(X)}")
    return X, codes, np.bincount(codes)


def _blocks(X: np.ndarray, codes: np.ndarray, block: int = BLOCK
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every unordered pair i < j once: (distances, same-cluster flags), as flat arrays per block."""
    sq = np.einsum("ij,ij->i", X, X)
    n = len(X)
    for a in range(0, n, block):
        xa, ca, sa = X[a:a + block], codes[a:a + block], sq[a:a + block]
        for b in range(a, n, block):
            xb, cb, sb = X[b:b + block], codes[b:b + block], sq[b:b + block]
            d2 = sa[:, None] + sb[None, :] - 2.0 * (xa @ xb.T)
            d = np.sqrt(np.maximum(d2, 0.0))
            same = ca[:, None] == cb[None, :]
            if a == b:  # the diagonal block: upper triangle only
                iu = np.triu_indices(len(xa), k=1)
                yield d[iu], same[iu]
            else:
                yield d.ravel(), same.ravel()


def _scatter(X: np.ndarray, codes: np.ndarray, sizes: np.ndarray) -> tuple[float, float]:
    """Between- and within-cluster sums of squares SSB, SSW."""
    centroids = np.stack([X[codes == c].mean(0) for c in range(len(sizes))])
    ssw = float(((X - centroids[codes]) ** 2).sum())
    ssb = float((sizes * ((centroids - X.mean(0)) ** 2).sum(1)).sum())
    return ssb, ssw


def calinski_harabasz(X: np.ndarray, labels: np.ndarray) -> float:
    X, codes, sizes = _check(X, labels)
    ssb, ssw = _scatter(X, codes, sizes)
    k, n = len(sizes), len(X)
    return float("inf") if ssw == 0 else ssb / (k - 1) / (ssw / (n - k))


def hartigan(X: np.ndarray, labels: np.ndarray) -> float:
    X, codes, sizes = _check(X, labels)
    ssb, ssw = _scatter(X, codes, sizes)
    return float("inf") if ssw == 0 else float(np.log(ssb / ssw))


def hartigan_nbclust(X: np.ndarray, labels_k: np.ndarray, labels_k1: np.ndarray) -> float:
    """NbClust's Hartigan: (SSW_k / SSW_{k+1} - 1) (n - k - 1), comparing a k- and a (k+1)-cluster partition
    (Hartigan 1975; NbClust picks the k with the largest difference of consecutive values)."""
    X, codes, sizes = _check(X, labels_k)
    _, codes1, sizes1 = _check(X, labels_k1)
    if len(sizes1) != len(sizes) + 1:
        raise ValueError(f"expected partitions into k and k + 1 clusters, got {len(sizes)} and {len(sizes1)}")
    ssw_k, ssw_k1 = _scatter(X, codes, sizes)[1], _scatter(X, codes1, sizes1)[1]
    return float((ssw_k / ssw_k1 - 1.0) * (len(X) - len(sizes) - 1))


def mcclain_rao(X: np.ndarray, labels: np.ndarray) -> float:
    X, codes, sizes = _check(X, labels)
    s_w = s_b = 0.0
    for d, same in _blocks(X, codes):
        s_w += float(d[same].sum())
        s_b += float(d[~same].sum())
    n_w = int((sizes * (sizes - 1) // 2).sum())
    n_b = len(X) * (len(X) - 1) // 2 - n_w
    if n_w == 0:
        raise ValueError("McClain-Rao needs a cluster with at least two points")
    return (s_w / n_w) / (s_b / n_b)


def dunn(X: np.ndarray, labels: np.ndarray) -> float:
    X, codes, sizes = _check(X, labels)
    min_between, max_diameter = np.inf, 0.0
    for d, same in _blocks(X, codes):
        if (~same).any():
            min_between = min(min_between, float(d[~same].min()))
        if same.any():
            max_diameter = max(max_diameter, float(d[same].max()))
    return float("inf") if max_diameter == 0 else min_between / max_diameter


def _kth_smallest(passes: Callable[[], Iterator[np.ndarray]], ks: Sequence[int], lo: float, hi: float
                  ) -> list[float]:
    """The exact k-th smallest (1-based) of the values streamed by ``passes()`` (all in [lo, hi)), for every k
    in ``ks`` at once.

    Each pass histograms, per k, the values of its current range [lo, hi) into ``BINS`` bins and narrows the
    range to the bin holding the k-th value (counting the values below it), until the range holds at most
    ``BLOCK``^2 values, which are then collected and sorted: a few passes, never all pairs in memory."""
    todo = [{"k": k, "lo": lo, "hi": hi, "below": 0} for k in ks]
    found: dict[int, float] = {}
    while todo:
        edges = [np.linspace(t["lo"], t["hi"], BINS + 1) for t in todo]
        counts = [np.zeros(BINS, dtype=np.int64) for _ in todo]
        for v in passes():
            for t, e, c in zip(todo, edges, counts):
                w = v[(v >= t["lo"]) & (v < t["hi"])]
                c += np.bincount(np.searchsorted(e, w, side="right") - 1, minlength=BINS)[:BINS]
        collect = []
        for t, e, c in zip(todo, edges, counts):
            if c.sum() <= BLOCK * BLOCK or np.nextafter(t["lo"], np.inf) >= t["hi"]:
                collect.append(t)
                continue
            cum = np.cumsum(c)
            j = int(np.searchsorted(cum, t["k"] - t["below"]))  # the bin where the k-th value lies
            t["below"] += int(cum[j - 1]) if j > 0 else 0
            t["lo"], t["hi"] = float(e[j]), float(e[j + 1])
        if collect:
            parts: list[list[np.ndarray]] = [[] for _ in collect]
            for v in passes():
                for t, part in zip(collect, parts):
                    part.append(v[(v >= t["lo"]) & (v < t["hi"])])
            for t, part in zip(collect, parts):
                found[t["k"]] = float(np.sort(np.concatenate(part))[t["k"] - t["below"] - 1])
        todo = [t for t in todo if t["k"] not in found]
    return [found[k] for k in ks]


def _sums_beyond(passes: Callable[[], Iterator[np.ndarray]], low: float, high: float) -> tuple[float, int, float, int]:
    """Sum and count of the values < low and of the values > high, in one pass."""
    s_lo = s_hi = 0.0
    n_lo = n_hi = 0
    for v in passes():
        below, above = v[v < low], v[v > high]
        s_lo, n_lo = s_lo + float(below.sum()), n_lo + len(below)
        s_hi, n_hi = s_hi + float(above.sum()), n_hi + len(above)
    return s_lo, n_lo, s_hi, n_hi


def c_index(X: np.ndarray, labels: np.ndarray) -> float:
    X, codes, sizes = _check(X, labels)
    n_w = int((sizes * (sizes - 1) // 2).sum())
    if n_w == 0:
        raise ValueError("the C-index needs a cluster with at least two points")
    s_w, d_min, d_max = 0.0, np.inf, 0.0
    for d, same in _blocks(X, codes):
        s_w += float(d[same].sum())
        if len(d):
            d_min, d_max = min(d_min, float(d.min())), max(d_max, float(d.max()))

    def passes():
        return (d for d, _ in _blocks(X, codes))

    n_t = len(X) * (len(X) - 1) // 2
    top = float(np.nextafter(d_max, np.inf))
    # the N_w-th smallest and the N_w-th largest distance
    t_min, t_max = _kth_smallest(passes, [n_w, n_t - n_w + 1], d_min, top)
    s_lo, n_lo, s_hi, n_hi = _sums_beyond(passes, t_min, t_max)
    s_min = s_lo + (n_w - n_lo) * t_min  # ties at the threshold make up the rest
    s_max = s_hi + (n_w - n_hi) * t_max
    return 0.0 if s_max == s_min else (s_w - s_min) / (s_max - s_min)
