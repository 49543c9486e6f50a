"""CLUE: style encoder, KL term, double cross-attention through attention processors, training and sampling."""
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_lib.clue import (StyleAdapter, StyleAttention, StyleEncoder, attach_style_adapter,
                               kl_to_standard_normal, sample_style)
from pipeline_lib.data import CLASSES
from pipeline_lib.conditioning import REGISTRY, options_of
from pipeline_lib.diffusion import build_unet, diffusion_loss, load_diffusion, noise_scheduler, train_diffusion
from pipeline_lib.generate import sample_latents
from pipeline_lib.text import PromptEncoder
from conftest import BF16_SAMPLING_RTOL, CPU, TINY_UNET, bf16_sampling_error



def _unet():
    torch.manual_seed(0)
    return build_unet(8, 8, TINY_UNET)


def test_kl_is_zero_at_the_prior_and_matches_torch_distributions():
    assert kl_to_standard_normal(torch.zeros(3, 16), torch.zeros(3, 16)).abs().max().item() == 0.0
    # By hand: mu = 1, sigma = 1 in each of 4 dimensions -> 4 * 1/2 * 1 = 2.
    assert kl_to_standard_normal(torch.ones(1, 4), torch.zeros(1, 4)).item() == pytest.approx(2.0)
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), ref, rtol=1e-5, atol=1e-6)


def test_reparameterised_sample_is_eq12():
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, float(np.log(4.0))]])
    s = sample_style(mu, logvar, torch.Generator().manual_seed(3))
    eps = torch.randn((1, 2), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(s, mu + torch.tensor([[1.0, 2.0]]) * eps)


def test_style_encoder_mirrors_the_unet_encoder_and_outputs_mu_logvar():
    unet = _unet()
    enc = StyleEncoder.like(unet, style_dim=24)
    assert list(enc.config.down_block_types) == list(unet.config.down_block_types)
    assert enc.conv_in.weight.shape == unet.conv_in.weight.shape
    assert [type(b).__name__ for b in enc.down_blocks] == [type(b).__name__ for b in unet.down_blocks]
    mu, logvar = enc(torch.randn(2, 8, 8, 8), torch.randn(2, 5, 16))
    assert mu.shape == logvar.shape == (2, 24)


def test_one_style_token_attention_by_hand():
    """Softmax over one key is 1, so z'' = W_out (W_V s) + b at every position, whatever the queries."""
    layer = StyleAttention(hidden_size=8, token_dim=6, heads=2)
    torch.nn.init.normal_(layer.to_out.weight)
    torch.nn.init.normal_(layer.to_out.bias)
    z, s = torch.randn(3, 10, 8), torch.randn(3, 1, 6)
    expected = layer.to_out(layer.to_v(s)).expand(3, 10, 8)
    torch.testing.assert_close(layer(z, s), expected, rtol=1e-5, atol=1e-6)


def test_style_adapter_starts_as_identity_then_changes_the_unet_output():
    unet = _unet()
    x, t, c = torch.randn(2, 8, 8, 8), torch.tensor([10, 600]), torch.randn(2, 4, 16)
    with torch.no_grad():
        base = unet(x, t, encoder_hidden_states=c).sample
    adapter = StyleAdapter.like(unet, style_dim=12, style_tokens=3)
    assert len(adapter.layers) == sum(n.endswith("attn2.processor") for n in unet.attn_processors)
    attach_style_adapter(unet, adapter)
    s = adapter.tokens(torch.randn(2, 12))
    assert s.shape == (2, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=c, cross_attention_kwargs={"style": s}).sample,
                                   base)  # zero-initialised output projections
        for layer in adapter.layers:
            torch.nn.init.normal_(layer.to_out.weight, std=0.1)
        a = unet(x, t, encoder_hidden_states=c, cross_attention_kwargs={"style": s}).sample
        b = unet(x, t, encoder_hidden_states=c, cross_attention_kwargs={"style": 2 * s}).sample
        plain = unet(x, t, encoder_hidden_states=c).sample  # no style: the prompt-only attention
    assert not torch.allclose(a, base) and not torch.allclose(a, b)
    torch.testing.assert_close(plain, base)


def test_conditioning_options_defaults_and_errors():
    assert options_of({"conditioning": "clue"}) == {"style_dim": 1024, "style_tokens": 1, "kl_weight": 1e-4}
    assert options_of({"conditioning": "class"}) == {}
    assert options_of({"conditioning": "multilevel", "adapter_beta": 0.5}) == {"embedding_grid": 2,
                                                                                         "adapter_beta": 0.5}
    with pytest.raises(ValueError, match=r"variant 'v': \['style_dim'\] apply to `conditioning: clue` only"):
        options_of({"conditioning": "class", "variant": "v", "style_dim": 8})
    with pytest.raises(ValueError, match=r"\['embedding_grid'\] apply to `conditioning: multilevel` only"):
        options_of({"conditioning": "clue", "variant": "v", "embedding_grid": 3})
    with pytest.raises(ValueError, match="conditioning must be one of"):
        options_of({"conditioning": "text", "variant": "v"})
    with pytest.raises(ValueError, match="must be divisible by `style_tokens`"):
        StyleAdapter([8], [2], style_dim=10, style_tokens=3)


def test_one_optimiser_step_lowers_the_clue_loss_on_a_fixed_batch():
    unet = _unet()
    penc = PromptEncoder(list(CLASSES), ["a b", "c d", "e f"], dim=16, max_length=4)
    enc, adapter = StyleEncoder.like(unet, 8), StyleAdapter.like(unet, 8)
    attach_style_adapter(unet, adapter)
    sched = noise_scheduler({"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                             "beta_end": 0.02, "prediction_type": "v_prediction"})
    params = [p for m in (unet, penc, enc, adapter) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    lat, labels = torch.randn(4, 8, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0])

    def loss():
        modules = {"unet": unet, "prompt_encoder": penc, "style_encoder": enc, "style_adapter": adapter}
        return diffusion_loss(modules, REGISTRY["clue"]({"kl_weight": 1e-2}), sched, lat, labels, 0.0,
                              torch.Generator().manual_seed(5))

    before = loss()
    assert set(before) == {"kl", "denoise", "loss"} and torch.isfinite(before["loss"])
    torch.testing.assert_close(before["loss"], before["denoise"] + 1e-2 * before["kl"])
    opt.zero_grad()
    before["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    opt.step()
    assert loss()["loss"].item() < before["loss"].item()


@pytest.fixture(scope="module")
def clue_model(tiny_manifest, tiny_ae, diffusion_params, tmp_path_factory):
    out = tmp_path_factory.mktemp("clue")
    params = diffusion_params(steps=6, variant="clue", conditioning="clue", style_dim=8, style_tokens=2, kl_weight=1e-3)
    train_diffusion(tiny_manifest, tiny_ae, out / "model", out / "log.parquet", params)
    return out


def test_clue_training_saves_and_reloads_its_style_modules(clue_model):
    log = pd.read_parquet(clue_model / "log.parquet")
    assert {"loss", "denoise", "kl"} <= set(log.columns) and np.isfinite(log[["loss", "denoise", "kl"]]).all().all()
    assert (clue_model / "model" / "style_encoder").is_dir() and (clue_model / "model" / "style_adapter").is_dir()
    model = load_diffusion(clue_model / "model", CPU)
    assert model.conditioning.name == "clue" and model.conditioning.modules["style_adapter"].config.style_dim == 8
    assert not (clue_model / "model.resume.pt").exists()


def test_clue_sampling_in_bf16_casts_the_style_tokens_and_stays_close(clue_model):
    def sample(model):
        return sample_latents(model, 1, 3, (4, 8, 8), 4, 2.0, torch.Generator().manual_seed(7), CPU, 0.5)

    assert bf16_sampling_error(clue_model / "model", sample) < BF16_SAMPLING_RTOL


def test_clue_sampling_is_reproducible_and_sigma_changes_the_images(clue_model):
    def sample(sigma, model=None):
        model = model or load_diffusion(clue_model / "model", CPU)
        return sample_latents(model, 1, 3, (4, 8, 8), 4, 2.0, torch.Generator().manual_seed(7), CPU, sigma)

    a, b = sample(0.5), sample(0.5)  # two loads of the saved model, same seed
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(sample(0.0), a)
    with pytest.raises(ValueError, match="a CLUE model needs the setting's `style_sigma`"):
        sample(None)


def test_l1_denoising_loss_is_the_mean_absolute_error():
    """With a denoiser that predicts 0 and epsilon-prediction the target is the drawn noise: MSE = mean(noise^2),
    L1 (the multi-level paper's loss) = mean |noise|."""
    from types import SimpleNamespace

    def zero_unet(x, t, encoder_hidden_states=None, cross_attention_kwargs=None):
        return SimpleNamespace(sample=torch.zeros_like(x))

    penc = PromptEncoder(list(CLASSES), ["a b", "c d", "e f"], dim=16, max_length=4)
    sched = noise_scheduler({"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                             "beta_end": 0.02, "prediction_type": "epsilon"})
    lat, labels = torch.randn(4, 8, 8, 8), torch.tensor([0, 1, 2, 0])
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(5))

    def loss(kind):
        return diffusion_loss({"unet": zero_unet, "prompt_encoder": penc}, REGISTRY["class"]({}), sched, lat, labels,
                              0.0, torch.Generator().manual_seed(5), loss=kind)["denoise"]

    torch.testing.assert_close(loss("l1"), noise.abs().mean())
    torch.testing.assert_close(loss("mse"), noise.pow(2).mean())
    with pytest.raises(ValueError, match=r"diffusion.loss must be one of \['l1', 'mse'\], got 'huber'"):
        loss("huber")


def test_sweep_vectors_differ_only_in_the_swept_components():
    from pipeline_lib.style_sweep import sweep_vectors

    s = sweep_vectors(6, [4, 1], [-3, 0, 3])
    assert s.shape == (9, 6)
    others = [0, 2, 3, 5]
    assert (s[:, others] == 0).all()  # every other component held at the prior's mean
    assert s[:, 4].tolist() == [-3, -3, -3, 0, 0, 0, 3, 3, 3] and s[:, 1].tolist() == [-3, 0, 3] * 3
    row = s[3:6]  # one row of the grid: only the second component moves
    assert (row[:, 4] == row[0, 4]).all() and len(set(row[:, 1].tolist())) == 3
    with pytest.raises(ValueError, match=r"style_sweep.components: \[6\] outside the style vector's 6 components"):
        sweep_vectors(6, [0, 6], [0, 1])
    with pytest.raises(ValueError, match=r"expected two different components, got \[2, 2\]"):
        sweep_vectors(6, [2, 2], [0, 1])


def test_style_sweep_keeps_x_t_and_changes_only_with_the_style(clue_model, tiny_ae, tmp_path):
    """CLUE Fig. 4 on the tiny model: the sweep's images at equal style vectors are equal (the same x_T), its
    neighbours along a component differ; the style panel has one row per class."""
    from PIL import Image

    from pipeline_lib.style_sweep import style_sweep

    params = {"class": CLASSES[-1], "components": [0, 3], "values": [-3.0, 0.0, 3.0], "styles": 2,
              "guidance_scale": 2.0, "num_inference_steps": 3, "seed": 0, "device": "cpu", "classes": list(CLASSES)}
    table = style_sweep(tiny_ae, clue_model / "model", tmp_path / "sweep.png", tmp_path / "sweep.parquet", params)
    sweep = table[table["panel"] == "sweep"]
    assert len(sweep) == 9 and sweep["s0"].tolist() == [-3, -3, -3, 0, 0, 0, 3, 3, 3]
    assert table.loc[table["panel"] == "styles", "class"].value_counts().to_dict() == {c: 2 for c in CLASSES}
    assert Image.open(tmp_path / "sweep.png").size[0] > 0
    model = load_diffusion(clue_model / "model", CPU)
    x_t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1)).expand(3, 4, 8, 8)
    style = torch.zeros(3, 8)
    style[1, 0] = 3.0  # only component 0 moves, and only for the second sample

    def run(s):
        return sample_latents(model, 2, 3, (4, 8, 8), 3, 2.0, torch.Generator().manual_seed(2), CPU, init=x_t, style=s)

    out = run(style)
    # same x_T, same style: the same latent up to float32 rounding, which differs between batch positions (about
    # 1e-6 on values of order 1 after three UNet passes); the moved style changes it by far more
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=1e-5)
    assert (out[0] - out[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"expected style vectors of shape \(3, 8\), got \(3, 5\)"):
        run(torch.zeros(3, 5))
