"""The domain feature network: a classifier trained from scratch on train_a (model selection on train_b), the
stand-in for CLUE's domain InceptionV3 (section 5). Its features are the space of FID, recall, precision,
density and coverage (``pipeline_lib.evaluate``); it also serves the VQ-GAN's perceptual loss where no LPIPS
weights are on disk (``pipeline_lib.perceptual``), the multi-level embeddings (``pipeline_lib.multilevel``), the
trajectory's judge and the interpolation's semantic variance. Test and external images are only ever embedded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from .io import atomic_path, feature_frame, log, write_parquet
from .metrics import classification_scores
from .nets import extract_features, predict, train_classifier
from .torchutils import load_images, seed_everything, select_device, set_threads

REAL_SPLITS = ("train_a", "train_b", "test", "external")


def train_feature_net(manifest: str | Path, model_out: str | Path, log_table: str | Path,
                      params: Mapping[str, Any], features_out: str | Path | None = None,
                      threads: int | None = None) -> None:
    """Entry point of the feature_net rule: train on train_a, select on train_b, save weights and the log;
    ``features_out`` keeps the features of every real image (all splits), which the evaluate jobs and the
    report's PCA plots read instead of embedding the real images again."""
    set_threads(threads)
    seed_everything(int(params["seed"]))
    device = select_device(params["device"])
    classes = list(params["classes"])
    x, y, _ = load_images(manifest, ["train_a"], classes)
    xv, yv, _ = load_images(manifest, ["train_b"], classes)
    resume = Path(str(model_out) + ".resume.pt")
    model, rows = train_classifier(x, y, xv, yv, len(classes), params, int(params["seed"]), device, checkpoint=resume)
    for split in ("test", "external"):
        try:
            xt, yt, _ = load_images(manifest, [split], classes)
        except ValueError:
            continue
        s = classification_scores(yt.numpy(), predict(model, xt, device), len(classes))
        log.info("feature network on %s: macro-F1 %.3f, AUC %.3f", split, s["f1_macro"], s["auc_ovr"])
    if features_out is not None:
        xa, _, ra = load_images(manifest, list(REAL_SPLITS), classes)
        write_parquet(feature_frame(extract_features(model, xa, device), ra), features_out)
    write_parquet(pd.DataFrame(rows), log_table)
    with atomic_path(model_out) as tmp:
        torch.save({"params": dict(params), "n_classes": len(classes), "state_dict": model.state_dict()}, tmp)
    resume.unlink(missing_ok=True)
