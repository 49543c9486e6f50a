"""Nothing from test or external may reach a generative model or the feature network's training."""
import pandas as pd
import pytest
import torch

from pipeline_lib import autoencoder, diffusion, evaluate
from pipeline_lib.data import CLASSES
from pipeline_lib.torchutils import load_images

SHARED = {"seed": 0, "device": "cpu", "classes": list(CLASSES)}


def _record_splits(monkeypatch, module):
    seen = []

    def spy(path, splits, classes):
        seen.append(tuple(splits))
        return load_images(path, splits, classes)

    monkeypatch.setattr(module, "load_images", spy)
    return seen


def test_autoencoder_and_diffusion_train_on_train_splits_only(tiny_manifest, tmp_path, monkeypatch,
                                                             tiny_config):
    seen_ae = _record_splits(monkeypatch, autoencoder)
    ae_params = {**tiny_config["autoencoder"]["kl8"], "name": "kl8", **SHARED, "steps": 2}
    autoencoder.train_autoencoder(tiny_manifest, tmp_path / "ae", tmp_path / "l.parquet", ae_params)
    assert seen_ae == [("train_a", "train_b")]
    seen_d = _record_splits(monkeypatch, diffusion)
    d = {k: v for k, v in tiny_config["diffusion"].items() if k != "variants"}
    diffusion.train_diffusion(tiny_manifest, tmp_path / "ae", tmp_path / "dm", tmp_path / "dl.parquet",
                              {**d, **SHARED, "steps": 2, "variant": "class", "conditioning": "class"})
    assert seen_d == [("train_a", "train_b")]


def test_feature_network_trains_on_train_a_and_selects_on_train_b(tiny_manifest, tmp_path, monkeypatch,
                                                                  tiny_config):
    got = {}
    real_train = evaluate.train_classifier

    def spy(x, y, xv, yv, *args, **kw):
        got["x"], got["xv"] = x, xv
        return real_train(x, y, xv, yv, *args, **kw)

    monkeypatch.setattr(evaluate, "train_classifier", spy)
    params = {k: v for k, v in tiny_config["evaluate"].items() if not k.endswith(("_k", "_splits"))} | SHARED
    evaluate.train_feature_net(tiny_manifest, tmp_path / "f.pt", tmp_path / "f.parquet", params)
    xa, _, _ = load_images(tiny_manifest, ["train_a"], CLASSES)
    xb, _, _ = load_images(tiny_manifest, ["train_b"], CLASSES)
    assert torch.equal(got["x"], xa) and torch.equal(got["xv"], xb)
    rows = pd.read_parquet(tiny_manifest)
    assert {"test", "external"} <= set(rows["split"])  # the manifest did hold them


def test_generative_models_refuse_test_and_external_splits(tiny_manifest, tmp_path, tiny_config, diffusion_params):
    ae_params = {**tiny_config["autoencoder"]["kl8"], "name": "kl8", **SHARED, "train_splits": ["train_a", "test"]}
    with pytest.raises(ValueError, match=r"autoencoder.kl8.train_splits may only hold \('train_a', 'train_b'\), "
                                         r"got \['test'\]"):
        autoencoder.train_autoencoder(tiny_manifest, tmp_path / "m", tmp_path / "l.parquet", ae_params)
    with pytest.raises(ValueError, match=r"diffusion.train_splits may only hold \('train_a', 'train_b'\), "
                                         r"got \['external'\]"):
        diffusion.train_diffusion(tiny_manifest, tmp_path / "ae", tmp_path / "d", tmp_path / "dl.parquet",
                                  diffusion_params(train_splits=["train_b", "external"]))
