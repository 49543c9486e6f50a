"""The classifier grid's training sets (replacement, hybrid, scaling, fixed counts), its per-run table and the
report's paper-shaped tables and ROC averaging."""
import numpy as np
import pandas as pd
import pytest

from pipeline_lib.classify import classify, proportional_counts, replacement_indices, training_indices
from pipeline_lib.report import classify_tables, mean_roc, point_order

Y_REAL = np.repeat([0, 1, 2], [10, 6, 4])
Y_SYN = np.repeat([0, 1, 2], 30)


def test_replacement_keeps_size_and_class_balance():
    rng = np.random.default_rng(0)
    for ratio in (0.0, 0.3, 0.5, 1.0):
        keep, add = replacement_indices(Y_REAL, Y_SYN, ratio, rng)
        assert len(keep) + len(add) == len(Y_REAL)
        for c, n in enumerate([10, 6, 4]):
            assert (Y_REAL[keep] == c).sum() == n - round(n * ratio)
            assert (Y_SYN[add] == c).sum() == round(n * ratio)
        assert len(set(keep)) == len(keep) and len(set(add)) == len(add)


def test_replacement_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"ratios must lie in \[0, 1\], got 1.5"):
        replacement_indices(np.zeros(4, int), np.zeros(4, int), 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"replacement ratio 1.0, synthetic images of class 0 \(raise generate.scale\)"
                                         r": 4 images needed, only 2 available"):
        replacement_indices(np.zeros(4, int), np.zeros(2, int), 1.0, np.random.default_rng(0))


def test_hybrid_and_scaling_sets_have_exact_counts_per_class():
    rng = np.random.default_rng(1)
    keep, add = training_indices("hybrid", 1.0, Y_REAL, Y_SYN, rng)
    assert np.array_equal(keep, np.arange(20)) and np.bincount(Y_SYN[add]).tolist() == [10, 6, 4]
    keep, add = training_indices("scale", 2.5, Y_REAL, Y_SYN, rng)
    assert len(keep) == 0 and np.bincount(Y_SYN[add]).tolist() == [25, 15, 10]
    keep, add = training_indices("scale_hybrid", 2.0, Y_REAL, Y_SYN, rng)
    assert len(keep) == 20 and np.bincount(Y_SYN[add]).tolist() == [20, 12, 8]
    with pytest.raises(ValueError, match=r"scale 5, synthetic images of class 0 .*50 images needed, only 30"):
        training_indices("scale", 5.0, Y_REAL, Y_SYN, rng)
    with pytest.raises(ValueError, match="protocol must be one of"):
        training_indices("mix", 1.0, Y_REAL, Y_SYN, rng)


def test_fixed_counts_follow_the_class_proportions():
    # By hand: 7 over sizes 5, 3, 2 -> shares 3.5, 2.1, 1.4 -> floors 3, 2, 1 and the largest remainder (0.5) + 1.
    assert proportional_counts(7, np.array([5, 3, 2])).tolist() == [4, 2, 1]
    assert proportional_counts(10, np.array([5, 3, 2])).tolist() == [5, 3, 2]
    assert proportional_counts(0, np.array([5, 3, 2])).tolist() == [0, 0, 0]
    rng = np.random.default_rng(2)
    keep, add = training_indices("count", "hybrid10", Y_REAL, Y_SYN, rng, {"real": 10, "synthetic": 40})
    assert np.bincount(Y_REAL[keep]).tolist() == [5, 3, 2] and np.bincount(Y_SYN[add]).tolist() == [20, 12, 8]
    with pytest.raises(ValueError, match=r"classify.count_sets.big, real train_a images of class 0: 20 images"):
        training_indices("count", "big", Y_REAL, Y_SYN, rng, {"real": 40, "synthetic": 0})


def _fake_generated(manifest, tmp_path):
    real = pd.read_parquet(manifest)
    syn = real[real["split"] == "train_b"].assign(split="synthetic")
    syn["path"] = [str(manifest.parent / p) for p in syn["path"]]
    syn["image_id"] = "syn_" + syn["image_id"]
    path = tmp_path / "gen.parquet"
    syn.to_parquet(path)
    return path


def test_classify_run_table_and_recorded_training_set(tiny_manifest, tiny_config, tmp_path):
    gen = _fake_generated(tiny_manifest, tmp_path)
    c = tiny_config["classify"]
    params = {k: c[k] for k in ("feature_dim", "width", "shift_pixels", "early_stopping_patience", "batch_size",
                                "lr", "lr_patience", "lr_factor", "test_sets")}
    params |= {"epochs": 2, "arch": "small_cnn", "point": "replace_50", "protocol": "replace", "value": 0.5,
               "variant": "class", "setting": "cfg", "seed": 3, "device": "cpu",
               "classes": tiny_config["data"]["classes"]}

    def run(name):
        out = tmp_path / name
        table = classify(tiny_manifest, gen, out / "scores.parquet", out / "log.parquet", out / "set.parquet", params,
                         predictions_out=out / "pred.parquet")
        return table, pd.read_parquet(out / "set.parquet")

    table, used = run("a")
    classes = tiny_config["data"]["classes"]
    assert set(table["test_set"]) == {"test", "external"}
    for _, g in table.groupby("test_set"):
        assert g["class"].tolist() == ["all", *classes]
        assert g["f1"].between(0, 1).all() and 0 <= g["accuracy"].iloc[0] <= 1
        roc = g.iloc[1]
        assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and np.all(np.diff(roc["fpr"]) >= 0)
    real = pd.read_parquet(tiny_manifest)
    train_a = real[real["split"] == "train_a"]
    assert set(used.loc[used["origin"] == "real", "image_id"]) <= set(train_a["image_id"])
    assert used.groupby("origin").size().to_dict() == {"real": len(train_a) // 2, "synthetic": len(train_a) // 2}
    assert (table["n_real"] == len(train_a) // 2).all()
    pred = pd.read_parquet(tmp_path / "a" / "pred.parquet")
    for split, g in pred.groupby("test_set"):
        want = real[real["split"] == split]
        assert g["image_id"].tolist() == want["image_id"].tolist()
        assert g["y_true"].tolist() == [classes.index(c) for c in want["label"]]
        probs = g[[f"p_{c}" for c in classes]].to_numpy()
        # the table's scores are those of these probabilities
        from pipeline_lib.metrics import classification_scores
        s = classification_scores(g["y_true"].to_numpy(), probs, len(classes))
        row = table[(table["test_set"] == split) & (table["class"] == "all")].iloc[0]
        assert s["f1_macro"] == row["f1"] and s["auc_ovr"] == row["auc"]
    again, used_again = run("b")
    assert used.equals(used_again)
    pd.testing.assert_frame_equal(table.drop(columns=["fpr", "tpr"]), again.drop(columns=["fpr", "tpr"]))


def test_paper_tables_rows_are_points_and_columns_settings():
    rows = [{"arch": "a", "test_set": "test", "point": p, "variant": v, "setting": "s", "seed": seed,
             "f1_macro": f, "auc_ovr": 0.9, "accuracy": 0.8}
            for p, f in (("replace_100", 0.5), ("replace_0", 0.7), ("replace_100_plus_real", 0.8), ("scale_200", 0.6))
            for v in ("class", "clue") for seed, d in ((0, 0.0), (1, 0.1)) for f in [f + d]]
    t = classify_tables(pd.DataFrame(rows))
    f1 = t[t["metric"] == "f1_macro"]
    assert f1["point"].tolist() == ["replace_0", "replace_100", "replace_100_plus_real", "scale_200"]
    assert set(t.columns) == {"arch", "test_set", "metric", "point", "class/s", "clue/s"}
    assert f1.iloc[0]["class/s"] == "0.750 (± 0.071)"
    assert point_order(["count_b", "scale_1000_plus_real", "scale_100", "replace_50", "count_a"]) == \
        ["replace_50", "scale_100", "scale_1000_plus_real", "count_a", "count_b"]


def test_paper_tables_gain_intervals_and_paired_differences():
    keys = {"arch": "a", "test_set": "test", "variant": "class", "setting": "s"}
    rows = [{**keys, "point": p, "seed": seed, "f1_macro": f + d, "auc_ovr": 0.9, "accuracy": 0.8}
            for p, f in (("replace_0", 0.7), ("replace_100", 0.5)) for seed, d in ((0, 0.0), (1, 0.1))]
    intervals = pd.DataFrame([{**keys, "point": p, "metric": m, "mean": mean, "low": mean - 0.1, "high": mean + 0.1,
                               "confidence": 0.95}
                              for p, mean in (("replace_0", 0.75), ("replace_100", 0.55))
                              for m in ("f1_macro", "auc_ovr")])
    differences = pd.DataFrame([{**keys, "point": "replace_100", "metric": m, "baseline": "replace_0",
                                 "difference": -0.2, "low": -0.3, "high": -0.1, "p": 0.001, "p_holm": 0.002}
                                for m in ("f1_macro", "auc_ovr")])
    t = classify_tables(pd.DataFrame(rows), intervals, differences)
    f1 = t[t["metric"] == "f1_macro"].set_index("point")
    assert f1.loc["replace_0", "class/s"] == "0.750 (± 0.071)" and f1.loc["replace_0", "class/s CI"] == \
        "0.750 [0.650, 0.850]"
    assert f1.loc["replace_100", "class/s vs replace_0"] == "-0.200 [-0.300, -0.100] p = 0.002"
    assert f1.loc["replace_0", "class/s vs replace_0"] == ""
    assert t.loc[t["metric"] == "accuracy", "class/s CI"].eq("").all()  # no interval for accuracy


def test_mean_roc_by_hand():
    rows = pd.DataFrame({"fpr": [np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0])],
                         "tpr": [np.array([0.0, 1.0, 1.0]), np.array([0.0, 1.0])]})
    grid = np.array([0.0, 0.5, 1.0])
    # First curve: perfect (tpr 1 from fpr 0; np.interp takes the last point at a repeated fpr); second: chance.
    assert mean_roc(rows, grid).tolist() == pytest.approx([0.5, 0.75, 1.0])
