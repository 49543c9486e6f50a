# Output locations, input functions and wildcard constraints. The decisions about the config (nulls, schema,
# local paths, counts, the expansion of variants, settings, grid points and archs, each rule's config slice, the
# code inputs of each stage) are pure functions in pipeline_lib/config.py, unit-tested in tests/test_config.py.

import re
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # this workflow's own pipeline_lib (a copied workflow uses its copy)
from pipeline_lib.config import ROC_POINT, Plan, code_inputs, uses_perceptual  # noqa: E402  (torch-free)


# Drops the entries a --configfile sets to null, checks the schema (every problem at once), fills its defaults,
# checks local paths, counts and archs, and expands the grid: a bad config fails here, before any job.
PLAN = Plan.from_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")

R = f"results/{config['experiment']}"
LOGS = f"logs/{config['experiment']}"
AUTOENCODERS = PLAN.autoencoders
VARIANTS = list(PLAN.variants)
CLUSTER_VARIANTS = PLAN.cluster_variants
SETTINGS = PLAN.settings
SEEDS = PLAN.seeds
ARCHS = PLAN.archs
CLASSES = PLAN.classes
GRID = PLAN.grid  # the (variant, setting) pairs that are generated


wildcard_constraints:
    ae="|".join(map(re.escape, AUTOENCODERS)),
    variant="|".join(map(re.escape, VARIANTS)),
    setting="|".join(map(re.escape, SETTINGS)),
    seed=r"\d+",
    arch="|".join(map(re.escape, ARCHS)),
    point="|".join(map(re.escape, PLAN.points)),


def code(stage):
    """The pipeline_lib files the stage's code is made of: an edit to one reruns the stage."""
    return code_inputs(stage)


def params_of(slice_fn, *names):
    """A params function: ``slice_fn`` (a Plan method) called with the job's wildcards ``names``."""
    return lambda wildcards: slice_fn(*(getattr(wildcards, n) for n in names))


# --- paths ------------------------------------------------------------------------------------------------------
FEATURE_NET = f"{R}/feature_net/model.pt"
REAL_FEATURES = f"{R}/feature_net/real_features.parquet"
LEAKAGE = f"{R}/preprocess/leakage.parquet"
CLUSTER = {name: f"{R}/cluster/{name}.parquet" for name in ("indices", "selection", "assignments")}
CLUSTER["models"] = f"{R}/cluster/models.pt"
GENERATED = f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}"  # one synthetic set: images/ + manifest.parquet


def variant_autoencoder_model(wildcards):
    return f"{R}/autoencoder/{PLAN.variant_autoencoder(wildcards.variant)}/model"


def cluster_autoencoder_model():
    return f"{R}/autoencoder/{PLAN.cluster_autoencoder}/model"


# --- input functions --------------------------------------------------------------------------------------------
def perceptual_inputs(wildcards=None):
    """LPIPS' local backbone weights when configured, else the domain network its substitute is built on."""
    backbone = config["perceptual"]["lpips_backbone"]
    return {"lpips_backbone": backbone} if backbone else {"feature_net": FEATURE_NET}


def image_encoder_inputs():
    """The image encoder of the multi-level embeddings and of the semantic variance: the local open_clip
    checkpoint of diffusion.image_encoder when one is configured, else the domain feature network."""
    enc = config["diffusion"]["image_encoder"]
    return {"image_encoder": enc["checkpoint"]} if enc["open_clip_model"] else {"feature_net": FEATURE_NET}


def diffusion_inputs(wildcards):
    """A multi-level variant embeds its images with the domain feature network; local weight files are inputs
    too, so replacing one retrains."""
    d = config["diffusion"]
    conditioning = PLAN.conditioning(wildcards.variant)
    inputs = image_encoder_inputs() if conditioning == "multilevel" else {}
    if conditioning == "cluster":
        inputs |= {"cluster_assignments": CLUSTER["assignments"], "cluster_selection": CLUSTER["selection"]}
        if PLAN.joint_clusters(wildcards.variant):  # the IMSAT network it goes on training
            inputs["cluster_models"] = CLUSTER["models"]
    if d["text_encoder"]["checkpoint"]:
        inputs["text_encoder"] = d["text_encoder"]["checkpoint"]
    if d["text_encoder"]["folder"] not in (None, "pretrained"):
        inputs["text_encoder_folder"] = d["text_encoder"]["folder"]
    if d["pretrained"]:
        inputs["pretrained"] = d["pretrained"]
    return inputs


def autoencoder_inputs(wildcards):
    """The VQ-GAN, and a KL-VAE with a perceptual_weight, train with a perceptual loss (LPIPS' backbone or the
    domain network an input); a local folder to fine-tune from is an input too."""
    a = config["autoencoder"][wildcards.ae]
    inputs = perceptual_inputs() if uses_perceptual(a) else {}
    if a["pretrained"]:
        inputs["pretrained"] = a["pretrained"]
    return inputs


def interpolation_inputs(wildcards):
    return {"autoencoder": variant_autoencoder_model(wildcards), **image_encoder_inputs()}


# --- what is made over the grid ---------------------------------------------------------------------------------
def _over_grid(pattern, clusters=False, only=None, **extra):
    """``pattern`` filled for every (variant, setting) of GRID and every seed (and the ``extra`` wildcards):
    the class-conditioned variants, or with ``clusters`` the cluster-conditioned ones (no class labels: they
    have their own evaluation, not the class-based metrics and classifier grids); ``only``: those variants."""
    return [p for v, s in GRID if (v in CLUSTER_VARIANTS) == clusters and (only is None or v in only)
            for p in expand(pattern, variant=v, setting=s, seed=SEEDS, **extra)]


def generated(kind, clusters=False):
    """Paths of `kind` for every (variant, setting, seed)."""
    return _over_grid(f"{GENERATED}/{kind}", clusters)


def classify_tables(kind="scores.parquet"):
    return _over_grid(f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}/{kind}",
                      only=PLAN.section_variants("classify"), arch=ARCHS, point=list(PLAN.points))


def classify_statistics_tables():
    """The classifier statistics' tables when there are class-conditioned classifiers."""
    if not classify_tables():
        return {}
    return {k: f"{R}/classify/statistics/{k}.parquet" for k in ("intervals", "differences", "delong")}


def evaluate_tables():
    return _over_grid(f"{R}/evaluate/{{variant}}/{{setting}}/seed{{seed}}/quality.parquet")


def pca_inputs():
    """(variant, setting, generated features of the first seed) for each PCA figure, in report_outputs' order."""
    return [(v, s, f"{R}/evaluate/{v}/{s}/seed{SEEDS[0]}/features.parquet") for v, s in GRID
            if v not in CLUSTER_VARIANTS]


def real_features_input():
    """The real images' cached features, which the PCA figures of class-conditioned variants need."""
    return [REAL_FEATURES] if pca_inputs() else []


def interpolation_tables():
    if "interpolation" not in config:
        return []
    return _over_grid(f"{R}/interpolation/{{variant}}/{{setting}}/seed{{seed}}/semantic_variance.parquet",
                      only=PLAN.section_variants("interpolation"))


def memorization_tables(kind="summary"):
    if "memorization" not in config:
        return []
    return _over_grid(f"{R}/memorization/{{variant}}/{{setting}}/seed{{seed}}/{kind}.parquet")


def memorization_figures():
    """The first seed's audit figure of each class-conditioned (variant, setting), in report_outputs' order."""
    if "memorization" not in config:
        return []
    return [f"{R}/memorization/{v}/{s}/seed{SEEDS[0]}/pairs.png" for v, s in GRID if v not in CLUSTER_VARIANTS]


def classify_copies(wildcards):
    """With memorization.exclude_copies the classifier reads the audit of its synthetic set."""
    if not PLAN.exclude_copies:
        return {}
    return {"copies": f"{R}/memorization/{wildcards.variant}/{wildcards.setting}/seed{wildcards.seed}/images.parquet"}


def trajectory_tables():
    if "trajectory" not in config:
        return []
    return _over_grid(f"{R}/trajectory/{{variant}}/{{setting}}/seed{{seed}}/trajectory.parquet",
                      only=PLAN.section_variants("trajectory"))


def cluster_outputs():
    return [CLUSTER[name] for name in ("indices", "selection", "assignments")] if "cluster" in config else []


def cluster_quality_tables():
    return _over_grid(f"{R}/cluster/quality/{{variant}}/{{setting}}/seed{{seed}}/quality.parquet", True)


def recon_tables():
    return expand(f"{R}/autoencoder/{{ae}}/recon_metrics.parquet", ae=AUTOENCODERS)


# --- the report (its items and captions: REPORT_ITEMS in report.smk) ----------------------------------------
def report_outputs(flagged=False):
    """The report's files: the class-based tables and figures when class-conditioned variants are generated, the
    cluster-generation table when cluster-conditioned ones are, CSV copies of the main tables. ``flagged``: the
    REPORT_ITEMS marked for `--report` with their category and caption."""
    o = {"autoencoder_comparison": f"{R}/report/autoencoder_comparison.parquet"}
    if any(v not in CLUSTER_VARIANTS for v, _ in GRID):
        o |= {"classify_summary": f"{R}/report/classify_summary.parquet",
              "classify_tables": f"{R}/report/classify_tables.parquet",
              "classify_per_class": f"{R}/report/classify_per_class.parquet",
              "classify_differences": f"{R}/report/classify_differences.parquet",
              "evaluate_summary": f"{R}/report/evaluate_summary.parquet",
              "f1_plot": f"{R}/report/figures/f1_vs_ratio.png",
              "grids": [f"{R}/report/figures/grid_{c}.png" for c in CLASSES],
              "pca": [f"{R}/report/figures/pca_{v}_{s}.png" for v, s in GRID if v not in CLUSTER_VARIANTS]}
        if config["classify"]["scales"]:
            o["f1_scale_plot"] = f"{R}/report/figures/f1_vs_scale.png"
        if ROC_POINT in PLAN.points:
            o["roc_plot"] = f"{R}/report/figures/roc_{ROC_POINT}.png"
    if any(v in CLUSTER_VARIANTS for v, _ in GRID):
        o["cluster_generation"] = f"{R}/report/cluster_generation.parquet"
    if trajectory_tables():
        o["trajectory_summary"] = f"{R}/report/trajectory_summary.parquet"
        o["trajectory_detail"] = f"{R}/report/trajectory_detail.parquet"
    if interpolation_tables():
        o["semantic_variance"] = f"{R}/report/semantic_variance.parquet"
    if memorization_tables():
        o["memorization"] = f"{R}/report/memorization.parquet"
        o["memorization_figures"] = [f"{R}/report/figures/memorization_{v}_{s}.png" for v, s in GRID
                                     if v not in CLUSTER_VARIANTS]
    o |= {f"{key}_csv": f"{R}/report/tables/{key}.csv" for key in REPORT_TABLES if key in o}
    if not flagged:
        return o

    def mark(key, path):
        category, caption = REPORT_ITEMS[key]
        return report(path, caption=f"../report/{caption}", category=category)

    out = {}
    for key, value in o.items():
        item = key[:-4] if key.endswith("_csv") else key
        if item in REPORT_ITEMS and (key.endswith("_csv") or item not in REPORT_TABLES):
            value = [mark(item, v) for v in value] if isinstance(value, list) else mark(item, value)
        out[key] = value
    return out


def style_sweep_outputs():
    """CLUE Fig. 4 of every CLUE variant, when `style_sweep:` is configured."""
    return [f"{R}/style_sweep/{v}/sweep.png" for v in PLAN.style_sweep_variants]


def final_outputs():
    return [*cluster_outputs(), *style_sweep_outputs(),
            *(p for v in report_outputs().values() for p in ([v] if isinstance(v, str) else v))]
