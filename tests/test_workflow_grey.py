"""The tiny workflow end to end on grayscale data sets as users have them: an ImageFolder tree of 16-bit grey PNGs
and one of DICOM files (both made here from the embedded images), through Snakemake. Cut to one variant and one
seed: the full DAG is test_workflow.py's; this shows the grey path reaches every stage."""
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


@pytest.fixture(scope="module")
def grey_trees(tmp_path_factory, tiny_config):
    """The tiny embedded images as grey 16-bit PNGs and as 12-bit DICOM files, each <split>/<class>/<file>."""
    from pipeline_lib.data import ingest

    root = tmp_path_factory.mktemp("grey")
    manifest = ingest(root / "rgb" / "manifest.parquet", root / "rgb" / "images", {**tiny_config["data"], "seed": 0})
    for row in manifest.itertuples():
        rgb = np.asarray(Image.open(root / "rgb" / row.path).convert("L"), dtype=np.uint16)
        for kind, name in (("png16", f"{row.image_id}.png"), ("dicom", f"{row.image_id}.dcm")):
            folder = root / kind / row.split / row.label
            folder.mkdir(parents=True, exist_ok=True)
            if kind == "png16":
                Image.fromarray(rgb * 257).save(folder / name)  # 0..255 -> 0..65535
            else:
                write_dicom(folder / name, rgb * 16, window=(2048, 4096))  # 12 bits stored, the whole range
    return root


def _run(work: Path, cfg: dict) -> subprocess.CompletedProcess:
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("kind, photometric, bits, rule", [("png16", "I;16", 16, "percentile"),
                                                          ("dicom", "MONOCHROME2", 12, "dicom_window")])
def test_tiny_workflow_on_a_grey_image_folder(grey_trees, tmp_path, tiny_config, kind, photometric, bits, rule):
    cfg = yaml.safe_load(yaml.safe_dump(tiny_config))
    cfg["data"] |= {"source": "imagefolder", "path": str(grey_trees / kind)}
    cfg["generate"]["seeds"] = [0]
    cfg["generate"]["settings"] = {"cfg2": {"guidance_scale": 2.0, "variants": ["class"]}, "sigma05": None}
    cfg["diffusion"]["variants"] |= {"clue": None, "ml": None, "cl": None}
    cfg["autoencoder"]["vq4"] = None
    cfg["classify"] |= {"ratios": [0.0, 1.0], "hybrid": False, "scales": [], "count_sets": {"mixed": None}}
    cfg |= {"cluster": None, "trajectory": None, "interpolation": None}
    work = copy_workflow(tmp_path)
    _run(work, cfg)
    res = work / "results" / tiny_config["experiment"]
    qc = pd.read_parquet(res / "preprocess" / "qc.parquet")
    assert (qc["photometric"] == photometric).all() and (qc["bit_depth"] == bits).all()
    assert (qc["intensity"] == rule).all() and (qc["status"] == "ok").mean() > 0.9
    ids = pd.read_parquet(res / "data" / "manifest.parquet")["image_id"]
    assert ids.str.endswith(".png" if kind == "png16" else ".dcm").all()  # the file name, extension included
    pre = np.asarray(Image.open(next((res / "preprocess" / "images").glob("*.png"))))
    assert pre.ndim == 3 and (pre[..., 0] == pre[..., 1]).all() and (pre[..., 1] == pre[..., 2]).all()
    assert (pd.read_parquet(res / "preprocess" / "manifest.parquet")["color"] == "grayscale").all()  # data.color auto
    generated = sorted((res / "generate" / "class" / "cfg2" / "seed0" / "images").glob("*.png"))
    assert generated and all(Image.open(f).mode == "L" for f in generated)  # saved as single-channel PNG
    scores = pd.read_parquet(res / "report" / "classify_summary.parquet")
    f1 = scores[(scores["metric"] == "f1_macro") & (scores["test_set"] == "test")].set_index("point")["mean"]
    assert set(f1.index) == {"replace_0", "replace_100"} and f1.between(0, 1).all()
    quality = pd.read_parquet(res / "report" / "evaluate_summary.parquet")
    assert np.isfinite(quality.loc[quality["metric"] == "fid", "mean"]).all()
