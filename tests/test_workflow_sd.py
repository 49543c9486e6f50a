"""The tiny workflow in paper_clue.yaml's shape on a local Stable Diffusion folder (tests/tiny_sd.py): the folder's
VAE used as it is, its UNet fine-tuned as Vanilla and CLUE variants, the prompts through its own text encoder, the
noise schedule from its scheduler config; for an SD 1.5-like epsilon folder and an SD 2.1 768-like v-prediction
one. Run up to the generated sets (the rest of the DAG is test_workflow.py's)."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import copy_workflow
from tiny_sd import SCALING_FACTOR, make_sd_folder

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_tiny_workflow_fine_tunes_a_stable_diffusion_folder(tiny_config, tmp_path, prediction):
    from diffusers import StableDiffusionPipeline

    from pipeline_lib.diffusion import BUILT_IN_SCHEDULE, load_diffusion

    work = copy_workflow(tmp_path)
    sd = make_sd_folder(work / "models" / "sd", prediction)
    cfg = yaml.safe_load(yaml.safe_dump(tiny_config))
    base = dict(cfg["autoencoder"]["kl4"])
    cfg["autoencoder"] = {"kl4": None, "vq4": None,
                          "sd": {**base, "latent_channels": 4, "pretrained": "models/sd/vae", "steps": 0}}
    d = cfg["diffusion"]
    d.update({"autoencoder": "sd", "pretrained": "models/sd", "text_encoder": {"folder": "pretrained"},
              **dict.fromkeys(BUILT_IN_SCHEDULE)})  # the schedule from the folder, as config/config.yaml leaves it
    # Vanilla and CLUE as paper_clue.yaml; the epsilon folder trains Vanilla only (CLUE's path is the v one's).
    variants = ["vanilla", "clue"] if prediction == "v_prediction" else ["vanilla"]
    d["variants"] = {"class": None, "ml": None, "cl": None, "vanilla": {"conditioning": "class"},
                     "clue": d["variants"]["clue"] if "clue" in variants else None}
    cfg["generate"] |= {"seeds": [0], "settings": {"cfg2": {"guidance_scale": 2.0, "variants": ["vanilla"]},
                                                   "sigma05": cfg["generate"]["settings"]["sigma05"]
                                                   if "clue" in variants else None}}
    cfg |= {"cluster": None, "trajectory": None, "interpolation": None}
    cfg["classify"]["variants"] = None  # the tiny config's `class` is removed here
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = f"results/{cfg['experiment']}"
    targets = [f"{res}/generate/vanilla/cfg2/seed0/manifest.parquet"]
    targets += [f"{res}/generate/clue/sigma05/seed0/manifest.parquet"] if "clue" in variants else []
    proc = subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile", "config.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = work / res

    scaling = json.loads((res / "autoencoder" / "sd" / "model" / "scaling.json").read_text())
    assert scaling == {"scaling_factor": SCALING_FACTOR, "source": "pretrained: models/sd/vae"}
    for variant in variants:
        model = res / "diffusion" / variant / "model"
        saved = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
        assert (saved["beta_schedule"], saved["beta_start"], saved["prediction_type"], saved["steps_offset"]) == \
            ("scaled_linear", 0.00085, prediction, 1)
        assert load_diffusion(model, torch.device("cpu")).prompt_encoder.config.kind.startswith("transformers:")
    if "clue" in variants:
        assert not (res / "diffusion" / "clue" / "model" / "model_index.json").exists()  # needs its style modules
    log = (work / "logs" / cfg["experiment"] / "diffusion" / "vanilla.log").read_text()
    assert "noise schedule: num_train_timesteps 1000, beta_schedule scaled_linear" in log and "overrides" not in log
    gen = pd.read_parquet(res / "generate" / "vanilla" / "cfg2" / "seed0" / "manifest.parquet")
    assert len(gen) > 0 and set(gen["label"]) == set(cfg["data"]["classes"])

    pipe = StableDiffusionPipeline.from_pretrained(str(res / "diffusion" / "vanilla" / "model"))
    image = pipe(cfg["diffusion"]["prompts"]["ome"], num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()
