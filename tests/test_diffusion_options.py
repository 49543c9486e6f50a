"""Diffusion training and sampling options: EMA, gradient accumulation, precision, DDPM / DDIM samplers."""
import pandas as pd
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from pipeline_lib import diffusion
from pipeline_lib.diffusion import load_diffusion, train_diffusion
from pipeline_lib.generate import sample_latents, with_sampler
from conftest import CPU



@pytest.fixture(scope="module")
def setup(tiny_ae, diffusion_params, tmp_path_factory):
    return tmp_path_factory.mktemp("options"), tiny_ae, diffusion_params(steps=4)


def _run(tiny_manifest, setup, name, **kw):
    out, ae, params = setup
    train_diffusion(tiny_manifest, ae, out / name / "model", out / name / "log.parquet", {**params, **kw})
    return pd.read_parquet(out / name / "log.parquet"), load_diffusion(out / name / "model", CPU)


def test_ema_saves_the_average_not_the_last_weights(tiny_manifest, setup):
    log_plain, plain = _run(tiny_manifest, setup, "plain")
    log_ema, ema = _run(tiny_manifest, setup, "ema", ema_decay=0.5)
    pd.testing.assert_frame_equal(log_plain, log_ema)  # same training trajectory
    a, b = plain.unet.state_dict(), ema.unet.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_takes_several_batches_per_step(tiny_manifest, setup, monkeypatch):
    calls = {"n": 0}
    real = diffusion.diffusion_loss

    def counting(*args, **kw):
        calls["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(diffusion, "diffusion_loss", counting)
    log, _ = _run(tiny_manifest, setup, "accum", grad_accumulation=3)
    assert calls["n"] == 3 * 4 and list(log["step"]) == [1, 2, 3, 4]


def test_bf16_is_gpu_only_and_bad_precision_is_named(tiny_manifest, setup, caplog):
    with caplog.at_level("INFO", logger="pipeline_lib"):
        log_bf16, _ = _run(tiny_manifest, setup, "bf16", speed={"mixed_precision": "bf16"})
    assert "speed.mixed_precision bf16 applies on a GPU only; running in FP32" in caplog.text
    log_fp32, _ = _run(tiny_manifest, setup, "fp32")
    pd.testing.assert_frame_equal(log_bf16, log_fp32)
    with pytest.raises(ValueError, match=r"speed.mixed_precision must be one of \['no', 'bf16'\], got 'fp8'"):
        _run(tiny_manifest, setup, "fp8", speed={"mixed_precision": "fp8"})


def test_ddpm_and_ddim_samplers(tiny_manifest, setup):
    _, model = _run(tiny_manifest, setup, "sampler")
    ddim, ddpm = with_sampler(model, "ddim"), with_sampler(model, "ddpm")
    assert isinstance(ddim.scheduler, DDIMScheduler) and isinstance(ddpm.scheduler, DDPMScheduler)
    assert ddpm.scheduler.config.prediction_type == model.scheduler.config.prediction_type == "v_prediction"

    def sample(m, seed):
        return sample_latents(m, 1, 2, (8, 8, 8), 5, 2.0, torch.Generator().manual_seed(seed), CPU)

    torch.testing.assert_close(sample(ddpm, 3), sample(ddpm, 3), rtol=0, atol=0)
    assert not torch.allclose(sample(ddpm, 3), sample(ddim, 3))
    with pytest.raises(ValueError, match="generate.sampler must be one of"):
        with_sampler(model, "euler")


def test_unet_from_a_local_stable_diffusion_folder_adapts_conv_in_and_out(tmp_path, tiny_manifest, setup):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from pipeline_lib.diffusion import build_unet

    torch.manual_seed(2)
    sd = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                              cross_attention_dim=24, attention_head_dim=8, norm_num_groups=8)
    sd.save_pretrained(tmp_path / "sd" / "unet")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(tmp_path / "sd" /
                                                                                                  "scheduler")
    unet = build_unet(8, 8, {"pretrained": str(tmp_path / "sd")})
    assert unet.config.in_channels == unet.config.out_channels == 8 and unet.config.cross_attention_dim == 24
    old, new = sd.state_dict(), unet.state_dict()
    changed = {k.rsplit(".", 1)[0] for k in old if old[k].shape != new[k].shape}
    assert changed == {"conv_in", "conv_out"}
    assert all(torch.equal(old[k], new[k]) for k in old if k.rsplit(".", 1)[0] not in changed)
    gated = build_unet(8, 8, {"pretrained": str(tmp_path / "sd")}, gated=True)  # adapters added, SD weights kept
    assert torch.equal(gated.state_dict()["mid_block.resnets.0.conv1.weight"], old["mid_block.resnets.0.conv1.weight"])
    # Training from it: the prompt encoder takes the UNet's cross-attention width.
    _, ae, params = setup
    train_diffusion(tiny_manifest, ae, tmp_path / "m", tmp_path / "l.parquet",
                    {**params, "steps": 1, "pretrained": str(tmp_path / "sd")})
    assert load_diffusion(tmp_path / "m", CPU).prompt_encoder.config.dim == 24
    with pytest.raises(FileNotFoundError, match="diffusion.pretrained: .*nowhere/unet is not a local diffusers"):
        build_unet(8, 8, {"pretrained": str(tmp_path / "nowhere")})
