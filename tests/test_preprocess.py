import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline_lib.data import CLASSES, ingest
from pipeline_lib.preprocess import find_circle, mask_crop_resize, preprocess, remove_hair


def disc_image(h=80, w=100, cx=55, cy=38, r=30, value=200):
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (cx, cy), r, (value, value, value), -1)
    return img


def test_find_circle_recovers_a_drawn_disc():
    cx, cy, r = find_circle(disc_image())
    assert cx == pytest.approx(55, abs=1) and cy == pytest.approx(38, abs=1)
    assert r == pytest.approx(30, abs=1.5)


def test_find_circle_uses_the_largest_region_and_threshold():
    img = disc_image()
    cv2.circle(img, (8, 8), 5, (255, 255, 255), -1)  # a small bright blob elsewhere is ignored
    assert find_circle(img)[0] == pytest.approx(55, abs=1)
    dim = disc_image(value=26)  # not strictly above the threshold: no field of view
    assert find_circle(dim, threshold=26) == (0.0, 0.0, 0.0)
    assert find_circle(dim, threshold=25)[2] > 25


def test_find_circle_of_a_clipped_disc_is_the_inscribed_circle():
    # A disc cut by the frame edge: the maximal inscribed circle is smaller than the disc.
    img = disc_image(h=60, w=100, cx=50, cy=30, r=40)
    cx, cy, r = find_circle(img)
    assert r == pytest.approx(30, abs=1.5) and cy == pytest.approx(29.5, abs=1.5)


def test_find_circle_rejects_grey_input():
    with pytest.raises(ValueError, match=r"expected an RGB uint8 image of shape \(H, W, 3\)"):
        find_circle(np.zeros((10, 10), np.uint8))


def test_mask_crop_resize_geometry():
    img = disc_image()
    out, mask = mask_crop_resize(img, 55, 38, 30, 32)
    assert out.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert set(np.unique(mask)) <= {0, 255}  # nearest-neighbour keeps the mask binary
    assert out[0, 0].max() == 0 and out[16, 16].min() > 150


def test_remove_hair_finds_and_inpaints_a_dark_line():
    img = disc_image(value=180)
    cv2.line(img, (30, 20), (80, 60), (20, 20, 20), 2)
    clean, hair = remove_hair(img, kernel_size=9, threshold=10)
    assert hair[40, 55] == 255 and hair.mean() / 255 < 0.1
    assert clean[40, 55].mean() > 120
    with pytest.raises(ValueError, match="inpaint method must be one of"):
        remove_hair(img, method="fast")


def _params(**kw):
    p = {"threshold": 26, "image_size": 24, "min_radius_fraction": 0.1, "on_failure": "drop",
         "hair_removal": {"enabled": True, "kernel_size": 9, "threshold": 10, "inpaint_radius": 3, "method": "telea"}}
    p.update(kw)
    return p


def _manifest_with_a_black_frame(tmp_path):
    params = {"source": "embedded", "path": None, "classes": list(CLASSES), "seed": 0,
              "embedded": {"height": 48, "width": 60, "hair_probability": 0.5,
                           "n_per_class": {"train_a": 1, "train_b": 1, "test": 1, "external": 1},
                           "external_camera": {"colour_gain": [1, 1, 1], "blur_sigma": 0, "aperture_scale": 0.8}}}
    df = ingest(tmp_path / "data" / "manifest.parquet", tmp_path / "data" / "images", params)
    cv2.imwrite(str(tmp_path / "data" / df["path"].iloc[0]), np.zeros((48, 60, 3), np.uint8))
    return tmp_path / "data" / "manifest.parquet", df


def test_preprocess_stage_records_every_image(tmp_path):
    manifest, df = _manifest_with_a_black_frame(tmp_path)
    out = tmp_path / "pre"
    kept = preprocess(manifest, out / "manifest.parquet", out / "qc.parquet", _params())
    qc = pd.read_parquet(out / "qc.parquet")
    assert list(qc.columns) == ["image_id", "cx", "cy", "r", "hair_fraction", "status", "reason"]
    assert len(qc) == len(df) and (qc["status"] == "dropped").sum() == 1
    assert "no region brighter than threshold 26" in qc.loc[qc["status"] == "dropped", "reason"].iloc[0]
    assert len(kept) == len(df) - 1
    img = cv2.imread(str(out / kept["path"].iloc[0]))
    assert img.shape == (24, 24, 3)


def test_preprocess_fail_policy_names_the_image_and_writes_nothing(tmp_path):
    manifest, df = _manifest_with_a_black_frame(tmp_path)
    out = tmp_path / "pre"
    with pytest.raises(ValueError, match=f"first: {df['image_id'].iloc[0]}: no region brighter"):
        preprocess(manifest, out / "manifest.parquet", out / "qc.parquet", _params(on_failure="fail"))
    assert not (out / "manifest.parquet").exists() and not (out / "qc.parquet").exists()
