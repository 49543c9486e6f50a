"""GPU speed switches at the paper resolution: Stable Diffusion fine-tuning steps/s, DDIM sampling images/s and
peak GPU memory, for each configuration of the `speed` section. The UNet is Stable Diffusion 2.1's own
architecture (its unet/config.json: 320-640-1280-1280 channels, linear projections, 5-10-20-20 heads, 1024-d
cross-attention) or SD 1.5's (``--unet sd15``), on the 64 x 64 x 4 latents of 512 px images (``--latent-channels
8``: the 8-channel VAE's), conditioned on frozen 77-token prompt embeddings as the folder's text encoder gives
them, under SD's scaled_linear noise schedule (CLUE Table 3: batch 4; sampling with classifier-free guidance).
``--pretrained FOLDER`` takes the UNet (weights included), the schedule and the prompt embeddings from a local
Stable Diffusion folder instead, exactly as the diffusion stage fine-tunes it.

    .venv/bin/python benchmarks/gpu_speed.py                    # on a GPU; every configuration
    .venv/bin/python benchmarks/gpu_speed.py --only fp32 bf16 --pretrained models/stable-diffusion-2-1
    .venv/bin/python benchmarks/gpu_speed.py --small            # a small UNet on the CPU: checks the script runs

The pipeline's own code paths are timed: ``build_unet`` / ``noise_scheduler`` / ``frozen_prompt_encoder`` as the
diffusion stage calls them, ``optimiser_step`` of its training loop and ``sample_latents`` of the generation, each
with ``Speed.prepare`` / ``Speed.autocast`` as the stages use them.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import save  # noqa: E402

from pipeline_lib.conditioning import REGISTRY  # noqa: E402
from pipeline_lib.diffusion import DiffusionModel, Objective, build_unet, noise_scheduler, optimiser_step  # noqa: E402
from pipeline_lib.generate import sample_latents, with_sampler  # noqa: E402
from pipeline_lib.speed import Speed  # noqa: E402
from pipeline_lib.text import FrozenTextEmbeddings, PromptEncoder, frozen_prompt_encoder  # noqa: E402

# unet/config.json of Stable Diffusion 2.1 (768 px, v-prediction) and 1.5: the architecture keys.
SD_UNETS = {
    "sd21": {"block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": [5, 10, 20, 20],
             "cross_attention_dim": 1024, "use_linear_projection": True, "upcast_attention": True, "sample_size": 96},
    "sd15": {"block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8, "cross_attention_dim": 768,
             "use_linear_projection": False, "upcast_attention": False, "sample_size": 64},
}
SD_COMMON = {"down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "layers_per_block": 2,
             "norm_num_groups": 32, "in_channels": 4, "out_channels": 4}
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
               "timestep_spacing": "leading", "steps_offset": 1}
SMALL = {"block_out_channels": [32, 64], "attention_levels": [False, True], "layers_per_block": 1,
         "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 16}
CONFIGS = {
    "fp32": {},
    "tf32": {"tf32": True},
    "bf16": {"mixed_precision": "bf16"},
    "bf16+tf32+channels_last": {"mixed_precision": "bf16", "tf32": True, "channels_last": True},
    "bf16, classic attention": {"mixed_precision": "bf16", "attention": "classic"},
    "fp32, classic attention": {"attention": "classic"},
    "bf16+tf32+compile": {"mixed_precision": "bf16", "tf32": True, "compile": True},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sd_folder(args, channels: int) -> Path:
    """A local folder shaped as a Stable Diffusion one: ``--pretrained``, or the chosen architecture written once
    with random weights (the speed does not depend on them; 3.5 GB, removed at the end)."""
    if args.pretrained:
        return Path(args.pretrained)
    from diffusers import DDIMScheduler, UNet2DConditionModel

    folder = Path(tempfile.mkdtemp(prefix="gpu_speed_sd_"))
    arch = {**SD_COMMON, **SD_UNETS[args.unet], "in_channels": channels, "out_channels": channels}
    UNet2DConditionModel(**arch).save_pretrained(folder / "unet")
    prediction = "v_prediction" if args.unet == "sd21" else "epsilon"
    DDIMScheduler(**SD_SCHEDULE, prediction_type=prediction).save_pretrained(folder / "scheduler")
    return folder


def context(args, folder: Path, classes: list[str], dim: int) -> torch.nn.Module:
    """The prompts' frozen embeddings: the folder's text encoder with --pretrained, else random 77-token ones."""
    prompts = [f"a {c} ear" for c in classes]
    if args.pretrained and (folder / "text_encoder").is_dir():
        return frozen_prompt_encoder(classes, prompts, {"folder": "pretrained"}, str(folder))
    enc = FrozenTextEmbeddings(classes, prompts, dim, 77, kind="random stand-in")
    enc.embeddings.normal_()
    return enc.requires_grad_(False)


def measure(name: str, switches: dict, args, device: torch.device, folder: Path | None) -> dict:
    speed = Speed.from_params({"speed": switches}).enable(device)
    torch.manual_seed(0)
    classes = ["normal", "ome", "com"]
    channels = args.latent_channels
    if args.small:
        latent = 16
        unet = build_unet(latent, channels, SMALL).to(device)
        penc = PromptEncoder(classes, [f"a {c} ear" for c in classes], dim=SMALL["cross_attention_dim"]).to(device)
        sched = noise_scheduler({**SD_SCHEDULE, "prediction_type": "v_prediction"})
        what = "small"
    else:
        latent = 64  # 512 px through the VAE's factor 8
        params = {"pretrained": str(folder)}
        unet = build_unet(latent, channels, params).to(device)  # as the diffusion stage builds it
        sched = noise_scheduler(params)
        penc = context(args, folder, classes, int(unet.config.cross_attention_dim)).to(device)
        what = f"{args.pretrained} (pretrained)" if args.pretrained else f"{args.unet} architecture"
    for m in (unet, penc):
        speed.prepare(m)
    objective = Objective({"unet": unet, "prompt_encoder": penc}, REGISTRY["class"]({}), sched, 0.1)
    opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-5)
    n = 64
    mean = torch.randn(n, channels, latent, latent, device=device)
    std, y = torch.full_like(mean, 0.1), torch.randint(0, 3, (n,), device=device)
    gen = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    unet.train()
    for _ in range(args.warmup):
        optimiser_step(objective, opt, mean, std, y, [], args.batch, 1, gen, speed)
    sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        optimiser_step(objective, opt, mean, std, y, [], args.batch, 1, gen, speed)
    sync(device)
    train_s = time.perf_counter() - t
    train_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    unet.eval()
    model = with_sampler(DiffusionModel(unet, penc, sched, REGISTRY["class"]({})), "ddim")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with speed.autocast(device):
        sample_latents(model, 0, args.sample_batch, (channels, latent, latent), 2, 2.0, gen, device)  # warm-up
        sync(device)
        t = time.perf_counter()
        sample_latents(model, 0, args.sample_batch, (channels, latent, latent), args.sample_steps, 2.0, gen, device)
        sync(device)
    sample_s = time.perf_counter() - t
    sample_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"config": name, "train_steps_per_s": args.steps / train_s, "train_batch": args.batch,
            "train_peak_gib": train_mem, "sample_images_per_s": args.sample_batch / sample_s,
            "sample_batch": args.sample_batch, "ddim_steps": args.sample_steps, "sample_peak_gib": sample_mem,
            "latents": f"{channels}x{latent}x{latent}", "unet": what, "prediction": sched.config.prediction_type}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS), help="configurations to run (default: all)")
    ap.add_argument("--small", action="store_true", help="a small UNet on 16 x 16 latents (a check on the CPU)")
    ap.add_argument("--unet", choices=list(SD_UNETS), default="sd21", help="the Stable Diffusion architecture")
    ap.add_argument("--pretrained", help="a local Stable Diffusion folder: its UNet, schedule and text encoder")
    ap.add_argument("--latent-channels", type=int, default=4, help="4: SD's VAE; 8: the 8-channel VAE")
    ap.add_argument("--batch", type=int, default=4, help="training batch (CLUE Table 3: 4)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps first (compilation)")
    ap.add_argument("--sample-batch", type=int, default=8)
    ap.add_argument("--sample-steps", type=int, default=50,
                    help="DDIM steps (diffusers' default; the papers do not state theirs)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.small:
        sys.exit("no GPU: run with --small for a check of the script on the CPU")
    rows = []
    folder = None if args.small else sd_folder(args, args.latent_channels)
    for name in args.only or list(CONFIGS):
        try:
            rows.append(measure(name, CONFIGS[name], args, device, folder))
        except Exception as e:  # e.g. torch.compile without a C++ compiler: reported, the others still run
            rows.append({"config": name, "error": f"{type(e).__name__}: {e}"[:300]})
        print(rows[-1], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if folder is not None and not args.pretrained:
        shutil.rmtree(folder)
    save("gpu_speed_small" if args.small else "gpu_speed", rows)


if __name__ == "__main__":
    main()
