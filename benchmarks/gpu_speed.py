"""GPU speed switches at the paper resolution: diffusion training steps/s, DDIM sampling images/s and peak GPU
memory of an SD 2.1-sized UNet (320-640-1280-1280 channels, 1024-d cross-attention) on the 64 x 64 x 8 latents
of 512 px images and the 8-channel VAE (CLUE Table 3: batch 4; sampling with classifier-free guidance), for
each configuration of the `speed` section.

    .venv/bin/python benchmarks/gpu_speed.py                    # on a GPU; every configuration
    .venv/bin/python benchmarks/gpu_speed.py --only fp32 bf16
    .venv/bin/python benchmarks/gpu_speed.py --small            # a small UNet on the CPU: checks the script runs

The pipeline's own code paths are timed: ``optimiser_step`` of the diffusion training loop and
``sample_latents`` of the generation, each with ``Speed.prepare`` / ``Speed.autocast`` as the stages use them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import save  # noqa: E402

from pipeline_lib.conditioning import REGISTRY  # noqa: E402
from pipeline_lib.diffusion import DiffusionModel, Objective, build_unet, noise_scheduler, optimiser_step  # noqa: E402
from pipeline_lib.generate import sample_latents, with_sampler  # noqa: E402
from pipeline_lib.speed import Speed  # noqa: E402
from pipeline_lib.text import PromptEncoder  # noqa: E402

SD21 = {"block_out_channels": [320, 640, 1280, 1280], "attention_levels": [True, True, True, False],
        "layers_per_block": 2, "cross_attention_dim": 1024, "attention_head_dim": 64, "norm_num_groups": 32}
SMALL = {"block_out_channels": [32, 64], "attention_levels": [False, True], "layers_per_block": 1,
         "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 16}
SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
            "prediction_type": "v_prediction"}
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


def measure(name: str, switches: dict, args, device: torch.device) -> dict:
    speed = Speed.from_params({"speed": switches}).enable(device)
    torch.manual_seed(0)
    classes = ["normal", "ome", "com"]
    arch = SMALL if args.small else SD21
    latent, channels = (16, 8) if args.small else (64, 8)
    unet = build_unet(latent, channels, arch).to(device)
    penc = PromptEncoder(classes, [f"a {c} ear" for c in classes], dim=arch["cross_attention_dim"]).to(device)
    for m in (unet, penc):
        speed.prepare(m)
    sched = noise_scheduler(SCHEDULE)
    objective = Objective({"unet": unet, "prompt_encoder": penc}, REGISTRY["class"]({}), sched, 0.1)
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-5)
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
            "latents": f"{channels}x{latent}x{latent}", "unet": "small" if args.small else "SD 2.1 size"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS), help="configurations to run (default: all)")
    ap.add_argument("--small", action="store_true", help="a small UNet on 16 x 16 latents (a check on the CPU)")
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
    for name in args.only or list(CONFIGS):
        try:
            rows.append(measure(name, CONFIGS[name], args, device))
        except Exception as e:  # e.g. torch.compile without a C++ compiler: reported, the others still run
            rows.append({"config": name, "error": f"{type(e).__name__}: {e}"[:300]})
        print(rows[-1], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    save("gpu_speed_small" if args.small else "gpu_speed", rows)


if __name__ == "__main__":
    main()
