"""Latent diffusion: ``UNet2DConditionModel`` on autoencoder latents, v-prediction, conditioned on the class
prompt (``class``) or on the prompt and a CLUE style latent (``clue``, see ``pipeline_lib.clue``).

Conditioning is the fixed-format prompt of each class (CLUE Table 1). With no pretrained text encoder on disk,
``PromptEncoder`` embeds the prompt's words with a small embedding table learnt together with the UNet; the
empty prompt is the unconditional input used for classifier-free guidance (the prompt is dropped with
probability ``cond_dropout`` during training).

Training objective, eq. (8) of the CLUE paper: || v_t - v_theta(x_t, t, c) ||^2 with
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps and v_t = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (eq. 4).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from tqdm import tqdm

from .autoencoder import GENERATIVE_SPLITS, encode_latents, load_autoencoder
from .clue import (StyleAdapter, StyleEncoder, attach_style_adapter, clue_settings, kl_to_standard_normal,
                   sample_style)
from .io import atomic_path, log, write_parquet
from .torchutils import Checkpoint, load_images, seed_everything, select_device, set_threads


def tokenize(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", prompt.lower())


class PromptEncoder(ModelMixin, ConfigMixin):
    """Word embeddings plus positions for a fixed set of prompts; output (B, max_length, dim)."""

    @register_to_config
    def __init__(self, classes: list[str], prompts: list[str], dim: int = 32, max_length: int = 16):
        super().__init__()
        if len(classes) != len(prompts):
            raise ValueError(f"expected one prompt per class, got {len(prompts)} prompts for {len(classes)} classes")
        words = sorted({w for p in prompts for w in tokenize(p)})
        self.vocab = {"<pad>": 0} | {w: i + 1 for i, w in enumerate(words)}
        ids = torch.zeros(len(prompts) + 1, max_length, dtype=torch.long)  # last row: the empty prompt
        for i, p in enumerate(prompts):
            toks = [self.vocab[w] for w in tokenize(p)][:max_length]
            ids[i, : len(toks)] = torch.tensor(toks)
        self.register_buffer("prompt_ids", ids, persistent=False)
        self.embed = torch.nn.Embedding(len(self.vocab), dim)
        self.position = torch.nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.norm = torch.nn.LayerNorm(dim)

    @property
    def null_index(self) -> int:
        return len(self.config.prompts)

    def forward(self, class_index: torch.Tensor) -> torch.Tensor:
        """``class_index`` (B,) with ``null_index`` for the empty prompt -> (B, max_length, dim)."""
        return self.norm(self.embed(self.prompt_ids[class_index]) + self.position)


def build_unet(sample_size: int, channels: int, params: Mapping[str, Any]) -> UNet2DConditionModel:
    boc = tuple(params["block_out_channels"])
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in params["attention_levels"])
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(params["attention_levels"]))
    if len(down) != len(boc):
        raise ValueError(f"diffusion.attention_levels needs one entry per block ({len(boc)}), got {len(down)}")
    return UNet2DConditionModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                                down_block_types=down, up_block_types=up, block_out_channels=boc,
                                layers_per_block=int(params["layers_per_block"]),
                                cross_attention_dim=int(params["cross_attention_dim"]),
                                attention_head_dim=int(params["attention_head_dim"]),
                                norm_num_groups=int(params["norm_num_groups"]))


def noise_scheduler(params: Mapping[str, Any]) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=int(params["num_train_timesteps"]), beta_schedule=params["beta_schedule"],
                         beta_start=float(params["beta_start"]), beta_end=float(params["beta_end"]),
                         prediction_type=params["prediction_type"], clip_sample=False)


CONDITIONINGS = ("class", "clue")


@dataclass
class DiffusionModel:
    """What sampling needs: the UNet, the prompt encoder, the DDIM scheduler and, for CLUE, the style adapter
    (installed in the UNet's attention processors)."""
    unet: UNet2DConditionModel
    prompt_encoder: PromptEncoder
    scheduler: DDIMScheduler
    style_adapter: StyleAdapter | None = None


def diffusion_loss(unet, prompt_encoder, scheduler, latents, labels, cond_dropout: float, gen: torch.Generator,
                   style: tuple[StyleEncoder, StyleAdapter, float] | None = None) -> dict[str, torch.Tensor]:
    """One denoising loss: eq. (8) of the CLUE paper for v-prediction (the simplified epsilon loss otherwise);
    with ``style = (encoder, adapter, lambda)`` the CLUE objective of eq. (11), the style latent drawn from the
    encoder's posterior on the clean latent and the (possibly dropped) prompt by eq. (12)."""
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=gen).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen).to(latents.device)
    drop = torch.rand(b, generator=gen).to(latents.device) < cond_dropout
    cond = torch.where(drop, torch.full_like(labels, prompt_encoder.null_index), labels)
    noisy = scheduler.add_noise(latents, noise, t)  # eq. (4)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)  # v_t of eq. (4)
    else:
        target = noise
    prompt = prompt_encoder(cond)
    kwargs, terms = {}, {}
    if style is not None:
        encoder, adapter, kl_weight = style
        mu, logvar = encoder(latents, prompt)
        kwargs["cross_attention_kwargs"] = {"style": adapter.tokens(sample_style(mu, logvar, gen))}
        terms["kl"] = kl_to_standard_normal(mu, logvar).mean()
    pred = unet(noisy, t, encoder_hidden_states=prompt, **kwargs).sample
    terms["denoise"] = F.mse_loss(pred, target)
    terms["loss"] = terms["denoise"] + (kl_weight * terms["kl"] if style is not None else 0.0)
    return terms


def train_diffusion(manifest: str | Path, ae_dir: str | Path, model_dir: str | Path, log_table: str | Path,
                    params: Mapping[str, Any], threads: int | None = None) -> None:
    """Entry point of the diffusion rule."""
    set_threads(threads)
    gen = seed_everything(int(params["seed"]))
    device = select_device(params["device"])
    classes = list(params["classes"])
    conditioning = params.get("conditioning", "class")
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"diffusion variant {params.get('variant')!r}: conditioning must be one of "
                         f"{CONDITIONINGS}, got {conditioning!r}")
    bad = sorted(set(params["train_splits"]) - set(GENERATIVE_SPLITS))
    if bad:
        raise ValueError(f"diffusion.train_splits may only hold {GENERATIVE_SPLITS}, got {bad}")
    missing = [c for c in classes if c not in params["prompts"]]
    if missing:
        raise ValueError(f"diffusion.prompts: expected a prompt for every class, missing {missing}")
    x, y, _ = load_images(manifest, params["train_splits"], classes)
    x, y = torch.cat([x, x.flip(-1)]), torch.cat([y, y])  # horizontal flips, encoded once up front
    ae = load_autoencoder(ae_dir, device)
    mean, std = encode_latents(ae, x, device)  # KL: posterior mean and std; VQ: pre-quantisation latents, std 0
    del ae
    unet = build_unet(mean.shape[-1], mean.shape[1], params).to(device)
    penc = PromptEncoder(classes, [params["prompts"][c] for c in classes], dim=int(params["cross_attention_dim"]),
                         max_length=int(params["max_prompt_length"])).to(device)
    modules: dict[str, torch.nn.Module] = {"unet": unet, "prompt_encoder": penc}
    style, clue = None, clue_settings(params)
    if clue:
        encoder = StyleEncoder.like(unet, int(clue["style_dim"])).to(device)
        adapter = StyleAdapter.like(unet, int(clue["style_dim"]), int(clue["style_tokens"])).to(device)
        attach_style_adapter(unet, adapter)
        modules |= {"style_encoder": encoder, "style_adapter": adapter}
        style = (encoder, adapter, float(clue["kl_weight"]))
    log.info("%s conditioning, trained from scratch (no pretrained weights): %s; latents %s", conditioning,
             ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M" for k, m in modules.items()),
             tuple(mean.shape[1:]))
    sched = noise_scheduler(params)
    opt = torch.optim.AdamW([p for m in modules.values() for p in m.parameters()], lr=float(params["lr"]))
    ckpt = Checkpoint(Path(model_dir).with_name(Path(model_dir).name + ".resume.pt"), params)
    start, rows = ckpt.load(modules, {"opt": opt}, gen)
    steps, bs = int(params["steps"]), int(params["batch_size"])
    for m in modules.values():
        m.train()
    for step in tqdm(range(start, steps), initial=start, total=steps, desc="diffusion", mininterval=10):
        idx = torch.randint(0, len(mean), (bs,), generator=gen)
        lat = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen).to(device)  # posterior sample
        terms = diffusion_loss(unet, penc, sched, lat, y[idx].to(device), float(params["cond_dropout"]), gen, style)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        rows.append({"step": step + 1, **{k: v.item() for k, v in terms.items()}})
        if (step + 1) % int(params["checkpoint_every"]) == 0 and step + 1 < steps:
            ckpt.save(modules, {"opt": opt}, gen, step + 1, rows)
    write_parquet(pd.DataFrame(rows), log_table)
    with atomic_path(model_dir) as tmp:
        for name, module in modules.items():
            module.save_pretrained(tmp / name)
        DDIMScheduler.from_config(sched.config).save_pretrained(tmp / "scheduler")
    ckpt.remove()


def load_diffusion(model_dir: str | Path, device: torch.device) -> DiffusionModel:
    """The saved model; a CLUE model's style adapter is installed in its UNet (the style encoder is only needed
    in training: sampling draws s from N(0, sigma^2 I))."""
    model_dir = Path(model_dir)
    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet")).to(device).eval()
    penc = PromptEncoder.from_pretrained(str(model_dir / "prompt_encoder")).to(device).eval()
    sched = DDIMScheduler.from_pretrained(str(model_dir / "scheduler"))
    adapter = None
    if (model_dir / "style_adapter").is_dir():
        adapter = StyleAdapter.from_pretrained(str(model_dir / "style_adapter")).to(device).eval()
        attach_style_adapter(unet, adapter)
    return DiffusionModel(unet, penc, sched, adapter)
