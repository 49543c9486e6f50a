"""CLUE (section 3 of the CLUE paper): a style encoder and a second cross-attention in every transformer block.

- Style encoder SE_phi(s | x, c) (section 3.1, eq. 12): the UNet's own encoder architecture (``conv_in``, the
  same down blocks, cross-attending to the prompt, and the mid block) on the clean latent x, global average
  pooling of the last feature map, one linear layer to the mean and log-variance of a Gaussian style latent s
  (d = 1024 in the paper); s = mu + sigma * eps_s.
- Double cross-attention (section 3.2, eq. 10): z' = Attn(z W_Q^1, c W_K^1, c W_V^1) is the UNet's prompt
  cross-attention (``attn2``); z'' = Attn(z' W_Q^2, s W_K^2, s W_V^2) has its own projections; the block adds
  z' + z''. Built on diffusers' attention-processor mechanism: ``DualCrossAttnProcessor`` replaces ``attn2``'s
  processor and holds the W^2 projections of that block, which live in a ``StyleAdapter`` saved beside the
  UNet. The output projection of z'' starts at zero, so before training the UNet is the prompt-only UNet.
- Loss (eq. 11): || v_t - v_theta(x_t, t, c, s) ||^2 + lambda KL(N(mu, sigma^2) || N(0, I)).
- Sampling (section 4.5): s ~ N(0, sigma_s^2 I) with sigma_s from the generation grid (0, 0.1, 0.3, 0.5).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block


CLUE_DEFAULTS = {"style_dim": 1024, "style_tokens": 1, "kl_weight": 1.0e-4}  # d of the paper; lambda not stated


class StyleEncoder(ModelMixin, ConfigMixin):
    """SE_phi: the UNet's encoder (no timestep embedding: it sees the clean latent), pooled, then one linear
    layer to (mu, log sigma^2). ``forward(latents (B, C, h, w), prompt (B, L, D)) -> (mu, logvar)``, each
    (B, style_dim)."""

    @register_to_config
    def __init__(self, in_channels: int, block_out_channels: Sequence[int], down_block_types: Sequence[str],
                 layers_per_block: int, cross_attention_dim: int, num_attention_heads: int, norm_num_groups: int,
                 style_dim: int):
        super().__init__()
        boc = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, boc[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(down_block_types):
            self.down_blocks.append(get_down_block(
                kind, num_layers=layers_per_block, in_channels=boc[max(i - 1, 0)], out_channels=boc[i],
                temb_channels=None, add_downsample=i < len(boc) - 1, resnet_eps=1e-5, resnet_act_fn="silu",
                resnet_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
                num_attention_heads=num_attention_heads, attention_head_dim=boc[i] // num_attention_heads,
                downsample_padding=1))
        self.mid_block = UNetMidBlock2DCrossAttn(
            in_channels=boc[-1], temb_channels=None, resnet_eps=1e-5, resnet_act_fn="silu",
            resnet_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
            num_attention_heads=num_attention_heads)
        self.to_stats = nn.Linear(boc[-1], 2 * style_dim)

    @classmethod
    def like(cls, unet: UNet2DConditionModel, style_dim: int) -> "StyleEncoder":
        """The encoder half of ``unet``'s architecture (CLUE reuses SD 2.1's U-Net encoder)."""
        c = unet.config
        heads = c.num_attention_heads or c.attention_head_dim  # diffusers reads attention_head_dim as the head count
        heads = heads if isinstance(heads, int) else heads[0]
        return cls(c.in_channels, list(c.block_out_channels), list(c.down_block_types), int(c.layers_per_block),
                   int(c.cross_attention_dim), int(heads), int(c.norm_num_groups), style_dim)

    def forward(self, latents: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv_in(latents)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(h, temb=None, encoder_hidden_states=prompt)
            else:
                h, _ = block(h, temb=None)
        h = self.mid_block(h, temb=None, encoder_hidden_states=prompt)
        mu, logvar = self.to_stats(h.mean((2, 3))).chunk(2, dim=1)  # (B, style_dim) each
        return mu, logvar


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(sigma^2)) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2), per sample (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def sample_style(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Eq. (12): s = mu + sigma * eps_s, eps_s ~ N(0, I) (the reparameterisation trick)."""
    eps = torch.randn(mu.shape, generator=generator).to(mu)
    return mu + (0.5 * logvar).exp() * eps


class StyleAttention(nn.Module):
    """The second cross-attention of one transformer block: queries from z', keys and values from the style
    tokens, with its own W_Q^2, W_K^2, W_V^2 and a zero-initialised output projection."""

    def __init__(self, hidden_size: int, token_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(hidden_size, hidden_size, bias=False)
        self.to_k = nn.Linear(token_dim, hidden_size, bias=False)
        self.to_v = nn.Linear(token_dim, hidden_size, bias=False)
        self.to_out = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, z: torch.Tensor, style: torch.Tensor) -> torch.Tensor:  # (B, N, hidden), (B, T, token_dim)
        b, n, hidden = z.shape
        split = lambda t: t.view(b, -1, self.heads, hidden // self.heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.to_q(z)), split(self.to_k(style)), split(self.to_v(style)))
        return self.to_out(out.transpose(1, 2).reshape(b, n, hidden))


class StyleAdapter(ModelMixin, ConfigMixin):
    """The W^2 projections of every transformer block, in the order of the UNet's ``attn2`` processors; the
    style latent (B, style_dim) is split into ``style_tokens`` tokens (1 in the paper: s is one 1 x 1024 token)."""

    @register_to_config
    def __init__(self, hidden_sizes: Sequence[int], heads: Sequence[int], style_dim: int, style_tokens: int = 1):
        super().__init__()
        if style_dim % style_tokens:
            raise ValueError(f"`style_dim` ({style_dim}) must be divisible by `style_tokens`, got {style_tokens}")
        self.layers = nn.ModuleList(StyleAttention(h, style_dim // style_tokens, n)
                                    for h, n in zip(hidden_sizes, heads))

    @classmethod
    def like(cls, unet: UNet2DConditionModel, style_dim: int, style_tokens: int = 1) -> "StyleAdapter":
        blocks = [unet.get_submodule(name.removesuffix(".processor")) for name in _cross_attention_names(unet)]
        return cls([b.to_q.in_features for b in blocks], [b.heads for b in blocks], style_dim, style_tokens)

    def tokens(self, style: torch.Tensor) -> torch.Tensor:
        """(B, style_dim) -> (B, style_tokens, style_dim / style_tokens)."""
        return style.view(style.shape[0], self.config.style_tokens, -1)


def _cross_attention_names(unet: UNet2DConditionModel) -> list[str]:
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


class SelfAttnProcessor(AttnProcessor2_0):
    """``attn1``'s usual processor; accepts the ``style`` keyword every processor receives and ignores it."""

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 style=None, *args, **kwargs):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class DualCrossAttnProcessor:
    """``attn2``: z' from the prompt (diffusers' processor), then z'' = StyleAttention(z', s); returns z' + z''.
    Without ``style`` it is the plain prompt cross-attention."""

    def __init__(self, layer: StyleAttention):
        self.layer = layer
        self.base = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 style=None, *args, **kwargs):
        z1 = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if style is None:
            return z1
        if z1.ndim == 4:  # diffusers passes (B, C, H, W) through some blocks
            raise ValueError("DualCrossAttnProcessor expects token inputs (B, N, C)")
        dtype = self.layer.to_out.weight.dtype  # the adapter's own: FP32 beside a bf16-sampled UNet
        return z1 + self.layer(z1.to(dtype), style.to(dtype)).to(z1.dtype)


def attach_style_adapter(unet: UNet2DConditionModel, adapter: StyleAdapter) -> None:
    """Install the double cross-attention: every ``attn2`` gets its block's StyleAttention, ``attn1`` a processor
    that ignores the style keyword."""
    names = _cross_attention_names(unet)
    if len(names) != len(adapter.layers):
        raise ValueError(f"the style adapter has {len(adapter.layers)} layers, the UNet {len(names)} cross-attentions")
    layers = dict(zip(names, adapter.layers))
    unet.set_attn_processor({name: DualCrossAttnProcessor(layers[name]) if name in layers else SelfAttnProcessor()
                             for name in unet.attn_processors})
