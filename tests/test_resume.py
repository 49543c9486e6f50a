"""Same config and seed, same numbers; a killed training job resumes and ends where an uninterrupted one does."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline_lib import autoencoder, diffusion
from conftest import SHARED



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
    autoencoder.train_autoencoder(manifest, out / "model", out / "log.parquet", params)
    ae = autoencoder.load_autoencoder(out / "model", torch.device("cpu"))
    return pd.read_parquet(out / "log.parquet"), {k: v.clone() for k, v in ae.state_dict().items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("schedule", [{}, {"lr_schedule": "linear", "lr_warmup_steps": 2}])
def test_autoencoder_is_deterministic_and_resumes(tiny_manifest, tmp_path, monkeypatch, tiny_config, schedule):
    params = {**tiny_config["autoencoder"]["kl4"], "name": "kl4", **SHARED, "steps": 8, "checkpoint_every": 3,
              **schedule}
    log_a, weights_a = _train_ae(tiny_manifest, tmp_path / "a", params)
    log_b, weights_b = _train_ae(tiny_manifest, tmp_path / "b", params)
    pd.testing.assert_frame_equal(log_a, log_b)
    _assert_same_weights(weights_a, weights_b)

    with monkeypatch.context() as m:
        _kill_at(m, autoencoder, "autoencoder_loss", 8)  # dies in step 8, after the checkpoint at step 6
        with pytest.raises(Killed):
            _train_ae(tiny_manifest, tmp_path / "c", params)
    assert (tmp_path / "c" / "model.resume.pt").exists()
    assert not (tmp_path / "c" / "model").exists() and not (tmp_path / "c" / "log.parquet").exists()
    log_c, weights_c = _train_ae(tiny_manifest, tmp_path / "c", params)
    pd.testing.assert_frame_equal(log_a, log_c)  # the learning rate's schedule resumed too (its column)
    lr = params["lr"]  # by hand: constant; or warm-up lr/2, lr, then linear to 0 over the other 6 steps
    expected = [lr] * 8 if not schedule else [lr / 2, lr] + [lr * (1 - k / 6) for k in range(6)]
    assert log_a["lr"].tolist() == pytest.approx(expected, rel=1e-12)
    _assert_same_weights(weights_a, weights_c)
    assert not (tmp_path / "c" / "model.resume.pt").exists()


def test_checkpoint_with_other_settings_is_not_resumed(tiny_manifest, tmp_path, monkeypatch, tiny_config):
    params = {**tiny_config["autoencoder"]["kl4"], "name": "kl4", **SHARED, "steps": 6, "checkpoint_every": 2}
    with monkeypatch.context() as m:
        _kill_at(m, autoencoder, "autoencoder_loss", 4)
        with pytest.raises(Killed):
            _train_ae(tiny_manifest, tmp_path / "x", params)
    other = {**params, "lr": params["lr"] / 2}
    log_x, _ = _train_ae(tiny_manifest, tmp_path / "x", other)
    log_y, _ = _train_ae(tiny_manifest, tmp_path / "y", other)
    pd.testing.assert_frame_equal(log_x, log_y)


def test_diffusion_resumes_to_the_same_numbers(tiny_manifest, tmp_path, monkeypatch, tiny_config):
    ae_params = {**tiny_config["autoencoder"]["kl4"], "name": "kl4", **SHARED, "steps": 3}
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


TRAIN_SCRIPT = """
import json, sys
from pipeline_lib.harness import stage_log
kind, manifest, out, params = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with stage_log(out + ".log"):
    if kind == "autoencoder":
        from pipeline_lib.autoencoder import train_autoencoder
        train_autoencoder(manifest, out + "/model", out + "/log.parquet", params, threads=1)
    elif kind == "diffusion":
        from pipeline_lib.diffusion import train_diffusion
        train_diffusion(manifest, params["ae_dir"], out + "/model", out + "/log.parquet", params, threads=1)
    elif kind == "classify":
        from pipeline_lib.classify import classify
        classify(manifest, params["gen_manifest"], out + "/scores.parquet", out + "/log.parquet",
                 out + "/training_set.parquet", params, threads=1)
    else:
        from pipeline_lib.generate import generate
        generate(manifest, params["ae_dir"], params["model_dir"], out + "/images", out + "/manifest.parquet", params,
                 threads=1)
"""


def _start(kind: str, manifest: Path, out: Path, params: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, kind, str(manifest), str(out), json.dumps(params)])


def _kill_when(proc: subprocess.Popen, ready) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fails if it ended first."""
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _resumed_at(log: Path) -> str:
    text = log.read_text()
    assert "resuming from" in text, text[-2000:]
    return text.split("resuming from", 1)[1].splitlines()[0]


def _sigkill_and_resume(kind: str, manifest: Path, tmp_path: Path, params: dict) -> tuple[Path, Path]:
    """An uninterrupted run, and a run killed with a real SIGKILL in another process after its first checkpoint
    and rerun; asserts that the rerun resumed from that checkpoint and wrote the same training log."""
    steps, every = int(params["steps"]), int(params["checkpoint_every"])
    full = _start(kind, manifest, tmp_path / "full", params)
    assert full.wait(timeout=600) == 0

    out = tmp_path / "killed"
    proc = _start(kind, manifest, out, params)
    resume = out / "model.resume.pt"
    _kill_when(proc, resume.exists)
    assert resume.exists() and not (out / "model").exists() and not (out / "log.parquet").exists()

    again = _start(kind, manifest, out, params)
    assert again.wait(timeout=600) == 0
    text = Path(str(out) + ".log").read_text()
    step = int(text.split("at step ")[1].split()[0])
    assert "resuming from" in text and every <= step < steps and step % every == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "full" / "log.parquet"),
                                  pd.read_parquet(out / "log.parquet"))
    assert not resume.exists()
    return tmp_path / "full", out


@pytest.mark.slow  # a training job in a subprocess, killed and restarted
def test_autoencoder_killed_with_sigkill_resumes_from_its_checkpoint(tiny_manifest, tmp_path, tiny_config):
    params = {**tiny_config["autoencoder"]["kl4"], "name": "kl4", **SHARED, "steps": 60, "checkpoint_every": 5}
    full, resumed = _sigkill_and_resume("autoencoder", tiny_manifest, tmp_path, params)
    _assert_same_weights(_train_ae_outputs(full)[1], _train_ae_outputs(resumed)[1])


@pytest.mark.slow  # a training job in a subprocess, killed and restarted
def test_clue_diffusion_with_ema_killed_with_sigkill_resumes(tiny_manifest, tmp_path, tiny_config):
    """The CLUE variant (style encoder and adapter) with EMA and gradient accumulation: every piece of state."""
    _train_ae(tiny_manifest, tmp_path / "ae", {**tiny_config["autoencoder"]["kl4"], "name": "kl4", **SHARED,
                                                "steps": 2})
    d = {k: v for k, v in tiny_config["diffusion"].items() if k != "variants"}
    params = {**d, **SHARED, "steps": 30, "checkpoint_every": 5, "variant": "clue", "conditioning": "clue",
              "style_dim": 8, "style_tokens": 1, "kl_weight": 1e-3, "ema_decay": 0.9, "grad_accumulation": 2,
              "ae_dir": str(tmp_path / "ae" / "model")}
    full, resumed = _sigkill_and_resume("diffusion", tiny_manifest, tmp_path, params)
    for part in ("unet", "style_adapter", "style_encoder", "prompt_encoder"):
        a = (full / "model" / part / "diffusion_pytorch_model.safetensors").read_bytes()
        assert a == (resumed / "model" / part / "diffusion_pytorch_model.safetensors").read_bytes(), part


def _train_ae_outputs(out: Path):
    ae = autoencoder.load_autoencoder(out / "model", torch.device("cpu"))
    return pd.read_parquet(out / "log.parquet"), ae.state_dict()


@pytest.mark.parametrize("kind, step_fn", [("vq4", "vqgan_step"), ("kl4", "kl_step")])
def test_adversarial_autoencoders_resume_generator_discriminator_and_both_optimizers(
        kind, step_fn, tiny_manifest, tiny_feature_net, tmp_path, monkeypatch, tiny_config):
    """The VQ-GAN, and the KL-VAE with the default's perceptual and adversarial terms (its discriminator the
    VQ-GAN's settings, from step 4)."""
    gan = {"loss": {**tiny_config["autoencoder"][kind]["loss"], "perceptual_weight": 0.1, "adversarial_weight": 0.1},
           "discriminator": tiny_config["autoencoder"]["vq4"]["discriminator"]} if kind == "kl4" else {}
    params = {**tiny_config["autoencoder"][kind], **gan, "name": kind, **SHARED, "steps": 9, "checkpoint_every": 3,
              "perceptual": {"lpips_net": "vgg", "lpips_backbone": None}}

    def train(name):
        autoencoder.train_autoencoder(tiny_manifest, tmp_path / name / "model", tmp_path / name / "log.parquet",
                                      params, feature_net=tiny_feature_net)
        return _train_ae_outputs(tmp_path / name)

    log_full, w_full = train("full")
    with monkeypatch.context() as m:
        _kill_at(m, autoencoder, step_fn, 8)  # after the checkpoint at step 6, with the discriminator on
        with pytest.raises(Killed):
            train("killed")
    log_resumed, w_resumed = train("killed")
    assert log_full["discriminator"][4:].notna().all()  # the discriminator trained before and after the kill
    pd.testing.assert_frame_equal(log_full, log_resumed)
    _assert_same_weights(w_full, w_resumed)


@pytest.mark.slow  # a training job in a subprocess, killed and restarted
def test_classifier_killed_with_sigkill_resumes_at_its_next_epoch(tiny_manifest, tmp_path, tiny_config):
    """A classifier grid job: per-epoch checkpoint (model, Adam, plateau scheduler, best epoch so far, random
    state); the resumed job writes the same scores and log as an uninterrupted one."""
    from pipeline_lib.io import resolve_path

    real = pd.read_parquet(tiny_manifest)
    syn = real[real["split"] == "train_a"].copy()
    syn["image_id"] = "syn_" + syn["image_id"]
    syn["path"] = [str(resolve_path(tiny_manifest, p)) for p in syn["path"]]
    syn.assign(split="synthetic").to_parquet(tmp_path / "gen.parquet")
    grid = ("archs", "ratios", "hybrid", "scales", "scale_hybrid", "count_sets")
    c = {k: v for k, v in tiny_config["classify"].items() if k not in grid}
    params = {**c, **SHARED, "epochs": 40, "early_stopping_patience": 40, "arch": "small_cnn", "point": "replace_50",
              "protocol": "replace", "value": 0.5, "variant": "class", "setting": "cfg2",
              "gen_manifest": str(tmp_path / "gen.parquet")}
    assert _start("classify", tiny_manifest, tmp_path / "full", params).wait(timeout=600) == 0

    out = tmp_path / "killed"
    resume = out / "classifier.resume.pt"
    _kill_when(_start("classify", tiny_manifest, out, params), resume.exists)
    assert not (out / "scores.parquet").exists()
    assert _start("classify", tiny_manifest, out, params).wait(timeout=600) == 0
    epoch = int(_resumed_at(Path(f"{out}.log")).split("at step ")[1].split()[0])
    assert 1 <= epoch < 40
    for table in ("scores", "log", "training_set"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "full" / f"{table}.parquet"),
                                      pd.read_parquet(out / f"{table}.parquet"))
    assert not resume.exists()


@pytest.mark.slow  # a training job in a subprocess, killed and restarted
def test_generation_killed_with_sigkill_keeps_finished_batches_and_redoes_the_rest(tiny_manifest, tiny_ae, tmp_path,
                                                                                  tiny_config, diffusion_params):
    diffusion.train_diffusion(tiny_manifest, tiny_ae, tmp_path / "dm" / "model", tmp_path / "dm" / "log.parquet",
                              diffusion_params(steps=2))
    g = {k: v for k, v in tiny_config["generate"].items() if k not in ("settings", "seeds")}
    params = {**g, "guidance_scale": 2.0, "style_sigma": None, "variant": "class", "setting": "cfg2", **SHARED,
              "seed": 1, "preprocess": tiny_config["preprocess"], "batch_size": 2, "ae_dir": str(tiny_ae),
              "model_dir": str(tmp_path / "dm" / "model")}
    assert _start("generate", tiny_manifest, tmp_path / "full", params).wait(timeout=600) == 0
    full = pd.read_parquet(tmp_path / "full" / "manifest.parquet")
    batches = sum(-(-n // 2) for n in full.groupby("label").size())

    out = tmp_path / "killed"
    partial = out / "images.partial"
    _kill_when(_start("generate", tiny_manifest, out, params), lambda: len(list(partial.glob(".finalize_*"))) >= 2)
    done = len(list(partial.glob(".finalize_*")))
    assert 2 <= done < batches and not (out / "images").exists() and not (out / "manifest.parquet").exists()
    # What a kill inside a batch can leave: a writer's temporary folder and images of an unfinished batch, here one
    # of them cut short. Neither may end up in the output.
    (partial / ".x.png.abc.tmp").mkdir()
    (partial / ".x.png.abc.tmp" / "x.png").write_bytes(b"\x89PNG")
    unfinished = next(i for i in full["image_id"] if not (partial / f"{i}.png").exists())
    (partial / f"{unfinished}.png").write_bytes((tmp_path / "full" / "images" / f"{unfinished}.png").read_bytes()[:50])

    assert _start("generate", tiny_manifest, out, params).wait(timeout=600) == 0
    assert f"{done} finished batches kept" in _resumed_at(Path(f"{out}.log"))
    names = sorted(p.name for p in (tmp_path / "full" / "images").iterdir())
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    for f in (tmp_path / "full" / "images").iterdir():
        assert f.read_bytes() == (out / "images" / f.name).read_bytes(), f.name
    pd.testing.assert_frame_equal(full, pd.read_parquet(out / "manifest.parquet"))
    assert not partial.exists()


def test_a_partial_generation_of_other_settings_is_started_afresh(tmp_path):
    from pipeline_lib.generate import resume_folder

    out = tmp_path / "images"
    partial = resume_folder(out, {"params": {"guidance_scale": 2.0}})
    (partial / ".finalize_0_0.json").write_text("{}")
    assert resume_folder(out, {"params": {"guidance_scale": 2.0}}) == partial
    assert (partial / ".finalize_0_0.json").exists()
    resume_folder(out, {"params": {"guidance_scale": 3.0}})
    assert not (partial / ".finalize_0_0.json").exists()
