"""The base of every conditioning kind (see ``pipeline_lib.conditioning`` for the life of one)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import pandas as pd
import torch

from ..io import read_parquet

SAVED = "conditioning.json"  # in the model folder: the kind and its options


class Conditioning:
    """The base of every kind: each hook's default is what conditioning on the class needs (no extra modules,
    inputs or loss terms; ``scale`` x train_a images per class); ``ClassPrompt`` adds the prompt encoder."""

    name: ClassVar[str]
    defaults: ClassVar[dict] = {}  # the variant keys this kind adds, with their defaults
    gated_unet: ClassVar[bool] = False  # the UNet is built with GLIGEN's gated self-attention blocks
    unused_parameters: bool = False  # some parameters get no gradient in some steps (DDP must know); per object
    sampling_keys: ClassVar[tuple[str, ...]] = ()  # generation-setting keys the sampler reads
    # The model folder is also a diffusers StableDiffusionPipeline folder (model_index.json): only where the saved
    # UNet and the prompt embeddings are all that sampling needs.
    diffusers_pipeline: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any]):
        self.options = dict(options)
        self.modules: dict[str, torch.nn.Module] = {}  # the trained extra modules, by saved name
        self.per_image: list[torch.Tensor] = []  # training inputs aligned with the latents, drawn with each batch

    @classmethod
    def for_training(cls, params: Mapping[str, Any], feature_net: str | Path | None,
                     clusters: Mapping[str, str | Path] | None) -> "Conditioning":
        """The conditioning of a variant's ``params``; an error names an input it needs and does not have."""
        from . import options_of

        return cls(options_of(params))

    # --- training ---------------------------------------------------------------------------------------------
    def condition_index(self, images: pd.DataFrame, labels: torch.Tensor) -> torch.Tensor:
        """The condition of each training image (rows ``images``, class indices ``labels``)."""
        return labels

    def frozen_context(self, params: Mapping[str, Any]) -> torch.nn.Module | None:
        """A frozen context encoder built before the UNet (its width sets the UNet's), or None."""
        return None

    def unet_overrides(self, frozen: torch.nn.Module | None) -> dict:
        return {}

    def context_encoder(self, unet, frozen: torch.nn.Module | None, params: Mapping[str, Any]) -> torch.nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define context_encoder")

    def extra_modules(self, unet, data: "TrainingData", device: torch.device) -> dict[str, torch.nn.Module]:
        """Modules trained with the UNet (saved under their names), installed in the UNet where they act."""
        return {}

    def begin_step(self, step: int, modules: Mapping[str, torch.nn.Module]) -> dict:
        """Called before each training step (counted from 0, also after a resume): a kind with stages sets which
        of its parameters learn in this step; returns extra columns of the step's row in the training log."""
        return {}

    def training_context(self, modules: Mapping[str, torch.nn.Module], latents: torch.Tensor, cond: torch.Tensor,
                         drop: torch.Tensor, batch: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        """The cross-attention context of one training batch: the context encoder of the conditions ``cond``
        (the null index where ``drop``); a kind whose condition depends on the latents overrides it."""
        return modules["prompt_encoder"](cond)

    def loss_inputs(self, modules: Mapping[str, torch.nn.Module], latents: torch.Tensor, context: torch.Tensor,
                    drop: torch.Tensor, batch: list[torch.Tensor], gen: torch.Generator
                    ) -> tuple[dict, dict[str, tuple[torch.Tensor, float]]]:
        """The UNet's ``cross_attention_kwargs`` for one training batch and the extra loss terms (name ->
        (value, weight)); ``drop`` (B,) marks the samples whose condition is dropped, ``batch`` the
        ``per_image`` tensors of the batch."""
        return {}, {}

    def finish(self, modules: Mapping[str, torch.nn.Module]) -> None:
        """Called once after the last training step (with the saved, e.g. EMA, weights), before saving."""

    def save(self, folder: Path) -> None:
        """Write the kind and its options (the modules are saved with the UNet's, by name)."""
        (folder / SAVED).write_text(json.dumps({"conditioning": self.name, **self.options}, sort_keys=True))

    # --- sampling ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: Path, unet, device: torch.device) -> tuple["Conditioning", torch.nn.Module]:
        """The conditioning and its context encoder from a saved model folder, its modules installed in the UNet."""
        raise NotImplementedError(f"{cls.__name__} must define load")

    def sampler_inputs(self, class_index: int, n: int, guided: bool, generator: torch.Generator,
                       device: torch.device, settings: Mapping[str, Any]) -> dict:
        """The UNet's ``cross_attention_kwargs`` for ``n`` samples of one condition (doubled for the two passes
        of classifier-free guidance when ``guided``: unconditional first); ``settings`` are the generation
        setting's values of ``sampling_keys``."""
        return {}

    def image_counts(self, context: torch.nn.Module, manifest: str | Path, params: Mapping[str, Any],
                     model_dir: str | Path) -> tuple[list[str], dict[str, int], Callable[[int], dict]]:
        """The conditions to generate, how many images of each, and the extra manifest columns of an image of
        condition index i. Classes: ``scale`` x the real train_a images of the class (the replacement and
        scaling protocols of CLUE)."""
        classes = list(params["classes"])
        if list(context.config.classes) != classes:
            raise ValueError(f"{model_dir}: model was trained for classes {context.config.classes}, config has "
                             f"{classes}")
        real = read_parquet(manifest, required=("label", "split"))
        train_a = real[real["split"] == "train_a"].groupby("label").size()
        counts = {c: math.ceil(float(params["scale"]) * int(train_a.get(c, 0))) for c in classes}
        return classes, counts, lambda i: {}


class TrainingData:
    """What ``extra_modules`` may need of the training set: the preprocessed manifest, its rows, their images
    (the unflipped (N, 3, H, W) tensor in [-1, 1]), condition indices (N,) and latents (the posterior means,
    (N, C, h, w)), the autoencoder's folder, the domain feature network and the variant's params."""

    def __init__(self, manifest: str | Path, rows: pd.DataFrame, images: torch.Tensor, labels: torch.Tensor,
                 feature_net: str | Path | None, params: Mapping[str, Any], latents: torch.Tensor | None = None,
                 ae_dir: str | Path | None = None):
        self.manifest, self.rows, self.images, self.labels = manifest, rows, images, labels
        self.feature_net, self.params, self.latents, self.ae_dir = feature_net, params, latents, ae_dir


def saved_options(model_dir: Path) -> dict:
    """The options a conditioning was saved with."""
    saved = json.loads((model_dir / SAVED).read_text())
    saved.pop("conditioning")
    return saved
