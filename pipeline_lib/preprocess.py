"""Preprocessing: endoscopic circle masking (CLUE section 4.3), DullRazor hair removal, QC table.

Conventions: images are RGB uint8 arrays of shape (H, W, 3); coordinates are pixel coordinates of the input,
``cx`` along the width (column), ``cy`` along the height (row), origin at the top-left pixel centre; ``r`` is in
pixels. A pixel belongs to the field of view when its grey value is strictly greater than the threshold.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from .data import resolve_path
from .io import log, read_parquet, read_rgb, write_parquet, write_png

QC_COLUMNS = ("image_id", "cx", "cy", "r", "hair_fraction", "status", "reason")


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
    _, r, _, (cx, cy) = cv2.minMaxLoc(dist)
    return float(cx - 1), float(cy - 1), float(r)


def remove_hair(image: np.ndarray, kernel_size: int = 9, threshold: int = 10, inpaint_radius: int = 3,
                method: str = "telea") -> tuple[np.ndarray, np.ndarray]:
    """DullRazor (Fig. 14 of the multi-level embedding paper): black-hat, threshold, inpaint.

    Returns ``(clean, hair_mask)``: the inpainted RGB image and the uint8 hair mask (0 or 255).
    """
    methods = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
    if method not in methods:
        raise ValueError(f"inpaint method must be one of {sorted(methods)}, got {method!r}")
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (kernel_size, kernel_size))
    blackhat = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, kernel)
    _, hair = cv2.threshold(blackhat, threshold, 255, cv2.THRESH_BINARY)
    clean = cv2.inpaint(image, hair, inpaint_radius, methods[method])
    return clean, hair


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


def preprocess(manifest_in: str | Path, manifest_out: str | Path, qc_out: str | Path,
               params: Mapping[str, Any]) -> pd.DataFrame:
    """Entry point of the preprocess rule. Writes ``images/`` and ``masks/`` beside ``manifest_out``, the QC
    table and the preprocessed manifest (image paths relative to its folder)."""
    df = read_parquet(manifest_in, required=("image_id", "path", "label", "split"))
    image_dir = Path(manifest_out).parent
    size, threshold = int(params["image_size"]), int(params["threshold"])
    hair_cfg = params["hair_removal"]
    qc_rows, kept = [], []
    for row in tqdm(df.itertuples(index=False), total=len(df), desc="preprocess", mininterval=5):
        img = read_rgb(resolve_path(manifest_in, row.path))
        cx, cy, r = find_circle(img, threshold)
        _, hair = remove_hair(img, hair_cfg["kernel_size"], hair_cfg["threshold"], hair_cfg["inpaint_radius"],
                              hair_cfg["method"])
        inside = np.zeros(img.shape[:2], np.uint8)
        if r > 0:
            cv2.circle(inside, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
        hair_fraction = float((hair > 0)[inside > 0].mean()) if inside.any() else float("nan")
        min_r = float(params["min_radius_fraction"]) * min(img.shape[:2])
        if r <= 0:
            status, reason = "dropped", f"no region brighter than threshold {threshold}"
        elif r < min_r:
            status, reason = "dropped", f"radius {r:.1f} px below {params['min_radius_fraction']} of the image side"
        else:
            status, reason = "ok", ""
        qc_rows.append({"image_id": row.image_id, "cx": cx, "cy": cy, "r": r, "hair_fraction": hair_fraction,
                        "status": status, "reason": reason})
        if status != "ok":
            continue
        if hair_cfg["enabled"]:
            img, _ = remove_hair(img, hair_cfg["kernel_size"], hair_cfg["threshold"], hair_cfg["inpaint_radius"],
                                 hair_cfg["method"])
        out, out_mask = mask_crop_resize(img, cx, cy, r, size)
        write_png(out, image_dir / "images" / f"{row.image_id}.png")
        write_png(out_mask, image_dir / "masks" / f"{row.image_id}.png")
        kept.append(row._asdict() | {"path": str(Path("images") / f"{row.image_id}.png")})
    qc = pd.DataFrame(qc_rows, columns=list(QC_COLUMNS))
    dropped = qc[qc["status"] != "ok"]
    log.info("preprocess: %d kept, %d dropped", len(kept), len(dropped))
    if len(dropped) and params["on_failure"] == "fail":
        first = dropped.iloc[0]
        raise ValueError(f"{manifest_in}: {len(dropped)} images have no usable aperture (policy on_failure=fail); "
                         f"first: {first.image_id}: {first.reason}")
    write_parquet(qc, qc_out)
    out_df = pd.DataFrame(kept, columns=list(df.columns))
    write_parquet(out_df, manifest_out)
    return out_df
