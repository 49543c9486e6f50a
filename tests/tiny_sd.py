"""A tiny Stable-Diffusion-shaped folder, built from diffusers' and transformers' own classes as the real ones are
laid out (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/): what a user has on disk for SD 1.5
(epsilon, PNDM scheduler config) or SD 2.1 768 (v-prediction, DDIM scheduler config), at a size that trains in
seconds. The tokenizer's vocabulary is written here: every letter and digit as a BPE token, no merges."""
from __future__ import annotations

import json
import string
from pathlib import Path

HIDDEN = 32  # the text encoder's width = the UNet's cross-attention dim
SCALING_FACTOR = 0.3  # not the default 0.18215 and not what the latents' std would give


def make_sd_folder(root: Path, prediction_type: str = "epsilon", latent_channels: int = 4) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    words = root / "words"
    words.mkdir(exist_ok=True)
    (words / "vocab.json").write_text(json.dumps(vocab))
    (words / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(words / "vocab.json"), str(words / "merges.txt"), model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=latent_channels, out_channels=latent_channels,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=HIDDEN, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, scaling_factor=SCALING_FACTOR)
    schedule = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
                "prediction_type": prediction_type, "steps_offset": 1, "timestep_spacing": "leading",
                "clip_sample": False, "set_alpha_to_one": False}
    if prediction_type == "epsilon":  # SD 1.5 ships a PNDM config (its clip_sample key added below, as in the file)
        scheduler = PNDMScheduler(**{k: v for k, v in schedule.items() if k != "clip_sample"}, skip_prk_steps=True)
    else:
        scheduler = DDIMScheduler(**schedule)  # SD 2.1
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(root)
    path = root / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "clip_sample": False}, indent=2, sort_keys=True))
    return root
