"""Class-conditioned latent diffusion: ``UNet2DConditionModel`` on autoencoder latents, v-prediction.

Conditioning is the fixed-format prompt of each class (CLUE Table 1). With no pretrained text encoder on disk,
``PromptEncoder`` embeds the prompt's words with a small embedding table learnt together with the UNet; the
empty prompt is the unconditional input used for classifier-free guidance (the prompt is dropped with
probability ``cond_dropout`` during training).

Training objective, eq. (8) of the CLUE paper: || v_t - v_theta(x_t, t, c) ||^2 with
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps and v_t = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (eq. 4).
"""
from __future__ import annotations

import re
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


def diffusion_loss(unet, prompt_encoder, scheduler, latents, labels, cond_dropout: float,
                   gen: torch.Generator) -> torch.Tensor:
    """One denoising loss (eq. 8 for v-prediction, the simplified epsilon loss otherwise)."""
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
    pred = unet(noisy, t, encoder_hidden_states=prompt_encoder(cond)).sample
    return F.mse_loss(pred, target)


def train_diffusion(manifest: str | Path, ae_dir: str | Path, model_dir: str | Path, log_table: str | Path,
                    params: Mapping[str, Any], threads: int | None = None) -> None:
    """Entry point of the diffusion rule."""
    set_threads(threads)
    gen = seed_everything(int(params["seed"]))
    device = select_device(params["device"])
    classes = list(params["classes"])
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
    log.info("UNet and prompt encoder trained from scratch (no pretrained weights): UNet %.2f M parameters, "
             "latents %s", sum(p.numel() for p in unet.parameters()) / 1e6, tuple(mean.shape[1:]))
    sched = noise_scheduler(params)
    opt = torch.optim.AdamW(list(unet.parameters()) + list(penc.parameters()), lr=float(params["lr"]))
    ckpt = Checkpoint(Path(model_dir).with_name(Path(model_dir).name + ".resume.pt"), params)
    start, rows = ckpt.load({"unet": unet, "prompt_encoder": penc}, {"opt": opt}, gen)
    steps, bs = int(params["steps"]), int(params["batch_size"])
    unet.train()
    for step in tqdm(range(start, steps), initial=start, total=steps, desc="diffusion", mininterval=10):
        idx = torch.randint(0, len(mean), (bs,), generator=gen)
        lat = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen).to(device)  # posterior sample
        loss = diffusion_loss(unet, penc, sched, lat, y[idx].to(device), float(params["cond_dropout"]), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rows.append({"step": step + 1, "loss": loss.item()})
        if (step + 1) % int(params["checkpoint_every"]) == 0 and step + 1 < steps:
            ckpt.save({"unet": unet, "prompt_encoder": penc}, {"opt": opt}, gen, step + 1, rows)
    write_parquet(pd.DataFrame(rows), log_table)
    with atomic_path(model_dir) as tmp:
        unet.save_pretrained(tmp / "unet")
        penc.save_pretrained(tmp / "prompt_encoder")
        DDIMScheduler.from_config(sched.config).save_pretrained(tmp / "scheduler")
    ckpt.remove()


def load_diffusion(model_dir: str | Path, device: torch.device):
    model_dir = Path(model_dir)
    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet")).to(device).eval()
    penc = PromptEncoder.from_pretrained(str(model_dir / "prompt_encoder")).to(device).eval()
    sched = DDIMScheduler.from_pretrained(str(model_dir / "scheduler"))
    return unet, penc, sched
