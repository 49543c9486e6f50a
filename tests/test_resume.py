"""Same config and seed, same numbers; a killed training job resumes and ends where an uninterrupted one does."""
import pandas as pd
import pytest

from pipeline_lib import autoencoder, diffusion
from pipeline_lib.data import CLASSES

SHARED = {"seed": 0, "device": "cpu", "classes": list(CLASSES)}


class Killed(Exception):
    pass


def _kill_at(monkeypatch, module, name, call):
    real, count = getattr(module, name), {"n": 0}

    def wrapper(*args, **kw):
        count["n"] += 1
        if count["n"] == call:
            raise Killed
        return real(*args, **kw)

    monkeypatch.setattr(module, name, wrapper)


def _train_ae(manifest, out, params):
    autoencoder.train_autoencoder(manifest, out / "model", out / "log.parquet", out / "recon.parquet", params)
    return pd.read_parquet(out / "log.parquet"), pd.read_parquet(out / "recon.parquet")


def test_autoencoder_is_deterministic_and_resumes(tiny_manifest, tmp_path, monkeypatch, tiny_config):
    params = {**tiny_config["autoencoder"], **SHARED, "steps": 8, "checkpoint_every": 3}
    log_a, recon_a = _train_ae(tiny_manifest, tmp_path / "a", params)
    log_b, recon_b = _train_ae(tiny_manifest, tmp_path / "b", params)
    pd.testing.assert_frame_equal(log_a, log_b)
    pd.testing.assert_frame_equal(recon_a, recon_b)

    with monkeypatch.context() as m:
        _kill_at(m, autoencoder, "autoencoder_loss", 8)  # dies in step 8, after the checkpoint at step 6
        with pytest.raises(Killed):
            _train_ae(tiny_manifest, tmp_path / "c", params)
    assert (tmp_path / "c" / "model.resume.pt").exists()
    assert not (tmp_path / "c" / "model").exists() and not (tmp_path / "c" / "log.parquet").exists()
    log_c, recon_c = _train_ae(tiny_manifest, tmp_path / "c", params)
    pd.testing.assert_frame_equal(log_a, log_c)
    pd.testing.assert_frame_equal(recon_a, recon_c)
    assert not (tmp_path / "c" / "model.resume.pt").exists()


def test_checkpoint_with_other_settings_is_not_resumed(tiny_manifest, tmp_path, monkeypatch, tiny_config):
    params = {**tiny_config["autoencoder"], **SHARED, "steps": 6, "checkpoint_every": 2}
    with monkeypatch.context() as m:
        _kill_at(m, autoencoder, "autoencoder_loss", 4)
        with pytest.raises(Killed):
            _train_ae(tiny_manifest, tmp_path / "x", params)
    other = {**params, "lr": params["lr"] / 2}
    log_x, _ = _train_ae(tiny_manifest, tmp_path / "x", other)
    log_y, _ = _train_ae(tiny_manifest, tmp_path / "y", other)
    pd.testing.assert_frame_equal(log_x, log_y)


def test_diffusion_resumes_to_the_same_numbers(tiny_manifest, tmp_path, monkeypatch, tiny_config):
    ae_params = {**tiny_config["autoencoder"], **SHARED, "steps": 3}
    _train_ae(tiny_manifest, tmp_path / "ae", ae_params)
    d = {k: v for k, v in tiny_config["diffusion"].items() if k != "variants"}
    params = {**d, **SHARED, "steps": 7, "checkpoint_every": 3, "variant": "class", "conditioning": "class"}

    def train(name):
        diffusion.train_diffusion(tiny_manifest, tmp_path / "ae" / "model", tmp_path / name / "model",
                                  tmp_path / name / "log.parquet", params)
        return pd.read_parquet(tmp_path / name / "log.parquet")

    full = train("full")
    with monkeypatch.context() as m:
        _kill_at(m, diffusion, "diffusion_loss", 5)
        with pytest.raises(Killed):
            train("killed")
    pd.testing.assert_frame_equal(full, train("killed"))
