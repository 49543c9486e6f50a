"""Prompt encoders: ``forward(class_index (B,)) -> (B, L, D)``, the last index being the empty prompt.

With no pretrained text encoder on disk, ``PromptEncoder`` embeds the prompt's words with a small embedding
table learnt together with the UNet. ``FrozenTextEmbeddings`` holds the prompt embeddings of a local, frozen
text encoder: the Stable Diffusion folder's own ``text_encoder/`` and ``tokenizer/`` (transformers
``CLIPTextModel`` / ``CLIPTokenizer``: SD 1.5's OpenAI CLIP ViT-L/14, SD 2.1's OpenCLIP ViT-H/14, whose stored
encoder already ends at the penultimate layer SD 2 conditions on), or an open_clip checkpoint (Stable Diffusion
2.1 conditions its UNet on the penultimate layer of OpenCLIP ViT-H/14's text transformer; CLUE fine-tunes SD 2.1
with its prompts).

The prompts are fixed (one per class, CLUE Table 1, plus the empty prompt for classifier-free guidance) and the
encoder is frozen, so their token embeddings are computed once and kept as a buffer: sampling needs no text
model. The checkpoint is a local file or folder; nothing is downloaded.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .io import local_file, log

LAYERS = ("auto", "penultimate", "last")  # auto: penultimate for open_clip, the folder's last layer for transformers


def tokenize(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", prompt.lower())


class PromptEncoder(ModelMixin, ConfigMixin):
    """Word embeddings plus positions for a fixed set of prompts, learnt with the UNet (no pretrained text encoder
    on disk); output (B, max_length, dim). Its saved config says ``kind: learned_word_embeddings``."""

    @register_to_config
    def __init__(self, classes: list[str], prompts: list[str], dim: int = 32, max_length: int = 16,
                 kind: str = "learned_word_embeddings"):
        super().__init__()
        if len(classes) != len(prompts):
            raise ValueError(f"expected one prompt per class, got {len(prompts)} prompts for {len(classes)} classes")
        words = sorted({w for p in prompts for w in tokenize(p)})
        self.vocab = {"<pad>": 0} | {w: i + 1 for i, w in enumerate(words)}
        ids = torch.zeros(len(prompts) + 1, max_length, dtype=torch.long)  # last row: the empty prompt
        for i, p in enumerate(prompts):
            toks = [self.vocab[w] for w in tokenize(p)][:max_length]
            ids[i, : len(toks)] = torch.tensor(toks)
        self.register_buffer("prompt_ids", ids, persistent=False)
        self.embed = torch.nn.Embedding(len(self.vocab), dim)
        self.position = torch.nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.norm = torch.nn.LayerNorm(dim)

    @property
    def null_index(self) -> int:
        return len(self.config.prompts)

    def forward(self, class_index: torch.Tensor) -> torch.Tensor:
        """``class_index`` (B,) with ``null_index`` for the empty prompt -> (B, max_length, dim)."""
        return self.norm(self.embed(self.prompt_ids[class_index]) + self.position)


def load_open_clip(model_name: str, checkpoint: Path) -> torch.nn.Module:
    """A frozen open_clip model (text and image towers) from a local checkpoint file, on the CPU."""
    import open_clip

    return open_clip.create_model(model_name, pretrained=str(checkpoint), device="cpu").eval().requires_grad_(False)


@torch.no_grad()
def open_clip_prompt_embeddings(model_name: str, checkpoint: str | Path, prompts: Sequence[str],
                                layer: str = "penultimate") -> torch.Tensor:
    """Token embeddings (len(prompts), context_length, width) of ``prompts`` after the ``layer`` of the text
    transformer and the final layer norm, as Stable Diffusion 2's FrozenOpenCLIPEmbedder."""
    import open_clip

    if layer not in LAYERS:
        raise ValueError(f"diffusion.text_encoder.layer must be one of {LAYERS}, got {layer!r}")
    layer = "penultimate" if layer == "auto" else layer
    path = local_file(checkpoint, "diffusion.text_encoder.checkpoint", f"a local open_clip checkpoint of {model_name}")
    model = load_open_clip(model_name, path)
    tokens = open_clip.get_tokenizer(model_name)(list(prompts))
    x = model.token_embedding(tokens) + model.positional_embedding
    blocks = model.transformer.resblocks
    for block in blocks[: len(blocks) - 1] if layer == "penultimate" else blocks:
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    log.info("prompt embeddings: open_clip %s from %s, %s layer, frozen; shape %s", model_name, path, layer,
             tuple(x.shape))
    return x.float()


def text_encoder_folder(cfg: Mapping[str, Any], pretrained: str | None) -> Path | None:
    """The folder holding ``text_encoder/`` and ``tokenizer/`` that ``diffusion.text_encoder.folder`` names:
    ``pretrained`` is ``diffusion.pretrained``'s; None when no folder is configured."""
    folder = cfg.get("folder")
    if not folder:
        return None
    if folder == "pretrained":
        if not pretrained:
            raise ValueError("diffusion.text_encoder.folder: 'pretrained' names diffusion.pretrained's text encoder, "
                             "but diffusion.pretrained is null")
        folder = pretrained
    return Path(folder)


@torch.no_grad()
def transformers_prompt_embeddings(folder: str | Path, prompts: Sequence[str], layer: str = "auto") -> torch.Tensor:
    """Token embeddings (len(prompts), model_max_length, width) of ``prompts`` by the folder's ``CLIPTextModel``,
    tokenised by its ``CLIPTokenizer`` padded to its maximum length, as diffusers' StableDiffusionPipeline encodes
    a prompt (``auto`` / ``last``: the final hidden state, after the final layer norm); ``penultimate``: the
    hidden state before the last layer, through the final layer norm (CLIP skip 1)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    if layer not in LAYERS:
        raise ValueError(f"diffusion.text_encoder.layer must be one of {LAYERS}, got {layer!r}")
    folder = Path(folder)
    for sub, needed in (("text_encoder", "config.json"), ("tokenizer", "tokenizer_config.json")):
        if not (folder / sub / needed).is_file():
            raise FileNotFoundError(f"diffusion.text_encoder.folder: {folder / sub / needed} not found; expected a "
                                    f"Stable Diffusion folder with text_encoder/ and tokenizer/ (transformers format)")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    model = CLIPTextModel.from_pretrained(str(folder / "text_encoder")).eval().requires_grad_(False)
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    out = model(ids, output_hidden_states=layer == "penultimate")
    norm = getattr(model, "text_model", model).final_layer_norm  # transformers 4 nests it in text_model
    x = norm(out.hidden_states[-2]) if layer == "penultimate" else out.last_hidden_state
    log.info("prompt embeddings: %s from %s, %s layer, frozen; shape %s", type(model).__name__, folder,
             "last" if layer == "auto" else layer, tuple(x.shape))
    return x.float()


class FrozenTextEmbeddings(ModelMixin, ConfigMixin):
    """The same interface as the learnt ``PromptEncoder``: ``forward(class_index (B,)) -> (B, L, D)``, the last
    row being the empty prompt; here the rows are fixed embeddings of a frozen text encoder."""

    @register_to_config
    def __init__(self, classes: list[str], prompts: list[str], dim: int, max_length: int,
                 kind: str = "open_clip"):
        super().__init__()
        if len(classes) != len(prompts):
            raise ValueError(f"expected one prompt per class, got {len(prompts)} prompts for {len(classes)} classes")
        self.register_buffer("embeddings", torch.zeros(len(prompts) + 1, max_length, dim))

    @property
    def null_index(self) -> int:
        return len(self.config.prompts)

    def forward(self, class_index: torch.Tensor) -> torch.Tensor:
        return self.embeddings[class_index]


def frozen_prompt_encoder(classes: Sequence[str], prompts: Sequence[str], cfg: Mapping[str, Any],
                          pretrained: str | None = None) -> FrozenTextEmbeddings | None:
    """``FrozenTextEmbeddings`` of the class prompts and the empty prompt from ``diffusion.text_encoder`` (a
    transformers folder, or an open_clip checkpoint); None when neither is configured (a learnt encoder)."""
    layer = cfg.get("layer") or "auto"
    folder = text_encoder_folder(cfg, pretrained)
    if folder is not None:
        emb = transformers_prompt_embeddings(folder, [*prompts, ""], layer)
        kind = f"transformers:{folder}:{layer}"
    elif cfg.get("open_clip_model"):
        emb = open_clip_prompt_embeddings(cfg["open_clip_model"], cfg["checkpoint"], [*prompts, ""], layer)
        kind = f"open_clip:{cfg['open_clip_model']}:{layer}"
    else:
        return None
    enc = FrozenTextEmbeddings(list(classes), list(prompts), int(emb.shape[-1]), int(emb.shape[1]), kind=kind)
    enc.embeddings.copy_(emb)
    return enc.requires_grad_(False)
