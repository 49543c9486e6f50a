"""Latent interpolation towards pseudo-normal images and the semantic variance it adds (multi-level embedding
paper, Fig. 4 and 11, Table 6 and Fig. 12).

Fig. 4: "Disease images are generated from noise using a diffusion model and then segmented to isolate lesion
regions. These regions are inpainted to obtain pseudo-normal counterparts while preserving skin context. Both
disease and pseudo-normal images are mapped to the latent space via a pre-trained VAE. Latent interpolation is
then performed between the two extremes." For each generated image x_d chosen for interpolation:

1. ``segment_lesion``: the paper does not name its segmentation. Here an unsupervised one: the colour distance
   (CIELAB) of every field-of-view pixel to the field of view's median colour (the surrounding tissue), Otsu's
   threshold on it, a 3 x 3 opening, the largest connected component with its holes filled, widened by
   ``dilate`` pixels. A lesion smaller than ``min_area`` or larger than ``max_area`` of the field of view gives
   no pseudo-normal image (recorded as the row's ``status``; the image stays un-interpolated).
2. ``pseudo_normal``: the lesion inpainted from its surroundings (OpenCV Telea or Navier-Stokes, the same
   inpainting as DullRazor's), outside the field of view filled with the tissue colour first so that the black
   border does not bleed in, and masked again.
3. z_d = E(x_d), z_n = E(x_n) (the KL posterior means; VQ: before quantisation) and, for every alpha of the grid,
   z_alpha = (1 - alpha) z_d + alpha z_n (alpha = 0: the disease image, 1: the pseudo-normal one), decoded and
   finished with the real images' preprocessing like every generated image.

The "AI" set (Table 6): the randomly generated set A with each image chosen for interpolation (``ai_fraction``
of each interpolated class, seeded) replaced by one of its interpolations, at an alpha drawn from the grid; AI
has A's size per class. Semantic variance: image embeddings of A and AI (the open_clip image tower of
``diffusion.image_encoder`` where one is configured, the paper's CLIP; else the domain feature network); for
each class and for all classes together a PCA fit on A u AI of that group, and the variance of a set = the sum
of the variances of its coordinates on the first ``pca_components`` components (the spread in the PCA plane of
Fig. 12). ``variance_full`` is the trace of the covariance in the whole embedding space, without projection.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA

from .autoencoder import decode_latents, encode_latents, load_autoencoder

from .generate import data_color_of, finalize_synthetic, fov_mask
from .io import atomic_path, log, pyplot, read_parquet, read_rgb, resolve_path, save_figure, write_parquet, write_png
from .multilevel import OpenClipLevels
from .nets import extract_features, load_feature_net
from .preprocess import inpaint
from .speed import Speed
from .torchutils import select_device, set_threads, to_tensor, to_uint8

def segment_lesion(image: np.ndarray, fov: np.ndarray, dilate: int = 1) -> np.ndarray:
    """Boolean lesion mask (H, W) of an RGB uint8 image inside the boolean field of view ``fov`` (see the module
    docstring); empty where nothing stands out."""
    inside = fov.astype(bool)
    if inside.sum() < 2:
        return np.zeros_like(inside)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    dist = np.linalg.norm(lab - np.median(lab[inside], axis=0), axis=-1)
    top = float(dist[inside].max())
    if top <= 0:
        return np.zeros_like(inside)
    scaled = np.clip(dist / top * 255.0, 0, 255).astype(np.uint8)
    threshold, _ = cv2.threshold(scaled[inside].reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = ((scaled > threshold) & inside).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        return np.zeros_like(inside)
    largest = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    contours, _ = cv2.findContours(largest, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = cv2.drawContours(np.zeros_like(largest), contours, -1, 1, thickness=-1)
    if dilate > 0:
        filled = cv2.dilate(filled, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1)))
    return filled.astype(bool) & inside


def pseudo_normal(image: np.ndarray, lesion: np.ndarray, fov: np.ndarray, radius: int = 3,
                  method: str = "telea") -> np.ndarray:
    """The image with ``lesion`` inpainted from the surrounding tissue, black outside the field of view."""
    inside = fov.astype(bool)
    filled = image.copy()
    filled[~inside] = np.median(image[inside & ~lesion], axis=0).astype(np.uint8)
    out = inpaint(filled, lesion.astype(np.uint8), radius, method, key="interpolation.inpaint_method")
    return out * inside[..., None].astype(np.uint8)


def interpolate_latents(z_disease: torch.Tensor, z_normal: torch.Tensor, alphas: Sequence[float]) -> torch.Tensor:
    """(len(alphas), *z.shape): z_alpha = (1 - alpha) z_d + alpha z_n for each alpha."""
    for a in alphas:
        if not 0.0 <= float(a) <= 1.0:
            raise ValueError(f"interpolation.alphas: each alpha must lie in [0, 1], got {a}")
    return torch.stack([(1.0 - float(a)) * z_disease + float(a) * z_normal for a in alphas])


def semantic_variance(emb: np.ndarray, labels: np.ndarray, sets: np.ndarray, classes: Sequence[str],
                      components: int = 2) -> pd.DataFrame:
    """Rows (class, set, n, variance_pca, variance_full) for each class and ``all``, and each set in ``sets``
    (the module docstring's definition; variances with ddof = 1). ``sets`` maps each set's name to a boolean
    mask over the N embeddings (an image may belong to several sets)."""
    rows = []
    for name in [*classes, "all"]:
        group = np.ones(len(emb), bool) if name == "all" else labels == name
        members = {s: group & np.asarray(m, bool) for s, m in sets.items()}
        union = np.any(np.stack(list(members.values())), axis=0)
        k = min(components, int(union.sum()) - 1, emb.shape[1])
        pca = PCA(n_components=k, svd_solver="full").fit(emb[union]) if k >= 1 else None
        for s, m in members.items():
            x = emb[m]
            enough = len(x) > 1
            rows.append({"class": name, "set": s, "n": int(len(x)),
                         "variance_pca": float(pca.transform(x).var(axis=0, ddof=1).sum())
                         if enough and pca is not None else float("nan"),
                         "variance_full": float(x.var(axis=0, ddof=1).sum()) if enough else float("nan")})
    return pd.DataFrame(rows)


def embedding_network(params: Mapping[str, Any], feature_net: str | Path | None, device: torch.device):
    """The network whose ``features`` embed images for the semantic variance, and its name."""
    enc = params.get("image_encoder") or {}
    if enc.get("open_clip_model"):
        name = enc["open_clip_model"]
        return OpenClipLevels(name, enc["checkpoint"]).to(device), f"open_clip:{name}"
    if feature_net is None:
        raise ValueError("interpolation: no image encoder is configured and no domain feature network was given")
    return load_feature_net(feature_net, device), "domain_feature_net"


@torch.no_grad()
def interpolate(gen_manifest: str | Path, ae_dir: str | Path, feature_net: str | Path | None, out_dir: str | Path,
                manifest_out: str | Path, sets_out: str | Path, variance_out: str | Path, figure_out: str | Path,
                pca_figure_out: str | Path, params: Mapping[str, Any], threads: int | None = None) -> pd.DataFrame:
    """Entry point of the interpolation rule for one (variant, setting, seed)."""
    set_threads(threads)
    device = select_device(params["device"])
    seed, classes = int(params["seed"]), list(params["classes"])
    chosen_classes = list(params["classes_interpolated"] or classes)
    unknown = sorted(set(chosen_classes) - set(classes))
    if unknown:
        raise ValueError(f"interpolation.classes: {unknown} are not among data.classes {classes}")
    alphas = [float(a) for a in params["alphas"]]
    interpolate_latents(torch.zeros(1), torch.zeros(1), alphas)  # checks the grid before any work
    gen = read_parquet(gen_manifest, required=("image_id", "path", "label"))
    pre = params["preprocess"]
    grey = data_color_of(gen_manifest) == "grayscale"  # grey data sets: saved as single-channel PNG, as generated
    speed = Speed.from_params(params).enable(device)
    ae = load_autoencoder(ae_dir, device, speed)

    picks = []  # (row index in gen) of the images chosen for interpolation, class by class
    for ci, label in enumerate(classes):
        idx = np.flatnonzero(gen["label"].to_numpy() == label)
        if label not in chosen_classes or len(idx) == 0:
            continue
        rng = np.random.default_rng(np.random.SeedSequence([seed, ci, 104729]))
        n = int(round(float(params["ai_fraction"]) * len(idx)))
        picks += sorted(rng.choice(idx, size=n, replace=False).tolist())

    chosen, decoded_rows, examples = {}, [], []  # chosen: source image id -> (lesion fraction, status)
    with atomic_path(out_dir) as folder:
        folder.mkdir()
        for start in range(0, len(picks), int(params["batch_size"])):
            batch = picks[start:start + int(params["batch_size"])]
            disease, normal, keep = [], [], []
            for i in batch:
                row = gen.iloc[i]
                image = read_rgb(resolve_path(gen_manifest, row["path"]))
                fov = np.ones(image.shape[:2], bool) if pre.get("aperture", "circle") == "none" else \
                    cv2.erode(fov_mask(image.shape[0]), np.ones((3, 3), np.uint8)).astype(bool)
                lesion = segment_lesion(image, fov, int(params["dilate"]))
                fraction = float(lesion.sum() / max(1, fov.sum()))
                record = {"source_image_id": row["image_id"], "label": row["label"], "lesion_fraction": fraction}
                if fraction < float(params["min_area"]) or fraction > float(params["max_area"]):
                    chosen[row["image_id"]] = (fraction, f"skipped: lesion {fraction:.3f} of the field of view, "
                                                         f"outside [{params['min_area']}, {params['max_area']}]")
                    continue
                chosen[row["image_id"]] = (fraction, "interpolated")
                pn = pseudo_normal(image, lesion, fov, int(params["inpaint_radius"]), params["inpaint_method"])
                disease.append(image)
                normal.append(pn)
                keep.append(record)
                if len(examples) < int(params["figure_examples"]):
                    examples.append({"disease": image, "lesion": lesion, "normal": pn, "id": row["image_id"]})
            if not keep:
                continue
            with speed.autocast(device):
                zd, _ = encode_latents(ae, to_tensor(np.stack(disease)), device)
                zn, _ = encode_latents(ae, to_tensor(np.stack(normal)), device)
                decoded = [to_uint8(decode_latents(ae, z)) for z in interpolate_latents(zd.float(), zn.float(), alphas)]
            for j, record in enumerate(keep):
                for a, images in zip(alphas, decoded):
                    image_id = f"{record['source_image_id']}_a{round(a * 100):03d}"
                    out, status = finalize_synthetic(images[j], pre, grey)
                    write_png(out, folder / f"{image_id}.png")
                    decoded_rows.append({**record, "image_id": image_id, "path": f"images/{image_id}.png",
                                         "alpha": a, "finalize": status})
                    for ex in examples:
                        if ex["id"] == record["source_image_id"]:
                            ex.setdefault("alphas", []).append(out)
    table = pd.DataFrame(decoded_rows, columns=["image_id", "path", "label", "source_image_id", "alpha",
                                                "lesion_fraction", "finalize"])
    table = table.assign(split="synthetic", group=table["source_image_id"], source="interpolated",
                         variant=params["variant"], setting=params["setting"], seed=seed,
                         color="grayscale" if grey else "rgb")

    sets = ai_sets(gen, table, seed)
    a_rows = sets["origin"] == "generated"
    sets["lesion_fraction"] = [chosen.get(i, (np.nan, ""))[0] if g else np.nan
                               for i, g in zip(sets["image_id"], a_rows)]
    sets["status"] = [chosen.get(i, (0, "not chosen"))[1] if g else "interpolation"
                      for i, g in zip(sets["image_id"], a_rows)]
    paths = [resolve_path(manifest_out if o == "interpolated" else gen_manifest, p)
             for o, p in zip(sets["origin"], sets["path"])]
    network, name = embedding_network(params, feature_net, device)
    chunk = 4 * int(params["batch_size"])  # images read and embedded a chunk at a time, never all at once
    emb = np.concatenate([extract_features(network, to_tensor(np.stack([read_rgb(p) for p in paths[i:i + chunk]])),
                                           device) for i in range(0, len(paths), chunk)]).astype(np.float64)
    variance = semantic_variance(emb, sets["label"].to_numpy(), {"A": sets["in_A"], "AI": sets["in_AI"]}, classes,
                                 int(params["pca_components"]))
    n_interp = sets[sets["in_AI"] & (sets["origin"] == "interpolated")].groupby("label").size()
    variance["n_interpolated"] = [int(n_interp.sum()) if c == "all" else int(n_interp.get(c, 0))
                                  for c in variance["class"]]
    variance.loc[variance["set"] == "A", "n_interpolated"] = 0
    variance = variance.assign(embedding=name, pca_components=int(params["pca_components"]),
                               variant=params["variant"], setting=params["setting"], seed=seed)
    sets["path"] = [os.path.relpath(p, Path(sets_out).parent) for p in paths]  # relative to the sets table
    write_parquet(table, manifest_out)
    write_parquet(sets, sets_out)
    write_parquet(variance, variance_out)
    _interpolation_figure(examples, alphas, figure_out)
    _pca_figure(emb, sets, classes, name, pca_figure_out)
    log.info("interpolated %d of %d chosen images (%d decoded); semantic variance (PCA %d):\n%s",
             table["source_image_id"].nunique(), len(picks), len(table), int(params["pca_components"]),
             variance.pivot(index="class", columns="set", values="variance_pca").round(4).to_string())
    return variance


def ai_sets(gen: pd.DataFrame, interpolated: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every image of A and AI once, with ``in_A`` / ``in_AI``: A is the generated set; in AI each source image
    of ``interpolated`` (the decoded interpolations, one row per alpha) is replaced by one of its interpolations,
    drawn with a generator seeded by ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 15485863]))
    replaced = {}
    for source, g in interpolated.groupby("source_image_id", sort=True):
        replaced[source] = g.iloc[int(rng.integers(len(g)))]
    a = gen[["image_id", "path", "label"]].assign(origin="generated", alpha=np.nan,
                                                  in_A=True, in_AI=lambda d: ~d["image_id"].isin(list(replaced)))
    ai = pd.DataFrame([{"image_id": r["image_id"], "path": r["path"], "label": r["label"], "origin": "interpolated",
                        "alpha": float(r["alpha"]), "source_image_id": s, "in_A": False, "in_AI": True}
                       for s, r in replaced.items()],
                      columns=["image_id", "path", "label", "origin", "alpha", "source_image_id", "in_A", "in_AI"])
    return pd.concat([a.assign(source_image_id=a["image_id"]), ai], ignore_index=True)


def _interpolation_figure(examples: Sequence[Mapping[str, Any]], alphas: Sequence[float], path: str | Path) -> None:
    """Fig. 11: per example the disease image, its lesion outline, the pseudo-normal image and the decoded
    interpolations along the alpha grid."""
    plt = pyplot()

    cols = 3 + len(alphas)
    fig, axes = plt.subplots(max(1, len(examples)), cols, figsize=(1.6 * cols, 1.7 * max(1, len(examples))),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, ex in enumerate(examples):
        outline = ex["disease"].copy()
        edge = ex["lesion"].astype(np.uint8) - cv2.erode(ex["lesion"].astype(np.uint8), np.ones((3, 3), np.uint8))
        outline[edge > 0] = (0, 255, 0)
        panels = [ex["disease"], outline, ex["normal"], *ex.get("alphas", [])]
        titles = ["disease", "lesion", "pseudo-normal", *(f"alpha {a:g}" for a in alphas)]
        for c, (im, title) in enumerate(zip(panels, titles)):
            axes[r, c].imshow(im, cmap="gray", vmin=0, vmax=255)  # the colour map only for grey (H, W) panels
            if r == 0:
                axes[r, c].set_title(title, fontsize=7)
    save_figure(fig, path)


def _pca_figure(emb: np.ndarray, sets: pd.DataFrame, classes: Sequence[str], embedding: str, path: str | Path) -> None:
    """Fig. 12: the first two principal components of A (circles) and of AI's interpolated images (triangles),
    all classes together and each class alone."""
    plt = pyplot()

    groups = ["all", *classes]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), squeeze=False)
    for ax, name in zip(axes[0], groups):
        m = np.ones(len(sets), bool) if name == "all" else (sets["label"] == name).to_numpy()
        ax.set_title(name, fontsize=9)
        if m.sum() < 3:
            ax.axis("off")
            continue
        xy = PCA(n_components=2, svd_solver="full").fit_transform(emb[m])
        interp = (sets["origin"] == "interpolated").to_numpy()[m]
        ax.scatter(*xy[~interp].T, s=8, marker="o", alpha=0.6, label="A (generated)")
        ax.scatter(*xy[interp].T, s=14, marker="^", alpha=0.8, label="AI (interpolated)")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"PCA of {embedding} embeddings", fontsize=9)
    save_figure(fig, path)
