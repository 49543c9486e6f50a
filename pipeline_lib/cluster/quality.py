"""Cluster-conditioned generation measured as in the cLDM paper: how many samples of each cluster the fitted
clustering assigns back to that cluster (section 4.5), and the SSIM, MS-SSIM and LPIPS of the samples of each
cluster set to the real images (section 4.4, Table 4).

Pairs: every generated image of cluster j is compared with ``references`` real images of cluster j (the
clustered training images), drawn at random with a generator seeded by the generation seed; an image's value is
the mean over its pairs, a cluster's the mean over its images, ``all`` the mean over every generated image.
Higher SSIM / MS-SSIM and lower LPIPS mean closer to the real images of the cluster. Without local LPIPS
weights the perceptual column is ``domain_perceptual`` (see ``pipeline_lib.perceptual``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from ..autoencoder import encode_latents, load_autoencoder
from ..io import log, read_parquet, write_parquet
from ..metrics import ms_ssim, ms_ssim_scales, ssim
from ..perceptual import load_perceptual
from ..torchutils import load_images, select_device, set_threads
from .condition import JOINT_ASSIGNMENTS, JOINT_MODELS, cluster_labels, cluster_names
from .fit import FittedClusters


def reference_pairs(gen_clusters: np.ndarray, real_clusters: np.ndarray, references: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(n_generated, references) indices of real images of each generated image's cluster; -1 where the cluster
    has no real image."""
    out = np.full((len(gen_clusters), references), -1, dtype=np.int64)
    for j in np.unique(gen_clusters):
        pool = np.flatnonzero(real_clusters == j)
        rows = np.flatnonzero(gen_clusters == j)
        if len(pool):
            out[rows] = rng.choice(pool, size=(len(rows), references), replace=True)
    return out


@torch.no_grad()
def pair_similarity(xg: torch.Tensor, xr: torch.Tensor, pairs: np.ndarray, perceptual: torch.nn.Module,
                    device: torch.device, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per generated image, the mean SSIM, MS-SSIM and perceptual distance over its reference pairs."""
    gi, rj = np.nonzero(pairs >= 0)
    ri = pairs[gi, rj]
    cols: dict[str, list[torch.Tensor]] = {"ssim": [], "ms_ssim": [], perceptual.name: []}
    for s in range(0, len(gi), batch_size):
        a, b = xg[gi[s:s + batch_size]].to(device), xr[ri[s:s + batch_size]].to(device)
        for key, fn in (("ssim", ssim), ("ms_ssim", ms_ssim), (perceptual.name, perceptual)):
            cols[key].append(fn(a, b).double().cpu())
    out = {}
    for key, parts in cols.items():
        values = torch.cat(parts).numpy() if parts else np.zeros(0)
        total = np.bincount(gi, weights=values, minlength=len(xg))
        n = np.bincount(gi, minlength=len(xg))
        out[key] = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return out


def cluster_quality(real_manifest: str | Path, gen_manifest: str | Path, assignments: str | Path,
                    models: str | Path, ae_dir: str | Path, table_out: str | Path, per_image_out: str | Path,
                    params: Mapping[str, Any], feature_net: str | Path | None = None,
                    threads: int | None = None, model_dir: str | Path | None = None) -> pd.DataFrame:
    """Entry point of the cluster_quality rule for one (variant, setting, seed) of a cluster-conditioned variant.
    ``ae_dir`` is the cluster stage's autoencoder: its latents define the clusters the samples are assigned to.
    A diffusion model trained with its clustering network (``model_dir`` holds ``clusters.pt``, the joint
    training of ``conditioning.cluster``) is measured against its own clusters, not the cluster stage's."""
    if model_dir is not None and (Path(model_dir) / JOINT_MODELS).is_file():
        assignments, models = Path(model_dir) / JOINT_ASSIGNMENTS, Path(model_dir) / JOINT_MODELS
        log.info("the clusters of the model's jointly trained network: %s", models)
    set_threads(threads)
    device = select_device(params["device"])
    gen = read_parquet(gen_manifest, required=("image_id", "cluster", "cluster_method", "cluster_k"))
    method, k = str(gen["cluster_method"].iloc[0]), int(gen["cluster_k"].iloc[0])
    xg, yg, rows_g = load_images(gen_manifest, ["synthetic"], cluster_names(k))
    xr, _, rows_r = load_images(real_manifest, params["splits"], list(params["classes"]))
    real_clusters = cluster_labels(assignments, rows_r["image_id"], method, k)
    latents, _ = encode_latents(load_autoencoder(ae_dir, device), xg, device)
    predicted = FittedClusters(models).predict(latents, method, k)
    perceptual = load_perceptual(params["perceptual"], feature_net, device)
    rng = np.random.default_rng(np.random.SeedSequence([int(params["seed"]), k]))
    pairs = reference_pairs(yg.numpy(), real_clusters, int(params["references"]), rng)
    sims = pair_similarity(xg, xr, pairs, perceptual, device)
    per = pd.DataFrame({"image_id": rows_g["image_id"], "cluster": yg.numpy(), "predicted": predicted,
                        "correct": predicted == yg.numpy(), **sims})
    metrics = ["accuracy", *sims]
    rows = []
    for name, part in [*((f"cluster_{j}", per[per["cluster"] == j]) for j in sorted(per["cluster"].unique())),
                       ("all", per)]:
        j = int(name.rsplit("_", 1)[1]) if name != "all" else None
        n_real = int((real_clusters == j).sum()) if j is not None else len(real_clusters)
        rows.append({"cluster": name, "n_generated": len(part), "n_real": n_real,
                     "accuracy": float(part["correct"].mean()), **part[list(sims)].mean().to_dict()})
    table = pd.DataFrame(rows)
    for key, value in (("k", k), ("method", method), ("seed", int(params["seed"])), ("setting", params["setting"]),
                       ("variant", params["variant"])):
        table.insert(0, key, value)
    table = table.assign(references=int(params["references"]), ms_ssim_scales=ms_ssim_scales(xg.shape[-1]))
    write_parquet(per, per_image_out)
    write_parquet(table, table_out)
    log.info("%s k=%d, %s: accuracy of the generated samples' clusters and similarity to the real images of "
             "the cluster\n%s", method, k, params["variant"], table[["cluster", "n_generated", "n_real", *metrics]]
             .round(4).to_string(index=False))
    return table
