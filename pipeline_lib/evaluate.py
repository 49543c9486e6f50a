"""Image-quality evaluation in the feature space of a domain classifier trained from scratch on train_a.

CLUE section 5: FID (eq. 13) and k-NN recall (eq. 14, k = 10) per class and over all classes, against
"Dataset 1" (train_a + train_b), "Dataset 2" (test) and both (Tables 6 and 7). The feature network sees
train_a for training and train_b for model selection; test and external images are only ever embedded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from .io import atomic_path, log, write_parquet
from .metrics import classification_scores, fid_from_features, knn_recall
from .nets import extract_features, load_feature_net, predict, train_classifier
from .torchutils import load_images, seed_everything, select_device, set_threads

REFERENCES = {"train": ("train_a", "train_b"), "test": ("test",), "train+test": ("train_a", "train_b", "test")}
EVAL_COLUMNS = ("variant", "setting", "seed", "reference", "class", "n_real", "n_generated", "metric", "value")


def train_feature_net(manifest: str | Path, model_out: str | Path, log_table: str | Path,
                      params: Mapping[str, Any], threads: int | None = None) -> None:
    """Entry point of the feature_net rule: train on train_a, select on train_b, save weights and the log."""
    set_threads(threads)
    seed_everything(int(params["seed"]))
    device = select_device(params["device"])
    classes = list(params["classes"])
    x, y, _ = load_images(manifest, ["train_a"], classes)
    xv, yv, _ = load_images(manifest, ["train_b"], classes)
    model, rows = train_classifier(x, y, xv, yv, len(classes), params, int(params["seed"]), device)
    for split in ("test", "external"):
        try:
            xt, yt, _ = load_images(manifest, [split], classes)
        except ValueError:
            continue
        s = classification_scores(yt.numpy(), predict(model, xt, device), len(classes))
        log.info("feature network on %s: macro-F1 %.3f, AUC %.3f", split, s["f1_macro"], s["auc_ovr"])
    write_parquet(pd.DataFrame(rows), log_table)
    with atomic_path(model_out) as tmp:
        torch.save({"params": dict(params), "n_classes": len(classes), "state_dict": model.state_dict()}, tmp)


def quality_table(real: np.ndarray, real_labels: np.ndarray, real_splits: np.ndarray, gen: np.ndarray,
                  gen_labels: np.ndarray, classes: list[str], k: int) -> pd.DataFrame:
    """FID and recall per reference set and class (plus ``all``), one row per metric."""
    rows = []
    for ref, splits in REFERENCES.items():
        in_ref = np.isin(real_splits, splits)
        for ci, name in [(i, c) for i, c in enumerate(classes)] + [(None, "all")]:
            r = real[in_ref & ((real_labels == ci) if ci is not None else True)]
            g = gen[(gen_labels == ci)] if ci is not None else gen
            if len(r) < 2 or len(g) <= k:
                log.info("skip %s/%s: %d real, %d generated samples are too few", ref, name, len(r), len(g))
                continue
            for metric, value in (("fid", fid_from_features(r, g)), ("recall", knn_recall(r, g, k))):
                rows.append({"reference": ref, "class": name, "n_real": len(r), "n_generated": len(g),
                             "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=list(EVAL_COLUMNS[3:]))


def evaluate_synthetic(manifest: str | Path, feature_net: str | Path, gen_manifest: str | Path, out_table: str | Path,
                       params: Mapping[str, Any], threads: int | None = None) -> pd.DataFrame:
    """Entry point of the evaluate rule for one (variant, setting, seed)."""
    set_threads(threads)
    device = select_device(params["device"])
    classes = list(params["classes"])
    model = load_feature_net(feature_net, device)
    xr, yr, rr = load_images(manifest, ["train_a", "train_b", "test"], classes)
    xg, yg, _ = load_images(gen_manifest, ["synthetic"], classes)
    fr, fg = extract_features(model, xr, device), extract_features(model, xg, device)
    table = quality_table(fr, yr.numpy(), rr["split"].to_numpy(), fg, yg.numpy(), classes, int(params["recall_k"]))
    for key in ("variant", "setting", "seed"):
        table.insert(0, key, params[key])
    table = table[list(EVAL_COLUMNS)]
    write_parquet(table, out_table)
    log.info("\n%s", table.to_string(index=False))
    return table
