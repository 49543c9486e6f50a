"""The config logic of the workflow (pipeline_lib/config.py) called directly, as common.smk calls it when the
workflow is parsed: bad configs fail with the key, the value and what was expected; the grid, the rule slices
and the code inputs are what the caching promises. One Snakemake-level test (test_bad_input.py) proves the
message reaches the user."""
import copy
import re

import pytest
import yaml
from snakemake.utils import update_config

from conftest import ROOT
from pipeline_lib.config import (STAGE_MODULES, Plan, check_schema, code_inputs, drop_nulls, expand_variants)


@pytest.fixture(scope="module")
def merged(tiny_config):
    """config/config.yaml with the tiny config merged in, as `snakemake --configfile` merges them."""
    def make(edit=None) -> dict:
        cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        extra = copy.deepcopy(tiny_config)
        if edit:
            edit(extra)
        update_config(cfg, extra)
        return cfg
    return make


def _set(cfg: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        cfg = cfg[key]
    cfg[last] = value


def plan_of(merged, edits: dict | None = None) -> Plan:
    return Plan.from_config(merged(lambda cfg: [_set(cfg, k, v) for k, v in (edits or {}).items()]))


CONFIG_CASES = {  # name: ({dotted key: value}, the error expected)
    "misspelt key": ({"classify.epoch": 3},
                     r"classify: unknown key\(s\) \['epoch'\]; epoch: did you mean epochs\?"),
    "wrong type": ({"diffusion.steps": "many"}, r"diffusion.steps: 'many' is not of type 'integer'"),
    "negative count": ({"generate.samples_per_cluster": -4},
                       r"generate.samples_per_cluster: -4 is less than the minimum of 1"),
    "zero count": ({"data.embedded.n_per_class.train_a": 0},
                   r"data.embedded.n_per_class.train_a: 0 is less than the minimum of 1"),
    "every problem at once": ({"seed": -1, "classify.epochs": 0},
                              r"\(2 problem\(s\)\):\n  classify.epochs: 0 is less .*\n  seed: -1 is less"),
    "cluster count below two": ({"cluster.k_values": [1, 3]}, r"cluster.k_values.0: 1 is less than the minimum of 2"),
    "cluster counts beyond the images": ({"cluster.k_values": [2, 60]},
                                         r"cluster.k_values: 60 clusters need more than 60 images, the splits "
                                         r"\['train_a', 'train_b'\] of the embedded data hold 54"),
    "unknown conditioning": ({"diffusion.variants.class.conditioning": "style"},
                             r"diffusion.variants.class.conditioning: 'style' is not one of \['class', 'clue', "),
    "unknown variant in a setting": ({"generate.settings.cfg2.variants": ["class", "clsas"]},
                                     r"generate.settings.cfg2.variants: \['clsas'\] are not diffusion variants"),
    "CLUE setting without sigma": ({"generate.settings.sigma05.style_sigma": None},
                                   r"generate.settings \['sigma05'\]: CLUE variant 'clue' needs a `style_sigma`"),
    "missing pretrained autoencoder": ({"autoencoder.kl4.pretrained": "models/sd21/vae"},
                                       r"autoencoder.kl4.pretrained: models/sd21/vae \(from .*\): expected a local "
                                       r"folder; nothing is there"),
    "missing LPIPS weights": ({"perceptual.lpips_backbone": "models/vgg16.pth"},
                              r"perceptual.lpips_backbone: models/vgg16.pth .*expected a local file"),
    "a folder where a file is expected": ({"diffusion.text_encoder.open_clip_model": "ViT-H-14",
                                           "diffusion.text_encoder.checkpoint": "workflow"},
                                          r"diffusion.text_encoder.checkpoint: workflow .*expected a file, found a "
                                          r"folder"),
    "open_clip model without its checkpoint": ({"diffusion.image_encoder.open_clip_model": "ViT-H-14"},
                                               r"diffusion.image_encoder.checkpoint: open_clip_model is 'ViT-H-14', so "
                                               r"a local checkpoint file"),
    "missing data folder": ({"data.source": "imagefolder", "data.path": "data/otitis"},
                            r"data.path: data/otitis .*expected a local folder"),
    "data path not given": ({"data.source": "manifest"}, r"data.path: required when data.source is 'manifest'"),
    "empty count set": ({"classify.count_sets": {"none": {"real": 0, "synthetic": 0}}},
                        r"classify.count_sets.none: real and synthetic are both 0"),
    "untrained autoencoder": ({"autoencoder.kl4.steps": 0},
                              r"autoencoder.kl4.steps: 0 means a pretrained autoencoder used as it is, but "
                              r"autoencoder.kl4.pretrained is null"),
    "unknown cluster k of a variant": ({"diffusion.variants.cl.cluster_k": [2, 5]},
                                       r"diffusion.variants.cl.cluster_k: 5 is not one of cluster.k_values \[2, 3\]"),
    "joint cluster training of k-means": ({"diffusion.variants.cl.cluster_training": "joint"},
                                          r"diffusion.variants.cl.cluster_training: joint trains the cluster stage's "
                                          r"IMSAT network; cluster_method is 'kmeans'"),
    "joint cluster training on another autoencoder": (
        {"diffusion.variants.cl.cluster_training": "joint", "diffusion.variants.cl.cluster_method": "imsat",
         "diffusion.variants.cl.autoencoder": "vq4"},
        r"diffusion.variants.cl.cluster_training: joint clusters this variant's latents \(vq4\) with the cluster "
        r"stage's network, trained on cluster.autoencoder 'kl4'"),
    "stages of a joint variant": ({"diffusion.variants.cl.cluster_stages": [600, 130]},
                                  r"diffusion.variants.cl.cluster_stages: \[600, 130\] is too short"),
    "a cluster variant's trajectory": ({"trajectory.variants": ["cl"]},
                                       r"trajectory.variants: \['cl'\] are not class-conditioned diffusion variants "
                                       r"\['class', 'clue', 'ml'\]"),
    "an unknown interpolated variant": ({"interpolation.variants": ["vanilla"]},
                                        r"interpolation.variants: \['vanilla'\] are not class-conditioned"),
    "a cluster variant's classifier grid": ({"classify.variants": ["class", "cl"]},
                                            r"classify.variants: \['cl'\] are not class-conditioned diffusion "
                                            r"variants"),
    "an unknown autoencoder schedule": ({"autoencoder.kl4.lr_schedule": "step"},
                                        r"autoencoder.kl4.lr_schedule: 'step' is not one of \['constant', 'cosine'"),
    "an empty guidance interval": ({"generate.settings.cfg2.guidance_interval": [3.0, 0.5]},
                                   r"generate.settings.cfg2.guidance_interval: \[3.0, 0.5\] is not an interval "
                                   r"\[low, high\] of noise levels sigma with low < high"),
    "synthetic share beyond what is generated": ({"generate.scale": 0.5},
                                                 r"classify.ratios: 1 x the train_a images of a class are needed, "
                                                 r"generate.scale draws 0.5 x; raise generate.scale to at least 1"),
    "one class with class-conditioned variants": ({"data.classes": ["tissue"]},
                                                  r"data.classes: one class \(tissue\) means unlabelled images"),
    "a timm name misspelt": ({"classify.archs": ["small_cnn", "inceptionv3"]},
                             r"classify.archs: 'inceptionv3' is neither small_cnn nor a timm model name \(did you "
                             r"mean inception_v3"),
    "otoscopy classes on the embedded x-rays": ({"data.embedded.modality": "xray"},
                                                r"data.classes: the embedded xray data has the classes \['normal', "
                                                r"'effusion', 'cardiomegaly', 'effusion\+cardiomegaly'\], got \['normal'"),
    "a class without a prompt": ({"diffusion.prompts.com": None},
                                 r"diffusion.prompts: expected a prompt for every class of data.classes, missing "
                                 r"\['com'\]"),
    "an unknown neutral class": ({"trajectory.neutral": "healthy"},
                                 r"trajectory.neutral: 'healthy' is not one of data.classes \['normal', 'ome', 'com'\]"),
    "an unknown interpolated class": ({"interpolation.classes": ["ome", "aom"]},
                                      r"interpolation.classes: \['aom'\] not in data.classes"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_bad_config_is_an_error_naming_key_value_and_expectation(merged, case, monkeypatch):
    monkeypatch.chdir(ROOT)  # relative paths are taken from the folder Snakemake runs in
    edits, message = CONFIG_CASES[case]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        plan_of(merged, edits)


def test_the_tiny_config_expands_to_its_grid(merged, tiny_config):
    plan = plan_of(merged)
    assert list(plan.variants) == ["class", "clue", "ml", "cl"] and plan.cluster_variants == ["cl"]
    assert plan.grid == [("class", "cfg2"), ("ml", "cfg2"), ("cl", "cfg2"), ("clue", "sigma05")]
    assert list(plan.points) == ["replace_0", "replace_100", "replace_100_plus_real", "scale_100", "count_mixed"]
    assert plan.points["replace_100"] == ("replace", 1.0) and plan.points["count_mixed"] == ("count", "mixed")
    assert plan.variant_autoencoder("class") == "kl4" and plan.cluster_autoencoder == "kl4"
    assert plan.variants["cl"]["cluster_k"] == "selected" and plan.variants["cl"]["cluster_method"] == "kmeans"


def test_a_list_of_cluster_counts_is_one_variant_per_k(merged):
    cfg = merged(lambda c: _set(c, "diffusion.variants.cl.cluster_k", [2, 3]))
    drop_nulls(cfg)
    Plan.from_config(cfg)  # fills the defaults
    variants, members = expand_variants(cfg)
    assert members["cl"] == ["cl_k2", "cl_k3"] and variants["cl_k3"]["cluster_k"] == 3


def test_null_in_a_configfile_removes_the_entry(merged):
    def edit(c):
        c["trajectory"] = None
        c["diffusion"]["variants"]["ml"] = None
        c["interpolation"]["variants"] = None  # the ml variant's; null: every class-conditioned variant
        c["generate"]["settings"]["cfg2"]["variants"].remove("ml")

    cfg = merged(edit)
    plan = Plan.from_config(cfg)
    assert "trajectory" not in cfg and "ml" not in plan.variants and ("ml", "cfg2") not in plan.grid


def test_every_schema_problem_is_listed_at_once():
    cfg = {"seed": -1, "experiment": 3}
    with pytest.raises(ValueError) as err:
        check_schema(cfg)
    lines = str(err.value).splitlines()[1:]
    assert any(re.match(r"  experiment: 3 is not of type 'string'", line) for line in lines)
    assert any(line.startswith("  seed: -1 is less than the minimum of 0") for line in lines)


def test_each_rule_gets_only_the_keys_it_reads(merged, tiny_config):
    plan = plan_of(merged)
    cl, ml = plan.diffusion_params("cl"), plan.diffusion_params("ml")
    assert not {"prompts", "text_encoder", "max_prompt_length", "image_encoder", "variants"} & set(cl)
    assert "image_encoder" in ml and "prompts" in ml and "image_encoder" not in plan.diffusion_params("class")
    assert plan.diffusion_params("class")["autoencoder"] == "kl4"
    c = plan.classify_params("class", "cfg2", "1", "small_cnn", "count_mixed")
    assert not {"variants", "archs", "ratios", "scales", "count_sets"} & set(c) and c["seed"] == 1
    assert c["protocol"] == "count" and c["counts"] == tiny_config["classify"]["count_sets"]["mixed"]
    assert "scale" not in plan.generate_params("cl", "cfg2", 0) and "samples_per_cluster" in \
        plan.generate_params("cl", "cfg2", 0)
    assert "samples_per_cluster" not in plan.generate_params("class", "cfg2", 0)
    assert "guidance_interval" not in plan.generate_params("class", "cfg2", 0)  # unset: the jobs made before it stay
    assert not {"lr_schedule", "lr_warmup_steps"} & set(plan.autoencoder_params("kl4"))  # likewise the autoencoder's
    assert "pooled_prompt" not in plan.diffusion_params("class")  # off: the denoisers trained before it stay
    assert plan_of(merged, {"diffusion.pooled_prompt": True}).diffusion_params("class")["pooled_prompt"] is True
    # the perceptual section is a parameter of the autoencoders that train with the term only: the VQ-GAN, and a
    # KL-VAE given a perceptual_weight above 0
    assert "perceptual" not in plan.autoencoder_params("kl4") and "perceptual" in plan.autoencoder_params("vq4")
    perc = plan_of(merged, {"autoencoder.kl4.loss": {"perceptual_weight": 0.1}})
    assert perc.autoencoder_params("kl4")["perceptual"] == perc.config["perceptual"]
    assert "perceptual" not in plan_of(merged, {"autoencoder.kl4.loss": {"perceptual_weight": 0}}
                                       ).autoencoder_params("kl4")
    ranged = plan_of(merged, {"generate.settings.cfg2.guidance_interval": [0.5, 5.0]})
    assert ranged.generate_params("class", "cfg2", 0)["guidance_interval"] == [0.5, 5.0]
    assert ranged.trajectory_params("class", "cfg2", 0)["guidance_interval"] == [0.5, 5.0]  # the setting's sampling
    assert "guidance_interval" not in plan.trajectory_params("class", "cfg2", 0)
    assert not {"recall_k", "precision_k", "density_k", "is_splits"} & set(plan.feature_net_params())
    assert "references" not in plan.cluster_params()
    assert plan.section_variants("trajectory") == ["clue"] and plan.section_variants("interpolation") == ["ml"]
    assert "variants" not in plan.trajectory_params("clue", "sigma05", 0)  # which jobs, not what one computes
    assert "variants" not in plan.interpolation_params("ml", "cfg2", 0)
    assert "cluster_imsat" not in cl  # the cluster stage's IMSAT settings: for a joint variant only
    joint = plan_of(merged, {"diffusion.variants.cl.cluster_training": "joint",
                             "diffusion.variants.cl.cluster_method": "imsat"})
    assert joint.diffusion_params("cl")["cluster_imsat"] == tiny_config["cluster"]["imsat"]
    assert set(plan.speed()["speed"]) == {"mixed_precision", "tf32", "channels_last", "attention", "compile"}
    # the sampling precision reaches the stages that sample the denoiser, not its training nor the classifiers
    sampling = {"sampling_precision"}
    assert sampling <= set(plan.generate_params("class", "cfg2", 0)["speed"])
    assert sampling <= set(plan.trajectory_params("class", "cfg2", 0)["speed"])
    assert not sampling & set(plan.diffusion_params("class")["speed"])
    assert not sampling & set(plan.autoencoder_params(plan.autoencoders[0])["speed"])


def test_code_inputs_follow_the_imports_and_leave_out_the_stage_harness():
    diffusion = code_inputs("diffusion")
    assert {"pipeline_lib/diffusion.py", "pipeline_lib/conditioning/__init__.py", "pipeline_lib/conditioning/base.py",
            "pipeline_lib/conditioning/clue.py", "pipeline_lib/clue.py", "pipeline_lib/torchutils.py"} <= set(diffusion)
    for stage in STAGE_MODULES:
        files = code_inputs(stage)
        assert all((ROOT / f).is_file() for f in files), stage
        assert not {"pipeline_lib/harness.py", "pipeline_lib/gpu_slots.py", "pipeline_lib/config.py"} & set(files)
    assert code_inputs("ingest") == ["pipeline_lib/adapters.py", "pipeline_lib/data.py", "pipeline_lib/io.py",
                                     "pipeline_lib/xray.py"]
    assert "pipeline_lib/evaluate.py" not in code_inputs("feature_net")  # the metrics do not retrain it


def test_the_config_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, pipeline_lib.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_common_rules_file_stays_small():
    """Path constants, wildcard constraints and input functions only: the decisions live in pipeline_lib/config."""
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert len(text.splitlines()) <= 300 and "def check_" not in text and "jsonschema" not in text


def test_the_readme_dicom_example_is_a_valid_config(tmp_path, monkeypatch):
    """README.md's example for a folder of DICOM files passes the schema and plans its grid (its data folder
    stood in for by an empty one)."""
    text = (ROOT / "README.md").read_text()
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(cfg, example)
    monkeypatch.chdir(tmp_path)
    (tmp_path / example["data"]["path"]).mkdir(parents=True)
    plan = Plan.from_config(cfg)
    assert plan.classes == ["normal", "effusion"] and cfg["preprocess"]["intensity"]["rule"] == "dicom_window"


def test_the_xray_config_merges_over_the_default_into_a_valid_plan(monkeypatch):
    """config/xray.yaml as `snakemake --configfile config/xray.yaml` merges it: the default's otoscopy prompts stay
    in the merged config and are ignored; the interpolation is removed."""
    monkeypatch.chdir(ROOT)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(cfg, yaml.safe_load((ROOT / "config" / "xray.yaml").read_text()))
    plan = Plan.from_config(cfg, check_timm=False)
    assert plan.classes == ["normal", "effusion", "cardiomegaly", "effusion+cardiomegaly"]
    assert "interpolation" not in plan.config and plan.diffusion_params("class")["prompts"]["effusion+cardiomegaly"] \
        == "Chest radiograph with a pleural effusion blunting the costophrenic angle. The cardiac silhouette is enlarged."
    assert plan.config["data"]["embedded"]["modality"] == "xray" and "ome" in plan.config["diffusion"]["prompts"]
    assert plan.preprocess_params()["aperture"] == "none"


def test_attribute_set_classes_get_composed_prompts_and_trajectory_attributes(merged):
    """A class a+b without a prompt: a's prompt and b's phrase; an explicit prompt wins; trajectory attributes
    name the class <neutral>+<attribute> or <attribute>; labels must be parts of the classes."""
    from pipeline_lib.config import check_class_names, compose_prompts, fill_defaults

    edits = {"data.classes": ["mel", "nv", "mel+hair", "nv+hair"],
             "diffusion.prompts": {"mel": "A melanoma.", "nv": "A nevus.", "nv+hair": "A hairy nevus."},
             "diffusion.attribute_phrases": {"hair": "With hair."}, "trajectory.neutral": "mel",
             "trajectory.attributes": ["hair"], "trajectory.labels": ["mel", "nv"], "interpolation.classes": None}

    def checked(changes):
        cfg = fill_defaults(drop_nulls(merged(lambda c: [_set(c, k, v) for k, v in changes.items()])))
        cfg["diffusion"]["prompts"] = dict(changes["diffusion.prompts"])  # replaced, not merged with the default's
        compose_prompts(cfg)
        check_class_names(cfg)
        return cfg

    prompts = checked(edits)["diffusion"]["prompts"]
    assert prompts["mel+hair"] == "A melanoma. With hair." and prompts["nv+hair"] == "A hairy nevus."
    with pytest.raises(ValueError, match=r"trajectory.attributes: 'ink' has neither the class 'mel\+ink' nor 'ink'"):
        checked({**edits, "trajectory.attributes": ["ink"]})
    with pytest.raises(ValueError, match=r"trajectory.labels: \['bcc'\] are in no class"):
        checked({**edits, "trajectory.labels": ["bcc"]})
    with pytest.raises(ValueError, match=r"missing \['mel\+hair'\] \(a class a\+b may instead"):
        checked({**edits, "diffusion.attribute_phrases": {}})
