"""Cluster conditioning (cLDM paper section 3.4): with no labels, the cluster of each training image's latents
is the condition, embedded by ``cluster.condition.ClusterEmbedding`` (no prompts, no text encoder). Generation
draws ``samples_per_cluster`` per cluster (section 4.5: 100), none for a cluster that had no training image; a
setting's ``cluster_total`` instead shares that many images over the clusters in the proportions of their
training images (section 4.4: about 10,000).

``cluster_training`` says where the clusters come from:

- ``fixed`` (the default): the cluster stage's (method, k) partition, fixed before the diffusion training.
- ``joint`` (the paper, sections 3.6 and 5): the clustering network is trained with the diffusion model. It
  starts as the cluster stage's IMSAT network of that k (``cluster_init: fitted``; the cluster stage is what
  chose k by the validity indices of Table 3) or afresh (``random``), assigns each posterior-sampled training
  latent its cluster in every step, and its IMSAT loss (``cluster.fit.imsat_loss`` with the cluster stage's
  ``imsat`` settings, its self-augmentation ``noise`` or ``image`` views of each training image) is added to
  the denoising loss with weight ``cluster_weight``. The steps are shared over the paper's three stages in the
  proportions ``cluster_stages`` (its epochs: 600 training, 130 fine-tuning 1, 70 fine-tuning 2): in training
  and fine-tuning 2 every parameter learns; in fine-tuning 1 the clustering network is frozen and only the
  denoising loss is minimised ("we froze the parameters of the neural network responsible for clustering",
  section 5). The paper does not say how the denoising loss reaches the clustering network nor how the two losses
  are weighted: here the condition is the one-hot of the most probable cluster, as in sampling, with the
  straight-through gradient of the probabilities (Bengio et al. 2013), and the weight is a config value.
  The trained network's clusters of the training images are saved in the model folder
  (``cluster_assignments.parquet``, ``clusters.pt`` in the cluster stage's format) and are the clusters the
  per-cluster evaluation uses for this model.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..autoencoder import encode_latents, load_autoencoder
from ..cluster.condition import (CLUSTER_DEFAULTS, JOINT_ASSIGNMENTS, JOINT_MODELS, ClusterEmbedding,
                                 Clusterer, cluster_labels, resolve_k)
from ..cluster.fit import imsat_loss, random_affine
from ..io import atomic_path, log, write_parquet
from ..torchutils import proportional_counts, with_mirrors
from .base import Conditioning, saved_options

STAGES = ("train", "finetune_1", "finetune_2")  # the cLDM paper's stages; the clusterer is frozen in finetune_1


def stage_bounds(steps: int, shares) -> list[tuple[str, int, int]]:
    """The (stage, first step, end step) of each stage with steps: ``steps`` shared in proportion to ``shares``
    (one per stage of ``STAGES``, largest remainders); a share of 0 skips its stage."""
    shares = np.asarray(shares, np.float64)
    if shares.shape != (len(STAGES),) or (shares < 0).any() or shares.sum() <= 0:
        raise ValueError(f"cluster_stages: expected {len(STAGES)} non-negative shares ({', '.join(STAGES)}) with a "
                         f"positive sum, got {list(shares)}")
    counts = proportional_counts(int(steps), shares)
    ends = np.cumsum(counts)
    return [(name, int(end - n), int(end)) for name, n, end in zip(STAGES, counts, ends) if n]


class ClusterIds(Conditioning):
    name = "cluster"
    defaults = CLUSTER_DEFAULTS

    def __init__(self, options, clusters=None):
        super().__init__(options)
        self.clusters = clusters
        training = self.options.get("cluster_training", "fixed")
        if training not in ("fixed", "joint"):
            raise ValueError(f"cluster_training must be 'fixed' or 'joint', got {training!r}")
        self.joint = training == "joint"
        self.unused_parameters = self.joint  # the frozen stage leaves the clustering network without gradients
        self.stage = None

    @classmethod
    def for_training(cls, params, feature_net, clusters):
        if clusters is None:
            raise ValueError(f"diffusion variant {params.get('variant')!r}: cluster conditioning needs the cluster "
                             f"stage's assignments (a `cluster:` section in the config)")
        cond = super().for_training(params, feature_net, clusters)
        cond.clusters = clusters
        if cond.joint:
            if params.get("cluster_method") != "imsat" or not clusters.get("models") or not params.get("cluster_imsat"):
                raise ValueError(f"diffusion variant {params.get('variant')!r}: cluster_training: joint trains the "
                                 f"cluster stage's IMSAT network (cluster_method: imsat, its models.pt and the "
                                 f"cluster.imsat settings)")
            cond.imsat = dict(params["cluster_imsat"])
            cond.bounds = stage_bounds(int(params["steps"]), cond.options["cluster_stages"])
            log.info("joint cluster training, stages (first step, end step): %s", cond.bounds)
        return cond

    def condition_index(self, images, labels):
        """The labels are not used: the condition is the image's cluster."""
        method = self.options["cluster_method"]
        self.k = resolve_k(self.clusters["selection"], method, self.options["cluster_k"])
        y = torch.from_numpy(cluster_labels(self.clusters["assignments"], images["image_id"], method, self.k))
        self.counts = torch.bincount(y, minlength=self.k).tolist()
        self.fitted_labels = y.numpy()
        log.info("cluster conditioning on the %s partition with k = %d%s; training images per cluster %s", method,
                 self.k, " (the cluster stage's selection)" if self.options["cluster_k"] == "selected" else "",
                 self.counts)
        return y

    def context_encoder(self, unet, frozen, params):
        return ClusterEmbedding(self.options["cluster_method"], self.k, self.counts,
                                dim=int(unet.config.cross_attention_dim), tokens=int(self.options["cluster_tokens"]))

    # --- joint training (the paper's stages) -----------------------------------------------------------------------
    def extra_modules(self, unet, data, device):
        if not self.joint:
            return {}
        clusterer = Clusterer.from_fitted(self.clusters["models"], "imsat", self.k,
                                          self.options["cluster_init"]).to(device)
        with torch.no_grad():
            feats = clusterer.features(data.latents.to(device))
        if feats.shape[1] != clusterer.config.in_dim:
            raise ValueError(f"joint cluster training: the cluster stage's features have {clusterer.config.in_dim} "
                             f"dimensions, this variant's latents {tuple(data.latents.shape[1:])} give "
                             f"{feats.shape[1]}; cluster.autoencoder must be the variant's autoencoder")
        self.noise_std = feats.std(0, keepdim=True)  # IMSAT's noise self-augmentation: a fraction of each std
        self.train_latents = data.latents
        self.train_rows = data.rows
        if self.imsat.get("augmentation", "noise") == "image":
            self.per_image = [self._views(data, clusterer, device)]
        self.modules["clusterer"] = clusterer
        log.info("joint cluster training: IMSAT network on %d features (init: %s), %s self-augmentation, IMSAT "
                 "loss weight %s", clusterer.config.in_dim, self.options["cluster_init"],
                 self.imsat.get("augmentation", "noise"), self.options["cluster_weight"])
        return {"clusterer": clusterer}

    def _views(self, data, clusterer, device) -> torch.Tensor:
        """(N, V, D): the features of V rotated, translated and scaled copies of each training image (cLDM section
        3.5), aligned with the latents (the mirror images' views are the mirrors of the views)."""
        ae = load_autoencoder(data.ae_dir, device)
        g = torch.Generator().manual_seed(int(data.params["seed"]))
        hflip = bool(data.params.get("hflip", True))
        im = self.imsat
        views = []
        for _ in range(int(im["views"])):
            moved = random_affine(data.images, im["rotation"], im["translation"], im["scaling"], g)
            with torch.no_grad():
                views.append(clusterer.features(encode_latents(ae, with_mirrors(moved, hflip), device)[0]).cpu())
        log.info("IMSAT self-augmentation: %d rotated, translated and scaled views of each training image", len(views))
        return torch.stack(views, 1)

    def begin_step(self, step, modules):
        if not self.joint:
            return {}
        self.stage = next(name for name, first, end in self.bounds if first <= step < end)
        for p in modules["clusterer"].parameters():
            p.requires_grad_(self.stage != "finetune_1")
        return {"stage": self.stage}

    def _frozen(self) -> bool:
        return self.stage == "finetune_1"

    def training_context(self, modules, latents, cond, drop, batch, gen):
        if not self.joint:
            return super().training_context(modules, latents, cond, drop, batch, gen)
        clusterer = modules["clusterer"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen()):
            p = F.softmax(clusterer(clusterer.features(latents)), 1)
        hard = F.one_hot(p.argmax(1), p.shape[1]).to(p)
        return modules["prompt_encoder"].weighted(hard + p - p.detach(), drop)  # straight-through

    def loss_inputs(self, modules, latents, context, drop, batch, gen):
        if not self.joint:
            return {}, {}
        clusterer = modules["clusterer"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen()):
            x = clusterer.features(latents)
            if batch:  # image views: one drawn for each row
                views = batch[0]
                tx = views[torch.arange(len(x)), torch.randint(0, views.shape[1], (len(x),), generator=gen)]
                tx = tx.to(x)
            else:
                tx = x + float(self.imsat["noise"]) * self.noise_std * torch.randn(x.shape, generator=gen).to(x)
            terms = imsat_loss(clusterer(x), clusterer(tx), float(self.imsat["lambda"]), float(self.imsat["mu"]))
        weight = 0.0 if self._frozen() else float(self.options["cluster_weight"])
        return {}, {"imsat": (terms["loss"], weight), "imsat_transformation": (terms["transformation"].detach(), 0.0)}

    def finish(self, modules):
        """The trained network's clusters of the training images (their posterior means): the counts saved with
        the embedding (what generation draws) and the model folder's assignments."""
        if not self.joint:
            return
        clusterer = modules["clusterer"].eval()
        device = next(clusterer.parameters()).device
        labels = clusterer.predict(self.train_latents.to(device)).numpy()
        counts = np.bincount(labels, minlength=self.k).tolist()
        modules["prompt_encoder"].register_to_config(counts=counts)
        self.assignments = pd.DataFrame({"image_id": self.train_rows["image_id"].to_numpy(), "method": "imsat",
                                         "k": self.k, "cluster": labels})
        kept = None if self.options["cluster_init"] != "fitted" else float(np.mean(labels == self.fitted_labels))
        log.info("joint cluster training: training images per cluster %s (were %s)%s", counts, self.counts,
                 "" if kept is None else f"; {kept:.1%} kept their cluster")
        self.partition = clusterer.fitted()

    def save(self, folder):
        super().save(folder)
        if self.joint:
            write_parquet(self.assignments, folder / JOINT_ASSIGNMENTS)
            with atomic_path(folder / JOINT_MODELS) as tmp:
                torch.save(self.partition, tmp)

    # --- sampling -----------------------------------------------------------------------------------------------
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
