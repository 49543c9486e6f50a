# Config access, output locations, input functions and wildcard constraints. Rules stay thin: each receives
# only its own config slice (plus the shared seed, device and classes) through `params:`, so an edit to one
# stage's settings reruns that stage and what depends on it, nothing else.

import os
import re
from pathlib import Path

from snakemake.utils import validate


def drop_nulls(cfg):
    """A file given with --configfile is merged into config/config.yaml; setting an entry to null there removes
    what config/config.yaml gives: an optional section (cluster, trajectory, interpolation) or a named entry
    (autoencoder, diffusion variant, generation setting, classifier count set)."""
    for section in ("cluster", "trajectory", "interpolation"):
        if section in cfg and cfg[section] is None:
            del cfg[section]
    for path in (("autoencoder",), ("diffusion", "variants"), ("generate", "settings"), ("classify", "count_sets")):
        node = cfg
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            for name in [n for n, v in node.items() if v is None]:
                del node[name]


def check_schema(cfg, schema_file):
    """Every schema violation at once, each as `dotted.key: what is wrong` (Snakemake's own validation stops at
    the first and prints the schema's internals)."""
    import difflib

    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_file).read_text())

    def known_keys(section):  # its own properties and those of the local $defs it includes with allOf
        parts = [section] + [schema["$defs"][Path(s["$ref"]).name] for s in section.get("allOf", [])]
        return {k for part in parts for k in part.get("properties", {})}

    errors = []
    for e in jsonschema.Draft202012Validator(schema).iter_errors(cfg):
        if e.validator in ("unevaluatedProperties", "additionalProperties") and e.validator_value is False:
            # When an allOf part fails, its keys count as unevaluated too: report only the truly unknown ones.
            known = known_keys(e.schema)
            unknown = sorted(set(e.instance) - known)
            if not unknown:
                continue
            close = {k: difflib.get_close_matches(k, sorted(known), n=1) for k in unknown}
            e.message = f"unknown key(s) {unknown}" + "".join(f"; {k}: did you mean {c[0]}?" for k, c in close.items()
                                                               if c)
        errors.append(e)
    errors.sort(key=lambda e: list(map(str, e.path)))
    if errors:
        lines = [f"  {'.'.join(map(str, e.path)) or '(top level)'}: {e.message}" for e in errors]
        raise ValueError(f"config does not match {schema_file} ({len(errors)} problem(s)):\n" + "\n".join(lines))


def check_local_paths(cfg):
    """Every local file or folder the config names exists, checked before any job: a missing weights file or
    data folder fails here, naming its key, instead of after hours of upstream training. Relative paths are
    taken from the folder Snakemake runs in; nothing is ever downloaded."""
    data, d = cfg["data"], cfg["diffusion"]
    wanted = []  # (key, path, "file" | "folder")
    if data["source"] != "embedded":
        wanted.append(("data.path", data.get("path"), "file" if data["source"] == "manifest" else "folder"))
    if data.get("external"):
        wanted += [("data.external.manifest", data["external"]["manifest"], "file"),
                   ("data.external.images", data["external"].get("images"), "folder")]
    wanted += [("preprocess.lesion_masks", cfg["preprocess"].get("lesion_masks"), "folder"),
               ("perceptual.lpips_backbone", cfg["perceptual"]["lpips_backbone"], "file"),
               ("diffusion.pretrained", d["pretrained"], "folder")]
    wanted += [(f"autoencoder.{name}.pretrained", a["pretrained"], "folder") for name, a in cfg["autoencoder"].items()]
    for enc in ("text_encoder", "image_encoder"):
        model, ckpt = d[enc]["open_clip_model"], d[enc]["checkpoint"]
        if model and not ckpt:
            raise ValueError(f"diffusion.{enc}.checkpoint: open_clip_model is {model!r}, so a local checkpoint file of "
                             f"it is needed (the pipeline downloads nothing)")
        wanted.append((f"diffusion.{enc}.checkpoint", ckpt, "file"))
    for name, a in cfg["autoencoder"].items():
        if a["steps"] == 0 and not a["pretrained"]:
            raise ValueError(f"autoencoder.{name}.steps: 0 means a pretrained autoencoder used as it is, but "
                             f"autoencoder.{name}.pretrained is null")
    for key, path, kind in wanted:
        if key == "data.path" and not path:
            raise ValueError(f"data.path: required when data.source is {data['source']!r} (expected a {kind})")
        if not path:
            continue
        ok = Path(path).is_file() if kind == "file" else Path(path).is_dir()
        if not ok:
            what = "a folder, found a file" if Path(path).is_file() else \
                "a file, found a folder" if Path(path).is_dir() else f"a local {kind}; nothing is there"
            raise FileNotFoundError(f"{key}: {path} (from {os.getcwd()}): expected {what}")


def check_counts(cfg):
    """Counts the schema cannot relate: an empty count set, cluster counts beyond the embedded data's images."""
    for name, c in cfg["classify"]["count_sets"].items():
        if c["real"] + c["synthetic"] == 0:
            raise ValueError(f"classify.count_sets.{name}: real and synthetic are both 0, an empty training set")
    if "cluster" in cfg and cfg["data"]["source"] == "embedded":
        per_class = cfg["data"]["embedded"]["n_per_class"]
        n = sum(per_class[s] for s in cfg["cluster"]["splits"]) * len(cfg["data"]["classes"])
        top = max(cfg["cluster"]["k_values"]) + (cfg["cluster"].get("hartigan") == "nbclust")
        if top >= n:
            raise ValueError(f"cluster.k_values: {top} clusters need more than {top} images, the splits "
                             f"{cfg['cluster']['splits']} of the embedded data hold {n}")


drop_nulls(config)
check_schema(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
validate(config, "../schemas/config.schema.yaml")  # fills in the schema's defaults
check_local_paths(config)
check_counts(config)

R = f"results/{config['experiment']}"
LOGS = f"logs/{config['experiment']}"
AUTOENCODERS = list(config["autoencoder"])


def _expand_variants():
    """The diffusion variants by name. A cluster variant with a list `cluster_k` (cLDM Table 4: one model per
    cluster set) becomes one variant per k, named <variant>_k<k>; `members` maps each configured name to the
    variants it became."""
    out, members = {}, {}
    for name, v in config["diffusion"]["variants"].items():
        ks = v.get("cluster_k")
        if v["conditioning"] != "cluster" and ks is not None:
            raise ValueError(f"diffusion.variants.{name}.cluster_k applies to `conditioning: cluster` only")
        if v["conditioning"] == "cluster":
            if "cluster" not in config:
                raise ValueError(f"diffusion.variants.{name}: cluster conditioning needs a `cluster:` section")
            method = v.get("cluster_method") or ("imsat" if "imsat" in config["cluster"]["methods"]
                                                 else config["cluster"]["methods"][0])
            if method not in config["cluster"]["methods"]:
                raise ValueError(f"diffusion.variants.{name}.cluster_method: {method!r} is not one of "
                                 f"cluster.methods {config['cluster']['methods']}")
            ks = ks if ks is not None else "selected"
            for k in ks if isinstance(ks, list) else [ks]:
                if k != "selected" and k not in config["cluster"]["k_values"]:
                    raise ValueError(f"diffusion.variants.{name}.cluster_k: {k} is not one of cluster.k_values "
                                     f"{config['cluster']['k_values']}")
            expanded = {f"{name}_k{k}": {**v, "cluster_k": k, "cluster_method": method} for k in ks} \
                if isinstance(ks, list) else {name: {**v, "cluster_k": ks, "cluster_method": method}}
        else:
            expanded = {name: dict(v)}
        clash = sorted(set(expanded) & set(out))
        if clash:
            raise ValueError(f"diffusion.variants: {clash} named twice (a cluster variant with a list of cluster_k "
                             f"becomes <name>_k<k>)")
        out |= expanded
        members[name] = list(expanded)
    return out, members


VARIANT_CFG, VARIANT_MEMBERS = _expand_variants()
VARIANTS = list(VARIANT_CFG)
CLUSTER_VARIANTS = [v for v in VARIANTS if VARIANT_CFG[v]["conditioning"] == "cluster"]
SETTINGS = list(config["generate"]["settings"])
SEEDS = list(config["generate"]["seeds"])
ARCHS = list(config["classify"]["archs"])


def _classify_points():
    """The classifier grid's training sets by name -> (protocol, value); see pipeline_lib.classify. Each
    synthetic count must be within what generate.scale draws."""
    c, pct = config["classify"], lambda v: f"{round(100 * v):d}"
    points = {f"replace_{pct(r)}": ("replace", r) for r in c["ratios"]}
    if c["hybrid"]:
        points["replace_100_plus_real"] = ("hybrid", 1.0)
    points |= {f"scale_{pct(v)}": ("scale", v) for v in c["scales"]}
    if c["scale_hybrid"] and c["scales"]:
        points[f"scale_{pct(max(c['scales']))}_plus_real"] = ("scale_hybrid", max(c["scales"]))
    points |= {f"count_{name}": ("count", name) for name in c["count_sets"]}
    needed = {"classify.ratios": max(c["ratios"], default=0), "classify.hybrid": 1.0 if c["hybrid"] else 0,
              "classify.scales": max(c["scales"], default=0)}
    for key, scale in needed.items():
        if scale > config["generate"]["scale"]:
            raise ValueError(f"{key}: {scale:g} x the train_a images of a class are needed, generate.scale draws "
                             f"{config['generate']['scale']:g} x; raise generate.scale to at least {scale:g}")
    return points


CLASSIFY_POINTS = _classify_points()


def _timm_model_names():
    """timm's model names, listed once per installed timm version into .snakemake/ (importing timm takes
    seconds, too long for every parse of the workflow)."""
    import importlib.metadata
    import subprocess
    import sys

    cache = Path(".snakemake/medaug") / f"timm-{importlib.metadata.version('timm')}-models.txt"
    if not cache.exists():
        names = subprocess.run([sys.executable, "-c", "import timm; print('\\n'.join(timm.list_models()))"],
                               check=True, capture_output=True, text=True).stdout
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
        tmp.write_text(names)
        tmp.replace(cache)
    return set(cache.read_text().split())


def _check_archs():
    """Every classifier or feature-network arch is small_cnn or a timm model name, checked before any job."""
    asked = [("evaluate.arch", config["evaluate"]["arch"])] + [("classify.archs", a) for a in ARCHS]
    asked = [(key, a) for key, a in asked if a != "small_cnn"]
    if not asked:
        return
    import difflib

    names = _timm_model_names()
    for key, arch in asked:
        if arch not in names:
            close = difflib.get_close_matches(arch, sorted(names), n=3)
            raise ValueError(f"{key}: {arch!r} is neither small_cnn nor a timm model name"
                             + (f" (did you mean {', '.join(close)}?)" if close else ""))


_check_archs()
CLASSES = list(config["data"]["classes"])


wildcard_constraints:
    ae="|".join(map(re.escape, AUTOENCODERS)),
    variant="|".join(map(re.escape, VARIANTS)),
    setting="|".join(map(re.escape, SETTINGS)),
    seed=r"\d+",
    arch="|".join(map(re.escape, ARCHS)),
    point="|".join(map(re.escape, CLASSIFY_POINTS)),


# The pipeline_lib modules each stage's script calls; `code(stage)` adds every module they import, directly or
# not (lazy imports inside functions included), and lists them all as inputs: an edit to the code reruns the stage.
CODE = {
    "ingest": ["data"],
    "preprocess": ["preprocess"],
    "autoencoder": ["autoencoder"],  # both types: autoencoder.py imports the VQ-GAN's modules too
    "autoencoder_metrics": ["autoencoder"],
    "diffusion": ["diffusion"],
    "generate": ["generate"],
    "feature_net": ["evaluate"],
    "evaluate": ["evaluate"],
    "classify": ["classify"],
    "report": ["report"],
    "leakage": ["leakage"],
    "cluster": ["cluster/fit"],
    "trajectory": ["trajectory"],
    "interpolation": ["interpolation"],
    "cluster_quality": ["cluster/quality"],
}


def _imported_modules(name, found_in={}):
    """The pipeline_lib modules ("name" or "cluster/name") that pipeline_lib/<name>.py imports itself
    (``found_in`` keeps each file's answer: every stage reads the same files)."""
    import ast

    if name not in found_in:
        package, found = list(Path(name).parts[:-1]), set()
        for node in ast.walk(ast.parse(Path(f"pipeline_lib/{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:  # relative: from .x / ..x / . import x
                base = package[: len(package) - (node.level - 1)]
                names = [node.module] if node.module else [a.name for a in node.names]
                found.update(Path(*base, *n.split(".")).as_posix() for n in names)
        found_in[name] = {m for m in found if Path(f"pipeline_lib/{m}.py").is_file()}
    return found_in[name]


def code(stage):
    seen, todo = set(), list(CODE[stage])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _imported_modules(name)
    return [f"pipeline_lib/{m}.py" for m in sorted(seen)]


def configured_autoencoder(name, where):
    """``name`` if it is one of the configured autoencoders, else an error naming ``where`` it was asked for."""
    if name not in AUTOENCODERS:
        raise ValueError(f"{where}: autoencoder {name!r} is not configured (autoencoder: {AUTOENCODERS})")
    return name


def variant_autoencoder(variant):
    """The autoencoder a diffusion variant learns on: its own `autoencoder`, else diffusion.autoencoder, else
    the only one configured."""
    name = VARIANT_CFG[variant].get("autoencoder", config["diffusion"].get("autoencoder"))
    if name is None:
        if len(AUTOENCODERS) > 1:
            raise ValueError(f"diffusion.autoencoder: several autoencoders are configured {AUTOENCODERS}; "
                             f"name the one the diffusion variants use")
        name = AUTOENCODERS[0]
    return configured_autoencoder(name, f"diffusion variant {variant!r}")


def variant_autoencoder_model(wildcards):
    return f"{R}/autoencoder/{variant_autoencoder(wildcards.variant)}/model"


FEATURE_NET = f"{R}/evaluate/feature_net/model.pt"
LEAKAGE = f"{R}/preprocess/leakage.parquet"


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
    conditioning = VARIANT_CFG[wildcards.variant]["conditioning"]
    inputs = image_encoder_inputs() if conditioning == "multilevel" else {}
    if conditioning == "cluster":
        inputs |= {"cluster_assignments": CLUSTER["assignments"], "cluster_selection": CLUSTER["selection"]}
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


# The speed switches that can change a number (the fields of pipeline_lib.speed.Speed; importing it here would
# import torch): parameters of the torch stages.
# num_workers, pin_memory and feature_cache never do; the scripts read them from the config, so editing them
# reruns nothing.
SPEED_NUMERIC = ("mixed_precision", "tf32", "channels_last", "attention", "compile")


def speed():
    return {"speed": {k: config["speed"][k] for k in SPEED_NUMERIC}}


def data_params():
    return {**config["data"], "seed": config["seed"]}


def stage_params(stage):
    return {**config[stage], **shared()}


def autoencoder_params(wildcards):
    a = config["autoencoder"][wildcards.ae]
    extra = {"perceptual": config["perceptual"]} if a["type"] == "vq" else {}
    return {**a, **extra, "name": wildcards.ae, **speed(), **shared()}


def autoencoder_metrics_params(wildcards):
    return {"name": wildcards.ae, "type": config["autoencoder"][wildcards.ae]["type"],
            "perceptual": config["perceptual"], **shared()}


def cluster_params():
    """The cluster slice without the settings of the generated-image evaluation (``references``)."""
    c = {k: v for k, v in config["cluster"].items() if k != "references"}
    c["autoencoder"] = configured_autoencoder(c.get("autoencoder") or AUTOENCODERS[0], "cluster.autoencoder")
    return {**c, **shared()}


CLUSTER = {name: f"{R}/cluster/{name}.parquet" for name in ("indices", "selection", "assignments")}
CLUSTER["models"] = f"{R}/cluster/models.pt"


def cluster_outputs():
    return [CLUSTER[name] for name in ("indices", "selection", "assignments")] if "cluster" in config else []


def cluster_quality_params(wildcards):
    c = config["cluster"]
    return {"splits": c["splits"], "references": c["references"], "perceptual": config["perceptual"],
            "variant": wildcards.variant, "setting": wildcards.setting, **shared(), "seed": int(wildcards.seed)}


def diffusion_params(wildcards):
    """The diffusion slice with the variant's own keys; keys a variant's conditioning does not read are left
    out, so editing them does not retrain it (the image encoder only for multi-level variants, the prompts and
    the text encoder not for cluster variants)."""
    conditioning = VARIANT_CFG[wildcards.variant]["conditioning"]
    unused = {"variants"} | ({"image_encoder"} if conditioning != "multilevel" else set()) \
        | ({"prompts", "text_encoder", "max_prompt_length"} if conditioning == "cluster" else set())
    d = {k: v for k, v in config["diffusion"].items() if k not in unused}
    return {**d, **VARIANT_CFG[wildcards.variant], "variant": wildcards.variant,
            "autoencoder": variant_autoencoder(wildcards.variant), **speed(), **shared()}


def generate_params(wildcards):
    """A class-conditioned variant draws `scale` x train_a per class, a cluster variant `samples_per_cluster`:
    each gets only the key it uses."""
    unused = "scale" if wildcards.variant in CLUSTER_VARIANTS else "samples_per_cluster"
    g = {k: v for k, v in config["generate"].items() if k not in ("settings", "seeds", unused)}
    setting = {k: v for k, v in config["generate"]["settings"][wildcards.setting].items() if k != "variants"}
    return {**g, **setting, "variant": wildcards.variant,
            "setting": wildcards.setting, "preprocess": config["preprocess"], **speed(), **shared(),
            "seed": int(wildcards.seed)}


EVAL_METRIC_KEYS = ("recall_k", "precision_k", "density_k", "is_splits")


def feature_net_params():
    """The evaluate slice without the metric settings: editing them does not retrain the network."""
    return {**{k: v for k, v in stage_params("evaluate").items() if k not in EVAL_METRIC_KEYS}, **speed()}


def evaluate_params(wildcards):
    return {**{k: config["evaluate"][k] for k in EVAL_METRIC_KEYS}, "variant": wildcards.variant,
            "setting": wildcards.setting, **shared(), "seed": int(wildcards.seed)}


GRID_KEYS = ("archs", "ratios", "hybrid", "scales", "scale_hybrid", "count_sets")


def classify_params(wildcards):
    """The trainer settings, the test sets and this job's own grid point only: adding a ratio or an arch adds
    jobs without rerunning the others."""
    c = {k: v for k, v in config["classify"].items() if k not in GRID_KEYS}
    protocol, value = CLASSIFY_POINTS[wildcards.point]
    point = {"point": wildcards.point, "protocol": protocol, "value": value}
    if protocol == "count":
        point["counts"] = config["classify"]["count_sets"][value]
    return {**c, **point, "arch": wildcards.arch, "variant": wildcards.variant, "setting": wildcards.setting,
            **speed(), **shared(), "seed": int(wildcards.seed)}


def _check_grid():
    if len(CLASSES) == 1:
        labelled = [v for v in VARIANTS if VARIANT_CFG[v]["conditioning"] != "cluster"]
        if labelled:
            raise ValueError(f"data.classes: one class ({CLASSES[0]}) means unlabelled images, which only "
                             f"cluster-conditioned variants can learn; variants {labelled} need two classes or more "
                             f"(set them to null to drop the ones config/config.yaml gives)")
    pairs = []
    for s, cfg in config["generate"]["settings"].items():
        named = cfg.get("variants", list(VARIANT_MEMBERS))
        unknown = sorted(set(named) - set(VARIANT_MEMBERS))
        if unknown:
            raise ValueError(f"generate.settings.{s}.variants: {unknown} are not diffusion variants "
                             f"{list(VARIANT_MEMBERS)}")
        chosen = {m for v in named for m in VARIANT_MEMBERS[v]}
        pairs += [(v, s) for v in VARIANTS if v in chosen]
    for v in VARIANTS:
        if VARIANT_CFG[v]["conditioning"] == "clue":
            missing = [s for vv, s in pairs if vv == v and config["generate"]["settings"][s]["style_sigma"] is None]
            if missing:
                raise ValueError(f"generate.settings {missing}: CLUE variant {v!r} needs a `style_sigma`")
    return pairs


GRID = _check_grid()  # the (variant, setting) pairs that are generated


def _over_grid(pattern, clusters=False, **extra):
    """``pattern`` filled for every (variant, setting) of GRID and every seed (and the ``extra`` wildcards):
    the class-conditioned variants, or with ``clusters`` the cluster-conditioned ones (no class labels: they
    have their own evaluation, not the class-based metrics and classifier grids)."""
    return [p for v, s in GRID if (v in CLUSTER_VARIANTS) == clusters
            for p in expand(pattern, variant=v, setting=s, seed=SEEDS, **extra)]


def generated(kind, clusters=False):
    """Paths of `kind` for every (variant, setting, seed)."""
    return _over_grid(f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/{kind}", clusters)


def classify_tables():
    return _over_grid(f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}/scores.parquet",
                      arch=ARCHS, point=list(CLASSIFY_POINTS))


def evaluate_tables():
    return _over_grid(f"{R}/evaluate/{{variant}}/{{setting}}/seed{{seed}}/quality.parquet")


def real_features_input():
    """The real images' cached features, which the PCA figures of class-conditioned variants need."""
    return [f"{R}/evaluate/feature_net/real_features.parquet"] if pca_inputs() else []


def pca_inputs():
    """(variant, setting, generated features of the first seed) for each PCA figure, in report_outputs' order."""
    return [(v, s, f"{R}/evaluate/{v}/{s}/seed{SEEDS[0]}/features.parquet") for v, s in GRID
            if v not in CLUSTER_VARIANTS]


def trajectory_params(wildcards):
    """The traversal settings with the sampling settings of the generation setting (steps, guidance, sigma)."""
    setting = config["generate"]["settings"][wildcards.setting]
    return {**config["trajectory"], "num_inference_steps": config["generate"]["num_inference_steps"],
            "guidance_scale": setting["guidance_scale"], "style_sigma": setting.get("style_sigma"),
            "perceptual": config["perceptual"], "variant": wildcards.variant, "setting": wildcards.setting,
            **speed(), **shared(), "seed": int(wildcards.seed)}


def interpolation_inputs(wildcards):
    return {"autoencoder": variant_autoencoder_model(wildcards), **image_encoder_inputs()}


def interpolation_params(wildcards):
    """The interpolation slice (its `classes` as classes_interpolated), the preprocessing that finishes the
    decoded images and the image encoder of the semantic variance."""
    i = {("classes_interpolated" if k == "classes" else k): v for k, v in config["interpolation"].items()}
    return {**i, "preprocess": config["preprocess"], "image_encoder": config["diffusion"]["image_encoder"],
            "variant": wildcards.variant, "setting": wildcards.setting, **speed(), **shared(),
            "seed": int(wildcards.seed)}


def interpolation_tables():
    if "interpolation" not in config:
        return []
    return _over_grid(f"{R}/interpolation/{{variant}}/{{setting}}/seed{{seed}}/semantic_variance.parquet")


def trajectory_tables():
    if "trajectory" not in config:
        return []
    return _over_grid(f"{R}/trajectory/{{variant}}/{{setting}}/seed{{seed}}/trajectory.parquet")


def cluster_quality_tables():
    return _over_grid(f"{R}/cluster/quality/{{variant}}/{{setting}}/seed{{seed}}/quality.parquet", True)


def recon_tables():
    return expand(f"{R}/autoencoder/{{ae}}/recon_metrics.parquet", ae=AUTOENCODERS)


ROC_POINT = "replace_100"  # the ROC figure's training set: 100 % synthetic (CLUE Fig. 8-11)


# What `snakemake --report` shows: output key -> (category, caption in workflow/report/). The Parquet tables go
# into the report as CSV copies (report/tables/<key>.csv), which it renders as tables.
REPORT_ITEMS = {
    "autoencoder_comparison": ("Autoencoders", "autoencoder_comparison.rst"),
    "evaluate_summary": ("Image quality", "evaluate_summary.rst"),
    "grids": ("Image quality", "grid.rst"),
    "pca": ("Image quality", "pca.rst"),
    "classify_tables": ("Classification", "classify_tables.rst"),
    "f1_plot": ("Classification", "f1_vs_ratio.rst"),
    "f1_scale_plot": ("Classification", "f1_vs_scale.rst"),
    "roc_plot": ("Classification", "roc.rst"),
    "cluster_generation": ("Clusters", "cluster_generation.rst"),
    "trajectory_summary": ("Trajectory traversal", "trajectory_summary.rst"),
    "semantic_variance": ("Interpolation", "semantic_variance.rst"),
}
REPORT_TABLES = ("autoencoder_comparison", "evaluate_summary", "classify_tables", "cluster_generation",
                 "trajectory_summary", "semantic_variance")


def report_outputs(flagged=False):
    """The report's files: the class-based tables and figures when class-conditioned variants are generated, the
    cluster-generation table when cluster-conditioned ones are, CSV copies of the main tables. ``flagged``: the
    REPORT_ITEMS marked for `--report` with their category and caption."""
    o = {"autoencoder_comparison": f"{R}/report/autoencoder_comparison.parquet"}
    if any(v not in CLUSTER_VARIANTS for v, _ in GRID):
        o |= {"classify_summary": f"{R}/report/classify_summary.parquet",
              "classify_tables": f"{R}/report/classify_tables.parquet",
              "classify_per_class": f"{R}/report/classify_per_class.parquet",
              "evaluate_summary": f"{R}/report/evaluate_summary.parquet",
              "f1_plot": f"{R}/report/figures/f1_vs_ratio.png",
              "grids": [f"{R}/report/figures/grid_{c}.png" for c in CLASSES],
              "pca": [f"{R}/report/figures/pca_{v}_{s}.png" for v, s in GRID if v not in CLUSTER_VARIANTS]}
        if config["classify"]["scales"]:
            o["f1_scale_plot"] = f"{R}/report/figures/f1_vs_scale.png"
        if ROC_POINT in CLASSIFY_POINTS:
            o["roc_plot"] = f"{R}/report/figures/roc_{ROC_POINT}.png"
    if any(v in CLUSTER_VARIANTS for v, _ in GRID):
        o["cluster_generation"] = f"{R}/report/cluster_generation.parquet"
    if trajectory_tables():
        o["trajectory_summary"] = f"{R}/report/trajectory_summary.parquet"
    if interpolation_tables():
        o["semantic_variance"] = f"{R}/report/semantic_variance.parquet"
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


def final_outputs():
    return [*cluster_outputs(), *(p for v in report_outputs().values() for p in ([v] if isinstance(v, str) else v))]
