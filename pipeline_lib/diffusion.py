"""Latent diffusion: ``UNet2DConditionModel`` on autoencoder latents, v-prediction, conditioned through one of
the kinds of ``pipeline_lib.conditioning`` (class prompt, CLUE style latent, multi-level embeddings, cluster
ids): the conditioning object builds its modules around the UNet and gives the training step its extra inputs;
this module never branches on the kind.

The condition is dropped with probability ``cond_dropout`` during training (its ``null_index``: the empty prompt
or the empty cluster), the unconditional input of classifier-free guidance.

Training objective, eq. (8) of the CLUE paper: || v_t - v_theta(x_t, t, c) ||^2 with
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps and v_t = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (eq. 4).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from . import distributed
from .autoencoder import check_generative_splits, encode_latents, load_autoencoder
from .conditioning import Conditioning, TrainingData, kind_of, load_conditioning
from .io import atomic_path, log, write_parquet
from .speed import Speed
from .text import text_encoder_folder
from .torchutils import (Checkpoint, adam, fingerprint, learning_rate_schedule, load_adapted, load_images,
                         seed_everything, select_device, set_threads, with_mirrors)


def build_unet(sample_size: int, channels: int, params: Mapping[str, Any], gated: bool = False
               ) -> UNet2DConditionModel:
    """The denoiser; ``gated`` adds GLIGEN's gated self-attention to every transformer block (multi-level).

    With ``params["pretrained"]`` (a local Stable Diffusion folder in diffusers format, e.g. SD 2.1 as in CLUE
    Table 3) the UNet of its ``unet/`` subfolder is the starting point: its architecture, with ``conv_in`` and
    ``conv_out`` re-initialised when the autoencoder's latent channels differ (8-channel VAE); the size keys of
    ``params`` are then not used. ``pooled_prompt`` (not in the papers, whose prompt enters by cross-attention
    only): the conditioning tokens are also pooled into the timestep embedding."""
    pooled = bool(params.get("pooled_prompt", False))
    if params.get("pretrained"):
        if pooled:
            raise ValueError("diffusion.pooled_prompt: true adds a layer to every block's timestep input that a "
                             "pretrained UNet (diffusion.pretrained) never learnt; set it false")
        overrides = {"in_channels": channels, "out_channels": channels, "sample_size": sample_size,
                     "attention_type": "gated" if gated else "default"}
        try:
            unet, fresh = load_adapted(UNet2DConditionModel, params["pretrained"], overrides, subfolder="unet")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"diffusion.pretrained: {e}") from None
        log.info("UNet initialised from %s; re-initialised: %s", params["pretrained"],
                 sorted({k.rsplit(".", 1)[0] for k in fresh if "fuser" not in k and "position_net" not in k})
                 or "none")
        return unet
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
                                norm_num_groups=int(params["norm_num_groups"]),
                                attention_type="gated" if gated else "default",
                                # diffusion.pooled_prompt: the prompt, attention-pooled to one vector, added to the
                                # timestep embedding (diffusers' TextTimeEmbedding, as in unCLIP's decoder), so that
                                # every ResNet block sees the class, not only the cross-attention levels
                                addition_embed_type="text" if pooled else None,
                                addition_embed_type_num_heads=pooling_heads(params))


def pooling_heads(params: Mapping[str, Any]) -> int:
    """Heads of the pooled prompt's attention pooling: the cross-attention's, where its width divides into them."""
    width, head = int(params["cross_attention_dim"]), int(params["attention_head_dim"])
    return width // head if width % head == 0 else 1


# The noise schedule's keys of ``diffusion`` (null: the pretrained folder's value, else the built-in one).
BUILT_IN_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                     "prediction_type": "v_prediction", "timestep_spacing": "leading", "steps_offset": 1,
                     "rescale_betas_zero_snr": False}


def folder_scheduler_config(folder: str | Path) -> dict[str, Any]:
    """The raw ``scheduler/scheduler_config.json`` of a local Stable Diffusion folder (SD 1.5: a PNDM config,
    SD 2.1: a DDIM one)."""
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"diffusion.pretrained: {path} not found; a diffusers Stable Diffusion folder has "
                                f"scheduler/scheduler_config.json, the noise schedule its UNet was trained under")
    return json.loads(path.read_text())


def pretrained_schedule(folder: str | Path) -> dict[str, Any]:
    """The noise schedule of a local Stable Diffusion folder, its scheduler config read as the DDPM schedule it
    defines."""
    config = DDPMScheduler.from_config(folder_scheduler_config(folder)).config
    return {k: config[k] for k in BUILT_IN_SCHEDULE}


def sampling_scheduler(train: DDPMScheduler, params: Mapping[str, Any]) -> DDIMScheduler:
    """The DDIM scheduler saved with the model: the training schedule, and with a pretrained folder its DDIM-only
    ``set_alpha_to_one`` (SD 1.5 / 2.1: false, the last step ends at alpha-bar_0, not at 1)."""
    extra = {}
    if params.get("pretrained"):
        raw = folder_scheduler_config(params["pretrained"])
        extra = {k: raw[k] for k in ("set_alpha_to_one",) if k in raw}
    return DDIMScheduler.from_config({**train.config, **extra})


def noise_scheduler(params: Mapping[str, Any]) -> DDPMScheduler:
    """The training noise schedule. With ``diffusion.pretrained``, the folder's scheduler config (Stable Diffusion
    1.5 / 2.1: scaled_linear 0.00085 .. 0.012, 1000 steps, leading spacing with offset 1; epsilon or v): a
    pretrained UNet knows those noise levels only. A key set in the config overrides it, with a warning; without
    a pretrained UNet, the unset keys are ``BUILT_IN_SCHEDULE`` (CLUE Table 3: linear 1e-4 .. 0.02, v)."""
    explicit = {k: params[k] for k in BUILT_IN_SCHEDULE if params.get(k) is not None}
    base = dict(BUILT_IN_SCHEDULE)
    if params.get("pretrained"):
        base = pretrained_schedule(params["pretrained"])
        for key, value in explicit.items():
            if value != base[key]:
                log.warning("diffusion.%s: %r overrides the pretrained scheduler's %r (%s/scheduler): the pretrained "
                            "UNet learnt the folder's noise levels", key, value, base[key], params["pretrained"])
    schedule = {**base, **explicit}
    log.info("noise schedule: %s", ", ".join(f"{k} {v}" for k, v in schedule.items()))
    return DDPMScheduler(**schedule, clip_sample=False)


@dataclass
class DiffusionModel:
    """What sampling needs: the UNet, the context encoder of the conditions (``prompt_encoder``: a condition
    index -> cross-attention context), the DDIM scheduler and the conditioning (its modules installed in the
    UNet, its ``sampler_inputs``)."""
    unet: UNet2DConditionModel
    prompt_encoder: torch.nn.Module
    scheduler: DDIMScheduler
    conditioning: Conditioning


LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float | None) -> torch.Tensor | None:
    """Min-SNR-gamma loss weights of timesteps ``t`` (Hang et al. 2023, "Efficient diffusion training via min-SNR
    weighting strategy"; not in the source papers, the default config's choice, docs/quality-study.md): with
    SNR(t) = abar_t / (1 - abar_t), the weight min(SNR, gamma) / SNR of the epsilon loss is, for the v target
    (whose loss is the epsilon loss times SNR + 1), min(SNR, gamma) / (SNR + 1). ``gamma`` None: no weights.
    At a zero terminal SNR (``rescale_betas_zero_snr``) the last step's weight is 0 under v and 1 under epsilon
    (min(SNR, gamma) / SNR taken as its limit)."""
    if gamma is None:
        return None
    abar = scheduler.alphas_cumprod.to(t.device)[t].double()
    snr = abar / (1 - abar)
    clipped = torch.clamp(snr, max=float(gamma))
    if scheduler.config.prediction_type == "v_prediction":
        w = clipped / (snr + 1)
    else:
        w = torch.where(snr > 0, clipped / snr.clamp(min=1e-20), torch.ones_like(snr))
    return w.float()


def diffusion_loss(modules: Mapping[str, torch.nn.Module], conditioning: Conditioning, scheduler,
                   latents: torch.Tensor, labels: torch.Tensor, cond_dropout: float, gen: torch.Generator,
                   batch: Sequence[torch.Tensor] = (), loss: str = "mse", snr_gamma: float | None = None
                   ) -> dict[str, torch.Tensor]:
    """One denoising loss: eq. (8) of the CLUE paper for v-prediction (the simplified epsilon loss otherwise),
    squared error, or with ``loss = "l1"`` the absolute error (the multi-level paper, section III.E), plus the
    conditioning's own weighted terms (CLUE: lambda KL, eq. 11). ``modules`` holds the ``unet``, the
    ``prompt_encoder`` and the conditioning's modules; ``batch`` the conditioning's per-image inputs of the
    batch (multi-level: the level tokens, dropped together with the prompt). ``snr_gamma``: each image's error
    weighted by ``min_snr_weights`` (the mean of the weighted per-image errors)."""
    unet, context_encoder = modules["unet"], modules["prompt_encoder"]
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=gen).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen).to(latents.device)
    drop = torch.rand(b, generator=gen).to(latents.device) < cond_dropout
    cond = torch.where(drop, torch.full_like(labels, context_encoder.null_index), labels)
    noisy = scheduler.add_noise(latents, noise, t)  # eq. (4)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)  # v_t of eq. (4)
    else:
        target = noise
    context = conditioning.training_context(modules, latents, cond, drop, list(batch), gen)
    extra, aux = conditioning.loss_inputs(modules, latents, context, drop, list(batch), gen)
    pred = unet(noisy, t, encoder_hidden_states=context, cross_attention_kwargs=extra or None).sample
    if loss not in LOSSES:
        raise ValueError(f"diffusion.loss must be one of {sorted(LOSSES)}, got {loss!r}")
    terms = {name: value for name, (value, _) in aux.items()}
    weights = min_snr_weights(scheduler, t, snr_gamma)
    if weights is None:
        terms["denoise"] = total = LOSSES[loss](pred, target)
    else:
        per_image = LOSSES[loss](pred, target, reduction="none").flatten(1).mean(1)
        terms["denoise"] = total = (weights.to(per_image) * per_image).mean()
    for value, weight in aux.values():
        total = total + weight * value
    terms["loss"] = total
    return terms


class Objective(torch.nn.Module):
    """The training loss of all trainable modules as one module, so DistributedDataParallel can wrap it (a
    conditioning's modules may live inside the UNet's attention processors or outside the UNet)."""

    def __init__(self, modules: Mapping[str, torch.nn.Module], conditioning: Conditioning, scheduler,
                 cond_dropout: float, loss: str = "mse", snr_gamma: float | None = None):
        super().__init__()
        self.parts = torch.nn.ModuleDict(dict(modules))
        self.conditioning, self.scheduler, self.cond_dropout, self.loss = conditioning, scheduler, cond_dropout, loss
        self.snr_gamma = snr_gamma

    def forward(self, latents: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                batch: Sequence[torch.Tensor] = ()) -> dict[str, torch.Tensor]:
        return diffusion_loss(self.parts, self.conditioning, self.scheduler, latents, labels, self.cond_dropout, gen,
                              batch, self.loss, self.snr_gamma)


def optimiser_step(model: torch.nn.Module, opt: torch.optim.Optimizer, mean: torch.Tensor, std: torch.Tensor,
                   y: torch.Tensor, per_image: Sequence[torch.Tensor], batch_size: int, accum: int,
                   gen: torch.Generator, speed: Speed) -> dict[str, torch.Tensor]:
    """One optimiser step of the training loop over ``accum`` batches (gradient accumulation): each batch draws
    ``batch_size`` latents from their posteriors (mean + std * eps) with their conditions and the rows of the
    conditioning's ``per_image`` inputs; returns the mean of each loss term."""
    device = mean.device
    opt.zero_grad(set_to_none=True)
    parts = []
    for _ in range(accum):
        idx = torch.randint(0, len(mean), (batch_size,), generator=gen)
        lat = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen).to(device)  # posterior sample
        with speed.autocast(device):
            terms = model(speed.batch(lat), y[idx].to(device), gen, [t[idx] for t in per_image])
        (terms["loss"] / accum).backward()  # under DDP: gradients averaged over the processes here
        parts.append({k: v.detach() for k, v in terms.items()})
    opt.step()
    return {k: torch.stack([p[k] for p in parts]).mean() for k in parts[0]}


def train_diffusion(manifest: str | Path, ae_dir: str | Path, model_dir: str | Path, log_table: str | Path,
                    params: Mapping[str, Any], feature_net: str | Path | None = None,
                    clusters: Mapping[str, str | Path] | None = None, threads: int | None = None) -> None:
    """Entry point of the diffusion rule. ``feature_net`` (the domain network) gives the multi-level
    embeddings of a ``multilevel`` variant; ``clusters`` (the cluster stage's ``assignments`` and
    ``selection`` tables) the conditions of a ``cluster`` variant.

    With ``gpus`` > 1 the training runs data-parallel in that many processes (``pipeline_lib.distributed``):
    each process draws its own batches of ``batch_size`` (the effective batch is batch_size x gpus x
    grad_accumulation), DDP averages the gradients, rank 0 writes the log, checkpoints and model."""
    n_processes = int(params.get("gpus", 1))
    if n_processes > 1 and not distributed.active():
        distributed.launch("diffusion", {"manifest": manifest, "ae_dir": ae_dir, "model_dir": model_dir,
                                         "log_table": log_table, "params": dict(params), "feature_net": feature_net,
                                         "clusters": dict(clusters) if clusters else None, "threads": threads},
                           n_processes, select_device(params["device"]), threads)
        if not Path(model_dir).is_dir():
            raise RuntimeError(f"diffusion: the data-parallel run ended without writing {model_dir}")
        return
    set_threads(threads)
    seed = int(params["seed"])
    gen = seed_everything(seed)
    conditioning = kind_of(params).for_training(params, feature_net, clusters)
    processes = distributed.Processes.start(select_device(params["device"]), conditioning.unused_parameters)
    device = processes.device(select_device(params["device"]))
    check_generative_splits(params["train_splits"], "diffusion.train_splits")
    x, y, images = load_images(manifest, params["train_splits"], list(params["classes"]))
    n_images = len(images)
    y = conditioning.condition_index(images, y)
    hflip = bool(params.get("hflip", True))  # mirror images encoded once, up front, drawn from like the others
    x, y = with_mirrors(x, hflip), with_mirrors(y, hflip)
    ae = load_autoencoder(ae_dir, device)
    mean, std = encode_latents(ae, x, device)  # KL: posterior mean and std; VQ: pre-quantisation latents, std 0
    del ae
    frozen = conditioning.frozen_context(params)
    unet = build_unet(mean.shape[-1], mean.shape[1], {**params, **conditioning.unet_overrides(frozen)},
                      gated=conditioning.gated_unet).to(device)
    modules: dict[str, torch.nn.Module] = {"unet": unet,
                                           "prompt_encoder": conditioning.context_encoder(unet, frozen, params).to(device)}
    data = TrainingData(manifest, images, x[:n_images], y[:n_images], feature_net, params, mean[:n_images], ae_dir)
    modules |= conditioning.extra_modules(unet, data, device)
    start_from = f"UNet from {params['pretrained']}" if params.get("pretrained") else "from scratch (no pretrained weights)"
    log.info("%s conditioning, %s: %s; latents %s", conditioning.name, start_from,
             ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M" for k, m in modules.items()),
             tuple(mean.shape[1:]))
    sched = noise_scheduler(params)
    gamma = params.get("snr_gamma")
    objective = Objective(modules, conditioning, sched, float(params["cond_dropout"]), params.get("loss", "mse"),
                          None if gamma is None else float(gamma))
    speed = Speed.from_params(params).enable(device)
    for m in modules.values():
        speed.prepare(m)
    model = processes.prepare(objective)
    trainable = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = adam(trainable, float(params["lr"]), decoupled=True)
    states: dict[str, Any] = {"opt": opt, "lr": learning_rate_schedule(opt, params, "diffusion")}
    if params.get("ema_decay"):
        states["ema"] = EMAModel(trainable, decay=float(params["ema_decay"]), foreach=True)  # one fused update
    fp = fingerprint(mean, std, y, *conditioning.per_image)  # latents, conditions, per-image inputs
    ckpt = Checkpoint(Path(model_dir).with_name(Path(model_dir).name + ".resume.pt"), {**params, "data": fp})
    start, rows = ckpt.load(modules, states, gen)
    steps, bs, accum = int(params["steps"]), int(params["batch_size"]), int(params.get("grad_accumulation", 1))
    for m in modules.values():
        m.train()
    for step in tqdm(range(start, steps), initial=start, total=steps, desc="diffusion", mininterval=10,
                     disable=not processes.main):
        processes.seed_step(gen, seed, step)
        stage = conditioning.begin_step(step, modules)
        means = optimiser_step(model, opt, mean, std, y, conditioning.per_image, bs, accum, gen, speed)
        states["lr"].step()
        if "ema" in states:
            states["ema"].step(trainable)
        rows.append({"step": step + 1, **stage, **{k: processes.mean(v).item() for k, v in means.items()}})
        if (step + 1) % int(params["checkpoint_every"]) == 0 and step + 1 < steps and processes.main:
            ckpt.save(modules, states, gen, step + 1, rows)
    if "ema" in states:
        states["ema"].copy_to(trainable)  # the saved model is the exponential moving average
        log.info("saved the EMA weights (decay %s)", params["ema_decay"])
    conditioning.finish(modules)
    if processes.main:
        write_parquet(pd.DataFrame(rows), log_table)
        with atomic_path(model_dir) as tmp:
            for name, module in modules.items():
                module.save_pretrained(tmp / name)
            sampling_scheduler(sched, params).save_pretrained(tmp / "scheduler")
            conditioning.save(tmp)
            if conditioning.diffusers_pipeline:
                export_pipeline(tmp, ae_dir, modules["prompt_encoder"], params)
        ckpt.remove()
    processes.wait()


def export_pipeline(folder: Path, ae_dir: str | Path, prompt_encoder: torch.nn.Module,
                    params: Mapping[str, Any]) -> None:
    """Make the saved model folder a diffusers ``StableDiffusionPipeline`` folder too: the autoencoder as ``vae/``
    (a KL-VAE; the VQ-GAN is not one the pipeline can decode with), the text encoder folder's ``text_encoder/``
    and ``tokenizer/`` when the prompts were embedded by it, and ``model_index.json``. With a learnt or open_clip
    prompt encoder the pipeline has no text encoder: it samples from ``prompt_embeds`` (README)."""
    from diffusers import AutoencoderKL, __version__

    if AutoencoderKL.load_config(str(ae_dir)).get("_class_name") != "AutoencoderKL":
        log.info("model folder not exported as a StableDiffusionPipeline: its autoencoder is not a KL-VAE")
        return
    shutil.copytree(ae_dir, folder / "vae")
    kind = str(getattr(prompt_encoder.config, "kind", ""))
    text = [None, None], [None, None]
    if kind.startswith("transformers:"):
        source = text_encoder_folder(params["text_encoder"], params.get("pretrained"))
        for sub in ("text_encoder", "tokenizer"):
            shutil.copytree(source / sub, folder / sub)
        text = ["transformers", "CLIPTextModel"], ["transformers", "CLIPTokenizer"]
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": __version__,
             "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
             "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": text[0],
             "tokenizer": text[1], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    log.info("model folder is also a StableDiffusionPipeline folder (%s)",
             "with its text encoder" if text[0][0] else "no text encoder: sample with prompt_embeds")


def load_diffusion(model_dir: str | Path, device: torch.device, speed: Speed | None = None) -> DiffusionModel:
    """The saved model with its conditioning (``conditioning.json``), whose modules are installed in the UNet
    (CLUE's style encoder is only needed in training: sampling draws s from N(0, sigma^2 I)). ``speed``
    prepares the UNet (sampling precision, layout, attention, compile) once its adapters are installed."""
    model_dir = Path(model_dir)
    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet")).to(device).eval()
    conditioning, context = load_conditioning(model_dir, unet, device)
    sched = DDIMScheduler.from_pretrained(str(model_dir / "scheduler"))
    if speed is not None:
        speed.prepare(speed.for_sampling(unet, device))
    return DiffusionModel(unet, context, sched, conditioning)
