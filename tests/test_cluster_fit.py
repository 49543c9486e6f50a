"""Cluster stage: features, k-means and IMSAT partitions, the index table and the choice of k."""
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from pipeline_lib.cluster.fit import (INDICES, affine, cluster_stage, fit_partition, imsat, index_table,
                                      latent_features, predict_partition, random_affine, select_k)

IMSAT = {"hidden": 32, "epochs": 60, "batch_size": 64, "lr": 0.003, "lambda": 0.1, "mu": 4.0, "noise": 0.1}


def _blobs(k=3, n=60, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(k, 4))
    y = np.repeat(np.arange(k), n)
    return centres[y] + rng.normal(size=(k * n, 4)), y


def test_latent_features_pool_flatten_and_standardise():
    lat = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert latent_features(lat, "flatten", 2, False).shape == (2, 48)
    pooled = latent_features(lat, "avg", 2, False)
    assert pooled.shape == (2, 12) and pooled[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    z = latent_features(lat + torch.randn(lat.shape), "avg", 1, True)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    with pytest.raises(ValueError, match="pooling must be 'avg' or 'flatten', got 'max'"):
        latent_features(lat, "max", 2, False)


def test_imsat_recovers_separated_blobs_and_is_deterministic():
    x, y = _blobs()
    a, _ = imsat(x, 3, IMSAT, seed=0)
    assert adjusted_rand_score(y, a) > 0.95
    np.testing.assert_array_equal(a, imsat(x, 3, IMSAT, seed=0)[0])


def test_affine_rotates_shifts_and_scales_as_stated():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    one, none = torch.ones(2), torch.zeros(2, 2)
    # 90 degrees maps pixel centres onto pixel centres: torch.rot90 (counter-clockwise as displayed); the float32
    # sampling grid's rounding (about 1e-6 of a pixel) times the image's steps of 1 to 6 per pixel stays below 1e-4
    torch.testing.assert_close(affine(x, torch.full((2,), 90.0), one, none), torch.rot90(x, 1, dims=(2, 3)),
                               rtol=0, atol=1e-4)
    moved = affine(x, torch.zeros(2), one, torch.tensor([[1 / 6, 0.0]] * 2))  # one pixel to the right
    torch.testing.assert_close(moved[..., 1:], x[..., :-1], rtol=0, atol=1e-4)
    # empty ranges: the identity (up to the float32 grid's rounding times the image's steps of 1 to 6)
    torch.testing.assert_close(random_affine(x, 0, 0, 0, torch.Generator().manual_seed(0)), x, rtol=0, atol=1e-4)
    views = random_affine(x, 15, 0.05, 0.1, torch.Generator().manual_seed(0))
    assert views.shape == x.shape and not torch.allclose(views, x)


def test_imsat_takes_transformed_views_as_its_self_augmentation():
    """T(x) drawn from given views: views equal to the data (a transformation that changes nothing) recover the
    blobs as the noise version does; views of the wrong shape are an error."""
    x, y = _blobs()
    views = np.stack([x + np.random.default_rng(i).normal(scale=0.3, size=x.shape) for i in range(3)])
    a, _ = imsat(x, 3, IMSAT, seed=0, views=views)
    assert adjusted_rand_score(y, a) > 0.95
    np.testing.assert_array_equal(a, imsat(x, 3, IMSAT, seed=0, views=views)[0])
    with pytest.raises(ValueError, match=r"imsat: expected views of shape \(V, 180, 4\), got \(3, 180, 2\)"):
        imsat(x, 3, IMSAT, seed=0, views=views[..., :2])


def test_selection_picks_the_true_k_on_blobs_and_votes():
    x, y = _blobs(k=3)
    rows = []
    for k in (2, 3, 4, 5):
        rows += index_table(x, KMeans(k, n_init=5, random_state=0).fit_predict(x), "kmeans", k)
    table = pd.DataFrame(rows)
    assert set(table["index"]) == set(INDICES) and list(table.columns) == ["method", "k", "clusters_used", "index",
                                                                           "value"]
    sel = select_k(table)
    assert sel.loc[sel["index"] == "majority", "best_k"].item() == 3
    assert sel.loc[sel["index"] == "calinski_harabasz", "best_k"].item() == 3


def test_majority_tie_goes_to_the_smaller_k():
    rows = []
    best = {"calinski_harabasz": 4, "dunn": 4, "hartigan": 2, "c_index": 2, "mcclain_rao": 3}
    for name, (_, rule) in INDICES.items():
        for k in (2, 3, 4):
            good = k == best[name]
            rows.append({"method": "m", "k": k, "clusters_used": k, "index": name,
                         "value": (1.0 if good else 0.0) if rule == "max" else (0.0 if good else 1.0)})
    sel = select_k(pd.DataFrame(rows))
    assert sel.loc[sel["index"] == "majority", "best_k"].item() == 2  # 4 and 2 have two votes each


def test_cluster_stage_tables(tiny_manifest, tiny_ae, tmp_path, tiny_config):
    shared = {"seed": 0, "device": "cpu", "classes": tiny_config["data"]["classes"]}
    params = {**shared, "splits": ["train_a", "train_b"], "k_values": [2, 3],
              "features": {"pooling": "avg", "pool_size": 2, "standardize": True}, "methods": ["kmeans", "imsat"],
              "kmeans_n_init": 2, "imsat": {**IMSAT, "epochs": 3}}
    sel = cluster_stage(tiny_manifest, tiny_ae, tmp_path / "i.parquet", tmp_path / "s.parquet",
                        tmp_path / "a.parquet", params)
    table = pd.read_parquet(tmp_path / "i.parquet")
    assert len(table) == 2 * 2 * len(INDICES)
    assign = pd.read_parquet(tmp_path / "a.parquet")
    n = pd.read_parquet(tiny_manifest)["split"].isin(["train_a", "train_b"]).sum()
    assert len(assign) == 2 * 2 * n and set(sel["index"]) == {*INDICES, "majority"}
    # the paper's image-level self-augmentation: rotated, translated, scaled copies encoded
    image = {**params, "methods": ["imsat"], "k_values": [2],
             "imsat": {**params["imsat"], "augmentation": "image", "views": 2, "rotation": 15, "translation": 0.05,
                       "scaling": 0.1}}
    cluster_stage(tiny_manifest, tiny_ae, tmp_path / "i2.parquet", tmp_path / "s2.parquet", tmp_path / "a2.parquet",
                  image)
    assert len(pd.read_parquet(tmp_path / "a2.parquet")) == n


def test_index_table_marks_degenerate_partitions():
    x, _ = _blobs()
    rows = index_table(x, np.zeros(len(x), int), "imsat", 3)  # everything in one cluster
    assert all(np.isnan(r["value"]) and r["clusters_used"] == 1 for r in rows)
    assert select_k(pd.DataFrame(rows)).empty


def test_nbclust_hartigan_variant_is_selectable(tiny_manifest, tiny_ae, tmp_path, tiny_config):
    shared = {"seed": 0, "device": "cpu", "classes": tiny_config["data"]["classes"]}
    params = {**shared, "splits": ["train_a", "train_b"], "k_values": [2, 3, 4], "hartigan": "nbclust",
              "features": {"pooling": "avg", "pool_size": 1, "standardize": True}, "methods": ["kmeans"],
              "kmeans_n_init": 2, "imsat": IMSAT}
    sel = cluster_stage(tiny_manifest, tiny_ae, tmp_path / "i.parquet", tmp_path / "s.parquet",
                        tmp_path / "a.parquet", params)
    table = pd.read_parquet(tmp_path / "i.parquet")
    h = table[table["index"] == "hartigan_nbclust"].set_index("k")["value"]
    assert "hartigan" not in set(table["index"]) and list(h.index) == [2, 3, 4]
    drops = {3: h[2] - h[3], 4: h[3] - h[4]}
    assert sel.loc[sel["index"] == "hartigan_nbclust", "best_k"].item() == max(drops, key=drops.get)
    assert set(pd.read_parquet(tmp_path / "a.parquet")["k"]) == {2, 3, 4}  # the k + 1 = 5 fit is not kept


def test_kmeans_prediction_is_sklearns_and_imsat_reproduces_its_labels():
    x, _ = _blobs(n=30)
    labels, state = fit_partition(x, 3, "kmeans", {"kmeans_n_init": 3}, seed=0)
    km = KMeans(3, n_init=3, random_state=0).fit(x)
    new = np.random.default_rng(1).normal(scale=6.0, size=(200, 4))
    np.testing.assert_array_equal(predict_partition(state, new), km.predict(new))
    np.testing.assert_array_equal(predict_partition(state, x), labels)
    small = {**IMSAT, "hidden": 16, "epochs": 5, "batch_size": 32}
    labels, state = fit_partition(x, 3, "imsat", {"imsat": small}, seed=0)
    np.testing.assert_array_equal(predict_partition(state, x), labels)
