"""KL autoencoder (``diffusers.AutoencoderKL``) with the multi-level embedding paper's loss: KL + L1 + L2 + SSIM.

The model is rebuilt from its own saved config (``save_pretrained``); the latent scaling factor (1 / std of
the training latents, as Stable Diffusion's 0.18215) is measured after training and stored in that config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
from diffusers import AutoencoderKL
from tqdm import tqdm

from .io import atomic_path, log, write_parquet
from .metrics import mse, psnr, ssim
from .torchutils import Checkpoint, load_images, seed_everything, select_device, set_threads

GENERATIVE_SPLITS = ("train_a", "train_b")  # the only splits a generative model may see (CLUE section 4.2)


def build_autoencoder(image_size: int, latent_channels: int = 8, block_out_channels=(16, 32),
                      layers_per_block: int = 1, norm_num_groups: int = 8) -> AutoencoderKL:
    if latent_channels not in (4, 8):
        raise ValueError(f"`latent_channels` must be 4 or 8, got {latent_channels}")
    n = len(block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(block_out_channels),
                         layers_per_block=layers_per_block, latent_channels=latent_channels,
                         norm_num_groups=norm_num_groups, sample_size=image_size)


def autoencoder_loss(ae: AutoencoderKL, x: torch.Tensor, weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """KL + L1 + L2 + (1 - SSIM), each weighted; returns every term and the total."""
    posterior = ae.encode(x).latent_dist
    rec = ae.decode(posterior.sample()).sample
    terms = {"kl": posterior.kl().mean() / x[0].numel(), "l1": (rec - x).abs().mean(), "l2": (rec - x).pow(2).mean(),
             "ssim": 1 - ssim(rec, x).mean()}
    terms["loss"] = sum(float(weights[f"{k}_weight"]) * v for k, v in terms.items())
    return terms


def train_autoencoder(manifest: str | Path, model_dir: str | Path, log_table: str | Path,
                      recon_table: str | Path, params: Mapping[str, Any], threads: int | None = None) -> None:
    """Entry point of the autoencoder rule: train on train_a (+ train_b), measure reconstructions on train_b."""
    set_threads(threads)
    gen = seed_everything(int(params["seed"]))
    device = select_device(params["device"])
    classes = list(params["classes"])
    x, _, _ = load_images(manifest, params["train_splits"], classes)
    bad = sorted(set(params["train_splits"]) - set(GENERATIVE_SPLITS))
    if bad:
        raise ValueError(f"autoencoder.train_splits may only hold {GENERATIVE_SPLITS}, got {bad}")
    ae = build_autoencoder(x.shape[-1], params["latent_channels"], params["block_out_channels"],
                           params["layers_per_block"], params["norm_num_groups"]).to(device)
    log.info("autoencoder trained from scratch (no pretrained weights): %.2f M parameters on %d images",
             sum(p.numel() for p in ae.parameters()) / 1e6, len(x))
    opt = torch.optim.AdamW(ae.parameters(), lr=float(params["lr"]))
    ckpt = Checkpoint(Path(model_dir).with_name(Path(model_dir).name + ".resume.pt"), params)
    start, rows = ckpt.load({"ae": ae}, opt, gen)
    steps, bs = int(params["steps"]), int(params["batch_size"])
    ae.train()
    for step in tqdm(range(start, steps), initial=start, total=steps, desc="autoencoder", mininterval=10):
        idx = torch.randint(0, len(x), (bs,), generator=gen)
        batch = x[idx].to(device)
        if torch.rand((), generator=gen) < 0.5:
            batch = batch.flip(-1)
        terms = autoencoder_loss(ae, batch, params["loss"])
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        rows.append({"step": step + 1} | {k: v.item() for k, v in terms.items()})
        if (step + 1) % int(params["checkpoint_every"]) == 0 and step + 1 < steps:
            ckpt.save({"ae": ae}, opt, gen, step + 1, rows)
    ae.eval()
    with torch.no_grad():
        latents = torch.cat([ae.encode(x[i:i + 256].to(device)).latent_dist.mean for i in range(0, len(x), 256)])
    scaling = float(1.0 / latents.std())
    ae.register_to_config(scaling_factor=scaling)
    log.info("latent shape %s, scaling factor %.4f", tuple(latents.shape[1:]), scaling)
    write_parquet(pd.DataFrame(rows), log_table)
    write_parquet(reconstruction_metrics(ae, manifest, classes, device), recon_table)
    with atomic_path(model_dir) as tmp:
        ae.save_pretrained(tmp)
    ckpt.remove()


@torch.no_grad()
def reconstruction_metrics(ae: AutoencoderKL, manifest: str | Path, classes: list[str],
                           device: torch.device) -> pd.DataFrame:
    """Per-image MSE, PSNR (dB) and SSIM of the posterior-mean reconstruction of the validation split (train_b)."""
    x, y, rows = load_images(manifest, ["train_b"], classes)
    recs = torch.cat([ae.decode(ae.encode(x[i:i + 256].to(device)).latent_dist.mean).sample.clamp(-1, 1).cpu()
                      for i in range(0, len(x), 256)])
    return pd.DataFrame({"image_id": rows["image_id"], "label": rows["label"], "split": rows["split"],
                         "mse": mse(recs, x).numpy(), "psnr": psnr(recs, x).numpy(),
                         "ssim": ssim(recs, x).numpy()})


def load_autoencoder(model_dir: str | Path, device: torch.device) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(str(model_dir)).to(device).eval()
