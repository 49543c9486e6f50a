"""Perceptual distances: LPIPS from local backbone weights, or a substitute that says what it is.

LPIPS (Zhang et al. 2018, eq. 1): d(x, y) = sum_l 1/(H_l W_l) sum_hw || w_l * (f^l_hw(x) - f^l_hw(y)) ||^2 on
channel-normalised features f^l of an ImageNet backbone (VGG-16 in the cLDM paper, section 3.2) with linear
weights w_l calibrated on human judgements. The lpips package ships the calibrated w_l but fetches the backbone
from the internet, which the pipeline never does. So:

- ``perceptual.lpips_backbone`` set: the package's own ``lpips.LPIPS`` model is built and its backbone loaded
  from that local torchvision state dict (e.g. ``vgg16-397923af.pth``; only the ``features.*`` keys are read).
  Reported as ``lpips``.
- not set: the same formula, uncalibrated (w_l = 1), on the five feature levels of the pipeline's own domain
  network (trained from scratch on train_a). Reported as ``domain_perceptual``, in every column and log line:
  never "lpips" computed with weights it does not have.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from .io import local_file, log
from .nets import load_feature_net

LPIPS_NETS = {"vgg": "vgg16", "alex": "alexnet", "squeeze": "squeezenet1_1"}
SUBSTITUTE = "domain_perceptual"


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Normalise each position's feature vector to unit length over channels (LPIPS eq. 1)."""
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)


class LPIPSDistance(nn.Module):
    """``lpips.LPIPS`` with its calibrated linear layers and a backbone read from a local state dict."""

    name = "lpips"

    def __init__(self, net: str, backbone: str | Path):
        super().__init__()
        import lpips

        if net not in LPIPS_NETS:
            raise ValueError(f"perceptual.lpips_net must be one of {sorted(LPIPS_NETS)}, got {net!r}")
        path = local_file(backbone, "perceptual.lpips_backbone", f"a torchvision {LPIPS_NETS[net]} ImageNet state dict")
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        own = self.model.net.state_dict()
        mapped, missing = {}, []
        for key, value in own.items():  # lpips keeps torchvision's `features.<i>` modules as `slice<k>.<i>`
            src = re.sub(r"^slice\d+\.", "features.", key)
            if src not in state:
                missing.append(src)
            elif tuple(state[src].shape) != tuple(value.shape):
                raise ValueError(f"{path}: {src} has shape {tuple(state[src].shape)}, expected {tuple(value.shape)} "
                                 f"(a torchvision {LPIPS_NETS[net]} state dict)")
            else:
                mapped[key] = state[src]
        if missing:
            raise ValueError(f"{path}: not a torchvision {LPIPS_NETS[net]} state dict, missing {missing[:3]} "
                             f"and {max(len(missing) - 3, 0)} more")
        self.model.net.load_state_dict(mapped)
        self.model.eval().requires_grad_(False)
        log.info("perceptual distance: LPIPS v0.1 (%s backbone from %s, calibrated linear layers of the lpips "
                 "package)", net, path)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [-1, 1] -> (N,)
        return self.model(x, y, normalize=False).flatten()


class DomainPerceptual(nn.Module):
    """LPIPS eq. 1 with w_l = 1 on the domain network's ``feature_maps`` (five levels)."""

    name = SUBSTITUTE

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [-1, 1] -> (N,)
        fx, fy = self.network.feature_maps(x), self.network.feature_maps(y)
        return sum((_unit(a) - _unit(b)).pow(2).sum(1).flatten(1).mean(1) for a, b in zip(fx, fy))

    def train(self, mode: bool = True) -> "DomainPerceptual":  # the network stays in eval mode (batch norm)
        return self


def load_perceptual(cfg: Mapping[str, Any], feature_net: str | Path | None, device: torch.device) -> nn.Module:
    """The configured perceptual distance: LPIPS when ``cfg["lpips_backbone"]`` names local weights, else the
    domain-network substitute built from the feature_net rule's ``feature_net`` file."""
    if cfg.get("lpips_backbone"):
        return LPIPSDistance(cfg.get("lpips_net", "vgg"), cfg["lpips_backbone"]).to(device)
    if feature_net is None:
        raise ValueError("no perceptual distance: perceptual.lpips_backbone is null and no domain feature network "
                         "was given")
    log.info("LPIPS unavailable: perceptual.lpips_backbone is not set (the pipeline downloads no ImageNet weights); "
             "reporting %s, LPIPS eq. 1 uncalibrated on the domain feature network %s", SUBSTITUTE, feature_net)
    return DomainPerceptual(load_feature_net(feature_net, device))

