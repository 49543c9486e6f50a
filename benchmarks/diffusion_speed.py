"""(b) Diffusion training steps/s and (c) DDIM sampling images/s of the pipeline's code against plain diffusers
loops on the same UNet, prompt encoder and batch; and classifier-free guidance batched (one UNet call on the
conditional and unconditional halves, as the pipeline does) against two passes.

    .venv/bin/python benchmarks/diffusion_speed.py                 # the default config's model and latents
    .venv/bin/python benchmarks/diffusion_speed.py --threads 1

The reference training loop is the one of diffusers' text-to-image example (add_noise, get_velocity, MSE,
backward, torch.optim.AdamW step), the pipeline's is ``optimiser_step`` with the fused Adam of
``train_diffusion``; the reference sampling loop is the one of diffusers' "deconstruct the Stable Diffusion
pipeline" guide (set_timesteps, scale_model_input, UNet on the doubled batch, guidance, scheduler.step), in FP32.
The pipeline's sampler is timed with the denoiser in FP32 and in bf16 (``speed.sampling_precision``), the
config's choice carrying the target; 64 images per call is the default's ``generate.batch_size``. Targets: both
at least 1.2x the reference (issue 23); batched guidance at least 1.6x two passes.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import best_times, save  # noqa: E402

from pipeline_lib.conditioning import REGISTRY  # noqa: E402
from pipeline_lib.diffusion import DiffusionModel, Objective, build_unet, noise_scheduler, optimiser_step  # noqa: E402
from pipeline_lib.generate import sample_latents, with_sampler  # noqa: E402
from pipeline_lib.speed import Speed  # noqa: E402
from pipeline_lib.text import PromptEncoder  # noqa: E402
from pipeline_lib.torchutils import adam  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def model_parts(cfg: dict, latent: int, channels: int):
    d = cfg["diffusion"]
    classes = cfg["data"]["classes"]
    unet = build_unet(latent, channels, d)
    penc = PromptEncoder(classes, [d["prompts"][c] for c in classes], dim=int(d["cross_attention_dim"]),
                         max_length=int(d["max_prompt_length"]))
    return unet, penc, noise_scheduler(d)


def plain_train_step(unet, penc, sched, opt, latents, labels, gen):
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(latents),), generator=gen)
    noisy = sched.add_noise(latents, noise, t)
    target = sched.get_velocity(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=penc(labels)).sample
    loss = F.mse_loss(pred.float(), target.float())
    loss.backward()
    opt.step()
    opt.zero_grad()


@torch.no_grad()
def plain_sampling(unet, penc, scheduler, n, shape, steps, guidance, gen, two_pass=False):
    scheduler.set_timesteps(steps)
    labels = torch.zeros(n, dtype=torch.long)
    cond, uncond = penc(labels), penc(torch.full_like(labels, penc.null_index))
    latents = torch.randn((n, *shape), generator=gen) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t)
        if two_pass:
            pu = unet(x, t, encoder_hidden_states=uncond).sample
            pc = unet(x, t, encoder_hidden_states=cond).sample
        else:
            pu, pc = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        latents = scheduler.step(pu + guidance * (pc - pu), t, latents, eta=0.0).prev_sample
    return latents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=10, help="steps per timing")
    ap.add_argument("--sample-batches", type=int, nargs="+", default=[4, 32, 64, 128], help="images per sampling call")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timings of each loop; the best counts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    ae = cfg["autoencoder"][cfg["diffusion"]["autoencoder"]]  # the default's latents
    latent = cfg["preprocess"]["image_size"] // 2 ** (len(ae["block_out_channels"]) - 1)
    channels = ae["latent_channels"]
    shape = (channels, latent, latent)
    bs, n_train = int(cfg["diffusion"]["batch_size"]), 512
    rows = []

    # (b) training: the same initial weights, latents and conditions for both loops
    gen = torch.Generator().manual_seed(0)
    mean, std = torch.randn((n_train, *shape), generator=gen), torch.full((n_train, *shape), 0.1)
    y = torch.randint(0, len(cfg["data"]["classes"]), (n_train,), generator=gen)
    # each loop trains its own copy of the same initial weights with its own optimiser: the example's
    # torch.optim.AdamW (per-tensor updates), the pipeline's the fused one of train_diffusion (torchutils.adam)
    torch.manual_seed(0)
    unet, penc, sched = model_parts(cfg, latent, channels)
    torch.manual_seed(0)
    unet_ours, penc_ours, _ = model_parts(cfg, latent, channels)
    objective = Objective({"unet": unet_ours, "prompt_encoder": penc_ours}, REGISTRY["class"]({}), sched,
                          float(cfg["diffusion"]["cond_dropout"]))
    opt_plain = torch.optim.AdamW([*unet.parameters(), *penc.parameters()], lr=1e-4)
    opt_ours = adam(objective.parameters(), 1e-4, decoupled=True)
    speed = Speed()

    def ours():
        for _ in range(args.train_steps):
            optimiser_step(objective, opt_ours, mean, std, y, [], bs, 1, gen, speed)

    def plain():
        for _ in range(args.train_steps):
            idx = torch.randint(0, n_train, (bs,), generator=gen)
            plain_train_step(unet, penc, sched, opt_plain,
                             mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen), y[idx], gen)

    unet.train()
    unet_ours.train()
    times = best_times({"plain": plain, "ours": ours}, args.repeats)
    t_ref, t_ours = times["plain"], times["ours"]
    rows += [{"benchmark": "b: training", "what": "plain diffusers loop", "batch": bs,
              "per_s": args.train_steps / t_ref, "unit": "steps/s", "x_reference": 1.0, "target_x": None},
             {"benchmark": "b: training", "what": "pipeline optimiser_step", "batch": bs,
              "per_s": args.train_steps / t_ours, "unit": "steps/s", "x_reference": t_ref / t_ours, "target_x": 1.2}]

    # (c) sampling: DDIM, eta 0, the default steps and guidance
    unet.eval()
    steps, w = int(cfg["generate"]["num_inference_steps"]), float(cfg["generate"]["settings"]["cfg2"]["guidance_scale"])
    # the pipeline's sampler with the denoiser in FP32 and in bf16 (speed.sampling_precision; the config's
    # choice on this CPU carries the target), the reference loop in FP32 as diffusers' guide runs it
    chosen = "bf16" if Speed.from_params(cfg).sampling_dtype(CPU) == torch.bfloat16 else "fp32"  # auto: this CPU's
    models = {p: with_sampler(DiffusionModel(Speed(sampling_precision=p).for_sampling(copy.deepcopy(unet), CPU),
                                             penc, sched, REGISTRY["class"]({})), "ddim") for p in ("fp32", "bf16")}
    scheduler = models["fp32"].scheduler
    for n in args.sample_batches:
        calls = {"ref": lambda: plain_sampling(unet, penc, scheduler, n, shape, steps, w,
                                               torch.Generator().manual_seed(1)),
                 "two": lambda: plain_sampling(unet, penc, scheduler, n, shape, steps, w,
                                               torch.Generator().manual_seed(1), two_pass=True)}
        for p, model in models.items():
            calls[p] = lambda model=model: sample_latents(model, 0, n, shape, steps, w, torch.Generator().manual_seed(1),
                                                          CPU)
        times = best_times(calls, args.repeats)
        t_ref, t_two = times["ref"], times["two"]
        rows += [{"benchmark": "c: sampling", "what": "diffusers loop, batched guidance", "batch": n,
                  "per_s": n / t_ref, "unit": "images/s", "x_reference": 1.0, "target_x": None}]
        rows += [{"benchmark": "c: sampling", "what": f"pipeline sample_latents, {p}", "batch": n,
                  "per_s": n / times[p], "unit": "images/s", "x_reference": t_ref / times[p],
                  "target_x": 1.2 if p == chosen else None} for p in models]
        rows += [{"benchmark": "c: guidance", "what": "diffusers loop, two passes", "batch": n, "per_s": n / t_two,
                  "unit": "images/s", "x_reference": 1.0, "target_x": None},
                 {"benchmark": "c: guidance", "what": "batched vs two passes", "batch": n, "per_s": n / t_ref,
                  "unit": "images/s", "x_reference": t_two / t_ref, "target_x": 1.6}]
    for r in rows:
        r["threads"], r["latent"], r["steps"] = args.threads, "x".join(map(str, shape)), steps
    save("diffusion_speed", rows)


if __name__ == "__main__":
    main()
