"""Images as users have them, read into the 8-bit RGB frames the pipeline works on.

One function, ``read_image``, for every format: 8-bit RGB and opaque RGBA as they are; 8-bit grayscale (L, opaque
LA), 1-bit and palette images as three equal channels; 16-bit and 32-bit integer and float grayscale PNG / TIFF
and DICOM mapped to 8 bit by the intensity rule below. Grayscale sets flow through the DAG as three identical
channels, what Stable Diffusion, open_clip and timm models expect; a set that mixes grayscale and colour images
is read the same way (each grayscale image becomes three equal channels) and the preprocessing log counts them.

DICOM (pydicom): the Modality LUT first (Rescale Slope / Intercept, PS3.3 C.11.1), then the VOI window
(``preprocess.intensity.rule``):

- ``dicom_window`` (default): the file's first Window Center / Width with the linear function of PS3.3
  C.11.2.1.2.1 (x <= c - 0.5 - (w - 1) / 2 -> 0, x > c - 0.5 + (w - 1) / 2 -> 255, linear between), else, for a
  file without a window or a non-DICOM image, the percentile window;
- ``percentile``: the ``percentiles`` (low, high) of the image's values map linearly to 0 and 255, clipped;
- ``full_range``: the range the stored bits allow: for DICOM 0 .. 2^BitsStored - 1 (or the signed range) through
  the Modality LUT, for 16-bit PNG / TIFF 0 .. 65535; for 32-bit integer and float images their own minimum ..
  maximum.

MONOCHROME1 (white is low) is inverted after windowing; colour DICOM (RGB, YBR) is converted to 8-bit RGB.
Multi-frame files follow ``preprocess.dicom_frames``: ``error`` (default: a 3-D volume where a 2-D image is
expected), ``first`` or ``middle``. Compressed transfer syntaxes are decoded where the installed decoders can
(pydicom itself: RLE, deflate; JPEG and JPEG 2000 through Pillow), otherwise the error names the transfer syntax.
The record of each image (``bit_depth``, ``photometric``, ``window_low`` / ``window_high`` in the values after the
Modality LUT, ``intensity`` rule used, ``frames``) goes into qc.parquet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

MIN_IMAGE_SIDE = 32  # px: shorter than this there is too little to crop and resize
MAX_IMAGE_PIXELS = 100_000_000  # more pixels than this: refused from the header, before decoding
INTENSITY_RULES = ("dicom_window", "percentile", "full_range")
DICOM_FRAMES = ("error", "first", "middle")
DEFAULT_INTENSITY = {"rule": "dicom_window", "percentiles": [0.5, 99.5]}
DICOM_SUFFIXES = (".dcm", ".dicom")
RECORD_KEYS = ("bit_depth", "photometric", "window_low", "window_high", "intensity", "frames")


class _Unusable(Exception):
    """A decodable file that is no usable 2-D image (too small, too large, a stack of pages): its own message."""


def is_dicom(path: Path) -> bool:
    """A DICOM file by its suffix or its preamble ('DICM' at byte 128)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def read_image(path: str | Path, min_side: int = MIN_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS,
               intensity: Mapping[str, Any] | None = None, dicom_frames: str = "error") -> tuple[np.ndarray, dict]:
    """The image at ``path`` as an 8-bit RGB array (H, W, 3) and its record (``RECORD_KEYS``).

    Empty, truncated or undecodable files, transparent images, DICOM files without pixel data or with an
    undecodable transfer syntax, constant images under a window rule, images whose shorter side is under
    ``min_side`` px and images of more than ``max_pixels`` pixels (checked from the header) raise ``ValueError``
    naming the file and what was expected."""
    p = Path(path)
    rule = dict(DEFAULT_INTENSITY, **(intensity or {}))
    if rule["rule"] not in INTENSITY_RULES:
        raise ValueError(f"preprocess.intensity.rule must be one of {INTENSITY_RULES}, got {rule['rule']!r}")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: image file not found")
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: empty file (0 bytes), expected an image (PNG, JPEG, TIFF or DICOM)")
    if is_dicom(p):
        return _read_dicom(p, min_side, max_pixels, rule, dicom_frames)
    return _read_pillow(p, min_side, max_pixels, rule)


def _check_size(p: Path, w: int, h: int, min_side: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise _Unusable(f"{p}: {w} x {h} px = {w * h / 1e6:.1f} MP, above preprocess.max_image_pixels "
                           f"({max_pixels / 1e6:g} MP); downscale the image or raise that limit")
    if min(w, h) < min_side:
        raise _Unusable(f"{p}: {w} x {h} px, its shorter side is under preprocess.min_image_side ({min_side} px)")


def _read_pillow(p: Path, min_side: int, max_pixels: int, rule: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
    try:
        with Image.open(p) as im:
            _check_size(p, *im.size, min_side, max_pixels)
            pages = getattr(im, "n_frames", 1)
            if pages > 1:
                raise _Unusable(f"{p}: a multi-page image of {pages} pages (a volume, a stack or an animation), "
                                f"expected a 2-D image; save each page as its own file (or the one slice you need)")
            im.load()  # decodes everything: a truncated file raises here
            mode = im.mode
            if mode == "P":  # palette: its colours (and transparency, if any) as RGBA
                im = im.convert("RGBA")
            elif mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except _Unusable as e:
        raise ValueError(str(e)) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{p}: cannot be decoded as an image ({e}); expected a PNG, JPEG, TIFF or DICOM file") from e
    record = {"bit_depth": 8, "photometric": mode, "window_low": np.nan, "window_high": np.nan, "intensity": "none",
              "frames": 1}
    if mode == "CMYK":
        raise ValueError(f"{p}: image mode CMYK, expected grayscale or RGB (convert it to RGB first)")
    if arr.ndim == 3 and arr.shape[2] in (2, 4):  # LA or RGBA: an alpha channel
        if (arr[..., -1] < 255).any():
            raise ValueError(f"{p}: {mode} image with transparent pixels, expected an opaque image")
        arr = arr[..., :-1]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] != 3:
        raise ValueError(f"{p}: image mode {mode} with {arr.shape[2]} channels, expected grayscale or RGB")
    if arr.dtype != np.uint8:  # 16-bit / 32-bit integer or float grayscale
        values = arr.astype(np.float64)
        record["bit_depth"] = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}.get(mode, 8 * arr.itemsize)
        integer = np.issubdtype(arr.dtype, np.integer)
        full = (0.0, float(2 ** record["bit_depth"] - 1)) if integer and mode.startswith("I;16") else None
        arr, record = _to_8bit(p, values, record, rule, window=None, full=full)
    return _rgb(arr), record


def _percentile_window(values: np.ndarray, percentiles) -> tuple[float, float]:
    low, high = (float(v) for v in np.percentile(values, [float(percentiles[0]), float(percentiles[1])]))
    return low, high


def _to_8bit(p: Path, values: np.ndarray, record: dict, rule: Mapping[str, Any], window: tuple[float, float] | None,
             full: tuple[float, float] | None) -> tuple[np.ndarray, dict]:
    """``values`` (after the Modality LUT) to uint8 by the rule: the DICOM window (``window`` = (center,
    width)), the percentile window, or the full range (``full``, else the image's minimum .. maximum)."""
    name = rule["rule"]
    if name == "dicom_window" and window is not None:
        c, w = window
        if w < 1:
            raise ValueError(f"{p}: Window Width {w:g} is below 1 (PS3.3 C.11.2.1.2), expected a window of at "
                             f"least 1; use preprocess.intensity.rule: percentile")
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        scaled = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0  # PS3.3 C.11.2.1.2.1, y in [0, 255]
        out = np.where(values <= low, 0.0, np.where(values > high, 255.0, scaled))
        record.update(window_low=low, window_high=high, intensity="dicom_window")
        return np.clip(np.rint(out), 0, 255).astype(np.uint8), record
    if name == "full_range":
        low, high = full if full is not None else (float(values.min()), float(values.max()))
        used = "full_range"
    else:
        low, high = _percentile_window(values, rule.get("percentiles", DEFAULT_INTENSITY["percentiles"]))
        used = "percentile"
    if not high > low:
        raise ValueError(f"{p}: the {used} window is empty ({low:g} .. {high:g}): a constant image, nothing to "
                         f"map to 8 bit")
    out = (values - low) / (high - low) * 255.0
    record.update(window_low=low, window_high=high, intensity=used)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), record


def _rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W) grey -> three equal channels; (H, W, 3) unchanged."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _read_dicom(p: Path, min_side: int, max_pixels: int, rule: Mapping[str, Any],
                dicom_frames: str) -> tuple[np.ndarray, dict]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    if dicom_frames not in DICOM_FRAMES:
        raise ValueError(f"preprocess.dicom_frames must be one of {DICOM_FRAMES}, got {dicom_frames!r}")
    try:
        ds = pydicom.dcmread(p)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ValueError(f"{p}: cannot be read as DICOM ({e})") from e
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = getattr(ds.get("SOPClassUID"), "name", None) or ds.get("Modality", "unknown")
        raise ValueError(f"{p}: DICOM file without pixel data ({kind}), expected an image")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    try:
        _check_size(p, cols, rows, min_side, max_pixels)
    except _Unusable as e:
        raise ValueError(str(e)) from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and dicom_frames == "error":
        raise ValueError(f"{p}: a DICOM volume of {frames} frames, expected a 2-D image; export its slices as "
                         f"single-frame files, or set preprocess.dicom_frames: first or middle")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        arr = ds.pixel_array
    except Exception as e:  # no decoder for the transfer syntax, or truncated pixel data
        what = f"transfer syntax {syntax.name} ({syntax})" if syntax is not None else "its pixel data"
        raise ValueError(f"{p}: {what} cannot be decoded with the installed decoders ({e}); convert the file "
                         f"to an uncompressed transfer syntax or install a decoder pydicom supports") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if frames > 1:
        arr = arr[0] if dicom_frames == "first" else arr[frames // 2]
    record = {"bit_depth": int(ds.get("BitsStored", 8 * arr.itemsize)), "photometric": photometric,
              "window_low": np.nan, "window_high": np.nan, "intensity": "none", "frames": frames}
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour: pydicom converts YBR to RGB as it decodes
        if arr.dtype != np.uint8:
            raise ValueError(f"{p}: colour DICOM with {record['bit_depth']} bits per sample, expected 8")
        return np.ascontiguousarray(arr), record
    values = apply_modality_lut(arr, ds).astype(np.float64)  # Rescale Slope / Intercept (PS3.3 C.11.1)
    window = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        first = lambda v: float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v)  # noqa: E731
        window = (first(ds.WindowCenter), first(ds.WindowWidth))
    bits, signed = record["bit_depth"], int(ds.get("PixelRepresentation", 0)) == 1
    stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    full = tuple(sorted((stored[0] * slope + intercept, stored[1] * slope + intercept)))
    grey, record = _to_8bit(p, values, record, rule, window, full)
    if photometric == "MONOCHROME1":  # white is the minimum: inverted after windowing
        grey = 255 - grey
    return _rgb(grey), record
