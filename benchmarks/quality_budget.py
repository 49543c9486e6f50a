"""Quality at equal CPU time: which autoencoder, denoiser, noise schedule and training set-up give synthetic images
closest to the real ones for the same diffusion training time on this machine.

    .venv/bin/python benchmarks/quality_budget.py --list                     # the set-ups and what each changes
    .venv/bin/python benchmarks/quality_budget.py                            # all of them, 150 s of diffusion each
    .venv/bin/python benchmarks/quality_budget.py --setups baseline lat8 --budget 150
    .venv/bin/python benchmarks/quality_budget.py --setups lat4 lat4_wide --steps 1200   # equal steps, not time
    .venv/bin/python benchmarks/quality_budget.py --setups lat4 --steps 1200 --train-seeds 0 1 2  # one set-up's spread
    .venv/bin/python benchmarks/quality_budget.py --speed                    # CPU speed switches only

Every set-up is the default config (config/config.yaml) with a few keys changed (``SETUPS``). The embedded data,
its preprocessing and the feature network are the default's and shared by all; the autoencoder is trained once
per distinct autoencoder section. The diffusion model of each set-up trains for as many steps as fit in
``--budget`` seconds on this machine (its steps/s measured first on a short probe, then the steps fixed, so the
learning-rate schedule knows its length), generates seed 0 of the first setting, and is judged as the pipeline
judges it: FID, k-NN recall and coverage in the domain network's space against test (all classes), and the
macro-F1 on test and external of the small CNN trained on 100 % synthetic images (``replace_100``), besides
the Gaussian agreement (``structure_check``: how much of the samples a Gaussian fit of the latents explains) and
the memorization audit's share of likely copies and authenticity (``copy_audit``). One seed:
the study ranks set-ups; the default run's two seeds give the spread. Each set-up's grid of synthetic images
(one row per class, real row above) is written to ``<workdir>/<setup>/grid_<regime>.png`` (regime: budget150,
steps1200, with _seed<N> for a --train-seeds run).

The pipeline's own functions run each stage (no Snakemake); results go to ``--workdir`` (default
results/quality_study, outside the pipeline's experiments) and the table to benchmarks/results/quality_budget.parquet.
A set-up's results are reused when rerun with the same budget (delete its folder to redo it).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_lib.autoencoder import (GENERATIVE_SPLITS, load_autoencoder, reconstruction_metrics,  # noqa: E402
                                      train_autoencoder)
from pipeline_lib.classify import classify  # noqa: E402
from pipeline_lib.config import Plan  # noqa: E402
from pipeline_lib.data import ingest  # noqa: E402
from pipeline_lib.diffusion import load_diffusion, train_diffusion  # noqa: E402
from pipeline_lib.evaluate import evaluate_synthetic  # noqa: E402
from pipeline_lib.feature_net import train_feature_net  # noqa: E402
from pipeline_lib.generate import generate  # noqa: E402
from pipeline_lib.io import read_parquet, read_rgb, resolve_path  # noqa: E402
from pipeline_lib.memorization import audit_sets, audit_settings, authenticity, read_images  # noqa: E402
from pipeline_lib.preprocess import preprocess  # noqa: E402
from pipeline_lib.speed import Speed  # noqa: E402
from pipeline_lib.torchutils import load_images  # noqa: E402
from structure_check import CPU, gaussian_agreement  # noqa: E402

# What the set-ups change from the default config, dotted keys. Each is written out from FORMER, the default the
# study started from, so that a row means the same set-up after the default has moved on: (a) the autoencoder's
# latent space under the former denoiser; (b) the denoiser's recipe, each factor alone on BASE (the autoencoder (a)
# found best), then together; (c) sampling only, on the model of (b)'s best set-up (``SAMPLING_MODEL``); (d) the
# autoencoder again, on CHOSEN (the default of that time), where 4 latent channels (``lat4``, the default now) won;
# (e) to (m) on lat4: loss weighting, capacity, noise level, KL weight, learning rate, batch, attention, a more
# compressed latent, more data and an adversarial decoder, mostly at equal steps (--steps 1200); (n) the prompt in
# every block of the denoiser, on the default of (m); (o) the first sampling step and the noisiest steps' loss weight.
AE = "autoencoder." + yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["diffusion"]["autoencoder"]
FORMER = {f"{AE}.block_out_channels": [16, 32], f"{AE}.steps": 300, f"{AE}.latent_channels": 8,  # 16 x 16 x 8
          f"{AE}.loss.kl_weight": 1.0e-6,
          "diffusion.beta_schedule": None, "diffusion.snr_gamma": None,  # linear betas, plain MSE
          "diffusion.lr_schedule": "constant", "diffusion.lr_warmup_steps": 0,
          "diffusion.pooled_prompt": False}  # the prompt by cross-attention only
AE_LONG = {f"{AE}.steps": 1000}  # 300 steps leave the reconstructions blurred (PSNR 28.7 dB)
AE_DOWN4 = {f"{AE}.block_out_channels": [16, 32, 64]}  # three levels: 8 x 8 x 8 latents of 32 px
BASE = {**FORMER, **AE_LONG, **AE_DOWN4}  # (a)'s best: lat8_ae1000
RECIPE = {"diffusion.ema_decay": 0.995, "diffusion.lr_schedule": "cosine", "diffusion.lr_warmup_steps": 50,
          "diffusion.snr_gamma": 5.0}
LR_SNR = {"diffusion.lr_schedule": "cosine", "diffusion.lr_warmup_steps": 50, "diffusion.snr_gamma": 5.0}
CHOSEN = {**BASE, **LR_SNR, "diffusion.beta_schedule": "squaredcos_cap_v2"}  # sched_cosine: the 8-channel default
LAT4 = {**CHOSEN, f"{AE}.latent_channels": 4}  # lat4: the default config since (d)
LATENT_STD = "study.latent_std"  # a set-up key of this script only: the latents' standard deviation (below)
GAN = {"channels": 32, "layers": 2, "lr": 1.0e-4, "start_step": 500, "gan_loss": "hinge"}  # (m)'s discriminator
AE_SEED = "study.autoencoder_seed"  # another: the autoencoder's training seed (the data's stays the config's)
# lat4_gan_perceptual, the default since (m): the perceptual and adversarial terms, 0.1 each
LAT4_GP = {**LAT4, f"{AE}.loss.adversarial_weight": 0.1, f"{AE}.loss.perceptual_weight": 0.1, f"{AE}.discriminator": GAN}
SETUPS: dict[str, dict] = {
    # (a) the latent space
    "baseline": dict(FORMER),
    "lat8": {**FORMER, **AE_DOWN4},
    "lat8_wide": {**FORMER, **AE_DOWN4, "diffusion.block_out_channels": [64, 128], "diffusion.attention_levels": [True, True],
                  "diffusion.norm_num_groups": 32},
    "lat8_recipe": {**FORMER, **AE_DOWN4, **RECIPE},
    "lat8_wide_recipe": {**FORMER, **AE_DOWN4, "diffusion.block_out_channels": [64, 128],
                         "diffusion.attention_levels": [True, True], "diffusion.norm_num_groups": 32, **RECIPE},
    "ae1000": {**FORMER, **AE_LONG},
    "lat8_ae1000": dict(BASE),
    "kl1e-4": {**BASE, f"{AE}.loss.kl_weight": 1.0e-4},
    "lat8_ae1000_wide": {**BASE, "diffusion.block_out_channels": [64, 128],
                         "diffusion.attention_levels": [True, True], "diffusion.norm_num_groups": 32},
    # (b) the denoiser's recipe on BASE
    "ema": {**BASE, "diffusion.ema_decay": 0.995},
    "cosine_lr": {**BASE, "diffusion.lr_schedule": "cosine", "diffusion.lr_warmup_steps": 50},
    "min_snr": {**BASE, "diffusion.snr_gamma": 5.0},
    "recipe": {**BASE, **RECIPE},
    "lr_snr": {**BASE, **LR_SNR},  # RECIPE without the EMA, which costs steps
    "zero_snr": {**BASE, **LR_SNR, "diffusion.rescale_betas_zero_snr": True, "diffusion.timestep_spacing": "trailing"},
    "sched_cosine": dict(CHOSEN),  # the default of (b) and (d): 8 latent channels
    "sched_scaled": {**BASE, **LR_SNR, "diffusion.beta_schedule": "scaled_linear", "diffusion.beta_start": 0.00085,
                     "diffusion.beta_end": 0.012},
    "attn_both": {**BASE, **LR_SNR, "diffusion.attention_levels": [True, True]},
    "batch32": {**BASE, **LR_SNR, "diffusion.batch_size": 32},
    "unet3": {**BASE, **LR_SNR, "diffusion.block_out_channels": [32, 64, 64],
              "diffusion.attention_levels": [False, True, True]},
    # (d) the autoencoder, on CHOSEN (sched_cosine, measured again beside them on one host)
    "ae_perceptual": {**CHOSEN, f"{AE}.loss.perceptual_weight": 0.1},  # + 0.1 x the domain distance
    "lat4": dict(LAT4),
    # (e) the loss weighting again, on the 4-channel default: min-SNR-gamma under v-prediction weights the noisiest
    # steps, where the layout forms, by about their SNR (0.06 at t = 807); plain v-loss weights them by SNR + 1
    "lat4_nosnr": {**LAT4, "diffusion.snr_gamma": None},
    # (f) the denoiser's capacity on the 4-channel default, at its 1,200 steps (--steps 1200): whether a larger
    # denoiser forms the layout at all, and at what cost in time. Twice the channels at both levels ...
    "lat4_wide": {**LAT4, "diffusion.block_out_channels": [64, 128], "diffusion.norm_num_groups": 32},
    # ... or two ResNet layers (and transformer blocks) per level instead of one
    "lat4_deep": {**LAT4, "diffusion.layers_per_block": 2},
    # (g) the noise level at which the layout forms: latents scaled to std 2 or 3 instead of 1 (4x or 9x the SNR
    # at every timestep; see rescaled_autoencoder)
    "lat4_std2": {**LAT4, LATENT_STD: 2.0},
    "lat4_std3": {**LAT4, LATENT_STD: 3.0},
    # (h) a smoother latent space: the KL weight 100x and 1,000x the default's 1e-6 (noise on the default's latents
    # decodes to speckle, docs/quality-study.md, so a denoiser's small latent errors may decode to the mottle)
    "lat4_kl1e-4": {**LAT4, f"{AE}.loss.kl_weight": 1.0e-4},
    "lat4_kl1e-3": {**LAT4, f"{AE}.loss.kl_weight": 1.0e-3},
    # ... and 1e-6 (the default) and 1e-4 with another autoencoder training seed: whether the difference is the
    # weight's or one trained autoencoder's
    "lat4_aeseed1": {**LAT4, AE_SEED: 1},
    "lat4_kl1e-4_aeseed1": {**LAT4, f"{AE}.loss.kl_weight": 1.0e-4, AE_SEED: 1},
    # (i) a higher peak learning rate: whether the denoiser leaves the Gaussian stage sooner
    "lat4_lr3e-3": {**LAT4, "diffusion.lr": 3.0e-3},
    # (j) what might leave the Gaussian stage in fewer steps: twice the batch (half the gradient variance of the
    # timestep and noise draws; 1.8x the time per step here), no decay of the learning rate after the warm-up
    # (the cosine decay halves the mean rate over the run), or self- and cross-attention at the 8 x 8 level too
    # (the whole latent in one step, where the layout is global)
    "lat4_b128": {**LAT4, "diffusion.batch_size": 128},
    "lat4_const_lr": {**LAT4, "diffusion.lr_schedule": "constant"},
    "lat4_attn_both": {**LAT4, "diffusion.attention_levels": [True, True]},
    # (k) a more compressed latent: four autoencoder levels, 4 x 4 x 8 latents (half the numbers of 8 x 8 x 4), in
    # which the layout is a few latent positions' channels rather than a spatial pattern that averaging blurs
    "lat8_4x4": {**LAT4, f"{AE}.block_out_channels": [16, 32, 64, 64], f"{AE}.latent_channels": 8},
    # (l) four times the generative training images (procedural, of the same difficulty; test and external as
    # before; the autoencoder the default data's, the judge trained on the larger train_a): whether the step past
    # the Gaussian stage at 12,000 steps is then the layout rather than copies
    "lat4_data4x": {**LAT4, "data.embedded.n_per_class.train_a": 600, "data.embedded.n_per_class.train_b": 200},
    # (m) a sharper decoder: Stable Diffusion's autoencoder recipe adds a patch-based adversarial term (and LPIPS) to
    # the reconstruction loss; the PatchGAN of the VQ-GAN (two layers: 6 x 6 patches of 32 px) from the 500th of the
    # 1,000 steps, weight 0.1 as the cLDM VQ-GAN's; whether sharper reconstructions give sharper synthetic images
    "lat4_gan": {**LAT4, f"{AE}.loss.adversarial_weight": 0.1, f"{AE}.discriminator": GAN},
    "lat4_gan0.01": {**LAT4, f"{AE}.loss.adversarial_weight": 0.01, f"{AE}.discriminator": GAN},
    "lat4_gan_perceptual": {**LAT4, f"{AE}.loss.adversarial_weight": 0.1, f"{AE}.loss.perceptual_weight": 0.1,
                            f"{AE}.discriminator": GAN},
    "lat4_gan_perceptual_aeseed1": {**LAT4, f"{AE}.loss.adversarial_weight": 0.1, f"{AE}.loss.perceptual_weight": 0.1,
                                    f"{AE}.discriminator": GAN, AE_SEED: 1},
    "lat4_perceptual": {**LAT4, f"{AE}.loss.perceptual_weight": 0.1},  # the perceptual term alone
    # half the adversarial weight beside the perceptual term: whether COM's colour fringe is the weight's
    "lat4_gan0.05_perceptual": {**LAT4, f"{AE}.loss.adversarial_weight": 0.05, f"{AE}.loss.perceptual_weight": 0.1,
                                f"{AE}.discriminator": GAN},
    "lat4_gan0.05_perceptual_aeseed1": {**LAT4, f"{AE}.loss.adversarial_weight": 0.05,
                                        f"{AE}.loss.perceptual_weight": 0.1, f"{AE}.discriminator": GAN, AE_SEED: 1},
    # (n) the class in every ResNet block: the prompt's tokens attention-pooled into the timestep embedding
    # (diffusers' TextTimeEmbedding), where the default's denoiser sees it at its 4 x 4 cross-attention only
    "lat4_gan_perceptual_pooled": {**LAT4_GP, "diffusion.pooled_prompt": True},
    # the same model sampled from t = 999 (trailing spacing) instead of t = 931 (leading, 16 steps), where the
    # cosine schedule leaves 0.106 of the signal that pure noise does not have (Lin et al. 2024, section 3.3);
    # the training does not read the spacing, so the weights are those of lat4_gan_perceptual
    "lat4_gan_perceptual_trailing": {**LAT4_GP, "diffusion.timestep_spacing": "trailing"},
    # min-SNR-gamma's v-loss weight min(SNR, 5) / (SNR + 1) is about the SNR at the noisiest steps (2e-9 at t = 999):
    # the steps that trailing spacing starts from are hardly trained; the plain v-loss weights them as the others
    "lat4_gan_perceptual_nosnr": {**LAT4_GP, "diffusion.snr_gamma": None},
    "lat4_gan_perceptual_nosnr_trailing": {**LAT4_GP, "diffusion.snr_gamma": None,
                                           "diffusion.timestep_spacing": "trailing"},
    # diffusion at pixel resolution: a one-level autoencoder (no downsampling, 32 x 32 x 4, near identity) under
    # the same denoiser, the pixel-space baseline without a second diffusion code path
    "pixel": {**CHOSEN, f"{AE}.block_out_channels": [16], f"{AE}.latent_channels": 4},
    # (c) sampling only
    "ddim50": {"generate.num_inference_steps": 50},
    "guidance4": {"generate.settings.cfg2.guidance_scale": 4.0},
    "guidance1": {"generate.settings.cfg2.guidance_scale": 1.0},
}
SAMPLING_MODEL = "lr_snr"  # whose trained model the sampling-only set-ups sample


def set_key(cfg: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = cfg
    for key in path:
        if key not in node:
            raise KeyError(f"set-up key {dotted}: {key!r} is not in the config")
        node = node[key]
    node[last] = copy.deepcopy(value)


def study_config(overrides: dict) -> dict:
    """The default config with ``overrides``, one seed, the first setting, no trajectory or interpolation."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["experiment"] = "quality_study"
    for key in ("trajectory", "interpolation"):
        cfg.pop(key, None)
    cfg["generate"]["seeds"] = [0]
    first = next(iter(cfg["generate"]["settings"]))
    cfg["generate"]["settings"] = {first: cfg["generate"]["settings"][first]}
    for dotted, value in overrides.items():
        set_key(cfg, dotted, value)
    return cfg


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def shared_stages(plan: Plan, work: Path) -> dict[str, Path]:
    """Ingest, preprocessing and the feature network, once per data / preprocessing / feature-network config."""
    base = work / "shared" / digest([plan.data_params(), plan.preprocess_params(), plan.feature_net_params()])
    p = {"raw": base / "data" / "manifest.parquet", "manifest": base / "preprocess" / "manifest.parquet",
         "feature_net": base / "feature_net" / "model.pt", "real_features": base / "feature_net" / "features.parquet"}
    if not p["raw"].exists():
        ingest(p["raw"], base / "data" / "images", plan.data_params())
    if not p["manifest"].exists():
        preprocess(p["raw"], p["manifest"], base / "preprocess" / "qc.parquet", plan.preprocess_params(), threads=2)
    if not p["feature_net"].exists():
        train_feature_net(p["manifest"], p["feature_net"], base / "feature_net" / "train_log.parquet",
                          plan.feature_net_params(), features_out=p["real_features"], threads=2)
    return p


def autoencoder_stage(plan: Plan, work: Path, manifest: Path, feature_net: Path, seed: int | None = None
                      ) -> tuple[Path, dict, float]:
    """The set-up's autoencoder, trained once per distinct section (and ``seed``: its training seed instead of the
    config's, the data unchanged)."""
    name = plan.variant_autoencoder(next(iter(plan.variants)))
    params = plan.autoencoder_params(name)
    if seed is not None:
        params["seed"] = int(seed)
    base = work / "autoencoder" / digest(params)
    model = base / "model"
    if not model.exists():
        t = time.perf_counter()
        train_autoencoder(manifest, model, base / "train_log.parquet", params, feature_net=feature_net, threads=2)
        (base / "seconds.txt").write_text(f"{time.perf_counter() - t:.1f}")
    if not (base / "recon.parquet").exists():
        reconstruction_metrics(manifest, model, base / "recon.parquet", base / "recon_per_image.parquet",
                               plan.autoencoder_metrics_params(name), feature_net=feature_net)
    seconds = float((base / "seconds.txt").read_text())
    recon = read_parquet(base / "recon.parquet")
    row = recon[recon["class"] == "all"].iloc[0]
    return model, {"ae_psnr": float(row["psnr"]), "ae_ssim": float(row["ssim"])}, seconds


def rescaled_autoencoder(model: Path, latent_std: float) -> Path:
    """A copy of the autoencoder ``model`` whose scaling factor is ``latent_std`` times its own, so that every
    stage's latents (encoded times the factor, decoded divided by it) have that standard deviation instead of 1.
    The forward process x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps then has latent_std^2 times the SNR at
    every t: the input scaling b of Chen 2023 ("On the importance of noise scheduling for diffusion models"),
    here as a study of the noise level at which the layout forms, not a pipeline option."""
    out = model.with_name(f"{model.name}_std{latent_std:g}")
    if not out.exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model, tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["scaling_factor"] = float(cfg["scaling_factor"]) * latent_std
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        tmp.rename(out)
    return out


def agreement_with_gaussian(ae: Path, model: Path, manifest: Path, plan: Plan) -> float:
    """Mean over the classes of ``structure_check.gaussian_agreement``: how much of the model's unguided samples
    the exact denoiser of a Gaussian fit of the training latents reproduces from the same noise (near 1: the
    model has learnt the latents' mean and covariance and little more; docs/quality-study.md)."""
    x, y, _ = load_images(manifest, list(GENERATIVE_SPLITS), plan.classes)
    per_class = gaussian_agreement(load_autoencoder(ae, CPU), load_diffusion(model, CPU), x, y, len(plan.classes),
                                   int(plan.config["generate"]["num_inference_steps"]),
                                   bool(plan.config["diffusion"]["hflip"]))
    return round(float(np.mean(per_class)), 4)


def copy_audit(manifest: Path, gen_manifest: Path, plan: Plan) -> dict[str, float]:
    """The pipeline's memorization audit (``pipeline_lib.memorization``, the config's settings) of a set-up's
    synthetic images: ``copies``, the share above the 99th percentile of the held-out images' similarity to their
    nearest training image (about 1 % would be by chance), and ``authenticity`` (Alaa et al.: the share not
    closer to its nearest training image than that image is to its own nearest neighbour; held-out real images
    score about 0.7 here). A denoiser past the Gaussian stage may be past it towards its training images."""
    m = plan.config["memorization"]
    real = read_parquet(manifest, required=("path", "split"))
    result = audit_sets(read_images(manifest, real[real["split"].isin(m["train_splits"])]),
                        read_images(gen_manifest, read_parquet(gen_manifest, required=("path",))),
                        read_images(manifest, real[real["split"].isin(m["heldout_splits"])]), **audit_settings(m))
    return {"copies": round(float(result.synthetic["is_copy"].mean()), 4),
            "authenticity": round(authenticity(result.synthetic["closer_than_neighbour"]), 4)}


def steps_for_budget(plan: Plan, variant: str, manifest: Path, ae: Path, work: Path, budget: float) -> tuple[int, float]:
    """Steps that fit in ``budget`` seconds: two probes (5 and 45 steps), their difference timing 40 steps
    without the set-up cost both share. The probes run from fresh weights; a long run's steps were measured up to
    1.7x slower than the probe's on this machine (``diffusion_s`` is the real time)."""
    params = plan.diffusion_params(variant)
    times = {}
    for n in (5, 45):
        out = work / f"probe{n}"
        t = time.perf_counter()
        train_diffusion(manifest, ae, out / "model", out / "log.parquet",
                        {**params, "steps": n, "checkpoint_every": 10_000, "lr_warmup_steps": 0}, threads=2)
        times[n] = time.perf_counter() - t
    rate = 40 / max(1e-3, times[45] - times[5])
    return max(50, int(round(budget * rate / 10)) * 10), rate


def grid(real_manifest: Path, gen_manifest: Path, classes: list[str], path: Path, n: int = 8) -> None:
    """Real test images (upper row) over synthetic images (lower row), per class."""
    real, gen = read_parquet(real_manifest), read_parquet(gen_manifest)
    rows = []
    for c in classes:
        for table, split, m in ((real, "test", real_manifest), (gen, "synthetic", gen_manifest)):
            paths = table[(table["label"] == c) & (table["split"] == split)]["path"].head(n)
            rows.append(np.concatenate([read_rgb(resolve_path(m, p)) for p in paths], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).resize((rows[0].shape[1] * 3, len(rows) * rows[0].shape[0] * 3),
                                                          Image.NEAREST).save(path)


def sampling_only(overrides: dict) -> bool:
    return bool(overrides) and all(k.startswith("generate.") for k in overrides)


def regime(budget: float, steps: int | None, train_seed: int | None) -> str:
    """The folder / file label of a run: its time budget or fixed step count, and its training seed if not the
    config's."""
    label = f"steps{steps}" if steps else f"budget{budget:g}"
    return label if train_seed is None else f"{label}_seed{train_seed}"


def run_setup(name: str, overrides: dict, work: Path, budget: float, steps: int | None = None,
              train_seed: int | None = None) -> dict:
    """One set-up trained, sampled and judged. ``steps``: a fixed step count instead of the ``budget``'s (the
    pipeline's own regime, for set-ups whose speed differs); ``train_seed``: the denoiser's training seed instead
    of the config's (data, autoencoder, generation and classifier seeds unchanged), for the spread of one set-up."""
    if sampling_only(overrides):
        overrides = {**SETUPS[SAMPLING_MODEL], **overrides}
    latent_std = float(overrides.get(LATENT_STD, 1.0))
    ae_seed = overrides.get(AE_SEED)
    plan = Plan.from_config(study_config({k: v for k, v in overrides.items() if not k.startswith("study.")}),
                            check_timm=False)
    shared = shared_stages(plan, work)
    # the autoencoder always learns the default data (its cache key is its section alone): a set-up that changes
    # the data changes the denoiser's training set and the judge, not the latent space
    ae_plan = Plan.from_config(study_config({k: v for k, v in overrides.items()
                                             if not k.startswith(("study.", "data."))}), check_timm=False)
    ae_shared = shared if ae_plan.data_params() == plan.data_params() else shared_stages(ae_plan, work)
    ae, ae_row, ae_seconds = autoencoder_stage(ae_plan, work, ae_shared["manifest"], ae_shared["feature_net"],
                                               ae_seed)
    if latent_std != 1.0:
        ae = rescaled_autoencoder(ae, latent_std)
    variant = next(iter(plan.variants))
    setting = next(iter(plan.config["generate"]["settings"]))
    label = regime(budget, steps, train_seed)
    steps_fixed = bool(steps)
    out = work / name
    done = out / f"row_{label}.json"
    gen_dir = out / "generate" / label
    if done.exists():  # an earlier row; the Gaussian agreement and the copy audit added where it has none
        row = json.loads(done.read_text())
        if "gauss_agreement" not in row and not sampling_only(SETUPS[name]):
            row["gauss_agreement"] = agreement_with_gaussian(ae, out / label / "model", shared["manifest"], plan)
        if "copies" not in row:
            row |= copy_audit(shared["manifest"], gen_dir / "manifest.parquet", plan)
        done.write_text(json.dumps(row))
        return row
    diff_params = plan.diffusion_params(variant)
    if train_seed is not None:
        diff_params["seed"] = int(train_seed)
    if sampling_only(SETUPS[name]):  # SAMPLING_MODEL's model, sampled otherwise
        model = work / SAMPLING_MODEL / label / "model"
        base_row = json.loads((work / SAMPLING_MODEL / f"row_{label}.json").read_text())
        steps, rate, train_s = base_row["steps"], base_row["steps_per_s"], base_row["diffusion_s"]
    else:
        if not steps_fixed:
            steps, rate = steps_for_budget(plan, variant, shared["manifest"], ae, out / "probe", budget)
        model = out / label / "model"
        t = time.perf_counter()
        if not model.exists():
            train_diffusion(shared["manifest"], ae, model, model.parent / "train_log.parquet",
                            {**diff_params, "steps": steps}, threads=2)
        train_s = time.perf_counter() - t
        if steps_fixed:  # no probe: the run's own rate
            rate = steps / train_s
    t = time.perf_counter()
    generate(shared["manifest"], ae, model, gen_dir / "images", gen_dir / "manifest.parquet",
             plan.generate_params(variant, setting, 0), threads=2)
    gen_s = time.perf_counter() - t
    quality = evaluate_synthetic(shared["manifest"], shared["feature_net"], gen_dir / "manifest.parquet",
                                 out / label / "quality.parquet", plan.evaluate_params(variant, setting, 0),
                                 real_features=shared["real_features"], threads=2)
    q = quality[(quality["reference"] == "test") & (quality["class"] == "all")].set_index("metric")["value"]
    point = "replace_100"
    scores = classify(shared["manifest"], gen_dir / "manifest.parquet", out / label / "scores.parquet",
                      out / label / "classify_log.parquet", out / label / "training_set.parquet",
                      plan.classify_params(variant, setting, 0, "small_cnn", point), threads=2)
    f1 = scores[scores["class"] == "all"].set_index("test_set")["f1"]
    grid(shared["manifest"], gen_dir / "manifest.parquet", plan.classes, out / f"grid_{label}.png")
    row = {"setup": name, "changes": json.dumps(overrides), "budget_s": np.nan if steps_fixed else budget,
           "train_seed": diff_params["seed"], "steps": steps,
           "steps_per_s": round(rate, 2), "diffusion_s": round(train_s, 1), "generate_s": round(gen_s, 1),
           "autoencoder_s": round(ae_seconds, 1), **ae_row, "fid": float(q["fid"]), "recall": float(q["recall"]),
           "coverage": float(q["coverage"]), "precision": float(q["precision"]),
           "f1_test": float(f1.get("test", np.nan)), "f1_external": float(f1.get("external", np.nan))}
    if not sampling_only(SETUPS[name]):
        row["gauss_agreement"] = agreement_with_gaussian(ae, model, shared["manifest"], plan)
    row |= copy_audit(shared["manifest"], gen_dir / "manifest.parquet", plan)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(row))
    return row


def speed_switches(threads: int = 2, repeats: int = 6) -> pd.DataFrame:
    """Diffusion training steps/s of the former default's UNet (16 x 16 x 8) and of the 8 x 8 x 8 one under the
    CPU switches: FP32, bf16 autocast, channels_last, both, and the fused Adam of the pipeline (FP32) instead of
    the per-tensor one; and, for the 8 x 8 x 8 UNet, the sampler's call (a guided batch of 128, no gradients)
    under the inference switches, bf16 weights (``speed.sampling_precision``) among them. The best of
    ``repeats`` after one warm-up."""
    from diffusion_speed import model_parts, plain_train_step

    from pipeline_lib.torchutils import adam

    torch.set_num_threads(threads)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    rows = []
    for latent in (16, 8):
        unet, penc, sched = model_parts(cfg, latent, 8)
        params = list(unet.parameters()) + list(penc.parameters())
        per_tensor, fused = torch.optim.AdamW(params, lr=1e-4), adam(params, 1e-4, decoupled=True)
        lat, lab = torch.randn(64, 8, latent, latent), torch.randint(0, 3, (64,))
        gen = torch.Generator().manual_seed(0)
        for mode in ("fp32", "bf16", "channels_last", "bf16+channels_last", "fused_adam"):
            layout = torch.channels_last if "channels_last" in mode else torch.contiguous_format
            unet.to(memory_format=layout)
            x = lat.contiguous(memory_format=layout)
            opt = fused if mode == "fused_adam" else per_tensor
            times = []
            for _ in range(repeats + 1):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in mode):
                    plain_train_step(unet, penc, sched, opt, x, lab, gen)
                times.append(time.perf_counter() - t)
            rows.append({"what": "training step", "latent": f"{latent}x{latent}x8", "switch": mode,
                         "per_s": 1 / min(times[1:])})
    unet.eval().to(memory_format=torch.contiguous_format)
    x, t = torch.randn(128, 8, 8, 8), torch.tensor(500)
    context = penc(torch.zeros(128, dtype=torch.long)).detach()
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(unet, (x, t, context), strict=False, check_trace=False).eval())
    cl_unet, cl_x = copy.deepcopy(unet).to(memory_format=torch.channels_last), x.contiguous(
        memory_format=torch.channels_last)
    # speed.sampling_precision: bf16 weights converted once, inputs cast in and the prediction back to FP32
    half = Speed(sampling_precision="bf16").for_sampling(copy.deepcopy(unet), torch.device("cpu"))
    calls = {"fp32": lambda: unet(x, t, encoder_hidden_states=context),
             "bf16": lambda: unet(x, t, encoder_hidden_states=context),
             "bf16_weights": lambda: half(x.bfloat16(), t, encoder_hidden_states=context.bfloat16()).sample.float(),
             "channels_last": lambda: cl_unet(cl_x, t, encoder_hidden_states=context),
             "inference_mode": lambda: unet(x, t, encoder_hidden_states=context),
             "jit_trace_freeze": lambda: frozen(x, t, context)}
    for mode, call in calls.items():
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            grad_off = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
            with grad_off, torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                call()
            times.append(time.perf_counter() - start)
        rows.append({"what": "sampling call, 128 latents", "latent": "8x8x8", "switch": mode,
                     "per_s": 1 / min(times[1:])})
    table = pd.DataFrame(rows)
    base = table[table["switch"] == "fp32"].set_index(["what", "latent"])["per_s"]
    table["vs_fp32"] = [r.per_s / base[(r.what, r.latent)] for r in table.itertuples()]
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), help="set-ups to run (default: all)")
    ap.add_argument("--budget", type=float, default=150.0, help="seconds of diffusion training per set-up")
    ap.add_argument("--steps", type=int, help="a fixed number of diffusion steps per set-up instead of --budget's")
    ap.add_argument("--train-seeds", type=int, nargs="+",
                    help="the denoiser's training seeds, one run each (default: the config's seed)")
    ap.add_argument("--workdir", default=str(ROOT / "results" / "quality_study"))
    ap.add_argument("--list", action="store_true", help="print the set-ups and exit")
    ap.add_argument("--speed", action="store_true", help="only the CPU speed switches' table")
    ap.add_argument("--table", action="store_true",
                    help="no training: the table of every set-up already run in --workdir at --budget")
    args = ap.parse_args()
    if args.list:
        for name, changes in SETUPS.items():
            print(f"{name:18s} {changes or '(the default config)'}")
        return
    print(machine())
    if args.speed:
        print(speed_switches().round(2).to_string(index=False))
        return
    unknown = sorted(set(args.setups) - set(SETUPS))
    if unknown:
        raise SystemExit(f"unknown set-ups {unknown}; --list shows them")
    setups = args.setups
    if any(sampling_only(SETUPS[s]) for s in setups) and SAMPLING_MODEL not in setups:
        setups = [SAMPLING_MODEL, *setups]  # the sampling-only set-ups sample its model
    work = Path(args.workdir)
    rows = []
    runs = [(name, seed) for name in setups for seed in (args.train_seeds or [None])]
    if args.table:
        rows = [json.loads(p.read_text()) for name, seed in runs
                if (p := work / name / f"row_{regime(args.budget, args.steps, seed)}.json").exists()]
    for name, seed in [] if args.table else runs:
        rows.append(run_setup(name, SETUPS[name], work, args.budget, args.steps, seed))
        print(pd.DataFrame(rows).drop(columns=["changes"]).round(3).to_string(index=False), flush=True)
    table = save("quality_budget", rows)
    cols = ["setup", "train_seed", "steps", "steps_per_s", "diffusion_s", "ae_psnr", "fid", "recall", "coverage",
            "f1_test", "f1_external", "gauss_agreement", "copies", "authenticity"]
    print(table[[c for c in cols if c in table]].round(3).to_markdown(index=False))
    if args.train_seeds and len(args.train_seeds) > 1:  # each set-up's mean and standard deviation over the seeds
        spread = table.groupby("setup", sort=False)[["fid", "recall", "coverage", "f1_test", "f1_external"]]
        print(spread.agg(["mean", "std"]).round(3).to_markdown())


if __name__ == "__main__":
    main()
