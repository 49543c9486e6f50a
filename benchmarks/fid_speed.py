"""(d) FID: the pipeline's ``fid_from_features`` (eq. 13 of the CLUE paper through two symmetric
eigendecompositions) against the direct computation with ``scipy.linalg.sqrtm`` of S1 S2, as in the reference
implementations: time and value on the same features.

    .venv/bin/python benchmarks/fid_speed.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import linalg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import best_times, save  # noqa: E402

from pipeline_lib.metrics import fid_from_features  # noqa: E402


def scipy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def main() -> None:
    rows = []
    # 64: the default domain network's features; 2048: Inception-v3's pool features (CLUE's FID).
    for n, d in ((1000, 64), (10000, 64), (3000, 2048)):
        rng = np.random.default_rng(0)
        mix = rng.normal(size=(d, d)) / np.sqrt(d)
        real = rng.normal(size=(n, d)) @ mix
        fake = (rng.normal(size=(n, d)) + 0.3) @ (mix * 1.1)
        repeats = 3 if d < 1000 else 1
        ours, ref = fid_from_features(real, fake), scipy_fid(real, fake)
        times = best_times({"ours": lambda: fid_from_features(real, fake), "ref": lambda: scipy_fid(real, fake)},
                           repeats, warmup=0)
        t_ours, t_ref = times["ours"], times["ref"]
        rows.append({"n_per_set": n, "dim": d, "pipeline_s": t_ours, "scipy_sqrtm_s": t_ref, "x_scipy": t_ref / t_ours,
                     "pipeline_fid": ours, "scipy_fid": ref, "relative_difference": abs(ours - ref) / abs(ref)})
    save("fid_speed", rows)


if __name__ == "__main__":
    main()
