"""Seeding, device choice, image tensors and resumable training state, shared by the training stages."""
from __future__ import annotations

import hashlib
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .io import LOADING, atomic_path, log, read_parquet, read_rgb, resolve_path


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for the stage's own random draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def select_device(device: str = "auto") -> torch.device:
    """``auto`` takes the first visible GPU if there is one, else the CPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no GPU")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; with ``pin_memory`` a batch bound for a GPU goes through page-locked memory and is
    copied asynchronously (ordered on the current stream, so later kernels see it complete)."""
    if LOADING["pin_memory"] and device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def load_images(manifest_path: str | Path, splits: Sequence[str], classes: Sequence[str]
                ) -> tuple[torch.Tensor, torch.Tensor, pd.DataFrame]:
    """Images of ``splits`` as a float tensor in [-1, 1] of shape (N, 3, H, W), labels (N,), and their rows;
    decoded by ``speed.num_workers`` threads when it is above 1 (``io.LOADING``; the manifest's order is kept)."""
    df = read_parquet(manifest_path, required=("image_id", "path", "label", "split"))
    df = df[df["split"].isin(list(splits))].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{manifest_path}: no images in splits {list(splits)}")
    unknown = sorted(set(df["label"]) - set(classes))
    if unknown:
        raise ValueError(f"{manifest_path}: labels {unknown} are not in the configured classes {list(classes)}")
    paths = [resolve_path(manifest_path, p) for p in df["path"]]
    if LOADING["workers"] > 1:
        with ThreadPoolExecutor(max_workers=LOADING["workers"]) as pool:
            arr = np.stack(list(pool.map(read_rgb, paths)))
    else:
        arr = np.stack([read_rgb(p) for p in paths])
    x = to_tensor(arr)
    y = torch.tensor([list(classes).index(lbl) for lbl in df["label"]], dtype=torch.long)
    return x, y, df


def proportional_counts(total: int, class_sizes: np.ndarray) -> np.ndarray:
    """``total`` shared out over classes in proportion to ``class_sizes`` by largest remainders (sums to total)."""
    share = total * class_sizes / class_sizes.sum()
    counts = np.floor(share).astype(int)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def with_mirrors(x: torch.Tensor, hflip: bool) -> torch.Tensor:
    """``diffusion.hflip``: the rows of ``x`` followed by their horizontal mirror images (images (N, C, H, W); any
    other tensor, e.g. labels, repeated), else ``x`` as it is. Neither CLUE (Table 3) nor the multi-level paper
    states an augmentation of the generative training; their configs turn it off."""
    if not hflip:
        return x
    return torch.cat([x, x.flip(-1) if x.ndim == 4 else x])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1] (the papers' normalisation)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def fingerprint(*tensors: torch.Tensor) -> str:
    """A digest of the tensors' shapes, dtypes and values: part of a checkpoint's signature, so a checkpoint made
    on other training data (regenerated images, a retrained autoencoder's latents) is not resumed."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        a = t.detach().cpu().contiguous()
        h.update(repr((tuple(a.shape), str(a.dtype))).encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()


def adam(params, lr: float, decoupled: bool = False, **kwargs) -> torch.optim.Optimizer:
    """Adam (AdamW with ``decoupled``) using PyTorch's fused kernel where the parameters' device has one (CPU and
    CUDA, floating-point parameters): one kernel updates every parameter instead of about ten small operations
    per tensor, which is an eighth of a small UNet's CPU training step (the default's: 1.19x the steps/s of the
    per-tensor update on the 2-core machine, docs/performance.md). The same update rule; the rounding of its
    last bits differs from the per-tensor implementation."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, fused=fused or None, **kwargs)


LR_SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(opt: torch.optim.Optimizer, params: Mapping[str, Any], section: str
                           ) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate of step s (counted from 0) as a multiple of ``lr``: a linear warm-up over
    ``lr_warmup_steps`` (min(1, (s + 1) / warm-up)), then ``lr_schedule`` over the remaining steps: constant
    (CLUE Table 3), cosine to 0 (Loshchilov and Hutter 2017) or linear to 0. Stepped once per optimiser step;
    its state is checkpointed, so a resumed run has the same rates. ``section`` names the config section in
    messages (``diffusion``, ``autoencoder.kl4``)."""
    kind, total = params.get("lr_schedule", "constant"), int(params["steps"])
    warm = int(params.get("lr_warmup_steps", 0))
    if kind not in LR_SCHEDULES:
        raise ValueError(f"{section}.lr_schedule must be one of {list(LR_SCHEDULES)}, got {kind!r}")
    if warm >= total:
        log.warning("%s.lr_warmup_steps %d >= steps %d: the learning rate never reaches lr", section, warm, total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress if kind == "linear" else 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class Checkpoint:
    """Resumable training state kept beside an output until the job finishes.

    Holds the modules, the optimizers, the step, the random state and the loss rows so far, so a killed job
    continues where it stopped when rerun and ends with the same numbers as an uninterrupted run.
    ``optimizers`` holds anything with ``state_dict`` / ``load_state_dict`` (optimizers, an EMA).
    ``signature`` (the stage's params and a ``fingerprint`` of its training data) guards against resuming with
    other settings or data. ``extra`` holds whatever else a loop needs back (a classifier's best epoch so far).
    """

    def __init__(self, path: str | Path, signature: Mapping[str, Any]):
        self.path = Path(path)
        self.signature = repr(sorted(signature.items()))
        self.extra: dict[str, Any] = {}

    def load(self, modules: Mapping[str, torch.nn.Module], optimizers: Mapping[str, Any],
             generator: torch.Generator) -> tuple[int, list[dict]]:
        if not self.path.exists():
            return 0, []
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state["signature"] != self.signature or not (set(modules) <= set(state["modules"])
                                                          and set(optimizers) <= set(state["optimizers"])):
            # other settings, or a version of the stage that kept other states (e.g. no learning-rate schedule)
            log.info("checkpoint %s was made with other settings; starting afresh", self.path)
            return 0, []
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.extra = dict(state.get("extra", {}))
        log.info("resuming from %s at step %d", self.path, state["step"])
        return int(state["step"]), list(state["rows"])

    def save(self, modules: Mapping[str, torch.nn.Module], optimizers: Mapping[str, Any],
             generator: torch.Generator, step: int, rows: list[dict], extra: Mapping[str, Any] | None = None) -> None:
        state = {"signature": self.signature, "step": step, "rows": rows, "generator": generator.get_state(),
                 "extra": dict(extra or {}),
                 "torch_rng": torch.get_rng_state(),
                 "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                 "modules": {k: m.state_dict() for k, m in modules.items()}}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def remove(self) -> None:
        if self.path.exists():
            os.remove(self.path)


def load_adapted(cls, path: str | Path, overrides: Mapping[str, Any], subfolder: str | None = None):
    """A diffusers model saved under ``path`` (``subfolder``) rebuilt with ``overrides`` in its config.

    Every weight whose shape is unchanged comes from the folder; the others (the layers the overrides reshape,
    e.g. ``conv_in`` / ``conv_out`` for other latent channels, or added layers) keep a fresh initialisation.
    diffusers' own ``ignore_mismatched_sizes`` leaves some such tensors uninitialised, so it is not used.
    Returns the model and the names of the re-initialised tensors."""
    folder = Path(path) / subfolder if subfolder else Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a local diffusers {cls.__name__} folder (no config.json); "
                                f"the pipeline downloads nothing")
    saved = cls.from_pretrained(str(folder), low_cpu_mem_usage=False)
    model = cls.from_config({**saved.config, **overrides})
    own, theirs = model.state_dict(), saved.state_dict()
    fresh = sorted(k for k in own if k not in theirs or theirs[k].shape != own[k].shape)
    model.load_state_dict({k: (own[k] if k in fresh else theirs[k]) for k in own})
    return model, fresh
