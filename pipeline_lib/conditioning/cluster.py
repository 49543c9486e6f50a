"""Cluster conditioning (cLDM paper section 3.4): with no labels, the cluster of each training image's latents
under the cluster stage's (method, k) partition is the condition, embedded by ``cluster.condition
.ClusterEmbedding`` (no prompts, no text encoder). Generation draws ``samples_per_cluster`` per cluster
(section 4.5: 100), none for a cluster that had no training image; a setting's ``cluster_total`` instead shares
that many images over the clusters in the proportions of their training images (section 4.4: about 10,000)."""
from __future__ import annotations

import numpy as np
import torch

from ..cluster.condition import CLUSTER_DEFAULTS, ClusterEmbedding, cluster_labels, resolve_k
from ..io import log
from ..torchutils import proportional_counts
from .base import Conditioning, saved_options


class ClusterIds(Conditioning):
    name = "cluster"
    defaults = CLUSTER_DEFAULTS

    def __init__(self, options, clusters=None):
        super().__init__(options)
        self.clusters = clusters

    @classmethod
    def for_training(cls, params, feature_net, clusters):
        if clusters is None:
            raise ValueError(f"diffusion variant {params.get('variant')!r}: cluster conditioning needs the cluster "
                             f"stage's assignments (a `cluster:` section in the config)")
        cond = super().for_training(params, feature_net, clusters)
        cond.clusters = clusters
        return cond

    def condition_index(self, images, labels):
        """The labels are not used: the condition is the image's cluster."""
        method = self.options["cluster_method"]
        self.k = resolve_k(self.clusters["selection"], method, self.options["cluster_k"])
        y = torch.from_numpy(cluster_labels(self.clusters["assignments"], images["image_id"], method, self.k))
        self.counts = torch.bincount(y, minlength=self.k).tolist()
        log.info("cluster conditioning on the %s partition with k = %d%s; training images per cluster %s", method,
                 self.k, " (the cluster stage's selection)" if self.options["cluster_k"] == "selected" else "",
                 self.counts)
        return y

    def context_encoder(self, unet, frozen, params):
        return ClusterEmbedding(self.options["cluster_method"], self.k, self.counts,
                                dim=int(unet.config.cross_attention_dim), tokens=int(self.options["cluster_tokens"]))

    @classmethod
    def load(cls, model_dir, unet, device):
        context = ClusterEmbedding.from_pretrained(str(model_dir / "prompt_encoder")).to(device).eval()
        return cls(saved_options(model_dir)), context

    def image_counts(self, context, manifest, params, model_dir):
        names, trained = context.classes, context.config.counts
        empty = [c for c, n in zip(names, trained) if n == 0]
        if empty:
            log.info("no images for %s: no training image was in these clusters", empty)
        total = params.get("cluster_total")
        if total is None:  # section 4.5: the same number of every cluster (its accuracy table: 100)
            counts = {c: int(params["samples_per_cluster"]) if n else 0 for c, n in zip(names, trained)}
        else:  # section 4.4: about 10,000 in the training clusters' proportions (its similarity table)
            counts = dict(zip(names, proportional_counts(int(total), np.asarray(trained, np.float64)).tolist()))
        return names, counts, lambda i: {"cluster": i, "cluster_method": context.config.method,
                                         "cluster_k": int(context.config.k)}
