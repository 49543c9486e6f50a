"""Nothing from test or external may reach a generative model, the feature network or a classifier: the splits
each stage reads, and the leakage guard's checks by id, group and content."""
import shutil

import pandas as pd
import pytest
import torch

from pipeline_lib import autoencoder, diffusion, feature_net, leakage
from pipeline_lib.data import CLASSES
from pipeline_lib.torchutils import load_images
from conftest import SHARED



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
    ae_params = {**tiny_config["autoencoder"]["kl4"], "name": "kl4", **SHARED, "steps": 2}
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
    real_train = feature_net.train_classifier

    def spy(x, y, xv, yv, *args, **kw):
        got["x"], got["xv"] = x, xv
        return real_train(x, y, xv, yv, *args, **kw)

    monkeypatch.setattr(feature_net, "train_classifier", spy)
    params = {k: v for k, v in tiny_config["evaluate"].items() if not k.endswith(("_k", "_splits"))} | SHARED
    feature_net.train_feature_net(tiny_manifest, tmp_path / "f.pt", tmp_path / "f.parquet", params)
    xa, _, _ = load_images(tiny_manifest, ["train_a"], CLASSES)
    xb, _, _ = load_images(tiny_manifest, ["train_b"], CLASSES)
    assert torch.equal(got["x"], xa) and torch.equal(got["xv"], xb)
    rows = pd.read_parquet(tiny_manifest)
    assert {"test", "external"} <= set(rows["split"])  # the manifest did hold them


def test_generative_models_refuse_test_and_external_splits(tiny_manifest, tmp_path, tiny_config, diffusion_params):
    ae_params = {**tiny_config["autoencoder"]["kl4"], "name": "kl4", **SHARED, "train_splits": ["train_a", "test"]}
    with pytest.raises(ValueError, match=r"autoencoder.kl4.train_splits may only hold \('train_a', 'train_b'\), "
                                         r"got \['test'\]"):
        autoencoder.train_autoencoder(tiny_manifest, tmp_path / "m", tmp_path / "l.parquet", ae_params)
    with pytest.raises(ValueError, match=r"diffusion.train_splits may only hold \('train_a', 'train_b'\), "
                                         r"got \['external'\]"):
        diffusion.train_diffusion(tiny_manifest, tmp_path / "ae", tmp_path / "d", tmp_path / "dl.parquet",
                                  diffusion_params(train_splits=["train_b", "external"]))


def _copy_manifests(tiny_manifest, tmp_path):
    """Writable copies of the tiny raw and preprocessed manifests (paths made absolute)."""
    pre = pd.read_parquet(tiny_manifest)
    pre["path"] = [str(tiny_manifest.parent / p) for p in pre["path"]]
    raw_manifest = tiny_manifest.parents[1] / "data" / "manifest.parquet"
    raw = pd.read_parquet(raw_manifest)
    raw["path"] = [str(raw_manifest.parent / p) for p in raw["path"]]
    return raw, pre


def _check(raw, pre, tmp_path):
    raw.to_parquet(tmp_path / "raw.parquet")
    pre.to_parquet(tmp_path / "pre.parquet")
    return leakage.check_data(tmp_path / "raw.parquet", tmp_path / "pre.parquet", tmp_path / "leak.parquet",
                              tmp_path / "hashes.parquet")


def test_leakage_check_passes_on_clean_data_and_records_every_check(tiny_manifest, tmp_path):
    raw, pre = _copy_manifests(tiny_manifest, tmp_path)
    table = _check(raw, pre, tmp_path)
    assert set(table["check"]) == {"held-out image id", "held-out group", "held-out raw file content",
                                   "held-out preprocessed pixels"}
    assert (table["n_violations"] == 0).all()
    hashes = pd.read_parquet(tmp_path / "hashes.parquet")
    assert len(hashes) == len(pre) and hashes["pixel_sha256"].str.len().eq(64).all()


def test_a_copied_test_image_under_another_id_is_caught_by_content(tiny_manifest, tmp_path):
    raw, pre = _copy_manifests(tiny_manifest, tmp_path)
    train_id = pre.loc[pre["split"] == "train_a", "image_id"].iloc[0]
    test_id = pre.loc[pre["split"] == "test", "image_id"].iloc[0]
    for df in (raw, pre):  # the test row now points at a copy of the training image's files
        copy = tmp_path / f"copy_{len(df.columns)}.png"
        shutil.copy(df.loc[df["image_id"] == train_id, "path"].item(), copy)
        df.loc[df["image_id"] == test_id, "path"] = str(copy)
    with pytest.raises(ValueError, match=rf"held-out raw file content .*: 1: {train_id} = {test_id}") as err:
        _check(raw, pre, tmp_path)
    assert "held-out preprocessed pixels" in str(err.value) and not (tmp_path / "leak.parquet").exists()


def test_a_shared_group_or_id_across_splits_is_caught(tiny_manifest, tmp_path):
    raw, pre = _copy_manifests(tiny_manifest, tmp_path)
    train_row = pre[pre["split"] == "train_b"].iloc[0]
    ext_id = pre.loc[pre["split"] == "external", "image_id"].iloc[0]
    pre.loc[pre["image_id"] == ext_id, "group"] = train_row["group"]  # one lesion in two splits
    with pytest.raises(ValueError, match=rf"held-out group .*{train_row['image_id']} = {ext_id}"):
        _check(raw, pre, tmp_path)


def test_classifier_training_sets_are_checked_by_split_and_content():
    hashes = pd.DataFrame({"image_id": ["a1", "a2", "b1", "t1"], "split": ["train_a", "train_a", "train_b", "test"],
                           "pixel_sha256": ["h1", "h2", "h3", "h2"]})
    ok = pd.DataFrame({"image_id": ["a1", "s1"], "origin": ["real", "synthetic"]})
    leakage.check_training_set(ok, hashes, "run")
    with pytest.raises(ValueError, match=r"run: .*real images not from train_a: \['b1 \(train_b\)', 't1 \(test\)'\]"):
        leakage.check_training_set(pd.DataFrame({"image_id": ["b1", "t1"], "origin": ["real"] * 2}), hashes, "run")
    with pytest.raises(ValueError, match=r"real images identical to held-out ones: \['a2'\]"):
        leakage.check_training_set(pd.DataFrame({"image_id": ["a2"], "origin": ["real"]}), hashes, "run")
    with pytest.raises(ValueError, match=r"synthetic ids that are held-out ids: \['t1'\]"):
        leakage.check_training_set(pd.DataFrame({"image_id": ["t1"], "origin": ["synthetic"]}), hashes, "run")
