"""Latent interpolation towards pseudo-normal images and the semantic variance of A vs AI (multi-level paper
Fig. 4, 11, Table 6): segmentation and inpainting on drawn images, the interpolation formula, the variance
against numpy / scikit-learn and a case by hand, the AI set's composition, and the stage end to end."""
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA

from pipeline_lib.generate import fov_mask
from pipeline_lib.interpolation import (ai_sets, interpolate, interpolate_latents, pseudo_normal, segment_lesion,
                                        semantic_variance)

SKIN = (200, 140, 115)


def _disc_with_lesion(size=48, lesion_colour=(90, 40, 35)):
    """A skin-coloured field of view on black with a dark elliptical lesion; returns image, fov, true lesion."""
    fov = fov_mask(size).astype(bool)
    image = np.zeros((size, size, 3), np.uint8)
    image[fov] = SKIN
    lesion = np.zeros((size, size), np.uint8)
    cv2.ellipse(lesion, (20, 26), (8, 6), 30, 0, 360, 1, -1)
    image[lesion.astype(bool)] = lesion_colour
    return image, fov, lesion.astype(bool)


def test_segmentation_finds_a_drawn_lesion():
    image, fov, truth = _disc_with_lesion()
    mask = segment_lesion(image, fov, dilate=0)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95
    widened = segment_lesion(image, fov, dilate=2)
    assert widened.sum() > mask.sum() and (widened | mask).sum() == widened.sum() and not (widened & ~fov).any()


def test_segmentation_keeps_the_largest_region_and_finds_nothing_in_a_uniform_field():
    image, fov, truth = _disc_with_lesion()
    image[10:12, 22:24] = (90, 40, 35)  # a 2 x 2 speck: removed by the opening / not the largest component
    assert (segment_lesion(image, fov, dilate=0) == segment_lesion(_disc_with_lesion()[0], fov, dilate=0)).all()
    uniform = np.zeros_like(image)
    uniform[fov] = SKIN
    assert not segment_lesion(uniform, fov).any()


def test_pseudo_normal_fills_the_lesion_with_the_surrounding_tissue():
    image, fov, truth = _disc_with_lesion()
    out = pseudo_normal(image, truth, fov, radius=3, method="telea")
    assert np.abs(out[truth].astype(float).mean(0) - SKIN).max() < 6  # the lesion is skin-coloured now
    assert (out[~truth & fov] == image[~truth & fov]).all()  # everything else is untouched
    assert (out[~fov] == 0).all()  # the border stays black
    assert np.abs(pseudo_normal(image, truth, fov, method="ns")[truth].astype(float).mean(0) - SKIN).max() < 6
    with pytest.raises(ValueError, match="inpaint_method must be one of"):
        pseudo_normal(image, truth, fov, method="biharmonic")


def test_interpolated_latents_follow_the_formula():
    zd, zn = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    z = interpolate_latents(zd, zn, [0.0, 0.25, 1.0])
    assert torch.equal(z[0], zd) and torch.equal(z[2], zn)
    assert torch.allclose(z[1], 0.75 * zd + 0.25 * zn)
    with pytest.raises(ValueError, match=r"interpolation.alphas: each alpha must lie in \[0, 1\], got 1.5"):
        interpolate_latents(zd, zn, [0.5, 1.5])


def test_semantic_variance_by_hand_and_against_sklearn():
    # By hand: A = {(-1, 0), (1, 0)}, AI = {(-2, 0), (2, 0)}; the union's first component is the x axis, so
    # the projected variances are the full ones: var_ddof1([-1, 1]) = 2, var_ddof1([-2, 2]) = 8.
    emb = np.array([[-1.0, 0], [1, 0], [-2, 0], [2, 0]])
    labels = np.array(["a"] * 4)
    t = semantic_variance(emb, labels, {"A": [1, 1, 0, 0], "AI": [0, 0, 1, 1]}, ["a"], components=1)
    got = t[t["class"] == "a"].set_index("set")
    assert got.loc["A", "variance_pca"] == pytest.approx(2.0) and got.loc["AI", "variance_pca"] == pytest.approx(8.0)
    assert got.loc["A", "variance_full"] == pytest.approx(2.0) and got.loc["AI", "n"] == 2

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 5)) * [3, 2, 1, 0.5, 0.1]
    labels = np.repeat(["x", "y"], 30)
    a = rng.random(60) < 0.6
    ai = ~a | (rng.random(60) < 0.3)
    t = semantic_variance(emb, labels, {"A": a, "AI": ai}, ["x", "y"], components=2).set_index(["class", "set"])
    for name, group in [("x", labels == "x"), ("all", np.ones(60, bool))]:
        pca = PCA(n_components=2, svd_solver="full").fit(emb[group & (a | ai)])
        for s, m in [("A", a), ("AI", ai)]:
            x = emb[group & m]
            assert t.loc[(name, s), "variance_pca"] == pytest.approx(np.var(pca.transform(x), axis=0, ddof=1).sum(),
                                                                     rel=1e-10)
            assert t.loc[(name, s), "variance_full"] == pytest.approx(np.trace(np.cov(x.T)), rel=1e-10)


def test_ai_set_has_the_size_of_a_per_class_and_replaces_each_interpolated_source_once():
    gen = pd.DataFrame({"image_id": [f"g{i}" for i in range(6)], "path": [f"images/g{i}.png" for i in range(6)],
                        "label": ["n", "n", "d", "d", "d", "d"]})
    rows = [{"image_id": f"{s}_a{int(a * 100):03d}", "path": f"images/{s}_{a}.png", "label": "d",
             "source_image_id": s, "alpha": a} for s in ("g2", "g4") for a in (0.25, 0.75)]
    sets = ai_sets(gen, pd.DataFrame(rows), seed=3)
    assert sets[sets["in_A"]].groupby("label").size().to_dict() == {"d": 4, "n": 2}
    assert sets[sets["in_AI"]].groupby("label").size().to_dict() == {"d": 4, "n": 2}
    ai = sets[sets["in_AI"]]
    assert set(ai.loc[ai["origin"] == "interpolated", "source_image_id"]) == {"g2", "g4"}
    assert not ai["image_id"].isin(["g2", "g4"]).any() and ai["image_id"].isin(["g5"]).any()
    assert set(ai["alpha"].dropna()) <= {0.25, 0.75}
    assert sets.equals(ai_sets(gen, pd.DataFrame(rows), seed=3))


def _fake_generated(tiny_manifest, tmp_path):
    """The tiny train_a images as a stand-in for a generated set (the same preprocessed 32 px frames)."""
    real = pd.read_parquet(tiny_manifest)
    real = real[real["split"] == "train_a"]
    gen = pd.DataFrame({"image_id": real["image_id"].to_numpy(), "label": real["label"].to_numpy(),
                        "path": [str(tiny_manifest.parent / p) for p in real["path"]]})
    path = tmp_path / "gen" / "manifest.parquet"
    path.parent.mkdir()
    gen.to_parquet(path)
    return path, gen


def _run(tmp_path, name, gen_manifest, tiny_ae, feature_net, tiny_config, **overrides):
    out = tmp_path / name
    params = {"classes_interpolated": ["ome", "com"], "ai_fraction": 0.5, "alphas": [0.25, 0.5, 0.75], "dilate": 1,
              "min_area": 0.01, "max_area": 0.6, "inpaint_method": "telea", "inpaint_radius": 3,
              "pca_components": 2, "figure_examples": 2, "batch_size": 8, "preprocess": tiny_config["preprocess"],
              "image_encoder": {"open_clip_model": None, "checkpoint": None}, "variant": "class",
              "setting": "cfg", "seed": 0, "device": "cpu", "classes": tiny_config["data"]["classes"], **overrides}
    variance = interpolate(gen_manifest, tiny_ae, feature_net, out / "images", out / "manifest.parquet",
                           out / "sets.parquet", out / "semantic_variance.parquet", out / "interpolation.png",
                           out / "pca.png", params)
    return out, variance


def test_interpolation_stage_end_to_end(tiny_manifest, tiny_ae, tiny_feature_net, tiny_config, tmp_path):
    gen_manifest, gen = _fake_generated(tiny_manifest, tmp_path)
    out, variance = _run(tmp_path, "a", gen_manifest, tiny_ae, tiny_feature_net, tiny_config)
    done = pd.read_parquet(out / "manifest.parquet")
    assert len(done) > 0 and (done.groupby("source_image_id").size() == 3).all()  # every alpha decoded
    assert all((out / p).is_file() for p in done["path"]) and done["image_id"].is_unique
    sets = pd.read_parquet(out / "sets.parquet")
    a = sets[sets["in_A"]]
    chosen = a[a["status"] != "not chosen"]
    per_class = gen.groupby("label").size()
    assert len(chosen) == sum(round(0.5 * per_class[c]) for c in ("ome", "com"))  # ai_fraction of each class
    assert set(chosen["label"]) <= {"ome", "com"}
    assert set(chosen.loc[chosen["status"] == "interpolated", "image_id"]) == set(done["source_image_id"])
    skipped = chosen[chosen["status"].str.startswith("skipped")]
    assert ((skipped["lesion_fraction"] < 0.01) | (skipped["lesion_fraction"] > 0.6)).all()
    assert all((out / p).is_file() for p in sets["path"])  # paths relative to the sets table
    assert sets[sets["in_A"]].groupby("label").size().equals(sets[sets["in_AI"]].groupby("label").size())
    v = variance.set_index(["class", "set"])
    assert set(variance["class"]) == {"normal", "ome", "com", "all"}
    assert (variance["embedding"] == "domain_feature_net").all()
    assert v.loc[("normal", "A"), "variance_pca"] == v.loc[("normal", "AI"), "variance_pca"]  # not interpolated
    com_interpolated = (sets["origin"] == "interpolated") & (sets["label"] == "com")
    assert v.loc[("com", "AI"), "n_interpolated"] == com_interpolated.sum()
    assert (out / "interpolation.png").stat().st_size > 0 and (out / "pca.png").stat().st_size > 0
    # Same config and seed, same numbers.
    _, again = _run(tmp_path, "b", gen_manifest, tiny_ae, tiny_feature_net, tiny_config)
    pd.testing.assert_frame_equal(variance, again)


def test_interpolation_embeds_with_open_clip_when_configured(tiny_manifest, tiny_ae, tiny_vit, tiny_config, tmp_path):
    gen_manifest, _ = _fake_generated(tiny_manifest, tmp_path)
    _, variance = _run(tmp_path, "clip", gen_manifest, tiny_ae, None, tiny_config, ai_fraction=0.2,
                       image_encoder={"open_clip_model": "medaug-tiny-vit", "checkpoint": str(tiny_vit)})
    assert (variance["embedding"] == "open_clip:medaug-tiny-vit").all()
    assert np.isfinite(variance["variance_pca"]).all()


def test_interpolation_rejects_a_class_that_is_not_configured(tiny_manifest, tiny_ae, tiny_feature_net, tiny_config,
                                                              tmp_path):
    gen_manifest, _ = _fake_generated(tiny_manifest, tmp_path)
    with pytest.raises(ValueError, match=r"interpolation.classes: \['mel'\] are not among data.classes"):
        _run(tmp_path, "x", gen_manifest, tiny_ae, tiny_feature_net, tiny_config, classes_interpolated=["mel"])


def test_images_without_a_usable_lesion_are_recorded_and_stay_in_ai(tiny_manifest, tiny_ae, tiny_feature_net,
                                                                    tiny_config, tmp_path):
    gen_manifest, _ = _fake_generated(tiny_manifest, tmp_path)
    out, variance = _run(tmp_path, "none", gen_manifest, tiny_ae, tiny_feature_net, tiny_config, min_area=0.99,
                         max_area=1.0)
    assert pd.read_parquet(out / "manifest.parquet").empty and not any((out / "images").iterdir())
    sets = pd.read_parquet(out / "sets.parquet")
    chosen = sets[sets["status"] != "not chosen"]
    assert len(chosen) > 0 and chosen["status"].str.match(r"skipped: lesion 0\.\d{3} of the field of view").all()
    assert sets["in_A"].equals(sets["in_AI"])
    v = variance.pivot(index="class", columns="set", values="variance_pca")
    assert (v["A"] == v["AI"]).all()


def test_semantic_variance_report_is_table_6_over_seeds(tmp_path):
    from pipeline_lib.report import semantic_variance_table

    paths = []
    for seed, (a, ai) in enumerate([(1.0, 2.0), (3.0, 2.5)]):
        rows = [{"class": c, "set": s, "n": 10, "variance_pca": v * k, "variance_full": 10 * v * k,
                 "n_interpolated": 0, "embedding": "domain_feature_net", "pca_components": 2, "variant": "class",
                 "setting": "cfg2", "seed": seed}
                for c, k in (("ome", 1.0), ("all", 2.0)) for s, v in (("A", a), ("AI", ai))]
        paths.append(tmp_path / f"s{seed}.parquet")
        pd.DataFrame(rows).to_parquet(paths[-1])
    t = semantic_variance_table([str(p) for p in paths]).set_index("class")
    assert list(t.index) == ["ome", "all"]  # the classes in their order, all last
    assert t.loc["ome", "A_mean"] == pytest.approx(2.0) and t.loc["ome", "A_std"] == pytest.approx(np.sqrt(2))
    assert t.loc["ome", "AI"] == "2.2500 (± 0.3536)" and t.loc["all", "AI_full_mean"] == pytest.approx(45.0)
    assert t.loc["ome", "ai_higher_share"] == 0.5 and (t["n_seeds"] == 2).all()


def test_a_grey_generated_set_gives_single_channel_interpolations(tiny_manifest, tiny_ae, tiny_feature_net,
                                                                   tiny_config, tmp_path):
    """data.color grayscale: the generated set's PNGs are single-channel and so are the interpolated ones; the
    frames decoded from three channels become their luminance."""
    from PIL import Image

    from pipeline_lib.io import write_png

    _, gen = _fake_generated(tiny_manifest, tmp_path)
    (tmp_path / "grey").mkdir()
    paths = []
    for row in gen.itertuples():
        paths.append(str(tmp_path / "grey" / f"{row.image_id}.png"))
        write_png(np.asarray(Image.open(row.path).convert("L")), paths[-1])
    grey_manifest = tmp_path / "grey" / "manifest.parquet"
    gen.assign(path=paths, color="grayscale").to_parquet(grey_manifest)
    out, _ = _run(tmp_path, "g", grey_manifest, tiny_ae, tiny_feature_net, tiny_config)
    done = pd.read_parquet(out / "manifest.parquet")
    assert len(done) > 0 and (done["color"] == "grayscale").all()
    assert all(Image.open(out / p).mode == "L" for p in done["path"])
