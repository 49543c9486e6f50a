"""Image classifiers trained from scratch: the domain feature network and the downstream classifiers.

CLUE (section 5, Table 5) trains InceptionV3 from random weights on Dataset 1A with Adam (1e-3) and a
ReduceLROnPlateau scheduler (patience 10, factor 0.5) on the validation loss, keeping the best epoch. The same
protocol is used here with the architecture chosen in the config: ``small_cnn`` (the CPU default),
``resnet18`` or ``inception_v3`` (torchvision, random weights; InceptionV3 wants 299 px inputs).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .io import log
from .metrics import classification_scores

ARCHS = ("small_cnn", "resnet18", "inception_v3")


class SmallCNN(nn.Module):
    """Three conv stages and a ``feature_dim`` penultimate layer (the features used for FID and recall)."""

    def __init__(self, n_classes: int, feature_dim: int = 64, width: int = 16):
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(2))

        self.body = nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.neck = nn.Sequential(nn.Linear(4 * width, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, feature_dim)
        return self.neck(self.body(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five feature levels: the three conv stages (B, C, H/2^k, W/2^k), the pooled (B, 4w, 1, 1) and the
        penultimate features (B, feature_dim, 1, 1)."""
        levels = []
        for module in self.body:
            x = module(x)
            if isinstance(module, nn.Sequential):
                levels.append(x)
        levels.append(x[..., None, None])
        levels.append(self.neck(x)[..., None, None])
        return levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TorchvisionNet(nn.Module):
    """A torchvision architecture with random weights; features are the input of its final linear layer."""

    LEVELS = {"resnet18": ("relu", "layer1", "layer2", "layer3", "layer4"),
              "inception_v3": ("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c")}

    def __init__(self, arch: str, n_classes: int):
        super().__init__()
        import torchvision

        if arch == "resnet18":
            self.net = torchvision.models.resnet18(weights=None, num_classes=n_classes)
        elif arch == "inception_v3":
            self.net = torchvision.models.inception_v3(weights=None, num_classes=n_classes, aux_logits=False,
                                                       init_weights=True)
        else:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        self.arch = arch
        self.head = self.net.fc
        self.net.fc = nn.Identity()
        self.min_size = 299 if arch == "inception_v3" else 32

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.min_size:
            x = F.interpolate(x, size=(self.min_size, self.min_size), mode="bilinear", align_corners=False)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._resize(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five feature levels from the stem to the last stage (``LEVELS``), each (B, C, h, w)."""
        modules = dict(self.net.named_modules())
        levels: list[torch.Tensor] = []
        hooks = [modules[name].register_forward_hook(lambda _m, _i, out: levels.append(out))
                 for name in self.LEVELS[self.arch]]
        try:
            self.net(self._resize(x))
        finally:
            for h in hooks:
                h.remove()
        return levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_classifier(arch: str, n_classes: int, feature_dim: int = 64, width: int = 16) -> nn.Module:
    if arch == "small_cnn":
        return SmallCNN(n_classes, feature_dim, width)
    return TorchvisionNet(arch, n_classes)


def load_feature_net(path: str | Path, device: torch.device) -> nn.Module:
    """The domain feature network saved by the feature_net rule, in eval mode."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_classifier(state["params"]["arch"], state["n_classes"], int(state["params"]["feature_dim"]),
                             int(state["params"]["width"]))
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, n_classes)."""
    model.eval()
    out = [F.softmax(model(x[i:i + batch_size].to(device)), 1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([model.features(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]).numpy()


def augment(xb: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations of up to ``shift`` pixels (the border is filled with black)."""
    flip = torch.rand(len(xb), generator=gen) < 0.5
    xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
    if shift > 0:
        h, w = xb.shape[-2:]
        padded = F.pad(xb, (shift, shift, shift, shift), value=-1.0)
        dx, dy = torch.randint(0, 2 * shift + 1, (2,), generator=gen).tolist()
        xb = padded[..., dy:dy + h, dx:dx + w]
    return xb


def train_classifier(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, n_classes: int,
                     params: Mapping[str, Any], seed: int, device: torch.device) -> tuple[nn.Module, list[dict]]:
    """Adam with ReduceLROnPlateau on the validation loss (CLUE Table 5). The epoch kept, and the one early
    stopping counts from, is the one with the highest validation macro-F1 (ties: lower validation loss): a
    classifier trained on synthetic images fits them within a few epochs while its loss on real images rises
    long before its real-image F1 stops improving. Returns the model and the per-epoch log."""
    if len(x) == 0:
        raise ValueError("classifier training set is empty")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_classifier(params["arch"], n_classes, int(params["feature_dim"]), int(params["width"])).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=float(params["lr"]))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=float(params["lr_factor"]),
                                                       patience=int(params["lr_patience"]))
    bs = int(params["batch_size"])
    best, best_key, since_best, rows = None, None, 0, []
    for epoch in range(int(params["epochs"])):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            xb = augment(x[idx], int(params["shift_pixels"]), gen).to(device)
            loss = F.cross_entropy(model(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        proba = predict(model, x_val, device)
        val_loss = float(F.nll_loss(torch.log(torch.from_numpy(proba).clamp_min(1e-12)), y_val))
        scores = classification_scores(y_val.numpy(), proba, n_classes)
        sched.step(val_loss)
        rows.append({"epoch": epoch + 1, "train_loss": total / len(x), "val_loss": val_loss,
                     "val_f1_macro": scores["f1_macro"], "lr": opt.param_groups[0]["lr"]})
        key = (-scores["f1_macro"], val_loss)
        if best_key is None or key < best_key:
            best, best_key, since_best = copy.deepcopy(model.state_dict()), key, 0
        else:
            since_best += 1
            if since_best >= int(params["early_stopping_patience"]):
                break
    model.load_state_dict(best)
    log.info("%s: best validation macro-F1 %.4f (loss %.4f) of %d epochs", params["arch"], -best_key[0],
             best_key[1], len(rows))
    return model.eval(), rows
