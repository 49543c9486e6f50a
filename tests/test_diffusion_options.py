"""Diffusion training and sampling options: EMA, gradient accumulation, precision, DDPM / DDIM samplers."""
import math

import pandas as pd
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from pipeline_lib.conditioning import Conditioning
from pipeline_lib import diffusion
from pipeline_lib.diffusion import load_diffusion, train_diffusion
from pipeline_lib.generate import sample_latents, with_sampler
from pipeline_lib.torchutils import adam, learning_rate_schedule
from pipeline_lib.speed import Speed
from conftest import BF16_SAMPLING_RTOL, CPU, bf16_sampling_error



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
        return sample_latents(m, 1, 2, (4, 8, 8), 5, 2.0, torch.Generator().manual_seed(seed), CPU)

    torch.testing.assert_close(sample(ddpm, 3), sample(ddpm, 3), rtol=0, atol=0)
    assert not torch.allclose(sample(ddpm, 3), sample(ddim, 3))
    with pytest.raises(ValueError, match="generate.sampler must be one of"):
        with_sampler(model, "euler")


def test_bf16_sampling_is_close_to_fp32_with_and_without_guidance(tiny_manifest, setup):
    out = setup[0] / "half"
    _run(tiny_manifest, setup, "half")
    for w, sampler in ((2.0, "ddim"), (1.0, "ddim"), (2.0, "ddpm")):
        def sample(model):
            return sample_latents(with_sampler(model, sampler), 2, 3, (4, 8, 8), 5, w,
                                  torch.Generator().manual_seed(5), CPU)

        assert bf16_sampling_error(out / "model", sample) < BF16_SAMPLING_RTOL, (w, sampler)
    with pytest.raises(ValueError, match=r"speed.sampling_precision must be one of \['fp32', 'bf16', 'auto'\], got 'fp16'"):
        load_diffusion(out / "model", CPU, Speed.from_params({"speed": {"sampling_precision": "fp16"}}))


def test_guidance_interval_guides_only_the_steps_whose_noise_level_is_inside(tiny_manifest, setup):
    """Kynkaanniemi et al. 2024: guidance where sigma_t lies in (lo, hi], the conditional prediction elsewhere."""
    _, model = _run(tiny_manifest, setup, "interval")
    steps = 5
    model.scheduler.set_timesteps(steps)
    abar = model.scheduler.alphas_cumprod[model.scheduler.timesteps]
    sigmas = ((1 - abar) / abar).sqrt().tolist()  # of the 5 sampling steps, decreasing

    def sample(w, interval=None):
        return sample_latents(model, 1, 3, (4, 8, 8), steps, w, torch.Generator().manual_seed(4), CPU,
                              guidance_interval=interval)

    guided, unguided = sample(3.0), sample(1.0)
    torch.testing.assert_close(sample(3.0, [0.0, sigmas[0]]), guided, rtol=0, atol=0)  # every step inside
    # no step inside: the conditional prediction throughout, as with w = 1 (there in a batch of 3, not 6: float32
    # sums in another order, about 1e-6 relative per step)
    torch.testing.assert_close(sample(3.0, [sigmas[0], sigmas[0] + 1.0]), unguided, rtol=1e-4, atol=1e-4)
    first_only = sample(3.0, [sigmas[1], sigmas[0]])  # (sigma_1, sigma_0]: the first step alone is guided
    assert not torch.allclose(first_only, guided, atol=1e-3) and not torch.allclose(first_only, unguided, atol=1e-3)


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


def _schedule(**kw) -> DDPMScheduler:
    return diffusion.noise_scheduler({**{k: None for k in diffusion.BUILT_IN_SCHEDULE}, **kw})


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_min_snr_weights_by_hand(prediction):
    """Hang et al. 2023: min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v, SNR = abar / (1 -
    abar) of the linear 1e-4 .. 0.02 schedule, computed here in float64 from the betas."""
    sched = _schedule(prediction_type=prediction)
    t = torch.tensor([0, 10, 100, 500, 999])
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t]
    snr = abar / (1 - abar)
    want = torch.clamp(snr, max=5.0) / (snr + 1 if prediction == "v_prediction" else snr)
    got = diffusion.min_snr_weights(sched, t, 5.0)
    # the scheduler's alphas_cumprod are float32: relative error a few float32 epsilons, amplified at t = 0
    # where 1 - abar ~ 1e-4 loses 4 digits (2e-3 relative there, 1e-5 elsewhere)
    torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=0)
    assert diffusion.min_snr_weights(sched, t, None) is None
    assert float(got[-1]) == pytest.approx(float(snr[-1] / (snr[-1] + 1)) if prediction == "v_prediction" else 1.0,
                                           rel=1e-3)  # low SNR: unclipped


def test_min_snr_weights_at_zero_terminal_snr():
    sched = _schedule(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    assert float(sched.alphas_cumprod[-1]) == 0.0
    t = torch.tensor([999])
    assert float(diffusion.min_snr_weights(sched, t, 5.0)[0]) == 0.0  # v at SNR 0: min(0, 5) / 1
    eps = _schedule(rescale_betas_zero_snr=True, prediction_type="epsilon")
    assert float(diffusion.min_snr_weights(eps, t, 5.0)[0]) == 1.0  # the limit of min(SNR, 5) / SNR


def test_weighted_loss_is_the_weighted_mean_of_per_image_errors(monkeypatch):
    """With snr_gamma the denoising term is mean_i w(t_i) * mean((pred_i - target_i)^2); with weights 1 it equals
    the plain MSE."""
    sched = _schedule()
    monkeypatch.setattr(diffusion, "min_snr_weights", lambda s, t, g: None if g is None else torch.ones(len(t)))

    class Unet(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states=None, cross_attention_kwargs=None):
            return type("O", (), {"sample": x * 0.5})()

    class Ctx(torch.nn.Module):
        null_index = 3

        def forward(self, c):
            return torch.zeros(len(c), 1, 4)

    class Cond(Conditioning):  # the base hooks: the context of the condition, no extra inputs
        name = "plain"

    lat = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    args = ({"unet": Unet(), "prompt_encoder": Ctx()}, Cond({}), sched, lat, torch.zeros(6, dtype=torch.long), 0.1)
    plain = diffusion.diffusion_loss(*args, torch.Generator().manual_seed(0))["denoise"]
    ones = diffusion.diffusion_loss(*args, torch.Generator().manual_seed(0), snr_gamma=5.0)["denoise"]
    torch.testing.assert_close(ones, plain)  # float32 means of the same squares, summed in another order


@pytest.mark.parametrize("kind, expected", [
    ("constant", [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    # after the 4 warm-up steps, steps s = 4 .. 9 at progress (s - 4) / 6 of the remaining 6 steps
    ("linear", [0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]),
    ("cosine", [0.25, 0.5, 0.75, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]),
])
def test_learning_rate_schedules_by_hand(kind, expected):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = learning_rate_schedule(opt, {"lr_schedule": kind, "lr_warmup_steps": 4, "steps": 10}, "diffusion")
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.1 * e for e in expected], abs=1e-12)
    with pytest.raises(ValueError, match="diffusion.lr_schedule must be one of"):
        learning_rate_schedule(opt, {"lr_schedule": "step", "steps": 10}, "diffusion")


def test_schedule_options_train_and_resume_the_same(tiny_manifest, setup, tmp_path):
    """Warm-up, cosine decay, min-SNR weights and a zero-terminal-SNR schedule train; a run killed after a
    checkpoint ends with the same log as an uninterrupted one (the learning-rate state is checkpointed)."""
    out, ae, params = setup
    kw = {**params, "steps": 6, "checkpoint_every": 3, "lr_schedule": "cosine", "lr_warmup_steps": 2,
          "snr_gamma": 5.0, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    train_diffusion(tiny_manifest, ae, tmp_path / "a" / "model", tmp_path / "a" / "log.parquet", kw)
    whole = pd.read_parquet(tmp_path / "a" / "log.parquet")
    assert whole["loss"].notna().all()
    model = load_diffusion(tmp_path / "a" / "model", CPU)
    assert model.scheduler.config.rescale_betas_zero_snr and model.scheduler.config.timestep_spacing == "trailing"

    calls = {"n": 0}
    real = diffusion.optimiser_step

    def dies_after_four(*a, **k):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffusion, "optimiser_step", dies_after_four)
        with pytest.raises(KeyboardInterrupt):
            train_diffusion(tiny_manifest, ae, tmp_path / "b" / "model", tmp_path / "b" / "log.parquet", kw)
    train_diffusion(tiny_manifest, ae, tmp_path / "b" / "model", tmp_path / "b" / "log.parquet", kw)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b" / "log.parquet"), whole)


@pytest.mark.parametrize("decoupled", [False, True])
def test_training_optimiser_is_the_fused_adam_with_the_per_tensor_update(decoupled):
    # the fused kernel where the device has one (CPU here), and after five steps the same parameters as the
    # per-tensor implementation to float32 rounding: each update is ~lr = 1e-2 and differs by a few ulp of it,
    # the parameters (|p| < 5) by a few ulp of theirs (5e-7 at 5), so 2e-6 absolute bounds five steps
    torch.manual_seed(0)
    shapes = [(7, 3), (5,), (2, 3, 3, 3)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    start = [p.detach().clone() for p in a]
    fused = adam(a, 1e-2, decoupled=decoupled, weight_decay=0.01)
    reference = (torch.optim.AdamW if decoupled else torch.optim.Adam)(b, lr=1e-2, weight_decay=0.01, foreach=False)
    assert fused.defaults["fused"] is True and type(fused) is type(reference)
    for _ in range(5):
        for p, q in zip(a, b):
            g = torch.randn(p.shape)
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        reference.step()
    for p, q, p0 in zip(a, b, start):
        assert (p - p0).abs().max() > 1e-2  # five steps of about lr each moved every tensor
        torch.testing.assert_close(p, q, rtol=0, atol=2e-6)
