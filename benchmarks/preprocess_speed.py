"""(a) Preprocessing throughput at 512 px: the pipeline's preprocess stage (Pillow decoding with the size checks,
circle, QC hair mask, mask, crop, resize, atomic PNG writes; 1 and 2 worker threads) against a plain loop of
the same OpenCV calls (cv2.imread / imwrite, no checks, one image after another).

    .venv/bin/python benchmarks/preprocess_speed.py            # 48 frames of 640 x 768 px
    .venv/bin/python benchmarks/preprocess_speed.py --n 96

Targets on a 2-core machine: at least 0.9x the plain loop with one worker, 1.8x with two.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import best_times, save  # noqa: E402

from pipeline_lib.data import CLASSES, make_image  # noqa: E402
from pipeline_lib.io import write_png  # noqa: E402
from pipeline_lib.preprocess import preprocess  # noqa: E402

PARAMS = {"aperture": "circle", "threshold": 26, "image_size": 512, "min_radius_fraction": 0.1, "on_failure": "drop",
          "min_image_side": 32, "max_image_pixels": 100_000_000, "lesion_masks": None, "lesion_margin": 0.1,
          "hair_removal": {"enabled": False, "kernel_size": 9, "kernel_shape": "cross", "threshold": 10,
                           "inpaint_radius": 3, "method": "telea"}}


def plain_loop(paths: list[Path], out: Path, size: int = 512, threshold: int = 26) -> None:
    """The same OpenCV calls as the stage, written out in one loop."""
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (9, 9))
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        hair = cv2.threshold(cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, kernel), 10, 255, cv2.THRESH_BINARY)[1]
        binary = cv2.threshold(gray, threshold, 255, cv2.THRESH_BINARY)[1]
        contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        region = np.zeros_like(gray)
        cv2.drawContours(region, [max(contours, key=cv2.contourArea)], -1, 255, thickness=cv2.FILLED)
        region = cv2.copyMakeBorder(region, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        dist = cv2.distanceTransform(region, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        _, r, _, (cx, cy) = cv2.minMaxLoc(dist)
        mask = np.zeros(gray.shape, np.uint8)
        cv2.circle(mask, (cx - 1, cy - 1), int(round(r)), 255, thickness=-1)
        _ = (hair > 0)[mask > 0].mean()
        masked = cv2.bitwise_and(image, image, mask=mask)
        x, y, w, h = cv2.boundingRect(mask)
        img = cv2.resize(masked[y:y + h, x:x + w], (size, size), interpolation=cv2.INTER_LINEAR)
        m = cv2.resize(mask[y:y + h, x:x + w], (size, size), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(out / f"{p.stem}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / f"{p.stem}_mask.png"), m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="frames")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timings of each; the best counts")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        rows = []
        for i in range(args.n):
            label = CLASSES[i % len(CLASSES)]
            path = tmp / "raw" / f"f{i:04d}.png"
            write_png(make_image(label, rng, height=640, width=768), path)
            rows.append({"image_id": f"f{i:04d}", "path": f"raw/{path.name}", "label": label, "split": "train_a",
                         "group": f"f{i:04d}", "source": "bench"})
        pd.DataFrame(rows).to_parquet(tmp / "manifest.parquet")
        paths = sorted((tmp / "raw").glob("*.png"))
        (tmp / "plain").mkdir()

        def stage(workers: int):
            return lambda: preprocess(tmp / "manifest.parquet", tmp / f"out{workers}" / "manifest.parquet",
                                      tmp / f"out{workers}" / "qc.parquet", PARAMS, threads=workers)

        times = best_times({0: lambda: plain_loop(paths, tmp / "plain"), 1: stage(1), 2: stage(2)}, args.repeats)
        ref = times[0]
        results = [{"what": "plain OpenCV loop", "workers": 1, "seconds": ref, "images_per_s": args.n / ref}]
        results += [{"what": "preprocess stage", "workers": w, "seconds": times[w], "images_per_s": args.n / times[w]}
                    for w in (1, 2)]
        for r in results:
            r["x_plain_loop"] = ref / r["seconds"]
            r["target_x"] = {("preprocess stage", 1): 0.9, ("preprocess stage", 2): 1.8}.get((r["what"], r["workers"]))
            r["frames"], r["frame_px"], r["out_px"] = args.n, "640x768", 512
        save("preprocess_speed", results)


if __name__ == "__main__":
    main()
