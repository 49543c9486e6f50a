"""Memorization audit: is a synthetic image a copy of one of the generator's training images?

None of the source papers audits this; the design follows the usual practice for diffusion models (a copy is a
synthetic image closer to a training image than held-out real images of the same distribution ever come):

* **Pixel space** (the copy criterion). Images are compared as they are used (after preprocessing), at most
  ``pixel_size`` px a side (area-downsampled above it), by the Pearson correlation of all channels over the
  central window of the synthetic image, maximised over horizontal flips of the training image and shifts of up
  to ``max_shift`` px (both are what a generator trained with random flips may reproduce, and what a lazy copy
  check misses). Both windows are first centred on the training images' mean image (``centre``): what every
  image shares (the black corners and the circle of an endoscope's field of view, a radiograph's body outline)
  would otherwise make any two images correlate near 1; a copy still correlates 1, its deviations from the mean
  being the same. Correlation ignores a change of brightness or contrast.
* **Feature space** (reported beside it). The cosine similarity of the domain network's features. A classifier's
  features are trained to put every image of a class together, so two different patients of one class can be as
  close there as a copy: the feature flag is a second opinion, not the copy flag.
* **Calibration.** For every held-out real image (test: never seen by the generator) its nearest training image
  is found the same way; the threshold is the ``percentile`` (default 99) of those similarities. A synthetic
  image is flagged ``is_copy`` when its pixel similarity exceeds the threshold: by construction about 1 % of
  held-out real images would be, so the share flagged is to be read against that rate.
* **Authenticity** (Alaa et al. 2022, "How faithful is your synthetic data?", section 3): a synthetic sample g
  is unauthentic when it is closer to its nearest training sample x* than x* is to its own nearest other
  training sample, ``closer_than_neighbour``; the authenticity score is the share of authentic samples. The
  distance is 1 - correlation in pixel space, Euclidean in feature space. Held-out real images give the rate to
  expect from a model that does not copy (near 0.5 in high dimensions, not 1).

``audit`` is the pure function on image arrays; ``memorization`` the entry point of the rule for one synthetic set.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .io import feature_columns, log, pyplot, read_parquet, read_rgb, resolve_path, save_figure, write_parquet

PERCENTILES = (1, 5, 50, 95, 99)  # of the similarity distributions in the summary


@dataclass(frozen=True)
class Nearest:
    """For each query image: index of the nearest reference image, its similarity, and for pixel space the
    horizontal flip and shift (dx, dy: query pixel (y, x) against reference pixel (y + dy, x + dx)) that gave it."""
    index: np.ndarray
    similarity: np.ndarray
    flipped: np.ndarray | None = None
    dx: np.ndarray | None = None
    dy: np.ndarray | None = None


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"{what}: expected a non-empty uint8 array (N, H, W, C), got dtype {images.dtype} "
                         f"and shape {images.shape}")
    return images


def pixel_array(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> float64 (N, h, w, C) in [0, 1], area-downsampled so that the longer side is at most
    ``size`` (a 512 px set is compared at 64 px: copies survive it, the cost falls by 64x)."""
    import cv2

    n, h, w, c = images.shape
    scale = min(1.0, size / max(h, w))
    if scale < 1.0:
        hw = (max(1, round(w * scale)), max(1, round(h * scale)))
        images = np.stack([cv2.resize(im, hw, interpolation=cv2.INTER_AREA).reshape(hw[1], hw[0], c)
                           for im in images])
    return images.astype(np.float64) / 255.0


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm, so that a dot product is Pearson's r; a constant row stays 0."""
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def pixel_nearest(reference: np.ndarray, query: np.ndarray, max_shift: int = 2, flips: bool = True,
                  exclude_self: bool = False, centre: np.ndarray | None = None) -> Nearest:
    """Nearest ``reference`` image of every ``query`` image by the highest Pearson correlation over the query's
    central window (``max_shift`` px trimmed on each side) against the reference's window shifted by up to
    ``max_shift`` px, the reference also flipped horizontally when ``flips``; ``centre`` (an image (H, W, C)),
    its central window is subtracted from both windows first. Float arrays (N, H, W, C) of one size.
    ``exclude_self``: query i is reference i (the training set against itself)."""
    if reference.shape[1:] != query.shape[1:]:
        raise ValueError(f"expected images of one size, got {reference.shape[1:]} and {query.shape[1:]}")
    _, h, w, _ = query.shape
    s = int(max_shift)
    if s < 0 or 2 * s >= min(h, w):
        raise ValueError(f"max_shift must lie in [0, {(min(h, w) - 1) // 2}] for {h} x {w} images, got {max_shift}")
    mean = 0.0 if centre is None else centre[s:h - s, s:w - s]
    q = _unit_rows((query[:, s:h - s, s:w - s] - mean).reshape(len(query), -1))
    rows = np.arange(len(q))
    best = np.full(len(q), -np.inf)
    index, flipped, dx_best, dy_best = (np.zeros(len(q), int) for _ in range(4))
    for flip in ((False, True) if flips else (False,)):
        ref = reference[:, :, ::-1] if flip else reference
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                r = _unit_rows((ref[:, s + dy:h - s + dy, s + dx:w - s + dx] - mean).reshape(len(ref), -1))
                sim = q @ r.T  # (n_query, n_reference)
                if exclude_self:
                    sim[rows, rows] = -np.inf
                j = sim.argmax(1)
                v = sim[rows, j]
                better = v > best  # ties keep the first: no flip, the smallest shift in scan order
                best[better], index[better] = v[better], j[better]
                flipped[better], dx_best[better], dy_best[better] = flip, dx, dy
    return Nearest(index, best, flipped.astype(bool), dx_best, dy_best)


def feature_nearest(reference: np.ndarray, query: np.ndarray, exclude_self: bool = False
                    ) -> tuple[Nearest, np.ndarray, np.ndarray]:
    """Nearest ``reference`` feature vector of every ``query`` one by cosine similarity, and the index of and
    distance to the nearest by Euclidean distance (Alaa et al.'s authenticity is defined on distances)."""
    reference, query = np.asarray(reference, np.float64), np.asarray(query, np.float64)
    if reference.ndim != 2 or query.ndim != 2 or reference.shape[1] != query.shape[1]:
        raise ValueError(f"expected feature arrays (N, D) of one width, got {reference.shape} and {query.shape}")
    norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    sim = norm(query) @ norm(reference).T
    d2 = (query**2).sum(1)[:, None] + (reference**2).sum(1)[None, :] - 2 * query @ reference.T
    rows = np.arange(len(query))
    if exclude_self:
        sim[rows, rows], d2[rows, rows] = -np.inf, np.inf
    j, k = sim.argmax(1), d2.argmin(1)
    return Nearest(j, sim[rows, j]), k, np.sqrt(np.maximum(d2[rows, k], 0.0))


def _closer_than_neighbour(query_distance: np.ndarray, nearest: np.ndarray, train_distance: np.ndarray) -> np.ndarray:
    """Alaa et al. 2022: the query is closer to its nearest training sample than that sample is to its own."""
    return query_distance < train_distance[nearest]


@dataclass(frozen=True)
class AuditResult:
    """Per-image rows of the synthetic and of the held-out images (the same columns) and the thresholds."""
    synthetic: pd.DataFrame
    heldout: pd.DataFrame
    threshold: float
    feature_threshold: float | None


def audit_sets(train: np.ndarray, synthetic: np.ndarray, heldout: np.ndarray, *,
               train_features: np.ndarray | None = None, synthetic_features: np.ndarray | None = None,
               heldout_features: np.ndarray | None = None, percentile: float = 99.0, max_shift: int = 2,
               flips: bool = True, pixel_size: int = 64, centre: bool = True) -> AuditResult:
    """``audit`` with the held-out images' own rows and the thresholds (see the module docstring)."""
    sets = {"train": _check_images(train, "train"), "synthetic": _check_images(synthetic, "synthetic"),
            "heldout": _check_images(heldout, "heldout")}
    shapes = {k: v.shape[1:] for k, v in sets.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"expected images of one size and channel count, got {shapes}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
    feats = {"train": train_features, "synthetic": synthetic_features, "heldout": heldout_features}
    given = [k for k, v in feats.items() if v is not None]
    if given and len(given) != 3:
        raise ValueError(f"feature arrays are needed for all three sets or none, got them for {given}")
    for k in given:
        if len(feats[k]) != len(sets[k]):
            raise ValueError(f"{k}_features: expected {len(sets[k])} rows (one per image), got {len(feats[k])}")
    px = {k: pixel_array(v, pixel_size) for k, v in sets.items()}
    mean = px["train"].mean(0) if centre else None
    train_self = pixel_nearest(px["train"], px["train"], max_shift, flips, exclude_self=True, centre=mean)
    train_distance = 1.0 - train_self.similarity
    if given:
        f_train_distance = feature_nearest(feats["train"], feats["train"], exclude_self=True)[2]
    tables = {}
    for name in ("synthetic", "heldout"):
        near = pixel_nearest(px["train"], px[name], max_shift, flips, centre=mean)
        t = pd.DataFrame({"nearest_train_index": near.index, "similarity": near.similarity,
                          "flipped": near.flipped, "dx": near.dx, "dy": near.dy,
                          "closer_than_neighbour": _closer_than_neighbour(1.0 - near.similarity, near.index,
                                                                          train_distance)})
        if given:
            cosine, euclid_index, euclid_distance = feature_nearest(feats["train"], feats[name])
            t["feature_nearest_train_index"] = cosine.index
            t["feature_similarity"] = cosine.similarity
            t["feature_closer_than_neighbour"] = _closer_than_neighbour(euclid_distance, euclid_index,
                                                                        f_train_distance)
        tables[name] = t
    threshold = float(np.percentile(tables["heldout"]["similarity"], percentile))
    feature_threshold = (float(np.percentile(tables["heldout"]["feature_similarity"], percentile))
                         if given else None)
    for t in tables.values():
        t["threshold"] = threshold
        t["is_copy"] = t["similarity"] > threshold
        if given:
            t["feature_threshold"] = feature_threshold
            t["feature_flag"] = t["feature_similarity"] > feature_threshold
    return AuditResult(tables["synthetic"], tables["heldout"], threshold, feature_threshold)


def audit(train: np.ndarray, synthetic: np.ndarray, heldout: np.ndarray, *,
          train_features: np.ndarray | None = None, synthetic_features: np.ndarray | None = None,
          heldout_features: np.ndarray | None = None, percentile: float = 99.0, max_shift: int = 2,
          flips: bool = True, pixel_size: int = 64, centre: bool = True) -> pd.DataFrame:
    """One row per synthetic image: ``nearest_train_index`` and ``similarity`` (pixel space), ``flipped``,
    ``dx``, ``dy`` of the best match (``centre``: both images centred on the training images' mean first),
    ``closer_than_neighbour`` (Alaa et al.), ``threshold`` (the ``percentile`` of the held-out images' own
    nearest-training similarities) and ``is_copy`` = similarity > threshold; with features, also
    ``feature_nearest_train_index``, ``feature_similarity``, ``feature_closer_than_neighbour``,
    ``feature_threshold`` and ``feature_flag``. Images: uint8 (N, H, W, C) of one size; features: (N, D) rows in
    the images' order."""
    return audit_sets(train, synthetic, heldout, train_features=train_features,
                      synthetic_features=synthetic_features, heldout_features=heldout_features,
                      percentile=percentile, max_shift=max_shift, flips=flips, pixel_size=pixel_size,
                      centre=centre).synthetic


def authenticity(closer_than_neighbour: np.ndarray) -> float:
    """Alaa et al.'s authenticity score: the share of samples that are not closer to their nearest training
    sample than it is to its own nearest training neighbour."""
    return float(1.0 - np.mean(np.asarray(closer_than_neighbour, bool)))


def summary_table(images: pd.DataFrame) -> pd.DataFrame:
    """Per class and ``all``: images, share flagged as copies (synthetic and, as the calibration check, held-out),
    authenticity, the thresholds and percentiles of the nearest-training similarity of both sets, pixel and
    (where present) feature space. ``images``: the per-image table with ``set`` and ``label`` columns."""
    spaces = [("pixel", "similarity", "is_copy", "closer_than_neighbour", "threshold")]
    if "feature_similarity" in images:
        spaces.append(("feature", "feature_similarity", "feature_flag", "feature_closer_than_neighbour",
                       "feature_threshold"))
    rows = []
    for label in [*dict.fromkeys(images.loc[images["set"] == "synthetic", "label"]), "all"]:
        row = {"class": label}
        for kind in ("synthetic", "heldout"):
            g = images[(images["set"] == kind) & ((images["label"] == label) if label != "all" else True)]
            row[f"n_{kind}"] = len(g)
            for space, sim, flag, closer, _ in spaces:
                row[f"{space}_{kind}_flagged"] = float(g[flag].mean()) if len(g) else np.nan
                row[f"{space}_{kind}_authenticity"] = authenticity(g[closer]) if len(g) else np.nan
                for p in PERCENTILES:
                    row[f"{space}_{kind}_p{p}"] = float(np.percentile(g[sim], p)) if len(g) else np.nan
                row[f"{space}_{kind}_max"] = float(g[sim].max()) if len(g) else np.nan
        for space, _, _, _, threshold in spaces:
            row[f"{space}_threshold"] = float(images[threshold].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def audit_figure(images: pd.DataFrame, synthetic: np.ndarray, train: np.ndarray, path: str | Path, title: str,
                 pairs: int = 8) -> None:
    """Top: the ``pairs`` synthetic images most similar to a training image, each above that training image
    (flipped as matched) with the similarity; bottom: the distributions of the nearest-training similarity of the
    synthetic and held-out images, the threshold dashed."""
    plt = pyplot()
    syn = images[images["set"] == "synthetic"].reset_index(drop=True)
    held = images[images["set"] == "heldout"]
    top = syn.sort_values("similarity", ascending=False, kind="stable").head(pairs)
    k = max(1, len(top))
    fig = plt.figure(figsize=(max(6.0, 1.1 * k), 5.2))
    grid = fig.add_gridspec(3, k, height_ratios=[1, 1, 1.6])
    for i, (_, r) in enumerate(top.iterrows()):
        match = train[int(r["nearest_train_index"])]
        for row, (im, label) in enumerate(((synthetic[int(r["row"])], f"{r['similarity']:.3f}"),
                                           (match[:, ::-1] if r["flipped"] else match, "train"))):
            ax = fig.add_subplot(grid[row, i])
            ax.imshow(im.squeeze(), cmap="gray" if im.shape[-1] == 1 else None)
            ax.set_title(label + (" flagged" if row == 0 and r["is_copy"] else ""), fontsize=7)
            ax.axis("off")
    ax = fig.add_subplot(grid[2, :])
    bins = np.linspace(min(syn["similarity"].min(), held["similarity"].min()), 1.0, 40)
    ax.hist(held["similarity"], bins=bins, density=True, alpha=0.5, label=f"held-out real (n = {len(held)})")
    ax.hist(syn["similarity"], bins=bins, density=True, alpha=0.5, label=f"synthetic (n = {len(syn)})")
    ax.axvline(float(syn["threshold"].iloc[0]), color="k", ls="--", lw=1, label="copy threshold")
    ax.set_xlabel("pixel correlation with the nearest training image (flips, shifts)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def read_images(manifest: str | Path, rows: pd.DataFrame) -> np.ndarray:
    """The images of a manifest's ``rows`` (paths relative to ``manifest``) as one uint8 (N, H, W, 3) array."""
    return np.stack([read_rgb(resolve_path(manifest, p)) for p in rows["path"]])


def audit_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """``audit_sets``' keyword settings from the config's ``memorization`` section."""
    return {"percentile": float(params["percentile"]), "max_shift": int(params["max_shift"]),
            "flips": bool(params["flips"]), "pixel_size": int(params["pixel_size"]), "centre": bool(params["centre"])}


def memorization(manifest: str | Path, gen_manifest: str | Path, real_features: str | Path,
                 gen_features: str | Path, out_images: str | Path, out_summary: str | Path, out_figure: str | Path,
                 params: Mapping[str, Any]) -> pd.DataFrame:
    """Entry point of the memorization rule for one (variant, setting, seed): the synthetic set and the held-out
    (``heldout_splits``) images against the generator's training images (``train_splits``)."""
    real = read_parquet(manifest, required=("image_id", "path", "label", "split"))
    gen = read_parquet(gen_manifest, required=("image_id", "path", "label"))
    train_rows = real[real["split"].isin(params["train_splits"])].reset_index(drop=True)
    held_rows = real[real["split"].isin(params["heldout_splits"])].reset_index(drop=True)
    for what, rows in (("train_splits", train_rows), ("heldout_splits", held_rows)):
        if rows.empty:
            raise ValueError(f"{manifest}: no images in memorization.{what} {list(params[what])}")
    rf = read_parquet(real_features, required=("image_id",)).set_index("image_id")
    gf = read_parquet(gen_features, required=("image_id",)).set_index("image_id")
    cols = feature_columns(rf)
    missing = sorted(set(train_rows["image_id"]) - set(rf.index))[:3]
    if missing:
        raise ValueError(f"{real_features}: no features for training images {missing}")
    train, synthetic = read_images(manifest, train_rows), read_images(gen_manifest, gen)
    heldout = read_images(manifest, held_rows)
    res = audit_sets(train, synthetic, heldout,
                     train_features=rf.loc[train_rows["image_id"], cols].to_numpy(np.float64),
                     synthetic_features=gf.loc[gen["image_id"], cols].to_numpy(np.float64),
                     heldout_features=rf.loc[held_rows["image_id"], cols].to_numpy(np.float64),
                     **audit_settings(params))
    ids = train_rows["image_id"].to_numpy()
    parts = []
    for kind, rows, t in (("synthetic", gen, res.synthetic), ("heldout", held_rows, res.heldout)):
        t = t.assign(set=kind, row=np.arange(len(t)), image_id=rows["image_id"].to_numpy(),
                     label=rows["label"].to_numpy(), nearest_train_id=ids[t["nearest_train_index"]],
                     feature_nearest_train_id=ids[t["feature_nearest_train_index"]])
        parts.append(t)
    images = pd.concat(parts, ignore_index=True)
    lead = ["variant", "setting", "seed", "set", "image_id", "label", "nearest_train_id", "similarity", "is_copy"]
    for key in ("variant", "setting", "seed"):
        images[key] = params[key]
    images = images[lead + [c for c in images.columns if c not in lead]]
    summary = summary_table(images)
    for i, key in enumerate(("variant", "setting", "seed")):
        summary.insert(i, key, params[key])
    summary.insert(3, "percentile", float(params["percentile"]))
    audit_figure(images, synthetic, train, out_figure,
                 f"{params['variant']} / {params['setting']} / seed {params['seed']}: closest synthetic-training pairs",
                 int(params["pairs"]))
    write_parquet(images, out_images)
    write_parquet(summary, out_summary)
    s = summary[summary["class"] == "all"].iloc[0]
    log.info("memorization: %d of %d synthetic images flagged as copies (pixel r > %.4f, the %g th percentile of "
             "%d held-out images; held-out flagged %.3f); authenticity %.3f (held-out %.3f)",
             int(images.loc[images["set"] == "synthetic", "is_copy"].sum()), int(s["n_synthetic"]),
             s["pixel_threshold"], float(params["percentile"]), int(s["n_heldout"]), s["pixel_heldout_flagged"],
             s["pixel_synthetic_authenticity"], s["pixel_heldout_authenticity"])
    return images
