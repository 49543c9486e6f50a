"""Multi-level embeddings: level tokens, e_m, GLIGEN's gated adapter computing eq. (2), training and sampling."""
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_lib.data import CLASSES
from pipeline_lib.conditioning import REGISTRY
from pipeline_lib.conditioning.multilevel import load_lesion_crops
from pipeline_lib.diffusion import build_unet, diffusion_loss, load_diffusion, noise_scheduler, train_diffusion
from pipeline_lib.generate import sample_latents
from pipeline_lib.io import write_png
from pipeline_lib.multilevel import MultiLevelAdapter, MultiLevelEmbedder, cell_boxes, install_adapters, level_tokens
from pipeline_lib.text import PromptEncoder
from conftest import BF16_SAMPLING_RTOL, CPU, TINY_UNET, bf16_sampling_error

DIMS = [3, 4, 5, 6, 7]


def _levels(b=2, grid=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, grid * grid, c, generator=g) for c in DIMS]


def test_level_tokens_pool_each_level_to_grid_cells():
    f = torch.arange(16.0).view(1, 1, 4, 4)
    tokens = level_tokens([f, torch.ones(1, 3, 1, 1)], grid=2)
    torch.testing.assert_close(tokens[0], torch.tensor([[[2.5], [4.5], [10.5], [12.5]]]))  # 2x2 block means
    assert tokens[1].shape == (1, 4, 3) and (tokens[1] == 1).all()  # a 1x1 level is spread over the cells
    torch.testing.assert_close(cell_boxes(2), torch.tensor([[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1],
                                                            [.5, .5, 1, 1]]))


def test_e_m_is_the_average_of_the_projected_levels():
    emb = MultiLevelEmbedder(DIMS, dim=8, grid=2)
    levels = _levels()
    expected = sum(p(t) for p, t in zip(emb.proj, levels)) / 5
    torch.testing.assert_close(emb(levels), expected)
    kw = emb.gligen_kwargs(levels, keep=torch.tensor([True, False]))
    assert kw["boxes"].shape == (2, 4, 4) and kw["masks"].tolist() == [[1, 1, 1, 1], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="expected 5 feature levels, got 2"):
        MultiLevelEmbedder([3, 4], dim=8)


def _gated_unet(beta=1.0):
    torch.manual_seed(0)
    unet = build_unet(8, 8, TINY_UNET, gated=True)
    n = install_adapters(unet, beta)
    return unet, n


def test_adapter_with_gamma_zero_leaves_the_unet_unchanged():
    unet, n = _gated_unet()
    assert n == sum(isinstance(m, MultiLevelAdapter) for m in unet.modules()) and n > 0
    emb = MultiLevelEmbedder(DIMS, dim=16, grid=2)
    x, t, c = torch.randn(2, 8, 8, 8), torch.tensor([5, 700]), torch.randn(2, 4, 16)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=c).sample
        gated = unet(x, t, encoder_hidden_states=c,
                     cross_attention_kwargs={"gligen": emb.gligen_kwargs(_levels())}).sample
        torch.testing.assert_close(gated, plain)  # gamma = 0: tanh(0) = 0
        for m in unet.modules():
            if isinstance(m, MultiLevelAdapter):
                m.alpha_attn.fill_(0.5)
        changed = unet(x, t, encoder_hidden_states=c,
                       cross_attention_kwargs={"gligen": emb.gligen_kwargs(_levels())}).sample
        other = unet(x, t, encoder_hidden_states=c,
                     cross_attention_kwargs={"gligen": emb.gligen_kwargs(_levels(seed=1))}).sample
    assert not torch.allclose(changed, plain) and not torch.allclose(changed, other)


def test_adapter_is_eq2_by_hand_without_glgens_feed_forward():
    unet, _ = _gated_unet(beta=0.7)
    adapter = next(m for m in unet.modules() if isinstance(m, MultiLevelAdapter))
    with torch.no_grad():
        adapter.alpha_attn.fill_(0.3)
        adapter.alpha_dense.fill_(2.0)  # GLIGEN's feed-forward gate: not part of eq. 2, must have no effect
        v, objs = torch.randn(2, 16, adapter.norm1.normalized_shape[0]), torch.randn(2, 4, 16)
        e = adapter.linear(objs)
        expected = v + 0.7 * np.tanh(0.3) * adapter.attn(adapter.norm1(torch.cat([v, e], 1)))[:, :16]
        torch.testing.assert_close(adapter(v, objs), expected)
    assert not adapter.alpha_dense.requires_grad and adapter.alpha_attn.requires_grad
    with pytest.raises(ValueError, match="no gated self-attention layers"):
        install_adapters(build_unet(8, 8, TINY_UNET), 1.0)


def test_one_optimiser_step_lowers_the_multilevel_loss_on_a_fixed_batch():
    unet, _ = _gated_unet()
    penc = PromptEncoder(list(CLASSES), ["a b", "c d", "e f"], dim=16, max_length=4)
    emb = MultiLevelEmbedder(DIMS, dim=16, grid=2)
    sched = noise_scheduler({"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                             "beta_end": 0.02, "prediction_type": "v_prediction"})
    params = [p for m in (unet, penc, emb) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    lat, labels, levels = torch.randn(4, 8, 8, 8, generator=torch.Generator().manual_seed(1)), \
        torch.tensor([0, 1, 2, 0]), _levels(4)

    def loss():
        modules = {"unet": unet, "prompt_encoder": penc, "multilevel_embedder": emb}
        return diffusion_loss(modules, REGISTRY["multilevel"]({}), sched, lat, labels, 0.0,
                              torch.Generator().manual_seed(5), levels)["loss"]

    before = loss()
    opt.zero_grad()
    before.backward()
    gammas = [m.alpha_attn for m in unet.modules() if isinstance(m, MultiLevelAdapter)]
    assert all(g.grad is not None for g in gammas)
    opt.step()
    assert loss().item() < before.item()


def test_lesion_crops_replace_images_where_the_manifest_has_them(tmp_path):
    crop = np.full((8, 8, 3), 255, np.uint8)
    write_png(crop, tmp_path / "lesion_crops" / "b.png")
    (tmp_path / "m.parquet").touch()
    rows = pd.DataFrame({"image_id": ["a", "b"], "lesion_crop": [None, "lesion_crops/b.png"]})
    images = torch.zeros(2, 3, 16, 16)
    out = load_lesion_crops(tmp_path / "m.parquet", rows, images)
    assert (out[0] == 0).all() and torch.allclose(out[1], torch.ones(3, 16, 16))  # resized to the image size


@pytest.fixture(scope="module")
def multilevel_model(tiny_manifest, tiny_ae, tiny_feature_net, diffusion_params, tmp_path_factory):
    out = tmp_path_factory.mktemp("multilevel")
    params = diffusion_params(steps=6, variant="ml", conditioning="multilevel", embedding_grid=2)
    train_diffusion(tiny_manifest, tiny_ae, out / "model", out / "log.parquet", params, feature_net=tiny_feature_net)
    return out


def test_multilevel_training_saves_embedder_and_references(multilevel_model, tiny_manifest):
    log = pd.read_parquet(multilevel_model / "log.parquet")
    assert np.isfinite(log["loss"]).all() and len(log) == 6
    model = load_diffusion(multilevel_model / "model", CPU)
    assert model.conditioning.name == "multilevel" and set(model.conditioning.modules) == {"multilevel_embedder"}
    n_train = pd.read_parquet(tiny_manifest)["split"].isin(["train_a", "train_b"]).sum()
    assert len(model.conditioning.references["labels"]) == n_train and len(model.conditioning.references["levels"]) == 5
    assert any(isinstance(m, MultiLevelAdapter) for m in model.unet.modules())


def test_multilevel_sampling_is_reproducible_and_uses_references(multilevel_model):
    def sample(seed, guidance=2.0):
        model = load_diffusion(multilevel_model / "model", CPU)
        return sample_latents(model, 0, 3, (4, 4, 4), 3, guidance, torch.Generator().manual_seed(seed), CPU)

    torch.testing.assert_close(sample(1), sample(1), rtol=0, atol=0)
    assert sample(1, guidance=1.0).shape == (3, 4, 4, 4)
    with pytest.raises(ValueError, match="no reference image of class index 7"):
        model = load_diffusion(multilevel_model / "model", CPU)
        sample_latents(model, 7, 1, (4, 4, 4), 2, 2.0, torch.Generator().manual_seed(0), CPU)


def test_multilevel_sampling_in_bf16_casts_the_gligen_inputs_and_stays_close(multilevel_model):
    def sample(model):
        return sample_latents(model, 0, 3, (4, 4, 4), 3, 2.0, torch.Generator().manual_seed(1), CPU)

    assert bf16_sampling_error(multilevel_model / "model", sample) < BF16_SAMPLING_RTOL


def test_multilevel_needs_the_feature_network(tiny_manifest, tmp_path, diffusion_params):
    with pytest.raises(ValueError, match="multilevel conditioning needs the domain feature network"):
        train_diffusion(tiny_manifest, tmp_path / "ae", tmp_path / "m", tmp_path / "l.parquet",
                        diffusion_params(steps=1, variant="ml", conditioning="multilevel"))


def test_open_clip_levels_are_five_evenly_spaced_blocks(tiny_vit):
    from pipeline_lib.multilevel import OpenClipLevels

    enc = OpenClipLevels("medaug-tiny-vit", tiny_vit)
    assert enc.layers == [0, 2, 4, 6, 8]
    x = torch.rand(2, 3, 16, 16) * 2 - 1  # resized to the ViT's 32 px: 4 x 4 patches of 8 px
    maps = enc.feature_maps(x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 4)] * 5
    assert not torch.allclose(maps[0], maps[-1])
    assert all(not p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match=r"expected 5 block indices in \[0, 8\]"):
        OpenClipLevels("medaug-tiny-vit", tiny_vit, layers=[0, 1, 2, 3, 9])
    with pytest.raises(FileNotFoundError, match="diffusion.image_encoder.checkpoint: .*missing.pt does not exist"):
        OpenClipLevels("medaug-tiny-vit", tiny_vit.with_name("missing.pt"))


def test_multilevel_training_with_an_open_clip_image_encoder(tiny_vit, tiny_manifest, tiny_ae, diffusion_params,
                                                             tmp_path):
    params = diffusion_params(steps=2, variant="ml", conditioning="multilevel", embedding_grid=2,
                              image_encoder={"open_clip_model": "medaug-tiny-vit", "checkpoint": str(tiny_vit),
                                             "layers": None})
    train_diffusion(tiny_manifest, tiny_ae, tmp_path / "model", tmp_path / "log.parquet", params)  # no feature net
    refs = torch.load(tmp_path / "model" / "multilevel_references.pt", weights_only=True)
    assert [tuple(t.shape[1:]) for t in refs["levels"]] == [(4, 32)] * 5  # 2 x 2 tokens of the ViT's width
