"""The pure functions on the workflow's config dict: nulls, the schema check, local paths, counts, the expansion
of variants, settings, grid points and archs, each rule's config slice, and the code inputs of each stage.

``workflow/rules/common.smk`` calls ``Plan.from_config`` once when the workflow is parsed; everything it
raises is an error a user sees before any job starts, naming the key, the value and what was expected. Nothing
here imports torch or Snakemake's workflow objects, so every case is a plain, fast unit test
(tests/test_config.py).

Each rule receives only its own slice (plus the shared seed, device and classes) through ``params:``: Snakemake
reruns a rule when its params change, so an edit to one stage's settings reruns that stage and what depends on
it, nothing else.
"""
from __future__ import annotations

import ast
import difflib
import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"

# Sections and named entries a --configfile may set to null to remove what config/config.yaml gives.
OPTIONAL_SECTIONS = ("cluster", "trajectory", "interpolation", "memorization", "style_sweep")
NAMED_ENTRIES = (("autoencoder",), ("diffusion", "variants"), ("diffusion", "prompts"), ("generate", "settings"),
                 ("classify", "count_sets"))


def drop_nulls(cfg: dict) -> dict:
    """A file given with --configfile is merged into config/config.yaml; setting an entry to null there removes
    what config/config.yaml gives: an optional section (cluster, trajectory, interpolation, memorization,
    style_sweep) or a named entry (autoencoder, diffusion variant, class prompt, generation setting, classifier
    count set). Edits ``cfg`` and returns it."""
    for section in OPTIONAL_SECTIONS:
        if section in cfg and cfg[section] is None:
            del cfg[section]
    for path in NAMED_ENTRIES:
        node = cfg
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            for name in [n for n, v in node.items() if v is None]:
                del node[name]
    return cfg


def check_schema(cfg: dict, schema_file: str | Path = SCHEMA) -> None:
    """Every schema violation at once, each as `dotted.key: what is wrong` (Snakemake's own validation stops at
    the first and prints the schema's internals)."""
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


def fill_defaults(cfg: dict, schema_file: str | Path = SCHEMA) -> dict:
    """The schema's defaults filled into ``cfg`` (Snakemake's validate, which sets them in place)."""
    from snakemake.utils import validate

    validate(cfg, str(schema_file))
    return cfg


def check_local_paths(cfg: dict) -> None:
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
    folder = d["text_encoder"].get("folder")
    if folder and d["text_encoder"]["open_clip_model"]:
        raise ValueError(f"diffusion.text_encoder: folder ({folder!r}) and open_clip_model "
                         f"({d['text_encoder']['open_clip_model']!r}) are both set; keep the one to use")
    if folder == "pretrained" and not d["pretrained"]:
        raise ValueError("diffusion.text_encoder.folder: 'pretrained' names diffusion.pretrained's text_encoder/, "
                         "but diffusion.pretrained is null")
    if folder and folder != "pretrained":
        wanted.append(("diffusion.text_encoder.folder", folder, "folder"))
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


def check_embedded(cfg: dict) -> None:
    """The embedded data's classes are those of its modality (checked before any job, not at ingest)."""
    if cfg["data"]["source"] == "embedded":
        from .data import check_embedded_classes

        check_embedded_classes(cfg["data"])


def compose_prompts(cfg: dict) -> None:
    """A class that is an attribute set (``pleural_effusion+support_devices``, ``mel+hair``) without a prompt of
    its own gets its first part's prompt followed by the ``diffusion.attribute_phrases`` of the others
    ("Chest x-ray with pleural effusion" + " and support devices"); written into ``diffusion.prompts``."""
    d = cfg["diffusion"]
    prompts, phrases = d.setdefault("prompts", {}), d.get("attribute_phrases") or {}
    for c in cfg["data"]["classes"]:
        first, *rest = c.split("+")
        if c not in prompts and rest and first in prompts and all(r in phrases for r in rest):
            prompts[c] = " ".join([prompts[first], *(phrases[r] for r in rest)])


def check_class_names(cfg: dict) -> None:
    """The keys that name classes name ``data.classes``: a prompt for each (unless every variant is conditioned on
    clusters), the trajectory's neutral class, the interpolated classes. Prompts of other classes are ignored, so
    a config file merged over the default need not remove the default's."""
    classes = list(cfg["data"]["classes"])
    d = cfg["diffusion"]
    if any(v.get("conditioning", "class") != "cluster" for v in d["variants"].values()):
        missing = [c for c in classes if c not in d.get("prompts", {})]
        if missing:
            raise ValueError(f"diffusion.prompts: expected a prompt for every class of data.classes, missing {missing}"
                             f" (a class a+b may instead have a's prompt and diffusion.attribute_phrases.b)")
    if "trajectory" in cfg:
        t = cfg["trajectory"]
        for neutral in [t["neutral"]] if isinstance(t["neutral"], str) else t["neutral"]:
            if neutral not in classes:
                raise ValueError(f"trajectory.neutral: {neutral!r} is not one of data.classes {classes}")
            for a in t.get("attributes") or []:  # an edit embeds the class <neutral>+<attribute>, else <attribute>
                if f"{neutral}+{a}" not in classes and a not in classes:
                    raise ValueError(f"trajectory.attributes: {a!r} has neither the class {neutral + '+' + a!r} nor "
                                     f"{a!r} in data.classes {classes}")
        parts = {p for c in classes for p in c.split("+")}
        missing = [lab for lab in t.get("labels") or [] if lab not in parts]
        if missing:
            raise ValueError(f"trajectory.labels: {missing} are in no class of data.classes {classes}")
    unknown = [c for c in (cfg.get("interpolation") or {}).get("classes") or [] if c not in classes]
    if unknown:
        raise ValueError(f"interpolation.classes: {unknown} not in data.classes {classes}")
    sweep = (cfg.get("style_sweep") or {}).get("class")
    if sweep is not None and sweep not in classes:
        raise ValueError(f"style_sweep.class: {sweep!r} is not one of data.classes {classes}")


def check_counts(cfg: dict) -> None:
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


def expand_variants(cfg: dict) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """The diffusion variants by name. A cluster variant with a list `cluster_k` (cLDM Table 4: one model per
    cluster set) becomes one variant per k, named <variant>_k<k>; ``members`` maps each configured name to the
    variants it became."""
    out, members = {}, {}
    for name, v in cfg["diffusion"]["variants"].items():
        ks = v.get("cluster_k")
        if v["conditioning"] != "cluster" and ks is not None:
            raise ValueError(f"diffusion.variants.{name}.cluster_k applies to `conditioning: cluster` only")
        if v["conditioning"] == "cluster":
            if "cluster" not in cfg:
                raise ValueError(f"diffusion.variants.{name}: cluster conditioning needs a `cluster:` section")
            methods = cfg["cluster"]["methods"]
            method = v.get("cluster_method") or ("imsat" if "imsat" in methods else methods[0])
            if method not in methods:
                raise ValueError(f"diffusion.variants.{name}.cluster_method: {method!r} is not one of "
                                 f"cluster.methods {methods}")
            if v.get("cluster_training") == "joint":
                if method != "imsat":
                    raise ValueError(f"diffusion.variants.{name}.cluster_training: joint trains the cluster stage's "
                                     f"IMSAT network; cluster_method is {method!r}")
                ae = v.get("autoencoder", cfg["diffusion"].get("autoencoder"))
                if ae is not None and ae != cfg["cluster"]["autoencoder"]:
                    raise ValueError(f"diffusion.variants.{name}.cluster_training: joint clusters this variant's "
                                     f"latents ({ae}) with the cluster stage's network, trained on "
                                     f"cluster.autoencoder {cfg['cluster']['autoencoder']!r}: make them the same")
            ks = ks if ks is not None else "selected"
            for k in ks if isinstance(ks, list) else [ks]:
                if k != "selected" and k not in cfg["cluster"]["k_values"]:
                    raise ValueError(f"diffusion.variants.{name}.cluster_k: {k} is not one of cluster.k_values "
                                     f"{cfg['cluster']['k_values']}")
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


def classify_points(cfg: dict) -> dict[str, tuple[str, Any]]:
    """The classifier grid's training sets by name -> (protocol, value); see pipeline_lib.classify. Each
    synthetic count must be within what generate.scale draws."""
    c, pct = cfg["classify"], lambda v: f"{round(100 * v):d}"
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
        if scale > cfg["generate"]["scale"]:
            raise ValueError(f"{key}: {scale:g} x the train_a images of a class are needed, generate.scale draws "
                             f"{cfg['generate']['scale']:g} x; raise generate.scale to at least {scale:g}")
    return points


def timm_model_names(cache_dir: str | Path = Path(".snakemake") / "medaug") -> set[str]:
    """timm's model names, listed once per installed timm version into ``cache_dir`` (importing timm takes
    seconds, too long for every parse of the workflow)."""
    cache = Path(cache_dir) / f"timm-{importlib.metadata.version('timm')}-models.txt"
    if not cache.exists():
        names = subprocess.run([sys.executable, "-c", "import timm; print('\\n'.join(timm.list_models()))"],
                               check=True, capture_output=True, text=True).stdout
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
        tmp.write_text(names)
        tmp.replace(cache)
    return set(cache.read_text().split())


def check_archs(cfg: dict) -> None:
    """Every classifier or feature-network arch is small_cnn or a timm model name, checked before any job."""
    asked = [("evaluate.arch", cfg["evaluate"]["arch"])] + [("classify.archs", a) for a in cfg["classify"]["archs"]]
    asked = [(key, a) for key, a in asked if a != "small_cnn"]
    if not asked:
        return
    names = timm_model_names()
    for key, arch in asked:
        if arch not in names:
            close = difflib.get_close_matches(arch, sorted(names), n=3)
            raise ValueError(f"{key}: {arch!r} is neither small_cnn nor a timm model name"
                             + (f" (did you mean {', '.join(close)}?)" if close else ""))


# The speed switches that can change a number (the fields of pipeline_lib.speed.Speed; importing it here would
# import torch): parameters of the torch stages. num_workers, pin_memory and feature_cache never do; the stage
# harness reads them from the whole config, so editing them reruns nothing.
SPEED_NUMERIC = ("mixed_precision", "tf32", "channels_last", "attention", "compile")
SPEED_SAMPLING = ("sampling_precision",)  # and of the stages that sample the denoiser only: editing it retrains nothing
EVAL_METRIC_KEYS = ("recall_k", "precision_k", "density_k", "is_splits")  # not the feature network's training
GRID_KEYS = ("variants", "archs", "ratios", "hybrid", "scales", "scale_hybrid", "count_sets")  # grid, not trainer
ROC_POINT = "replace_100"  # the ROC figure's training set: 100 % synthetic (CLUE Fig. 8-11)


def uses_perceptual(autoencoder: dict) -> bool:
    """Whether an ``autoencoder.<name>`` section trains with a perceptual term: the VQ-GAN always (its default
    weight is 1), a KL-VAE when its ``loss.perceptual_weight`` is above 0 (then LPIPS or the domain network is an
    input of its job, and the ``perceptual`` section one of its parameters)."""
    if autoencoder.get("type", "kl") == "vq":
        return True
    return float((autoencoder.get("loss") or {}).get("perceptual_weight") or 0) > 0


@dataclass
class Plan:
    """The checked config and what the workflow derives from it: the expanded variants, the generation grid,
    the classifier grid points, and each rule's config slice."""
    config: dict
    variants: dict[str, dict]  # expanded variant name -> its keys (cluster_k / cluster_method resolved)
    members: dict[str, list[str]]  # configured variant name -> the expanded names it became
    points: dict[str, tuple[str, Any]]  # classifier grid point -> (protocol, value)
    grid: list[tuple[str, str]]  # the (variant, setting) pairs that are generated

    @classmethod
    def from_config(cls, cfg: dict, schema_file: str | Path = SCHEMA, check_timm: bool = True) -> "Plan":
        """Drop the nulls, check the schema (every problem at once), fill the defaults, check local paths,
        counts and archs, expand the grid, check the keys that name classes. Edits ``cfg`` in place (it is
        Snakemake's ``config``)."""
        drop_nulls(cfg)
        check_schema(cfg, schema_file)
        fill_defaults(cfg, schema_file)
        check_local_paths(cfg)
        check_counts(cfg)
        variants, members = expand_variants(cfg)
        points = classify_points(cfg)
        baseline = cfg["statistics"]["baseline"]
        if baseline not in (None, "auto") and baseline not in points:
            raise ValueError(f"statistics.baseline: {baseline!r} is not a classifier grid point; expected auto, "
                             f"null or one of {sorted(points)} (replace_0 needs 0.0 in classify.ratios)")
        if check_timm:
            check_archs(cfg)
        plan = cls(cfg, variants, members, points, [])
        plan.grid = plan._check_grid()
        check_embedded(cfg)
        compose_prompts(cfg)
        check_class_names(cfg)
        return plan

    # --- names --------------------------------------------------------------------------------------------------
    @property
    def autoencoders(self) -> list[str]:
        return list(self.config["autoencoder"])

    @property
    def classes(self) -> list[str]:
        return list(self.config["data"]["classes"])

    @property
    def settings(self) -> list[str]:
        return list(self.config["generate"]["settings"])

    @property
    def seeds(self) -> list[int]:
        return list(self.config["generate"]["seeds"])

    @property
    def archs(self) -> list[str]:
        return list(self.config["classify"]["archs"])

    @property
    def cluster_variants(self) -> list[str]:
        return [v for v, c in self.variants.items() if c["conditioning"] == "cluster"]

    def conditioning(self, variant: str) -> str:
        return self.variants[variant]["conditioning"]

    def _check_grid(self) -> list[tuple[str, str]]:
        cfg = self.config
        if len(self.classes) == 1:
            labelled = [v for v in self.variants if v not in self.cluster_variants]
            if labelled:
                raise ValueError(f"data.classes: one class ({self.classes[0]}) means unlabelled images, which only "
                                 f"cluster-conditioned variants can learn; variants {labelled} need two classes or "
                                 f"more (set them to null to drop the ones config/config.yaml gives)")
        pairs = []
        for s, setting in cfg["generate"]["settings"].items():
            interval = setting.get("guidance_interval")
            if interval is not None and not interval[0] < interval[1]:
                raise ValueError(f"generate.settings.{s}.guidance_interval: {interval} is not an interval "
                                 f"[low, high] of noise levels sigma with low < high")
            named = setting.get("variants", list(self.members))
            unknown = sorted(set(named) - set(self.members))
            if unknown:
                raise ValueError(f"generate.settings.{s}.variants: {unknown} are not diffusion variants "
                                 f"{list(self.members)}")
            chosen = {m for v in named for m in self.members[v]}
            pairs += [(v, s) for v in self.variants if v in chosen]
        labelled = [v for v, ms in self.members.items() if any(m not in self.cluster_variants for m in ms)]
        for section in ("trajectory", "interpolation", "classify"):
            wrong = [v for v in (cfg.get(section) or {}).get("variants") or [] if v not in labelled]
            if wrong:
                raise ValueError(f"{section}.variants: {wrong} are not class-conditioned diffusion variants "
                                 f"{labelled}")
        for v in self.variants:
            if self.conditioning(v) == "clue":
                missing = [s for vv, s in pairs if vv == v and cfg["generate"]["settings"][s]["style_sigma"] is None]
                if missing:
                    raise ValueError(f"generate.settings {missing}: CLUE variant {v!r} needs a `style_sigma`")
        return pairs

    def configured_autoencoder(self, name: str, where: str) -> str:
        """``name`` if it is one of the configured autoencoders, else an error naming ``where`` it was asked for."""
        if name not in self.autoencoders:
            raise ValueError(f"{where}: autoencoder {name!r} is not configured (autoencoder: {self.autoencoders})")
        return name

    def variant_autoencoder(self, variant: str) -> str:
        """The autoencoder a diffusion variant learns on: its own `autoencoder`, else diffusion.autoencoder, else
        the only one configured."""
        name = self.variants[variant].get("autoencoder", self.config["diffusion"].get("autoencoder"))
        if name is None:
            if len(self.autoencoders) > 1:
                raise ValueError(f"diffusion.autoencoder: several autoencoders are configured {self.autoencoders}; "
                                 f"name the one the diffusion variants use")
            name = self.autoencoders[0]
        return self.configured_autoencoder(name, f"diffusion variant {variant!r}")

    @property
    def cluster_autoencoder(self) -> str:
        c = self.config["cluster"]
        return self.configured_autoencoder(c.get("autoencoder") or self.autoencoders[0], "cluster.autoencoder")

    # --- each rule's config slice ----------------------------------------------------------------------------------
    def shared(self) -> dict:
        return {"seed": self.config["seed"], "device": self.config["device"], "classes": self.classes}

    def speed(self, sampling: bool = False) -> dict:
        """The switches that can change a number; ``sampling``: with those of the denoiser's sampling."""
        keys = SPEED_NUMERIC + (SPEED_SAMPLING if sampling else ())
        return {"speed": {k: self.config["speed"][k] for k in keys}}

    def data_params(self) -> dict:
        """The data slice without ``color``, which preprocessing decides (ingest does not read it)."""
        return {**{k: v for k, v in self.config["data"].items() if k != "color"}, "seed": self.config["seed"]}

    def preprocess_params(self) -> dict:
        return {**self.config["preprocess"], "color": self.config["data"]["color"]}

    def autoencoder_params(self, ae: str) -> dict:
        a = self.config["autoencoder"][ae]
        extra = {"perceptual": self.config["perceptual"]} if uses_perceptual(a) else {}
        return {**a, **extra, "name": ae, **self.speed(), **self.shared()}

    def autoencoder_metrics_params(self, ae: str) -> dict:
        return {"name": ae, "type": self.config["autoencoder"][ae]["type"], "perceptual": self.config["perceptual"],
                **self.shared()}

    def cluster_params(self) -> dict:
        """The cluster slice without the settings of the generated-image evaluation (``references``)."""
        c = {k: v for k, v in self.config["cluster"].items() if k != "references"}
        return {**c, "autoencoder": self.cluster_autoencoder, **self.shared()}

    def cluster_quality_params(self, variant: str, setting: str, seed: int | str) -> dict:
        c = self.config["cluster"]
        return {"splits": c["splits"], "references": c["references"], "perceptual": self.config["perceptual"],
                "variant": variant, "setting": setting, **self.shared(), "seed": int(seed)}

    def diffusion_params(self, variant: str) -> dict:
        """The diffusion slice with the variant's own keys; keys a variant's conditioning does not read are left
        out, so editing them does not retrain it (the image encoder only for multi-level variants, the prompts
        and the text encoder not for cluster variants)."""
        conditioning = self.conditioning(variant)
        unused = {"variants", "attribute_phrases"} | ({"image_encoder"} if conditioning != "multilevel" else set()) \
            | ({"prompts", "text_encoder", "max_prompt_length"} if conditioning == "cluster" else set())
        d = {k: v for k, v in self.config["diffusion"].items() if k not in unused
             and not (k == "pooled_prompt" and not v)}  # off: the models trained before the key stay
        if self.joint_clusters(variant):  # its IMSAT loss: the cluster stage's settings
            d["cluster_imsat"] = self.config["cluster"]["imsat"]
        return {**d, **self.variants[variant], "variant": variant, "autoencoder": self.variant_autoencoder(variant),
                **self.speed(), **self.shared()}

    def joint_clusters(self, variant: str) -> bool:
        """A cluster variant whose clustering network is trained with it (cLDM paper's stages)."""
        return self.variants[variant].get("cluster_training") == "joint"

    def generate_params(self, variant: str, setting: str, seed: int | str) -> dict:
        """A class-conditioned variant draws `scale` x train_a per class, a cluster variant `samples_per_cluster`
        per cluster or a setting's `cluster_total` in the clusters' proportions: each gets only the keys it uses."""
        clusters = variant in self.cluster_variants
        unused = "scale" if clusters else "samples_per_cluster"
        g = {k: v for k, v in self.config["generate"].items() if k not in ("settings", "seeds", unused)}
        chosen = {k: v for k, v in self.config["generate"]["settings"][setting].items()
                  if k != "variants" and (clusters or k != "cluster_total")
                  and not (k == "guidance_interval" and v is None)}  # unset: the settings made before it stay
        return {**g, **chosen, "variant": variant, "setting": setting, "preprocess": self.config["preprocess"],
                **self.speed(sampling=True), **self.shared(), "seed": int(seed)}

    def feature_net_params(self) -> dict:
        """The evaluate slice without the metric settings: editing them does not retrain the network."""
        e = {k: v for k, v in self.config["evaluate"].items() if k not in EVAL_METRIC_KEYS}
        return {**e, **self.shared(), **self.speed()}

    def evaluate_params(self, variant: str, setting: str, seed: int | str) -> dict:
        return {**{k: self.config["evaluate"][k] for k in EVAL_METRIC_KEYS}, "variant": variant, "setting": setting,
                **self.shared(), "seed": int(seed)}

    def classify_params(self, variant: str, setting: str, seed: int | str, arch: str, point: str) -> dict:
        """The trainer settings, the test sets and this job's own grid point only: adding a ratio or an arch adds
        jobs without rerunning the others."""
        c = {k: v for k, v in self.config["classify"].items() if k not in GRID_KEYS}
        protocol, value = self.points[point]
        chosen = {"point": point, "protocol": protocol, "value": value}
        if protocol == "count":
            chosen["counts"] = self.config["classify"]["count_sets"][value]
        if self.exclude_copies:
            chosen["exclude_copies"] = True
        return {**c, **chosen, "arch": arch, "variant": variant, "setting": setting, **self.speed(), **self.shared(),
                "seed": int(seed)}

    @property
    def style_sweep_variants(self) -> list[str]:
        """The variants the style sweep (CLUE Fig. 4) draws for: those with CLUE's style latent, when
        `style_sweep:` is configured."""
        return [v for v in self.variants if self.conditioning(v) == "clue"] if "style_sweep" in self.config else []

    def style_sweep_params(self, variant: str) -> dict:
        s = self.config["style_sweep"]
        return {**s, "class": s["class"] or self.classes[-1],
                "num_inference_steps": self.config["generate"]["num_inference_steps"], "variant": variant,
                **self.speed(sampling=True), **self.shared()}

    @property
    def exclude_copies(self) -> bool:
        """Whether the classifiers' synthetic pools leave out the images the memorization audit flags."""
        return bool((self.config.get("memorization") or {}).get("exclude_copies"))

    def memorization_params(self, variant: str, setting: str, seed: int | str) -> dict:
        m = {k: v for k, v in self.config["memorization"].items() if k != "exclude_copies"}
        return {**m, "variant": variant, "setting": setting, **self.shared(), "seed": int(seed)}

    @property
    def statistics_baseline(self) -> str | None:
        """The real-only arm of the paired comparisons: ``auto`` is replace_0, else the first count set without
        synthetic images, else none (intervals only)."""
        baseline = self.config["statistics"]["baseline"]
        if baseline != "auto":
            return baseline
        real_only = [p for p, (protocol, value) in self.points.items()
                     if (protocol, value) == ("replace", 0.0)
                     or (protocol == "count" and self.config["classify"]["count_sets"][value]["synthetic"] == 0)]
        return real_only[0] if real_only else None

    def statistics_params(self) -> dict:
        return {**self.config["statistics"], "baseline": self.statistics_baseline, **self.shared()}

    def section_variants(self, section: str) -> list[str]:
        """The class-conditioned variants a per-variant section (trajectory, interpolation, classify) runs on: its
        `variants` (configured names, expanded), else all of them."""
        named = self.config[section].get("variants")
        chosen = [m for v in named for m in self.members[v]] if named else list(self.variants)
        return [v for v in chosen if v not in self.cluster_variants]

    def trajectory_params(self, variant: str, setting: str, seed: int | str) -> dict:
        """The traversal settings with the sampling settings of the generation setting (steps, guidance, sigma);
        not its `variants` (which jobs exist, not what one computes)."""
        chosen = self.config["generate"]["settings"][setting]
        t = {k: v for k, v in self.config["trajectory"].items() if k != "variants"}
        if chosen.get("guidance_interval") is not None:
            t["guidance_interval"] = chosen["guidance_interval"]
        return {**t, "num_inference_steps": self.config["generate"]["num_inference_steps"],
                "guidance_scale": chosen["guidance_scale"], "style_sigma": chosen.get("style_sigma"),
                "perceptual": self.config["perceptual"], "variant": variant, "setting": setting,
                **self.speed(sampling=True), **self.shared(), "seed": int(seed)}

    def interpolation_params(self, variant: str, setting: str, seed: int | str) -> dict:
        """The interpolation slice (its `classes` as classes_interpolated), the preprocessing that finishes the
        decoded images and the image encoder of the semantic variance."""
        i = {("classes_interpolated" if k == "classes" else k): v for k, v in self.config["interpolation"].items()
             if k != "variants"}
        return {**i, "preprocess": self.config["preprocess"], "image_encoder": self.config["diffusion"]["image_encoder"],
                "variant": variant, "setting": setting, **self.speed(), **self.shared(), "seed": int(seed)}

    def report_params(self, pca: list) -> dict:
        return {"classes": self.classes, "seed": self.config["seed"], "pca": pca, "roc_point": ROC_POINT}


# --- code inputs ------------------------------------------------------------------------------------------------
# The pipeline_lib modules each stage's script calls; ``code_inputs(stage)`` adds every module they import,
# directly or not (lazy imports inside functions included), and lists them all as inputs: an edit to the code
# reruns the stage. The stage harness (logging, GPU slots, loading switches) is imported by the scripts only and
# changes no number: editing it reruns nothing.
STAGE_MODULES = {
    "ingest": ["data"],
    "preprocess": ["preprocess"],
    "leakage": ["leakage"],
    "feature_net": ["feature_net"],
    "autoencoder": ["autoencoder"],  # both types: autoencoder.py imports the VQ-GAN's modules too
    "autoencoder_metrics": ["autoencoder"],
    "cluster": ["cluster/fit"],
    "diffusion": ["diffusion"],
    "generate": ["generate"],
    "evaluate": ["evaluate"],
    "classify": ["classify"],
    "memorization": ["memorization"],
    "style_sweep": ["style_sweep"],
    "statistics": ["stats"],
    "cluster_quality": ["cluster/quality"],
    "trajectory": ["trajectory"],
    "interpolation": ["interpolation"],
    "report": ["report"],
}


def imported_modules(name: str, package_dir: Path = ROOT / "pipeline_lib", _found: dict = {}) -> set[str]:
    """The pipeline_lib modules ("name", "cluster/name", a package's "conditioning/__init__") that
    pipeline_lib/<name>.py imports itself, relatively (``_found`` keeps each file's answer: every stage reads
    the same files)."""
    key = (str(package_dir), name)
    if key not in _found:
        package, found = list(Path(name).parts[:-1]), set()
        for node in ast.walk(ast.parse((package_dir / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:  # relative: from .x / ..x / . import x
                base = package[: len(package) - (node.level - 1)]
                if node.module is None and base:  # from . import x: the package itself runs too
                    found.add(Path(*base, "__init__").as_posix())
                names = [node.module] if node.module else [a.name for a in node.names]
                for n in names:
                    m = Path(*base, *n.split(".")).as_posix()
                    found.add(m if (package_dir / f"{m}.py").is_file() else f"{m}/__init__")
        _found[key] = {m for m in found if (package_dir / f"{m}.py").is_file()}
    return _found[key]


def code_inputs(stage: str, package_dir: Path = ROOT / "pipeline_lib") -> list[str]:
    """The files of the stage's modules and of everything they import, as paths relative to the workflow."""
    seen, todo = set(), list(STAGE_MODULES[stage])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(name, package_dir)
    return [f"pipeline_lib/{m}.py" for m in sorted(seen)]
