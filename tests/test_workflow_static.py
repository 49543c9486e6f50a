"""The workflow without running it: `snakemake --lint` is clean, every rule has a log and the heavy ones a
benchmark, and the papers' configurations (and config/xray.yaml) each pass the schema and plan their job grid in a dry run (the
local data and weights they name are stood in for by empty files and folders: the parse checks that they exist,
a dry run reads none of them)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_workflow

pytestmark = pytest.mark.slow  # Snakemake in a subprocess

PLACEHOLDERS = ["models/stable-diffusion-2-1/vae/", "models/open_clip/ViT-H-14.bin", "models/vgg16-397923af.pth",
                "data/otitis/manifest.csv", "data/kpc/manifest.csv", "data/HAM10000/masks/",
                "data/PAD-UFES-20/metadata.csv", "data/PAD-UFES-20/images/", "data/CheXpert/",
                "models/stable-diffusion-v1-5/vae/"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = copy_workflow(tmp_path_factory.mktemp("papers"), configs=None)
    for p in PLACEHOLDERS:
        target = work / p
        if p.endswith("/"):
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    return work


def dry_run(work: Path, config: str, inputs_of: str | None = None) -> dict[str, int]:
    """The job count of each rule; with ``inputs_of`` (a rule) also, under that key, the input lines of its jobs."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--configfile", config],
                          cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    table = text.split("Job stats:", 1)[1]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}
    if inputs_of:
        jobs[inputs_of] = re.findall(rf"^rule {inputs_of}:\n\s+input: (.*)$", text, re.M)
    return jobs


def test_paper_clue_plans_ten_seeds_five_settings_and_the_full_classifier_grids(work):
    jobs = dry_run(work, "config/paper_clue.yaml")
    assert jobs["autoencoder"] == 1 and jobs["diffusion"] == 2  # SD 2.1's VAE as it is; Vanilla and CLUE
    assert jobs["generate"] == 10 * 5 and jobs["evaluate"] == 10 * 5  # Vanilla + sigma 0, 0.1, 0.3, 0.5
    # Tables 8-15: 11 replacement shares + "100 % + 1A", 4 scales + "1000 % + 1A", one InceptionV3 each.
    assert jobs["classify"] == 10 * 5 * (11 + 1 + 4 + 1)
    assert jobs["style_sweep"] == 1  # Fig. 4, the CLUE variant's
    assert jobs["memorization"] == 10 * 5 and jobs["classify_statistics"] == 1
    assert "cluster" not in jobs and "trajectory" not in jobs and "interpolation" not in jobs


def test_paper_multilevel_plans_the_ablation_the_five_classifiers_and_the_interpolation(work):
    jobs = dry_run(work, "config/paper_multilevel.yaml")
    assert jobs["autoencoder"] == 2 and jobs["autoencoder_metrics"] == 2  # 4ch and 8ch (Table 1)
    assert jobs["diffusion"] == 3  # 4ch, 8ch, 8ch + ML (Table 5)
    pairs_seeds = 3 * 3 * 3  # variants x CFG scales 1, 3, 5 x seeds
    assert jobs["generate"] == jobs["evaluate"] == pairs_seeds
    assert jobs["interpolation"] == pairs_seeds // 3  # the 8ch + ML model's images only
    assert jobs["classify"] == pairs_seeds * 5 * (1 + 4)  # VGG13/16/19, ResNet18/34 x real + Table I's four


def test_paper_cldm_plans_one_cluster_conditioned_model_per_k_and_no_class_stages(work):
    jobs = dry_run(work, "config/paper_cldm.yaml", inputs_of="diffusion")
    assert jobs["cluster"] == 1 and len(jobs["diffusion"]) == 7  # k = 10..16 (Table 4)
    # sections 3.6 and 5: each model trains the cluster stage's IMSAT network on (its fitted state is an input)
    assert all("cluster/models.pt" in line for line in jobs["diffusion"])
    assert jobs["generate"] == jobs["cluster_quality"] == 7 * 3 * 2  # 100 per cluster (4.5), 10,000 in all (4.4)
    assert not {"feature_net", "evaluate", "classify"} & set(jobs)  # unlabelled: no class-based stages


def test_paper_trajectory_plans_one_fine_tuned_sd15_its_judge_and_the_traversal(work):
    jobs = dry_run(work, "config/paper_trajectory.yaml")
    assert jobs["autoencoder"] == jobs["diffusion"] == jobs["feature_net"] == 1  # SD 1.5's VAE as is, the judge
    assert jobs["trajectory"] == jobs["generate"] == 1 and "interpolation" not in jobs and "cluster" not in jobs


def test_the_xray_config_plans_the_default_grid_without_interpolation(work):
    jobs = dry_run(work, "config/xray.yaml")
    assert jobs["ingest"] == jobs["diffusion"] == 1 and jobs["generate"] == jobs["trajectory"] == 2
    assert jobs["classify"] == 2 * 4 and "interpolation" not in jobs


def test_a_perceptual_term_makes_the_domain_network_an_input_of_the_kl_autoencoder(work):
    """The default config's autoencoder trains with a perceptual_weight against the domain network (no LPIPS
    backbone configured), so that network's job runs first and retraining it reruns it; without the term the
    autoencoder reads no feature network."""
    inputs = dry_run(work, "config/config.yaml", inputs_of="autoencoder")["autoencoder"]
    assert len(inputs) == 1 and "results/default/feature_net/model.pt" in inputs[0]
    (work / "plain.yaml").write_text("autoencoder: {kl4: {loss: {perceptual_weight: 0}}}\n")
    assert not any("feature_net/model.pt" in line for line in dry_run(work, "plain.yaml", "autoencoder")[
        "autoencoder"])


def test_one_class_with_a_class_conditioned_variant_is_an_error(work):
    (work / "one_class.yaml").write_text("data: {classes: [tissue]}\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "one_class.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "data.classes: one class (tissue) means unlabelled images" in proc.stdout + proc.stderr


def test_lint_is_clean_and_every_rule_logs(work):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=work, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr, \
        proc.stdout[-3000:] + proc.stderr[-3000:]
    rules = {}  # rule name -> its text up to the next rule
    for f in (work / "workflow" / "rules").glob("*.smk"):
        text = f.read_text()
        names = re.findall(r"^\s*rule (\w+):", text, flags=re.M)
        rules.update(zip(names, re.split(r"^\s*rule \w+:", text, flags=re.M)[1:]))
    assert len(rules) >= 15
    assert all("log:" in body for body in rules.values()), [r for r, b in rules.items() if "log:" not in b]
    light = {"ingest", "report"}  # reading a manifest, writing tables: no benchmark needed
    missing = [r for r, b in rules.items() if r not in light and "benchmark:" not in b]
    assert not missing, missing


def test_the_readme_rule_graph_is_the_workflows():
    """README.md's picture is `make rulegraph`'s output for the current workflow."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("rulegraph", root / "docs" / "rulegraph.py")
    rulegraph = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rulegraph)
    assert rulegraph.mermaid() in (root / "README.md").read_text(), "run `make rulegraph`"
