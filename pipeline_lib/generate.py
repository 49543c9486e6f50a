"""Per-seed synthetic generation: DDIM sampling with classifier-free guidance, decoded by the autoencoder.

Each seed is one independent synthetic data set (CLUE section 4.5). Batch ``b`` of class ``c`` draws its
initial noise from a generator seeded with (seed, c, b), so a killed job that resumes from its partial folder
produces the same images as an uninterrupted one. Every decoded image goes through the same preprocessing as
the real images ("Generated images were finalized by applying the same preprocessing pipeline", CLUE section
4.5). See ``finalize_synthetic`` for the three outcomes, recorded in the manifest's ``finalize`` column.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from tqdm import tqdm

from .autoencoder import decode_latents, load_autoencoder
from .diffusion import DiffusionModel, load_diffusion
from .io import atomic_path, log, read_parquet, write_parquet, write_png
from .preprocess import as_grey, preprocess_image
from .speed import Speed
from .torchutils import select_device, set_threads, to_uint8


@torch.no_grad()
def sample_latents(model: DiffusionModel, class_index: int, n: int, shape: tuple[int, int, int], steps: int,
                   guidance_scale: float, generator: torch.Generator, device: torch.device,
                   style_sigma: float | None = None,
                   cond_at: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                   init: torch.Tensor | None = None, style: torch.Tensor | None = None,
                   guidance_interval: Sequence[float] | None = None) -> torch.Tensor:
    """DDIM (eta = 0) or DDPM from x_T ~ N(0, I); guidance: pred = uncond + w (cond - uncond) when w != 1, the two
    passes batched in one forward. ``guidance_interval`` (lo, hi): guidance only in the steps whose noise level
    sigma_t = sqrt((1 - abar_t) / abar_t) lies in (lo, hi], the conditional prediction alone in the others
    (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval improves sample and distribution quality
    in diffusion models": guidance at high noise levels narrows the distribution, at low ones it does little; not
    in the source papers). The unconditional half is still computed outside the interval, so that each
    conditioning's inputs are drawn once for the whole trajectory. The conditioning's own inputs are drawn after
    x_T from the same generator, so the settings of one seed share their initial noise: a CLUE model's style
    latent s ~ N(0, style_sigma^2 I) (CLUE section 4.5); a multi-level model's reference images, one random
    training image of the class per sample, whose embeddings condition it (the unconditional pass gets GLIGEN's
    null feature).

    ``cond_at(i, cond)`` replaces the conditional embedding at step i (trajectory traversal: the prompt
    embedding swapped at a timestep); by default the class's own embedding throughout. ``init``: x_T itself
    (n, *shape) instead of a draw; ``style``: a CLUE model's style vectors (n, d) instead of a draw (CLUE Fig. 4)."""
    unet, penc, scheduler = model.unet, model.prompt_encoder, model.scheduler
    latents = (torch.randn((n, *shape), generator=generator) if init is None else init.clone()).to(device)
    guided = guidance_scale != 1.0
    extra = model.conditioning.sampler_inputs(class_index, n, guided, generator, device,
                                              {"style_sigma": style_sigma, "style": style})
    dtype = unet.dtype  # bf16 under speed.sampling_precision: the UNet's inputs cast to it, its prediction to FP32
    kwargs = {"cross_attention_kwargs": cast_floats(extra, dtype)} if extra else {}
    scheduler.set_timesteps(steps)
    labels = torch.full((n,), class_index, dtype=torch.long, device=device)
    cond = penc(labels)
    uncond = penc(torch.full_like(labels, penc.null_index)).to(dtype)
    sigmas = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod).sqrt()
    for i, t in enumerate(scheduler.timesteps):
        c = (cond if cond_at is None else cond_at(i, cond)).to(dtype)
        if not guided:
            pred = unet(latents.to(dtype), t, encoder_hidden_states=c, **kwargs).sample.float()
        else:
            x = latents.to(dtype)
            both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, c]),
                        **kwargs).sample.float()
            pu, pc = both.chunk(2)
            inside = guidance_interval is None or guidance_interval[0] < float(sigmas[int(t)]) <= guidance_interval[1]
            pred = pu + guidance_scale * (pc - pu) if inside else pc
        if isinstance(scheduler, DDIMScheduler):
            latents = scheduler.step(pred, t, latents, eta=0.0).prev_sample
        else:  # DDPM: ancestral sampling, its noise from the same generator
            latents = scheduler.step(pred, t, latents, generator=generator).prev_sample
    return latents


def cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    """``obj`` with its floating-point tensors, in nested dicts, lists and tuples, cast to ``dtype``."""
    if torch.is_tensor(obj):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, Mapping):
        return {k: cast_floats(v, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cast_floats(v, dtype) for v in obj)
    return obj


SAMPLERS = ("ddim", "ddpm")


def with_sampler(model: DiffusionModel, sampler: str) -> DiffusionModel:
    """The model with a DDIM (deterministic, eta = 0; CLUE Table 3) or DDPM scheduler of the same noise schedule."""
    if sampler not in SAMPLERS:
        raise ValueError(f"generate.sampler must be one of {SAMPLERS}, got {sampler!r}")
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    return replace(model, scheduler=cls.from_config(model.scheduler.config))


def fov_mask(size: int) -> np.ndarray:
    """The inscribed circle of a preprocessed square image, as preprocessing leaves it."""
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, (size // 2, size // 2), size // 2, 1, -1)
    return m


def finalize_synthetic(image: np.ndarray, pre: Mapping[str, Any], grey: bool = False) -> tuple[np.ndarray, str]:
    """The real images' preprocessing applied to one decoded synthetic frame (CLUE section 4.5).

    Returns the image and its ``finalize`` status: ``preprocessed`` (circle, mask, crop, resize, as for real
    frames) or ``fov_mask: <reason>`` (no usable aperture found: the frame keeps the plain field-of-view mask).
    ``grey`` (a grayscale data set): the frame's luminance, returned as one channel (H, W), the PNG to save;
    the three decoded channels of a model trained on three equal ones are close to equal, not equal.
    """
    size = int(pre["image_size"])
    if grey:
        image = as_grey(image)
    out, _, record = preprocess_image(image, pre)
    status = "preprocessed"
    if out is None:
        mask = fov_mask(size)[..., None]
        out = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR) * mask
        status = f"fov_mask: {record['reason']}"
    return (out[..., 0] if grey else out), status


def data_color_of(manifest: str | Path) -> str:
    """A preprocessed or generated data set's colour (``data.color`` as preprocessing decided it; rgb for older
    manifests)."""
    df = read_parquet(manifest)
    return str(df["color"].iloc[0]) if "color" in df.columns and len(df) else "rgb"


SIGNATURE = ".signature.json"


def files_stamp(folder: str | Path) -> list[tuple[str, int, int]]:
    """(relative path, size, modification time in ns) of every file below ``folder``: changes when a model is
    retrained or replaced."""
    folder = Path(folder)
    return sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                  for f in folder.rglob("*") if f.is_file())


def resume_folder(out_dir: Path, signature: Mapping[str, Any]) -> Path:
    """``<out_dir>.partial``, where finished batches are kept until the job ends. A folder a killed run left is
    resumed only when it was made with the same settings and models (its ``.signature.json``); else it is
    emptied first."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    text = json.dumps(signature, sort_keys=True, default=str)
    stamp = partial / SIGNATURE
    if partial.exists() and (not stamp.exists() or stamp.read_text() != text):
        log.info("%s was left by a run with other settings or models; starting afresh", partial)
        shutil.rmtree(partial)
    elif partial.exists():
        log.info("resuming from %s: %d finished batches kept", partial, len(list(partial.glob(".finalize_*"))))
    partial.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        with atomic_path(stamp) as tmp:
            tmp.write_text(text)
    return partial


def generate(manifest: str | Path, ae_dir: str | Path, model_dir: str | Path, out_dir: str | Path,
             out_manifest: str | Path, params: Mapping[str, Any], threads: int | None = None) -> pd.DataFrame:
    """Entry point of the generate rule for one (variant, setting, seed)."""
    set_threads(threads)
    device = select_device(params["device"])
    speed = Speed.from_params(params).enable(device)
    seed, setting = int(params["seed"]), params["setting"]
    ae = load_autoencoder(ae_dir, device, speed)
    model = with_sampler(load_diffusion(model_dir, device, speed), params.get("sampler", "ddim"))
    conditions, counts, extra = model.conditioning.image_counts(model.prompt_encoder, manifest, params, model_dir)
    if "style_sigma" not in model.conditioning.sampling_keys and params.get("style_sigma") is not None:
        log.info("setting %s: style_sigma %s is ignored, variant %s has no style latent", setting,
                 params["style_sigma"], params["variant"])
    c = model.unet.config
    shape = (c.in_channels, c.sample_size, c.sample_size)
    pre = params["preprocess"]
    grey = data_color_of(manifest) == "grayscale"  # saved as single-channel PNG (the models saw three equal ones)
    out_dir = Path(out_dir)
    partial = resume_folder(out_dir, {"params": params, "model": files_stamp(model_dir),
                                      "autoencoder": files_stamp(ae_dir)})
    bs, rows = int(params["batch_size"]), []
    for ci, label in enumerate(conditions):
        n = counts[label]
        for b in tqdm(range(math.ceil(n / bs)), desc=f"generate {label}", mininterval=10):
            ids = [f"{params['variant']}_{setting}_s{seed}_{label}_{i:05d}" for i in range(b * bs, min(n, (b + 1) * bs))]
            done = partial / f".finalize_{ci}_{b}.json"  # written after the batch's images: the batch is complete
            noise_seed = int(np.random.SeedSequence([seed, ci, b]).generate_state(1)[0])
            if not done.exists():
                g = torch.Generator().manual_seed(noise_seed)
                with speed.autocast(device):
                    lat = sample_latents(model, ci, len(ids), shape, int(params["num_inference_steps"]),
                                         float(params["guidance_scale"]), g, device, params.get("style_sigma"),
                                         guidance_interval=params.get("guidance_interval"))
                    decoded = to_uint8(decode_latents(ae, lat))
                status = {}
                for image_id, im in zip(ids, decoded):
                    out, status[image_id] = finalize_synthetic(im, pre, grey)
                    write_png(out, partial / f"{image_id}.png")
                with atomic_path(done) as tmp:
                    tmp.write_text(json.dumps(status))
            status = json.loads(done.read_text())
            rows += [{"image_id": i, "path": f"images/{i}.png", "label": label, "split": "synthetic", "group": i,
                      "source": "generated", "variant": params["variant"], "setting": setting, "seed": seed,
                      "noise_seed": noise_seed, "finalize": status[i], "color": "grayscale" if grey else "rgb",
                      **extra(ci)} for i in ids]
    df = pd.DataFrame(rows)
    with atomic_path(out_dir) as tmp:
        # Only the images: not the batch markers, the signature or a temporary a killed writer left.
        shutil.copytree(partial, tmp, ignore=shutil.ignore_patterns(".*"))
    write_parquet(df, out_manifest)
    shutil.rmtree(partial)
    log.info("generated %d images (%s)", len(df), df.groupby("label").size().to_dict())
    return df

