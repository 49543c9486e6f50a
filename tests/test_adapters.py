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


CHEXPERT = {"csv": ["CheXpert-v1.0-small/train.csv"], "views": ["Frontal"],
            "attributes": {"pleural_effusion": "Pleural Effusion", "support_devices": "Support Devices"},
            "uncertainty": "ignore", "neutral": "no_finding", "neutral_requires_no_finding": True,
            "split_fractions": {"train_a": 0.6, "train_b": 0.2, "test": 0.2}}
CXR_CLASSES = ["no_finding", "pleural_effusion", "support_devices"]


def _chexpert(tmp_path):
    """A CheXpert-v1.0-small-like folder: train.csv as CheXpert writes it (Path below the folder above, 1 / 0 /
    -1 / blank observations) and the JPEGs it names; per patient two frontal studies and a lateral view."""
    root = tmp_path / "cxr"
    rows = []
    # (effusion, devices, no finding) per patient: 6 neutral, 6 effusion, 6 devices, 5 both, 3 uncertain effusion.
    kinds = [(None, None, 1.0)] * 6 + [(1.0, 0.0, None)] * 6 + [(None, 1.0, None)] * 6 + [(1.0, 1.0, None)] * 5 + \
        [(-1.0, None, None)] * 3
    for p, (eff, dev, nf) in enumerate(kinds):
        for study, view in ((1, "frontal"), (2, "frontal"), (1, "lateral")):
            rel = f"CheXpert-v1.0-small/train/patient{p:05d}/study{study}/view{1 if view == 'frontal' else 2}_{view}.jpg"
            write_png(np.full((40, 40, 3), 30 + 7 * p, np.uint8), (root / rel).with_suffix(".png"))
            (root / rel).with_suffix(".png").rename(root / rel)  # a JPEG name, as CheXpert's (decoded by content)
            rows.append({"Path": rel, "Sex": "Female", "Age": 60, "Frontal/Lateral": view.capitalize(),
                         "AP/PA": "AP" if view == "frontal" else None, "No Finding": nf, "Cardiomegaly": None,
                         "Pleural Effusion": eff, "Support Devices": dev})
    pd.DataFrame(rows).to_csv(root / "CheXpert-v1.0-small" / "train.csv", index=False)
    return root


def test_chexpert_views_uncertainty_attributes_and_patient_grouped_splits(tmp_path):
    root = _chexpert(tmp_path)
    params = {"source": "chexpert", "path": str(root), "classes": CXR_CLASSES, "seed": 0, "chexpert": CHEXPERT,
              "external": None}
    df = ingest(tmp_path / "m.parquet", tmp_path / "img", params)
    assert len(df) == 2 * 18  # frontal only; both-attribute and uncertain patients left out
    assert df["label"].value_counts().to_dict() == {c: 12 for c in CXR_CLASSES}
    assert df.groupby("group")["split"].nunique().max() == 1 and df["group"].str.match(r"patient\d{5}$").all()
    assert set(df["split"]) == {"train_a", "train_b", "test"} and df["image_id"].is_unique
    assert (df.loc[df["label"] == "pleural_effusion", ["attr_pleural_effusion", "attr_support_devices"]] ==
            [1, 0]).all().all()
    assert (df.loc[df["label"] == "no_finding", ["attr_pleural_effusion", "attr_support_devices"]] == 0).all().all()
    # U-Ones: the uncertain effusions count as effusions; with the combination as a class, both are kept.
    ones = ingest(tmp_path / "m1.parquet", tmp_path / "img1",
                  params | {"classes": [*CXR_CLASSES, "pleural_effusion+support_devices"],
                            "chexpert": CHEXPERT | {"uncertainty": "ones"}})
    assert ones["label"].value_counts()["pleural_effusion"] == 2 * 9
    assert ones["label"].value_counts()["pleural_effusion+support_devices"] == 2 * 5
    # U-Zeros: uncertain effusion is none; without No Finding = 1 those are not neutral either.
    zeros = ingest(tmp_path / "m0.parquet", tmp_path / "img0", params | {"chexpert": CHEXPERT | {"uncertainty": "zeros"}})
    assert zeros["label"].value_counts()["no_finding"] == 12
    lateral = ingest(tmp_path / "ml.parquet", tmp_path / "imgl",
                     params | {"chexpert": CHEXPERT | {"views": ["Frontal", "Lateral"]}})
    assert len(lateral) == 3 * 18


def test_chexpert_errors_name_the_file_and_column(tmp_path):
    root = _chexpert(tmp_path)
    params = {"source": "chexpert", "path": str(root), "classes": CXR_CLASSES, "seed": 0, "external": None}
    with pytest.raises(ValueError, match=r"train.csv: columns \['Edema'\] missing"):
        ingest(tmp_path / "m.parquet", tmp_path / "img", params | {"chexpert": CHEXPERT | {"attributes": {"edema": "Edema"}}})
    with pytest.raises(FileNotFoundError, match=r"data.chexpert.csv: .*valid.csv not found"):
        ingest(tmp_path / "m.parquet", tmp_path / "img",
               params | {"chexpert": CHEXPERT | {"csv": ["CheXpert-v1.0-small/valid.csv"]}})


def _isic(tmp_path, n=24):
    root = tmp_path / "isic"
    truth, meta, art = [], [], []
    for i in range(n):
        image = f"ISIC_{i:07d}"
        dx = ("MEL", "NV", "BCC")[i % 3]
        truth.append({"image": image, **{d: float(d == dx) for d in ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC",
                                                                     "SCC", "UNK")}})
        meta.append({"image": image, "age_approx": 50, "lesion_id": f"lesion_{i // 2}"})
        art.append({"image": image, "dark_corner": 0, "hair": i % 2, "gel_bubble": int(i % 4 == 0), "ink": 0,
                    "ruler": int(i % 5 == 0), "patches": 0})
        write_png(np.full((20, 20, 3), 50 + i, np.uint8), root / "ISIC_2019_Training_Input" / f"{image}.png")
    pd.DataFrame(truth).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame(meta).to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    pd.DataFrame(art).to_csv(root / "artefacts.csv", index=False)
    return root


def test_isic2019_diagnoses_lesion_groups_and_artefact_attributes(tmp_path):
    root = _isic(tmp_path)
    cfg = {"ground_truth": "ISIC_2019_Training_GroundTruth.csv", "metadata": "ISIC_2019_Training_Metadata.csv",
           "artefacts": "artefacts.csv", "diagnoses": ["MEL", "NV"], "attributes": ["hair", "gel_bubble", "ink", "ruler"],
           "split_fractions": {"train_a": 0.5, "train_b": 0.25, "test": 0.25}}
    params = {"source": "isic2019", "path": str(root), "classes": ["mel", "nv"], "seed": 0, "isic2019": cfg,
              "external": None}
    df = ingest(tmp_path / "m.parquet", tmp_path / "img", params)
    assert len(df) == 16 and set(df["label"]) == {"mel", "nv"}  # BCC left out
    assert df.groupby("group")["split"].nunique().max() == 1  # a lesion's two images in one split
    art = pd.read_csv(root / "artefacts.csv").set_index("image")
    for name in cfg["attributes"]:
        assert (df[f"attr_{name}"].to_numpy() == art.loc[df["image_id"], name].to_numpy()).all()
    combos = ingest(tmp_path / "mc.parquet", tmp_path / "img", params | {
        "classes": ["mel", "nv", "mel+hair", "nv+hair"], "isic2019": cfg | {"attributes": ["hair"], "attribute_labels": True}})
    assert set(combos["label"]) == {"mel", "nv", "mel+hair", "nv+hair"} and len(combos) == 16
    assert ((combos["attr_hair"] == 1) == combos["label"].str.endswith("+hair")).all()
    with pytest.raises(ValueError, match=r"diagnoses \['bcc'\] .* are not in data.classes"):
        ingest(tmp_path / "m2.parquet", tmp_path / "img", params | {"isic2019": cfg | {"diagnoses": ["MEL", "NV", "BCC"]}})
