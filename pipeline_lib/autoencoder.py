"""Autoencoders of the latent diffusion models: a KL-VAE (``diffusers.AutoencoderKL``, 4 or 8 latent channels)
and a VQ-GAN (``diffusers.VQModel`` + perceptual loss + PatchGAN discriminator).

- KL (multi-level embedding paper, section III.B): loss = w_kl KL + w_l1 L1 + w_l2 L2 + w_ssim (1 - SSIM), Adam;
  optionally + w_p perceptual (``perceptual_weight``, default 0: not in the paper, which names no perceptual term
  for its VAE; Stable Diffusion's autoencoder is trained with LPIPS, Rombach et al. 2022, section 3.1) and
  + w_adv adversarial (``adversarial_weight``, default 0: Stable Diffusion's patch-based adversarial objective,
  the same PatchGAN as the VQ-GAN's, from ``discriminator.start_step`` on; a fixed weight, not the adaptive one
  of Esser et al. 2021, eq. 7, as the VQ-GAN here).
- VQ (cLDM paper, section 3.2): loss = w_mse MSE + w_cb L_cb + beta L_commit + w_p perceptual
  + w_adv adversarial (from ``discriminator.start_step`` on), the PatchGAN discriminator updated after every step.

Several named autoencoders can be configured side by side (``autoencoder.<name>``). A model can start from a
local diffusers folder (``pretrained``, e.g. Stable Diffusion's ``vae/``); layers whose shapes change with the
latent channels (4 -> 8: the encoder's ``conv_out``, ``quant_conv``, ``post_quant_conv``, the decoder's
``conv_in``) are re-initialised. The latent scaling factor (1 / std of the training latents, Stable Diffusion's
0.18215) is measured after training and saved in the model's config, so later stages rebuild it with
``from_pretrained`` alone.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL, VQModel
from tqdm import tqdm

from .io import atomic_path, log, write_parquet
from .metrics import ms_ssim, ms_ssim_scales, mse, psnr, ssim
from .perceptual import load_perceptual
from .speed import Speed
from .torchutils import (Checkpoint, adam, fingerprint, learning_rate_schedule, load_adapted, load_images,
                         seed_everything, select_device, set_threads, to_device)
from .vqgan import PatchDiscriminator, discriminator_loss, generator_loss, vector_quantize

GENERATIVE_SPLITS = ("train_a", "train_b")  # the only splits a generative model may see (CLUE section 4.2)


def check_generative_splits(splits, key: str) -> None:
    """Refuse training splits beyond ``GENERATIVE_SPLITS``; the error names the config ``key``."""
    bad = sorted(set(splits) - set(GENERATIVE_SPLITS))
    if bad:
        raise ValueError(f"{key} may only hold {GENERATIVE_SPLITS}, got {bad}")
MODEL_CLASSES = {"kl": AutoencoderKL, "vq": VQModel}
LOSS_DEFAULTS = {
    "kl": {"kl_weight": 1.0e-6, "l1_weight": 1.0, "l2_weight": 1.0, "ssim_weight": 0.2, "perceptual_weight": 0.0,
           "adversarial_weight": 0.0},
    "vq": {"mse_weight": 1.0, "codebook_weight": 1.0, "commitment_beta": 0.2, "perceptual_weight": 1.0,
           "adversarial_weight": 0.1},
}


def loss_weights(params: Mapping[str, Any]) -> dict[str, float]:
    """The type's default loss weights updated by ``params["loss"]``; a weight of the other type is an error."""
    kind = params["type"]
    given = dict(params.get("loss") or {})
    foreign = sorted(set(given) - set(LOSS_DEFAULTS[kind]))
    if foreign:
        raise ValueError(f"autoencoder.{params.get('name', '?')}.loss: {foreign} do not apply to type {kind!r} "
                         f"(its terms: {sorted(LOSS_DEFAULTS[kind])})")
    return {k: float(v) for k, v in {**LOSS_DEFAULTS[kind], **given}.items()}


def build_autoencoder(params: Mapping[str, Any], image_size: int) -> AutoencoderKL | VQModel:
    """A new autoencoder from ``params``, or the ``pretrained`` local folder adapted to ``latent_channels``."""
    kind, channels = params.get("type", "kl"), int(params["latent_channels"])
    if kind not in MODEL_CLASSES:
        raise ValueError(f"autoencoder type must be one of {sorted(MODEL_CLASSES)}, got {kind!r}")
    if kind == "kl" and channels not in (4, 8):
        raise ValueError(f"`latent_channels` must be 4 or 8, got {channels}")
    cls = MODEL_CLASSES[kind]
    if params.get("pretrained"):
        return _from_pretrained(cls, Path(params["pretrained"]), channels)
    n = len(params["block_out_channels"])
    common = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                  up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(params["block_out_channels"]),
                  layers_per_block=int(params["layers_per_block"]), latent_channels=channels,
                  norm_num_groups=int(params["norm_num_groups"]), sample_size=image_size)
    if kind == "vq":
        return VQModel(**common, num_vq_embeddings=int(params["num_vq_embeddings"]))
    return AutoencoderKL(**common)


def _from_pretrained(cls, path: Path, channels: int):
    """The saved model's architecture with ``channels`` latent channels (see ``load_adapted``)."""
    try:
        ae, fresh = load_adapted(cls, path, {"latent_channels": channels})
    except FileNotFoundError as e:
        raise FileNotFoundError(f"autoencoder pretrained: {e}") from None
    log.info("fine-tuning %s from %s with %d latent channels; re-initialised: %s", cls.__name__, path, channels,
             sorted({k.rsplit(".", 1)[0] for k in fresh}) or "none")
    return ae


# --- latents, as the later stages see them --------------------------------------------------------------------

@torch.no_grad()
def encode_latents(ae: AutoencoderKL | VQModel, x: torch.Tensor, device: torch.device, batch_size: int = 256
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled latents of images ``x`` (N, 3, H, W): the KL posterior's mean and std, or the VQ encoder output
    before quantisation and zeros (its decoder quantises). Both (N, C, h, w), times the scaling factor."""
    means, stds = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        if isinstance(ae, VQModel):
            h = ae.encode(xb).latents
            means.append(h)
            stds.append(torch.zeros_like(h))
        else:
            dist = ae.encode(xb).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    sf = float(ae.config.scaling_factor)
    return torch.cat(means) * sf, torch.cat(stds) * sf


@torch.no_grad()
def decode_latents(ae: AutoencoderKL | VQModel, z: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) from scaled latents (VQ: quantised to the codebook first)."""
    return ae.decode(z / float(ae.config.scaling_factor)).sample.float().clamp(-1, 1)


def load_autoencoder(model_dir: str | Path, device: torch.device, speed: Speed | None = None
                     ) -> AutoencoderKL | VQModel:
    """The saved autoencoder of either type, in eval mode; prepared by ``speed`` (layout, attention, compile)."""
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no saved autoencoder there (config.json missing)")
    name = AutoencoderKL.load_config(str(model_dir)).get("_class_name")
    cls = {c.__name__: c for c in MODEL_CLASSES.values()}.get(name)
    if cls is None:
        raise ValueError(f"{model_dir}: expected an AutoencoderKL or VQModel, the config says {name!r}")
    ae = cls.from_pretrained(str(model_dir)).to(device).eval()
    return speed.prepare(ae) if speed is not None else ae


# --- losses -----------------------------------------------------------------------------------------------------

def autoencoder_loss(ae: AutoencoderKL, x: torch.Tensor, weights: Mapping[str, float],
                     perceptual: torch.nn.Module | None = None, disc: PatchDiscriminator | None = None,
                     gan_loss: str = "hinge") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """KL + L1 + L2 + (1 - SSIM), each weighted (multi-level paper III.B); returns every term with the total, and
    the reconstructions. KL is that of the posterior to N(0, I), summed over latent elements and divided by the
    image's elements. With a ``perceptual_weight`` above 0, plus that weight times the mean ``perceptual``
    distance (LPIPS or its domain-network substitute, ``pipeline_lib.perceptual``) of the reconstructions to the
    images; with an ``adversarial_weight`` above 0, plus that weight times the generator loss of ``disc`` on the
    reconstructions (0 while ``disc`` is None: before the discriminator's start step)."""
    posterior = ae.encode(x).latent_dist
    rec = ae.decode(posterior.sample()).sample
    terms = {"kl": posterior.kl().mean() / x[0].numel(), "l1": (rec - x).abs().mean(), "l2": (rec - x).pow(2).mean(),
             "ssim": 1 - ssim(rec, x).mean()}
    if weights.get("perceptual_weight", 0.0) > 0:
        if perceptual is None:
            raise ValueError("autoencoder loss: perceptual_weight is above 0 but no perceptual distance was given")
        terms["perceptual"] = perceptual(rec, x).mean()
    if weights.get("adversarial_weight", 0.0) > 0:
        terms["adversarial"] = (generator_loss(disc(rec), gan_loss) if disc is not None
                                else torch.zeros((), device=x.device))
    terms["loss"] = sum(weights[f"{k}_weight"] * v for k, v in terms.items())
    return terms, rec


def discriminator_step(disc: PatchDiscriminator, opt: torch.optim.Optimizer, x: torch.Tensor, rec: torch.Tensor,
                       gan_loss: str, autocast: contextlib.AbstractContextManager) -> float:
    """One update of the PatchGAN on real ``x`` against the detached reconstructions ``rec``; its loss."""
    with autocast:
        d_loss = discriminator_loss(disc(x), disc(rec.detach()), gan_loss)
    opt.zero_grad(set_to_none=True)
    d_loss.backward()
    opt.step()
    return d_loss.item()


def kl_step(ae: AutoencoderKL, disc: PatchDiscriminator | None, perceptual: torch.nn.Module | None, x: torch.Tensor,
            weights: Mapping[str, float], optimizers: Mapping[str, torch.optim.Optimizer], adversarial: bool,
            gan_loss: str = "hinge", autocast: contextlib.AbstractContextManager | None = None) -> dict[str, float]:
    """One KL-VAE update (``autoencoder_loss``), then, when ``adversarial``, one of the discriminator."""
    autocast = autocast or contextlib.nullcontext()
    with autocast:
        terms, rec = autoencoder_loss(ae, x, weights, perceptual, disc if adversarial else None, gan_loss)
    optimizers["ae"].zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizers["ae"].step()
    out = {k: v.item() for k, v in terms.items()}
    if disc is not None:
        out["discriminator"] = (discriminator_step(disc, optimizers["disc"], x, rec, gan_loss, autocast)
                                if adversarial else float("nan"))
    return out


def vqgan_step(ae: VQModel, disc: PatchDiscriminator | None, perceptual: torch.nn.Module, x: torch.Tensor,
               weights: Mapping[str, float], optimizers: Mapping[str, torch.optim.Optimizer], adversarial: bool,
               gan_loss: str = "hinge", autocast: contextlib.AbstractContextManager | None = None) -> dict[str, float]:
    """One VQ-GAN update: the autoencoder on MSE + L_cb + beta L_commit + perceptual (+ adversarial), then,
    when ``adversarial``, the discriminator on real ``x`` against the detached reconstructions. The forward
    passes run in ``autocast`` (bf16 on a GPU when asked for; the backward passes outside it)."""
    autocast = autocast or contextlib.nullcontext()
    with autocast:
        zq, cb, commit, idx = vector_quantize(ae, ae.encode(x).latents)
        rec = ae.decode(zq, force_not_quantize=True).sample
        terms = {"mse": torch.nn.functional.mse_loss(rec, x), "codebook": cb, "commitment": commit,
                 "perceptual": perceptual(rec, x).mean()}
        terms["adversarial"] = (generator_loss(disc(rec), gan_loss) if adversarial
                                else torch.zeros((), device=x.device))
        terms["loss"] = (weights["mse_weight"] * terms["mse"] + weights["codebook_weight"] * cb
                         + weights["commitment_beta"] * commit + weights["perceptual_weight"] * terms["perceptual"]
                         + weights["adversarial_weight"] * terms["adversarial"])
    optimizers["ae"].zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizers["ae"].step()
    out = {k: v.item() for k, v in terms.items()}
    out["codes_used"] = int(idx.unique().numel())
    out["discriminator"] = (discriminator_step(disc, optimizers["disc"], x, rec, gan_loss, autocast) if adversarial
                            else float("nan"))
    return out


def _patch_output_size(size: int, n_layers: int) -> int:
    size //= 2  # first 4x4 stride-2 convolution
    for _ in range(1, n_layers):
        size //= 2
    return size - 2  # the stride-1 layer and the output layer each remove one pixel


# --- training -----------------------------------------------------------------------------------------------------

def mirror_batch(batch: torch.Tensor, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """``autoencoder.<name>.hflip``: the whole batch mirrored horizontally with probability 1/2 (no random number
    is drawn when off)."""
    return batch.flip(-1) if hflip and torch.rand((), generator=gen) < 0.5 else batch


def train_autoencoder(manifest: str | Path, model_dir: str | Path, log_table: str | Path,
                      params: Mapping[str, Any], feature_net: str | Path | None = None,
                      threads: int | None = None) -> None:
    """Entry point of the autoencoder rule: train on ``train_splits``, save with ``save_pretrained``.

    ``feature_net`` (the domain network) is the VQ-GAN's perceptual network when no LPIPS backbone is configured.
    A killed job resumes from its last checkpoint (``<model_dir>.resume.pt``) and ends with the same numbers.
    """
    set_threads(threads)
    gen = seed_everything(int(params["seed"]))
    device = select_device(params["device"])
    kind, name = params.get("type", "kl"), params.get("name", "autoencoder")
    check_generative_splits(params["train_splits"], f"autoencoder.{name}.train_splits")
    if int(params["steps"]) == 0 and not params.get("pretrained"):
        raise ValueError(f"autoencoder.{name}.steps: 0 keeps pretrained weights as they are, and "
                         f"autoencoder.{name}.pretrained is not set: the autoencoder would stay untrained")
    if int(params["steps"]) == 0:
        saved = int(AutoencoderKL.load_config(str(params["pretrained"])).get("latent_channels", -1))
        if saved != int(params["latent_channels"]):
            raise ValueError(f"autoencoder.{name}.latent_channels: {params['latent_channels']}, but "
                             f"{params['pretrained']} has {saved} and steps is 0: its re-initialised latent layers "
                             f"would stay untrained; set latent_channels: {saved} or train (steps > 0)")
    weights = loss_weights(params)
    x, _, _ = load_images(manifest, params["train_splits"], list(params["classes"]))
    ae = build_autoencoder(params, x.shape[-1]).to(device)
    modules: dict[str, torch.nn.Module] = {"ae": ae}
    optimizers: dict[str, Any] = {"ae": adam(ae.parameters(), float(params["lr"]))}
    # the autoencoder's learning rate (the discriminator's stays constant); unset: constant, as before
    optimizers["ae_lr"] = learning_rate_schedule(optimizers["ae"], params, f"autoencoder.{name}")
    disc, start_adv, gan_loss = None, int(params["steps"]) + 1, "hinge"  # no adversarial term: the step never comes
    if weights["adversarial_weight"] > 0:  # the VQ-GAN's by default; the KL-VAE's when asked for
        d = params.get("discriminator")
        if not d:
            raise ValueError(f"autoencoder.{name}.loss.adversarial_weight is above 0 but the job's parameters have no "
                             f"autoencoder.{name}.discriminator section")
        if _patch_output_size(x.shape[-1], int(d["layers"])) < 1:
            raise ValueError(f"autoencoder.{name}.discriminator.layers: {d['layers']} layers leave no patch of a "
                             f"{x.shape[-1]} px image; use fewer")
        disc = PatchDiscriminator(3, int(d["channels"]), int(d["layers"])).to(device)
        modules["disc"] = disc
        optimizers["disc"] = adam(disc.parameters(), float(d["lr"]), betas=(0.5, 0.9))
        start_adv, gan_loss = int(d["start_step"]), d.get("gan_loss", "hinge")
    perceptual = None
    if kind == "vq" or weights["perceptual_weight"] > 0:
        if "perceptual" not in params:
            raise ValueError(f"autoencoder.{name}: a perceptual term needs the config's perceptual section in the "
                             f"job's parameters")
        perceptual = load_perceptual(params["perceptual"], feature_net, device)
    if not params.get("pretrained"):
        log.info("%s autoencoder %s trained from scratch (no pretrained weights)", kind, name)
    log.info("%.2f M parameters, %d training images of %d px", sum(p.numel() for p in ae.parameters()) / 1e6,
             len(x), x.shape[-1])
    ckpt = Checkpoint(Path(model_dir).with_name(Path(model_dir).name + ".resume.pt"),
                      {**params, "data": fingerprint(x)})
    start, rows = ckpt.load(modules, optimizers, gen)
    steps, bs = int(params["steps"]), int(params["batch_size"])
    hflip = bool(params.get("hflip", True))
    speed = Speed.from_params(params).enable(device)
    for m in modules.values():
        speed.prepare(m)
    ae.train()
    step_fn = vqgan_step if kind == "vq" else kl_step
    for step in tqdm(range(start, steps), initial=start, total=steps, desc=f"autoencoder {name}", mininterval=10):
        idx = torch.randint(0, len(x), (bs,), generator=gen)
        batch = to_device(x[idx], device)
        batch = mirror_batch(batch, hflip, gen)
        batch = speed.batch(batch)
        row = step_fn(ae, disc, perceptual, batch, weights, optimizers, step >= start_adv, gan_loss,
                      speed.autocast(device))
        if not np.isfinite(row["loss"]):
            raise FloatingPointError(f"autoencoder {name}: loss is {row['loss']} at step {step + 1} ({row})")
        rows.append({"step": step + 1, **row, "lr": optimizers["ae"].param_groups[0]["lr"]})  # this step's rate
        optimizers["ae_lr"].step()
        if (step + 1) % int(params["checkpoint_every"]) == 0 and step + 1 < steps:
            ckpt.save(modules, optimizers, gen, step + 1, rows)
    ae.eval()
    scaling, source = latent_scaling(ae, x, device, params)
    log.info("scaling factor %.5f (%s)", scaling, source)
    write_parquet(pd.DataFrame(rows), log_table)
    with atomic_path(model_dir) as tmp:
        ae.save_pretrained(tmp)
        (tmp / SCALING_FILE).write_text(json.dumps({"scaling_factor": scaling, "source": source}))
    ckpt.remove()


SCALING_FILE = "scaling.json"  # beside the saved autoencoder: its scaling factor and where it came from


def latent_scaling(ae: AutoencoderKL | VQModel, x: torch.Tensor, device: torch.device, params: Mapping[str, Any]
                   ) -> tuple[float, str]:
    """The latent scaling factor, set in ``ae``'s config, and its source. A pretrained autoencoder with its own
    latent layers keeps the folder's factor (Stable Diffusion's VAE: 0.18215; SD's UNet expects latents of that
    scale), whether used as is or fine-tuned; an autoencoder trained from scratch, or whose latent layers were
    re-initialised for other latent channels, gets 1 / std of its training latents (the LDM paper's choice)."""
    if params.get("pretrained"):
        saved = AutoencoderKL.load_config(str(params["pretrained"]))
        if int(saved.get("latent_channels", -1)) == int(ae.config.latent_channels) and "scaling_factor" in saved:
            scaling = float(saved["scaling_factor"])
            ae.register_to_config(scaling_factor=scaling)
            return scaling, f"pretrained: {params['pretrained']}"
    ae.register_to_config(scaling_factor=1.0)
    latents, _ = encode_latents(ae, x, device)
    scaling = float(1.0 / latents.std())
    ae.register_to_config(scaling_factor=scaling)
    return scaling, f"measured: 1 / std of {len(x)} training images' latents {tuple(latents.shape[1:])}"


def scaling_record(model_dir: str | Path) -> dict[str, Any]:
    """The saved autoencoder's scaling factor and its source (older folders: the config's factor, source unknown)."""
    path = Path(model_dir) / SCALING_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return {"scaling_factor": float(AutoencoderKL.load_config(str(model_dir))["scaling_factor"]), "source": "unknown"}


# --- reconstruction quality ---------------------------------------------------------------------------------------

RECON_SPLIT = "test"  # never seen by the autoencoder (GENERATIVE_SPLITS); the split of Table 1's comparison


@torch.no_grad()
def reconstruction_metrics(manifest: str | Path, model_dir: str | Path, table: str | Path, per_image: str | Path,
                           params: Mapping[str, Any], feature_net: str | Path | None = None,
                           threads: int | None = None) -> pd.DataFrame:
    """Entry point of the autoencoder_metrics rule: MSE, PSNR (dB), SSIM, MS-SSIM and LPIPS (or the named
    substitute) of the posterior-mean / quantised reconstructions of the test split, per image and, as the
    multi-level paper's Table 1, as means per class and over all images."""
    set_threads(threads)
    device = select_device(params["device"])
    classes = list(params["classes"])
    ae = load_autoencoder(model_dir, device)
    perceptual = load_perceptual(params["perceptual"], feature_net, device)
    x, _, rows = load_images(manifest, [RECON_SPLIT], classes)
    cols: dict[str, list] = {"mse": [], "psnr": [], "ssim": [], "ms_ssim": [], perceptual.name: []}
    for i in range(0, len(x), 128):
        xb = x[i:i + 128].to(device)
        mean, _ = encode_latents(ae, xb, device)
        rec = decode_latents(ae, mean)
        for key, fn in (("mse", mse), ("psnr", psnr), ("ssim", ssim), ("ms_ssim", ms_ssim),
                        (perceptual.name, perceptual)):
            cols[key].append(fn(rec, xb).double().cpu())
    per = pd.DataFrame({"image_id": rows["image_id"], "label": rows["label"], "split": rows["split"],
                        **{k: torch.cat(v).numpy() for k, v in cols.items()}})
    summary = []
    for label, part in [*((c, per[per["label"] == c]) for c in classes), ("all", per)]:
        if len(part):
            summary.append({"autoencoder": params["name"], "type": params["type"],
                            "latent_channels": int(ae.config.latent_channels), "class": label,
                            "n_images": len(part), **part[list(cols)].mean().to_dict()})
    scaling = scaling_record(model_dir)
    out = pd.DataFrame(summary).assign(ms_ssim_scales=ms_ssim_scales(x.shape[-1]),
                                       scaling_factor=scaling["scaling_factor"], scaling_source=scaling["source"])
    log.info("%s on %s: %s", params["name"], RECON_SPLIT,
             out[out["class"] == "all"][list(cols)].round(4).to_dict("records")[0])
    write_parquet(per, per_image)
    write_parquet(out, table)
    return out
