"""Images as users have them (pipeline_lib/imaging.py): grey, 16-bit and float PNG / TIFF, palette, DICOM with its
Modality LUT, VOI window and MONOCHROME1, multi-frame files, and the bad cases, each naming the file. DICOM files
are written here with pydicom or are the small real ones pydicom ships in its package."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline_lib.data import scan_imagefolder
from pipeline_lib.imaging import read_image


def shipped(name: str) -> Path:
    """A test file inside the installed pydicom package (no download)."""
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if not path.is_file():
        pytest.skip(f"pydicom {pydicom.__version__} does not ship {name}")
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                slope: float | None = None, intercept: float | None = None, window: tuple | None = None) -> Path:
    """An uncompressed single- or multi-frame grey DICOM file of uint16 ``pixels`` ((H, W) or (F, H, W))."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(h: int = 40, w: int = 48, top: int = 4095) -> np.ndarray:
    return np.linspace(0, top, h * w).round().astype(np.uint16).reshape(h, w)


def test_grey_16_bit_png_and_tiff_by_the_percentile_window(tmp_path):
    pixels = ramp()
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    Image.fromarray(pixels).save(tmp_path / "deep.tif")
    low, high = np.percentile(pixels.astype(float), [0.5, 99.5])
    expected = np.clip(np.rint((pixels - low) / (high - low) * 255), 0, 255).astype(np.uint8)
    for name in ("deep.png", "deep.tif"):
        rgb, record = read_image(tmp_path / name)
        assert rgb.shape == (40, 48, 3) and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        np.testing.assert_array_equal(rgb[..., 0], expected)
        assert record["bit_depth"] == 16 and record["intensity"] == "percentile"
        assert record["window_low"] == pytest.approx(low) and record["window_high"] == pytest.approx(high)
    full, record = read_image(tmp_path / "deep.png", intensity={"rule": "full_range"})
    np.testing.assert_array_equal(full[..., 0], np.rint(pixels / 65535 * 255).astype(np.uint8))
    assert (record["window_low"], record["window_high"]) == (0.0, 65535.0)


def test_float_tiff_full_range_is_its_own_minimum_to_maximum(tmp_path):
    values = np.linspace(-2.0, 6.0, 40 * 48, dtype=np.float32).reshape(40, 48)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    rgb, record = read_image(tmp_path / "f.tif", intensity={"rule": "full_range"})
    np.testing.assert_array_equal(rgb[..., 0], np.rint((values.astype(float) + 2) / 8 * 255).astype(np.uint8))
    assert record["bit_depth"] == 32 and record["photometric"] == "F"


def test_palette_and_opaque_grey_alpha_images_become_rgb(tmp_path):
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[:, 24:] = (200, 30, 10)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    out, record = read_image(tmp_path / "p.png")
    assert record["photometric"] == "P" and tuple(out[0, 30]) == (200, 30, 10) and tuple(out[0, 0]) == (0, 0, 0)
    la = np.dstack([rgb[..., 0], np.full((40, 48), 255, np.uint8)])
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png")[0].shape == (40, 48, 3)
    la[0, 0, 1] = 0
    Image.fromarray(la, mode="LA").save(tmp_path / "la_transparent.png")
    with pytest.raises(ValueError, match="la_transparent.png: LA image with transparent pixels"):
        read_image(tmp_path / "la_transparent.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "print.jpg")
    with pytest.raises(ValueError, match=r"print.jpg: image mode CMYK, expected grayscale or RGB"):
        read_image(tmp_path / "print.jpg")


def test_dicom_modality_lut_then_the_files_window_by_hand(tmp_path):
    """Stored s, Rescale 2 s - 1000 (PS3.3 C.11.1), window c 100, w 401 (C.11.2.1.2.1): the modality value x maps
    to 0 at or below c - 0.5 - 200 = -100.5, to 255 above 299.5, else ((x - 99.5) / 400 + 0.5) * 255."""
    stored = np.array([[0, 400, 450, 500, 549, 550, 600, 650]], np.uint16).repeat(40, 0).repeat(6, 1)
    write_dicom(tmp_path / "a.dcm", stored, slope=2, intercept=-1000, window=(100, 401))
    rgb, record = read_image(tmp_path / "a.dcm")
    x = 2.0 * stored[0, ::6] - 1000  # -1000, -200, -100, 0, 98, 100, 200, 300
    expected = np.where(x <= -100.5, 0, np.where(x > 299.5, 255, ((x - 99.5) / 400 + 0.5) * 255))
    np.testing.assert_array_equal(rgb[0, ::6, 0], np.rint(expected).astype(np.uint8))
    assert record == {"bit_depth": 12, "photometric": "MONOCHROME2", "window_low": -100.5, "window_high": 299.5,
                      "intensity": "dicom_window", "frames": 1}


def test_monochrome1_is_inverted_and_a_file_without_window_takes_the_percentiles(tmp_path):
    pixels = ramp()
    write_dicom(tmp_path / "m2.dcm", pixels)
    write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    m2, record = read_image(tmp_path / "m2.dcm")
    m1, _ = read_image(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(m1, 255 - m2)
    assert record["intensity"] == "percentile"  # no Window Center / Width in the file
    percentile, _ = read_image(tmp_path / "m2.dcm", intensity={"rule": "percentile", "percentiles": [0, 100]})
    np.testing.assert_array_equal(percentile[..., 0], np.rint(pixels / 4095 * 255).astype(np.uint8))
    full, rec = read_image(tmp_path / "m2.dcm", intensity={"rule": "full_range"})  # 12 bits stored: 0 .. 4095
    np.testing.assert_array_equal(full, percentile)
    assert (rec["window_low"], rec["window_high"]) == (0.0, 4095.0)


def test_multi_frame_dicom_follows_the_stated_rule(tmp_path):
    volume = np.stack([np.full((40, 48), v, np.uint16) for v in (0, 1000, 2000)])
    volume[:, 0, 0] = 4095  # not constant
    write_dicom(tmp_path / "vol.dcm", volume, window=(2048, 4096))
    with pytest.raises(ValueError, match=r"vol.dcm: a DICOM volume of 3 frames, expected a 2-D image; .*"
                                         r"preprocess.dicom_frames: first or middle"):
        read_image(tmp_path / "vol.dcm")
    first, record = read_image(tmp_path / "vol.dcm", dicom_frames="first")
    middle, _ = read_image(tmp_path / "vol.dcm", dicom_frames="middle")
    assert record["frames"] == 3 and first[5, 5, 0] < middle[5, 5, 0]


@pytest.mark.parametrize("case, message", [
    ("zero width", r"zero.dcm: Window Width 0 is below 1"),
    ("constant", r"flat.dcm: the percentile window is empty"),
    ("no pixels", r"rtplan.dcm: DICOM file without pixel data \(RT Plan Storage\)"),
    ("truncated", r"MR_truncated.dcm: .*"),
    ("compressed", r"MR_small_jpeg_ls_lossless.dcm: transfer syntax JPEG-LS Lossless Image Compression "
                   r"\(1.2.840.10008.1.2.4.80\) cannot be decoded with the installed decoders"),
])
def test_bad_dicom_files_name_the_file_and_the_problem(tmp_path, case, message):
    if case == "zero width":
        path = write_dicom(tmp_path / "zero.dcm", ramp(), window=(100, 0))
    elif case == "constant":
        path = write_dicom(tmp_path / "flat.dcm", np.full((40, 48), 7, np.uint16))
    else:
        path = shipped({"no pixels": "rtplan.dcm", "truncated": "MR_truncated.dcm", "compressed": "MR_small_jpeg_ls_lossless.dcm"}[case])
    with pytest.raises(ValueError, match=message):
        read_image(path)


def test_a_multi_page_tiff_is_rejected_with_what_to_do(tmp_path):
    pages = [Image.fromarray(ramp(top=t)) for t in (1000, 2000, 3000)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(ValueError, match=r"stack.tif: a multi-page image of 3 pages \(a volume, a stack or an "
                                         r"animation\), expected a 2-D image; save each page as its own file"):
        read_image(tmp_path / "stack.tif")
    pages[0].save(tmp_path / "one.tif")
    assert read_image(tmp_path / "one.tif")[1]["frames"] == 1  # a single page is an image


def test_pydicoms_ct_and_mr_files_follow_each_files_window():
    """MR_small has Window Center 600 / Width 1600: a value at the centre is mid-grey; CT_small has no window and
    takes the percentile window, so its values spread over 0 .. 255."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    mr = shipped("MR_small.dcm")
    rgb, record = read_image(mr, min_side=16)
    ds = pydicom.dcmread(mr)
    x = apply_modality_lut(ds.pixel_array, ds).astype(float)
    expected = np.clip(np.rint(((x - 599.5) / 1599 + 0.5) * 255), 0, 255)
    expected[x <= 599.5 - 799.5] = 0
    expected[x > 599.5 + 799.5] = 255
    np.testing.assert_array_equal(rgb[..., 0], expected.astype(np.uint8))
    assert record["intensity"] == "dicom_window" and record["window_low"] == pytest.approx(-200.0)
    ct, record = read_image(shipped("CT_small.dcm"))
    assert record["intensity"] == "percentile" and ct.min() == 0 and ct.max() == 255
    assert read_image(shipped("MR_small_RLE.dcm"), min_side=16)[0].shape == (64, 64, 3)  # RLE: decoded by pydicom
    assert read_image(shipped("JPEG2000.dcm"))[1]["bit_depth"] == 16  # JPEG 2000: decoded through Pillow


def test_imagefolder_ids_never_collide(tmp_path):
    disc = np.zeros((40, 40, 3), np.uint8)
    for split in ("train_a", "train_b", "test"):
        for label in ("normal", "ome"):
            (tmp_path / split / label).mkdir(parents=True)
            Image.fromarray(disc).save(tmp_path / split / label / "0001.png")
    Image.fromarray(disc).save(tmp_path / "test" / "ome" / "0001.jpg")
    Image.fromarray(disc).save(tmp_path / "test" / "ome" / "scan 2.png")
    df = scan_imagefolder(tmp_path)
    assert df["image_id"].is_unique and len(df) == 8
    assert {"test_normal_0001.png", "test_ome_0001.png", "test_ome_0001.jpg", "test_ome_scan_2.png"} <= \
        set(df["image_id"])
    pd.testing.assert_frame_equal(df, scan_imagefolder(tmp_path))  # stable across runs


def test_a_folder_of_pydicoms_ct_and_mr_files_preprocesses_by_each_files_window(tmp_path, caplog):
    """The preprocessing stage on pydicom's CT (no window: percentile) and MR (its window) files beside an 8-bit
    RGB image: each is recorded with its own rule, and the grey ones are counted in the log."""
    import logging

    from pipeline_lib.preprocess import preprocess

    rgb = tmp_path / "colour.png"
    Image.fromarray(np.full((64, 64, 3), (200, 120, 90), np.uint8)).save(rgb)
    paths = [shipped("CT_small.dcm"), shipped("MR_small.dcm"), rgb]
    manifest = tmp_path / "m.parquet"
    pd.DataFrame({"image_id": ["ct", "mr", "colour"], "path": [str(p) for p in paths], "label": "normal",
                  "split": "train_a", "group": ["ct", "mr", "colour"], "source": "user"}).to_parquet(manifest)
    params = {"aperture": "none", "image_size": 32, "min_image_side": 16, "threshold": 26, "min_radius_fraction": 0.1,
              "on_failure": "fail", "hair_removal": {"enabled": False, "kernel_size": 9, "kernel_shape": "cross",
                                                     "threshold": 10, "inpaint_radius": 3, "method": "telea"}}
    with caplog.at_level(logging.INFO, logger="pipeline_lib"):
        preprocess(manifest, tmp_path / "pre" / "manifest.parquet", tmp_path / "pre" / "qc.parquet", params)
    qc = pd.read_parquet(tmp_path / "pre" / "qc.parquet").set_index("image_id")
    assert list(qc["intensity"]) == ["percentile", "dicom_window", "none"] and (qc["status"] == "ok").all()
    assert qc.loc["mr", "window_low"] == pytest.approx(-200.0) and qc.loc["mr", "window_high"] == pytest.approx(1399.0)
    assert list(qc["photometric"]) == ["MONOCHROME2", "MONOCHROME2", "RGB"]
    assert "2 grayscale images among colour ones, each read as three equal channels" in caplog.text
    mr = np.asarray(Image.open(tmp_path / "pre" / "images" / "mr.png"))
    assert mr.shape == (32, 32, 3) and (mr[..., 0] == mr[..., 2]).all()


def test_data_color_grayscale_reads_colour_images_by_their_luminance(tmp_path):
    import cv2

    from pipeline_lib.preprocess import preprocess

    colour = np.zeros((64, 64, 3), np.uint8)
    colour[8:56, 8:56] = (200, 120, 90)
    Image.fromarray(colour).save(tmp_path / "c.png")
    manifest = tmp_path / "m.parquet"
    pd.DataFrame({"image_id": ["c"], "path": [str(tmp_path / "c.png")], "label": "normal", "split": "train_a",
                  "group": ["c"], "source": "user"}).to_parquet(manifest)
    params = {"aperture": "none", "image_size": 32, "threshold": 26, "min_radius_fraction": 0.1, "on_failure": "fail",
              "hair_removal": {"enabled": False, "kernel_size": 9, "kernel_shape": "cross", "threshold": 10,
                               "inpaint_radius": 3, "method": "telea"}}
    for color, expected in (("auto", "rgb"), ("grayscale", "grayscale")):
        out = preprocess(manifest, tmp_path / color / "manifest.parquet", tmp_path / color / "qc.parquet",
                         {**params, "color": color})
        assert out["color"].tolist() == [expected]
    grey = np.asarray(Image.open(tmp_path / "grayscale" / "images" / "c.png"))
    luminance = cv2.cvtColor(cv2.resize(colour, (32, 32), interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2GRAY)
    assert (grey[..., 0] == grey[..., 2]).all()
    np.testing.assert_allclose(grey[..., 0].astype(int), luminance.astype(int), atol=1)  # grey, then resized
