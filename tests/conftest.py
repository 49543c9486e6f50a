"""Shared fixtures: tiny configs and data made on the fly; nothing is downloaded and no GPU is needed."""
import os
import shutil
from pathlib import Path
from typing import Sequence

import pytest
import torch
import yaml

from pipeline_lib.data import CLASSES

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SHARED = {"seed": 0, "device": "cpu", "classes": list(CLASSES)}  # the keys every stage's params carry
# A tiny denoiser (two levels, cross-attention at the second) for the conditioning tests.
TINY_UNET = {"block_out_channels": [16, 32], "attention_levels": [False, True], "layers_per_block": 1,
             "cross_attention_dim": 16, "attention_head_dim": 8, "norm_num_groups": 8}

if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes share the two cores: one thread each
    torch.set_num_threads(1)

# The longest modules first (each module stays whole and in order): under `make test`'s two processes one of
# them starts the local SLURM run, which mostly waits on the scheduler, while the other runs the tiny workflow,
# and the short modules fill in behind them instead of leaving a long one to run alone at the end.
LONGEST_FIRST = ("test_slurm.py", "test_workflow.py", "test_workflow_grey.py", "test_resume.py",
                 "test_workflow_sd.py", "test_bad_input.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def bf16_sampling_error(model_dir: Path, sample) -> float:
    """Relative RMS difference between the latents ``sample(model)`` draws from the saved model loaded with the
    denoiser in FP32 and in bf16 (``speed.sampling_precision``); checks that the bf16 denoiser is bf16, that its
    latents stay FP32 and differ from the FP32 ones (the switch acts)."""
    from pipeline_lib.diffusion import load_diffusion
    from pipeline_lib.speed import Speed

    half = load_diffusion(model_dir, CPU, Speed(sampling_precision="bf16"))
    assert half.unet.dtype == torch.bfloat16
    a, b = sample(load_diffusion(model_dir, CPU)), sample(half)
    assert a.dtype == b.dtype == torch.float32 and not torch.equal(a, b)
    return float((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt())


# bf16 keeps 8 significant bits (unit roundoff u = 2^-8, about 0.004 relative per rounding); the denoiser's
# dozen layers in depth and the few sampling steps add such errors up, the FP32 scheduler update does not amplify
# them: a bound of about 12 u on the relative error of the latents.
BF16_SAMPLING_RTOL = 0.05


def copy_workflow(work: Path, configs: Sequence[str] | None = ("config.yaml",)) -> Path:
    """The workflow (Snakefile, rules and scripts, the package, profiles, the conda environment its rules name)
    copied into ``work`` with the named files of config/ (None: all), so a test's runs keep their results there."""
    for part in ("Snakefile", "workflow", "pipeline_lib", "profiles", "envs"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / part)
    (work / "config").mkdir()
    for name in configs if configs is not None else [p.name for p in (ROOT / "config").iterdir()]:
        shutil.copy(ROOT / "config" / name, work / "config" / name)
    return work


@pytest.fixture(scope="session")
def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    """tests/tiny_config.yaml validated against the workflow's schema, its defaults filled in."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((ROOT / "tests" / "tiny_config.yaml").read_text())
    validate(cfg, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    return cfg


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory, tiny_config) -> Path:
    """The tiny embedded data set, ingested and preprocessed; returns the preprocessed manifest."""
    from pipeline_lib.data import ingest
    from pipeline_lib.preprocess import preprocess

    root = tmp_path_factory.mktemp("tiny")
    ingest(root / "data" / "manifest.parquet", root / "data" / "images", {**tiny_config["data"], "seed": 0})
    preprocess(root / "data" / "manifest.parquet", root / "pre" / "manifest.parquet", root / "pre" / "qc.parquet",
               tiny_config["preprocess"])
    return root / "pre" / "manifest.parquet"


@pytest.fixture(scope="session")
def tiny_feature_net(tiny_manifest, tmp_path_factory, tiny_config) -> Path:
    """The domain feature network of the tiny config, trained once per test run."""
    from pipeline_lib.feature_net import train_feature_net

    out = tmp_path_factory.mktemp("feature_net")
    params = {k: v for k, v in tiny_config["evaluate"].items() if not k.endswith(("_k", "_splits"))}
    train_feature_net(tiny_manifest, out / "model.pt", out / "log.parquet",
                      {**params, "seed": 0, "device": "cpu", "classes": tiny_config["data"]["classes"]})
    return out / "model.pt"


@pytest.fixture(scope="session")
def tiny_ae(tiny_manifest, tmp_path_factory, tiny_config) -> Path:
    """The tiny config's kl4 autoencoder trained for 2 steps, once per test run: the latents the diffusion tests
    train on (its quality does not matter to them). Returns the model folder."""
    from pipeline_lib.autoencoder import train_autoencoder

    out = tmp_path_factory.mktemp("tiny_ae")
    train_autoencoder(tiny_manifest, out / "model", out / "log.parquet",
                      {**tiny_config["autoencoder"]["kl4"], "name": "kl4", "seed": 0, "device": "cpu",
                       "classes": tiny_config["data"]["classes"], "steps": 2})
    return out / "model"


@pytest.fixture(scope="session")
def diffusion_params(tiny_config):
    """``diffusion_params(**overrides)``: the tiny config's diffusion slice (without the variants) as a rule
    passes it, for a class-conditioned variant unless overridden."""
    def make(**overrides) -> dict:
        d = {k: v for k, v in tiny_config["diffusion"].items() if k != "variants"}
        return {**d, "seed": 0, "device": "cpu", "classes": tiny_config["data"]["classes"], "variant": "class",
                "conditioning": "class", **overrides}
    return make


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    """A tiny open_clip model with a 9-block vision transformer, registered and saved locally."""
    import json

    import open_clip
    import torch

    d = tmp_path_factory.mktemp("open_clip_vit")
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 9, "width": 32, "patch_size": 8,
                                           "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}
    (d / "medaug-tiny-vit.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(d))
    torch.manual_seed(0)
    torch.save(open_clip.create_model("medaug-tiny-vit", pretrained=None).state_dict(), d / "vit.pt")
    return d / "vit.pt"
