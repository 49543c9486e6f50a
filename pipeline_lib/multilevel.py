"""Multi-level embeddings (section III.C of the multi-level embedding paper) through GLIGEN's gated adapter.

- Embeddings: five feature levels of an image encoder on the lesion crop (the whole preprocessed image where
  there is no lesion mask). The paper uses a CLIP image encoder: with ``diffusion.image_encoder`` set, five
  intermediate blocks of a local open_clip ViT (``OpenClipLevels``); by default the five ``feature_maps`` of
  the pipeline's own domain network (trained from scratch on train_a), frozen. Each level is average-pooled to
  a ``grid`` x ``grid`` map of tokens; a learnt linear map per level brings them to one width and e_m is their
  average over the levels (CLIP's levels share one width, so there the average is direct).
- Adapter, eq. (2): v = v + beta * tanh(gamma) * SelfAttn([v, e_m]) on the visual tokens, between self- and
  cross-attention of every transformer block, gamma learnt and initialised to 0 (the UNet is unchanged at the
  start), beta constant (1 in the paper). diffusers builds GLIGEN's ``GatedSelfAttentionDense`` there with
  ``attention_type="gated"``; ``MultiLevelAdapter`` is that module computing eq. (2) only (GLIGEN's extra gated
  feed-forward is not part of eq. 2 and is frozen out). The tokens reach the blocks through the UNet's GLIGEN
  projection (``position_net``), each token with the box of its grid cell; a masked-out token is GLIGEN's
  learnt null feature, which serves as the unconditional input of classifier-free guidance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import GatedSelfAttentionDense
from diffusers.models.modeling_utils import ModelMixin

from .io import local_file
from .text import load_open_clip

N_LEVELS = 5
MULTILEVEL_DEFAULTS = {"embedding_grid": 2, "adapter_beta": 1.0}  # beta = 1 in the multi-level paper


class OpenClipLevels(nn.Module):
    """Five intermediate layers of a local, frozen open_clip vision transformer as feature maps, the image
    encoder of the multi-level paper: ``feature_maps(x)`` for x in [-1, 1] returns (B, width, h, w) patch-token
    maps of the blocks ``layers`` (default: five evenly spaced, the last included)."""

    def __init__(self, model_name: str, checkpoint: str | Path, layers: Sequence[int] | None = None):
        super().__init__()
        import open_clip

        path = local_file(checkpoint, "diffusion.image_encoder.checkpoint",
                          f"a local open_clip checkpoint of {model_name}")
        self.visual = load_open_clip(model_name, path).visual
        depth = len(self.visual.transformer.resblocks)
        chosen = list(layers) if layers else sorted({round(i) for i in torch.linspace(0, depth - 1, N_LEVELS).tolist()})
        if len(chosen) != N_LEVELS or not all(0 <= i < depth for i in chosen):
            raise ValueError(f"diffusion.image_encoder.layers: expected {N_LEVELS} block indices in [0, {depth - 1}] "
                             f"of {model_name}, got {chosen}")
        self.layers = chosen
        size = self.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        mean = getattr(self.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(self.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images as open_clip's image tower takes them: resized, normalised by its mean and std."""
        x = F.interpolate((x + 1) / 2, size=self.size, mode="bicubic", align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.visual.forward_intermediates(self._prepare(x), indices=self.layers, intermediates_only=True,
                                                output_fmt="NCHW")
        return list(out["image_intermediates"])

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The CLIP image embedding (B, embed_dim): the pooled, projected output of the image tower."""
        return self.visual(self._prepare(x))


def level_tokens(feature_maps: Sequence[torch.Tensor], grid: int) -> list[torch.Tensor]:
    """Each level (B, C_l, h, w) average-pooled to grid x grid cells -> tokens (B, grid^2, C_l), raster order."""
    return [F.adaptive_avg_pool2d(f, grid).flatten(2).transpose(1, 2) for f in feature_maps]


def cell_boxes(grid: int) -> torch.Tensor:
    """(grid^2, 4) boxes (x0, y0, x1, y1) in [0, 1] of the grid cells, in the tokens' raster order."""
    edges = torch.linspace(0, 1, grid + 1)
    return torch.tensor([[edges[j], edges[i], edges[j + 1], edges[i + 1]] for i in range(grid) for j in range(grid)])


class MultiLevelEmbedder(ModelMixin, ConfigMixin):
    """Level tokens -> e_m (B, grid^2, dim): one linear map per level, averaged over the levels."""

    @register_to_config
    def __init__(self, level_dims: Sequence[int], dim: int, grid: int = 2, beta: float = 1.0):
        super().__init__()
        if len(level_dims) != N_LEVELS:
            raise ValueError(f"expected {N_LEVELS} feature levels, got {len(level_dims)}")
        self.proj = nn.ModuleList(nn.Linear(c, dim) for c in level_dims)
        self.register_buffer("boxes", cell_boxes(grid), persistent=False)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([p(t) for p, t in zip(self.proj, levels)]).mean(0)

    def gligen_kwargs(self, levels: Sequence[torch.Tensor], keep: torch.Tensor | None = None) -> dict:
        """``cross_attention_kwargs["gligen"]`` for the UNet: e_m, the cell boxes and a mask that is 0 where the
        condition is dropped (``keep`` (B,) boolean; GLIGEN then uses its learnt null feature)."""
        e_m = self(levels)
        b, n = e_m.shape[:2]
        masks = torch.ones(b, n, device=e_m.device) if keep is None else keep.to(e_m).view(b, 1).expand(b, n)
        return {"boxes": self.boxes.to(e_m).expand(b, n, 4), "masks": masks, "positive_embeddings": e_m}


class MultiLevelAdapter(GatedSelfAttentionDense):
    """GLIGEN's gated self-attention computing eq. (2) of the multi-level paper and nothing else: the same
    parameters (so ``save_pretrained`` / ``from_pretrained`` of the UNet are unaffected), GLIGEN's gated
    feed-forward left out of the forward pass and frozen."""

    def __init__(self, query_dim: int, context_dim: int, n_heads: int, d_head: int, beta: float = 1.0):
        super().__init__(query_dim, context_dim, n_heads, d_head)
        self.beta = float(beta)

    @classmethod
    def replacing(cls, fuser: GatedSelfAttentionDense, beta: float) -> "MultiLevelAdapter":
        """An adapter holding ``fuser``'s very parameters; built on the meta device, so it spends no random draw
        and allocates nothing before taking them over."""
        heads = fuser.attn.heads
        with torch.device("meta"):
            adapter = cls(fuser.linear.out_features, fuser.linear.in_features, heads, fuser.attn.inner_dim // heads,
                          beta)
        adapter.load_state_dict(fuser.state_dict(keep_vars=True), assign=True)
        adapter.enabled = fuser.enabled
        for p in (*adapter.ff.parameters(), *adapter.norm2.parameters(), adapter.alpha_dense):
            p.requires_grad_(False)
        return adapter

    def forward(self, x: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:  # (B, N, C), (B, T, D)
        if not self.enabled:
            return x
        n_visual = x.shape[1]
        objs = self.linear(objs)
        return x + self.beta * self.alpha_attn.tanh() * self.attn(self.norm1(torch.cat([x, objs], 1)))[:, :n_visual]


def install_adapters(unet: UNet2DConditionModel, beta: float) -> int:
    """Replace every GLIGEN fuser of a ``attention_type="gated"`` UNet by a ``MultiLevelAdapter`` with ``beta``
    that holds its parameters (the UNet's state dict keys and values stay as they are); returns how many."""
    fusers = [name for name, m in unet.named_modules() if type(m) is GatedSelfAttentionDense]
    for name in fusers:
        parent, _, attr = name.rpartition(".")
        setattr(unet.get_submodule(parent), attr, MultiLevelAdapter.replacing(unet.get_submodule(name), beta))
    if not fusers:
        raise ValueError("the UNet has no gated self-attention layers: build it with attention_type='gated'")
    return len(fusers)
