"""Latent diffusion: ``UNet2DConditionModel`` on autoencoder latents, v-prediction, conditioned on the class
prompt (``class``), on the prompt and a CLUE style latent (``clue``, see ``pipeline_lib.clue``), or on the
prompt and the multi-level embeddings of a lesion image (``multilevel``, see ``pipeline_lib.multilevel``), or on
the cluster of the image's latents when there are no labels (``cluster``, see ``pipeline_lib.cluster.condition``).

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

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from . import distributed
from .autoencoder import check_generative_splits, encode_latents, load_autoencoder
from .cluster.condition import ClusterEmbedding, cluster_labels, resolve_k
from .clue import (CLUE_DEFAULTS, StyleAdapter, StyleEncoder, attach_style_adapter, kl_to_standard_normal,
                   sample_style)
from .io import atomic_path, log, read_rgb, resolve_path, write_parquet
from .multilevel import MULTILEVEL_DEFAULTS, MultiLevelEmbedder, OpenClipLevels, install_adapters, level_tokens
from .nets import load_feature_net
from .speed import Speed
from .text import FrozenTextEmbeddings, frozen_prompt_encoder
from .torchutils import (Checkpoint, fingerprint, load_adapted, load_images, seed_everything, select_device,
                         set_threads, to_tensor)


def tokenize(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", prompt.lower())


class PromptEncoder(ModelMixin, ConfigMixin):
    """Word embeddings plus positions for a fixed set of prompts, learnt with the UNet (no pretrained text encoder
    on disk); output (B, max_length, dim). Its saved config says ``kind: learned_word_embeddings``."""

    @register_to_config
    def __init__(self, classes: list[str], prompts: list[str], dim: int = 32, max_length: int = 16,
                 kind: str = "learned_word_embeddings"):
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


def build_unet(sample_size: int, channels: int, params: Mapping[str, Any], gated: bool = False
               ) -> UNet2DConditionModel:
    """The denoiser; ``gated`` adds GLIGEN's gated self-attention to every transformer block (multi-level).

    With ``params["pretrained"]`` (a local Stable Diffusion folder in diffusers format, e.g. SD 2.1 as in CLUE
    Table 3) the UNet of its ``unet/`` subfolder is the starting point: its architecture, with ``conv_in`` and
    ``conv_out`` re-initialised when the autoencoder's latent channels differ (8-channel VAE); the size keys of
    ``params`` are then not used."""
    if params.get("pretrained"):
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
                                attention_type="gated" if gated else "default")


def noise_scheduler(params: Mapping[str, Any]) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=int(params["num_train_timesteps"]), beta_schedule=params["beta_schedule"],
                         beta_start=float(params["beta_start"]), beta_end=float(params["beta_end"]),
                         prediction_type=params["prediction_type"], clip_sample=False)


CONDITIONINGS = ("class", "clue", "multilevel", "cluster")
# cluster_k: an int of cluster.k_values, or "selected" (the cluster stage's majority vote for cluster_method)
CLUSTER_DEFAULTS = {"cluster_k": "selected", "cluster_method": "imsat", "cluster_tokens": 1}
OPTIONS = {"clue": CLUE_DEFAULTS, "multilevel": MULTILEVEL_DEFAULTS, "cluster": CLUSTER_DEFAULTS}  # keys each adds


def conditioning_options(params: Mapping[str, Any]) -> dict:
    """The variant's own options for its conditioning, with their defaults; an error names any option of another
    conditioning set on it."""
    kind = params.get("conditioning", "class")
    if kind not in CONDITIONINGS:
        raise ValueError(f"diffusion variant {params.get('variant')!r}: conditioning must be one of "
                         f"{CONDITIONINGS}, got {kind!r}")
    for other, defaults in OPTIONS.items():
        given = {k: params[k] for k in defaults if params.get(k) is not None}
        if other != kind and given:
            raise ValueError(f"diffusion variant {params.get('variant')!r}: {sorted(given)} apply to "
                             f"`conditioning: {other}` only, the variant has {kind!r}")
    defaults = OPTIONS.get(kind, {})
    return {**defaults, **{k: params[k] for k in defaults if params.get(k) is not None}}


@dataclass
class DiffusionModel:
    """What sampling needs: the UNet, the prompt encoder, the DDIM scheduler and, for CLUE, the style adapter
    (installed in the UNet's attention processors)."""
    unet: UNet2DConditionModel
    prompt_encoder: PromptEncoder | FrozenTextEmbeddings | ClusterEmbedding
    scheduler: DDIMScheduler
    style_adapter: StyleAdapter | None = None
    embedder: MultiLevelEmbedder | None = None
    references: dict | None = None  # multi-level: the training images' level tokens and labels


LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}


def diffusion_loss(unet, prompt_encoder, scheduler, latents, labels, cond_dropout: float, gen: torch.Generator,
                   style: tuple[StyleEncoder, StyleAdapter, float] | None = None,
                   multilevel: tuple[MultiLevelEmbedder, list[torch.Tensor]] | None = None,
                   loss: str = "mse") -> dict[str, torch.Tensor]:
    """One denoising loss: eq. (8) of the CLUE paper for v-prediction (the simplified epsilon loss otherwise),
    squared error, or with ``loss = "l1"`` the absolute error (the multi-level paper, section III.E);
    with ``style = (encoder, adapter, lambda)`` the CLUE objective of eq. (11), the style latent drawn from the
    encoder's posterior on the clean latent and the (possibly dropped) prompt by eq. (12); with
    ``multilevel = (embedder, level tokens of the batch)`` the images' multi-level embeddings feed the gated
    adapters (eq. 2 of the multi-level paper), dropped together with the prompt."""
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
    extra, terms = {}, {}
    if style is not None:
        encoder, adapter, kl_weight = style
        mu, logvar = encoder(latents, prompt)
        extra["style"] = adapter.tokens(sample_style(mu, logvar, gen))
        terms["kl"] = kl_to_standard_normal(mu, logvar).mean()
    if multilevel is not None:
        embedder, levels = multilevel
        extra["gligen"] = embedder.gligen_kwargs(levels, keep=~drop)
    pred = unet(noisy, t, encoder_hidden_states=prompt, cross_attention_kwargs=extra or None).sample
    if loss not in LOSSES:
        raise ValueError(f"diffusion.loss must be one of {sorted(LOSSES)}, got {loss!r}")
    terms["denoise"] = LOSSES[loss](pred, target)
    terms["loss"] = terms["denoise"] + (kl_weight * terms["kl"] if style is not None else 0.0)
    return terms


class Objective(torch.nn.Module):
    """The training loss of all trainable modules as one module, so DistributedDataParallel can wrap it (the
    style adapter lives inside the UNet's attention processors, the embedders outside the UNet)."""

    def __init__(self, modules: Mapping[str, torch.nn.Module], scheduler, cond_dropout: float, kl_weight: float,
                 loss: str = "mse"):
        super().__init__()
        self.parts = torch.nn.ModuleDict(dict(modules))
        self.scheduler, self.cond_dropout, self.kl_weight, self.loss = scheduler, cond_dropout, kl_weight, loss

    def forward(self, latents: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                levels: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        m = self.parts
        style = (m["style_encoder"], m["style_adapter"], self.kl_weight) if "style_encoder" in m else None
        multilevel = (m["multilevel_embedder"], levels) if levels is not None else None
        return diffusion_loss(m["unet"], m["prompt_encoder"], self.scheduler, latents, labels, self.cond_dropout,
                              gen, style, multilevel, self.loss)


def optimiser_step(model: torch.nn.Module, opt: torch.optim.Optimizer, mean: torch.Tensor, std: torch.Tensor,
                   y: torch.Tensor, levels: list[torch.Tensor] | None, batch_size: int, accum: int,
                   gen: torch.Generator, speed: Speed) -> dict[str, torch.Tensor]:
    """One optimiser step of the training loop over ``accum`` batches (gradient accumulation): each batch draws
    ``batch_size`` latents from their posteriors (mean + std * eps) with their conditions; returns the mean of
    each loss term."""
    device = mean.device
    opt.zero_grad(set_to_none=True)
    parts = []
    for _ in range(accum):
        idx = torch.randint(0, len(mean), (batch_size,), generator=gen)
        lat = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen).to(device)  # posterior sample
        batch_levels = [t[idx] for t in levels] if levels is not None else None
        with speed.autocast(device):
            terms = model(speed.batch(lat), y[idx].to(device), gen, batch_levels)
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
    processes = int(params.get("gpus", 1))
    if processes > 1 and not distributed.active():
        distributed.launch("diffusion", {"manifest": manifest, "ae_dir": ae_dir, "model_dir": model_dir,
                                         "log_table": log_table, "params": dict(params), "feature_net": feature_net,
                                         "clusters": dict(clusters) if clusters else None, "threads": threads},
                           processes, select_device(params["device"]), threads)
        if not Path(model_dir).is_dir():
            raise RuntimeError(f"diffusion: the data-parallel run ended without writing {model_dir}")
        return
    set_threads(threads)
    gen = seed_everything(int(params["seed"]))
    device = select_device(params["device"])
    accelerator = None
    if distributed.active():
        from accelerate import Accelerator, DistributedDataParallelKwargs

        # GLIGEN's null feature is unused in steps where no prompt is dropped: DDP must not wait for it.
        unused = DistributedDataParallelKwargs(find_unused_parameters=params.get("conditioning") == "multilevel")
        accelerator = Accelerator(cpu=device.type == "cpu", kwargs_handlers=[unused])
        device = accelerator.device
    main_process = accelerator is None or accelerator.is_main_process
    classes = list(params["classes"])
    conditioning, options = params.get("conditioning", "class"), conditioning_options(params)
    if conditioning == "multilevel" and feature_net is None and not (params.get("image_encoder") or {}).get(
            "open_clip_model"):
        raise ValueError(f"diffusion variant {params.get('variant')!r}: multilevel conditioning needs the domain "
                         f"feature network")
    if conditioning == "cluster" and clusters is None:
        raise ValueError(f"diffusion variant {params.get('variant')!r}: cluster conditioning needs the cluster "
                         f"stage's assignments (a `cluster:` section in the config)")
    check_generative_splits(params["train_splits"], "diffusion.train_splits")
    missing = [c for c in classes if c not in params.get("prompts", {})]
    if missing and conditioning != "cluster":
        raise ValueError(f"diffusion.prompts: expected a prompt for every class, missing {missing}")
    x, y, images = load_images(manifest, params["train_splits"], classes)
    n_images = len(images)
    if conditioning == "cluster":  # the labels are not used: the condition is the image's cluster
        method, k = options["cluster_method"], resolve_k(clusters["selection"], options["cluster_method"],
                                                         options["cluster_k"])
        y = torch.from_numpy(cluster_labels(clusters["assignments"], images["image_id"], method, k))
        counts = torch.bincount(y, minlength=k).tolist()
        log.info("cluster conditioning on the %s partition with k = %d%s; training images per cluster %s", method,
                 k, " (the cluster stage's selection)" if options["cluster_k"] == "selected" else "", counts)
    x, y = torch.cat([x, x.flip(-1)]), torch.cat([y, y])  # horizontal flips, encoded once up front
    ae = load_autoencoder(ae_dir, device)
    mean, std = encode_latents(ae, x, device)  # KL: posterior mean and std; VQ: pre-quantisation latents, std 0
    del ae
    prompts = [params.get("prompts", {}).get(c, "") for c in classes]
    text_cfg = params.get("text_encoder") or {}
    use_text = text_cfg.get("open_clip_model") and conditioning != "cluster"
    penc = frozen_prompt_encoder(classes, prompts, text_cfg) if use_text else None
    unet_params = dict(params) if penc is None else {**params, "cross_attention_dim": penc.config.dim}
    unet = build_unet(mean.shape[-1], mean.shape[1], unet_params, gated=conditioning == "multilevel").to(device)
    if conditioning == "cluster":
        penc = ClusterEmbedding(method, k, counts, dim=int(unet.config.cross_attention_dim),
                                tokens=int(options["cluster_tokens"]))
    elif penc is None:
        penc = PromptEncoder(classes, prompts, dim=int(unet.config.cross_attention_dim),
                             max_length=int(params["max_prompt_length"]))
    elif int(unet.config.cross_attention_dim) != penc.config.dim:
        raise ValueError(f"diffusion.text_encoder: {text_cfg['open_clip_model']} embeds prompts in {penc.config.dim} "
                         f"dimensions, the pretrained UNet cross-attends to {unet.config.cross_attention_dim}")
    penc = penc.to(device)
    modules: dict[str, torch.nn.Module] = {"unet": unet, "prompt_encoder": penc}
    style = None
    if conditioning == "clue":
        encoder = StyleEncoder.like(unet, int(options["style_dim"])).to(device)
        adapter = StyleAdapter.like(unet, int(options["style_dim"]), int(options["style_tokens"])).to(device)
        attach_style_adapter(unet, adapter)
        modules |= {"style_encoder": encoder, "style_adapter": adapter}
        style = (encoder, adapter, float(options["kl_weight"]))
    levels, refs, embedder = None, None, None
    if conditioning == "multilevel":
        grid, beta = int(options["embedding_grid"]), float(options["adapter_beta"])
        crops = load_lesion_crops(manifest, images, x[:n_images])
        encoder = image_encoder(params, feature_net, device)
        levels = embed_levels(encoder, torch.cat([crops, crops.flip(-1)]), grid, device)
        refs = {"levels": [t[:n_images].cpu() for t in levels], "labels": y[:n_images].cpu()}
        embedder = MultiLevelEmbedder([t.shape[-1] for t in levels], int(unet.config.cross_attention_dim), grid,
                                      beta).to(device)
        n = install_adapters(unet, beta)
        modules["multilevel_embedder"] = embedder
        log.info("multi-level embeddings: %d levels of %s on %d lesion crops / images, %d x %d "
                 "tokens; %d gated adapters (beta %.2f, gamma = 0 at the start)", len(levels), encoder.source,
                 n_images, grid, grid, n, beta)
    start_from = f"UNet from {params['pretrained']}" if params.get("pretrained") else "from scratch (no pretrained weights)"
    log.info("%s conditioning, %s: %s; latents %s", conditioning, start_from,
             ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M" for k, m in modules.items()),
             tuple(mean.shape[1:]))
    sched = noise_scheduler(params)
    objective = Objective(modules, sched, float(params["cond_dropout"]), style[2] if style else 0.0,
                          params.get("loss", "mse"))
    speed = Speed.from_params(params).enable(device)
    for m in modules.values():
        speed.prepare(m)
    model = accelerator.prepare_model(objective) if accelerator is not None else objective
    trainable = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=float(params["lr"]))  # constant learning rate (CLUE Table 3)
    states: dict[str, Any] = {"opt": opt}
    if params.get("ema_decay"):
        states["ema"] = EMAModel(trainable, decay=float(params["ema_decay"]))
    data = fingerprint(mean, std, y, *(levels or []))  # latents, conditions, multi-level embeddings
    ckpt = Checkpoint(Path(model_dir).with_name(Path(model_dir).name + ".resume.pt"), {**params, "data": data})
    start, rows = ckpt.load(modules, states, gen)
    steps, bs, accum = int(params["steps"]), int(params["batch_size"]), int(params.get("grad_accumulation", 1))
    for m in modules.values():
        m.train()
    for step in tqdm(range(start, steps), initial=start, total=steps, desc="diffusion", mininterval=10,
                     disable=not main_process):
        if accelerator is not None:  # each process its own batches, reproducible from (seed, rank, step)
            gen.manual_seed(int(np.random.SeedSequence([int(params["seed"]), accelerator.process_index,
                                                        step]).generate_state(1)[0]))
        means = optimiser_step(model, opt, mean, std, y, levels, bs, accum, gen, speed)
        if "ema" in states:
            states["ema"].step(trainable)
        if accelerator is not None:
            means = {k: accelerator.reduce(v, "mean") for k, v in means.items()}
        rows.append({"step": step + 1, **{k: v.item() for k, v in means.items()}})
        if (step + 1) % int(params["checkpoint_every"]) == 0 and step + 1 < steps and main_process:
            ckpt.save(modules, states, gen, step + 1, rows)
    if "ema" in states:
        states["ema"].copy_to(trainable)  # the saved model is the exponential moving average
        log.info("saved the EMA weights (decay %s)", params["ema_decay"])
    if not main_process:
        accelerator.wait_for_everyone()
        return
    write_parquet(pd.DataFrame(rows), log_table)
    with atomic_path(model_dir) as tmp:
        for name, module in modules.items():
            module.save_pretrained(tmp / name)
        DDIMScheduler.from_config(sched.config).save_pretrained(tmp / "scheduler")
        if refs is not None:
            torch.save(refs, tmp / "multilevel_references.pt")
    ckpt.remove()
    if accelerator is not None:
        accelerator.wait_for_everyone()


def load_diffusion(model_dir: str | Path, device: torch.device, speed: Speed | None = None) -> DiffusionModel:
    """The saved model; a CLUE model's style adapter is installed in its UNet (the style encoder is only needed
    in training: sampling draws s from N(0, sigma^2 I)). ``speed`` prepares the UNet (layout, attention,
    compile) once its adapters are installed."""
    model_dir = Path(model_dir)
    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet")).to(device).eval()
    kind = PromptEncoder.load_config(str(model_dir / "prompt_encoder")).get("_class_name")
    cls = {c.__name__: c for c in (FrozenTextEmbeddings, ClusterEmbedding)}.get(kind, PromptEncoder)
    penc = cls.from_pretrained(str(model_dir / "prompt_encoder")).to(device).eval()
    sched = DDIMScheduler.from_pretrained(str(model_dir / "scheduler"))
    adapter, embedder, refs = None, None, None
    if (model_dir / "style_adapter").is_dir():
        adapter = StyleAdapter.from_pretrained(str(model_dir / "style_adapter")).to(device).eval()
        attach_style_adapter(unet, adapter)
    if (model_dir / "multilevel_embedder").is_dir():
        embedder = MultiLevelEmbedder.from_pretrained(str(model_dir / "multilevel_embedder")).to(device).eval()
        install_adapters(unet, embedder.config.beta)
        refs = torch.load(model_dir / "multilevel_references.pt", map_location="cpu", weights_only=True)
    if speed is not None:
        speed.prepare(unet)
    return DiffusionModel(unet, penc, sched, adapter, embedder, refs)


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
