"""Report: the autoencoder comparison, mean ± std over seeds as Parquet, a real-vs-synthetic grid per class and
an F1-vs-ratio plot."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .io import (atomic_path, feature_columns, log, pyplot, read_parquet, read_rgb, resolve_path, save_figure,
                 write_parquet)


def summarise(df: pd.DataFrame, keys: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Mean, sample std (ddof = 1; NaN for one seed) and number of seeds of ``values`` per ``keys`` group."""
    long = df.melt(id_vars=list(keys), value_vars=list(values), var_name="metric", value_name="value")
    out = long.groupby(list(keys) + ["metric"], dropna=False)["value"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "n_seeds"})


def image_grid(real_manifest: str | Path, gen_manifest: str | Path, label: str, path: str | Path,
               n: int = 8, seed: int = 0) -> None:
    """Top row: ``n`` real train_a images of ``label``; bottom row: ``n`` synthetic ones."""
    plt = pyplot()

    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.6))
    for row, (manifest, split, title) in enumerate(((real_manifest, "train_a", "real"),
                                                    (gen_manifest, "synthetic", "synthetic"))):
        df = read_parquet(manifest, required=("path", "label", "split"))
        df = df[(df["label"] == label) & (df["split"] == split)]
        pick = df.iloc[rng.permutation(len(df))[:n]] if len(df) else df
        for i, ax in enumerate(axes[row]):
            ax.axis("off")
            if i < len(pick):
                ax.imshow(read_rgb(resolve_path(manifest, pick["path"].iloc[i])))
        axes[row][0].set_title(title, fontsize=8, loc="left")
    fig.suptitle(label)
    save_figure(fig, path)


def pca_scatter(real_features: str | Path, gen_features: str | Path, path: str | Path, title: str) -> None:
    """Real (train_a + train_b) and synthetic images in the first two principal components of the domain
    network's features, fitted on the real ones (CLUE Fig. 5): one colour per class, filled = real, hollow =
    synthetic."""
    plt = pyplot()
    from sklearn.decomposition import PCA

    real = read_parquet(real_features, required=("label", "split"))
    real = real[real["split"].isin(["train_a", "train_b"])]
    gen = read_parquet(gen_features, required=("label",))
    cols = feature_columns(real)
    pca = PCA(n_components=2, random_state=0).fit(real[cols].to_numpy(np.float64))
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for i, label in enumerate(sorted(set(real["label"]) | set(gen["label"]))):
        colour = f"C{i}"
        for df, kind in ((real, "real"), (gen, "synthetic")):
            pts = pca.transform(df.loc[df["label"] == label, cols].to_numpy(np.float64))
            ax.scatter(pts[:, 0], pts[:, 1], s=9, label=f"{label} {kind}", edgecolors=colour,
                       facecolors=colour if kind == "real" else "none", linewidths=0.7, alpha=0.7)
    ev = pca.explained_variance_ratio_ * 100
    ax.set_xlabel(f"PC 1 ({ev[0]:.0f} % of the real variance)")
    ax.set_ylabel(f"PC 2 ({ev[1]:.0f} %)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, markerscale=1.5)
    save_figure(fig, path)


def f1_curve(summary: pd.DataFrame, path: str | Path, n_classes: int, protocol: str, xlabel: str,
             intervals: pd.DataFrame | None = None) -> None:
    """Macro-F1 against the synthetic share (``replace``, CLUE Fig. 8-9) or scale (``scale``, Fig. 10-11) in %,
    one line per variant / setting / arch / test set, the bars the bootstrap confidence intervals of
    ``intervals`` (``pipeline_lib.stats``; without them ± std over seeds); the matching "+ all real" point is a
    star; the dotted line is chance (1 / n_classes)."""
    plt = pyplot()
    hybrid = {"replace": "hybrid", "scale": "scale_hybrid"}[protocol]
    f1 = summary[summary["metric"] == "f1_macro"]
    if intervals is not None and len(intervals):
        ci = intervals.loc[intervals["metric"] == "f1_macro", ["variant", "setting", "arch", "point", "test_set",
                                                               "low", "high"]]
        f1 = f1.merge(ci, on=["variant", "setting", "arch", "point", "test_set"], how="left")
        confidence = f"{100 * intervals['confidence'].iloc[0]:g} % bootstrap intervals"
    else:
        f1 = f1.assign(low=f1["mean"] - f1["std"].fillna(0), high=f1["mean"] + f1["std"].fillna(0))
        confidence = "± std over seeds"

    def bars(df: pd.DataFrame) -> np.ndarray:
        return np.vstack([df["mean"] - df["low"], df["high"] - df["mean"]]).clip(0)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (variant, setting, arch, test_set), g in f1.groupby(["variant", "setting", "arch", "test_set"]):
        pts = g[g["protocol"] == protocol].sort_values("synthetic_scale")
        if pts.empty:
            continue
        line = ax.errorbar(pts["synthetic_scale"] * 100, pts["mean"], yerr=bars(pts), marker="o", capsize=3,
                           label=f"{variant}/{setting}/{arch} on {test_set}")
        hyb = g[g["protocol"] == hybrid]
        if len(hyb):
            ax.errorbar(hyb["synthetic_scale"] * 100, hyb["mean"], yerr=bars(hyb), marker="*", markersize=11,
                        color=line[0].get_color(), linestyle="none", capsize=3)
    ax.set_title(f"bars: {confidence}", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("macro-F1")
    ax.set_ylim(0, 1)
    ax.axhline(1 / n_classes, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def mean_roc(rows: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    """The macro-averaged one-vs-rest ROC: each (seed, class) curve's TPR interpolated at the FPRs of ``grid``
    (the curves are step-wise increasing, so linear interpolation between their points), then averaged."""
    curves = [np.interp(grid, np.asarray(f, float), np.asarray(t, float)) for f, t in zip(rows["fpr"], rows["tpr"])]
    return np.mean(curves, axis=0)


def roc_figure(scores: pd.DataFrame, path: str | Path, point: str) -> None:
    """ROC curves of the classifiers trained at ``point`` (CLUE Fig. 8-11: 100 % synthetic), macro-averaged over
    classes and seeds, one curve per variant / setting / arch / test set, with the mean AUC."""
    plt = pyplot()
    grid = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    per_class = scores[(scores["point"] == point) & (scores["class"] != "all")]
    for (variant, setting, arch, test_set), g in per_class.groupby(["variant", "setting", "arch", "test_set"]):
        auc = scores[(scores["point"] == point) & (scores["class"] == "all") & (scores["variant"] == variant)
                     & (scores["setting"] == setting) & (scores["arch"] == arch) & (scores["test_set"] == test_set)]
        ax.plot(grid, mean_roc(g, grid), label=f"{variant}/{setting}/{arch} on {test_set} "
                                               f"(AUC {auc['auc'].mean():.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{point}: one-vs-rest ROC, mean over classes and seeds", fontsize=8)
    ax.legend(fontsize=6)
    save_figure(fig, path)


def point_order(points: Sequence[str]) -> list[str]:
    """Grid points in the papers' row order: replacement by share, its + real point, scales, theirs, counts."""
    kind = {"replace": 0, "scale": 2, "count": 4}

    def key(p: str):
        parts = p.split("_")
        plus = p.endswith("_plus_real")
        number = float(parts[1]) if parts[0] in ("replace", "scale") else 0.0
        return kind[parts[0]] + plus, number, p

    return sorted(set(points), key=key)


def interval_cells(intervals: pd.DataFrame, differences: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Per arm and metric the cells "mean [low, high]" (``ci``) and, against the baseline, "difference [low,
    high] p = Holm-adjusted p" (``diff``)."""
    keys = ["variant", "setting", "arch", "point", "test_set", "metric"]
    f = f"{{:.{digits}f}}"
    cells = [f"{f.format(m)} [{f.format(lo)}, {f.format(hi)}]"
             for m, lo, hi in zip(intervals["mean"], intervals["low"], intervals["high"])]
    ci = intervals.assign(ci=cells)[keys + ["ci"]]
    if differences is None or differences.empty:
        return ci.assign(diff="")
    diff = differences.assign(diff=[f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] p = {p:.3g}"
                                    for d, lo, hi, p in zip(differences["difference"], differences["low"],
                                                            differences["high"], differences["p_holm"])])
    return ci.merge(diff[keys + ["diff"]], on=keys, how="left").fillna({"diff": ""})


def classify_tables(overall: pd.DataFrame, intervals: pd.DataFrame | None = None,
                    differences: pd.DataFrame | None = None) -> pd.DataFrame:
    """CLUE Tables 8-15 and the multi-level paper's Table I in one: a row per (arch, test set, metric, grid
    point), a column per variant / setting, cells "mean (± std)" over seeds; with the statistics
    (``pipeline_lib.stats``) for each column also "<column> CI" ("mean [low, high]", macro-F1 and AUC) and
    "<column> vs <baseline>" (the paired difference, its interval and Holm-adjusted p)."""
    metrics = ["f1_macro", "auc_ovr", "accuracy"]
    cells = mean_std_cells(overall, ["arch", "test_set", "point", "variant", "setting"], metrics)
    long = cells.melt(id_vars=["arch", "test_set", "point", "variant", "setting"], value_vars=metrics,
                      var_name="metric", value_name="cell")
    long["column"] = long["variant"] + "/" + long["setting"]
    if intervals is not None and len(intervals):
        stats = interval_cells(intervals, differences)
        long = long.merge(stats, on=["variant", "setting", "arch", "point", "test_set", "metric"], how="left")
        baseline = differences["baseline"].iloc[0] if differences is not None and len(differences) else None
        extra = [long.assign(column=long["column"] + " CI", cell=long["ci"].fillna(""))]
        if baseline:
            extra.append(long.assign(column=long["column"] + f" vs {baseline}", cell=long["diff"].fillna("")))
        long = pd.concat([long, *extra], ignore_index=True)
    table = long.pivot(index=["arch", "test_set", "metric", "point"], columns="column", values="cell").reset_index()
    order = {p: i for i, p in enumerate(point_order(table["point"]))}
    table = table.sort_values(["arch", "test_set", "metric", "point"],
                              key=lambda c: c.map(order) if c.name == "point" else c)
    table.columns.name = None
    return table.reset_index(drop=True)


def mean_std_cells(df: pd.DataFrame, keys: Sequence[str], values: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """One row per ``keys`` group, for each value column ``<v>_mean``, ``<v>_std`` (ddof = 1) and the paper-style
    cell ``<v>`` = "mean (± std)"; ``n_seeds`` rows per group."""
    g = df.groupby(list(keys), sort=True, dropna=False)
    out = g[list(values)].agg(["mean", "std"])
    out.columns = [f"{v}_{stat}" for v, stat in out.columns]
    for v in values:
        out[v] = [f"{m:.{digits}f} (± {s:.{digits}f})" if np.isfinite(s) else f"{m:.{digits}f}"
                  for m, s in zip(out[f"{v}_mean"], out[f"{v}_std"])]
    out["n_seeds"] = g.size()
    return out.reset_index()


def cluster_generation_table(tables: Sequence[str]) -> pd.DataFrame:
    """cLDM Table 4 (a row per cluster set: SSIM, MS-SSIM, LPIPS or its substitute) with the accuracy of section
    4.5, mean (± std) over seeds; ``cluster`` = all for the cluster set, cluster_<j> for each cluster."""
    q = pd.concat([read_parquet(p) for p in tables], ignore_index=True)
    metrics = [c for c in ("accuracy", "ssim", "ms_ssim", "lpips", "domain_perceptual") if c in q]
    q["order"] = q["cluster"].map(lambda c: -1 if c == "all" else int(c.rsplit("_", 1)[1]))
    out = mean_std_cells(q, ["variant", "setting", "method", "k", "order", "cluster"], metrics)
    return out.sort_values(["method", "k", "variant", "setting", "order"]).drop(columns="order").reset_index(drop=True)


def trajectory_detail(tables: Sequence[str]) -> pd.DataFrame:
    """Every traversal metric (CFRT as the poster, cfrt_flip, flip rate, perceptual distance, latent direction
    cosine) per variant, setting, attribute, swap step and Bezier position, mean (± std) over seeds."""
    t = pd.concat([read_parquet(p) for p in tables], ignore_index=True)
    metrics = [c for c in ("cfrt", "cfrt_flip", "flip_rate", "lpips", "domain_perceptual", "cos_direction") if c in t]
    return mean_std_cells(t, ["variant", "setting", "neutral", "attribute", "alpha", "swap_step", "timestep"], metrics)


def trajectory_summary(tables: Sequence[str]) -> pd.DataFrame:
    """The poster's table: a row per attribute (and swap step: the poster does not state its timestep), CFRT and
    LPIPS (or its named substitute) for the swapped embedding e' (Bezier position 1, "Style") and for the Bezier
    interpolations towards it (the positions below 1, averaged per seed: "Interpolations"), mean (± std) over
    seeds. Columns ``swap_cfrt``, ``swap_<perceptual>``, ``interpolation_cfrt``, ``interpolation_<perceptual>``."""
    t = pd.concat([read_parquet(p) for p in tables], ignore_index=True)
    distance = next(c for c in ("lpips", "domain_perceptual") if c in t)
    keys = ["variant", "setting", "neutral", "attribute", "swap_step", "timestep"]
    t["block"] = np.where(t["alpha"] >= 1.0, "swap", "interpolation")
    per_seed = t.groupby([*keys, "seed", "block"], sort=False)[["cfrt", distance]].mean().unstack("block")
    per_seed.columns = [f"{block}_{metric}" for metric, block in per_seed.columns]
    cells = [f"{b}_{m}" for b in ("swap", "interpolation") for m in ("cfrt", distance) if f"{b}_{m}" in per_seed]
    return mean_std_cells(per_seed.reset_index(), keys, cells)


def semantic_variance_table(tables: Sequence[str]) -> pd.DataFrame:
    """Multi-level paper Table 6: a row per class (and all classes), the semantic variance (PCA) of the generated
    set A and of the set AI with interpolated samples, mean (± std) over seeds, and the share of seeds in which
    AI's is the higher; ``<set>_full`` is the same without the projection."""
    t = pd.concat([read_parquet(p) for p in tables], ignore_index=True)
    keys = ["variant", "setting", "embedding", "pca_components", "class", "seed"]
    wide = t.pivot_table(index=keys, columns="set", values=["variance_pca", "variance_full"]).reset_index()
    wide.columns = [f"{s}_full" if v == "variance_full" else (s or v) for v, s in wide.columns]
    wide["ai_higher"] = (wide["AI"] > wide["A"]).astype(float)
    out = mean_std_cells(wide, keys[:-1], ["A", "AI", "A_full", "AI_full"], digits=4)
    out["ai_higher_share"] = wide.groupby(keys[:-1], sort=True)["ai_higher"].mean().to_numpy()
    order = {c: i for i, c in enumerate(dict.fromkeys(t["class"]))}
    return out.sort_values(["variant", "setting", "class"], key=lambda c: c.map(order) if c.name == "class" else c
                           ).reset_index(drop=True)


def write_csv_copy(table: pd.DataFrame, path: str | Path) -> None:
    """A Parquet table as CSV for `snakemake --report` (columns holding arrays, e.g. ROC points, left out)."""
    scalar = [c for c in table.columns if not table[c].map(lambda v: isinstance(v, (list, np.ndarray))).any()]
    with atomic_path(path) as tmp:
        table[scalar].to_csv(tmp, index=False)


def report(inputs: Mapping[str, Sequence[str]], outputs: Mapping[str, Any], params: Mapping[str, Any]) -> None:
    """Entry point of the report rule. ``inputs``: recon, classify, evaluate and cluster_quality tables, the real
    manifest and the generated manifests; the class-based outputs exist when class-conditioned variants do,
    ``cluster_generation`` when cluster-conditioned ones do."""
    pd.set_option("display.width", 160)

    def emit(key: str, table: pd.DataFrame) -> None:  # a report table, and its CSV copy where one is asked for
        write_parquet(table, outputs[key])
        if f"{key}_csv" in outputs:
            write_csv_copy(table, outputs[f"{key}_csv"])

    recon = pd.concat([read_parquet(p) for p in inputs["recon"]], ignore_index=True)
    emit("autoencoder_comparison", recon)
    log.info("autoencoders, reconstructions of the test split (multi-level paper Table 1):\n%s",
             recon.to_string(index=False))
    if inputs["classify"]:
        cls = pd.concat([read_parquet(p) for p in inputs["classify"]], ignore_index=True)
        overall = cls[cls["class"] == "all"].rename(columns={"f1": "f1_macro", "auc": "auc_ovr"})
        ev = pd.concat([read_parquet(p) for p in inputs["evaluate"]], ignore_index=True)
        cls_summary = summarise(overall, ["variant", "setting", "arch", "point", "protocol", "synthetic_scale",
                                          "test_set"], ["f1_macro", "auc_ovr", "accuracy"])
        stats = {k: read_parquet(inputs[k][0]) if inputs.get(k) else None
                 for k in ("intervals", "differences")}
        tables = classify_tables(overall, stats["intervals"], stats["differences"])
        emit("classify_tables", tables)
        if "classify_differences" in outputs:
            emit("classify_differences", stats["differences"] if stats["differences"] is not None else pd.DataFrame())
        per_class = cls[cls["class"] != "all"]
        emit("classify_per_class", mean_std_cells(per_class, ["variant", "setting", "arch", "point", "test_set",
                                                              "class"], ["f1", "auc"]))
        ev_summary = ev.groupby(["variant", "setting", "reference", "class", "metric"])["value"].agg(
            ["mean", "std", "count"]).reset_index().rename(columns={"count": "n_seeds"})
        emit("classify_summary", cls_summary)
        emit("evaluate_summary", ev_summary)
        n = len(params["classes"])
        f1_curve(cls_summary, outputs["f1_plot"], n, "replace",
                 "synthetic share of the training set (%)  (star: 100 % synthetic + all real)", stats["intervals"])
        if "f1_scale_plot" in outputs:
            f1_curve(cls_summary, outputs["f1_scale_plot"], n, "scale",
                     "synthetic images, % of the real training set  (star: + all real)", stats["intervals"])
        if "roc_plot" in outputs:
            roc_figure(cls, outputs["roc_plot"], params["roc_point"])
        for label, path in zip(params["classes"], outputs["grids"]):
            image_grid(inputs["manifest"], inputs["generated"][0], label, path, seed=int(params["seed"]))
        for (variant, setting, gen_features), path in zip(params["pca"], outputs["pca"]):
            pca_scatter(inputs["real_features"], gen_features, path, f"{variant} / {setting}")
        log.info("classification, macro-F1, mean (± std) over seeds, bootstrap intervals, paired differences:\n%s",
                 tables[tables["metric"] == "f1_macro"].drop(columns="metric").to_string(index=False))
        log.info("image quality, mean ± std over seeds:\n%s", ev_summary.to_string(index=False))
    if inputs.get("trajectory"):
        emit("trajectory_detail", trajectory_detail(inputs["trajectory"]))
        table = trajectory_summary(inputs["trajectory"])
        emit("trajectory_summary", table)
        cells = [c for c in table if not c.endswith(("_mean", "_std"))]
        log.info("trajectory traversal (the poster's table), mean (± std) over seeds:\n%s",
                 table[cells].to_string(index=False))
    if inputs.get("interpolation"):
        table = semantic_variance_table(inputs["interpolation"])
        emit("semantic_variance", table)
        cells = [c for c in table if not c.endswith(("_mean", "_std", "_full"))]
        log.info("semantic variance of A and AI (multi-level paper Table 6), mean (± std) over seeds:\n%s",
                 table[cells].to_string(index=False))
    if inputs.get("memorization"):
        table = pd.concat([read_parquet(p) for p in inputs["memorization"]], ignore_index=True)
        emit("memorization", table)
        for src, dst in zip(inputs["memorization_figures"], outputs["memorization_figures"]):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        cells = ["variant", "setting", "seed", "class", "n_synthetic", "pixel_synthetic_flagged",
                 "pixel_heldout_flagged", "pixel_threshold", "pixel_synthetic_authenticity",
                 "pixel_heldout_authenticity"]
        log.info("memorization audit, share of synthetic images flagged as copies:\n%s",
                 table[[c for c in cells if c in table]].to_string(index=False))
    if inputs["cluster_quality"]:
        table = cluster_generation_table(inputs["cluster_quality"])
        emit("cluster_generation", table)
        cells = [c for c in table if not c.endswith(("_mean", "_std"))]
        log.info("cluster-conditioned generation (cLDM Table 4 and section 4.5), mean (± std) over seeds:\n%s",
                 table[cells].to_string(index=False))
