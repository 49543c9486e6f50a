"""Dataset adapters: HAM10000's layout with lesion-grouped splits, and an external set with a label map."""
import numpy as np
import pandas as pd
import pytest

from pipeline_lib.adapters import grouped_split
from pipeline_lib.data import ingest
from pipeline_lib.io import write_png

DX = ["mel", "nv", "bkl"]


def _ham(tmp_path, n_lesions=60):
    """A HAM10000-like folder: metadata CSV, images split over two part folders, 1-3 images per lesion."""
    rng = np.random.default_rng(0)
    rows = []
    for lesion in range(n_lesions):
        dx = DX[lesion % 3]
        for k in range(int(rng.integers(1, 4))):
            rows.append({"lesion_id": f"HAM_{lesion:07d}", "image_id": f"ISIC_{len(rows):07d}", "dx": dx,
                         "dx_type": "histo", "age": 50.0, "sex": "male", "localization": "back"})
    meta = pd.DataFrame(rows)
    root = tmp_path / "ham"
    for i, image_id in enumerate(meta["image_id"]):
        part = root / ("HAM10000_images_part_1" if i % 2 else "HAM10000_images_part_2")
        write_png(np.full((20, 20, 3), 100 + i % 100, np.uint8), part / f"{image_id}.png")
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    return root, meta


def _params(root, **extra):
    return {"source": "ham10000", "path": str(root), "classes": DX, "seed": 0,
            "ham10000": {"split_fractions": {"train_a": 0.6, "train_b": 0.2, "test": 0.2}}, "external": None, **extra}


def test_ham10000_splits_keep_each_lesion_in_one_split_near_the_fractions(tmp_path):
    root, meta = _ham(tmp_path)
    df = ingest(tmp_path / "m.parquet", tmp_path / "img", _params(root))
    assert len(df) == len(meta) and (df["group"].str.startswith("HAM_")).all()
    assert df.groupby("group")["split"].nunique().max() == 1  # no lesion in two splits
    for dx, g in df.groupby("label"):
        shares = g["split"].value_counts(normalize=True)
        assert abs(shares["train_a"] - 0.6) < 0.1 and abs(shares["test"] - 0.2) < 0.1, (dx, shares.to_dict())
    again = ingest(tmp_path / "m2.parquet", tmp_path / "img2", _params(root))
    assert df.equals(again)  # seeded
    assert not df.equals(ingest(tmp_path / "m3.parquet", tmp_path / "img3", {**_params(root), "seed": 1}))


def test_grouped_split_by_hand():
    # Two labels; groups of sizes 2, 1, 1 (label a) and 1 (label b); fractions 0.5 / 0.5: each label's images
    # are shared as evenly as whole groups allow.
    groups = pd.Series(["g1", "g1", "g2", "g3", "g4"])
    labels = pd.Series(["a", "a", "a", "a", "b"])
    split = grouped_split(groups, labels, {"x": 0.5, "y": 0.5}, seed=0)
    a = split[labels == "a"].value_counts().to_dict()
    assert sorted(a.values()) == [2, 2] and split[0] == split[1]
    with pytest.raises(ValueError, match="must be non-negative and sum to 1"):
        grouped_split(groups, labels, {"x": 0.5, "y": 0.6}, seed=0)


def test_ham10000_errors_name_file_and_value(tmp_path):
    root, meta = _ham(tmp_path, n_lesions=6)
    with pytest.raises(ValueError, match=r"diagnoses \['bkl'\] are not in data.classes"):
        ingest(tmp_path / "m.parquet", tmp_path / "i", {**_params(root), "classes": ["mel", "nv"]})
    meta.drop(columns="lesion_id").to_csv(root / "HAM10000_metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"HAM10000_metadata.csv: columns \['lesion_id'\] missing"):
        ingest(tmp_path / "m.parquet", tmp_path / "i", _params(root))
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    next(root.rglob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="1 images of the metadata have no file"):
        ingest(tmp_path / "m.parquet", tmp_path / "i", _params(root))
    with pytest.raises(FileNotFoundError, match="HAM10000_metadata.csv not found"):
        ingest(tmp_path / "m.parquet", tmp_path / "i", _params(tmp_path / "nowhere"))


def test_external_set_with_a_label_map(tmp_path):
    root, _ = _ham(tmp_path)
    pad = tmp_path / "pad"
    rows = [("PAT_1_1_1.png", "MEL"), ("PAT_2_2_2.png", "NEV"), ("PAT_3_3_3.png", "SCC"), ("PAT_4_4_4.png", "SEK")]
    for name, _ in rows:
        write_png(np.zeros((20, 20, 3), np.uint8), pad / "images" / name)
    pd.DataFrame(rows, columns=["img_id", "diagnostic"]).to_csv(pad / "metadata.csv", index=False)
    external = {"manifest": str(pad / "metadata.csv"), "images": str(pad / "images"), "id_column": "img_id",
                "label_column": "diagnostic", "label_map": {"MEL": "mel", "NEV": "nv", "SEK": "bkl", "SCC": None}}
    df = ingest(tmp_path / "m.parquet", tmp_path / "i", _params(root, external=external))
    ext = df[df["split"] == "external"].set_index("image_id")
    assert ext["label"].to_dict() == {"ext_PAT_1_1_1": "mel", "ext_PAT_2_2_2": "nv", "ext_PAT_4_4_4": "bkl"}
    with pytest.raises(ValueError, match=r"label_map: targets \['scc'\] are not in data.classes"):
        ingest(tmp_path / "m.parquet", tmp_path / "i",
               _params(root, external={**external, "label_map": {"SCC": "scc"}}))
    with pytest.raises(ValueError, match=r"column 'diagnosis' \(data.external.label_column\) not found"):
        ingest(tmp_path / "m.parquet", tmp_path / "i", _params(root, external={**external, "label_column": "diagnosis"}))
