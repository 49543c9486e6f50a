"""Autoencoders: KL-VAE and VQ-GAN losses and training, fine-tuning a saved model, the reconstruction table,
and the perceptual distance (LPIPS from local weights, or its named substitute)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, VQModel

from pipeline_lib import autoencoder as aemod
from pipeline_lib.autoencoder import (autoencoder_loss, build_autoencoder, decode_latents, encode_latents,
                                      load_autoencoder, loss_weights, reconstruction_metrics, train_autoencoder,
                                      vqgan_step)
from pipeline_lib.data import CLASSES
from pipeline_lib.metrics import ms_ssim, mse, psnr, ssim
from pipeline_lib.nets import load_feature_net
from pipeline_lib.perceptual import DomainPerceptual, LPIPSDistance, load_perceptual
from pipeline_lib.torchutils import load_images
from pipeline_lib.vqgan import PatchDiscriminator, discriminator_loss, generator_loss, vector_quantize
from conftest import CPU, SHARED

NO_LPIPS = {"lpips_net": "vgg", "lpips_backbone": None}


def _params(tiny_config, name, **kw):
    p = {**tiny_config["autoencoder"][name], "name": name, **SHARED, **kw}
    if p["type"] == "vq":
        p["perceptual"] = NO_LPIPS
    return p


def _batch(tiny_manifest, n=4):
    x, _, _ = load_images(tiny_manifest, ["train_a"], CLASSES)
    return x[:n]


# --- construction and loss terms ------------------------------------------------------------------------------

def test_build_checks_type_channels_and_loss_keys(tiny_config):
    p = _params(tiny_config, "kl4")
    with pytest.raises(ValueError, match="`latent_channels` must be 4 or 8, got 6"):
        build_autoencoder({**p, "latent_channels": 6}, 16)
    with pytest.raises(ValueError, match="autoencoder type must be one of"):
        build_autoencoder({**p, "type": "gan"}, 16)
    with pytest.raises(ValueError, match=r"autoencoder.kl4.loss: \['commitment_beta'\] do not apply to type 'kl'"):
        loss_weights({**p, "loss": {"commitment_beta": 1.0}})
    assert loss_weights(p)["perceptual_weight"] == 0.0  # the KL-VAE's perceptual term is off unless asked for
    assert loss_weights(_params(tiny_config, "vq4"))["commitment_beta"] == 0.2  # the cLDM paper's beta
    assert isinstance(build_autoencoder(p, 16), AutoencoderKL)
    assert isinstance(build_autoencoder(_params(tiny_config, "vq4"), 16), VQModel)


def test_kl_loss_is_the_weighted_sum_of_its_terms(tiny_config):
    ae = build_autoencoder(_params(tiny_config, "kl4"), 16)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    w = {"kl_weight": 1e-6, "l1_weight": 1.0, "l2_weight": 1.0, "ssim_weight": 0.2}
    t, rec = autoencoder_loss(ae, x, w)
    assert set(t) == {"kl", "l1", "l2", "ssim", "loss"} and rec.shape == x.shape
    torch.testing.assert_close(t["loss"], 1e-6 * t["kl"] + t["l1"] + t["l2"] + 0.2 * t["ssim"])
    t["loss"].backward()


def test_kl_loss_with_a_perceptual_term(tiny_config, tiny_feature_net):
    torch.manual_seed(0)
    ae = build_autoencoder(_params(tiny_config, "kl4"), 16)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    perceptual = DomainPerceptual(load_feature_net(tiny_feature_net, CPU))
    w = {"kl_weight": 1e-6, "l1_weight": 1.0, "l2_weight": 1.0, "ssim_weight": 0.2, "perceptual_weight": 0.5}
    torch.manual_seed(1)
    t, _ = autoencoder_loss(ae, x, w, perceptual)
    assert set(t) == {"kl", "l1", "l2", "ssim", "perceptual", "loss"}
    torch.manual_seed(1)  # the same posterior sample: the same reconstruction, whose distance is the term
    rec = ae.decode(ae.encode(x).latent_dist.sample()).sample
    torch.testing.assert_close(t["perceptual"], perceptual(rec, x).mean())
    assert t["perceptual"].item() > 0
    torch.testing.assert_close(t["loss"], 1e-6 * t["kl"] + t["l1"] + t["l2"] + 0.2 * t["ssim"] + 0.5 * t["perceptual"])
    t["loss"].backward()  # the gradient reaches the autoencoder through the frozen network, not the network itself
    assert ae.decoder.conv_out.weight.grad.abs().sum() > 0
    assert all(q.grad is None for q in perceptual.parameters())
    with pytest.raises(ValueError, match="perceptual_weight is above 0 but no perceptual distance"):
        autoencoder_loss(ae, x, w)
    assert set(autoencoder_loss(ae, x, {**w, "perceptual_weight": 0.0})[0]) == {"kl", "l1", "l2", "ssim", "loss"}


def test_kl_loss_with_an_adversarial_term(tiny_config):
    torch.manual_seed(0)
    ae = build_autoencoder(_params(tiny_config, "kl4"), 16)
    disc = PatchDiscriminator(3, 8, 1)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    w = {"kl_weight": 1e-6, "l1_weight": 1.0, "l2_weight": 1.0, "ssim_weight": 0.2, "adversarial_weight": 0.25}
    for kind in ("hinge", "vanilla"):
        torch.manual_seed(1)
        t, rec = autoencoder_loss(ae, x, w, disc=disc, gan_loss=kind)
        assert set(t) == {"kl", "l1", "l2", "ssim", "adversarial", "loss"}
        torch.testing.assert_close(t["adversarial"], generator_loss(disc(rec), kind))  # of these reconstructions
        torch.testing.assert_close(t["loss"], 1e-6 * t["kl"] + t["l1"] + t["l2"] + 0.2 * t["ssim"]
                                   + 0.25 * t["adversarial"])
    t["loss"].backward()  # the generator's term reaches the decoder
    assert ae.decoder.conv_out.weight.grad.abs().sum() > 0
    t, _ = autoencoder_loss(ae, x, w)  # before the discriminator starts: the term is logged as 0
    assert t["adversarial"].item() == 0.0
    assert "adversarial" not in autoencoder_loss(ae, x, {**w, "adversarial_weight": 0.0})[0]


def test_kl_step_trains_the_discriminator_only_when_adversarial(tiny_config, tiny_manifest, tmp_path):
    torch.manual_seed(0)
    p = _params(tiny_config, "kl4", loss={"adversarial_weight": 0.1})
    ae, x, disc = build_autoencoder(p, 16), _batch(tiny_manifest), PatchDiscriminator(3, 8, 1)
    opts = {"ae": torch.optim.Adam(ae.parameters(), lr=1e-3), "disc": torch.optim.Adam(disc.parameters(), lr=1e-4)}
    before = [q.detach().clone() for q in disc.parameters()]
    row = aemod.kl_step(ae, disc, None, x, loss_weights(p), opts, adversarial=False)
    assert row["adversarial"] == 0.0 and np.isnan(row["discriminator"])
    assert all(torch.equal(a, b) for a, b in zip(before, disc.parameters()))  # untouched before its start
    rows = [aemod.kl_step(ae, disc, None, x, loss_weights(p), opts, adversarial=True) for _ in range(3)]
    assert all(r["adversarial"] != 0.0 and np.isfinite(r["discriminator"]) for r in rows)
    assert not all(torch.equal(a, b) for a, b in zip(before, disc.parameters()))
    with pytest.raises(ValueError, match=r"autoencoder.kl4.loss.adversarial_weight is above 0 but .* no "
                                         r"autoencoder.kl4.discriminator section"):
        train_autoencoder(tiny_manifest, tmp_path / "m", tmp_path / "l.parquet",
                          {k: v for k, v in p.items() if k != "discriminator"})
    assert "discriminator" not in aemod.kl_step(ae, None, None, x, loss_weights(_params(tiny_config, "kl4")), opts,
                                                adversarial=False)  # no adversarial term: no discriminator column


def test_vector_quantize_by_hand():
    ae = VQModel(block_out_channels=(8,), norm_num_groups=4, latent_channels=2, num_vq_embeddings=2)
    with torch.no_grad():
        ae.quantize.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    h = torch.tensor([[0.1, 0.2], [0.9, 0.7]]).T.reshape(1, 2, 1, 2).requires_grad_(True)  # two positions
    zq, cb, commit, idx = vector_quantize(ae, h)
    assert idx.tolist() == [0, 1]
    torch.testing.assert_close(zq.detach(), torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 1, 2))
    sq = (0.1**2 + 0.2**2 + 0.1**2 + 0.3**2) / 4  # mean squared distance to the chosen codes
    assert cb.item() == pytest.approx(sq) and commit.item() == pytest.approx(sq)
    zq.sum().backward()  # straight-through: the gradient reaches the encoder output unchanged
    torch.testing.assert_close(h.grad, torch.ones_like(h))
    ref, _, _ = ae.quantize(h.detach())  # diffusers' own quantiser picks the same codes
    torch.testing.assert_close(ref, zq.detach())


def test_patch_discriminator_and_gan_losses():
    for size, layers in ((16, 1), (32, 2), (64, 3)):
        d = PatchDiscriminator(3, 8, layers)
        out = d(torch.zeros(2, 3, size, size))
        assert out.shape == (2, 1, aemod._patch_output_size(size, layers), aemod._patch_output_size(size, layers))
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert discriminator_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1.5) / 2))
    assert generator_loss(fake).item() == pytest.approx(0.75)
    vanilla = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    assert discriminator_loss(real, fake, "vanilla").item() == pytest.approx(vanilla.item())
    with pytest.raises(ValueError, match="gan_loss must be one of"):
        generator_loss(fake, "wasserstein")


def test_kl_loss_falls_on_a_fixed_batch(tiny_config, tiny_manifest):
    torch.manual_seed(0)
    p = _params(tiny_config, "kl4")
    ae, x = build_autoencoder(p, 16), _batch(tiny_manifest)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        t, _ = autoencoder_loss(ae, x, loss_weights(p))
        opt.zero_grad()
        t["loss"].backward()
        opt.step()
        losses.append(t["loss"].item())
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_vqgan_loss_falls_on_a_fixed_batch(tiny_config, tiny_manifest, tiny_feature_net):
    torch.manual_seed(0)
    p = _params(tiny_config, "vq4")
    ae, x = build_autoencoder(p, 16), _batch(tiny_manifest)
    disc = PatchDiscriminator(3, 8, 1)
    opts = {"ae": torch.optim.Adam(ae.parameters(), lr=1e-3), "disc": torch.optim.Adam(disc.parameters(), lr=1e-4)}
    perceptual = DomainPerceptual(load_feature_net(tiny_feature_net, CPU))
    rows = [vqgan_step(ae, disc, perceptual, x, loss_weights(p), opts, adversarial=i >= 10) for i in range(30)]
    log = pd.DataFrame(rows)
    assert np.isfinite(log.drop(columns="discriminator")).all().all()
    assert (log["adversarial"][:10] == 0).all() and log["discriminator"][:10].isna().all()
    assert np.isfinite(log["discriminator"][10:]).all()
    assert log["mse"][-5:].mean() < 0.7 * log["mse"][:5].mean()
    assert log["perceptual"][-5:].mean() < log["perceptual"][:5].mean()


# --- training entry point -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_manifest, tiny_feature_net, tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("aes")
    for name in ("kl4", "vq4"):
        train_autoencoder(tiny_manifest, out / name / "model", out / name / "log.parquet",
                          _params(tiny_config, name), feature_net=tiny_feature_net)
    # the KL-VAE with Stable Diffusion's perceptual and adversarial terms (the default's), the VQ-GAN's discriminator
    train_autoencoder(tiny_manifest, out / "kl4_gan" / "model", out / "kl4_gan" / "log.parquet",
                      {**_params(tiny_config, "kl4", loss={"perceptual_weight": 0.1, "adversarial_weight": 0.1},
                                 discriminator=tiny_config["autoencoder"]["vq4"]["discriminator"], perceptual=NO_LPIPS),
                       "name": "kl4_gan"}, feature_net=tiny_feature_net)
    return out


def test_training_writes_models_that_reload_with_their_scaling_factor(trained, tiny_manifest):
    x, _, _ = load_images(tiny_manifest, ["train_a", "train_b"], CLASSES)
    for name, cls, channels in (("kl4", AutoencoderKL, 4), ("vq4", VQModel, 4)):
        ae = load_autoencoder(trained / name / "model", CPU)
        assert isinstance(ae, cls) and ae.config.latent_channels == channels
        mean, std = encode_latents(ae, x, CPU)
        assert mean.shape == (len(x), channels, 8, 8)
        assert mean.std().item() == pytest.approx(1.0, rel=1e-4)  # scaled latents have unit std
        assert decode_latents(ae, mean).shape == x.shape
        assert (std == 0).all() if name == "vq4" else (std > 0).all()
        assert not (trained / name / "model.resume.pt").exists()
    vq_log = pd.read_parquet(trained / "vq4" / "log.parquet")
    assert {"mse", "codebook", "commitment", "perceptual", "adversarial", "discriminator", "codes_used",
            "loss"} <= set(vq_log.columns)
    assert list(vq_log["step"]) == list(range(1, 9))
    assert (vq_log["adversarial"][:4] == 0).all() and (vq_log["adversarial"][4:] != 0).all()  # start_step 4
    kl_log = pd.read_parquet(trained / "kl4" / "log.parquet")
    assert {"kl", "l1", "l2", "ssim", "loss"} <= set(kl_log.columns) and np.isfinite(kl_log["loss"]).all()
    assert not {"adversarial", "discriminator"} & set(kl_log.columns)
    gan_log = pd.read_parquet(trained / "kl4_gan" / "log.parquet")
    assert (gan_log["perceptual"] > 0).all()
    assert (gan_log["adversarial"][:4] == 0).all() and (gan_log["adversarial"][4:] != 0).all()  # start_step 4
    assert gan_log["discriminator"][:4].isna().all() and np.isfinite(gan_log["discriminator"][4:]).all()
    assert isinstance(load_autoencoder(trained / "kl4_gan" / "model", CPU), AutoencoderKL)


def test_vq_decoder_quantises_scaled_latents(trained, tiny_manifest):
    ae = load_autoencoder(trained / "vq4" / "model", CPU)
    x = _batch(tiny_manifest, 2)
    z, _ = encode_latents(ae, x, CPU)
    h = z / ae.config.scaling_factor
    zq, _, _, _ = vector_quantize(ae, h)
    direct = ae.decode(zq, force_not_quantize=True).sample.clamp(-1, 1)
    torch.testing.assert_close(decode_latents(ae, z), direct)


def test_reconstruction_table_has_table1_shape_and_matches_direct_metrics(trained, tiny_manifest, tiny_feature_net,
                                                                         tmp_path):
    params = {"name": "kl4", "type": "kl", "perceptual": NO_LPIPS, **SHARED}
    table = reconstruction_metrics(tiny_manifest, trained / "kl4" / "model", tmp_path / "t.parquet",
                                   tmp_path / "p.parquet", params, feature_net=tiny_feature_net)
    per = pd.read_parquet(tmp_path / "p.parquet")
    assert list(table["class"]) == [*CLASSES, "all"] and set(per["split"]) == {"test"}
    metric_cols = ["mse", "psnr", "ssim", "ms_ssim", "domain_perceptual"]
    assert set(metric_cols) <= set(table.columns) and not any("lpips" in c for c in table.columns)
    assert (table["ms_ssim_scales"] == 1).all()  # 16 px images hold one 11-tap scale
    scaling = json.loads((trained / "kl4" / "model" / "scaling.json").read_text())  # trained from scratch: measured
    assert (table["scaling_factor"] == scaling["scaling_factor"]).all() and scaling["source"].startswith("measured")
    assert (table["scaling_source"] == scaling["source"]).all()
    assert table.loc[table["class"] == "all", "n_images"].item() == len(per)
    np.testing.assert_allclose(table.loc[table["class"] == "all", metric_cols].to_numpy()[0],
                               per[metric_cols].mean().to_numpy(), rtol=1e-12)
    # Recompute directly from the model for the test images.
    ae = load_autoencoder(trained / "kl4" / "model", CPU)
    x, _, _ = load_images(tiny_manifest, ["test"], CLASSES)
    rec = ae.decode(ae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    dp = DomainPerceptual(load_feature_net(tiny_feature_net, CPU))
    for col, fn in (("mse", mse), ("psnr", psnr), ("ssim", ssim), ("ms_ssim", ms_ssim), ("domain_perceptual", dp)):
        np.testing.assert_allclose(per[col].to_numpy(), fn(rec, x).detach().numpy(), rtol=1e-4, atol=1e-6)
    assert pd.read_parquet(tmp_path / "t.parquet").equals(table)


# --- fine-tuning from a local Stable-Diffusion-style VAE ------------------------------------------------------

def test_finetune_from_saved_4_channel_vae_to_8_channels(tmp_path, tiny_config, tiny_manifest):
    torch.manual_seed(1)
    sd = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                       sample_size=16, scaling_factor=0.18215)
    sd.save_pretrained(tmp_path / "sd_vae")
    p = _params(tiny_config, "kl4", pretrained=str(tmp_path / "sd_vae"), latent_channels=8,
                block_out_channels=[99])  # ignored
    ae = build_autoencoder(p, 16)
    assert ae.config.latent_channels == 8 and tuple(ae.config.block_out_channels) == (8, 16)
    old, new = sd.state_dict(), ae.state_dict()
    changed = {k for k in old if old[k].shape != new[k].shape}
    assert {k.rsplit(".", 1)[0] for k in changed} == {"encoder.conv_out", "quant_conv", "post_quant_conv",
                                                       "decoder.conv_in"}
    for k in old.keys() - changed:  # every other layer starts from the saved weights
        assert torch.equal(old[k], new[k]), k
    assert new["quant_conv.weight"].shape == (16, 16, 1, 1) and new["decoder.conv_in.weight"].shape[1] == 8
    # Training from it measures a new scaling factor from the data.
    train_autoencoder(tiny_manifest, tmp_path / "ft" / "model", tmp_path / "ft" / "log.parquet", {**p, "steps": 2})
    assert load_autoencoder(tmp_path / "ft" / "model", CPU).config.scaling_factor != pytest.approx(0.18215)
    # Same channel count: every weight is the saved one.
    same = build_autoencoder({**p, "latent_channels": 4}, 16)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in old.items())
    with pytest.raises(FileNotFoundError, match="autoencoder pretrained: .*missing is not a local diffusers AutoencoderKL"):
        build_autoencoder({**p, "pretrained": str(tmp_path / "missing")}, 16)


def test_a_kl_vae_trains_with_a_perceptual_term(tmp_path, tiny_config, tiny_manifest, tiny_feature_net):
    p = _params(tiny_config, "kl4", steps=3, loss={"perceptual_weight": 0.1}, perceptual=NO_LPIPS)
    train_autoencoder(tiny_manifest, tmp_path / "m", tmp_path / "log.parquet", p, feature_net=tiny_feature_net)
    log = pd.read_parquet(tmp_path / "log.parquet")
    assert log["perceptual"].gt(0).all() and list(log["step"]) == [1, 2, 3]
    with pytest.raises(ValueError, match="no perceptual distance: perceptual.lpips_backbone is null and no domain"):
        train_autoencoder(tiny_manifest, tmp_path / "n", tmp_path / "n.parquet", p)  # the network not given
    del p["perceptual"]
    with pytest.raises(ValueError, match="autoencoder.kl4: a perceptual term needs the config's perceptual section"):
        train_autoencoder(tiny_manifest, tmp_path / "o", tmp_path / "o.parquet", p, feature_net=tiny_feature_net)
    assert not (tmp_path / "n").exists() and not (tmp_path / "o").exists()


def test_zero_steps_keep_the_pretrained_vae_as_it_is(tmp_path, tiny_config, tiny_manifest):
    """CLUE uses Stable Diffusion 2.1's VAE unchanged: steps 0 saves the pretrained weights with the scaling
    factor measured on the training images; without pretrained weights steps 0 is an error."""
    torch.manual_seed(2)
    sd = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                       sample_size=16)
    sd.save_pretrained(tmp_path / "sd_vae")
    p = _params(tiny_config, "kl4", pretrained=str(tmp_path / "sd_vae"), latent_channels=4, steps=0)
    train_autoencoder(tiny_manifest, tmp_path / "m", tmp_path / "log.parquet", p)
    kept = load_autoencoder(tmp_path / "m", CPU).state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in sd.state_dict().items())
    with pytest.raises(ValueError, match="autoencoder.kl4.steps: 0 keeps pretrained weights .* would stay untrained"):
        train_autoencoder(tiny_manifest, tmp_path / "n", tmp_path / "n.parquet", {**p, "pretrained": None})


# --- perceptual distance ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    """A torchvision VGG-16 ``features`` state dict with seeded random values (no ImageNet weights here)."""
    import torchvision

    torch.manual_seed(123)
    vgg = torchvision.models.vgg16(weights=None)
    path = tmp_path_factory.mktemp("weights") / "vgg16_features.pth"
    torch.save({k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}, path)
    return path


def test_lpips_loads_local_backbone_through_the_lpips_package(vgg_weights):
    import lpips

    dist = LPIPSDistance("vgg", vgg_weights)
    state = torch.load(vgg_weights)
    assert isinstance(dist.model, lpips.LPIPS)
    for key, value in dist.model.net.state_dict().items():  # slice<k>.<i>.* <- features.<i>.*
        assert torch.equal(value, state["features." + key.split(".", 1)[1]]), key
    shipped = torch.load(lpips.__path__[0] + "/weights/v0.1/vgg.pth", map_location="cpu")
    assert torch.equal(dist.model.lin0.model[1].weight, shipped["lin0.model.1.weight"])  # calibrated layers

    # LPIPS eq. 1 written out independently on torchvision's VGG-16 with the same weights.
    import torchvision

    vgg = torchvision.models.vgg16(weights=None).features.eval()
    vgg.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()})
    shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
    scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)

    def taps(x):  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        out, h = [], (x - shift) / scale
        for i, layer in enumerate(vgg):
            h = layer(h)
            if i in (3, 8, 15, 22, 29):
                out.append(h)
        return out

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        ref = 0
        for level, (a, b) in enumerate(zip(taps(x), taps(y))):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = shipped[f"lin{level}.model.1.weight"]  # (1, C, 1, 1)
            ref = ref + ((a - b).pow(2) * w).sum(1).mean((1, 2))
        ours = dist(x, y)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    assert dist(x, x).abs().max().item() < 1e-6


def test_lpips_rejects_missing_or_wrong_weights(tmp_path, vgg_weights):
    with pytest.raises(FileNotFoundError, match="perceptual.lpips_backbone: .*nope.pth does not exist"):
        LPIPSDistance("vgg", tmp_path / "nope.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: features.0.weight has shape"):
        LPIPSDistance("vgg", tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"expected \(64, 3, 11, 11\) \(a torchvision alexnet state dict\)"):
        LPIPSDistance("alex", vgg_weights)
    torch.save({"classifier.0.weight": torch.zeros(1)}, tmp_path / "head.pth")
    with pytest.raises(ValueError, match=r"head.pth: not a torchvision vgg16 state dict, missing \['features.0.weight'"):
        LPIPSDistance("vgg", tmp_path / "head.pth")


def test_perceptual_choice_and_substitute_by_hand(tiny_feature_net, vgg_weights, tiny_manifest):
    lp = load_perceptual({"lpips_net": "vgg", "lpips_backbone": str(vgg_weights)}, tiny_feature_net, CPU)
    sub = load_perceptual(NO_LPIPS, tiny_feature_net, CPU)
    assert lp.name == "lpips" and sub.name == "domain_perceptual"
    x = _batch(tiny_manifest, 2)
    y = x.flip(-1)
    net = load_feature_net(tiny_feature_net, CPU)
    with torch.no_grad():
        ref = 0
        for a, b in zip(net.feature_maps(x), net.feature_maps(y)):
            a, b = F.normalize(a, dim=1, eps=0), F.normalize(b, dim=1, eps=0)
            ref = ref + (a - b).pow(2).sum(1).mean((1, 2))
        torch.testing.assert_close(sub(x, y), ref, rtol=1e-4, atol=1e-6)
        assert sub(x, x).abs().max().item() < 1e-6
    with pytest.raises(ValueError, match="no perceptual distance"):
        load_perceptual(NO_LPIPS, None, CPU)


def test_vq_training_with_lpips_names_it(tiny_manifest, tiny_config, vgg_weights, tmp_path):
    p = {**_params(tiny_config, "vq4", steps=2), "perceptual": {"lpips_net": "vgg", "lpips_backbone": str(vgg_weights)}}
    train_autoencoder(tiny_manifest, tmp_path / "m", tmp_path / "l.parquet", p)
    assert np.isfinite(pd.read_parquet(tmp_path / "l.parquet")["perceptual"]).all()
    table = reconstruction_metrics(tiny_manifest, tmp_path / "m", tmp_path / "t.parquet", tmp_path / "p.parquet",
                                   {"name": "vq4", "type": "vq", "perceptual": p["perceptual"], **SHARED})
    assert "lpips" in table.columns and "domain_perceptual" not in table.columns
