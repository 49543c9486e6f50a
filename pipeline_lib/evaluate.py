"""Image-quality evaluation in the feature space of the domain classifier (``pipeline_lib.feature_net``).

CLUE section 5: FID (eq. 13) and k-NN recall (eq. 14, k = 10) per class and over all classes, against
"Dataset 1" (train_a + train_b), "Dataset 2" (test) and both (Tables 6 and 7). The feature network saw
train_a for training and train_b for model selection; test and external images are only ever embedded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from .io import feature_columns, feature_frame, log, read_parquet, write_parquet
from .metrics import density_coverage, fid_from_features, inception_score, knn_recall, precision_recall
from .nets import extract_features, load_feature_net, predict
from .torchutils import load_images, select_device, set_threads

REFERENCES = {"train": ("train_a", "train_b"), "test": ("test",), "train+test": ("train_a", "train_b", "test")}
EVAL_COLUMNS = ("variant", "setting", "seed", "reference", "class", "n_real", "n_generated", "metric", "value")


def quality_table(real: np.ndarray, real_labels: np.ndarray, real_splits: np.ndarray, gen: np.ndarray,
                  gen_labels: np.ndarray, classes: list[str], k: int, precision_k: int = 3,
                  density_k: int = 5) -> pd.DataFrame:
    """Per reference set (CLUE Table 6 columns: train, test, both) and class (plus ``all``), one row per metric:
    FID (eq. 13), k-NN recall (eq. 14), improved precision and recall (Kynkaanniemi et al. 2019, k =
    ``precision_k``), density and coverage (Naeem et al. 2020, k = ``density_k``)."""
    rows = []
    for ref, splits in REFERENCES.items():
        in_ref = np.isin(real_splits, splits)
        for ci, name in [(i, c) for i, c in enumerate(classes)] + [(None, "all")]:
            r = real[in_ref & ((real_labels == ci) if ci is not None else True)]
            g = gen[(gen_labels == ci)] if ci is not None else gen
            if len(r) <= max(1, precision_k, density_k) or len(g) <= max(k, precision_k):
                log.info("skip %s/%s: %d real, %d generated samples are too few", ref, name, len(r), len(g))
                continue
            precision, improved_recall = precision_recall(r, g, precision_k)
            density, coverage = density_coverage(r, g, density_k)
            for metric, value in (("fid", fid_from_features(r, g)), ("recall", knn_recall(r, g, k)),
                                  ("precision", precision), ("improved_recall", improved_recall),
                                  ("density", density), ("coverage", coverage)):
                rows.append({"reference": ref, "class": name, "n_real": len(r), "n_generated": len(g),
                             "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=list(EVAL_COLUMNS[3:]))


def inception_rows(proba: np.ndarray, splits: int) -> list[dict]:
    """Inception Score of the generated images under the domain classifier (mean and std over ``splits``)."""
    mean, std = inception_score(proba, min(splits, len(proba)))
    return [{"reference": "none", "class": "all", "n_real": 0, "n_generated": len(proba), "metric": metric,
             "value": value} for metric, value in (("inception_score", mean), ("inception_score_std", std))]


def evaluate_synthetic(manifest: str | Path, feature_net: str | Path, gen_manifest: str | Path, out_table: str | Path,
                       params: Mapping[str, Any], features_out: str | Path | None = None,
                       real_features: str | Path | None = None, threads: int | None = None) -> pd.DataFrame:
    """Entry point of the evaluate rule for one (variant, setting, seed). ``real_features`` (the feature_net
    rule's table) spares embedding the real images again; ``features_out`` keeps the generated images'."""
    set_threads(threads)
    device = select_device(params["device"])
    classes = list(params["classes"])
    model = load_feature_net(feature_net, device)
    refs = sorted({s for splits in REFERENCES.values() for s in splits})
    if real_features is not None:
        rr = read_parquet(real_features, required=("image_id", "label", "split"))
        rr = rr[rr["split"].isin(refs)].reset_index(drop=True)
        fr = rr[feature_columns(rr)].to_numpy(np.float64)
        yr = torch.tensor([classes.index(c) for c in rr["label"]])
    else:
        xr, yr, rr = load_images(manifest, refs, classes)
        fr = extract_features(model, xr, device)
    xg, yg, rg = load_images(gen_manifest, ["synthetic"], classes)
    fg = extract_features(model, xg, device)
    table = quality_table(fr, yr.numpy(), rr["split"].to_numpy(), fg, yg.numpy(), classes, int(params["recall_k"]),
                          int(params.get("precision_k", 3)), int(params.get("density_k", 5)))
    proba = predict(model, xg, device).astype(np.float64)
    table = pd.concat([table, pd.DataFrame(inception_rows(proba / proba.sum(1, keepdims=True),
                                                          int(params.get("is_splits", 10))))], ignore_index=True)
    for key in ("variant", "setting", "seed"):
        table.insert(0, key, params[key])
    table = table[list(EVAL_COLUMNS)]
    write_parquet(table, out_table)
    if features_out is not None:
        write_parquet(feature_frame(fg, rg), features_out)
    log.info("\n%s", table.to_string(index=False))
    return table
