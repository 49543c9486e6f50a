"""The tiny workflow end to end on grayscale data sets: the embedded x-rays (16-bit grey PNGs, data.embedded.modality
xray; two attributes, alone and together, traversed from normal) and the same radiographs as an ImageFolder tree of
DICOM files, as users have them, through Snakemake. Cut to one variant and one seed: the full DAG is
test_workflow.py's; this shows the grey path reaches every stage."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import copy_workflow
from test_imaging import write_dicom

pytestmark = pytest.mark.slow
XRAY_PROMPTS = {"normal": "Clear lungs.", "effusion": "Pleural effusion.", "cardiomegaly": "Enlarged heart."}
XRAY_CLASSES = [*XRAY_PROMPTS, "effusion+cardiomegaly"]  # its prompt composed: "Pleural effusion. Enlarged heart."


@pytest.fixture(scope="module")
def xray_config(tiny_config):
    """The tiny config on the embedded x-rays (what config/xray.yaml does to the default), cut to one variant and
    one seed."""
    cfg = yaml.safe_load(yaml.safe_dump(tiny_config))
    cfg["data"]["classes"] = XRAY_CLASSES
    cfg["data"]["embedded"] |= {"modality": "xray", "height": 48, "width": 48}
    cfg["preprocess"] |= {"aperture": "none", "intensity": {"rule": "percentile", "percentiles": [0.5, 99.5]}}
    cfg["diffusion"] |= {"prompts": XRAY_PROMPTS, "attribute_phrases": {"cardiomegaly": "Enlarged heart."}}
    cfg["generate"]["seeds"] = [0]
    cfg["generate"]["settings"] = {"cfg2": {"guidance_scale": 2.0, "variants": ["class"]}, "sigma05": None}
    cfg["diffusion"]["variants"] |= {"clue": None, "ml": None, "cl": None}
    cfg["autoencoder"]["vq4"] = None
    cfg["classify"] |= {"ratios": [0.0, 1.0], "hybrid": False, "scales": [], "count_sets": {"mixed": None}}
    cfg["trajectory"] |= {"neutral": "normal", "samples": 4, "swap_fractions": [0.0, 0.5], "alphas": [0.5, 1.0],
                          "variants": None}  # the tiny config's clue variant is cut
    return cfg | {"cluster": None, "interpolation": None}


@pytest.fixture(scope="module")
def dicom_tree(tmp_path_factory, xray_config):
    """The tiny embedded x-rays as 12-bit DICOM files, <split>/<class>/<file>, each with a window of its own."""
    from pipeline_lib.data import ingest

    root = tmp_path_factory.mktemp("xray")
    manifest = ingest(root / "png" / "manifest.parquet", root / "png" / "images", {**xray_config["data"], "seed": 0})
    for row in manifest.itertuples():
        pixels = np.asarray(Image.open(root / "png" / row.path), dtype=np.uint16)
        folder = root / "dicom" / row.split / row.label
        folder.mkdir(parents=True, exist_ok=True)
        low, high = np.percentile(pixels, [1, 99])
        write_dicom(folder / f"{row.image_id}.dcm", pixels, window=((low + high) / 2, high - low))
    return root / "dicom"


def _run(work: Path, cfg: dict, targets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile", "config.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("kind, photometric, bits, rule", [("embedded", "I;16", 16, "percentile"),
                                                          ("dicom", "MONOCHROME2", 12, "dicom_window")])
def test_tiny_workflow_on_grey_x_rays(xray_config, dicom_tree, tmp_path, kind, photometric, bits, rule):
    cfg = yaml.safe_load(yaml.safe_dump(xray_config))
    if kind == "dicom":
        cfg["data"] |= {"source": "imagefolder", "path": str(dicom_tree)}
        cfg["preprocess"]["intensity"]["rule"] = "dicom_window"
        cfg["trajectory"] = None  # the embedded case runs it
    work = copy_workflow(tmp_path)
    # DICOM differs from the embedded PNGs up to preprocessing: run it to the generated set; the embedded case to
    # the report.
    gen_dir = f"results/{cfg['experiment']}/generate/class/cfg2/seed0"
    _run(work, cfg, (f"{gen_dir}/manifest.parquet",) if kind == "dicom" else ())
    res = work / "results" / cfg["experiment"]
    qc = pd.read_parquet(res / "preprocess" / "qc.parquet")
    assert (qc["photometric"] == photometric).all() and (qc["bit_depth"] == bits).all()
    assert (qc["intensity"] == rule).all() and (qc["status"] == "ok").all()
    ids = pd.read_parquet(res / "data" / "manifest.parquet")["image_id"]
    assert ids.str.endswith(".dcm").all() if kind == "dicom" else ids.str.startswith("train_a_").any()
    pre = np.asarray(Image.open(next((res / "preprocess" / "images").glob("*.png"))))
    assert pre.ndim == 3 and (pre[..., 0] == pre[..., 1]).all() and (pre[..., 1] == pre[..., 2]).all()
    assert (pd.read_parquet(res / "preprocess" / "manifest.parquet")["color"] == "grayscale").all()  # data.color auto
    gen = pd.read_parquet(res / "generate" / "class" / "cfg2" / "seed0" / "manifest.parquet")
    assert set(gen["label"]) == set(XRAY_CLASSES) and (gen["color"] == "grayscale").all()
    generated = sorted((res / "generate" / "class" / "cfg2" / "seed0" / "images").glob("*.png"))
    assert generated and all(Image.open(f).mode == "L" for f in generated)  # saved as single-channel PNG
    if kind == "dicom":
        return
    scores = pd.read_parquet(res / "report" / "classify_summary.parquet")
    f1 = scores[(scores["metric"] == "f1_macro") & (scores["test_set"] == "test")].set_index("point")["mean"]
    assert set(f1.index) == {"replace_0", "replace_100"} and f1.between(0, 1).all()
    quality = pd.read_parquet(res / "report" / "evaluate_summary.parquet")
    assert np.isfinite(quality.loc[quality["metric"] == "fid", "mean"]).all()
    if kind == "embedded":  # two attributes from normal, each edit keeping the other: the poster's table
        traj = pd.read_parquet(res / "report" / "trajectory_summary.parquet")
        assert set(traj["attribute"]) == {"effusion", "cardiomegaly"}
        assert traj[["swap_cfrt_mean", "interpolation_cfrt_mean"]].stack().between(0, 1).all()
