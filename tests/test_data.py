import numpy as np
import pandas as pd
import pytest

from pipeline_lib.data import CLASSES, EMBEDDED_CLASSES, Camera, image_seed, ingest, make_image
from pipeline_lib.imaging import read_image
from pipeline_lib.xray import MAX_VALUE, make_xray
from pipeline_lib.preprocess import find_circle


def test_make_image_is_seeded_and_shaped():
    a = make_image("ome", image_seed(0, "train_a", "ome", 3), height=64, width=80)
    b = make_image("ome", image_seed(0, "train_a", "ome", 3), height=64, width=80)
    c = make_image("ome", image_seed(0, "train_a", "ome", 4), height=64, width=80)
    assert a.shape == (64, 80, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_field_of_view_is_a_bright_circle_on_black():
    img = make_image("normal", image_seed(1, "test", "normal", 0), height=96, width=120)
    cx, cy, r = find_circle(img)
    assert 0.3 * 96 < r < 0.5 * 96
    assert img[0, 0].max() < 26 and img[-1, -1].max() < 26  # corners are black
    assert img[int(cy), int(cx)].mean() > 60  # the centre is bright


def test_classes_differ_in_the_expected_direction():
    # OME adds amber (red - blue up); COM opens a dark red perforation (more dark-red pixels).
    def mean_over(label, fn):
        return np.mean([fn(make_image(label, image_seed(0, "train_a", label, i))) for i in range(30)])

    def amber(im):
        return (im[..., 0].astype(float) - im[..., 2]).mean()

    def dark_red(im):
        return ((im[..., 0] > 70) & (im[..., 1] < 70) & (im[..., 0] > 1.8 * im[..., 1])).mean()

    assert mean_over("ome", amber) > mean_over("normal", amber)
    assert mean_over("com", dark_red) > 2 * mean_over("normal", dark_red)


def test_external_camera_shifts_colour_and_aperture():
    rng_args = ("normal", 0)
    base = make_image(rng_args[0], image_seed(0, "external", *rng_args))
    shifted = make_image(rng_args[0], image_seed(0, "external", *rng_args),
                         camera=Camera((1.1, 1.0, 0.8), 1.0, 0.8))
    assert find_circle(shifted)[2] < find_circle(base)[2]
    assert shifted[..., 2].mean() < base[..., 2].mean()


def test_unknown_label_is_an_error():
    with pytest.raises(ValueError, match="label must be one of"):
        make_image("otitis", np.random.default_rng(0))


def _embedded_params(n=2):
    return {"source": "embedded", "path": None, "classes": list(CLASSES), "seed": 0,
            "embedded": {"height": 48, "width": 60, "hair_probability": 0.5,
                         "n_per_class": {"train_a": n, "train_b": 1, "test": 1, "external": 1},
                         "external_camera": {"colour_gain": [1.1, 1.0, 0.9], "blur_sigma": 1.0, "aperture_scale": 0.8}}}


def test_ingest_embedded_writes_manifest_and_pngs(tmp_path):
    df = ingest(tmp_path / "manifest.parquet", tmp_path / "images", _embedded_params())
    back = pd.read_parquet(tmp_path / "manifest.parquet")
    assert list(back.columns) == ["image_id", "path", "label", "split", "group", "source"]
    assert len(back) == 3 * (2 + 1 + 1 + 1) and back["image_id"].is_unique
    assert set(back["split"]) == {"train_a", "train_b", "test", "external"}
    assert all((tmp_path / p).is_file() for p in df["path"])


XRAY = EMBEDDED_CLASSES["xray"]


def _xray(label, i, split="train_a", **kw):
    return make_xray(label, image_seed(0, split, label, i, XRAY), **kw)


def test_xray_is_seeded_grey_and_12_bit():
    a, b, c = _xray("effusion", 3, height=64, width=64), _xray("effusion", 3, height=64, width=64), _xray("effusion", 4)
    assert a.shape == (64, 64) and a.dtype == np.uint16 and c.shape == (96, 96)
    assert a.max() <= MAX_VALUE and a.max() > 2000  # 12 bits used of the 16
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - _xray("effusion", 4, height=64, width=64).astype(int)).mean() > 20
    with pytest.raises(ValueError, match="label must be one of"):
        make_xray("ome", np.random.default_rng(0))


def test_xray_findings_show_their_signs():
    # An effusion whitens the lung bases; an enlarged heart whitens the lungs' medial lower zones beside the spine.
    def mean_over(label, rows, cols):
        return np.mean([np.concatenate([_xray(label, i)[rows, c].ravel() for c in cols]).mean() for i in range(30)])

    bases = (slice(62, 80), [slice(8, 30), slice(66, 88)])
    both = "effusion+cardiomegaly"  # both findings, drawn independently
    beside_heart = (slice(50, 66), [slice(20, 34), slice(62, 76)])
    assert mean_over("effusion", *bases) > 1.08 * max(mean_over("normal", *bases), mean_over("cardiomegaly", *bases))
    assert mean_over("cardiomegaly", *beside_heart) > 1.08 * mean_over("normal", *beside_heart)
    assert mean_over(both, *bases) > 1.08 * mean_over("cardiomegaly", *bases)
    assert mean_over(both, *beside_heart) > mean_over("effusion", *beside_heart)


def test_xray_external_detector_lowers_exposure_and_blurs():
    base = _xray("normal", 0, "external")
    shifted = _xray("normal", 0, "external", camera=Camera((0.8, 0.8, 0.8), 1.0, 0.85))
    assert shifted.mean() < 0.85 * base.mean()
    edges = [np.abs(np.diff(im.astype(float), axis=1)).mean() for im in (base, shifted)]
    assert edges[1] < edges[0]


def test_ingest_embedded_xray_writes_16_bit_grey_pngs(tmp_path):
    params = _embedded_params(1) | {"classes": list(XRAY)}
    params["embedded"] |= {"modality": "xray", "height": 48, "width": 48}
    df = ingest(tmp_path / "manifest.parquet", tmp_path / "images", params)
    assert set(df["label"]) == set(XRAY) and len(df) == 4 * 4
    image, record = read_image(tmp_path / df["path"].iloc[0], intensity={"rule": "percentile", "percentiles": [0.5, 99.5]})
    assert record["photometric"] == "I;16" and record["bit_depth"] == 16 and image.shape == (48, 48, 3)
    with pytest.raises(ValueError, match=r"data.classes: the embedded xray data has the classes \['normal', "
                                         r"'effusion', 'cardiomegaly', 'effusion\+cardiomegaly'\], got \['normal'"):
        ingest(tmp_path / "m2.parquet", tmp_path / "images2", params | {"classes": list(CLASSES)})


def _write_tree(root, splits=("train_a", "train_b", "test")):
    import cv2

    for split in splits:
        for label in ("normal", "ome"):
            d = root / split / label
            d.mkdir(parents=True)
            cv2.imwrite(str(d / f"{label}1.png"), make_image(label, np.random.default_rng(0), 40, 40))
    return root


def test_ingest_imagefolder(tmp_path):
    root = _write_tree(tmp_path / "tree")
    params = {"source": "imagefolder", "path": str(root), "classes": ["normal", "ome"], "seed": 0}
    df = ingest(tmp_path / "m.parquet", tmp_path / "img", params)
    assert len(df) == 6 and set(df["source"]) == {"user"}
    assert df["image_id"].is_unique


def test_ingest_manifest_csv_and_its_errors(tmp_path):
    root = _write_tree(tmp_path / "tree")
    rows = [{"path": str(p.relative_to(tmp_path)), "label": p.parent.name, "split": p.parent.parent.name}
            for p in sorted(root.rglob("*.png"))]
    csv = tmp_path / "list.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    df = ingest(tmp_path / "m.parquet", tmp_path / "img",
                {"source": "manifest", "path": str(csv), "classes": ["normal", "ome"], "seed": 0})
    assert len(df) == 6
    with pytest.raises(ValueError, match=r"label must be one of data.classes \['normal'\], got \['ome'\]"):
        ingest(tmp_path / "m2.parquet", tmp_path / "img",
               {"source": "manifest", "path": str(csv), "classes": ["normal"], "seed": 0})
    pd.DataFrame(rows).drop(columns="split").to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"list.csv: manifest needs columns path, label, split; missing \['split'\]"):
        ingest(tmp_path / "m3.parquet", tmp_path / "img",
               {"source": "manifest", "path": str(csv), "classes": ["normal", "ome"], "seed": 0})
    assert not (tmp_path / "m2.parquet").exists() and not (tmp_path / "m3.parquet").exists()


def test_ingest_imagefolder_errors(tmp_path):
    root = _write_tree(tmp_path / "tree", splits=("train_a", "validation"))
    with pytest.raises(ValueError, match="split folder must be one of"):
        ingest(tmp_path / "m.parquet", tmp_path / "img",
               {"source": "imagefolder", "path": str(root), "classes": ["normal", "ome"], "seed": 0})
    with pytest.raises(ValueError, match="data.path is required"):
        ingest(tmp_path / "m.parquet", tmp_path / "img", {"source": "imagefolder", "path": None,
                                                          "classes": ["normal"], "seed": 0})
