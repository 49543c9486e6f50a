"""Downstream classifier grid (CLUE section 5.4): real images of train_a replaced by synthetic ones.

* ``replace``: for every class, a fraction ``ratio`` of the real train_a images is swapped for as many synthetic
  images of that class, so the training set keeps its size (Tables 8-11); ratio 0 is the real-only baseline.
* ``hybrid``: all real train_a images plus synthetic images at 100 % scale ("100 % + Dataset 1A").

train_b is the validation set, test ("Dataset 2") and external (AI-HUB's role) are only tested on. One run per
(variant, setting, seed, arch); the synthetic set of seed N is paired with classifier seed N, as the paper's
independent experiments are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from .io import log, write_parquet
from .metrics import classification_scores
from .nets import predict, train_classifier
from .torchutils import load_images, seed_everything, select_device, set_threads

CLASSIFY_COLUMNS = ("variant", "setting", "seed", "arch", "protocol", "ratio", "n_real", "n_synthetic",
                    "test_set", "f1_macro", "auc_ovr", "accuracy", "epochs")


def replacement_indices(y_real: np.ndarray, y_syn: np.ndarray, ratio: float, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the real images kept and the synthetic images added at replacement ``ratio``, per class."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"classify.ratios must lie in [0, 1], got {ratio}")
    keep, add = [], []
    for c in np.unique(y_real):
        real_c, syn_c = np.flatnonzero(y_real == c), np.flatnonzero(y_syn == c)
        k = int(round(ratio * len(real_c)))
        if k > len(syn_c):
            raise ValueError(f"replacement ratio {ratio} needs {k} synthetic images of class {c}, "
                             f"only {len(syn_c)} were generated (raise generate.scale)")
        keep.append(rng.permutation(real_c)[: len(real_c) - k])
        add.append(rng.permutation(syn_c)[:k])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(add))


def classify(manifest: str | Path, gen_manifest: str | Path, out_table: str | Path, log_table: str | Path,
             params: Mapping[str, Any], threads: int | None = None) -> pd.DataFrame:
    """Entry point of the classify rule for one (variant, setting, seed, arch)."""
    set_threads(threads)
    seed = int(params["seed"])
    seed_everything(seed)
    device = select_device(params["device"])
    classes = list(params["classes"])
    xr, yr, _ = load_images(manifest, ["train_a"], classes)
    xv, yv, _ = load_images(manifest, ["train_b"], classes)
    xs, ys, _ = load_images(gen_manifest, ["synthetic"], classes)
    tests = {}
    for split in params["test_sets"]:
        try:
            tests[split] = load_images(manifest, [split], classes)[:2]
        except ValueError:
            log.info("no images in test set %s; skipped", split)
    runs = [("replace", float(r)) for r in params["ratios"]] + ([("hybrid", 1.0)] if params["hybrid"] else [])
    rows, logs = [], []
    for protocol, ratio in runs:
        rng = np.random.default_rng([seed, int(round(ratio * 1000)), int(protocol == "hybrid")])
        if protocol == "replace":
            keep, add = replacement_indices(yr.numpy(), ys.numpy(), ratio, rng)
        else:
            keep, add = np.arange(len(yr)), replacement_indices(yr.numpy(), ys.numpy(), 1.0, rng)[1]
        x = torch.cat([xr[keep], xs[add]])
        y = torch.cat([yr[keep], ys[add]])
        model, hist = train_classifier(x, y, xv, yv, len(classes), params, seed, device)
        logs += [h | {"protocol": protocol, "ratio": ratio} for h in hist]
        for name, (xt, yt) in tests.items():
            s = classification_scores(yt.numpy(), predict(model, xt, device), len(classes))
            rows.append({"variant": params["variant"], "setting": params["setting"], "seed": seed,
                         "arch": params["arch"], "protocol": protocol, "ratio": ratio, "n_real": len(keep),
                         "n_synthetic": len(add), "test_set": name, **s, "epochs": len(hist)})
            log.info("%s ratio %.2f on %s: F1 %.3f AUC %.3f", protocol, ratio, name, s["f1_macro"], s["auc_ovr"])
    table = pd.DataFrame(rows, columns=list(CLASSIFY_COLUMNS))
    write_parquet(pd.DataFrame(logs), log_table)
    write_parquet(table, out_table)
    return table
