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
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .io import log

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")  # what the ImageFolder scan and adapters take
HAM_COLUMNS = ("image_id", "dx", "lesion_id")
GENERATIVE_SPLITS = ("train_a", "train_b", "test")


def grouped_split(groups: pd.Series, labels: pd.Series, fractions: Mapping[str, float], seed: int) -> pd.Series:
    """A split name per row: whole groups are assigned, per label, in a seeded random order, each to the split
    whose share of that label's images is furthest below its target fraction (so the image shares approach
    ``fractions`` while a group never straddles two splits). A group with several labels goes by its first."""
    names = list(fractions)
    target = np.array([float(fractions[n]) for n in names])
    if not np.isclose(target.sum(), 1.0) or (target < 0).any():
        raise ValueError(f"data.ham10000.split_fractions must be non-negative and sum to 1, got {dict(fractions)}")
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
