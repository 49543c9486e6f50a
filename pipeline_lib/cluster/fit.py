"""Clustering the autoencoder's latents for a range of k (section 3.5 and 4.2 of the cLDM paper), the validity
indices of each partition, and the choice of k.

- Features: the autoencoder's posterior-mean (KL) or pre-quantisation (VQ) latents of the training images,
  flattened or average-pooled to ``pool_size`` x ``pool_size``, optionally standardised per feature.
- k-means (scikit-learn, ``n_init`` restarts) and information-maximising clustering (IMSAT, Hu et al. 2017,
  the method of the paper): a small network p(y | x) trained to maximise the mutual information
  H(Y) - H(Y | X) (the marginal entropy keeps clusters balanced, the conditional entropy makes each
  assignment confident) with a self-augmentation term, KL(p(y | x) || p(y | T(x))) for a random perturbation
  T(x) = x + noise * std(x) * eps (the latent vectors are not images, so rotations and crops do not apply):
  loss = R_sat - lambda (mu H(Y) - H(Y | X)), mu weighting the marginal entropy (4 in Hu et al.'s setting; with
  the weight on the conditional entropy instead, training collapses into one cluster).
- Selection: each index's best k (largest Calinski-Harabasz, Dunn, Hartigan; smallest C and McClain-Rao) and a
  majority vote over the five; a tie in votes goes to the smaller k (the more parsimonious partition).
- ``hartigan: nbclust`` replaces the paper's log(SSB / SSW) by R NbClust's Hartigan index,
  H(k) = (SSW_k / SSW_{k+1} - 1)(n - k - 1) (the k + 1 partitions are fitted for it), chosen as NbClust does:
  the k with the largest drop H(k_prev) - H(k) from the previous k tried.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.cluster import KMeans

from ..autoencoder import encode_latents, load_autoencoder
from ..io import log, write_parquet
from ..torchutils import load_images, select_device, set_threads
from .indices import c_index, calinski_harabasz, dunn, hartigan, hartigan_nbclust, mcclain_rao

INDICES = {"calinski_harabasz": (calinski_harabasz, "max"), "c_index": (c_index, "min"), "dunn": (dunn, "max"),
           "hartigan": (hartigan, "max"), "mcclain_rao": (mcclain_rao, "min")}
METHODS = ("kmeans", "imsat")


def latent_features(latents: torch.Tensor, pooling: str, pool_size: int, standardize: bool) -> np.ndarray:
    """(N, C, h, w) latents -> (N, D) features: ``flatten``, or ``avg`` pooled to pool_size x pool_size."""
    if pooling == "avg":
        latents = F.adaptive_avg_pool2d(latents, pool_size)
    elif pooling != "flatten":
        raise ValueError(f"cluster.features.pooling must be 'avg' or 'flatten', got {pooling!r}")
    x = latents.flatten(1).double().cpu().numpy()
    if standardize:
        x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    return x


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def imsat(x: np.ndarray, k: int, params: Mapping[str, Any], seed: int) -> np.ndarray:
    """IMSAT cluster assignments (N,) of features ``x`` (N, D); deterministic for a seed on the CPU."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = torch.from_numpy(x).float()
    std = data.std(0, keepdim=True)
    hidden = int(params["hidden"])
    net = nn.Sequential(nn.Linear(data.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                        nn.Linear(hidden, k))
    opt = torch.optim.Adam(net.parameters(), lr=float(params["lr"]))
    lam, mu, noise, bs = float(params["lambda"]), float(params["mu"]), float(params["noise"]), int(params["batch_size"])
    for _ in range(int(params["epochs"])):
        perm = torch.randperm(len(data), generator=g)
        for i in range(0, len(data), bs):
            xb = data[perm[i:i + bs]]
            p = F.softmax(net(xb), 1)
            p_aug = F.log_softmax(net(xb + noise * std * torch.randn(xb.shape, generator=g)), 1)
            r_sat = F.kl_div(p_aug, p.detach(), reduction="batchmean")  # KL(p(y|x) || p(y|T(x)))
            h_y, h_y_x = _entropy(p.mean(0)), _entropy(p).mean()
            loss = r_sat - lam * (mu * h_y - h_y_x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return net(data).argmax(1).numpy()


def fit_partition(x: np.ndarray, k: int, method: str, params: Mapping[str, Any], seed: int) -> np.ndarray:
    if method == "kmeans":
        return KMeans(n_clusters=k, n_init=int(params["kmeans_n_init"]), random_state=seed).fit_predict(x)
    if method == "imsat":
        return imsat(x, k, params["imsat"], seed)
    raise ValueError(f"cluster method must be one of {METHODS}, got {method!r}")


def index_table(x: np.ndarray, labels: np.ndarray, method: str, k: int,
                labels_next: np.ndarray | None = None) -> list[dict]:
    """One row per index (the long form of the paper's Table 3); NaN where the partition has fewer than 2
    non-empty clusters (IMSAT may leave clusters empty). With ``labels_next`` (the k + 1 partition) the Hartigan
    row is NbClust's ``hartigan_nbclust`` instead of the paper's log(SSB / SSW)."""
    used = len(np.unique(labels))
    ok = 2 <= used <= len(x) - 1
    rows = []
    for name, (fn, _) in INDICES.items():
        if name == "hartigan" and labels_next is not None:
            valid = ok and len(np.unique(labels_next)) == used + 1
            value = hartigan_nbclust(x, labels, labels_next) if valid else float("nan")
            name = "hartigan_nbclust"
        else:
            value = fn(x, labels) if ok else float("nan")
        rows.append({"method": method, "k": k, "clusters_used": used, "index": name, "value": float(value)})
    return rows


def select_k(table: pd.DataFrame) -> pd.DataFrame:
    """Each index's best k per method and the majority vote (ties: the smaller k)."""
    rows = []
    for method, part in table.groupby("method", sort=False):
        votes = []
        for name in part["index"].unique():
            vals = part[part["index"] == name].dropna(subset=["value"]).sort_values("k")
            if name == "hartigan_nbclust":  # NbClust: the largest drop from the previous k
                better = "largest drop from the previous k"
                vals = vals.assign(value=vals["value"].shift(1) - vals["value"]).dropna(subset=["value"])
            else:
                better = INDICES[name][1]
            if vals.empty:
                continue
            best = vals.loc[vals["value"].idxmin() if better == "min" else vals["value"].idxmax()]
            votes.append(int(best["k"]))
            rows.append({"method": method, "index": name, "rule": better, "best_k": int(best["k"]),
                         "value": float(best["value"])})
        if not votes:
            log.warning("%s: no partition with at least two clusters; no k selected", method)
            continue
        counts = pd.Series(votes).value_counts()
        top = counts[counts == counts.max()].index
        rows.append({"method": method, "index": "majority", "rule": "most votes, ties to the smaller k",
                     "best_k": int(min(top)), "value": float(counts.max())})
    return pd.DataFrame(rows)


def cluster_stage(manifest: str | Path, ae_dir: str | Path, indices_out: str | Path, selection_out: str | Path,
                  assignments_out: str | Path, params: Mapping[str, Any], threads: int | None = None) -> pd.DataFrame:
    """Entry point of the cluster rule: features, partitions for every (method, k), indices, selection."""
    set_threads(threads)
    device = select_device(params["device"])
    x_img, y, rows = load_images(manifest, params["splits"], list(params["classes"]))
    ae = load_autoencoder(ae_dir, device)
    latents, _ = encode_latents(ae, x_img, device)
    f = params["features"]
    x = latent_features(latents, f["pooling"], int(f["pool_size"]), bool(f["standardize"]))
    log.info("cluster features: %d images x %d (%s pooling%s)", *x.shape, f["pooling"],
             ", standardised" if f["standardize"] else "")
    table, assignments = [], []
    nbclust = params.get("hartigan", "paper") == "nbclust"
    for method in params["methods"]:
        ks = sorted(int(k) for k in params["k_values"])
        fits = {k: fit_partition(x, k, method, params, int(params["seed"]))
                for k in sorted(set(ks) | ({k + 1 for k in ks} if nbclust else set()))}
        for k in ks:
            labels = fits[k]
            table += index_table(x, labels, method, k, fits[k + 1] if nbclust else None)
            assignments.append(pd.DataFrame({"image_id": rows["image_id"], "method": method, "k": k,
                                             "cluster": labels}))
            log.info("%s k=%d: %s", method, k, {r["index"]: round(r["value"], 4) for r in table[-len(INDICES):]})
    table = pd.DataFrame(table)
    selection = select_k(table)
    log.info("selection:\n%s", selection.to_string(index=False))
    write_parquet(table, indices_out)
    write_parquet(selection, selection_out)
    write_parquet(pd.concat(assignments, ignore_index=True), assignments_out)
    return selection
