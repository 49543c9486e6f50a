"""Cluster conditioning of the diffusion model (cLDM paper section 3.4): with no labels, the cluster ids of the
training images' latents are the condition c of the U-Net, ||eps - eps_theta(z_t, t, c)||^2 (eq. 9).

``ClusterEmbedding`` plays the role of the prompt encoder: one learnt (tokens x dim) embedding per cluster,
cross-attended by the UNet's transformer blocks, and one more for the unconditional input of classifier-free
guidance. Its config records which partition it was trained on (method, k) and how many training images each
cluster had, so generation knows the clusters without the cluster stage's tables.

``Clusterer`` is the clustering network of the paper's joint training (sections 3.4-3.6 and 5): IMSAT's
p(y | x) on the pooled, standardised latents, trained with the UNet (``conditioning.cluster``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..io import read_parquet
from .fit import feature_spec, imsat_network, imsat_state, pool_latents


# a jointly trained model's own clusters, in its folder (``conditioning.cluster``)
JOINT_ASSIGNMENTS, JOINT_MODELS = "cluster_assignments.parquet", "clusters.pt"

# cluster_k: an int of cluster.k_values, or "selected" (the cluster stage's majority vote for cluster_method);
# cluster_training: fixed (the cluster stage's partition) or joint (the paper's staged training,
# ``conditioning.cluster``) with cluster_stages (the shares of the steps: training, fine-tuning 1 with the
# clustering network frozen, fine-tuning 2; the paper's epochs 600, 130, 70), cluster_weight (the IMSAT loss's
# weight beside the denoising loss; the paper states none) and cluster_init (fitted: the cluster stage's network)
CLUSTER_DEFAULTS = {"cluster_k": "selected", "cluster_method": "imsat", "cluster_tokens": 1,
                    "cluster_training": "fixed", "cluster_stages": [600, 130, 70], "cluster_weight": 1.0,
                    "cluster_init": "fitted"}


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

    def weighted(self, weights: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """The context of cluster weights (B, k) (one-hot: ``forward`` of that cluster; a straight-through one-hot
        passes the gradient on to the weights), the null embedding where ``drop`` (B,)."""
        mixed = torch.einsum("bk,ktd->btd", weights.to(self.embed.dtype), self.embed[:-1])
        null = self.embed[-1].expand_as(mixed)
        return self.norm(torch.where(drop[:, None, None], null, mixed))


class Clusterer(ModelMixin, ConfigMixin):
    """IMSAT's clustering network p(y | x) (``cluster.fit.imsat_network``) on the latents themselves: pooled as
    the cluster stage pools them and standardised with its training mean and std (buffers), so it starts as the
    cluster stage's fitted partition (``from_fitted``) and is trained on with the diffusion model."""

    @register_to_config
    def __init__(self, in_dim: int, hidden: int, k: int, pooling: str = "avg", pool_size: int = 2):
        super().__init__()
        self.net = imsat_network(in_dim, hidden, k)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    @classmethod
    def from_fitted(cls, models: str | Path, method: str, k: int, init: str = "fitted") -> "Clusterer":
        """The network of the cluster stage's (method, k) IMSAT partition (``models.pt``), with its feature
        pooling and standardisation; ``init: random`` keeps those but starts the network afresh."""
        saved = torch.load(models, map_location="cpu", weights_only=True)
        key = f"{method}/k{int(k)}"
        state = saved["partitions"].get(key)
        if state is None or state["method"] != "imsat":
            raise ValueError(f"{models}: no IMSAT partition with k = {k} to train on (fitted: "
                             f"{sorted(saved['partitions'])}); joint cluster training needs cluster_method: imsat")
        spec = saved["features"]
        module = cls(int(state["in_dim"]), int(state["hidden"]), int(k), spec["pooling"], int(spec["pool_size"]))
        if init == "fitted":
            module.net.load_state_dict(state["state_dict"])
        elif init != "random":
            raise ValueError(f"cluster_init must be 'fitted' or 'random', got {init!r}")
        module.mean.copy_(spec["mean"].float())
        module.std.copy_(spec["std"].float())
        return module

    def features(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, D) standardised features (float32, differentiable)."""
        return (pool_latents(latents.float(), self.config.pooling, self.config.pool_size) - self.mean) / self.std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, k) of standardised features."""
        return self.net(features)

    def predict(self, latents: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """The most probable cluster of each latent (N,)."""
        with torch.no_grad():
            return torch.cat([self(self.features(latents[i:i + batch_size])).argmax(1)
                              for i in range(0, len(latents), batch_size)]).cpu()

    def fitted(self) -> dict:
        """The network in the cluster stage's ``models.pt`` format (``cluster.fit.FittedClusters``)."""
        c = self.config
        return {"features": feature_spec(c.pooling, c.pool_size, True, self.mean, self.std),
                "partitions": {f"imsat/k{int(c.k)}": imsat_state(self.net, int(c.k), int(c.in_dim), int(c.hidden))}}


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
