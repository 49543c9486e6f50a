"""Prompt embeddings from a local open_clip text encoder (a tiny model the test registers and saves)."""
import json

import pytest
import torch

from pipeline_lib.data import CLASSES
from pipeline_lib.text import FrozenTextEmbeddings, frozen_prompt_encoder, open_clip_prompt_embeddings

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
PROMPTS = ["Tympanic membrane is translucent.", "Tympanic membrane has fluid behind it.", "Tympanic membrane is perforated."]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("open_clip")
    (d / "medaug-tiny-clip.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(str(d))
    torch.manual_seed(0)
    model = open_clip.create_model("medaug-tiny-clip", pretrained=None).eval()
    torch.save(model.state_dict(), d / "tiny.pt")
    return model, d / "tiny.pt"


def test_last_layer_matches_open_clips_encode_text(tiny_clip):
    import open_clip
    from open_clip.transformer import text_global_pool

    model, ckpt = tiny_clip
    ours = open_clip_prompt_embeddings("medaug-tiny-clip", ckpt, PROMPTS, layer="last")
    tokens = open_clip.get_tokenizer("medaug-tiny-clip")(PROMPTS)
    assert ours.shape == (3, 77, 32)
    pooled = text_global_pool(ours, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    with torch.no_grad():
        torch.testing.assert_close(pooled @ model.text_projection, model.encode_text(tokens), rtol=1e-5, atol=1e-5)
    penultimate = open_clip_prompt_embeddings("medaug-tiny-clip", ckpt, PROMPTS)
    assert not torch.allclose(penultimate, ours)


def test_frozen_encoder_keeps_prompts_and_the_empty_prompt(tiny_clip, tmp_path):
    _, ckpt = tiny_clip
    cfg = {"open_clip_model": "medaug-tiny-clip", "checkpoint": str(ckpt), "layer": "penultimate"}
    enc = frozen_prompt_encoder(list(CLASSES), PROMPTS, cfg)
    assert enc.config.kind == "open_clip:medaug-tiny-clip:penultimate" and enc.null_index == 3
    ref = open_clip_prompt_embeddings("medaug-tiny-clip", ckpt, [*PROMPTS, ""])
    torch.testing.assert_close(enc(torch.tensor([2, 3])), ref[[2, 3]])
    assert not any(p.requires_grad for p in enc.parameters())
    enc.save_pretrained(tmp_path / "enc")
    again = FrozenTextEmbeddings.from_pretrained(str(tmp_path / "enc"))
    torch.testing.assert_close(again.embeddings, enc.embeddings)
    with pytest.raises(FileNotFoundError, match="text_encoder.checkpoint: .*missing.pt does not exist"):
        open_clip_prompt_embeddings("medaug-tiny-clip", tmp_path / "missing.pt", PROMPTS)


def test_diffusion_trains_on_open_clip_prompts(tiny_clip, tiny_manifest, tiny_ae, diffusion_params, tmp_path):
    from pipeline_lib.diffusion import load_diffusion, train_diffusion
    from pipeline_lib.generate import sample_latents

    _, ckpt = tiny_clip
    params = diffusion_params(steps=2, text_encoder={"open_clip_model": "medaug-tiny-clip", "checkpoint": str(ckpt),
                                                     "layer": "penultimate"})
    train_diffusion(tiny_manifest, tiny_ae, tmp_path / "m", tmp_path / "l.parquet", params)
    model = load_diffusion(tmp_path / "m", torch.device("cpu"))
    assert isinstance(model.prompt_encoder, FrozenTextEmbeddings) and model.unet.config.cross_attention_dim == 32
    lat = sample_latents(model, 0, 2, (4, 8, 8), 2, 2.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.isfinite(lat).all()
