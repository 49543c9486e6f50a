"""Where the membrane's outline is lost: the autoencoder, the denoiser, or the sampler.

    .venv/bin/python benchmarks/structure_check.py                      # the default run's models (make run first)
    .venv/bin/python benchmarks/structure_check.py --diffusion results/quality_study/lat4/budget600/model

For the test images of each class it prints the edge strength (mean absolute difference of neighbouring pixels
in the central 16 x 16 of the 32 px images, inside every field of view; images in [-1, 1]) of: the real images;
their reconstructions by the autoencoder (the decoded posterior mean); the decoder's output for those latents
plus Gaussian noise (how the decoder treats latents off its training set); the denoiser's img2img from the
test latent noised to a sampling timestep and sampled down from there with the generation settings (how much of
an image's structure the denoiser keeps from that noise level on), with the PSNR of that output against the
reconstruction (mean per-image PSNR, as the pipeline's tables); and the synthetic images sampled from pure noise.
Beside the edges, the latents: of the training images, the share of their mean square that is their mean latent
(what every image shares); per class, how far the test images' latents and the synthetic ones spread about their
own mean latent (a denoiser that returns its class's average has a small spread). A figure (``--figure``) shows, per class,
the rows real / reconstruction / img2img from the 7th and the 11th of the 16 sampling steps / synthetic.
The table goes to benchmarks/results/structure_check.parquet.
"""
from __future__ import annotations

import argparse
import sys
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

from pipeline_lib.autoencoder import decode_latents, encode_latents, load_autoencoder  # noqa: E402
from pipeline_lib.diffusion import load_diffusion  # noqa: E402
from pipeline_lib.generate import sample_latents  # noqa: E402
from pipeline_lib.metrics import psnr  # noqa: E402
from pipeline_lib.torchutils import load_images, to_uint8, with_mirrors  # noqa: E402

CPU = torch.device("cpu")


def edge_strength(images: torch.Tensor) -> float:
    """Mean absolute difference of vertically and of horizontally neighbouring pixels (summed) in the central
    half of the images (N, C, H, W): the membrane and its outline, inside every field of view."""
    h, w = images.shape[-2:]
    c = images[..., h // 4: h - h // 4, w // 4: w - w // 4].double()
    return float((c[..., 1:, :] - c[..., :-1, :]).abs().mean() + (c[..., :, 1:] - c[..., :, :-1]).abs().mean())


def mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of images in [-1, 1], as the pipeline's reconstruction tables report it."""
    return float(psnr(a, b).mean())


@torch.no_grad()
def img2img(model, z: torch.Tensor, class_index: int, start: int, steps: int, guidance: float, seed: int
            ) -> torch.Tensor:
    """``z`` noised to the sampling schedule's step ``start`` and sampled down from there (DDIM, guidance as
    generation: uncond + w (cond - uncond)). The loop is `generate.sample_latents`' for a class-conditioned model,
    started mid-schedule, which that function does not offer (adding it would make every generation job rerun)."""
    sched = model.scheduler
    sched.set_timesteps(steps)
    t0 = sched.timesteps[start]
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
    lat = sched.add_noise(z, noise, t0.expand(len(z)))
    penc = model.prompt_encoder
    labels = torch.full((len(z),), class_index, dtype=torch.long)
    cond, uncond = penc(labels), penc(torch.full_like(labels, penc.null_index))
    for t in sched.timesteps[start:]:
        pu, pc = model.unet(torch.cat([lat, lat]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        lat = sched.step(pu + guidance * (pc - pu), t, lat, eta=0.0).prev_sample
    return lat


def spread(z: torch.Tensor) -> float:
    """Root mean square distance of latents (N, C, h, w) from their own mean latent, per latent element: how far
    a set's latents vary about what they share (the field of view, the class's colours)."""
    z = z.double()
    return float((z - z.mean(0, keepdim=True)).pow(2).mean().sqrt())


def latent_statistics(z: torch.Tensor) -> dict[str, float]:
    """Of scaled latents (N, C, h, w): mean and std over all elements, and the share of their mean square that is
    their mean latent's (the part every image shares), with the std left about that mean latent."""
    z = z.double()
    mean_latent = z.mean(0, keepdim=True)
    return {"mean": float(z.mean()), "std": float(z.std()),
            "mean_latent_share": float(mean_latent.pow(2).mean() / z.pow(2).mean()), "std_about_mean_latent": spread(z)}


class GaussianDenoiser:
    """The exact denoiser of a Gaussian fit of latents (N, C, h, w): with mean mu and covariance S = U diag(l) U^T,
    E[x_0 | x_t] = mu + U diag(sqrt(a) l / (a l + 1 - a)) U^T (x_t - sqrt(a) mu), a = abar_t. Sampled by the
    model's own DDIM steps from the same noise, it is what a denoiser that had learnt only the latents' mean and
    covariance would generate (early in training diffusion models behave so: Wang and Vastola 2023, "The hidden
    linear structure in score-based models and its application")."""

    def __init__(self, z: torch.Tensor):
        flat = z.double().flatten(1)
        self.mu = flat.mean(0)
        lam, self.u = torch.linalg.eigh(torch.cov(flat.T))
        self.lam = lam.clamp(min=0)

    def x0(self, x: torch.Tensor, abar: float) -> torch.Tensor:
        a = float(abar)
        d = (x.double().flatten(1) - a ** 0.5 * self.mu) @ self.u
        return (self.mu + (d * (a ** 0.5 * self.lam / (a * self.lam + 1 - a))) @ self.u.T).reshape(x.shape)


@torch.no_grad()
def gaussian_samples(sched, cond: GaussianDenoiser, uncond: GaussianDenoiser, noise: torch.Tensor, steps: int,
                     guidance: float) -> torch.Tensor:
    """DDIM from ``noise`` with the Gaussian denoisers, guided as generation (uncond + w (cond - uncond), here on
    the v prediction, which is linear in the x_0 estimate at a given x_t)."""
    sched.set_timesteps(steps)
    lat = noise.double()
    for t in sched.timesteps:
        a = float(sched.alphas_cumprod[int(t)])

        def v(den):
            x0 = den.x0(lat, a)
            eps = (lat - a ** 0.5 * x0) / (1 - a) ** 0.5
            return a ** 0.5 * eps - (1 - a) ** 0.5 * x0
        vu = v(uncond)
        lat = sched.step(vu + guidance * (v(cond) - vu), t, lat, eta=0.0).prev_sample
    return lat.float()


def fit_gaussians(z: torch.Tensor, labels: torch.Tensor, n_classes: int
                  ) -> tuple[list[GaussianDenoiser], GaussianDenoiser]:
    """Gaussian denoisers of training latents ``z`` (N, C, h, w) with their ``labels``: one per class and one of all
    classes (guidance's unconditional half)."""
    return [GaussianDenoiser(z[labels == k]) for k in range(n_classes)], GaussianDenoiser(z)


def training_latents(ae, x: torch.Tensor, y, hflip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images' latents and labels as the diffusion stage learns them: with their mirror images when
    ``diffusion.hflip`` (``torchutils.with_mirrors``), the originals first."""
    return encode_latents(ae, with_mirrors(x, hflip), CPU)[0], with_mirrors(torch.as_tensor(y), hflip)


def paired_samples(model, gauss: GaussianDenoiser, gauss_all: GaussianDenoiser, k: int, n: int,
                   shape: tuple[int, int, int], steps: int, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` latents of class ``k`` from the model (``generate.sample_latents``, generator seed ``k``) and from the
    Gaussian fit, sampled by the same DDIM steps from the same initial noise."""
    model_z = sample_latents(model, k, n, shape, steps, guidance, torch.Generator().manual_seed(k), CPU)
    noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(k))  # sample_latents' x_T
    return model_z, gaussian_samples(model.scheduler, gauss, gauss_all, noise, steps, guidance)


@torch.no_grad()
def gaussian_agreement(ae, model, x_train: torch.Tensor, y_train, n_classes: int, steps: int, hflip: bool,
                       n: int = 48) -> list[float]:
    """Per class, the agreement of ``n`` unguided samples of the model with the Gaussian fit's (``agreement``):
    near 1, the denoiser has learnt the latents' mean and covariance and little more."""
    z, labels = training_latents(ae, x_train, y_train, hflip)
    per_class, whole = fit_gaussians(z, labels, n_classes)
    return [agreement(*paired_samples(model, per_class[k], whole, k, n, tuple(z.shape[1:]), steps, 1.0))
            for k in range(n_classes)]


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - |a - b|^2 / |a - mean(a)|^2 over a set of latents: 1 when b reproduces a, 0 when b is no closer to a
    than a's own mean is."""
    a, b = a.double(), b.double()
    return float(1 - (a - b).pow(2).sum() / (a - a.mean(0, keepdim=True)).pow(2).sum())


def to_row(images: torch.Tensor, n: int) -> np.ndarray:
    return np.concatenate(list(to_uint8(images[:n])), axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "results" / "default"), help="a finished run's results folder")
    ap.add_argument("--autoencoder", help="autoencoder model folder (default: the run's diffusion.autoencoder)")
    ap.add_argument("--diffusion", help="diffusion model folder (default: the run's class variant)")
    ap.add_argument("--n", type=int, default=48, help="test images per class")
    ap.add_argument("--figure", default=str(ROOT / "benchmarks" / "results" / "structure_check.png"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    res = Path(args.results)
    ae = load_autoencoder(args.autoencoder or res / "autoencoder" / cfg["diffusion"]["autoencoder"] / "model", CPU)
    model = load_diffusion(args.diffusion or res / "diffusion" / "class" / "model", CPU)
    setting = next(iter(cfg["generate"]["settings"].values()))
    steps, guidance = int(cfg["generate"]["num_inference_steps"]), float(setting["guidance_scale"])
    classes = list(cfg["data"]["classes"])
    x_all, y_all, _ = load_images(res / "preprocess" / "manifest.parquet", ["test"], classes)
    print(machine())
    x_train, y_train, _ = load_images(res / "preprocess" / "manifest.parquet", ["train_a", "train_b"], classes)
    z_train, labels = training_latents(ae, x_train, y_train, bool(cfg["diffusion"]["hflip"]))
    stats = latent_statistics(z_train[:len(x_train)])  # the images themselves, without their mirrors
    gauss_class, gauss_all = fit_gaussians(z_train, labels, len(classes))
    print("training latents (scaled):", {k: round(v, 3) for k, v in stats.items()})
    rows, figure = [], []
    model.scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in model.scheduler.timesteps]
    with torch.no_grad():
        for k, name in enumerate(classes):
            x = x_all[y_all == k][: args.n]
            z, _ = encode_latents(ae, x, CPU)
            rec = decode_latents(ae, z)

            def add(what, images, **extra):
                rows.append({"class": name, "what": what, "edge_strength": edge_strength(images), **extra})

            add("real", x, latent_spread=spread(z))
            add("reconstruction", rec, psnr_to_real=mean_psnr(rec, x))
            for s in (0.1, 0.2, 0.4):
                noisy = z + s * torch.randn(z.shape, generator=torch.Generator().manual_seed(k))
                add(f"decoder, latent + N(0, {s}^2)", decode_latents(ae, noisy))
            shown = {}
            for start in (2, 6, 10):  # its noise drawn apart from the synthetic images' below (seed k)
                out = decode_latents(ae, img2img(model, z, k, start, steps, guidance, seed=1000 + k))
                shown[start] = out
                add(f"img2img from t = {timesteps[start]}", out, psnr_to_reconstruction=mean_psnr(out, rec))
            shape = tuple(z.shape[1:])
            gen_z, gauss_z = paired_samples(model, gauss_class[k], gauss_all, k, len(x), shape, steps, guidance)
            gen = decode_latents(ae, gen_z)
            add("synthetic (pure noise)", gen, latent_spread=spread(gen_z),
                agreement_with_gaussian=agreement(gen_z, gauss_z))
            unguided, gauss_unguided = paired_samples(model, gauss_class[k], gauss_all, k, len(x), shape, steps, 1.0)
            add("synthetic, guidance 1", decode_latents(ae, unguided), latent_spread=spread(unguided),
                agreement_with_gaussian=agreement(unguided, gauss_unguided))
            gauss_img = decode_latents(ae, gauss_z)
            add("Gaussian fit of the training latents, same noise", gauss_img, latent_spread=spread(gauss_z))
            figure += [to_row(x, 8), to_row(rec, 8), to_row(shown[6], 8), to_row(shown[10], 8), to_row(gen, 8),
                       to_row(gauss_img, 8)]
    table = save("structure_check", rows)
    wide = table.pivot_table(index="what", columns="class", values="edge_strength", sort=False)[classes]
    print("edge strength (mean |neighbour difference|, central 16 x 16):")
    print(wide.round(4).to_string())
    print("latent spread (rms distance from the set's mean latent):")
    print(table.dropna(subset=["latent_spread"]).pivot_table(index="what", columns="class", values="latent_spread",
                                                             sort=False)[classes].round(3).to_string())
    print("agreement of the model's samples with the Gaussian fit's from the same noise (1: the same latents):")
    print(table.dropna(subset=["agreement_with_gaussian"]).pivot_table(
        index="what", columns="class", values="agreement_with_gaussian", sort=False)[classes].round(3).to_string())
    print(table.dropna(subset=["psnr_to_reconstruction"]).groupby("what", sort=False)["psnr_to_reconstruction"]
          .mean().round(1).to_string())
    img = np.concatenate(figure, axis=0)
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(args.figure)
    print(f"rows per class: real, reconstruction, img2img from t = {timesteps[6]} and {timesteps[10]}, synthetic, "
          f"the Gaussian fit's sample from the same noise -> {args.figure}")


if __name__ == "__main__":
    main()
