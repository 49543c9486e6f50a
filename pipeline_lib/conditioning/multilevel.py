"""Multi-level embeddings (section III.C of the multi-level embedding paper): the class prompt plus five frozen
feature levels of the image's lesion crop, through the gated adapters of eq. (2) (``pipeline_lib.multilevel``).
Training embeds every training image once (``per_image``: the level tokens drawn with each batch), dropped
together with the prompt; sampling conditions each sample on a random training image of its class (the
model's ``references``), the unconditional pass on GLIGEN's null feature."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import cv2
import pandas as pd
import torch

from ..io import log, read_rgb, resolve_path
from ..multilevel import MULTILEVEL_DEFAULTS, MultiLevelEmbedder, OpenClipLevels, install_adapters, level_tokens
from ..nets import load_feature_net
from ..torchutils import to_tensor, with_mirrors
from .prompt import ClassPrompt

REFERENCES = "multilevel_references.pt"  # in the model folder: the training images' level tokens and labels


class MultiLevel(ClassPrompt):
    name = "multilevel"
    diffusers_pipeline = False  # its UNet needs the extra modules: load_diffusion loads it
    defaults = MULTILEVEL_DEFAULTS
    gated_unet = True
    unused_parameters = True  # GLIGEN's null feature is unused in steps where no prompt is dropped

    @classmethod
    def for_training(cls, params, feature_net, clusters):
        if feature_net is None and not (params.get("image_encoder") or {}).get("open_clip_model"):
            raise ValueError(f"diffusion variant {params.get('variant')!r}: multilevel conditioning needs the domain "
                             f"feature network")
        return super().for_training(params, feature_net, clusters)

    def extra_modules(self, unet, data, device):
        grid, beta = int(self.options["embedding_grid"]), float(self.options["adapter_beta"])
        n = len(data.rows)
        crops = load_lesion_crops(data.manifest, data.rows, data.images)
        encoder = image_encoder(data.params, data.feature_net, device)
        hflip = bool(data.params.get("hflip", True))
        levels = embed_levels(encoder, with_mirrors(crops, hflip), grid, device)  # aligned with the latents
        self.per_image = levels
        self.references = {"levels": [t[:n].cpu() for t in levels], "labels": data.labels.cpu()}
        embedder = MultiLevelEmbedder([t.shape[-1] for t in levels], int(unet.config.cross_attention_dim), grid,
                                      beta).to(device)
        adapters = install_adapters(unet, beta)
        log.info("multi-level embeddings: %d levels of %s on %d lesion crops / images, %d x %d "
                 "tokens; %d gated adapters (beta %.2f, gamma = 0 at the start)", len(levels), encoder.source,
                 n, grid, grid, adapters, beta)
        return {"multilevel_embedder": embedder}

    def loss_inputs(self, modules, latents, context, drop, batch, gen):
        return {"gligen": modules["multilevel_embedder"].gligen_kwargs(batch, keep=~drop)}, {}

    def save(self, folder):
        super().save(folder)
        torch.save(self.references, folder / REFERENCES)

    @classmethod
    def load(cls, model_dir, unet, device):
        cond, context = super().load(model_dir, unet, device)
        embedder = MultiLevelEmbedder.from_pretrained(str(model_dir / "multilevel_embedder")).to(device).eval()
        install_adapters(unet, embedder.config.beta)
        cond.modules["multilevel_embedder"] = embedder
        cond.references = torch.load(model_dir / REFERENCES, map_location="cpu", weights_only=True)
        return cond, context

    def sampler_inputs(self, class_index, n, guided, generator, device, settings):
        pool = torch.nonzero(self.references["labels"] == class_index).flatten()
        if len(pool) == 0:
            raise ValueError(f"the multi-level model has no reference image of class index {class_index}")
        pick = pool[torch.randint(0, len(pool), (n,), generator=generator)]
        levels = [t[pick].to(device) for t in self.references["levels"]]
        keep = torch.ones(n, dtype=torch.bool, device=device)
        if guided:
            levels, keep = [torch.cat([t, t]) for t in levels], torch.cat([~keep, keep])
        return {"gligen": self.modules["multilevel_embedder"].gligen_kwargs(levels, keep=keep)}


def image_encoder(params: Mapping[str, Any], feature_net: str | Path | None, device: torch.device) -> torch.nn.Module:
    """The multi-level variant's image encoder: a local open_clip ViT (``diffusion.image_encoder``), else the
    domain feature network; ``source`` names it for the log."""
    cfg = params.get("image_encoder") or {}
    if cfg.get("open_clip_model"):
        encoder = OpenClipLevels(cfg["open_clip_model"], cfg["checkpoint"], cfg.get("layers")).to(device)
        encoder.source = f"open_clip {cfg['open_clip_model']} blocks {encoder.layers} ({cfg['checkpoint']})"
        return encoder
    encoder = load_feature_net(feature_net, device)
    encoder.source = f"the domain network {feature_net}"
    return encoder


@torch.no_grad()
def embed_levels(network: torch.nn.Module, images: torch.Tensor, grid: int, device: torch.device,
                 batch_size: int = 256) -> list[torch.Tensor]:
    """The five frozen feature levels of ``images`` as grid x grid tokens: a list of (N, grid^2, C_l)."""
    parts = [level_tokens(network.feature_maps(images[i:i + batch_size].to(device)), grid)
             for i in range(0, len(images), batch_size)]
    return [torch.cat(level) for level in zip(*parts)]


def load_lesion_crops(manifest: str | Path, rows: pd.DataFrame, images: torch.Tensor) -> torch.Tensor:
    """Each row's lesion crop (``lesion_crop`` of the preprocessed manifest) as a tensor like ``images``; the
    preprocessed image itself where the row has none."""
    if "lesion_crop" not in rows or rows["lesion_crop"].isna().all():
        return images
    out = images.clone()
    for i, path in enumerate(rows["lesion_crop"]):
        if isinstance(path, str) and path:
            crop = read_rgb(resolve_path(manifest, path))
            if crop.shape[:2] != tuple(images.shape[-2:]):
                crop = cv2.resize(crop, tuple(images.shape[-2:][::-1]), interpolation=cv2.INTER_AREA)
            out[i] = to_tensor(crop[None])[0]
    return out
