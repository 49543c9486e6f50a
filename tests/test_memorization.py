"""The memorization audit: copies of training images (exact, flipped, noised, shifted) are flagged, held-out real
images are not beyond the calibrated rate, authenticity by hand, the pixel similarity against numpy's Pearson r,
and the classifiers' exclusion of flagged images."""
import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline_lib.classify import drop_copies
from pipeline_lib.memorization import audit, audit_sets, authenticity, pixel_array, pixel_nearest, summary_table


def smooth_images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """Images of one distribution: 8 x 8 Gaussian noise upsampled to ``size`` px (smooth, like medical images)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype(np.float32)
    up = np.stack([cv2.resize(a, (size, size), interpolation=cv2.INTER_CUBIC) for a in x])
    return np.clip(up * 50 + 128, 0, 255).astype(np.uint8)


TRAIN = smooth_images(300, 0)
HELDOUT = smooth_images(200, 1)


def copies_of(train: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copies of training images 0..7: two exact, two flipped, two noised (sigma 4 of 255), two shifted by
    (1, -2) px; and the training indices they copy."""
    noised = np.clip(train[4:6] + rng.normal(0, 4, train[4:6].shape), 0, 255).astype(np.uint8)
    copies = np.concatenate([train[0:2], train[2:4, :, ::-1], noised, np.roll(train[6:8], (1, -2), axis=(1, 2))])
    return copies, np.arange(8)


def test_copies_are_flagged_and_new_images_are_not():
    rng = np.random.default_rng(2)
    copies, src = copies_of(TRAIN, rng)
    fresh = smooth_images(300, 3)  # new images of the same distribution: what a model that does not copy gives
    result = audit_sets(TRAIN, np.concatenate([copies, fresh]), HELDOUT)
    syn = result.synthetic
    assert syn["is_copy"].iloc[:8].all()
    assert syn["nearest_train_index"].iloc[:8].tolist() == src.tolist()
    assert syn["flipped"].iloc[:8].tolist() == [False, False, True, True, False, False, False, False]
    assert syn["similarity"].iloc[[0, 1, 2, 3]].tolist() == pytest.approx([1.0] * 4, abs=1e-12)  # exact, flipped
    assert (syn["dx"].iloc[6:8] == 2).all() and (syn["dy"].iloc[6:8] == -1).all()  # np.roll by (1, -2)
    # the calibrated rate: about 1 - percentile of held-out images; fresh images from the same distribution
    # stay within it up to binomial noise (1 % of 300 is 3; 4 binomial standard deviations is 6.9 more)
    assert syn["is_copy"].iloc[8:].mean() <= 0.01 + 4 * np.sqrt(0.01 * 0.99 / 300)
    assert result.heldout["is_copy"].mean() <= 0.01 + 1 / len(HELDOUT)
    assert result.threshold == pytest.approx(np.percentile(result.heldout["similarity"], 99))


def test_audit_is_the_synthetic_rows_with_the_required_columns():
    syn = smooth_images(20, 4)
    df = audit(TRAIN, syn, HELDOUT, percentile=95.0)
    assert len(df) == 20 and {"nearest_train_index", "similarity", "is_copy"} <= set(df.columns)
    assert df["nearest_train_index"].between(0, len(TRAIN) - 1).all()
    assert (df["is_copy"] == (df["similarity"] > df["threshold"])).all()


def test_pixel_similarity_is_pearson_r_and_the_maximum_over_shifts_and_flips():
    a = pixel_array(TRAIN[:40], 64)
    q = pixel_array(HELDOUT[:10], 64)
    mean = a.mean(0)
    near = pixel_nearest(a, q, max_shift=0, flips=False, centre=mean)
    r = np.array([[np.corrcoef((qi - mean).ravel(), (ai - mean).ravel())[0, 1] for ai in a] for qi in q])
    assert np.array_equal(near.index, r.argmax(1))
    np.testing.assert_allclose(near.similarity, r.max(1), atol=1e-12)  # float64 both ways
    wide = pixel_nearest(a, q, max_shift=2, flips=True)  # more candidates: never less similar
    assert (wide.similarity >= pixel_nearest(a, q, max_shift=2, flips=False).similarity).all()
    assert pixel_nearest(a, a, 2, True, exclude_self=True).index.tolist() != list(range(40))


def test_authenticity_by_hand():
    """Features on a line: training points 0, 1, 3 (nearest-neighbour distances 1, 1, 2). Synthetic 0.2 is
    0.2 from 0 (< 1) and 2.5 is 0.5 from 3 (< 2): unauthentic; -2 is 2 from 0 (>= 1) and 5 is 2 from 3 (not < 2):
    authentic. Authenticity 2 / 4."""
    train_f = np.array([[0.0], [1.0], [3.0]])
    syn_f = np.array([[0.2], [2.5], [-2.0], [5.0]])
    held_f = np.array([[0.5], [2.0]])
    imgs = smooth_images(9, 5)
    df = audit(imgs[:3], imgs[3:7], imgs[7:9], train_features=train_f, synthetic_features=syn_f,
               heldout_features=held_f)
    assert df["feature_closer_than_neighbour"].tolist() == [True, True, False, False]
    assert authenticity(df["feature_closer_than_neighbour"]) == 0.5


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"synthetic: expected a non-empty uint8 array \(N, H, W, C\), got dtype float64"):
        audit(TRAIN, TRAIN.astype(np.float64), HELDOUT)
    with pytest.raises(ValueError, match="expected images of one size and channel count"):
        audit(TRAIN, smooth_images(3, 6, size=16), HELDOUT)
    with pytest.raises(ValueError, match=r"feature arrays are needed for all three sets or none, got them for \['train'\]"):
        audit(TRAIN, TRAIN[:3], HELDOUT, train_features=np.zeros((300, 4)))
    with pytest.raises(ValueError, match=r"synthetic_features: expected 3 rows \(one per image\), got 2"):
        audit(TRAIN, TRAIN[:3], HELDOUT, train_features=np.zeros((300, 4)), synthetic_features=np.zeros((2, 4)),
              heldout_features=np.zeros((200, 4)))
    with pytest.raises(ValueError, match=r"max_shift must lie in \[0, 15\] for 32 x 32 images, got 16"):
        audit(TRAIN, TRAIN[:3], HELDOUT, max_shift=16)


def test_summary_per_class_and_all():
    rng = np.random.default_rng(7)
    copies, _ = copies_of(TRAIN, rng)
    syn = np.concatenate([copies, smooth_images(92, 8)])
    res = audit_sets(TRAIN, syn, HELDOUT)
    images = pd.concat([res.synthetic.assign(set="synthetic", label=["a"] * 50 + ["b"] * 50),
                        res.heldout.assign(set="heldout", label="a")], ignore_index=True)
    s = summary_table(images).set_index("class")
    assert s.index.tolist() == ["a", "b", "all"]
    assert s.loc["all", "n_synthetic"] == 100 and s.loc["b", "n_heldout"] == 0
    flagged = res.synthetic["is_copy"].to_numpy()
    assert s.loc["a", "pixel_synthetic_flagged"] == pytest.approx(flagged[:50].mean())
    assert s.loc["all", "pixel_synthetic_max"] == pytest.approx(1.0)
    assert s.loc["all", "pixel_heldout_p50"] == pytest.approx(np.percentile(res.heldout["similarity"], 50))


def test_classifier_pool_leaves_flagged_images_out(tmp_path):
    syn_rows = pd.DataFrame({"image_id": ["s0", "s1", "s2", "s3"], "label": ["a", "a", "b", "b"]})
    audit_table = pd.DataFrame({"set": ["synthetic"] * 4 + ["heldout"], "image_id": ["s0", "s1", "s2", "s3", "h0"],
                                "is_copy": [False, True, False, True, True]})
    audit_table.to_parquet(tmp_path / "a.parquet")
    kept, excluded = drop_copies(syn_rows, tmp_path / "a.parquet")
    assert kept.tolist() == [0, 2] and excluded["image_id"].tolist() == ["s1", "s3"]
    audit_table.iloc[1:].to_parquet(tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"b.parquet: no audit rows for synthetic images \['s0'\]"):
        drop_copies(syn_rows, tmp_path / "b.parquet")


def test_centring_removes_what_every_image_shares():
    """With an endoscope's black corners on every image, uncentred correlations crowd near 1 (the threshold with
    them); centred on the training mean, held-out images spread out and the copies still reach 1."""
    yy, xx = np.mgrid[:32, :32]
    outside = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 > 14**2
    frame = lambda im: np.where(outside[None, :, :, None], 0, im).astype(np.uint8)  # noqa: E731
    train, held = frame(TRAIN), frame(HELDOUT)
    syn = np.concatenate([train[:4], frame(smooth_images(20, 9))])
    plain = audit_sets(train, syn, held, centre=False)
    centred = audit_sets(train, syn, held)
    assert centred.threshold < plain.threshold - 0.05
    assert centred.synthetic["is_copy"].iloc[:4].all()
    assert centred.synthetic["similarity"].iloc[:4].tolist() == pytest.approx([1.0] * 4, abs=1e-12)
