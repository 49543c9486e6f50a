"""Dataset adapters: published data sets in their own layout -> the pipeline's manifest.

* ``ham10000``: ``<data.path>/HAM10000_metadata.csv`` (columns image_id, dx, lesion_id; the ISIC archive's
  layout) and the images ``<image_id>.jpg`` anywhere below ``data.path`` (the archive ships them in two
  folders). HAM10000 has no splits: they are drawn here, grouped by ``lesion_id`` (all images of one lesion in
  one split, so no lesion is both trained and tested on), per diagnosis, with the ``split_fractions`` shares of
  each diagnosis's images, seeded. ``group`` = lesion_id, which the leakage check also compares across splits.
* ``external`` (any source): a CSV of another institution's images for the zero-shot test (the multi-level
  paper's PAD-UFES-20: columns ``img_id`` and ``diagnostic``), its labels mapped to the data set's classes by
  ``label_map`` (a label mapped to null, or absent from the map, is left out and counted in the log).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .io import log

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")  # what the ImageFolder scan and adapters take
HAM_COLUMNS = ("image_id", "dx", "lesion_id")
GENERATIVE_SPLITS = ("train_a", "train_b", "test")


def grouped_split(groups: pd.Series, labels: pd.Series, fractions: Mapping[str, float], seed: int,
                  key: str = "data.ham10000.split_fractions") -> pd.Series:
    """A split name per row: whole groups are assigned, per label, in a seeded random order, each to the split
    whose share of that label's images is furthest below its target fraction (so the image shares approach
    ``fractions`` while a group never straddles two splits). A group with several labels goes by its first."""
    names = list(fractions)
    target = np.array([float(fractions[n]) for n in names])
    if not np.isclose(target.sum(), 1.0) or (target < 0).any():
        raise ValueError(f"{key} must be non-negative and sum to 1, got {dict(fractions)}")
    assigned: dict[str, str] = {}
    first_label = labels.groupby(groups).first()
    sizes = groups.value_counts()
    for i, label in enumerate(sorted(first_label.unique())):
        members = sorted(first_label.index[first_label == label])
        order = np.random.default_rng([seed, i]).permutation(len(members))
        counts = np.zeros(len(names))
        for j in order:
            group = members[j]
            total = counts.sum() + sizes[group]
            k = int(np.argmax(target * total - counts))  # the split furthest below its share after adding
            counts[k] += sizes[group]
            assigned[group] = names[k]
    return groups.map(assigned)


def find_images(root: Path, ids: pd.Series, suffixes=IMAGE_SUFFIXES) -> pd.Series:
    """The file of each image id below ``root`` (<image_id>.<suffix>, any depth)."""
    found = {}
    for p in root.rglob("*"):
        if p.suffix.lower() in suffixes and p.stem not in found:
            found[p.stem] = str(p.resolve())
    missing = [i for i in ids if i not in found]
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} images of the metadata have no file <image_id>.jpg|png "
                                f"below it, first: {missing[:3]}")
    return ids.map(found)


def ham10000_manifest(params: Mapping[str, Any]) -> pd.DataFrame:
    """The HAM10000 metadata as a manifest (path, label, split, image_id, group)."""
    root = Path(params["path"])
    meta_path = root / "HAM10000_metadata.csv"
    if not meta_path.is_file():
        raise FileNotFoundError(f"data.path: {meta_path} not found (expected the HAM10000 layout: "
                                f"HAM10000_metadata.csv with {', '.join(HAM_COLUMNS)} and the <image_id>.jpg files)")
    meta = pd.read_csv(meta_path)
    missing = [c for c in HAM_COLUMNS if c not in meta.columns]
    if missing:
        raise ValueError(f"{meta_path}: columns {missing} missing (expected {', '.join(HAM_COLUMNS)})")
    cfg = params["ham10000"]
    classes = list(params["classes"])
    unknown = sorted(set(meta["dx"]) - set(classes))
    if unknown:
        raise ValueError(f"{meta_path}: diagnoses {unknown} are not in data.classes {classes}")
    split = grouped_split(meta["lesion_id"].astype(str), meta["dx"].astype(str), cfg["split_fractions"],
                          int(params["seed"]))
    df = pd.DataFrame({"image_id": meta["image_id"].astype(str), "label": meta["dx"].astype(str), "split": split,
                       "group": meta["lesion_id"].astype(str),
                       "path": find_images(root, meta["image_id"].astype(str))})
    log.info("HAM10000: %d images of %d lesions; images per split and class:\n%s", len(df), df["group"].nunique(),
             df.groupby(["split", "label"]).size().unstack(fill_value=0).to_string())
    return df


ATTRIBUTE_PREFIX = "attr_"  # manifest columns of binary attributes (0 / 1) beside the label


def _csv(path: Path, key: str, needed: Sequence[str], layout: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} not found (expected {layout})")
    table = pd.read_csv(path)
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} missing ({key}; its columns: {list(table.columns)})")
    return table


def chexpert_manifest(params: Mapping[str, Any]) -> pd.DataFrame:
    """CheXpert (Irvin et al. 2019) as a manifest: the CSVs' ``Path`` (relative to ``data.path``, or to the CSV's
    folder without its first part, as CheXpert-v1.0-small/train.csv writes them), the view filter on
    ``Frontal/Lateral``, the chosen observation columns as attributes, labelled 1 / 0 / -1 (uncertain) / blank (not
    mentioned: 0). ``uncertainty``: ``ignore`` (U-Ignore) leaves out images uncertain in a chosen attribute,
    ``ones`` / ``zeros`` (U-Ones, U-Zeros) read -1 as 1 / 0. The label is the set of attributes present: the
    ``neutral`` class with none (with ``neutral_requires_no_finding``, only images whose No Finding is 1), an
    attribute's name with one, ``a+b`` with several; images whose label is not in data.classes are left out (the
    log counts them). Splits are drawn per label with whole patients (``patientNNNNN`` in the path)."""
    root, cfg, classes = Path(params["path"]), params["chexpert"], list(params["classes"])
    attributes = dict(cfg["attributes"])
    frames = []
    for name in cfg["csv"]:
        table = _csv(root / name, "data.chexpert.csv", ["Path", "Frontal/Lateral", *attributes.values()],
                     "CheXpert's train.csv / valid.csv with Path, Frontal/Lateral and the observation columns")
        table["csv_folder"] = str((root / name).parent)
        frames.append(table)
    meta = pd.concat(frames, ignore_index=True)
    n_read = len(meta)
    meta = meta[meta["Frontal/Lateral"].isin(cfg["views"])]
    values = meta[list(attributes.values())].fillna(0.0)
    uncertain = (values == -1).any(axis=1)
    if cfg["uncertainty"] == "ignore":
        meta, values = meta[~uncertain], values[~uncertain]
    else:
        values = values.replace(-1.0, 1.0 if cfg["uncertainty"] == "ones" else 0.0)
    present = values.to_numpy() == 1.0
    names = list(attributes)
    labels = ["+".join(n for n, p in zip(names, row) if p) or cfg["neutral"] for row in present]
    meta = meta.assign(label=labels)
    attr = pd.DataFrame(present.astype(int), columns=[f"{ATTRIBUTE_PREFIX}{n}" for n in names], index=meta.index)
    keep = meta["label"].isin(classes)
    if cfg["neutral_requires_no_finding"] and "No Finding" in meta.columns:
        keep &= (meta["label"] != cfg["neutral"]) | (meta["No Finding"] == 1.0)
    log.info("CheXpert: %d rows read, %d of views %s, %d uncertain (%s); kept %d, left out by label: %s", n_read,
             int(uncertain.size), cfg["views"], int(uncertain.sum()), cfg["uncertainty"], int(keep.sum()),
             meta.loc[~keep, "label"].value_counts().to_dict())
    meta, attr = meta[keep], attr[keep]
    if meta.empty:
        raise ValueError(f"{root}: no CheXpert image has a label among data.classes {classes} (labels found: "
                         f"{sorted(set(labels))})")
    paths = [_chexpert_file(root, Path(folder), p) for folder, p in zip(meta["csv_folder"], meta["Path"])]
    patient = meta["Path"].str.extract(r"(patient\d+)", expand=False).fillna(meta["Path"])
    split = grouped_split(patient, meta["label"], cfg["split_fractions"], int(params["seed"]),
                          "data.chexpert.split_fractions")
    ids = [str(Path(*Path(p).parts[-3:]).with_suffix("")).replace("/", "_") for p in meta["Path"]]
    return pd.concat([pd.DataFrame({"image_id": ids, "path": paths, "label": meta["label"].to_numpy(),
                                    "split": split.to_numpy(), "group": patient.to_numpy()}),
                      attr.reset_index(drop=True)], axis=1)


def _chexpert_file(root: Path, csv_folder: Path, path: str) -> str:
    """CheXpert's Path is relative to the folder above CheXpert-v1.0(-small): below data.path, or below the CSV's
    folder once the first part (that folder's own name) is dropped."""
    for candidate in (root / path, csv_folder / Path(*Path(path).parts[1:])):
        if candidate.is_file():
            return str(candidate.resolve())
    return str(root / path)  # not there: normalise_manifest names the missing files


def isic2019_manifest(params: Mapping[str, Any]) -> pd.DataFrame:
    """ISIC 2019 as a manifest: ``ISIC_2019_Training_GroundTruth.csv`` (image and one column per diagnosis, one-hot)
    gives the label (the lower-case diagnosis; only ``diagnoses`` are kept), the metadata CSV (if given) the lesion
    id that keeps a lesion's images in one split, and an artefact-annotation CSV (image and a 0 / 1 column per
    artefact: hair, gel_bubble, ink, ruler, ...) the attribute columns; with ``attribute_labels`` the label is the
    diagnosis and the artefacts present (``mel+hair``: an attribute-set class; others left out and counted).
    Images ``<image>.jpg`` below data.path."""
    root, cfg, classes = Path(params["path"]), params["isic2019"], list(params["classes"])
    truth = _csv(root / cfg["ground_truth"], "data.isic2019.ground_truth", ["image", *cfg["diagnoses"]],
                 "ISIC_2019_Training_GroundTruth.csv: image and one-hot diagnosis columns")
    onehot = truth[list(cfg["diagnoses"])].to_numpy() == 1.0
    truth = truth[onehot.any(axis=1)].copy()
    truth["label"] = [cfg["diagnoses"][i].lower() for i in onehot[onehot.any(axis=1)].argmax(axis=1)]
    unknown = sorted(set(truth["label"]) - {c.split("+")[0] for c in classes})
    if unknown:
        raise ValueError(f"{root / cfg['ground_truth']}: diagnoses {unknown} (data.isic2019.diagnoses) are not in "
                         f"data.classes {classes}")
    truth["group"] = truth["image"].astype(str)
    if cfg.get("metadata"):
        meta = _csv(root / cfg["metadata"], "data.isic2019.metadata", ["image", "lesion_id"],
                    "ISIC_2019_Training_Metadata.csv with image and lesion_id")
        lesion = meta.set_index("image")["lesion_id"]
        truth["group"] = truth["image"].map(lesion).fillna(truth["image"]).astype(str)
    df = pd.DataFrame({"image_id": truth["image"].astype(str), "label": truth["label"], "group": truth["group"]})
    if cfg.get("artefacts"):
        names = list(cfg["attributes"])
        art = _csv(root / cfg["artefacts"], "data.isic2019.artefacts", ["image", *names],
                   "an artefact-annotation CSV: image and a 0 / 1 column per artefact")
        art = art.set_index("image")[names].reindex(df["image_id"])
        unannotated = art.index[art.isna().any(axis=1)]
        if len(unannotated):
            raise ValueError(f"{root / cfg['artefacts']}: no artefact annotation for {len(unannotated)} images, "
                             f"first: {unannotated[0]}")
        for n in names:
            df[f"{ATTRIBUTE_PREFIX}{n}"] = art[n].astype(int).to_numpy()
        if cfg.get("attribute_labels"):  # the label: the diagnosis and the artefacts present (mel+hair+ruler)
            present = art[names].to_numpy() == 1
            df["label"] = ["+".join([dx, *(n for n, p in zip(names, row) if p)])
                           for dx, row in zip(df["label"], present)]
            keep = df["label"].isin(classes)
            log.info("ISIC 2019: %d images kept, left out by label: %s", int(keep.sum()),
                     df.loc[~keep, "label"].value_counts().to_dict())
            df = df[keep].reset_index(drop=True)
    df["split"] = grouped_split(df["group"], df["label"], cfg["split_fractions"], int(params["seed"]),
                                "data.isic2019.split_fractions").to_numpy()
    df["path"] = find_images(root, df["image_id"]).to_numpy()
    log.info("ISIC 2019: %d images of %s; per split and class:\n%s", len(df), list(cfg["diagnoses"]),
             df.groupby(["split", "label"]).size().unstack(fill_value=0).to_string())
    return df


def external_manifest(cfg: Mapping[str, Any], classes: list[str]) -> pd.DataFrame:
    """The external test set (split ``external``) from ``cfg``: a CSV (``manifest``) with an image id column
    (``id_column``) and a label column (``label_column``), images ``<id>`` or ``<id>.<suffix>`` below ``images``,
    labels mapped to the classes by ``label_map``."""
    path = Path(cfg["manifest"])
    if not path.is_file():
        raise FileNotFoundError(f"data.external.manifest: {path} not found")
    meta = pd.read_csv(path)
    cfg = {"id_column": "img_id", "label_column": "diagnostic", **cfg}  # PAD-UFES-20's column names by default
    for key in ("id_column", "label_column"):
        if cfg[key] not in meta.columns:
            raise ValueError(f"{path}: column {cfg[key]!r} (data.external.{key}) not found; "
                             f"columns: {list(meta.columns)}")
    mapping = dict(cfg.get("label_map") or {})
    bad = sorted({v for v in mapping.values() if v is not None} - set(classes))
    if bad:
        raise ValueError(f"data.external.label_map: targets {bad} are not in data.classes {classes}")
    raw = meta[cfg["label_column"]].astype(str)
    labels = raw.map(mapping) if mapping else raw
    keep = labels.notna() & labels.isin(classes)
    dropped = raw[~keep].value_counts().to_dict()
    if dropped:
        log.info("external set: left out (no class in data.external.label_map): %s", dropped)
    ids = meta.loc[keep, cfg["id_column"]].astype(str).map(lambda s: Path(s).stem)
    images = Path(cfg["images"]) if cfg.get("images") else path.parent
    return pd.DataFrame({"image_id": "ext_" + ids, "label": labels[keep].astype(str), "split": "external",
                         "group": "ext_" + ids, "path": find_images(images, ids)}).reset_index(drop=True)
