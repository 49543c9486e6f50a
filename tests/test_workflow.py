"""The whole DAG through Snakemake on the tiny config, in a copy of the workflow (results stay in tmp)."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import copy_workflow
import yaml

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, check: bool = True, targets: tuple[str, ...] = ()
              ) -> subprocess.CompletedProcess:
    """Snakemake on ``workdir``'s config.yaml (``args`` after it, so a later --configfile overrides it); the
    ``targets`` come first, since --configfile would take them for config files."""
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile", "config.yaml", *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=1500)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config):
    work = copy_workflow(tmp_path_factory.mktemp("workflow"))
    (work / "config.yaml").write_text(yaml.safe_dump(tiny_config))
    snakemake(work)
    return work, work / "results" / tiny_config["experiment"]


def test_tables_have_the_promised_columns_and_ranges(run, tiny_config):
    _, res = run
    manifest = pd.read_parquet(res / "data" / "manifest.parquet")
    assert list(manifest.columns) == ["image_id", "path", "label", "split", "group", "source"]
    qc = pd.read_parquet(res / "preprocess" / "qc.parquet")
    assert len(qc) == len(manifest) and set(qc["status"]) <= {"ok", "dropped"}
    assert (qc.loc[qc["status"] == "ok", "r"] > 0).all()
    recon = pd.read_parquet(res / "report" / "autoencoder_comparison.parquet")
    assert sorted(set(recon["autoencoder"])) == ["kl4", "vq4"]
    assert list(recon[recon["autoencoder"] == "vq4"]["class"]) == [*tiny_config["data"]["classes"], "all"]
    assert recon["ssim"].between(-1, 1).all() and (recon["psnr"] > 0).all() and recon["ms_ssim"].between(0, 1).all()
    assert (recon["domain_perceptual"] >= 0).all() and not any("lpips" in c for c in recon.columns)
    per_image = pd.read_parquet(res / "autoencoder" / "kl4" / "recon_per_image.parquet")
    assert set(per_image["split"]) == {"test"} and len(per_image) == recon.iloc[-1]["n_images"]
    for stage in ("autoencoder/kl4", "autoencoder/vq4", "diffusion/class", "diffusion/clue", "diffusion/ml",
                  "feature_net"):
        log = pd.read_parquet(res / stage / "train_log.parquet")
        assert len(log) > 0
    indices = pd.read_parquet(res / "cluster" / "indices.parquet")
    assert set(indices["k"]) == {2, 3} and set(indices["method"]) == {"kmeans", "imsat"}
    selection = pd.read_parquet(res / "cluster" / "selection.parquet")
    assert set(selection.loc[selection["index"] == "majority", "best_k"]) <= {2, 3}
    seeds = tiny_config["generate"]["seeds"]
    assert {"kl", "denoise"} <= set(pd.read_parquet(res / "diffusion" / "clue" / "train_log.parquet").columns)
    assert (res / "diffusion" / "ml" / "model" / "multilevel_references.pt").exists()
    for variant, setting in (("class", "cfg2"), ("clue", "sigma05"), ("ml", "cfg2")):
        for seed in seeds:
            gen = pd.read_parquet(res / "generate" / variant / setting / f"seed{seed}" / "manifest.parquet")
            assert set(gen["label"]) == set(tiny_config["data"]["classes"]) and (gen["seed"] == seed).all()
    assert not (res / "generate" / "class" / "sigma05").exists() and not (res / "generate" / "clue" / "cfg2").exists()
    quality = pd.read_parquet(res / "report" / "evaluate_summary.parquet")
    fid = quality[quality["metric"] == "fid"]["mean"]
    recall = quality[quality["metric"] == "recall"]["mean"]
    assert (fid > -1e-6).all() and np.isfinite(fid).all() and recall.between(0, 1).all()
    assert {"precision", "improved_recall", "density", "coverage", "inception_score"} <= set(quality["metric"])
    inception = quality.loc[quality["metric"] == "inception_score", "mean"]
    assert inception.between(1, len(tiny_config["data"]["classes"])).all()
    for variant, setting in (("class", "cfg2"), ("clue", "sigma05"), ("ml", "cfg2")):
        png = res / "report" / "figures" / f"pca_{variant}_{setting}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = pd.read_parquet(res / "report" / "classify_summary.parquet")
    assert {"variant", "setting", "arch", "point", "protocol", "synthetic_scale", "test_set", "metric", "mean", "std",
            "n_seeds"} <= set(scores.columns)
    assert (scores["n_seeds"] == len(seeds)).all()
    assert set(zip(scores["variant"], scores["setting"])) == {("class", "cfg2")}  # classify.variants
    f1 = scores[scores["metric"] == "f1_macro"]
    assert f1["mean"].between(0, 1).all()
    assert set(f1["test_set"]) == {"test", "external"}
    assert set(f1.loc[f1["protocol"] == "replace", "synthetic_scale"]) == set(tiny_config["classify"]["ratios"])
    assert set(f1["point"]) == {"replace_0", "replace_100", "replace_100_plus_real", "scale_100", "count_mixed"}
    tables = pd.read_parquet(res / "report" / "classify_tables.parquet")
    assert tables.loc[tables["metric"] == "f1_macro", "point"].drop_duplicates().tolist() == \
        ["replace_0", "replace_100", "replace_100_plus_real", "scale_100", "count_mixed"]
    assert "class/cfg2" in tables.columns and not {"clue/sigma05", "ml/cfg2"} & set(tables.columns)
    per_class = pd.read_parquet(res / "report" / "classify_per_class.parquet")
    assert set(per_class["class"]) == set(tiny_config["data"]["classes"]) and per_class["f1_mean"].between(0, 1).all()
    run_dir = res / "classify" / "class" / "cfg2" / f"seed{seeds[0]}" / "small_cnn" / "count_mixed"
    used = pd.read_parquet(run_dir / "training_set.parquet")
    assert used.groupby("origin").size().to_dict() == {"real": 6, "synthetic": 6}
    # the memorization audit: a row per synthetic and per held-out image, a summary per class, a figure
    audit = pd.read_parquet(res / "memorization" / "class" / "cfg2" / f"seed{seeds[0]}" / "images.parquet")
    gen = pd.read_parquet(res / "generate" / "class" / "cfg2" / f"seed{seeds[0]}" / "manifest.parquet")
    real = pd.read_parquet(res / "preprocess" / "manifest.parquet")
    assert sorted(audit.loc[audit["set"] == "synthetic", "image_id"]) == sorted(gen["image_id"])
    assert (audit["set"] == "heldout").sum() == (real["split"] == "test").sum()
    train_ids = set(real.loc[real["split"].isin(["train_a", "train_b"]), "image_id"])
    assert set(audit["nearest_train_id"]) <= train_ids and set(audit["feature_nearest_train_id"]) <= train_ids
    assert audit["similarity"].between(-1, 1 + 1e-9).all() and (audit["is_copy"] == (audit["similarity"] >
                                                                                      audit["threshold"])).all()
    mem = pd.read_parquet(res / "report" / "memorization.parquet")
    assert set(mem["variant"]) == {"class", "clue", "ml"} and set(mem["seed"]) == set(seeds)
    assert set(mem["class"]) == {*tiny_config["data"]["classes"], "all"}
    assert mem[["pixel_synthetic_flagged", "pixel_heldout_flagged", "pixel_synthetic_authenticity"]].stack().between(
        0, 1).all()
    for variant, setting in (("class", "cfg2"), ("clue", "sigma05"), ("ml", "cfg2")):
        png = res / "report" / "figures" / f"memorization_{variant}_{setting}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the classifier statistics: an interval per arm, a paired difference per synthetic arm against replace_0
    pred = pd.read_parquet(res / "classify" / "class" / "cfg2" / f"seed{seeds[0]}" / "small_cnn" / "replace_0" /
                           "predictions.parquet")
    assert set(pred["test_set"]) == {"test", "external"}
    assert np.allclose(pred[[f"p_{c}" for c in tiny_config["data"]["classes"]]].sum(axis=1), 1, atol=1e-5)  # float32
    diffs = pd.read_parquet(res / "report" / "classify_differences.parquet")
    assert set(diffs["point"]) == {"replace_100", "replace_100_plus_real", "scale_100", "count_mixed"}
    assert (diffs["low"] <= diffs["difference"] + 1e-12).all() and (diffs["difference"] <= diffs["high"] + 1e-12).all()
    assert diffs["p_holm"].between(0, 1).all() and (diffs["p_holm"] >= diffs["p"]).all()
    assert (diffs["n_seeds"] == len(seeds)).all()
    assert {"class/cfg2 CI", "class/cfg2 vs replace_0"} <= set(tables.columns)
    assert tables.loc[tables["point"] == "replace_0", "class/cfg2 vs replace_0"].eq("").all()
    sweep = pd.read_parquet(res / "style_sweep" / "clue" / "sweep.parquet")  # CLUE Fig. 4, the CLUE variant only
    assert (res / "style_sweep" / "clue" / "sweep.png").exists() and not (res / "style_sweep" / "class").exists()
    assert set(sweep["panel"]) == {"sweep", "styles"}
    leak = pd.read_parquet(res / "preprocess" / "leakage.parquet")
    assert len(leak) == 4 and (leak["n_violations"] == 0).all()
    for png in ["f1_vs_ratio.png", "f1_vs_scale.png", "roc_replace_100.png"] + \
            [f"grid_{c}.png" for c in tiny_config["data"]["classes"]]:
        assert (res / "report" / "figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    traj = pd.read_parquet(res / "report" / "trajectory_summary.parquet")  # the poster's table shape
    assert set(traj["attribute"]) == {"ome", "com"} and set(traj["variant"]) == {"clue"}  # trajectory.variants
    cells = ["swap_cfrt", "swap_domain_perceptual"]  # the tiny config's only Bezier position is 1: no interpolations
    assert set(cells) <= set(traj.columns) and not any(c.startswith("interpolation") for c in traj.columns)
    assert (traj["n_seeds"] == len(seeds)).all() and traj["swap_cfrt_mean"].between(0, 1).all()
    detail = pd.read_parquet(res / "report" / "trajectory_detail.parquet")
    assert {"cfrt_mean", "cfrt_flip_mean", "flip_rate_mean", "cos_direction_mean"} <= set(detail.columns)
    assert detail[["cfrt_mean", "cfrt_flip_mean"]].stack().between(0, 1).all()
    sv = pd.read_parquet(res / "report" / "semantic_variance.parquet")
    assert set(sv["class"]) == {*tiny_config["data"]["classes"], "all"} and (sv["n_seeds"] == len(seeds)).all()
    assert set(sv["variant"]) == {"ml"} and sv["ai_higher_share"].between(0, 1).all()  # interpolation.variants
    assert {"A", "AI", "A_mean", "AI_std", "A_full_mean"} <= set(sv.columns) and (sv["A_mean"] > 0).all()
    assert not (res / "interpolation" / "class").exists() and not (res / "trajectory" / "class").exists()
    sets = pd.read_parquet(res / "interpolation" / "ml" / "cfg2" / f"seed{seeds[0]}" / "sets.parquet")
    assert set(sets.loc[sets["origin"] == "interpolated", "label"]) <= {"ome", "com"}
    # The cluster-conditioned variant: samples per cluster, no class-based tables, its own (Table 4) table.
    k = int(selection.loc[(selection["method"] == "kmeans") & (selection["index"] == "majority"), "best_k"].item())
    for seed in seeds:
        gen = pd.read_parquet(res / "generate" / "cl" / "cfg2" / f"seed{seed}" / "manifest.parquet")
        assert gen["cluster_k"].eq(k).all() and gen.groupby("cluster").size().eq(4).all()
        assert not (res / "evaluate" / "cl").exists() and not (res / "classify" / "cl").exists()
    table4 = pd.read_parquet(res / "report" / "cluster_generation.parquet")
    overall = table4[table4["cluster"] == "all"]
    assert len(overall) == 1 and overall["k"].item() == k and overall["n_seeds"].item() == len(seeds)
    assert overall["accuracy_mean"].between(0, 1).all() and overall["ssim_mean"].between(-1, 1).all()
    assert {"accuracy", "ssim", "ms_ssim", "domain_perceptual"} <= set(table4.columns)


def test_second_dry_run_finds_nothing_to_do(run):
    work, _ = run
    assert planned_jobs(snakemake(work, "-n")) == {}


def _kill_when_present(work: Path, pattern: str, targets: list[str]) -> None:
    """Start the workflow for ``targets`` and SIGKILL Snakemake and all its jobs (one process group) as soon as a
    file matching ``pattern`` exists below results/; then clear the lock a killed Snakemake leaves, as a user
    would."""
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile", "config.yaml"]
    proc = subprocess.Popen(cmd, cwd=work, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 1200
    while not list((work / "results").glob(pattern)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before {pattern} appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    snakemake(work, "--unlock")


def test_a_run_killed_twice_and_resumed_gives_byte_identical_tables(run, tmp_path_factory, tiny_config):
    """Determinism and resume at once: a second run in another folder, killed with SIGKILL while the CLUE model
    (with its style encoder) trains and again while its images are generated, then rerun to the end,
    writes every Parquet table and generated image of what it made (the CLUE variant's generation and
    evaluation for every seed, and everything upstream of them) byte for byte as the first, uninterrupted run
    did. The resume of each other kind of job is tested on its own in test_resume.py."""
    work_a, results_a = run
    work = copy_workflow(tmp_path_factory.mktemp("killed"))
    (work / "config.yaml").write_text(yaml.safe_dump(tiny_config))
    exp = tiny_config["experiment"]
    targets = [f"results/{exp}/evaluate/clue/sigma05/seed{s}/quality.parquet" for s in tiny_config["generate"]["seeds"]]
    _kill_when_present(work, "*/diffusion/clue/model.resume.pt", targets)
    _kill_when_present(work, "*/generate/clue/*/seed*/images.partial/.finalize_*", targets)
    snakemake(work, targets=tuple(targets))
    logs = work / "logs" / exp
    assert "resuming from" in (logs / "diffusion" / "clue.log").read_text()
    assert any("finished batches kept" in f.read_text() for f in logs.glob("generate/clue/**/*.log"))
    results_b = work / "results" / exp
    for pattern in ("**/*.parquet", "generate/**/images/*.png"):
        b = sorted(p.relative_to(results_b) for p in results_b.glob(pattern))
        assert b and all((results_a / p).exists() for p in b)
        differ = [str(p) for p in b if (results_a / p).read_bytes() != (results_b / p).read_bytes()]
        assert not differ, differ
    assert (results_b / "generate" / "clue" / "sigma05" / "seed1" / "manifest.parquet").exists()
    assert not list(results_b.rglob("*.resume.pt")) and not list(results_b.rglob("*.partial"))


def _edited(work: Path, tiny_config: dict, *path_and_value) -> None:
    """Write edited.yaml: the tiny config with the value at ``path`` (section, ..., key) replaced."""
    *path, value = path_and_value
    cfg = yaml.safe_load(yaml.safe_dump(tiny_config))
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (work / "edited.yaml").write_text(yaml.safe_dump(cfg))


def test_classifier_edit_reruns_only_classifier_and_report(run, tiny_config):
    work, _ = run
    _edited(work, tiny_config, "classify", "epochs", tiny_config["classify"]["epochs"] + 1)
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert set(jobs) == {"classify", "classify_statistics", "report", "all"}
    pairs = 1  # (class, cfg2): classify.variants names the class variant only
    points = len(tiny_config["classify"]["ratios"]) + 1 + len(tiny_config["classify"]["scales"]) + 1  # hybrid, count
    assert jobs["classify"] == pairs * len(tiny_config["generate"]["seeds"]) * len(tiny_config["classify"]["archs"]) \
        * points


def test_memorization_edits_rerun_the_audit_and_with_exclusion_the_classifiers(run, tiny_config):
    work, _ = run
    seeds = len(tiny_config["generate"]["seeds"])
    _edited(work, tiny_config, "memorization", {"percentile": 95.0})
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert jobs == {"memorization": 3 * seeds, "report": 1, "all": 1}  # the classifiers do not read the audit
    _edited(work, tiny_config, "memorization", {"exclude_copies": True})
    proc = snakemake(work, "-n", "--configfile", "edited.yaml")
    jobs = planned_jobs(proc)
    assert set(jobs) == {"classify", "classify_statistics", "report", "all"}  # now they do: same audit, no rerun
    assert re.search(r"rule classify:\n\s+input: [^\n]*memorization/class/cfg2/seed\d+/images.parquet", proc.stdout)


def test_statistics_edit_reruns_only_the_statistics_and_the_report(run, tiny_config):
    work, _ = run
    _edited(work, tiny_config, "statistics", {"bootstrap": 500})
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert jobs == {"classify_statistics": 1, "report": 1, "all": 1}


def test_trajectory_edit_reruns_only_the_traversals_and_the_report(run, tiny_config):
    work, _ = run
    _edited(work, tiny_config, "trajectory", "alphas", [0.5, 1.0])
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert jobs == {"trajectory": len(tiny_config["generate"]["seeds"]), "report": 1, "all": 1}


def test_interpolation_edit_reruns_only_the_interpolations_and_the_report(run, tiny_config):
    work, _ = run
    _edited(work, tiny_config, "interpolation", "alphas", [0.25, 0.75])
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert jobs == {"interpolation": len(tiny_config["generate"]["seeds"]), "report": 1, "all": 1}


def test_generation_edit_reruns_generation_and_what_follows_but_no_training(run, tiny_config):
    work, _ = run
    _edited(work, tiny_config, "generate", "num_inference_steps", tiny_config["generate"]["num_inference_steps"] + 1)
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert set(jobs) == {"generate", "evaluate", "memorization", "classify", "classify_statistics", "interpolation",
                         "cluster_quality", "trajectory", "style_sweep", "report", "all"}  # no autoencoder, diffusion,
    # cluster or feature network
    assert jobs["generate"] == 4 * len(tiny_config["generate"]["seeds"])


def test_preprocessing_edit_reruns_everything_after_it(run, tiny_config):
    work, _ = run
    _edited(work, tiny_config, "preprocess", "threshold", tiny_config["preprocess"].get("threshold", 26) + 1)
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert "ingest" not in jobs
    assert {"preprocess", "leakage", "autoencoder", "feature_net", "cluster", "diffusion", "generate", "evaluate",
            "classify", "report"} <= set(jobs)


def test_editing_the_stage_harness_reruns_nothing(run):
    """Logging, GPU slots and loading switches change no number: no stage lists them as code."""
    work, _ = run
    for module in ("gpu_slots", "harness"):
        path = work / "pipeline_lib" / f"{module}.py"
        path.write_text(path.read_text() + "\n# edited\n")
    assert planned_jobs(snakemake(work, "-n")) == {}


def test_a_comment_edit_reruns_nothing(run, tiny_config):
    work, _ = run
    text = (work / "config.yaml").read_text()
    (work / "edited.yaml").write_text("# a note on this run\n" + text.replace("\n", "  # noted\n", 3))
    assert planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml")) == {}


def test_speed_switches_rerun_the_torch_stages_only_where_numbers_can_change(run, tiny_config):
    work, _ = run
    loading = {"num_workers": 2, "pin_memory": True, "feature_cache": False}  # never change a number
    _edited(work, {**tiny_config, "speed": {**tiny_config["speed"], **loading}}, "speed", "num_workers", 2)
    assert planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml")) == {}
    _edited(work, {**tiny_config, "speed": {}}, "speed", "channels_last", True)
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert {"autoencoder", "diffusion", "generate", "feature_net", "classify", "trajectory", "interpolation"} \
        <= set(jobs)
    assert not {"ingest", "preprocess", "leakage"} & set(jobs)  # no torch there
    _edited(work, tiny_config, "speed", "sampling_precision", "fp32")  # the denoiser's sampling only
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert {"generate", "trajectory", "style_sweep"} <= set(jobs)
    assert not {"autoencoder", "autoencoder_metrics", "diffusion", "feature_net", "cluster"} & set(jobs)


def test_diffusion_edit_keeps_autoencoder_and_feature_network(run, tiny_config):
    work, _ = run
    _edited(work, tiny_config, "diffusion", "steps", tiny_config["diffusion"]["steps"] + 1)
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert set(jobs) == {"diffusion", "generate", "evaluate", "memorization", "classify", "classify_statistics",
                         "cluster_quality", "trajectory", "interpolation", "style_sweep", "report", "all"}


def test_conditioning_specific_diffusion_keys_retrain_only_the_variants_that_read_them(run, tiny_config):
    work, _ = run
    _edited(work, tiny_config, "diffusion", "image_encoder", {"layers": [0, 1, 2, 3, 4]})
    proc = snakemake(work, "-n", "--configfile", "edited.yaml")
    assert planned_jobs(proc)["diffusion"] == 1 and "diffusion/ml/model" in proc.stdout  # multi-level only
    prompts = {**tiny_config["diffusion"]["prompts"], "com": "Perforated tympanic membrane."}
    _edited(work, tiny_config, "diffusion", "prompts", prompts)
    proc = snakemake(work, "-n", "--configfile", "edited.yaml")
    assert planned_jobs(proc)["diffusion"] == 3 and "diffusion/cl/model" not in proc.stdout  # clusters: no prompts


def test_the_multilevel_ablation_is_three_variants_of_one_config(run, tiny_config):
    """Multi-level paper: 4-channel VAE, 8-channel VAE, 8-channel VAE + multi-level embeddings."""
    work, _ = run
    cfg = yaml.safe_load(yaml.safe_dump(tiny_config))
    cfg["autoencoder"]["kl8"] = {**cfg["autoencoder"]["kl4"], "latent_channels": 8}
    cfg["diffusion"]["variants"] = {"ch4": {"conditioning": "class", "autoencoder": "kl4"},
                                    "ch8": {"conditioning": "class", "autoencoder": "kl8"},
                                    "ch8_ml": {"conditioning": "multilevel", "autoencoder": "kl8"}}
    # Dicts merge with config/config.yaml (its `class` variant stays): the setting names the three.
    cfg["generate"]["settings"] = {"cfg2": {"guidance_scale": 2.0, "variants": ["ch4", "ch8", "ch8_ml"]}}
    cfg["trajectory"]["variants"] = cfg["interpolation"]["variants"] = None  # the tiny config's clue and ml: all
    cfg["classify"]["variants"] = None  # the tiny config's class only: all three here
    (work / "edited.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(work, "-n", "--configfile", "edited.yaml")
    jobs = planned_jobs(proc)
    assert jobs["autoencoder"] == 1 and jobs["diffusion"] == 3 and "autoencoder/kl8/model" in proc.stdout
    assert jobs["classify"] == 3 * len(tiny_config["generate"]["seeds"]) * 5  # five grid points each


def test_autoencoder_edit_reruns_only_that_autoencoder_and_what_uses_it(run, tiny_config):
    work, _ = run
    # vq4 is trained and measured but no diffusion variant uses it.
    _edited(work, tiny_config, "autoencoder", "vq4", "steps", tiny_config["autoencoder"]["vq4"]["steps"] + 1)
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert jobs == {"autoencoder": 1, "autoencoder_metrics": 1, "report": 1, "all": 1}
    # kl4 feeds the diffusion models and the cluster stage: everything downstream of it, not vq4 or the
    # feature network.
    _edited(work, tiny_config, "autoencoder", "kl4", "lr", 0.002)
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert set(jobs) == {"autoencoder", "autoencoder_metrics", "cluster", "diffusion", "generate", "evaluate",
                         "memorization", "classify", "classify_statistics", "cluster_quality", "trajectory",
                         "interpolation", "style_sweep", "report", "all"}
    assert jobs["autoencoder"] == 1


def test_perceptual_edit_reruns_the_vq_gan_and_the_tables_not_the_kl_vae(run, tiny_config):
    work, _ = run
    _edited(work, tiny_config, "perceptual", "lpips_net", "alex")
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    seeds = len(tiny_config["generate"]["seeds"])
    assert jobs == {"autoencoder": 1, "autoencoder_metrics": 2, "cluster_quality": seeds, "trajectory": seeds,
                    "report": 1, "all": 1}


def test_cluster_edit_reruns_the_cluster_stage_and_the_cluster_variant_only(run, tiny_config):
    work, _ = run
    seeds = len(tiny_config["generate"]["seeds"])
    _edited(work, tiny_config, "cluster", "k_values", [2, 3, 4])
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert jobs == {"cluster": 1, "diffusion": 1, "generate": seeds, "cluster_quality": seeds, "report": 1, "all": 1}
    _edited(work, tiny_config, "cluster", "references", 3)  # an evaluation setting: the clustering stays
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert jobs == {"cluster_quality": seeds, "report": 1, "all": 1}
    _edited(work, tiny_config, "generate", "samples_per_cluster", 5)  # the class variants' images stay
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert jobs == {"generate": seeds, "cluster_quality": seeds, "report": 1, "all": 1}


def test_a_list_of_cluster_counts_is_one_variant_per_k(run, tiny_config):
    """cLDM Table 4: one cluster-conditioned model per cluster set."""
    work, _ = run
    seeds = len(tiny_config["generate"]["seeds"])
    _edited(work, tiny_config, "diffusion", "variants", "cl", "cluster_k", [2, 3])
    proc = snakemake(work, "-n", "--configfile", "edited.yaml")
    assert planned_jobs(proc) == {"diffusion": 2, "generate": 2 * seeds, "cluster_quality": 2 * seeds, "report": 1,
                                  "all": 1}
    assert "diffusion/cl_k2/model" in proc.stdout and "diffusion/cl_k3/model" in proc.stdout


def test_feature_network_edit_reruns_what_uses_it_only(run, tiny_config):
    """The domain network feeds the multi-level variant, the VQ-GAN's perceptual loss and the perceptual
    columns; the class and CLUE models and the KL-VAE stay."""
    work, _ = run
    _edited(work, tiny_config, "evaluate", "epochs", tiny_config["evaluate"]["epochs"] + 1)
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    seeds = len(tiny_config["generate"]["seeds"])
    assert jobs["feature_net"] == 1 and jobs["autoencoder"] == 1 and jobs["autoencoder_metrics"] == 2
    assert jobs["diffusion"] == 1 and jobs["generate"] == seeds and jobs["evaluate"] == 3 * seeds
    assert jobs["cluster_quality"] == seeds  # its perceptual column is the domain network's
    assert jobs["trajectory"] == seeds  # the domain classifier measures the flips
    assert jobs["interpolation"] == seeds  # it embeds the images for the semantic variance


def test_a_new_classifier_arch_adds_its_grid_only(run, tiny_config):
    work, _ = run
    _edited(work, tiny_config, "classify", "archs", ["small_cnn", "resnet18"])
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert jobs["classify"] == len(tiny_config["generate"]["seeds"]) * 5  # the new arch's grid only
    _edited(work, tiny_config, "classify", "variants", ["class", "ml"])
    jobs = planned_jobs(snakemake(work, "-n", "--configfile", "edited.yaml"))
    assert jobs == {"classify": len(tiny_config["generate"]["seeds"]) * 5, "classify_statistics": 1, "report": 1,
                    "all": 1}  # a variant added to the grids: its grid, nothing retrained or regenerated


def test_html_report_holds_the_tables_and_figures_by_category(run, tiny_config):
    work, res = run
    for key in ("autoencoder_comparison", "evaluate_summary", "classify_tables", "cluster_generation",
                "trajectory_summary", "trajectory_detail", "semantic_variance"):
        csv = pd.read_csv(res / "report" / "tables" / f"{key}.csv")
        assert len(csv) == len(pd.read_parquet(res / "report" / f"{key}.parquet"))
    snakemake(work, "--report", "report.zip")
    import zipfile

    names = zipfile.ZipFile(work / "report.zip").namelist()
    text = "\n".join(names)
    for item in ("classify_tables.csv", "semantic_variance.csv", "f1_vs_ratio.png", "roc_replace_100.png"):
        assert item in text, item
