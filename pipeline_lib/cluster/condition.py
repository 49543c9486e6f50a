"""Cluster conditioning of the diffusion model (cLDM paper section 3.4): with no labels, the cluster ids of the
training images' latents are the condition c of the U-Net, ||eps - eps_theta(z_t, t, c)||^2 (eq. 9).

``ClusterEmbedding`` plays the role of the prompt encoder: one learnt (tokens x dim) embedding per cluster,
cross-attended by the UNet's transformer blocks, and one more for the unconditional input of classifier-free
guidance. Its config records which partition it was trained on (method, k) and how many training images each
cluster had, so generation knows the clusters without the cluster stage's tables.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..io import read_parquet


# cluster_k: an int of cluster.k_values, or "selected" (the cluster stage's majority vote for cluster_method)
CLUSTER_DEFAULTS = {"cluster_k": "selected", "cluster_method": "imsat", "cluster_tokens": 1}


def cluster_names(k: int) -> list[str]:
    return [f"cluster_{j}" for j in range(k)]


class ClusterEmbedding(ModelMixin, ConfigMixin):
    """Cluster id (B,) -> (B, tokens, dim) cross-attention context; ``null_index`` = k is the empty condition."""

    @register_to_config
    def __init__(self, method: str, k: int, counts: list[int], dim: int = 32, tokens: int = 1,
                 kind: str = "cluster_embedding"):
        super().__init__()
        if len(counts) != k:
            raise ValueError(f"expected one training-image count per cluster ({k}), got {len(counts)}")
        self.embed = torch.nn.Parameter(torch.randn(k + 1, tokens, dim) * 0.02)
        self.norm = torch.nn.LayerNorm(dim)

    @property
    def classes(self) -> list[str]:
        return cluster_names(self.config.k)

    @property
    def null_index(self) -> int:
        return int(self.config.k)

    def forward(self, cluster: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embed[cluster])


def resolve_k(selection: str | Path, method: str, k: int | str) -> int:
    """``k`` itself, or with ``"selected"`` the majority vote of the cluster stage's selection for ``method``."""
    if k != "selected":
        return int(k)
    sel = read_parquet(selection, required=("method", "index", "best_k"))
    row = sel[(sel["method"] == method) & (sel["index"] == "majority")]
    if row.empty:
        raise ValueError(f"{selection}: no selected k for cluster method {method!r} (no partition of at least two "
                         f"clusters, or the method was not run)")
    return int(row["best_k"].iloc[0])


def cluster_labels(assignments: str | Path, image_ids: pd.Series, method: str, k: int) -> np.ndarray:
    """The cluster of each image under the (method, k) partition; an error names images that have none."""
    a = read_parquet(assignments, required=("image_id", "method", "k", "cluster"))
    part = a[(a["method"] == method) & (a["k"] == k)]
    if part.empty:
        raise ValueError(f"{assignments}: no {method} partition with k = {k} (cluster.k_values: "
                         f"{sorted(a.loc[a['method'] == method, 'k'].unique().tolist())})")
    lookup = part.set_index("image_id")["cluster"]
    missing = sorted(set(image_ids) - set(lookup.index))
    if missing:
        raise ValueError(f"{assignments}: {len(missing)} training images have no cluster (e.g. {missing[:3]}); "
                         f"cluster.splits must cover diffusion.train_splits")
    return lookup.loc[list(image_ids)].to_numpy().astype(np.int64)
