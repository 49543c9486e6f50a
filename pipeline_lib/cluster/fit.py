"""Clustering the autoencoder's latents for a range of k (section 3.5 and 4.2 of the cLDM paper), the validity
indices of each partition, and the choice of k.

- Features: the autoencoder's posterior-mean (KL) or pre-quantisation (VQ) latents of the training images,
  flattened or average-pooled to ``pool_size`` x ``pool_size``, optionally standardised per feature.
- k-means (scikit-learn, ``n_init`` restarts) and information-maximising clustering (IMSAT, Hu et al. 2017,
  the method of the paper): a small network p(y | x) trained to maximise the mutual information
  H(Y) - H(Y | X) (the marginal entropy keeps clusters balanced, the conditional entropy makes each
  assignment confident) with a self-augmentation term, KL(p(y | x) || p(y | T(x))), T a random perturbation:
  ``imsat.augmentation: image`` (the cLDM paper, section 3.5: "rotation, translation, and scaling"), the features
  of one of ``views`` randomly rotated, translated and scaled copies of the image, encoded by the autoencoder and
  pooled and standardised as the image's own; ``noise`` (the default, cheaper), T(x) = x + noise * std(x) * eps
  on the features themselves. loss = R_sat - lambda (mu H(Y) - H(Y | X)), mu weighting the marginal entropy (4 in
  Hu et al.'s setting; with the weight on the conditional entropy instead, training collapses into one cluster).
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
from ..io import atomic_path, log, write_parquet
from ..torchutils import load_images, select_device, set_threads
from .indices import c_index, calinski_harabasz, dunn, hartigan, hartigan_nbclust, mcclain_rao

INDICES = {"calinski_harabasz": (calinski_harabasz, "max"), "c_index": (c_index, "min"), "dunn": (dunn, "max"),
           "hartigan": (hartigan, "max"), "mcclain_rao": (mcclain_rao, "min")}
METHODS = ("kmeans", "imsat")


def pool_latents(latents: torch.Tensor, pooling: str, pool_size: int) -> torch.Tensor:
    """(N, C, h, w) latents -> (N, D) features in their dtype and device: ``flatten``, or ``avg`` pooled to
    pool_size x pool_size."""
    if pooling == "avg":
        latents = F.adaptive_avg_pool2d(latents, pool_size)
    elif pooling != "flatten":
        raise ValueError(f"cluster.features.pooling must be 'avg' or 'flatten', got {pooling!r}")
    return latents.flatten(1)


def pooled_features(latents: torch.Tensor, pooling: str, pool_size: int) -> np.ndarray:
    """``pool_latents`` as float64 NumPy features."""
    return pool_latents(latents, pooling, pool_size).double().cpu().numpy()


def feature_spec(pooling: str, pool_size: int, standardize: bool, mean: torch.Tensor, std: torch.Tensor) -> dict:
    """How ``FittedClusters`` makes features from latents: the pooling and the float64 standardisation."""
    return {"pooling": pooling, "pool_size": int(pool_size), "standardize": bool(standardize),
            "mean": mean.double().cpu(), "std": std.double().cpu()}


def imsat_state(net: nn.Module, k: int, in_dim: int, hidden: int) -> dict:
    """An IMSAT network as a partition of ``FittedClusters`` (``predict_partition`` rebuilds it; loaded onto
    the CPU)."""
    return {"method": "imsat", "k": k, "in_dim": in_dim, "hidden": hidden, "state_dict": net.state_dict()}


def standardisation(x: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std that standardise ``x`` (zeros and ones when ``standardize`` is off)."""
    if not standardize:
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    return x.mean(0), np.maximum(x.std(0), 1e-12)


def latent_features(latents: torch.Tensor, pooling: str, pool_size: int, standardize: bool) -> np.ndarray:
    """Pooled features, standardised over these latents when ``standardize``."""
    x = pooled_features(latents, pooling, pool_size)
    mean, std = standardisation(x, standardize)
    return (x - mean) / std


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def imsat_loss(logits: torch.Tensor, logits_augmented: torch.Tensor, lam: float, mu: float
               ) -> dict[str, torch.Tensor]:
    """IMSAT's loss on one batch (Hu et al. 2017, eq. 8 with the self-augmentation of eq. 4): ``loss`` = R_sat -
    lambda (mu H(Y) - H(Y | X)), R_sat (``transformation``) = KL(p(y | x) || p(y | T(x))) with p(y | x) held
    fixed, H(Y) (``marginal_entropy``) the entropy of the batch's mean assignment, H(Y | X)
    (``conditional_entropy``) the mean entropy of each assignment; logits (B, k) of x and of T(x)."""
    p = F.softmax(logits, 1)
    r_sat = F.kl_div(F.log_softmax(logits_augmented, 1), p.detach(), reduction="batchmean")
    h_y, h_y_x = _entropy(p.mean(0)), _entropy(p).mean()
    return {"loss": r_sat - lam * (mu * h_y - h_y_x), "transformation": r_sat, "marginal_entropy": h_y,
            "conditional_entropy": h_y_x}


def imsat_network(in_dim: int, hidden: int, k: int) -> nn.Sequential:
    """p(y | x) of IMSAT: two hidden ReLU layers, k logits."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, k))


def random_affine(images: torch.Tensor, rotation: float, translation: float, scaling: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Each image (N, C, H, W) rotated by a uniform angle in [-rotation, rotation] degrees, translated by up to
    ``translation`` of its side in x and y and scaled by a factor in [1 - scaling, 1 + scaling], about its centre
    (bilinear; the border reflected, as a tissue tile continues beyond its edge)."""
    u = torch.rand((len(images), 4), generator=generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1]
    return affine(images, u[:, 0] * float(rotation), 1 + u[:, 1] * float(scaling), u[:, 2:] * float(translation))


def affine(images: torch.Tensor, degrees: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) rotated by ``degrees`` (N,) (counter-clockwise as displayed, y pointing down), scaled
    by ``scale`` (N,) and moved by ``shift`` (N, 2) (x, y) in fractions of the side, about the centre."""
    angle = torch.deg2rad(degrees.double())
    scale, shift = scale.double(), shift.double() * 2  # affine_grid's coordinates span 2 per side
    # the grid maps each output pixel to where it is read from: the inverse rotation, scale and shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    tx = -(cos * shift[:, 0] - sin * shift[:, 1])
    ty = -(sin * shift[:, 0] + cos * shift[:, 1])
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def imsat(x: np.ndarray, k: int, params: Mapping[str, Any], seed: int, views: np.ndarray | None = None
          ) -> tuple[np.ndarray, nn.Sequential]:
    """IMSAT cluster assignments (N,) of features ``x`` (N, D) and the trained network that predicts them;
    deterministic for a seed on the CPU. ``views`` (V, N, D): the features of V transformed copies of each image,
    one drawn for each row of a batch as its T(x); without them T(x) is Gaussian noise on the features."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = torch.from_numpy(x).float()
    std = data.std(0, keepdim=True)
    augmented = None if views is None else torch.from_numpy(np.asarray(views)).float()
    if augmented is not None and augmented.shape[1:] != data.shape:
        raise ValueError(f"imsat: expected views of shape (V, {len(data)}, {data.shape[1]}), got "
                         f"{tuple(augmented.shape)}")
    net = imsat_network(data.shape[1], int(params["hidden"]), k)
    opt = torch.optim.Adam(net.parameters(), lr=float(params["lr"]))
    lam, mu, noise, bs = float(params["lambda"]), float(params["mu"]), float(params["noise"]), int(params["batch_size"])
    for _ in range(int(params["epochs"])):
        perm = torch.randperm(len(data), generator=g)
        for i in range(0, len(data), bs):
            idx = perm[i:i + bs]
            xb = data[idx]
            if augmented is None:
                tx = xb + noise * std * torch.randn(xb.shape, generator=g)
            else:
                tx = augmented[torch.randint(0, len(augmented), (len(idx),), generator=g), idx]
            loss = imsat_loss(net(xb), net(tx), lam, mu)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return net(data).argmax(1).numpy(), net


def fit_partition(x: np.ndarray, k: int, method: str, params: Mapping[str, Any], seed: int,
                  views: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Labels (N,) of one partition and the state that assigns new points to it (``predict_partition``):
    k-means' centres, or IMSAT's network (``views``: its image-level self-augmentation, see ``imsat``)."""
    if method == "kmeans":
        km = KMeans(n_clusters=k, n_init=int(params["kmeans_n_init"]), random_state=seed).fit(x)
        return km.labels_, {"method": method, "k": k, "centres": torch.from_numpy(km.cluster_centers_)}
    if method == "imsat":
        labels, net = imsat(x, k, params["imsat"], seed, views)
        return labels, imsat_state(net, k, x.shape[1], int(params["imsat"]["hidden"]))
    raise ValueError(f"cluster method must be one of {METHODS}, got {method!r}")


def predict_partition(state: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """The cluster of each row of ``x`` (N, D) under a fitted partition: the nearest k-means centre (what
    ``KMeans.predict`` returns), or IMSAT's most probable cluster."""
    if state["method"] == "kmeans":
        centres = state["centres"].double().numpy()
        d2 = (x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None]
        return d2.argmin(1)
    net = imsat_network(int(state["in_dim"]), int(state["hidden"]), int(state["k"]))
    net.load_state_dict(state["state_dict"])
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x)).float()).argmax(1).numpy()


class FittedClusters:
    """The cluster stage's ``models.pt``: how features are made from latents (pooling and the training
    standardisation) and every fitted (method, k) partition, to assign generated images to clusters (cLDM
    paper section 4.5)."""

    def __init__(self, path: str | Path):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no fitted clusters (the cluster stage's models.pt)") from None
        self.path, self.spec, self.partitions = Path(path), saved["features"], saved["partitions"]

    def features(self, latents: torch.Tensor) -> np.ndarray:
        x = pooled_features(latents, self.spec["pooling"], int(self.spec["pool_size"]))
        return (x - self.spec["mean"].numpy()) / self.spec["std"].numpy()

    def predict(self, latents: torch.Tensor, method: str, k: int) -> np.ndarray:
        key = partition_key(method, k)
        if key not in self.partitions:
            raise ValueError(f"{self.path}: no {method} partition with k = {k} (fitted: {sorted(self.partitions)})")
        return predict_partition(self.partitions[key], self.features(latents))


def partition_key(method: str, k: int) -> str:
    return f"{method}/k{int(k)}"


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
                  assignments_out: str | Path, params: Mapping[str, Any], models_out: str | Path | None = None,
                  threads: int | None = None) -> pd.DataFrame:
    """Entry point of the cluster rule: features, partitions for every (method, k), indices, selection; the
    fitted partitions go to ``models_out`` (``FittedClusters``)."""
    set_threads(threads)
    device = select_device(params["device"])
    x_img, y, rows = load_images(manifest, params["splits"], list(params["classes"]))
    top = max(int(k) for k in params["k_values"]) + (params.get("hartigan", "paper") == "nbclust")
    if top >= len(x_img):
        raise ValueError(f"cluster.k_values: {top} clusters need more than {top} images, the splits "
                         f"{list(params['splits'])} of {manifest} hold {len(x_img)}")
    ae = load_autoencoder(ae_dir, device)
    f = params["features"]

    def pooled(images: torch.Tensor) -> np.ndarray:  # images -> their latents' pooled features
        return pooled_features(encode_latents(ae, images, device)[0], f["pooling"], int(f["pool_size"]))

    raw = pooled(x_img)
    mean, std = standardisation(raw, bool(f["standardize"]))
    x = (raw - mean) / std
    log.info("cluster features: %d images x %d (%s pooling%s)", *x.shape, f["pooling"],
             ", standardised" if f["standardize"] else "")
    views = None
    im = params.get("imsat") or {}
    if "imsat" in params["methods"] and im.get("augmentation", "noise") == "image":
        g = torch.Generator().manual_seed(int(params["seed"]))
        views = np.stack([(pooled(random_affine(x_img, im["rotation"], im["translation"], im["scaling"], g)) - mean)
                          / std for _ in range(int(im["views"]))])  # standardised as the images' own
        log.info("IMSAT self-augmentation: %d rotated, translated and scaled views of each image", len(views))
    table, assignments, states = [], [], {}
    nbclust = params.get("hartigan", "paper") == "nbclust"
    for method in params["methods"]:
        ks = sorted(int(k) for k in params["k_values"])
        fits = {k: fit_partition(x, k, method, params, int(params["seed"]), views)
                for k in sorted(set(ks) | ({k + 1 for k in ks} if nbclust else set()))}
        for k in ks:
            labels, states[partition_key(method, k)] = fits[k]
            table += index_table(x, labels, method, k, fits[k + 1][0] if nbclust else None)
            assignments.append(pd.DataFrame({"image_id": rows["image_id"], "method": method, "k": k,
                                             "cluster": labels}))
            log.info("%s k=%d: %s", method, k, {r["index"]: round(r["value"], 4) for r in table[-len(INDICES):]})
    table = pd.DataFrame(table)
    selection = select_k(table)
    log.info("selection:\n%s", selection.to_string(index=False))
    write_parquet(table, indices_out)
    write_parquet(selection, selection_out)
    write_parquet(pd.concat(assignments, ignore_index=True), assignments_out)
    if models_out is not None:
        spec = feature_spec(f["pooling"], f["pool_size"], f["standardize"], torch.from_numpy(mean),
                            torch.from_numpy(std))
        with atomic_path(models_out) as tmp:
            torch.save({"features": spec, "partitions": states}, tmp)
    return selection
