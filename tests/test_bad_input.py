"""Bad input fails early with an error that names the file, key or value and what was expected.

Image files are checked when they are read (preprocessing, before any training): an unusable one is a recorded
rejection in qc.parquet (policy `on_failure: drop`) or the error itself (`fail`). Manifests are checked at
ingest, the configuration when the workflow is parsed, before any job starts (its cases: test_config). More cases
live beside the code they concern: test_preprocess (grey, 16-bit, transparent, truncated JPEG, empty files, no
aperture), test_data and test_adapters (unknown labels and splits, missing columns, HAM10000 and external-set
errors), test_workflow (unknown config key, unknown timm arch, generation grid errors), test_io (writes)."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import copy_workflow
from pipeline_lib.data import ingest
from pipeline_lib.imaging import read_image
from pipeline_lib.preprocess import preprocess


def disc(h=60, w=60):
    """A bright disc on black: a usable frame."""
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.uint8)
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 2 - 2) ** 2] = (180, 120, 100)
    return img


# --- image files ------------------------------------------------------------------------------------------------

def test_corrupt_png_names_the_file(tmp_path):
    bad = tmp_path / "noise.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"noise.png: cannot be decoded as an image .*expected a PNG, JPEG, TIFF or DICOM file"):
        read_image(bad)[0]


def test_truncated_png_names_the_file(tmp_path):
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.png: cannot be decoded as an image"):
        read_image(cut)[0]


def test_very_small_image_names_its_size_and_the_setting(tmp_path):
    Image.fromarray(disc(20, 24)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"small.png: 24 x 20 px, its shorter side is under "
                                         r"preprocess.min_image_side \(32 px\)"):
        read_image(tmp_path / "small.png")[0]
    assert read_image(tmp_path / "small.png", min_side=16)[0].shape == (20, 24, 3)


def test_very_large_image_is_refused_from_its_header_before_decoding(tmp_path):
    """20,000 x 20,000 px (400 MP, 1.2 GB decoded) against the default limit of 100 MP: refused from the header."""
    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")
    assert (tmp_path / "huge.png").stat().st_size < 5_000_000
    with pytest.raises(ValueError, match=r"huge.png: 20000 x 20000 px = 400.0 MP, above "
                                         r"preprocess.max_image_pixels \(100 MP\)"):
        read_image(tmp_path / "huge.png")[0]


def _manifest(tmp_path, images: dict[str, np.ndarray | bytes], label="normal") -> Path:
    """A manifest of the given files (train_a), plus one usable image per split for the other splits."""
    rows = []
    for name, content in images.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else Image.fromarray(content).save(path)
        rows.append({"image_id": path.stem, "path": str(path), "label": label, "split": "train_a"})
    for split in ("train_b", "test"):
        Image.fromarray(disc()).save(tmp_path / f"{split}.png")
        rows.append({"image_id": split, "path": str(tmp_path / f"{split}.png"), "label": label, "split": split})
    df = pd.DataFrame(rows).assign(group=lambda d: d["image_id"], source="user")
    df.to_parquet(tmp_path / "manifest.parquet")
    return tmp_path / "manifest.parquet"


PRE = {"threshold": 26, "image_size": 16, "min_radius_fraction": 0.1, "on_failure": "drop",
       "hair_removal": {"enabled": False, "kernel_size": 9, "kernel_shape": "cross", "threshold": 10,
                        "inpaint_radius": 3, "method": "telea"}}


def test_size_limits_are_recorded_rejections_in_qc(tmp_path):
    manifest = _manifest(tmp_path, {"ok.png": disc(), "tiny.png": disc(16, 16), "wide.png": disc(40, 400)})
    kept = preprocess(manifest, tmp_path / "pre" / "m.parquet", tmp_path / "pre" / "qc.parquet",
                      {**PRE, "max_image_pixels": 10_000})
    qc = pd.read_parquet(tmp_path / "pre" / "qc.parquet").set_index("image_id")
    assert set(kept["image_id"]) == {"ok", "train_b", "test"}
    assert qc.loc["tiny", "status"] == "rejected" and "shorter side is under" in qc.loc["tiny", "reason"]
    assert qc.loc["wide", "status"] == "rejected" and "above preprocess.max_image_pixels" in qc.loc["wide", "reason"]


def test_a_class_emptied_by_preprocessing_is_an_error_naming_class_and_split(tmp_path):
    manifest = _manifest(tmp_path, {"black.png": np.zeros((60, 60, 3), np.uint8), "empty.png": b""})
    with pytest.raises(ValueError, match=r"preprocessing left no usable image of normal in train_a \(2 dropped\)"):
        preprocess(manifest, tmp_path / "pre" / "m.parquet", tmp_path / "pre" / "qc.parquet", PRE)
    assert not (tmp_path / "pre" / "m.parquet").exists() and not (tmp_path / "pre" / "qc.parquet").exists()


# --- manifests --------------------------------------------------------------------------------------------------

def _user_manifest(tmp_path, rows) -> dict:
    for r in rows:
        if not (tmp_path / r["path"]).exists():
            Image.fromarray(disc()).save(tmp_path / r["path"])
    pd.DataFrame(rows).to_csv(tmp_path / "list.csv", index=False)
    return {"source": "manifest", "path": str(tmp_path / "list.csv"), "classes": ["normal", "ome"], "seed": 0}


def _rows():
    return [{"image_id": f"{s}_{c}", "path": f"{s}_{c}.png", "label": c, "split": s}
            for s in ("train_a", "train_b", "test") for c in ("normal", "ome")]


@pytest.mark.parametrize("case, edit, message", [
    ("duplicate ids", lambda rows: rows[1].update(image_id="train_a_normal"),
     r"list.csv: image_id must be unique, duplicated: \['train_a_normal'\]"),
    ("empty class", lambda rows: rows.remove(rows[5]),
     r"list.csv: every class of data.classes needs images in train_a, train_b and test; none for ome in test"),
    ("missing split", lambda rows: [rows.remove(r) for r in [r for r in rows if r["split"] == "train_b"]],
     r"list.csv: expected images in split 'train_b', found none"),
    ("label outside the classes", lambda rows: rows[0].update(label="com"),
     r"label must be one of data.classes \['normal', 'ome'\], got \['com'\]"),
    ("image file not found", lambda rows: rows.append({**rows[0], "image_id": "gone", "path": "gone.png"}),
     r"list.csv: 1 image files not found, first: .*gone.png"),
])
def test_bad_manifest_is_an_error_at_ingest(tmp_path, case, edit, message):
    rows = _rows()
    params = _user_manifest(tmp_path, rows)
    edit(rows)
    pd.DataFrame(rows).to_csv(tmp_path / "list.csv", index=False)
    if case == "image file not found":
        (tmp_path / "gone.png").unlink(missing_ok=True)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ingest(tmp_path / "out" / "manifest.parquet", tmp_path / "out" / "images", params)
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_cluster_counts_beyond_the_images_fail_before_clustering(tiny_manifest, tiny_config):
    from pipeline_lib.cluster.fit import cluster_stage

    params = {**tiny_config["cluster"], "k_values": [2, 60], "seed": 0, "device": "cpu",
              "classes": tiny_config["data"]["classes"]}
    with pytest.raises(ValueError, match=r"cluster.k_values: 60 clusters need more than 60 images, the splits "
                                         r"\['train_a', 'train_b'\] of .*manifest.parquet hold 54"):
        cluster_stage(tiny_manifest, "no-autoencoder-needed", "i.parquet", "s.parquet", "a.parquet", params)


# --- the configuration, checked when the workflow is parsed -----------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("bad_config"))


@pytest.mark.slow  # Snakemake in a subprocess
def test_a_bad_config_stops_snakemake_with_the_message(work, tiny_config):
    """The config cases themselves are unit tests of pipeline_lib.config (tests/test_config.py); this one shows
    the message reaches a user who runs the workflow, before any job."""
    cfg = yaml.safe_load(yaml.safe_dump(tiny_config))
    cfg["classify"]["epoch"] = 3
    (work / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "bad.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-2000:]
    assert re.search(r"classify: unknown key\(s\) \['epoch'\]; epoch: did you mean epochs\?", text), text[-3000:]
    assert not (work / "results").exists()  # nothing ran
