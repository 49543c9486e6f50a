"""Downstream classifier grids: real training images replaced by, scaled up with, or mixed with synthetic ones.

Each training set (a grid ``point``) is one job per (variant, setting, seed, arch):

* ``replace_<pct>`` (CLUE section 5.4, Tables 8-11): per class, pct % of the real train_a images are swapped for
  as many synthetic images of that class, so the training set keeps train_a's size; replace_0 is the real-only
  baseline.
* ``replace_100_plus_real``: all real train_a images plus as many synthetic ones per class ("100 % + Dataset 1A").
* ``scale_<pct>`` (Tables 12-15): synthetic images only, pct % of train_a's size per class (100, 200, 500, 1000).
* ``scale_<pct>_plus_real``: the same plus all real train_a images ("1000 % + Dataset 1A").
* ``count_<name>`` (multi-level paper, Table I: Origin250, Origin500, Synthetic500, Hybrid1000): a fixed number
  of real and of synthetic images in all, shared out over the classes in train_a's proportions (largest
  remainders).

Which images are used is drawn with a generator seeded by (seed, point) and recorded (``training_set.parquet``:
image ids, label, origin). train_b is the validation set; test (CLUE's Dataset 2) and external (the other
institution) are only tested on. The synthetic set of seed N is paired with classifier seed N, as the paper's
independent experiments are. ``scores.parquet`` holds, per test set, a row ``class = all`` (macro-F1,
one-vs-rest macro AUC, accuracy) and a row per class (F1, one-vs-rest AUC and that ROC curve's points);
``synthetic_scale`` is the number of synthetic images as a multiple of train_a's size (the ratio or scale);
``predictions.parquet`` each test image's class probabilities, from which the statistics (``pipeline_lib.stats``)
draw their confidence intervals and paired tests. With ``memorization.exclude_copies`` the synthetic images the
memorization audit flags are left out of the pool before any is drawn, and listed in ``training_set.parquet``
with origin ``excluded_copy``.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from .io import log, read_parquet, write_parquet
from .leakage import check_training_set
from .metrics import classification_scores, per_class_scores
from .nets import predict, train_classifier
from .torchutils import load_images, proportional_counts, seed_everything, select_device, set_threads

PREDICTION_COLUMNS = ("variant", "setting", "seed", "arch", "point", "test_set", "image_id", "y_true")
PROTOCOLS = ("replace", "hybrid", "scale", "scale_hybrid", "count")
SCORE_COLUMNS = ("variant", "setting", "seed", "arch", "point", "protocol", "synthetic_scale", "n_real", "n_synthetic",
                 "test_set", "class", "f1", "auc", "accuracy", "epochs", "fpr", "tpr")


def _take(pool: np.ndarray, k: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if k > len(pool):
        raise ValueError(f"{what}: {k} images needed, only {len(pool)} available")
    return rng.permutation(pool)[:k]


def replacement_indices(y_real: np.ndarray, y_syn: np.ndarray, ratio: float, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the real images kept and the synthetic images added at replacement ``ratio``, per class."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"classify.ratios must lie in [0, 1], got {ratio}")
    keep, add = [], []
    for c in np.unique(y_real):
        real_c = np.flatnonzero(y_real == c)
        k = int(round(ratio * len(real_c)))
        add.append(_take(np.flatnonzero(y_syn == c), k, rng,
                         f"replacement ratio {ratio}, synthetic images of class {c} (raise generate.scale)"))
        keep.append(rng.permutation(real_c)[: len(real_c) - k])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(add))


def training_indices(protocol: str, value: Any, y_real: np.ndarray, y_syn: np.ndarray, rng: np.random.Generator,
                     counts: Mapping[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(real indices kept, synthetic indices added) of one grid point; see the module docstring."""
    if protocol == "replace":
        return replacement_indices(y_real, y_syn, float(value), rng)
    classes = np.unique(y_real)
    every_real = np.arange(len(y_real))
    if protocol == "hybrid":
        return every_real, replacement_indices(y_real, y_syn, 1.0, rng)[1]
    if protocol in ("scale", "scale_hybrid"):
        scale = float(value)
        add = [_take(np.flatnonzero(y_syn == c), int(round(scale * np.sum(y_real == c))), rng,
                     f"scale {scale:g}, synthetic images of class {c} (raise generate.scale)") for c in classes]
        add = np.sort(np.concatenate(add))
        return (every_real if protocol == "scale_hybrid" else np.array([], int)), add
    if protocol == "count":
        sizes = np.array([np.sum(y_real == c) for c in classes])
        keep, add = [], []
        for c, n_real, n_syn in zip(classes, proportional_counts(int(counts["real"]), sizes),
                                    proportional_counts(int(counts["synthetic"]), sizes)):
            keep.append(_take(np.flatnonzero(y_real == c), n_real, rng,
                              f"classify.count_sets.{value}, real train_a images of class {c}"))
            add.append(_take(np.flatnonzero(y_syn == c), n_syn, rng,
                             f"classify.count_sets.{value}, synthetic images of class {c} (raise generate.scale)"))
        return np.sort(np.concatenate(keep)), np.sort(np.concatenate(add))
    raise ValueError(f"classifier protocol must be one of {PROTOCOLS}, got {protocol!r}")


def score_rows(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> list[dict]:
    """The ``class = all`` row (macro-F1, macro one-vs-rest AUC, accuracy) and one row per class."""
    s = classification_scores(y_true, proba, len(classes))
    rows = [{"class": "all", "f1": s["f1_macro"], "auc": s["auc_ovr"], "accuracy": s["accuracy"],
             "fpr": None, "tpr": None}]
    rows += [{"class": name, "f1": r["f1"], "auc": r["auc"], "accuracy": np.nan, "fpr": r["fpr"], "tpr": r["tpr"]}
             for name, r in zip(classes, per_class_scores(y_true, proba, len(classes)))]
    return rows


def prediction_frame(run: Mapping[str, Any], test_set: str, rows: pd.DataFrame, y_true: np.ndarray,
                     proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per test image: the run's keys, image id, true class index and ``p_<class>`` probabilities."""
    df = pd.DataFrame({**{k: run[k] for k in PREDICTION_COLUMNS[:5]}, "test_set": test_set,
                       "image_id": rows["image_id"].to_numpy(), "y_true": np.asarray(y_true, np.int64)})
    return pd.concat([df, pd.DataFrame(np.asarray(proba, np.float64), columns=[f"p_{c}" for c in classes])], axis=1)


def drop_copies(syn_rows: pd.DataFrame, copies: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Positions of the synthetic images the memorization audit did not flag, and the rows of those it did."""
    audit = read_parquet(copies, required=("set", "image_id", "is_copy"))
    flagged = set(audit.loc[(audit["set"] == "synthetic") & audit["is_copy"], "image_id"])
    missing = sorted(set(syn_rows["image_id"]) - set(audit.loc[audit["set"] == "synthetic", "image_id"]))[:3]
    if missing:
        raise ValueError(f"{copies}: no audit rows for synthetic images {missing} (rerun the memorization stage)")
    is_copy = syn_rows["image_id"].isin(flagged).to_numpy()
    return np.flatnonzero(~is_copy), syn_rows[is_copy]


def classify(manifest: str | Path, gen_manifest: str | Path, out_table: str | Path, log_table: str | Path,
             training_set_out: str | Path, params: Mapping[str, Any], hashes: str | Path | None = None,
             threads: int | None = None, predictions_out: str | Path | None = None,
             copies: str | Path | None = None) -> pd.DataFrame:
    """Entry point of the classify rule for one (variant, setting, seed, arch, point). ``hashes``: the leakage
    stage's image hashes; with them the training set is checked before training (``check_training_set``).
    ``copies``: the memorization audit of the synthetic set, whose flagged images are left out when
    ``params["exclude_copies"]``; ``predictions_out``: the test images' probabilities."""
    set_threads(threads)
    seed = int(params["seed"])
    seed_everything(seed)
    device = select_device(params["device"])
    classes = list(params["classes"])
    protocol, value, point = params["protocol"], params["value"], params["point"]
    xr, yr, real_rows = load_images(manifest, ["train_a"], classes)
    xv, yv, _ = load_images(manifest, ["train_b"], classes)
    xs, ys, syn_rows = load_images(gen_manifest, ["synthetic"], classes)
    excluded = syn_rows.iloc[:0]
    if params.get("exclude_copies"):
        if copies is None:
            raise ValueError("classify: exclude_copies is set but no memorization audit was given")
        kept, excluded = drop_copies(syn_rows, copies)
        xs, ys, syn_rows = xs[kept], ys[kept], syn_rows.iloc[kept].reset_index(drop=True)
        log.info("%d synthetic images flagged as copies left out of the pool", len(excluded))
    rng = np.random.default_rng([seed, zlib.crc32(point.encode())])
    keep, add = training_indices(protocol, value, yr.numpy(), ys.numpy(), rng, params.get("counts"))
    used = pd.concat([real_rows.iloc[keep][["image_id", "label"]].assign(origin="real"),
                      syn_rows.iloc[add][["image_id", "label"]].assign(origin="synthetic")], ignore_index=True)
    if hashes is not None:
        check_training_set(used, hashes, f"classifier {params['variant']}/{params['setting']}/seed{seed}/{point}")
    x, y = torch.cat([xr[keep], xs[add]]), torch.cat([yr[keep], ys[add]])
    resume = Path(out_table).with_name("classifier.resume.pt")
    model, hist = train_classifier(x, y, xv, yv, len(classes), params, seed, device, checkpoint=resume)
    run = {"variant": params["variant"], "setting": params["setting"], "seed": seed, "arch": params["arch"],
           "point": point, "protocol": protocol, "n_real": len(keep), "n_synthetic": len(add),
           "synthetic_scale": float(value) if protocol != "count" else len(add) / len(yr)}
    rows, predictions = [], []
    for split in params["test_sets"]:
        try:
            xt, yt, test_rows = load_images(manifest, [split], classes)
        except ValueError:
            log.info("no images in test set %s; skipped", split)
            continue
        proba = predict(model, xt, device)
        scores = score_rows(yt.numpy(), proba, classes)
        predictions.append(prediction_frame(run, split, test_rows, yt.numpy(), proba, classes))
        rows += [{**run, "test_set": split, **r, "epochs": len(hist)} for r in scores]
        log.info("%s (%d real, %d synthetic) on %s: macro-F1 %.3f AUC %.3f", point, len(keep), len(add), split,
                 scores[0]["f1"], scores[0]["auc"])
    table = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    if len(excluded):  # recorded, never used: after the leakage check of what is used
        used = pd.concat([used, excluded[["image_id", "label"]].assign(origin="excluded_copy")], ignore_index=True)
    write_parquet(used, training_set_out)
    if predictions_out is not None:
        write_parquet(pd.concat(predictions, ignore_index=True) if predictions else
                      pd.DataFrame(columns=[*PREDICTION_COLUMNS, *(f"p_{c}" for c in classes)]), predictions_out)
    write_parquet(pd.DataFrame(hist).assign(point=point), log_table)
    write_parquet(table, out_table)
    resume.unlink(missing_ok=True)
    return table
