"""The embedded data's grayscale sibling (``data.embedded.modality: xray``): seeded, procedural frontal chest
radiographs, written as 12-bit values in 16-bit grey PNGs, so the grey and 16-bit paths of the pipeline
(``pipeline_lib.imaging``: the percentile window; ``data.color: auto`` -> grayscale) are what the tests run.

A frame (PA view, the patient's right on the image's left) has air around a thorax of soft tissue, two dark lung
fields with vessel markings fanning out from the hila, hemidiaphragm domes, posterior ribs and clavicles, the
spine and mediastinum, and the heart shadow. Intensities follow the display convention of a MONOCHROME2
radiograph: dense (bone, fluid, heart) is bright, air is dark. The classes are two CheXpert findings, alone or
together, drawn after their radiographic signs:

* ``normal``: cardiothoracic ratio (heart width over thoracic width) 0.38 .. 0.52, sharp costophrenic angles;
* ``effusion``: pleural effusion: a homogeneous opacity at the base of one or both lungs with a meniscus that rises
  towards the chest wall, from a blunted costophrenic angle to a third of the lung;
* ``cardiomegaly``: cardiothoracic ratio 0.50 .. 0.68 (above 0.5 is the usual threshold);
* ``effusion+cardiomegaly``: both, drawn independently (an attribute-set class: the trajectory traversal's
  "other attributes unchanged" condition has another attribute to keep).

The classes overlap on purpose (a shallow inspiration raises the diaphragm and widens a normal heart; a small
effusion is a blunted angle that a normal frame can also show faintly), so a classifier on real data does not
reach F1 = 1. ``hair_probability`` is, for this modality, the share of frames with overlying ECG electrodes and
lead wires (the radiograph's nuisance curves). The ``external`` camera is another detector: the mean of
``colour_gain`` multiplies the exposure, ``blur_sigma`` blurs, ``aperture_scale`` scales the patient in the frame.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

CLASSES = ("normal", "effusion", "cardiomegaly", "effusion+cardiomegaly")  # the last: both findings
MAX_VALUE = 4095  # 12 bits stored, as most computed and digital radiography detectors


def _curve(img: np.ndarray, pts: np.ndarray, value: float, thickness: int) -> None:
    """Add ``value`` along the polyline ``pts`` ((n, 2) pixel coordinates) to the float image ``img``."""
    line = np.zeros(img.shape, np.uint8)
    cv2.polylines(line, [np.round(pts).astype(np.int32)], False, 255, thickness, lineType=cv2.LINE_AA)
    img += value * line.astype(np.float32) / 255.0


def make_xray(label: str, rng: np.random.Generator, height: int = 96, width: int = 96,
              hair_probability: float = 0.3, camera: Any = None) -> np.ndarray:
    """Draw one chest-radiograph-like frame of class ``label``; returns uint16 (height, width), 0 .. 4095.
    ``camera`` is a ``pipeline_lib.data.Camera`` (None: the default one)."""
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    findings = set(label.split("+"))
    gain = float(np.mean(camera.colour_gain)) if camera is not None else 1.0
    blur = float(camera.blur_sigma) if camera is not None else 0.0
    scale = float(camera.aperture_scale) if camera is not None else 1.0
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Normalised coordinates: x in about [-1, 1] across the thorax, y from 0 (apex) to 1 (below the domes).
    half = 0.5 * w * scale * rng.uniform(0.78, 0.88)  # thoracic half-width in pixels
    cx = w / 2 + rng.uniform(-0.03, 0.03) * w
    top = h * (0.5 - 0.42 * scale) + rng.uniform(-0.02, 0.02) * h
    tall = 0.86 * h * scale
    x = (xx - cx) / half
    y = (yy - top) / tall

    # Thorax: soft tissue inside a rounded outline that widens from the neck to the shoulders and the chest wall.
    body_half = np.where(y < 0.05, 0.35 + 0.9 * np.clip(y + 0.15, 0, 0.2) / 0.2 * 0.75, 1.12)
    img = np.where(np.abs(x) < body_half, 0.52, 0.04).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)

    # Lungs: two fields above hemidiaphragm domes; a shallow inspiration raises the domes.
    inspiration = rng.uniform(0.0, 1.0)
    base = 0.78 + 0.1 * inspiration
    lungs = np.zeros((h, w), np.float32)
    angle_depth = {}
    for side in (-1, 1):  # -1: the patient's right (image left)
        lx = side * rng.uniform(0.44, 0.50)
        lw = rng.uniform(0.36, 0.42)
        dome = base - (0.03 if side == -1 else 0.0) - rng.uniform(0.08, 0.13) * np.clip(1 - ((x - lx) / lw) ** 2, 0, 1)
        apex = 0.07 + rng.uniform(0, 0.04)
        field = ((x - lx) / lw) ** 2 + np.clip((apex + 0.25 - y) / 0.25, 0, None) ** 2 < 1.0
        field &= (y > apex) & (y < dome)
        lungs += field.astype(np.float32)
        angle_depth[side] = (lx, lw, dome)
    lungs = cv2.GaussianBlur(np.clip(lungs, 0, 1), (0, 0), 0.9)

    # Pleural effusion: fluid, as dense as soft tissue, fills the lung base up to a meniscus that rises towards the
    # chest wall.
    sides = [-1, 1]
    if "effusion" in findings:
        chosen = sides if rng.random() < 0.35 else [int(rng.choice(sides))]
        amounts = {s: rng.uniform(0.04, 0.16) for s in chosen}
    elif rng.random() < 0.12:  # a faintly blunted angle in a frame without effusion: the confounder
        amounts = {int(rng.choice(sides)): rng.uniform(0.02, 0.05)}
    else:
        amounts = {}
    fluid = np.zeros((h, w), np.float32)
    for side, amount in amounts.items():
        lx, lw, dome = angle_depth[side]
        lateral = np.clip(side * (x - lx) / lw, -1, 1)  # -1 medial, 1 lateral
        meniscus = dome - amount - 0.35 * amount * (lateral + 1) ** 2
        level = ((y > meniscus) & (np.abs(x - lx) < lw * 1.05)).astype(np.float32)
        fluid = np.maximum(fluid, cv2.GaussianBlur(level, (0, 0), 1.0))

    air = lungs * (1 - fluid)
    img -= 0.34 * air

    # Vessel markings: branching curves from each hilum, brighter and thicker near it.
    for side in (-1, 1):
        hx, hy = cx + side * 0.22 * half, top + 0.42 * tall
        for _ in range(int(rng.integers(5, 9))):
            ang = np.deg2rad(rng.uniform(-80, 80)) + (0 if side == 1 else np.pi)
            length = rng.uniform(0.35, 0.6) * half
            p1 = np.array([hx + np.cos(ang) * length * 0.5 + rng.normal(0, 2), hy + np.sin(ang) * length * 0.5])
            p2 = np.array([hx + np.cos(ang) * length, hy + np.sin(ang) * length])
            t = np.linspace(0, 1, 24)[:, None]
            pts = (1 - t) ** 2 * np.array([hx, hy]) + 2 * (1 - t) * t * p1 + t ** 2 * p2
            _curve(img, pts, 0.05 * rng.uniform(0.6, 1.2), 1)
    # Ribs: posterior arcs falling laterally, and the clavicles.
    for side in (-1, 1):
        for k in range(7):
            y0 = 0.12 + 0.095 * k + rng.normal(0, 0.005)
            xs = np.linspace(0.06, 1.05, 20) * side
            ys = y0 + 0.16 * np.abs(xs) - 0.10 * xs ** 2
            _curve(img, np.stack([cx + xs * half, top + ys * tall], 1), 0.07, 1)
        xs = np.linspace(0.08, 0.75, 12) * side
        _curve(img, np.stack([cx + xs * half, top + (0.07 - 0.04 * np.abs(xs)) * tall], 1), 0.14, 2)

    # Mediastinum and spine: a bright central band, the trachea a dark stripe above the carina.
    img += 0.22 * np.exp(-(x / 0.13) ** 2) * (y > 0.02)
    img -= 0.12 * np.exp(-(x / 0.035) ** 2) * ((y > 0.0) & (y < 0.35))
    # Heart: an ellipse over the lower mediastinum, shifted to the patient's left; its width is the CTR.
    ctr = rng.uniform(0.50, 0.68) if "cardiomegaly" in findings else rng.uniform(0.38, 0.46) + 0.06 * inspiration
    heart_half = ctr * 1.0  # thoracic width is 2 in x
    hcx = 0.28 * heart_half + rng.uniform(-0.03, 0.03)
    hcy = base - 0.2 - rng.uniform(0.0, 0.04)
    heart = (((x - hcx) / heart_half) ** 2 + ((y - hcy) / rng.uniform(0.16, 0.2)) ** 2 < 1.0).astype(np.float32)
    img += 0.3 * cv2.GaussianBlur(heart, (0, 0), 1.2) * np.clip(air + 0.3, 0, 1)

    # ECG electrodes and lead wires.
    if rng.random() < hair_probability:
        for _ in range(int(rng.integers(1, 4))):
            ex, ey = cx + rng.uniform(-0.8, 0.8) * half, top + rng.uniform(0.2, 0.9) * tall
            cv2.circle(img, (int(ex), int(ey)), max(1, int(0.03 * w)), 0.9, -1)
            end = (ex + rng.uniform(-0.5, 0.5) * w, h - 1)
            mid = ((ex + end[0]) / 2 + rng.normal(0, 0.1 * w), (ey + h) / 2)
            t = np.linspace(0, 1, 24)[:, None]
            pts = (1 - t) ** 2 * np.array([ex, ey]) + 2 * (1 - t) * t * np.array(mid) + t ** 2 * np.array(end)
            _curve(img, pts, 0.18, 1)

    # Exposure (gain and a gamma of the detector's response), blur, quantum noise.
    img = np.clip(img, 0, None) * gain * rng.uniform(0.9, 1.1)
    img = img ** rng.uniform(0.85, 1.15)
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img = img + rng.normal(0, 0.012, img.shape).astype(np.float32) * np.sqrt(np.clip(img, 0.05, None))
    return np.clip(np.round(img * 0.8 * MAX_VALUE + 40), 0, MAX_VALUE).astype(np.uint16)
