"""A local Stable Diffusion folder as users have it (tests/tiny_sd.py builds one, SD 1.5-like with epsilon and a
PNDM scheduler config, SD 2.1 768-like with v-prediction and a DDIM one): the noise schedule, the VAE's scaling
factor and the text encoder come from it, and a fine-tuned class model is a StableDiffusionPipeline folder that
diffusers samples exactly as the workflow's own sampler does."""
import json
import logging

import numpy as np
import pytest
import torch

from conftest import SHARED
from pipeline_lib.autoencoder import train_autoencoder
from pipeline_lib.diffusion import BUILT_IN_SCHEDULE, load_diffusion, noise_scheduler, train_diffusion
from pipeline_lib.generate import sample_latents
from pipeline_lib.text import transformers_prompt_embeddings
from tiny_sd import HIDDEN, SCALING_FACTOR, make_sd_folder

CPU = torch.device("cpu")
UNSET = dict.fromkeys(BUILT_IN_SCHEDULE)  # every schedule key null, as config/config.yaml has them


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def sd(request, tmp_path_factory):
    return make_sd_folder(tmp_path_factory.mktemp(f"sd_{request.param}"), request.param), request.param


def test_the_noise_schedule_is_the_pretrained_folders(sd, caplog):
    folder, prediction = sd
    sched = noise_scheduler({**UNSET, "pretrained": str(folder)})
    c = sched.config
    assert (c.beta_schedule, c.beta_start, c.beta_end, c.num_train_timesteps) == ("scaled_linear", 0.00085, 0.012, 1000)
    assert (c.prediction_type, c.steps_offset, c.timestep_spacing) == (prediction, 1, "leading")
    # scaled_linear by hand: betas are linear in sqrt(beta); alpha-bar_t the product of 1 - beta up to t.
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), abar, rtol=1e-5)  # float32 cumulative product
    assert abar[500] == pytest.approx(0.2763, abs=1e-4)  # the linear 1e-4 .. 0.02 schedule's is 0.0785
    with caplog.at_level(logging.WARNING, logger="medaug"):
        linear = noise_scheduler({**UNSET, "pretrained": str(folder), "beta_schedule": "linear"})
    assert linear.config.beta_schedule == "linear" and linear.config.beta_start == 0.00085
    assert "diffusion.beta_schedule: 'linear' overrides the pretrained scheduler's 'scaled_linear'" in caplog.text


def test_without_a_pretrained_unet_the_built_in_schedule_stays():
    c = noise_scheduler(UNSET).config
    assert {k: c[k] for k in BUILT_IN_SCHEDULE} == BUILT_IN_SCHEDULE
    assert noise_scheduler({**UNSET, "prediction_type": "epsilon"}).config.prediction_type == "epsilon"


def test_a_folder_without_a_scheduler_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"diffusion.pretrained: .*scheduler/scheduler_config.json not found"):
        noise_scheduler({**UNSET, "pretrained": str(tmp_path)})


def test_prompts_are_embedded_as_stable_diffusions_pipeline_embeds_them(sd):
    from diffusers import StableDiffusionPipeline

    folder, _ = sd
    prompts = ["Tympanic membrane is perforated.", ""]
    ours = transformers_prompt_embeddings(folder, prompts)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    theirs, _ = pipe.encode_prompt(prompts, CPU, 1, False)
    assert ours.shape == (2, 77, HIDDEN)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)  # the same float32 operations
    skip = transformers_prompt_embeddings(folder, prompts, "penultimate")
    assert not torch.allclose(skip, ours)
    with pytest.raises(FileNotFoundError, match=r"diffusion.text_encoder.folder: .*text_encoder/config.json not found"):
        transformers_prompt_embeddings(folder / "unet", prompts)


def _vae(folder, tiny_manifest, out, tiny_config, **keys):
    params = {**tiny_config["autoencoder"]["kl4"], "name": "sd_vae", "latent_channels": 4, "steps": 0,
              "pretrained": str(folder / "vae"), **SHARED, **keys}
    train_autoencoder(tiny_manifest, out / "model", out / "log.parquet", params)
    return out / "model"


def test_a_pretrained_vae_keeps_its_scaling_factor_and_a_new_one_is_measured(sd, tiny_manifest, tiny_config,
                                                                             tmp_path):
    folder, _ = sd
    for name, keys in {"as is": {}, "fine-tuned": {"steps": 2}}.items():
        model = _vae(folder, tiny_manifest, tmp_path / name.replace(" ", "_"), tiny_config, **keys)
        record = json.loads((model / "scaling.json").read_text())
        assert record == {"scaling_factor": SCALING_FACTOR, "source": f"pretrained: {folder / 'vae'}"}
        assert json.loads((model / "config.json").read_text())["scaling_factor"] == SCALING_FACTOR
    eight = _vae(folder, tiny_manifest, tmp_path / "eight", tiny_config, steps=2, latent_channels=8)
    record = json.loads((eight / "scaling.json").read_text())  # latent layers re-initialised: measured again
    assert record["source"].startswith("measured: 1 / std of") and record["scaling_factor"] != SCALING_FACTOR
    with pytest.raises(ValueError, match=r"latent_channels: 8, but .*vae has 4 and steps is 0"):
        _vae(folder, tiny_manifest, tmp_path / "untrained", tiny_config, latent_channels=8)


def test_a_fine_tuned_class_model_is_a_pipeline_that_samples_as_the_workflow_does(sd, tiny_manifest, tiny_config,
                                                                                  diffusion_params, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder, prediction = sd
    vae = _vae(folder, tiny_manifest, tmp_path / "vae", tiny_config)
    params = diffusion_params(steps=2, variant="sd", pretrained=str(folder), **UNSET,
                              text_encoder={"folder": "pretrained", "open_clip_model": None, "checkpoint": None,
                                            "layer": "auto"})
    train_diffusion(tiny_manifest, vae, tmp_path / "model", tmp_path / "log.parquet", params)
    saved = json.loads((tmp_path / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert (saved["beta_schedule"], saved["prediction_type"], saved["steps_offset"]) == ("scaled_linear", prediction, 1)
    assert saved["_class_name"] == "DDIMScheduler" and saved["set_alpha_to_one"] is False  # the folder's
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]

    model = load_diffusion(tmp_path / "model", CPU)
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "model"))
    assert pipe.vae.config.scaling_factor == SCALING_FACTOR
    ci, prompt = 2, tiny_config["diffusion"]["prompts"]["com"]
    torch.testing.assert_close(pipe.encode_prompt([prompt], CPU, 1, False)[0][0], model.prompt_encoder.embeddings[ci],
                               rtol=0, atol=1e-6)
    shape = (4, 8, 8)
    ours = sample_latents(model, ci, 2, shape, 4, 2.0, torch.Generator().manual_seed(3), CPU)
    x_t = torch.randn((2, *shape), generator=torch.Generator().manual_seed(3))  # the same initial noise
    theirs = pipe(prompt, num_images_per_prompt=2, latents=x_t, num_inference_steps=4, guidance_scale=2.0,
                  output_type="latent").images
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)  # float32, the same operations batched alike
    images = pipe(prompt, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()


def test_the_readme_snippet_samples_a_model_with_a_learnt_prompt_encoder(tiny_manifest, tiny_ae, diffusion_params,
                                                                          tmp_path):
    """README.md's Python example, run on a class model of the default kind (learnt prompt embeddings, no text
    encoder in the pipeline), and the pipeline's latents against the workflow's sampler from the same noise."""
    import re

    from diffusers import StableDiffusionPipeline

    from conftest import ROOT

    train_diffusion(tiny_manifest, tiny_ae, tmp_path / "model", tmp_path / "log.parquet", diffusion_params(steps=2))
    snippet = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert 'folder = "results/default/diffusion/class/model"' in snippet
    scope = {}
    exec(snippet.replace("results/default/diffusion/class/model", str(tmp_path / "model")), scope)
    assert scope["image"].size == (16, 16)
    model = load_diffusion(tmp_path / "model", CPU)
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "model"), text_encoder=None, tokenizer=None)
    shape = (int(model.unet.config.in_channels), 8, 8)
    ours = sample_latents(model, 2, 1, shape, 4, 2.0, torch.Generator().manual_seed(5), CPU)
    x_t = torch.randn((1, *shape), generator=torch.Generator().manual_seed(5))
    theirs = pipe(prompt_embeds=model.prompt_encoder(torch.tensor([2])), latents=x_t, num_inference_steps=4,
                  negative_prompt_embeds=model.prompt_encoder(torch.tensor([model.prompt_encoder.null_index])),
                  guidance_scale=2.0, output_type="latent").images
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)  # float32, the same operations batched alike
