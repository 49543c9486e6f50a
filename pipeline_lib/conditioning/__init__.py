"""What a diffusion variant is conditioned on, as one interface: a ``Conditioning`` object per kind (class
prompts, CLUE style latent, multi-level image embeddings, cluster ids), one file each, in ``REGISTRY``.

The object builds its modules around the UNet, gives the training step and the sampler their extra inputs, plans
the images to generate, and saves / loads itself beside the UNet; ``pipeline_lib.diffusion`` (training, loading)
and ``pipeline_lib.generate`` (sampling) call these methods and never branch on the kind. A fifth kind is one
new file with a ``Conditioning`` subclass and one line in ``REGISTRY`` (docs/development.md shows one).

The life of a conditioning in training (``train_diffusion``), in this order (the order of the random draws):
``condition_index`` (each training image's condition), ``frozen_context`` (a frozen text encoder, built before
the UNet), the UNet (``unet_overrides``, ``gated_unet``), ``context_encoder`` (the cross-attention context of a
condition index; its ``null_index`` is the unconditional input of classifier-free guidance), ``extra_modules``
(trained with the UNet; may fill ``per_image``, inputs drawn with each training batch), then per step
``begin_step`` (a staged schedule: which parameters learn), ``training_context`` (the batch's cross-attention
context), ``loss_inputs`` (the UNet's ``cross_attention_kwargs`` and extra loss terms), after the last step
``finish`` and ``save``. In sampling:
``load`` (from the model folder), ``sampler_inputs`` (drawn after x_T from the same generator) and
``image_counts`` (what to generate, how many of each).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from .base import SAVED, Conditioning, TrainingData
from .clue import ClueStyle
from .cluster import ClusterIds
from .multilevel import MultiLevel
from .prompt import ClassPrompt

REGISTRY: dict[str, type[Conditioning]] = {c.name: c for c in (ClassPrompt, ClueStyle, MultiLevel, ClusterIds)}
__all__ = ["REGISTRY", "Conditioning", "TrainingData", "kind_of", "load_conditioning", "options_of"]


def kind_of(params: Mapping[str, Any]) -> type[Conditioning]:
    kind = params.get("conditioning", "class")
    if kind not in REGISTRY:
        raise ValueError(f"diffusion variant {params.get('variant')!r}: conditioning must be one of "
                         f"{tuple(REGISTRY)}, got {kind!r}")
    return REGISTRY[kind]


def options_of(params: Mapping[str, Any]) -> dict:
    """The variant's own options for its conditioning, with their defaults; an error names any option of another
    conditioning set on it."""
    cls = kind_of(params)
    for other in REGISTRY.values():
        given = {k: params[k] for k in other.defaults if params.get(k) is not None}
        if other is not cls and given:
            raise ValueError(f"diffusion variant {params.get('variant')!r}: {sorted(given)} apply to "
                             f"`conditioning: {other.name}` only, the variant has {cls.name!r}")
    return {**cls.defaults, **{k: params[k] for k in cls.defaults if params.get(k) is not None}}


def load_conditioning(model_dir: str | Path, unet, device: torch.device) -> tuple[Conditioning, torch.nn.Module]:
    """The conditioning a model folder was trained with (its ``conditioning.json``) and its context encoder."""
    saved = Path(model_dir) / SAVED
    if not saved.is_file():
        raise FileNotFoundError(f"{saved}: not found; expected a model folder written by the diffusion stage "
                                f"(folders from before conditioning.json existed need retraining)")
    kind = json.loads(saved.read_text())["conditioning"]
    if kind not in REGISTRY:
        raise ValueError(f"{saved}: conditioning {kind!r} is not one of {tuple(REGISTRY)}")
    return REGISTRY[kind].load(Path(model_dir), unet, device)

