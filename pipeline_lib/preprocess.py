"""Preprocessing: endoscopic circle masking (CLUE section 4.3), DullRazor hair removal, QC table.

Conventions: images are RGB uint8 arrays of shape (H, W, 3); coordinates are pixel coordinates of the input,
``cx`` along the width (column), ``cy`` along the height (row), origin at the top-left pixel centre; ``r`` is in
pixels. A pixel belongs to the field of view when its grey value is strictly greater than the threshold.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from .data import NEEDED_SPLITS
from .imaging import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, RECORD_KEYS, read_image
from .io import log, read_parquet, resolve_path, write_parquet, write_png

# Per image: the aperture circle, hair, status and reason; how the file was read (imaging.RECORD_KEYS).
GREY_MODES = ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I", "F", "MONOCHROME1", "MONOCHROME2")
QC_COLUMNS = ("image_id", "cx", "cy", "r", "hair_fraction", "status", "reason", *RECORD_KEYS)


def find_circle(image: np.ndarray, threshold: int = 26) -> tuple[float, float, float]:
    """Centre and radius of the maximal circle inscribed in the bright field of view (CLUE section 4.3).

    Grayscale; binarise at ``threshold``; keep the largest external contour; Euclidean distance transform of
    that filled region; the maximum of the transform is the centre and its value the radius.
    Returns ``(cx, cy, r)``; ``r == 0`` when there is no bright region at all.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    _, binary = cv2.threshold(gray, threshold, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return 0.0, 0.0, 0.0
    largest = max(contours, key=cv2.contourArea)
    region = np.zeros_like(gray)
    cv2.drawContours(region, [largest], -1, 255, thickness=cv2.FILLED)
    # OpenCV treats pixels beyond the frame as foreground; a zero border makes a field of view clipped by the
    # frame edge end there, so the circle is inscribed in the visible part.
    region = cv2.copyMakeBorder(region, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(region, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return _plateau_centre(dist, offset=1)


PLATEAU_TOLERANCE = 1e-3  # px: distances this close to the maximum are ties


def _plateau_centre(dist: np.ndarray, offset: int = 0) -> tuple[float, float, float]:
    """Centre and radius from a distance transform, independent of memory layout.

    The maximum is often a plateau of several pixels (an even-sized disc has four equal maxima), and which of
    them ``cv2.minMaxLoc`` reports depends on the buffer's alignment (its vectorised scan), so the same frame
    could be cropped differently in two runs. Here the centre is the mean position of all pixels within
    ``PLATEAU_TOLERANCE`` of the maximum when they form one compact patch (all within 1.5 px of their mean: the
    exact centre of a symmetric plateau), else the first of them in raster order.

    The radius is the square root of the nearest integer to the maximum's square: the exact Euclidean transform
    (``DIST_MASK_PRECISE``) measures sqrt(integer) distances, which OpenCV's float32 arithmetic returns with
    last-bit differences that also depend on the buffer's alignment (22.3606796 or 22.3606815 for sqrt(500))."""
    r = float(dist.max())
    ys, xs = np.nonzero(dist >= r - PLATEAU_TOLERANCE)
    cy, cx = ys.mean(), xs.mean()
    if np.hypot(ys - cy, xs - cx).max() > 1.5:
        cy, cx = ys[0], xs[0]
    return float(cx - offset), float(cy - offset), float(np.sqrt(np.round(r * r)))


KERNEL_SHAPES = {"cross": cv2.MORPH_CROSS, "rect": cv2.MORPH_RECT, "ellipse": cv2.MORPH_ELLIPSE}
INPAINT_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


def inpaint(image: np.ndarray, mask: np.ndarray, radius: int, method: str, key: str = "inpaint method") -> np.ndarray:
    """OpenCV inpainting of the non-zero pixels of ``mask`` (uint8) by Telea's or the Navier-Stokes method;
    ``key`` names the setting in the error for an unknown method."""
    if method not in INPAINT_METHODS:
        raise ValueError(f"{key} must be one of {sorted(INPAINT_METHODS)}, got {method!r}")
    return cv2.inpaint(image, mask, int(radius), INPAINT_METHODS[method])


def hair_mask(image: np.ndarray, kernel_size: int = 9, threshold: int = 10, kernel_shape: str = "cross") -> np.ndarray:
    """DullRazor's hair mask (Fig. 14 of the multi-level embedding paper): grayscale, morphological black-hat
    with a ``kernel_shape`` structuring element of ``kernel_size`` px, thresholded; uint8, 0 or 255."""
    if kernel_shape not in KERNEL_SHAPES:
        raise ValueError(f"kernel_shape must be one of {sorted(KERNEL_SHAPES)}, got {kernel_shape!r}")
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    kernel = cv2.getStructuringElement(KERNEL_SHAPES[kernel_shape], (kernel_size, kernel_size))
    blackhat = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, kernel)
    _, hair = cv2.threshold(blackhat, threshold, 255, cv2.THRESH_BINARY)
    return hair


def remove_hair(image: np.ndarray, kernel_size: int = 9, threshold: int = 10, inpaint_radius: int = 3,
                method: str = "telea", kernel_shape: str = "cross") -> tuple[np.ndarray, np.ndarray]:
    """DullRazor: the hair mask (``hair_mask``), inpainted by Telea's or the Navier-Stokes method. Returns
    ``(clean, hair_mask)``: the inpainted RGB image and the uint8 hair mask (0 or 255)."""
    hair = hair_mask(image, kernel_size, threshold, kernel_shape)
    return inpaint(image, hair, inpaint_radius, method), hair


def mask_crop_resize(image: np.ndarray, cx: float, cy: float, r: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply the circular mask, crop to its bounding rectangle, resize to ``size`` x ``size``.

    Bilinear interpolation for the image, nearest neighbour for the mask (CLUE section 4.3).
    """
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 255, thickness=-1)
    masked = cv2.bitwise_and(image, image, mask=mask)
    x, y, w, h = cv2.boundingRect(mask)
    crop, crop_mask = masked[y:y + h, x:x + w], mask[y:y + h, x:x + w]
    out = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    out_mask = cv2.resize(crop_mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return out, out_mask


# Pillow's own decompression-bomb limit is replaced by ``max_image_pixels``, which names the setting to change.
Image.MAX_IMAGE_PIXELS = None


def inspect_frame(image: np.ndarray, params: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
    """The frame to crop (hair removed when DullRazor is switched on) and the QC record of one RGB frame:
    cx, cy, r (CLUE section 4.3), hair_fraction, status (``ok`` or ``dropped``) and reason."""
    threshold, h = int(params["threshold"]), params["hair_removal"]
    # The hair mask is always measured (the QC table's hair_fraction); inpainted only when removal is on.
    hair = hair_mask(image, int(h["kernel_size"]), int(h["threshold"]), h["kernel_shape"])
    clean = inpaint(image, hair, int(h["inpaint_radius"]), h["method"]) if h["enabled"] else image
    if params.get("aperture", "circle") == "none":  # dermoscopy: the whole frame is the field of view
        h, w = image.shape[:2]
        record = {"cx": w / 2, "cy": h / 2, "r": float("nan"), "hair_fraction": float((hair > 0).mean()),
                  "status": "ok", "reason": ""}
        return clean, record
    cx, cy, r = find_circle(image, threshold)
    inside = np.zeros(image.shape[:2], np.uint8)
    if r > 0:
        cv2.circle(inside, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
    hair_fraction = float((hair > 0)[inside > 0].mean()) if inside.any() else float("nan")
    record = {"cx": cx, "cy": cy, "r": r, "hair_fraction": hair_fraction, "status": "ok", "reason": ""}
    min_r = float(params["min_radius_fraction"]) * min(image.shape[:2])
    if r <= 0:
        record.update(status="dropped", reason=f"no region brighter than threshold {threshold}")
    elif r < min_r:
        record.update(status="dropped", reason=f"radius {r:.1f} px below {params['min_radius_fraction']} of the "
                                               f"shorter image side ({min_r:.1f} px)")
    return clean, record


def preprocess_image(image: np.ndarray, params: Mapping[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None, dict]:
    """The whole preprocessing of one RGB frame, for real and synthetic images alike.

    Circle (CLUE section 4.3), optional DullRazor, circular mask, crop and resize. Returns the image, the mask
    and the QC record (cx, cy, r, hair_fraction, status, reason); image and mask are None when the frame has no
    usable aperture (status ``dropped``).
    """
    frame, record = inspect_frame(image, params)
    if record["status"] != "ok":
        return None, None, record
    out, out_mask = crop_resize(frame, record, params)
    return out, out_mask, record


def crop_resize(frame: np.ndarray, record: Mapping[str, Any], params: Mapping[str, Any]
                ) -> tuple[np.ndarray, np.ndarray]:
    """The circle's mask, crop and resize (``aperture: circle``), or the whole frame resized with a full mask
    (``aperture: none``: dermoscopy, as the multi-level paper's plain resize to 256 x 256)."""
    size = int(params["image_size"])
    if params.get("aperture", "circle") == "none":
        return (cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR),
                np.full((size, size), 255, np.uint8))
    return mask_crop_resize(frame, record["cx"], record["cy"], record["r"], size)


def _preprocess_row(task: tuple[dict, str, str, Mapping[str, Any]]) -> tuple[dict, dict | None]:
    """Worker: read, preprocess and write one image; returns its QC record and manifest row (None: not kept)."""
    row, source, out_dir, params = task
    try:
        image, read = read_image(source, int(params.get("min_image_side", MIN_IMAGE_SIDE)),
                                 int(params.get("max_image_pixels", MAX_IMAGE_PIXELS)), params.get("intensity"),
                                 params.get("dicom_frames", "error"))
    except (ValueError, FileNotFoundError) as e:
        nan = float("nan")
        return {"image_id": row["image_id"], "cx": nan, "cy": nan, "r": nan, "hair_fraction": nan,
                "status": "rejected", "reason": str(e), "bit_depth": 0, "photometric": "", "window_low": nan,
                "window_high": nan, "intensity": "", "frames": 0}, None
    if params.get("color") == "grayscale" and read["photometric"] not in GREY_MODES:
        image = as_grey(image)  # data.color: grayscale: colour images too, by their luminance
    frame, record = inspect_frame(image, params)
    record = {"image_id": row["image_id"], **record, **read}
    if record["status"] != "ok":
        return record, None
    out, out_mask = crop_resize(frame, record, params)
    write_png(out, Path(out_dir) / "images" / f"{row['image_id']}.png")
    write_png(out_mask, Path(out_dir) / "masks" / f"{row['image_id']}.png")
    lesion = None
    if params.get("lesion_masks"):
        mask_path = find_lesion_mask(params["lesion_masks"], source, row["image_id"])
        if mask_path is not None:
            crop = lesion_input(frame, load_mask(mask_path, image.shape[:2]), record, params)
            if crop is not None:
                lesion = f"lesion_crops/{row['image_id']}.png"
                write_png(crop, Path(out_dir) / lesion)
    return record, row | {"path": f"images/{row['image_id']}.png", "lesion_crop": lesion}


def as_grey(image: np.ndarray) -> np.ndarray:
    """An RGB frame as its luminance (ITU-R BT.601, OpenCV's weights) in three equal channels."""
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def data_color(qc: pd.DataFrame, setting: str) -> str:
    """``data.color``: ``auto`` is grayscale when every image that was read is grey, else rgb."""
    if setting != "auto":
        return setting
    read = qc[qc["status"] != "rejected"]
    return "grayscale" if len(read) and read["photometric"].isin(GREY_MODES).all() else "rgb"


def check_classes_kept(before: pd.DataFrame, after: pd.DataFrame, origin: str | Path) -> None:
    """Every class with images in train_a, train_b or test before preprocessing still has some there after it;
    else the error names the class, the split and how many were dropped (their reasons are in the log)."""
    had = before[before["split"].isin(NEEDED_SPLITS)].groupby(["split", "label"]).size()
    kept = after.groupby(["split", "label"]).size()
    lost = [f"{label} in {split} ({n} dropped)" for (split, label), n in had.items()
            if (split, label) not in kept.index]
    if lost:
        raise ValueError(f"{origin}: preprocessing left no usable image of {', '.join(lost)}; see the reasons "
                         f"logged for them (no aperture: preprocess.threshold / aperture; unreadable files: fix "
                         f"or remove them)")


def find_lesion_mask(folder: str | Path, source: str | Path, image_id: str) -> Path | None:
    """HAM10000 layout: ``<folder>/<name>_segmentation.png``, ``name`` the image file's stem or its image_id."""
    for name in (Path(source).stem, image_id):
        p = Path(folder) / f"{name}_segmentation.png"
        if p.is_file():
            return p
    return None


def load_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A binary lesion mask (any non-zero pixel is lesion) of the image's ``shape`` (H, W)."""
    with Image.open(path) as im:
        mask = np.asarray(im.convert("L")) > 0
    if mask.shape != tuple(shape):
        raise ValueError(f"{path}: lesion mask is {mask.shape[1]}x{mask.shape[0]} px, its image {shape[1]}x{shape[0]}")
    return mask


def lesion_crop(image: np.ndarray, mask: np.ndarray, margin: float, size: int) -> np.ndarray | None:
    """Crop to the bounding box of ``mask`` widened by ``margin`` times its size on every side (clipped to the
    image), resized bilinearly to ``size`` x ``size``; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = int(round(margin * (y1 - y0))), int(round(margin * (x1 - x0)))
    h, w = mask.shape
    crop = image[max(0, y0 - dy):min(h, y1 + dy), max(0, x0 - dx):min(w, x1 + dx)]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


LESION_INPUTS = ("masked", "box_crop")


def lesion_input(frame: np.ndarray, mask: np.ndarray, record: Mapping[str, Any], params: Mapping[str, Any]
                 ) -> np.ndarray | None:
    """The lesion image the multi-level embeddings see (``preprocess.lesion_input``): ``masked`` is the
    multi-level paper's eq. 1, x_l = x_i * m_i, the image with every pixel outside the lesion mask set to 0,
    cropped and resized as the image itself; ``box_crop`` the mask's bounding box widened by ``lesion_margin``
    and resized (the lesion with its surroundings, at full resolution). None for an empty mask."""
    kind = params.get("lesion_input", "box_crop")
    if kind not in LESION_INPUTS:
        raise ValueError(f"preprocess.lesion_input must be one of {list(LESION_INPUTS)}, got {kind!r}")
    if kind == "box_crop":
        return lesion_crop(frame, mask, float(params["lesion_margin"]), int(params["image_size"]))
    if not mask.any():
        return None
    masked = frame * (mask > 0)[..., None].astype(frame.dtype) if frame.ndim == 3 else frame * (mask > 0)
    return crop_resize(masked, record, params)[0]


def preprocess(manifest_in: str | Path, manifest_out: str | Path, qc_out: str | Path,
               params: Mapping[str, Any], threads: int | None = None) -> pd.DataFrame:
    """Entry point of the preprocess rule. Writes ``images/``, ``masks/`` and, where lesion masks are configured
    and found, ``lesion_crops/`` beside ``manifest_out``; the QC table (every input image, kept or not) and the
    preprocessed manifest (image paths relative to its folder; ``lesion_crop`` empty where there is none).

    Images are streamed: each of ``threads`` workers reads, processes and writes one image at a time, so memory
    does not grow with the data set.
    """
    df = read_parquet(manifest_in, required=("image_id", "path", "label", "split"))
    out_dir = Path(manifest_out).parent
    for sub in ("images", "masks", "lesion_crops"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    tasks = [(row, str(resolve_path(manifest_in, row["path"])), str(out_dir), params)
             for row in df.to_dict("records")]
    workers = max(1, int(threads or 1))
    # Threads, not processes: OpenCV and Pillow release the GIL in their heavy calls, and worker processes would
    # have to re-import the rule's script (spawn) or could inherit a lock held by an OpenCV thread (fork).
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1 if workers > 1 else cv_threads)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            qc_rows, kept = [], []
            # map() keeps the input order; each worker holds one image at a time.
            for record, row in tqdm(pool.map(_preprocess_row, tasks), total=len(tasks), desc="preprocess",
                                    mininterval=5):
                qc_rows.append(record)
                if row is not None:
                    kept.append(row)
    finally:
        cv2.setNumThreads(cv_threads)
    qc = pd.DataFrame(qc_rows, columns=list(QC_COLUMNS))
    grey = qc["photometric"].isin(GREY_MODES)
    if grey.any() and not grey[qc["status"] != "rejected"].all():
        log.info("preprocess: %d grayscale images among colour ones, each read as three equal channels", grey.sum())
    counts = qc["status"].value_counts().to_dict()
    log.info("preprocess: %d images: %d kept, %d dropped (no usable aperture), %d rejected (unreadable file)",
             len(qc), counts.get("ok", 0), counts.get("dropped", 0), counts.get("rejected", 0))
    bad = qc[qc["status"] != "ok"]
    if len(bad) and params["on_failure"] == "fail":
        first = bad.iloc[0]
        raise ValueError(f"{manifest_in}: {len(bad)} images were not usable (policy on_failure=fail); "
                         f"first: {first.image_id}: {first.reason}")
    for record in bad.itertuples():
        log.info("not kept: %s (%s): %s", record.image_id, record.status, record.reason)
    out_df = pd.DataFrame(kept, columns=[*df.columns, "lesion_crop"])
    out_df["color"] = data_color(qc, params.get("color", "auto"))
    log.info("data.color %s: the data set is %s", params.get("color", "auto"), out_df["color"].iloc[0] if len(out_df)
             else "empty")
    check_classes_kept(df, out_df, manifest_in)
    write_parquet(qc, qc_out)
    write_parquet(out_df, manifest_out)
    return out_df
