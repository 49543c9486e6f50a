"""Leakage guard: no test or external image may reach the training of a generative model, the feature network
or a classifier, neither under its own id nor as a copy.

The splits each training stage reads are restricted to train_a / train_b by the config schema and again by the
stages themselves. ``check_data`` runs after preprocessing and before any training (every training rule takes
its table as an input): no held-out image (test, external) shares with a training image (train_a, train_b) its
image id, its group (a patient or lesion id, e.g.
HAM10000's lesion_id), the SHA-256 of its raw file or the SHA-256 of its preprocessed pixels (a copy saved
again, or a frame that preprocesses to the same image). ``check_training_set`` runs in every classifier job on
the images it is about to train on: each real one must be a train_a image whose pixels match no held-out image.
Any violation is an error listing the offending pairs; nothing is written then.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
import numpy as np
import pandas as pd

from .io import log, read_parquet, read_rgb, resolve_path, write_parquet

TRAINING_SPLITS = ("train_a", "train_b")
HELD_OUT_SPLITS = ("test", "external")


def pixel_hash(image: np.ndarray) -> str:
    """SHA-256 of an image's shape and pixel values."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def image_hashes(raw_manifest: str | Path, manifest: str | Path) -> pd.DataFrame:
    """image_id, split, group, file_sha256 (the raw file) and pixel_sha256 (the preprocessed image) of every
    preprocessed image."""
    raw = read_parquet(raw_manifest, required=("image_id", "path"))
    df = read_parquet(manifest, required=("image_id", "path", "split", "group"))
    raw_path = dict(zip(raw["image_id"], raw["path"]))
    return pd.DataFrame({
        "image_id": df["image_id"], "split": df["split"], "group": df["group"].astype(str),
        "file_sha256": [file_hash(resolve_path(raw_manifest, raw_path[i])) for i in df["image_id"]],
        "pixel_sha256": [pixel_hash(read_rgb(resolve_path(manifest, p))) for p in df["path"]]})


def _shared(train: pd.DataFrame, held: pd.DataFrame, column: str) -> list[str]:
    """'<train id> = <held-out id> (<column> <value>)' for every pair sharing ``column``."""
    common = sorted(set(train[column]) & set(held[column]))
    pairs = []
    for value in common:
        a = train.loc[train[column] == value, "image_id"].tolist()
        b = held.loc[held[column] == value, "image_id"].tolist()
        pairs += [f"{x} = {y} ({column} {str(value)[:12]})" for x in a for y in b]
    return pairs


def leakage_checks(hashes: pd.DataFrame) -> pd.DataFrame:
    """One row per check: check, subject, n_violations, examples (up to five pairs)."""
    rows = []
    train = hashes[hashes["split"].isin(TRAINING_SPLITS)]
    held = hashes[hashes["split"].isin(HELD_OUT_SPLITS)]
    for column, what in (("image_id", "image id"), ("group", "group"), ("file_sha256", "raw file content"),
                         ("pixel_sha256", "preprocessed pixels")):
        pairs = _shared(train, held, column)
        rows.append({"check": f"held-out {what}", "subject": f"{len(train)} training vs {len(held)} held-out images",
                     "n_violations": len(pairs), "examples": "; ".join(pairs[:5])})
    return pd.DataFrame(rows)


def check_data(raw_manifest: str | Path, manifest: str | Path, table_out: str | Path, hashes_out: str | Path
               ) -> pd.DataFrame:
    """Entry point of the leakage rule: the checks above, written only if none fails."""
    hashes = image_hashes(raw_manifest, manifest)
    table = leakage_checks(hashes)
    failed = table[table["n_violations"] > 0]
    if len(failed):
        lines = "\n".join(f"  {r.check} ({r.subject}): {r.n_violations}: {r.examples}" for r in failed.itertuples())
        raise ValueError(f"{manifest}: test or external images would reach training:\n{lines}\n"
                         f"Remove one image of each pair, or put the images of one group in one split.")
    write_parquet(hashes, hashes_out)
    write_parquet(table, table_out)
    log.info("leakage checks passed:\n%s", table[["check", "subject", "n_violations"]].to_string(index=False))
    return table


def check_training_set(used: pd.DataFrame, hashes: str | Path | pd.DataFrame, where: str) -> None:
    """A classifier's training images (image_id, origin real / synthetic): the real ones are train_a images
    whose pixels match no held-out image; no synthetic id is a held-out id."""
    h = read_parquet(hashes) if not isinstance(hashes, pd.DataFrame) else hashes
    split = dict(zip(h["image_id"], h["split"]))
    held_pixels = set(h.loc[h["split"].isin(HELD_OUT_SPLITS), "pixel_sha256"])
    pixels = dict(zip(h["image_id"], h["pixel_sha256"]))
    real = used.loc[used["origin"] == "real", "image_id"]
    wrong = [f"{i} ({split.get(i, 'not in the manifest')})" for i in real if split.get(i) != "train_a"]
    copies = [i for i in real if pixels.get(i) in held_pixels]
    held_ids = {i for i, s in split.items() if s in HELD_OUT_SPLITS}
    synthetic = [i for i in used.loc[used["origin"] == "synthetic", "image_id"] if i in held_ids]
    problems = ([f"real images not from train_a: {wrong[:5]}"] if wrong else []) \
        + ([f"real images identical to held-out ones: {copies[:5]}"] if copies else []) \
        + ([f"synthetic ids that are held-out ids: {synthetic[:5]}"] if synthetic else [])
    if problems:
        raise ValueError(f"{where}: the classifier training set leaks: " + "; ".join(problems))
