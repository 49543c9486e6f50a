# Config access, output locations, input functions and wildcard constraints. Rules stay thin: each receives
# only its own config slice (plus the shared seed, device and classes) through `params:`, so an edit to one
# stage's settings reruns that stage and what depends on it, nothing else.

import re

R = f"results/{config['experiment']}"
LOGS = f"logs/{config['experiment']}"
AUTOENCODERS = list(config["autoencoder"])
VARIANTS = list(config["diffusion"]["variants"])
SETTINGS = list(config["generate"]["settings"])
SEEDS = list(config["generate"]["seeds"])
ARCHS = list(config["classify"]["archs"])
CLASSES = list(config["data"]["classes"])


wildcard_constraints:
    ae="|".join(map(re.escape, AUTOENCODERS)),
    variant="|".join(map(re.escape, VARIANTS)),
    setting="|".join(map(re.escape, SETTINGS)),
    seed=r"\d+",
    arch="|".join(map(re.escape, ARCHS)),


# The pipeline_lib modules each stage runs: listed as inputs, so an edit to the code reruns the stage.
CODE = {
    "ingest": ["data", "io"],
    "preprocess": ["preprocess", "data", "io"],
    "autoencoder_kl": ["autoencoder", "metrics", "torchutils", "data", "io"],
    "autoencoder_vq": ["autoencoder", "vqgan", "perceptual", "nets", "metrics", "torchutils", "data", "io"],
    "autoencoder_metrics": ["autoencoder", "perceptual", "nets", "metrics", "torchutils", "data", "io"],
    "diffusion": ["diffusion", "clue", "multilevel", "text", "nets", "autoencoder", "torchutils", "data", "io"],
    "generate": ["generate", "preprocess", "diffusion", "clue", "multilevel", "text", "nets", "autoencoder",
                 "torchutils", "data", "io"],
    "feature_net": ["evaluate", "nets", "metrics", "torchutils", "data", "io"],
    "evaluate": ["evaluate", "nets", "metrics", "torchutils", "data", "io"],
    "classify": ["classify", "nets", "metrics", "torchutils", "data", "io"],
    "report": ["report", "data", "io"],
    "cluster": ["cluster/fit", "cluster/indices", "autoencoder", "torchutils", "data", "io"],
}


def code(stage):
    return [f"pipeline_lib/{m}.py" for m in CODE[stage]]


def autoencoder_code(wildcards):
    return code(f"autoencoder_{config['autoencoder'][wildcards.ae]['type']}")


def configured_autoencoder(name, where):
    """``name`` if it is one of the configured autoencoders, else an error naming ``where`` it was asked for."""
    if name not in AUTOENCODERS:
        raise ValueError(f"{where}: autoencoder {name!r} is not configured (autoencoder: {AUTOENCODERS})")
    return name


def variant_autoencoder(variant):
    """The autoencoder a diffusion variant learns on: its own `autoencoder`, else diffusion.autoencoder, else
    the only one configured."""
    name = config["diffusion"]["variants"][variant].get("autoencoder", config["diffusion"].get("autoencoder"))
    if name is None:
        if len(AUTOENCODERS) > 1:
            raise ValueError(f"diffusion.autoencoder: several autoencoders are configured {AUTOENCODERS}; "
                             f"name the one the diffusion variants use")
        name = AUTOENCODERS[0]
    return configured_autoencoder(name, f"diffusion variant {variant!r}")


def variant_autoencoder_model(wildcards):
    return f"{R}/autoencoder/{variant_autoencoder(wildcards.variant)}/model"


FEATURE_NET = f"{R}/evaluate/feature_net/model.pt"


def perceptual_inputs(wildcards=None):
    """LPIPS' local backbone weights when configured, else the domain network its substitute is built on."""
    backbone = config["perceptual"]["lpips_backbone"]
    return {"lpips_backbone": backbone} if backbone else {"feature_net": FEATURE_NET}


def diffusion_inputs(wildcards):
    """A multi-level variant embeds its images with the domain feature network; local weight files are inputs
    too, so replacing one retrains."""
    d = config["diffusion"]
    inputs = {"feature_net": FEATURE_NET} if d["variants"][wildcards.variant]["conditioning"] == "multilevel" else {}
    if d["text_encoder"]["checkpoint"]:
        inputs["text_encoder"] = d["text_encoder"]["checkpoint"]
    if d["pretrained"]:
        inputs["pretrained"] = d["pretrained"]
    return inputs


def autoencoder_inputs(wildcards):
    """Only the VQ-GAN trains with a perceptual loss; a local folder to fine-tune from is an input too."""
    a = config["autoencoder"][wildcards.ae]
    inputs = perceptual_inputs() if a["type"] == "vq" else {}
    if a["pretrained"]:
        inputs["pretrained"] = a["pretrained"]
    return inputs


def shared():
    return {"seed": config["seed"], "device": config["device"], "classes": CLASSES}


def data_params():
    return {**config["data"], "seed": config["seed"]}


def stage_params(stage):
    return {**config[stage], **shared()}


def autoencoder_params(wildcards):
    a = config["autoencoder"][wildcards.ae]
    extra = {"perceptual": config["perceptual"]} if a["type"] == "vq" else {}
    return {**a, **extra, "name": wildcards.ae, **shared()}


def autoencoder_metrics_params(wildcards):
    return {"name": wildcards.ae, "type": config["autoencoder"][wildcards.ae]["type"],
            "perceptual": config["perceptual"], **shared()}


def cluster_params():
    c = dict(config["cluster"])
    c["autoencoder"] = configured_autoencoder(c.get("autoencoder") or AUTOENCODERS[0], "cluster.autoencoder")
    return {**c, **shared()}


def cluster_outputs():
    if "cluster" not in config:
        return []
    return [f"{R}/cluster/{name}.parquet" for name in ("indices", "selection", "assignments")]


def diffusion_params(wildcards):
    d = {k: v for k, v in config["diffusion"].items() if k != "variants"}
    return {**d, **config["diffusion"]["variants"][wildcards.variant], "variant": wildcards.variant,
            "autoencoder": variant_autoencoder(wildcards.variant), **shared()}


def generate_params(wildcards):
    g = {k: v for k, v in config["generate"].items() if k not in ("settings", "seeds")}
    setting = {k: v for k, v in config["generate"]["settings"][wildcards.setting].items() if k != "variants"}
    return {**g, **setting, "variant": wildcards.variant,
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


def _check_grid():
    pairs = []
    for s, cfg in config["generate"]["settings"].items():
        unknown = sorted(set(cfg.get("variants", VARIANTS)) - set(VARIANTS))
        if unknown:
            raise ValueError(f"generate.settings.{s}.variants: {unknown} are not diffusion variants {VARIANTS}")
        pairs += [(v, s) for v in VARIANTS if v in cfg.get("variants", VARIANTS)]
    for v in VARIANTS:
        if config["diffusion"]["variants"][v]["conditioning"] == "clue":
            missing = [s for vv, s in pairs if vv == v and config["generate"]["settings"][s]["style_sigma"] is None]
            if missing:
                raise ValueError(f"generate.settings {missing}: CLUE variant {v!r} needs a `style_sigma`")
    return pairs


GRID = _check_grid()  # the (variant, setting) pairs that are generated


def _over_grid(pattern, **extra):
    """``pattern`` filled for every (variant, setting) of GRID and every seed (and the ``extra`` wildcards)."""
    return [p for v, s in GRID for p in expand(pattern, variant=v, setting=s, seed=SEEDS, **extra)]


def generated(kind):
    """Paths of `kind` for every (variant, setting, seed)."""
    return _over_grid(f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/{kind}")


def classify_tables():
    return _over_grid(f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/scores.parquet", arch=ARCHS)


def evaluate_tables():
    return _over_grid(f"{R}/evaluate/{{variant}}/{{setting}}/seed{{seed}}/quality.parquet")


def recon_tables():
    return expand(f"{R}/autoencoder/{{ae}}/recon_metrics.parquet", ae=AUTOENCODERS)


def report_outputs():
    return {
        "autoencoder_comparison": f"{R}/report/autoencoder_comparison.parquet",
        "classify_summary": f"{R}/report/classify_summary.parquet",
        "evaluate_summary": f"{R}/report/evaluate_summary.parquet",
        "f1_plot": f"{R}/report/figures/f1_vs_ratio.png",
        "grids": [f"{R}/report/figures/grid_{c}.png" for c in CLASSES],
    }


def final_outputs():
    o = report_outputs()
    return [*cluster_outputs(), o["autoencoder_comparison"], o["classify_summary"], o["evaluate_summary"], o["f1_plot"], *o["grids"]]
