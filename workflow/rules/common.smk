# Config access, output locations, input functions and wildcard constraints. Rules stay thin: each receives
# only its own config slice (plus the shared seed, device and classes) through `params:`, so an edit to one
# stage's settings reruns that stage and what depends on it, nothing else.

import re

R = f"results/{config['experiment']}"
LOGS = f"logs/{config['experiment']}"
AE = config["autoencoder"]["name"]
VARIANTS = list(config["diffusion"]["variants"])
SETTINGS = list(config["generate"]["settings"])
SEEDS = list(config["generate"]["seeds"])
ARCHS = list(config["classify"]["archs"])
CLASSES = list(config["data"]["classes"])


wildcard_constraints:
    variant="|".join(map(re.escape, VARIANTS)),
    setting="|".join(map(re.escape, SETTINGS)),
    seed=r"\d+",
    arch="|".join(map(re.escape, ARCHS)),


# The pipeline_lib modules each stage runs: listed as inputs, so an edit to the code reruns the stage.
CODE = {
    "ingest": ["data", "io"],
    "preprocess": ["preprocess", "data", "io"],
    "autoencoder": ["autoencoder", "metrics", "torchutils", "data", "io"],
    "diffusion": ["diffusion", "autoencoder", "torchutils", "data", "io"],
    "generate": ["generate", "preprocess", "diffusion", "autoencoder", "torchutils", "data", "io"],
    "feature_net": ["evaluate", "nets", "metrics", "torchutils", "data", "io"],
    "evaluate": ["evaluate", "nets", "metrics", "torchutils", "data", "io"],
    "classify": ["classify", "nets", "metrics", "torchutils", "data", "io"],
    "report": ["report", "data", "io"],
}


def code(stage):
    return [f"pipeline_lib/{m}.py" for m in CODE[stage]]


def shared():
    return {"seed": config["seed"], "device": config["device"], "classes": CLASSES}


def data_params():
    return {**config["data"], "seed": config["seed"]}


def stage_params(stage):
    return {**config[stage], **shared()}


def diffusion_params(wildcards):
    d = {k: v for k, v in config["diffusion"].items() if k != "variants"}
    return {**d, **config["diffusion"]["variants"][wildcards.variant], "variant": wildcards.variant, **shared()}


def generate_params(wildcards):
    g = {k: v for k, v in config["generate"].items() if k not in ("settings", "seeds")}
    return {**g, **config["generate"]["settings"][wildcards.setting], "variant": wildcards.variant,
            "setting": wildcards.setting, "preprocess": config["preprocess"], **shared(), "seed": int(wildcards.seed)}


def feature_net_params():
    """The evaluate slice without the metric settings: editing recall_k does not retrain the network."""
    return {k: v for k, v in stage_params("evaluate").items() if k != "recall_k"}


def evaluate_params(wildcards):
    return {"recall_k": config["evaluate"]["recall_k"], "variant": wildcards.variant,
            "setting": wildcards.setting, **shared(), "seed": int(wildcards.seed)}


def classify_params(wildcards):
    c = {k: v for k, v in config["classify"].items() if k != "archs"}
    return {**c, "arch": wildcards.arch, "variant": wildcards.variant, "setting": wildcards.setting,
            **shared(), "seed": int(wildcards.seed)}


def generated(kind):
    """Paths of `kind` for every (variant, setting, seed)."""
    return expand(f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/{kind}", variant=VARIANTS, setting=SETTINGS,
                  seed=SEEDS)


def classify_tables():
    return expand(f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/scores.parquet", variant=VARIANTS,
                  setting=SETTINGS, seed=SEEDS, arch=ARCHS)


def evaluate_tables():
    return expand(f"{R}/evaluate/{{variant}}/{{setting}}/seed{{seed}}/quality.parquet", variant=VARIANTS,
                  setting=SETTINGS, seed=SEEDS)


def report_outputs():
    return {
        "classify_summary": f"{R}/report/classify_summary.parquet",
        "evaluate_summary": f"{R}/report/evaluate_summary.parquet",
        "f1_plot": f"{R}/report/figures/f1_vs_ratio.png",
        "grids": [f"{R}/report/figures/grid_{c}.png" for c in CLASSES],
    }


def final_outputs():
    o = report_outputs()
    return [o["classify_summary"], o["evaluate_summary"], o["f1_plot"], *o["grids"]]
