"""Embedded data and ingest.

The embedded data set is procedural, in one of two modalities (``data.embedded.modality``): ``otoscopy``, RGB
frames drawn here, and ``xray``, grey 16-bit chest radiographs (``pipeline_lib.xray``). ``make_image`` draws a
seeded, procedural, otoscopy-like RGB frame: a bright circular field of view on black (varying centre, radius and
offset), ear-canal skin, and a tympanic membrane whose look depends on the class, after the class descriptions
of the CLUE paper (section 4.2, Table 1):

* ``normal``: intact, translucent membrane, light reflex, malleus handle, no fluid, no perforation;
* ``ome``: fluid behind an intact membrane: amber hue of varying strength, often an air-fluid line, bubbles;
* ``com``: perforated membrane: a dark opening of varying size and place, showing red middle-ear mucosa.

Within-class variation is wide on purpose (faint amber, tiny perforations, inflamed or yellowish normal
membranes, dark retraction spots), so a classifier on real data does not reach F1 = 1. Hair-like dark curves
are optional. The ``external`` split comes from a shifted "camera": colour balance, blur and a smaller aperture,
for the cross-institution test (CLUE's AI-HUB set).

``ingest`` writes ``manifest.parquet`` (image_id, path, label, split, group, source) for the embedded set or for
the user's own images: an ImageFolder tree ``<split>/<class>/<files>``, a CSV/Parquet manifest, or HAM10000,
CheXpert or ISIC 2019 in their own layouts, optionally with another institution's external test set
(``pipeline_lib.adapters``); binary attributes (``attr_<name>`` columns: CheXpert's observations, ISIC's
artefacts, or a manifest's own) are kept beside the label.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import pandas as pd

from .adapters import (ATTRIBUTE_PREFIX, IMAGE_SUFFIXES, chexpert_manifest, external_manifest, ham10000_manifest,
                       isic2019_manifest)
from .io import log, write_parquet, write_png
from .xray import CLASSES as XRAY_CLASSES
from .xray import make_xray

SPLITS = ("train_a", "train_b", "test", "external")
NEEDED_SPLITS = ("train_a", "train_b", "test")  # every class needs images in these (external is optional)
CLASSES = ("normal", "ome", "com")
EMBEDDED_CLASSES = {"otoscopy": CLASSES, "xray": XRAY_CLASSES}  # data.embedded.modality -> its classes, in order
MANIFEST_COLUMNS = ("image_id", "path", "label", "split", "group", "source")


@dataclass(frozen=True)
class Camera:
    """Acquisition settings of one "institution"."""

    colour_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # multiplies R, G, B
    blur_sigma: float = 0.0  # Gaussian blur of the whole frame, in pixels
    aperture_scale: float = 1.0  # multiplies the field-of-view radius


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    return np.round(pts).astype(np.int32)


def _ellipse_mask(h: int, w: int, centre, axes, angle: float) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (int(round(centre[0])), int(round(centre[1]))),
                (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))), angle, 0, 360, 255, -1)
    return m.astype(np.float32) / 255.0


def _blend(img: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    """Alpha-blend a colour into ``img`` (H, W, 3) float with per-pixel ``alpha`` (H, W)."""
    return img * (1 - alpha[..., None]) + np.asarray(colour, np.float32) * alpha[..., None]


def _tint(rng: np.random.Generator) -> np.ndarray:
    """Brightness jitter times a small per-channel jitter."""
    return (rng.uniform(0.85, 1.1) * rng.uniform(0.96, 1.04, 3)).astype(np.float32)


def make_image(label: str, rng: np.random.Generator, height: int = 96, width: int = 120,
               hair_probability: float = 0.3, camera: Camera = Camera()) -> np.ndarray:
    """Draw one otoscopy-like frame of class ``label``; returns RGB uint8 (height, width, 3)."""
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Field of view: bright disc on a black frame, centre and radius vary per image.
    r_fov = rng.uniform(0.40, 0.49) * h * camera.aperture_scale
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    cy = h / 2 + rng.uniform(-0.05, 0.05) * h
    cx = float(np.clip(cx, r_fov + 1, w - r_fov - 1))
    cy = float(np.clip(cy, r_fov + 1, h - r_fov - 1)) if 2 * r_fov + 2 < h else h / 2
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r_fov

    # Ear-canal skin with vignetting towards the aperture rim (stays well above the masking threshold).
    skin = np.array([205, 140, 115], np.float32) * _tint(rng)
    shade = 1.0 - 0.45 * np.clip(dist, 0, 1) ** 2
    img = skin[None, None, :] * shade[..., None]
    img *= 1 + 0.06 * rng.standard_normal((h, w, 1)).astype(np.float32).clip(-2, 2)

    # Tympanic membrane: an ellipse near the centre of the view.
    mx, my = cx + rng.uniform(-0.15, 0.15) * r_fov, cy + rng.uniform(-0.15, 0.15) * r_fov
    ax = rng.uniform(0.50, 0.68) * r_fov
    ay = ax * rng.uniform(0.75, 0.95)
    ang = rng.uniform(0, 180)
    memb = _ellipse_mask(h, w, (mx, my), (ax, ay), ang)
    memb = cv2.GaussianBlur(memb, (0, 0), 0.8)
    pearl = np.array([190, 180, 178], np.float32) * _tint(rng)
    # Shared confounders: a yellowish or inflamed (red) membrane can occur in every class.
    if rng.random() < 0.25:
        pearl = pearl * np.array([1.05, 0.97, 0.80], np.float32)
    if rng.random() < 0.25:
        pearl = pearl * np.array([1.10, 0.80, 0.78], np.float32)
    img = _blend(img, pearl, memb * rng.uniform(0.65, 0.85))

    theta = np.deg2rad(ang)
    u = ((xx - mx) * np.cos(theta) + (yy - my) * np.sin(theta)) / ax
    v = (-(xx - mx) * np.sin(theta) + (yy - my) * np.cos(theta)) / ay

    if label == "ome":
        # Amber effusion behind the membrane, of varying strength; often an air-fluid level.
        strength = rng.uniform(0.20, 0.85)
        amber = np.array([215, 150, 55], np.float32) * _tint(rng)
        fluid = memb.copy()
        if rng.random() < 0.7:
            level = rng.uniform(-0.5, 0.4)
            fluid *= np.clip((v - level) * 6 + 0.5, 0, 1)
            line = memb * np.exp(-(((v - level) * ay) ** 2) / 0.8)
            img = _blend(img, (90, 70, 40), line * rng.uniform(0.3, 0.7))
        img = _blend(img, amber, fluid * strength)
        for _ in range(rng.integers(0, 4)):  # air bubbles
            bx, by = rng.uniform(-0.6, 0.6, 2)
            px, py = mx + bx * ax * np.cos(theta) - by * ay * np.sin(theta), my + bx * ax * np.sin(theta) + by * ay * np.cos(theta)
            ring = np.zeros((h, w), np.uint8)
            cv2.circle(ring, (int(px), int(py)), int(rng.integers(1, 4)), 255, 1)
            img = _blend(img, (235, 220, 170), ring.astype(np.float32) / 255 * 0.6)
    elif label == "com":
        # Perforation: a dark opening with red mucosa, anywhere on the membrane, small to subtotal.
        size = rng.uniform(0.18, 0.55)
        px, py = rng.uniform(-0.45, 0.45, 2) * (1 - size)
        cxp = mx + px * ax * np.cos(theta) - py * ay * np.sin(theta)
        cyp = my + px * ax * np.sin(theta) + py * ay * np.cos(theta)
        hole = _ellipse_mask(h, w, (cxp, cyp), (size * ax, size * ay * rng.uniform(0.7, 1.0)), rng.uniform(0, 180))
        hole = cv2.GaussianBlur(hole, (0, 0), 0.6) * memb
        mucosa = np.array([150, 50, 45], np.float32) * rng.uniform(0.6, 1.1)
        img = _blend(img, mucosa, hole * rng.uniform(0.75, 0.95))
        if rng.random() < 0.5:  # tympanosclerotic white patch
            patch = _ellipse_mask(h, w, (mx - px * ax, my - py * ay), (0.2 * ax, 0.15 * ay), rng.uniform(0, 180))
            img = _blend(img, (235, 230, 220), patch * memb * 0.5)

    if label != "com" or rng.random() < 0.5:
        # Malleus handle and the cone-shaped light reflex of an intact membrane.
        end = (mx + 0.6 * ax * np.cos(theta - 1.3), my + 0.6 * ay * np.sin(theta - 1.3))
        handle = np.zeros((h, w), np.uint8)
        cv2.line(handle, (int(mx), int(my)), (int(end[0]), int(end[1])), 255, 1)
        img = _blend(img, (240, 225, 210), handle.astype(np.float32) / 255 * 0.55 * memb)
        if rng.random() < 0.8:
            cone = np.clip(1 - np.abs(np.arctan2(v, u) - rng.uniform(0.3, 1.2)) * 3, 0, 1)
            cone *= ((u**2 + v**2) < 0.8).astype(np.float32) * ((u**2 + v**2) > 0.05)
            img = _blend(img, (255, 250, 245), cone * memb * rng.uniform(0.3, 0.6))
    if rng.random() < 0.2:  # retraction pocket: a small dark spot that is not a perforation
        sx, sy = mx + rng.uniform(-0.5, 0.5) * ax, my + rng.uniform(-0.5, 0.5) * ay
        spot = _ellipse_mask(h, w, (sx, sy), (0.12 * ax, 0.1 * ay), 0) * memb
        img = _blend(img, (120, 90, 85), spot * 0.5)

    # Hair-like dark curves across the view.
    if rng.random() < hair_probability:
        hair = np.zeros((h, w), np.uint8)
        for _ in range(rng.integers(1, 4)):
            p = rng.uniform([0, 0], [w, h], size=(3, 2))
            cv2.polylines(hair, [_bezier(p[0], p[1], p[2])], False, 255, int(rng.integers(1, 3)))
        img = _blend(img, (25, 18, 15), hair.astype(np.float32) / 255 * 0.85)

    img = img * np.asarray(camera.colour_gain, np.float32)
    if camera.blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), camera.blur_sigma)
    img = img + rng.normal(0, 3.0, img.shape).astype(np.float32)
    # Outside the aperture: black with faint sensor noise (well under the masking threshold of 26).
    fov = (dist <= 1.0).astype(np.float32)
    fov = cv2.GaussianBlur(fov, (0, 0), 0.7)
    img = img * fov[..., None] + rng.uniform(0, 8, (h, w, 1)).astype(np.float32) * (1 - fov[..., None])
    return np.clip(img, 0, 255).astype(np.uint8)


def _camera(cfg: Mapping[str, Any] | None) -> Camera:
    if not cfg:
        return Camera()
    return Camera(colour_gain=tuple(cfg["colour_gain"]), blur_sigma=float(cfg["blur_sigma"]),
                  aperture_scale=float(cfg["aperture_scale"]))


def image_seed(seed: int, split: str, label: str, index: int, classes=CLASSES) -> np.random.Generator:
    """A generator that depends only on (seed, split, label, index): images do not change when counts do."""
    key = [seed, SPLITS.index(split), list(classes).index(label), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def make_embedded(out_dir: str | Path, manifest_path: str | Path, cfg: Mapping[str, Any], seed: int) -> pd.DataFrame:
    """Write the embedded data set as PNGs under ``out_dir`` and its manifest; return the manifest. Otoscopy
    frames are 8-bit RGB, x-rays 16-bit grey (12 bits used)."""
    out_dir = Path(out_dir)
    manifest_path = Path(manifest_path)
    modality = cfg.get("modality", "otoscopy")
    draw, classes = {"otoscopy": make_image, "xray": make_xray}[modality], EMBEDDED_CLASSES[modality]
    rows = []
    for split in SPLITS:
        n = int(cfg["n_per_class"][split])
        camera = _camera(cfg["external_camera"]) if split == "external" else Camera()
        for label in classes:
            for i in range(n):
                image_id = f"{split}_{label}_{i:04d}"
                img = draw(label, image_seed(seed, split, label, i, classes), height=cfg["height"],
                           width=cfg["width"], hair_probability=cfg["hair_probability"], camera=camera)
                path = out_dir / split / label / f"{image_id}.png"
                write_png(img, path)
                rows.append({"image_id": image_id, "path": str(path.relative_to(manifest_path.parent)),
                             "label": label, "split": split, "group": image_id, "source": "embedded"})
    df = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    write_parquet(df, manifest_path)
    log.info("embedded %s data: %d images (%s)", modality, len(df), df.groupby("split").size().to_dict())
    return df


def check_embedded_classes(data: Mapping[str, Any]) -> None:
    """The embedded data's classes are its modality's, in its order (``data.classes`` names them)."""
    modality = data["embedded"].get("modality", "otoscopy")
    if list(data["classes"]) != list(EMBEDDED_CLASSES[modality]):
        raise ValueError(f"data.classes: the embedded {modality} data has the classes "
                         f"{list(EMBEDDED_CLASSES[modality])}, got {list(data['classes'])}")


def safe_id(*parts: str) -> str:
    """An id from path parts, safe as a file name: every character but letters, digits, '.', '-' and '_' becomes
    '_', the parts joined by '_' (``test/ome/0001.png`` -> ``test_ome_0001.png``)."""
    return "_".join(re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in parts)


def scan_imagefolder(root: str | Path) -> pd.DataFrame:
    """Build a manifest from ``<root>/<split>/<class>/<file>`` (PNG, JPEG, TIFF or DICOM). Each id is the path
    below the root, made safe for file names (``test_ome_0001.png``): the same file name in two class folders, or
    ``a.png`` beside ``a.jpg``, never collide, and ids stay the same across runs."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.path: {root} is not a folder (expected <split>/<class>/<image files>)")
    rows = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if split_dir.name not in SPLITS:
            raise ValueError(f"{split_dir}: split folder must be one of {SPLITS}, got {split_dir.name!r}")
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for f in sorted(class_dir.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    rows.append({"image_id": safe_id(split_dir.name, class_dir.name, f.name), "path": str(f.resolve()),
                                 "label": class_dir.name, "split": split_dir.name})
    if not rows:
        raise ValueError(f"{root}: no images found (expected <split>/<class>/ files ending in {IMAGE_SUFFIXES})")
    return pd.DataFrame(rows)


def read_user_manifest(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet manifest with columns path, label, split (image_id and group optional)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path: manifest {path} not found")
    if path.suffix.lower() == ".csv":
        df = pd.read_csv(path)
    elif path.suffix.lower() == ".parquet":
        df = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: manifest must be .csv or .parquet, got {path.suffix!r}")
    missing = [c for c in ("path", "label", "split") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest needs columns path, label, split; missing {missing}")
    base = path.parent
    df["path"] = [str(p if Path(p).is_absolute() else (base / p).resolve()) for p in df["path"]]
    return df


def normalise_manifest(df: pd.DataFrame, classes: list[str], origin: str) -> pd.DataFrame:
    """Check a user manifest and fill image_id, group and source; errors name ``origin`` and the bad value."""
    df = df.copy()
    df["label"] = df["label"].astype(str)
    df["split"] = df["split"].astype(str)
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    if bad_split:
        raise ValueError(f"{origin}: split must be one of {SPLITS}, got {bad_split}")
    bad_label = sorted(set(df["label"]) - set(classes))
    if bad_label:
        raise ValueError(f"{origin}: label must be one of data.classes {classes}, got {bad_label}")
    for split in NEEDED_SPLITS:
        if split not in set(df["split"]):
            raise ValueError(f"{origin}: expected images in split {split!r}, found none")
    present = set(zip(df["split"], df["label"]))
    empty = [f"{c} in {s}" for s in NEEDED_SPLITS for c in classes if (s, c) not in present]
    if empty:
        raise ValueError(f"{origin}: every class of data.classes needs images in train_a, train_b and test; "
                         f"none for {', '.join(empty)}")
    missing = [p for p in df["path"] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{origin}: {len(missing)} image files not found, first: {missing[0]}")
    if "image_id" not in df.columns:  # from the path below the files' common folder: unique per file
        common = Path(os.path.commonpath([str(Path(p).parent) for p in df["path"]]))
        df["image_id"] = [safe_id(s, *Path(p).relative_to(common).parts) for s, p in zip(df["split"], df["path"])]
    df["image_id"] = df["image_id"].astype(str)
    dup = df["image_id"][df["image_id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{origin}: image_id must be unique, duplicated: {dup[:5]}")
    if "group" not in df.columns:
        df["group"] = df["image_id"]
    df["group"] = df["group"].astype(str)
    df["source"] = "user"
    attributes = [c for c in df.columns if str(c).startswith(ATTRIBUTE_PREFIX)]  # binary attributes, kept beside
    return df[[*MANIFEST_COLUMNS, *attributes]].reset_index(drop=True)


def ingest(manifest_path: str | Path, image_dir: str | Path, params: Mapping[str, Any]) -> pd.DataFrame:
    """Entry point of the ingest rule: embedded data or the user's own images -> manifest.parquet."""
    source = params["source"]
    if source == "embedded":
        check_embedded_classes(params)
        return make_embedded(image_dir, manifest_path, params["embedded"], int(params["seed"]))
    if not params.get("path"):
        raise ValueError(f"data.path is required when data.source is {source!r}")
    if source == "imagefolder":
        df = scan_imagefolder(params["path"])
    elif source == "manifest":
        df = read_user_manifest(params["path"])
    elif source == "ham10000":
        df = ham10000_manifest(params)
    elif source == "chexpert":
        df = chexpert_manifest(params)
    elif source == "isic2019":
        df = isic2019_manifest(params)
    else:
        raise ValueError(f"data.source must be embedded, imagefolder, manifest, ham10000, chexpert or isic2019, got "
                         f"{source!r}")
    if params.get("external"):
        if (df["split"] == "external").any():
            raise ValueError(f"data.external: {params['path']} has its own external split already")
        df = pd.concat([df, external_manifest(params["external"], list(params["classes"]))], ignore_index=True)
    df = normalise_manifest(df, list(params["classes"]), str(params["path"]))
    Path(image_dir).mkdir(parents=True, exist_ok=True)
    write_parquet(df, manifest_path)
    log.info("user data from %s: %d images (%s)", params["path"], len(df), df.groupby("split").size().to_dict())
    return df
