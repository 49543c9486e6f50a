"""Image classifiers trained from scratch: the domain feature network and the downstream classifiers.

CLUE (section 5, Table 5) trains InceptionV3 from random weights on Dataset 1A with Adam (1e-3) and a
ReduceLROnPlateau scheduler (patience 10, factor 0.5) on the validation loss, keeping the best epoch. The same
protocol is used here with the architecture chosen in the config: ``small_cnn`` (the CPU default) or any timm
model by name (``inception_v3``, ``vgg16``, ``resnet18``, ...; random weights, images resized to ``input_size``).
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
from .speed import Speed
from .torchutils import Checkpoint, adam, fingerprint, to_device


def resize_to(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of a (B, C, H, W) batch to size x size; None keeps it as it is."""
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


class SmallCNN(nn.Module):
    """Three conv stages and a ``feature_dim`` penultimate layer (the features used for FID and recall)."""

    def __init__(self, n_classes: int, feature_dim: int = 64, width: int = 16, input_size: int | None = None):
        super().__init__()
        self.input_size = input_size

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(2))

        self.body = nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.neck = nn.Sequential(nn.Linear(4 * width, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, feature_dim)
        return self.neck(self.body(resize_to(x, self.input_size)))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five feature levels: the three conv stages (B, C, H/2^k, W/2^k), the pooled (B, 4w, 1, 1) and the
        penultimate features (B, feature_dim, 1, 1)."""
        levels, x = [], resize_to(x, self.input_size)
        for module in self.body:
            x = module(x)
            if isinstance(module, nn.Sequential):
                levels.append(x)
        levels.append(x[..., None, None])
        levels.append(self.neck(x)[..., None, None])
        return levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TimmNet(nn.Module):
    """A timm architecture (``timm.create_model(arch, pretrained=False)``: random weights, nothing downloaded).
    ``features`` are its pre-logits (the input of the classifier layer), ``feature_maps`` five intermediate
    levels (``forward_intermediates``). Inputs are resized to ``input_size`` x ``input_size`` batch by batch
    (CLUE trains InceptionV3 at 299 px); None keeps the images' own size."""

    def __init__(self, arch: str, n_classes: int, input_size: int | None = None):
        super().__init__()
        import timm

        if not timm.is_model(arch):
            raise ValueError(f"arch {arch!r} is neither small_cnn nor a timm model name (timm.list_models())")
        self.net = timm.create_model(arch, pretrained=False, num_classes=n_classes)
        self.arch = arch
        self.input_size = input_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(resize_to(x, self.input_size)), pre_logits=True)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five feature levels from the stem to the last stage, each (B, C, h, w)."""
        try:
            return self.net.forward_intermediates(resize_to(x, self.input_size), indices=5, intermediates_only=True)
        except NotImplementedError as err:
            raise ValueError(f"timm model {self.arch!r} has no forward_intermediates, so it gives no feature "
                             f"levels (perceptual distance, multi-level embeddings); use another arch") from err

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(resize_to(x, self.input_size))


def build_classifier(arch: str, n_classes: int, feature_dim: int = 64, width: int = 16,
                     input_size: int | None = None) -> nn.Module:
    """``small_cnn`` (feature_dim, width) or any timm model name; both resize inputs to ``input_size``."""
    if arch == "small_cnn":
        return SmallCNN(n_classes, feature_dim, width, input_size)
    return TimmNet(arch, n_classes, input_size)


def classifier_from_params(params: Mapping[str, Any], n_classes: int) -> nn.Module:
    """The classifier an `evaluate` or `classify` config slice describes."""
    size = params.get("input_size")
    return build_classifier(params["arch"], n_classes, int(params["feature_dim"]), int(params["width"]),
                            None if size is None else int(size))


def load_feature_net(path: str | Path, device: torch.device) -> nn.Module:
    """The domain feature network saved by the feature_net rule, in eval mode."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = classifier_from_params(state["params"], state["n_classes"])
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


@torch.no_grad()
def check_input_size(model: nn.Module, x: torch.Tensor, params: Mapping[str, Any]) -> None:
    """One image through the untrained network: an architecture that cannot take images this small (timm's
    inception_v3 needs at least 75 px) fails here with the key to set, before any training."""
    model.eval()
    try:
        model(x.to(next(model.parameters()).device))
    except RuntimeError as err:
        raise ValueError(f"arch {params['arch']!r} cannot take {x.shape[-2]} x {x.shape[-1]} px images "
                         f"(input_size: {params.get('input_size')}): set `input_size` of this section to a "
                         f"larger side (CLUE: 299 for inception_v3) [{err}]") from err


def augment(xb: torch.Tensor, shift: int, gen: torch.Generator, hflip: bool = True) -> torch.Tensor:
    """Random horizontal flips (each image with probability 1/2, when ``hflip``) and translations of up to
    ``shift`` pixels (the border is filled with black): the trainer's ``hflip`` and ``shift_pixels``. Neither
    paper states an augmentation (CLUE Table 5, the multi-level paper's protocol); the paper configs turn both
    off."""
    if hflip:
        flip = torch.rand(len(xb), generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
    if shift > 0:
        h, w = xb.shape[-2:]
        padded = F.pad(xb, (shift, shift, shift, shift), value=-1.0)
        dx, dy = torch.randint(0, 2 * shift + 1, (2,), generator=gen).tolist()
        xb = padded[..., dy:dy + h, dx:dx + w]
    return xb


def train_classifier(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, n_classes: int,
                     params: Mapping[str, Any], seed: int, device: torch.device,
                     checkpoint: str | Path | None = None) -> tuple[nn.Module, list[dict]]:
    """Adam with ReduceLROnPlateau on the validation loss (CLUE Table 5). The epoch kept, and the one early
    stopping counts from, is the one with the highest validation macro-F1 (ties: lower validation loss): a
    classifier trained on synthetic images fits them within a few epochs while its loss on real images rises
    long before its real-image F1 stops improving. Returns the model and the per-epoch log.

    With ``checkpoint`` (a file path) the state after every epoch is kept there: a killed job resumes at the
    next epoch and ends with the same model and log as an uninterrupted one. The caller removes it when done."""
    if len(x) == 0:
        raise ValueError("classifier training set is empty")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = classifier_from_params(params, n_classes).to(device)
    check_input_size(model, x[:1], params)
    speed = Speed.from_params(params).enable(device)
    model = speed.prepare(model)
    opt = adam(model.parameters(), float(params["lr"]))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=float(params["lr_factor"]),
                                                       patience=int(params["lr_patience"]))
    bs = int(params["batch_size"])
    best, best_key, since_best, stopped, rows, start = None, None, 0, False, [], 0
    ckpt = None
    if checkpoint is not None:
        ckpt = Checkpoint(checkpoint, {**params, "n_classes": n_classes, "seed": seed,
                                       "data": fingerprint(x, y, x_val, y_val)})
        start, rows = ckpt.load({"model": model}, {"opt": opt, "sched": sched}, gen)
        if start:
            best, since_best, stopped = ckpt.extra["best"], ckpt.extra["since_best"], ckpt.extra["stopped"]
            best_key = tuple(ckpt.extra["best_key"])
    for epoch in range(start, int(params["epochs"])):
        if stopped:
            break
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            xb = speed.batch(to_device(augment(x[idx], int(params["shift_pixels"]), gen,
                                               bool(params.get("hflip", True))), device))
            with speed.autocast(device):
                loss = F.cross_entropy(model(xb), to_device(y[idx], device))
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
            stopped = since_best >= int(params["early_stopping_patience"])
        if ckpt is not None:
            ckpt.save({"model": model}, {"opt": opt, "sched": sched}, gen, epoch + 1, rows,
                      {"best": best, "best_key": list(best_key), "since_best": since_best, "stopped": stopped})
    model.load_state_dict(best)
    log.info("%s: best validation macro-F1 %.4f (loss %.4f) of %d epochs", params["arch"], -best_key[0],
             best_key[1], len(rows))
    return model.eval(), rows
