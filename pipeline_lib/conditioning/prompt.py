"""Conditioning on the class: the fixed-format prompt of each class (CLUE Table 1), embedded by a small learnt
word-embedding table (``text.PromptEncoder``) or, with ``diffusion.text_encoder`` set, by a frozen local text
encoder: the Stable Diffusion folder's own or an open_clip one (``text.FrozenTextEmbeddings``). The empty prompt
is the unconditional input of classifier-free guidance. The CLUE and multi-level kinds extend this one (they keep the prompt)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..text import FrozenTextEmbeddings, PromptEncoder, frozen_prompt_encoder
from .base import Conditioning, saved_options


class ClassPrompt(Conditioning):
    name = "class"
    diffusers_pipeline = True

    @classmethod
    def for_training(cls, params, feature_net, clusters):
        missing = [c for c in params["classes"] if c not in params.get("prompts", {})]
        if missing:
            raise ValueError(f"diffusion.prompts: expected a prompt for every class, missing {missing}")
        return super().for_training(params, feature_net, clusters)

    @staticmethod
    def prompts(params: Mapping[str, Any]) -> list[str]:
        return [params.get("prompts", {}).get(c, "") for c in params["classes"]]

    def frozen_context(self, params):
        return frozen_prompt_encoder(list(params["classes"]), self.prompts(params), params.get("text_encoder") or {},
                                     params.get("pretrained"))

    def unet_overrides(self, frozen):
        return {} if frozen is None else {"cross_attention_dim": frozen.config.dim}

    def context_encoder(self, unet, frozen, params):
        dim = int(unet.config.cross_attention_dim)
        if frozen is None:
            return PromptEncoder(list(params["classes"]), self.prompts(params), dim=dim,
                                 max_length=int(params["max_prompt_length"]))
        if dim != frozen.config.dim:
            raise ValueError(f"diffusion.text_encoder: {frozen.config.kind} embeds prompts in "
                             f"{frozen.config.dim} dimensions, the pretrained UNet cross-attends to {dim}")
        return frozen

    @classmethod
    def load(cls, model_dir: Path, unet, device: torch.device):
        folder = str(model_dir / "prompt_encoder")
        kind = PromptEncoder.load_config(folder).get("_class_name")
        encoder = FrozenTextEmbeddings if kind == FrozenTextEmbeddings.__name__ else PromptEncoder
        return cls(saved_options(model_dir)), encoder.from_pretrained(folder).to(device).eval()
