"""VQ-GAN pieces around ``diffusers.VQModel`` (section 3.2 of the cLDM paper): nearest-codebook quantisation
with the codebook and commitment terms, and the PatchGAN discriminator (Isola et al. 2017) with its losses.

L_VQVAE = L_rec + L_cb + beta * L_commit (cLDM paper, section 3.2; beta = 0.2), with
L_cb = || sg[E(x)] - e ||^2 (moves the codebook towards the encoder outputs) and
L_commit = || E(x) - sg[e] ||^2 (keeps the encoder near its codes); the decoder sees the straight-through
estimate E(x) + sg[e - E(x)]. The perceptual (LPIPS) and adversarial terms are added by the training loop.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import VQModel


def vector_quantize(ae: VQModel, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantise encoder outputs ``h`` (B, D, H, W) to their nearest codebook entries (the same argmin of the
    Euclidean distance that ``VQModel.decode`` applies). Returns the straight-through latents (B, D, H, W), the
    codebook and commitment losses, and the code indices (B * H * W,)."""
    b, d, hh, ww = h.shape
    z = h.permute(0, 2, 3, 1).reshape(-1, d)  # (B*H*W, D)
    codebook = ae.quantize.embedding.weight  # (K, D)
    idx = torch.cdist(z, codebook).argmin(1)
    e = codebook[idx]
    cb_loss = F.mse_loss(e, z.detach())
    commit_loss = F.mse_loss(z, e.detach())
    zq = z + (e - z).detach()
    return zq.view(b, hh, ww, d).permute(0, 3, 1, 2), cb_loss, commit_loss, idx


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): strided 4x4 convolutions with batch norm and LeakyReLU(0.2); every output
    value judges one receptive-field patch of the input. (B, 3, H, W) -> (B, 1, h, w)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"`n_layers` must be at least 1, got {n_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = channels
        for n in range(1, n_layers + 1):
            c_out = channels * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN initialisation, as pix2pix
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


GAN_LOSSES = ("hinge", "vanilla")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Hinge: mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))), halved (as the VQGAN reference); vanilla: the
    binary cross-entropy of pix2pix's PatchGAN, halved the same way."""
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())
    if kind == "vanilla":
        return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())
    raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {kind!r}")


def generator_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """The decoder's adversarial term: -mean(D(G(z))) (hinge) or -log sigmoid(D(G(z))) (vanilla)."""
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "vanilla":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {kind!r}")
