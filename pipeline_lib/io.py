"""Atomic file output, manifest paths, tables and image I/O.

Every output the pipeline promises is first written under a temporary name in the same folder and then
renamed (``os.replace``), so a killed job never leaves a half-written Parquet table, PNG or model folder
under its final name.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

log = logging.getLogger("pipeline_lib")


LOW_SPACE = 1 << 20  # bytes: a write that fails with less free space than this on its device failed for lack of it
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def free_space(folder: Path) -> int | None:
    """Bytes free to this user on the device of ``folder`` (or of its nearest existing parent)."""
    for f in (folder, *folder.parents):
        if f.exists():
            try:
                return shutil.disk_usage(f).free
            except OSError:
                return None
    return None


def write_failure(final: Path, err: BaseException) -> OSError | None:
    """A clear error for a write of ``final`` that failed because its folder is not writable or its device is
    full, else None. Not every writer says so itself: torch.save reports a full disk as a RuntimeError about
    stream positions and OpenCV only returns False, so a failure with under ``LOW_SPACE`` free counts as one."""
    code = getattr(err, "errno", None)
    if code in NOT_WRITABLE:
        why = "the file system is read-only" if code == errno.EROFS else "permission denied"
        return PermissionError(code, f"cannot write {final}: {why} in {final.parent}; expected a folder this user "
                                     f"can write to (check its owner and mode, or run the workflow from another "
                                     f"folder); nothing was written under that name")
    if not isinstance(err, (OSError, RuntimeError)):
        return None
    free = free_space(final.parent)
    if code in NO_SPACE or (free is not None and free < LOW_SPACE):
        left = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
        return OSError(errno.ENOSPC, f"cannot write {final}: no space left on its device ({left}; or the disk quota "
                                     f"is exceeded); nothing was written under that name and an earlier version "
                                     f"of it is kept; free some space and rerun (finished jobs are not redone)")
    return None


# Image loading of this process: the config's speed.num_workers (threads decoding images) and speed.pin_memory.
# The stage harness (``pipeline_lib.harness``) sets them for a rule's job, ``torchutils`` reads them. Neither
# changes a number, so they are read from the whole config rather than being rule parameters.
LOADING = {"workers": 0, "pin_memory": False}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    Works for files and for folders (a model saved with ``save_pretrained``). A full disk or an unwritable folder
    raises the clear error of ``write_failure``; the temporary is removed and an earlier ``path`` kept.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as err:
        raise (write_failure(final, err) or err) from err
    target = tmp / final.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to the temporary path for {final}")
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(target, final)
    except Exception as err:
        clear = write_failure(final, err)
        if clear is None:
            raise
        raise clear from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_path(manifest_path: str | Path, path: str) -> Path:
    """Image paths in a manifest are absolute or relative to the manifest's folder."""
    p = Path(path)
    return p if p.is_absolute() else Path(manifest_path).parent / p


def local_file(path: str | os.PathLike | None, key: str, expected: str) -> Path:
    """``path`` as a Path if it names an existing file, else an error naming the config ``key`` and what was
    expected there (weights are local files: the pipeline downloads nothing)."""
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist (expected {expected}; the pipeline downloads nothing)")
    return Path(path)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (jobs have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write a matplotlib figure to ``path`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` to ``path`` atomically (pyarrow engine, no index)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, engine="pyarrow", index=False)


def read_parquet(path: str | os.PathLike, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a Parquet table and check that the ``required`` columns are present."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: table not found")
    df = pd.read_parquet(path, engine="pyarrow")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: expected columns {list(required)}, missing {missing}")
    return df


def feature_frame(features: np.ndarray, rows: pd.DataFrame) -> pd.DataFrame:
    """Features (N, D) as columns f0 .. f<D-1> (float32) after the image id, label and split of each row."""
    cols = pd.DataFrame(features.astype(np.float32), columns=[f"f{i}" for i in range(features.shape[1])])
    return pd.concat([rows[["image_id", "label", "split"]].reset_index(drop=True), cols], axis=1)


def feature_columns(df: pd.DataFrame) -> list[str]:
    """The feature columns of a ``feature_frame`` table, in order."""
    return [c for c in df.columns if c.startswith("f") and c[1:].isdigit()]


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB uint8 array of shape (H, W, 3)."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError(f"{path}: cannot be read as an image (expected PNG or JPEG)")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def write_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write an RGB (H, W, 3) or grey (H, W) uint8 array, or a grey uint16 one (a 16-bit PNG), atomically."""
    import cv2

    if image.dtype != np.uint8 and not (image.dtype == np.uint16 and image.ndim == 2):
        raise ValueError(f"{path}: expected a uint8 image or a grey uint16 one, got dtype {image.dtype} "
                         f"with shape {image.shape}")
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"{path}: expected a .png file name")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"{path}: could not write PNG")
