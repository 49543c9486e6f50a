import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline_lib.data import CLASSES, ingest
from pipeline_lib.preprocess import find_circle, mask_crop_resize, preprocess, preprocess_image, remove_hair


def disc_image(h=80, w=100, cx=55, cy=38, r=30, value=200):
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (cx, cy), r, (value, value, value), -1)
    return img


def test_find_circle_recovers_a_drawn_disc():
    cx, cy, r = find_circle(disc_image())
    assert cx == pytest.approx(55, abs=1) and cy == pytest.approx(38, abs=1)
    assert r == pytest.approx(30, abs=1.5)


def test_find_circle_uses_the_largest_region_and_threshold():
    img = disc_image()
    cv2.circle(img, (8, 8), 5, (255, 255, 255), -1)  # a small bright blob elsewhere is ignored
    assert find_circle(img)[0] == pytest.approx(55, abs=1)
    dim = disc_image(value=26)  # not strictly above the threshold: no field of view
    assert find_circle(dim, threshold=26) == (0.0, 0.0, 0.0)
    assert find_circle(dim, threshold=25)[2] > 25


def test_find_circle_of_a_clipped_disc_is_the_inscribed_circle():
    # A disc cut by the frame edge: the maximal inscribed circle is smaller than the disc.
    img = disc_image(h=60, w=100, cx=50, cy=30, r=40)
    cx, cy, r = find_circle(img)
    assert r == pytest.approx(30, abs=1.5) and cy == pytest.approx(29.5, abs=1.5)


def test_find_circle_rejects_grey_input():
    with pytest.raises(ValueError, match=r"expected an RGB uint8 image of shape \(H, W, 3\)"):
        find_circle(np.zeros((10, 10), np.uint8))


def test_mask_crop_resize_geometry():
    img = disc_image()
    out, mask = mask_crop_resize(img, 55, 38, 30, 32)
    assert out.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert set(np.unique(mask)) <= {0, 255}  # nearest-neighbour keeps the mask binary
    assert out[0, 0].max() == 0 and out[16, 16].min() > 150


def test_no_aperture_resizes_the_whole_frame_for_dermoscopy(tiny_config):
    """aperture: none (dermoscopy has no endoscopic circle): the whole frame, resized, with a full mask; even a
    dark frame in which no aperture would be found is kept."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 20, (45, 60, 3), dtype=np.uint8)  # below the threshold everywhere
    params = {**tiny_config["preprocess"], "aperture": "none", "image_size": 16}
    out, mask, record = preprocess_image(frame, params)
    assert record["status"] == "ok" and out.shape == (16, 16, 3) and (mask == 255).all()
    assert np.array_equal(out, cv2.resize(frame, (16, 16), interpolation=cv2.INTER_LINEAR))
    assert preprocess_image(frame, {**params, "aperture": "circle"})[2]["status"] == "dropped"


def test_remove_hair_finds_and_inpaints_a_dark_line():
    img = disc_image(value=180)
    cv2.line(img, (30, 20), (80, 60), (20, 20, 20), 2)
    clean, hair = remove_hair(img, kernel_size=9, threshold=10)
    assert hair[40, 55] == 255 and hair.mean() / 255 < 0.1
    assert clean[40, 55].mean() > 120
    with pytest.raises(ValueError, match="inpaint method must be one of"):
        remove_hair(img, method="fast")
    with pytest.raises(ValueError, match=r"kernel_shape must be one of \['cross', 'ellipse', 'rect'\], got 'disk'"):
        remove_hair(img, kernel_shape="disk")


def _params(**kw):
    p = {"threshold": 26, "image_size": 24, "min_radius_fraction": 0.1, "on_failure": "drop",
         "hair_removal": {"enabled": True, "kernel_size": 9, "kernel_shape": "cross", "threshold": 10,
                          "inpaint_radius": 3, "method": "telea"}}
    p.update(kw)
    return p


def _manifest_with_a_black_frame(tmp_path):
    """The embedded data, two train_a images per class, the first one of them all black."""
    params = {"source": "embedded", "path": None, "classes": list(CLASSES), "seed": 0,
              "embedded": {"height": 48, "width": 60, "hair_probability": 0.5,
                           "n_per_class": {"train_a": 2, "train_b": 1, "test": 1, "external": 1},
                           "external_camera": {"colour_gain": [1, 1, 1], "blur_sigma": 0, "aperture_scale": 0.8}}}
    df = ingest(tmp_path / "data" / "manifest.parquet", tmp_path / "data" / "images", params)
    cv2.imwrite(str(tmp_path / "data" / df["path"].iloc[0]), np.zeros((48, 60, 3), np.uint8))
    return tmp_path / "data" / "manifest.parquet", df


def test_preprocess_stage_records_every_image(tmp_path):
    manifest, df = _manifest_with_a_black_frame(tmp_path)
    out = tmp_path / "pre"
    kept = preprocess(manifest, out / "manifest.parquet", out / "qc.parquet", _params())
    qc = pd.read_parquet(out / "qc.parquet")
    assert list(qc.columns) == ["image_id", "cx", "cy", "r", "hair_fraction", "status", "reason", "bit_depth",
                                "photometric", "window_low", "window_high", "intensity", "frames"]
    assert (qc["bit_depth"] == 8).all() and (qc["photometric"] == "RGB").all() and (qc["intensity"] == "none").all()
    assert len(qc) == len(df) and (qc["status"] == "dropped").sum() == 1
    assert "no region brighter than threshold 26" in qc.loc[qc["status"] == "dropped", "reason"].iloc[0]
    assert len(kept) == len(df) - 1
    img = cv2.imread(str(out / kept["path"].iloc[0]))
    assert img.shape == (24, 24, 3)


def test_preprocess_fail_policy_names_the_image_and_writes_nothing(tmp_path):
    manifest, df = _manifest_with_a_black_frame(tmp_path)
    out = tmp_path / "pre"
    with pytest.raises(ValueError, match=f"first: {df['image_id'].iloc[0]}: no region brighter"):
        preprocess(manifest, out / "manifest.parquet", out / "qc.parquet", _params(on_failure="fail"))
    assert not (out / "manifest.parquet").exists() and not (out / "qc.parquet").exists()


@pytest.mark.parametrize("seed", range(6))
def test_find_circle_within_one_pixel_off_centre_with_noisy_border(seed):
    rng = np.random.default_rng(seed)
    h, w = 200, 260
    r = int(rng.integers(40, 95))
    cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r)) if 2 * r < h else h // 2
    img = rng.integers(0, 20, (h, w, 3)).astype(np.uint8)  # sensor noise under the threshold
    cv2.circle(img, (cx, cy), r, (180, 120, 100), -1)
    for _ in range(30):  # bright specks outside the aperture: never the largest region
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), 1, (220, 220, 220), -1)
    fx, fy, fr = find_circle(img)
    assert abs(fx - cx) <= 1 and abs(fy - cy) <= 1 and abs(fr - r) <= 1


def test_find_circle_of_a_partly_clipped_aperture():
    # Aperture of radius 80 centred 30 px from the left edge: the inscribed circle of the visible part is
    # bounded by the edge on the left and the arc on the right: r = (30 + 80) / 2 = 55 at x = 55.
    img = np.zeros((240, 240, 3), np.uint8)
    cv2.circle(img, (30, 120), 80, (200, 200, 200), -1)
    cx, cy, r = find_circle(img)
    assert cx == pytest.approx(54.5, abs=1) and cy == pytest.approx(120, abs=1) and r == pytest.approx(55, abs=1)


def _hairy(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:120, 0:160]
    background = np.stack([150 + 30 * np.sin(xx / 25), 110 + 20 * np.cos(yy / 30), 90 + 0 * xx], -1).astype(np.uint8)
    drawn = np.zeros((120, 160), np.uint8)
    for _ in range(4):
        p = rng.uniform([0, 0], [160, 120], (3, 2))
        t = np.linspace(0, 1, 60)[:, None]
        pts = ((1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]).round().astype(np.int32)
        cv2.polylines(drawn, [pts], False, 255, 2)
    img = background.copy()
    img[drawn > 0] = (20, 15, 10)
    return img, background, drawn > 0


@pytest.mark.parametrize("method, shape", [("telea", "cross"), ("ns", "cross"), ("telea", "ellipse")])
def test_dullrazor_restores_the_background_and_finds_the_drawn_hair(method, shape):
    img, background, drawn = _hairy()
    clean, mask = remove_hair(img, kernel_size=9, threshold=10, inpaint_radius=3, method=method,
                              kernel_shape=shape)

    def psnr(a, b):
        return 10 * np.log10(255**2 / np.mean((a.astype(float) - b) ** 2))

    assert psnr(clean, background) > psnr(img, background) + 15  # measured: 20 dB -> 58 dB
    found = mask > 0
    recall = (found & drawn).sum() / drawn.sum()
    precision = (found & drawn).sum() / found.sum()
    assert recall > 0.95 and precision > 0.95


def _bad_files(folder):
    from PIL import Image

    folder.mkdir()
    good = disc_image()
    Image.fromarray(good[..., 0]).save(folder / "grey.png")
    Image.fromarray(good[..., 0].astype(np.uint16) * 256).save(folder / "deep.png")  # 16-bit grayscale
    rgba = np.dstack([good, np.full(good.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(folder / "transparent.png")
    Image.fromarray(np.dstack([good, np.full(good.shape[:2], 255, np.uint8)])).save(folder / "opaque.png")
    Image.fromarray(good).save(folder / "full.jpg", quality=95)
    (folder / "truncated.jpg").write_bytes((folder / "full.jpg").read_bytes()[:400])
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.mark.parametrize("name, message", [
    ("transparent.png", "RGBA image with transparent pixels"),
    ("truncated.jpg", "cannot be decoded as an image"),
    ("empty.png", r"empty file \(0 bytes\)"),
])
def test_read_image_names_the_file_and_the_problem(tmp_path, name, message):
    from pipeline_lib.imaging import read_image

    folder = _bad_files(tmp_path / "f")
    with pytest.raises(ValueError, match=f"{name}: {message}"):
        read_image(folder / name)[0]


def test_read_image_accepts_rgb_jpeg_opaque_rgba_grey_and_16_bit(tmp_path):
    from pipeline_lib.imaging import read_image

    folder = _bad_files(tmp_path / "f")
    assert read_image(folder / "opaque.png")[0].shape == (80, 100, 3)
    assert read_image(folder / "full.jpg")[0].dtype == np.uint8
    grey = read_image(folder / "grey.png")[0]
    assert grey.shape == (80, 100, 3) and (grey[..., 0] == grey[..., 2]).all()
    np.testing.assert_array_equal(grey[..., 0], disc_image()[..., 0])  # 8-bit grey: the values as they are


def test_bad_files_are_recorded_rejections_in_parallel(tmp_path):
    folder = _bad_files(tmp_path / "f")
    names = ["transparent.png", "truncated.jpg", "empty.png", "grey.png", "deep.png", "opaque.png", "full.jpg"]
    manifest = tmp_path / "m.parquet"
    pd.DataFrame({"image_id": [n.split(".")[0] for n in names], "path": [str(folder / n) for n in names],
                  "label": "normal", "split": "train_a", "group": "g", "source": "user"}).to_parquet(manifest)
    out = tmp_path / "pre"
    kept = preprocess(manifest, out / "manifest.parquet", out / "qc.parquet", _params(), threads=2)
    qc = pd.read_parquet(out / "qc.parquet").set_index("image_id")
    assert set(kept["image_id"]) == {"opaque", "full", "grey", "deep"}  # grey and 16-bit: three equal channels
    assert (qc.loc[["transparent", "truncated", "empty"], "status"] == "rejected").all()
    assert "truncated.jpg: cannot be decoded" in qc.loc["truncated", "reason"]
    assert qc.loc["deep", "bit_depth"] == 16 and qc.loc["deep", "intensity"] == "percentile"
    assert qc.loc["grey", "photometric"] == "L" and qc.loc["full", "photometric"] == "RGB"
    with pytest.raises(ValueError, match="3 images were not usable .* first: transparent: .*transparent.png: RGBA"):
        preprocess(manifest, out / "m2.parquet", out / "q2.parquet", _params(on_failure="fail"), threads=2)


def test_lesion_crop_hand_case():
    from pipeline_lib.preprocess import lesion_crop

    img = np.zeros((100, 100, 3), np.uint8)
    img[40:60, 20:60] = 200  # the lesion: rows 40-59, columns 20-59
    mask = img[..., 0] > 0
    crop = lesion_crop(img, mask, margin=0.0, size=16)
    assert crop.shape == (16, 16, 3) and crop.min() == 200  # exactly the box
    wide = lesion_crop(img, mask, margin=0.5, size=40)  # 10 rows / 20 columns added each side -> 40 x 80 px
    assert wide[0, 0].max() == 0 and wide[20, 20].min() == 200
    assert lesion_crop(img, np.zeros((100, 100), bool), 0.1, 16) is None


def test_lesion_input_masked_is_eq_1_by_hand():
    """Multi-level paper eq. 1, x_l = x_i * m_i: on a 6 x 6 image with a 2 x 3 mask and no resize, the lesion
    input keeps those six pixels and is 0 everywhere else; box_crop keeps the box only."""
    from pipeline_lib.preprocess import lesion_input

    img = (np.arange(6 * 6 * 3) % 251 + 1).astype(np.uint8).reshape(6, 6, 3)  # no zero pixel
    mask = np.zeros((6, 6), bool)
    mask[2:4, 1:4] = True
    params = {"aperture": "none", "image_size": 6, "lesion_margin": 0.0, "lesion_input": "masked"}
    x_l = lesion_input(img, mask, {}, params)
    want = np.zeros_like(img)
    want[2:4, 1:4] = img[2:4, 1:4]
    assert np.array_equal(x_l, want)
    assert lesion_input(img, np.zeros((6, 6), bool), {}, params) is None
    box = lesion_input(img, mask, {}, {**params, "lesion_input": "box_crop", "image_size": 3})
    assert box.shape == (3, 3, 3) and np.array_equal(box[0], cv2.resize(img[2:4, 1:4], (3, 3))[0])
    with pytest.raises(ValueError, match=r"preprocess.lesion_input must be one of \['masked', 'box_crop'\], got 'crop'"):
        lesion_input(img, mask, {}, {**params, "lesion_input": "crop"})


def test_preprocess_writes_lesion_crops_where_masks_exist(tmp_path):
    from PIL import Image

    src, masks = tmp_path / "src", tmp_path / "masks"
    src.mkdir()
    masks.mkdir()
    rows = []
    for i, name in enumerate(["ISIC_1", "ISIC_2"]):
        img = disc_image(h=90, w=90, cx=45, cy=45, r=44, value=120)
        cv2.rectangle(img, (30, 35), (50, 55), (250, 200, 200), -1)
        Image.fromarray(img).save(src / f"{name}.png")
        if i == 0:  # only the first image has a mask
            m = np.zeros((90, 90), np.uint8)
            m[35:56, 30:51] = 255
            Image.fromarray(m).save(masks / f"{name}_segmentation.png")
        rows.append({"image_id": f"train_a_{name}", "path": str(src / f"{name}.png"), "label": "nv",
                     "split": "train_a", "group": name, "source": "user"})
    manifest = tmp_path / "m.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    out = tmp_path / "pre"
    kept = preprocess(manifest, out / "manifest.parquet", out / "qc.parquet",
                      _params(lesion_masks=str(masks), lesion_margin=0.0, hair_removal={
                          "enabled": False, "kernel_size": 9, "kernel_shape": "cross", "threshold": 10,
                          "inpaint_radius": 3, "method": "telea"}))
    by_id = kept.set_index("image_id")["lesion_crop"]
    assert by_id["train_a_ISIC_1"] == "lesion_crops/train_a_ISIC_1.png" and pd.isna(by_id["train_a_ISIC_2"])
    crop = np.asarray(Image.open(out / by_id["train_a_ISIC_1"]))
    assert crop.shape == (24, 24, 3) and crop[..., 0].min() == 250  # only the lesion's pixels
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "ISIC_2_segmentation.png")
    with pytest.raises(ValueError, match=r"ISIC_2_segmentation.png: lesion mask is 10x10 px, its image 90x90"):
        preprocess(manifest, out / "m2.parquet", out / "q2.parquet",
                   _params(lesion_masks=str(masks), lesion_margin=0.0))


def test_circle_centre_of_a_plateau_is_its_middle():
    """A disc filling an even-sized frame has four equal distance maxima; the centre is their mean."""
    frame = np.zeros((32, 32, 3), np.uint8)
    yy, xx = np.mgrid[:32, :32]
    frame[(yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 16**2] = 120
    cx, cy, r = find_circle(frame, 26)
    assert (cx, cy) == (15.5, 15.5) and r == pytest.approx(16, abs=0.5)


def test_circle_radius_is_the_exact_distance_whatever_float32_rounding():
    """Two float32 roundings of sqrt(500) seen from OpenCV in two runs give one radius, sqrt(500) itself."""
    from pipeline_lib.preprocess import _plateau_centre

    for last_bits in (22.360679626464844, 22.360681533813477):
        dist = np.zeros((9, 9), np.float32)
        dist[4, 4] = last_bits
        assert _plateau_centre(dist) == (4.0, 4.0, 500 ** 0.5)


def test_preprocessing_does_not_depend_on_memory_layout(tiny_config):
    """The same pixels at other buffer offsets (as decoded synthetic frames arrive) give the same output.
    ``cv2.minMaxLoc`` picked different members of a tie depending on alignment, which moved whole crops."""
    pre = {**tiny_config["preprocess"], "image_size": 32}
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    frames = []
    for _ in range(40):  # frame-filling apertures with noisy, sometimes sub-threshold, edges
        c, rad = rng.uniform(15, 16.5, 2), rng.uniform(14.5, 16.5)
        inside = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= rad**2
        f = rng.integers(20, 200, (32, 32, 3)) * inside[..., None]
        frames.append(f.astype(np.uint8))
    ref = [preprocess_image(f, pre)[0] for f in frames]
    for offset in range(1, 8):
        buf = np.empty(32 * 32 * 3 + 8, np.uint8)
        for f, expected in zip(frames, ref):
            moved = buf[offset:offset + f.size].reshape(f.shape)
            moved[...] = f
            assert np.array_equal(preprocess_image(moved, pre)[0], expected)
