"""The quality study's copy audit (benchmarks/quality_budget.py, ``copy_audit``): the pipeline's memorization audit
wired to a study set-up's manifests, on cases whose answer is known without running it."""
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality_budget import copy_audit  # noqa: E402


def write_set(folder: Path, images: np.ndarray, splits: list[str]) -> Path:
    """PNG files and a manifest of relative paths, as the preprocessing and generation stages write them."""
    folder.mkdir(parents=True)
    rows = []
    for i, (im, split) in enumerate(zip(images, splits)):
        Image.fromarray(im).save(folder / f"{i}.png")
        rows.append({"path": f"{i}.png", "split": split})
    path = folder / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture()
def real(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (90, 32, 32, 3), dtype=np.uint8)  # independent noise images: none alike
    manifest = write_set(tmp_path / "real", images, ["train_a"] * 40 + ["test"] * 50)
    return manifest, images


def plan():
    return SimpleNamespace(config=yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))


def test_training_images_passed_off_as_synthetic_are_all_copies(real, tmp_path):
    manifest, images = real
    synthetic = write_set(tmp_path / "gen", images[:40], ["-"] * 40)
    # similarity 1 to itself, far above the held-out noise images' ~0; each is its own nearest training image at
    # distance 0, closer than that image's nearest neighbour: no authentic sample
    assert copy_audit(manifest, synthetic, plan()) == {"copies": 1.0, "authenticity": 0.0}


def test_held_out_images_as_synthetic_are_flagged_at_the_percentiles_rate(real, tmp_path):
    manifest, images = real
    synthetic = write_set(tmp_path / "gen", images[40:], ["-"] * 50)
    # the same 50 similarities as the held-out set: only the largest lies above their 99th percentile (numpy
    # interpolates between the largest two), so 1 of 50
    assert copy_audit(manifest, synthetic, plan())["copies"] == pytest.approx(1 / 50)
