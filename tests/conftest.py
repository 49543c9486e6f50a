"""Shared fixtures: tiny configs and data made on the fly; nothing is downloaded and no GPU is needed."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


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
    from pipeline_lib.evaluate import train_feature_net

    out = tmp_path_factory.mktemp("feature_net")
    params = {k: v for k, v in tiny_config["evaluate"].items() if k != "recall_k"}
    train_feature_net(tiny_manifest, out / "model.pt", out / "log.parquet",
                      {**params, "seed": 0, "device": "cpu", "classes": tiny_config["data"]["classes"]})
    return out / "model.pt"
