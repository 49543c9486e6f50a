"""Training entry points smoke-tested on tiny data: the artefacts they promise exist, load and make sense."""
import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_lib.autoencoder import train_autoencoder
from pipeline_lib.data import CLASSES
from pipeline_lib.diffusion import build_unet, load_diffusion, train_diffusion
from pipeline_lib.generate import generate
from pipeline_lib.text import PromptEncoder
from conftest import SHARED



@pytest.fixture(scope="module")
def trained_ae(tiny_manifest, tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("ae")
    params = {**tiny_config["autoencoder"]["kl4"], "name": "kl4", **SHARED}
    train_autoencoder(tiny_manifest, out / "model", out / "log.parquet", params)
    return out


def test_prompt_encoder_shapes_and_null_prompt():
    enc = PromptEncoder(["a", "b"], ["Membrane is clear.", "Membrane is perforated."], dim=8, max_length=6)
    out = enc(torch.tensor([0, 1, enc.null_index]))
    assert out.shape == (3, 6, 8)
    assert not torch.allclose(out[0], out[1])
    assert enc.prompt_ids[enc.null_index].eq(0).all()


def test_unet_attention_levels_must_match():
    with pytest.raises(ValueError, match="needs one entry per block"):
        build_unet(8, 8, {"block_out_channels": [8, 16], "attention_levels": [True], "layers_per_block": 1,
                          "cross_attention_dim": 8, "attention_head_dim": 4, "norm_num_groups": 4})


def _first_block_time_input(unet, prompt: torch.Tensor) -> torch.Tensor:
    """What the first ResNet block of the UNet receives as its timestep embedding for ``prompt``."""
    seen = []
    hook = unet.down_blocks[0].resnets[0].time_emb_proj.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        unet(torch.zeros(1, 4, 8, 8), 10, encoder_hidden_states=prompt)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("pooled", [False, True])
def test_pooled_prompt_reaches_the_timestep_input_of_every_block(pooled, tmp_path):
    """diffusion.pooled_prompt: the prompt's tokens, pooled, join the timestep embedding, so the first level's ResNet
    (no cross-attention there) sees which prompt it is; without it that input is the timestep's alone. The saved
    model keeps the layer."""
    torch.manual_seed(0)
    params = {"block_out_channels": [16, 32], "attention_levels": [False, True], "layers_per_block": 1,
              "cross_attention_dim": 16, "attention_head_dim": 8, "norm_num_groups": 8, "pooled_prompt": pooled}
    unet = build_unet(8, 4, params).eval()
    a, b = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    differs = not torch.equal(_first_block_time_input(unet, a), _first_block_time_input(unet, b))
    assert differs == pooled
    unet.save_pretrained(tmp_path)
    again = type(unet).from_pretrained(tmp_path).eval()
    assert torch.equal(_first_block_time_input(again, a), _first_block_time_input(unet, a))


def test_pooled_prompt_on_a_pretrained_unet_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="diffusion.pooled_prompt: true .* pretrained UNet"):
        build_unet(8, 4, {"pretrained": str(tmp_path), "pooled_prompt": True})


@pytest.fixture(scope="module")
def trained_diffusion(trained_ae, tiny_manifest, tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("diff")
    d = {k: v for k, v in tiny_config["diffusion"].items() if k != "variants"}
    params = {**d, "conditioning": "class", "variant": "class", **SHARED}
    train_diffusion(tiny_manifest, trained_ae / "model", out / "model", out / "log.parquet", params)
    return out, params


def test_train_diffusion_artefacts(trained_diffusion):
    out, _ = trained_diffusion
    log = pd.read_parquet(out / "log.parquet")
    assert np.isfinite(log["loss"]).all() and len(log) > 0
    model = load_diffusion(out / "model", torch.device("cpu"))
    assert model.scheduler.config.prediction_type == "v_prediction"
    assert list(model.prompt_encoder.config.classes) == list(CLASSES) and model.conditioning.name == "class"
    assert model.prompt_encoder.config.kind == "learned_word_embeddings"  # named as such in the saved config


def test_a_new_conditioning_is_one_class_and_one_registry_entry(tiny_manifest, tiny_ae, diffusion_params, tmp_path,
                                                               monkeypatch):
    """docs/development.md's example: the class name as the prompt, a subclass and a registry line, nothing else."""
    from pipeline_lib.conditioning import REGISTRY
    from pipeline_lib.conditioning.prompt import ClassPrompt
    from pipeline_lib.generate import sample_latents

    class ClassName(ClassPrompt):
        name = "class_name"

        @classmethod
        def for_training(cls, params, feature_net, clusters):
            return super().for_training({**params, "prompts": {c: c for c in params["classes"]}}, feature_net,
                                        clusters)

        @staticmethod
        def prompts(params):
            return list(params["classes"])

    monkeypatch.setitem(REGISTRY, "class_name", ClassName)
    params = diffusion_params(steps=2, variant="named", conditioning="class_name", prompts={})
    train_diffusion(tiny_manifest, tiny_ae, tmp_path / "model", tmp_path / "log.parquet", params)
    model = load_diffusion(tmp_path / "model", torch.device("cpu"))
    assert isinstance(model.conditioning, ClassName) and list(model.prompt_encoder.config.prompts) == list(CLASSES)
    c = model.unet.config
    shape = (c.in_channels, c.sample_size, c.sample_size)
    lat = sample_latents(model, 1, 2, shape, 2, 2.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert lat.shape == (2, *shape) and torch.isfinite(lat).all()


def test_generate_counts_determinism_and_mask(trained_ae, trained_diffusion, tiny_manifest, tmp_path,
                                              tiny_config):
    out, _ = trained_diffusion
    g = {k: v for k, v in tiny_config["generate"].items() if k not in ("settings", "seeds")}
    params = {**g, "guidance_scale": 2.0, "variant": "class", "setting": "cfg2", **SHARED, "seed": 3,
              "preprocess": tiny_config["preprocess"]}
    a = generate(tiny_manifest, trained_ae / "model", out / "model", tmp_path / "a" / "images",
                 tmp_path / "a" / "manifest.parquet", params)
    real = pd.read_parquet(tiny_manifest)
    per_class = real[real["split"] == "train_a"].groupby("label").size()
    assert a.groupby("label").size().to_dict() == per_class.to_dict()
    import cv2

    img = cv2.imread(str(tmp_path / "a" / a["path"].iloc[0]))
    assert img[0, 0].max() == 0  # outside the field of view, as preprocessing leaves real images
    # A resumed run (some images already in the partial folder) gives the same images.
    partial = tmp_path / "b" / "images.partial"
    partial.mkdir(parents=True)
    first = a["image_id"].iloc[0]
    (partial / f"{first}.png").write_bytes((tmp_path / "a" / "images" / f"{first}.png").read_bytes())
    b = generate(tiny_manifest, trained_ae / "model", out / "model", tmp_path / "b" / "images",
                 tmp_path / "b" / "manifest.parquet", params)
    for image_id in b["image_id"]:
        assert (tmp_path / "a" / "images" / f"{image_id}.png").read_bytes() == \
            (tmp_path / "b" / "images" / f"{image_id}.png").read_bytes()
    assert not partial.exists()
    assert (b["finalize"] == a["finalize"]).all()
    assert set(a["finalize"]) <= {"preprocessed"} | {f for f in a["finalize"] if f.startswith("fov_mask: ")}
    assert not list((tmp_path / "a" / "images").glob(".finalize_*"))


def test_finalize_synthetic_is_the_real_preprocessing_or_the_fov_mask(tiny_config):
    from pipeline_lib.generate import finalize_synthetic, fov_mask
    from pipeline_lib.preprocess import preprocess_image

    pre = {**tiny_config["preprocess"], "image_size": 32}
    rng = np.random.default_rng(0)
    frame = (rng.integers(60, 200, (32, 32, 3)) * fov_mask(32)[..., None]).astype(np.uint8)
    small = np.zeros((32, 32, 3), np.uint8)
    cv2.circle(small, (12, 14), 9, (150, 120, 90), -1)
    for f in (frame, small):
        out, status = finalize_synthetic(f, pre)
        assert status == "preprocessed" and np.array_equal(out, preprocess_image(f, pre)[0])
    out, status = finalize_synthetic(np.zeros((32, 32, 3), np.uint8), pre)
    assert status.startswith("fov_mask: no region brighter") and not out.any()
