import numpy as np
import pandas as pd
import pytest

from pipeline_lib.io import atomic_path, read_parquet, write_parquet, write_png


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.parquet"
    write_parquet(pd.DataFrame({"a": [1]}), target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            pd.DataFrame({"a": [2]}).to_parquet(tmp)
            raise RuntimeError("killed mid-way")
    assert pd.read_parquet(target)["a"].tolist() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]


def test_atomic_folder_replaces_the_old_folder(tmp_path):
    target = tmp_path / "model"
    for n in (1, 2):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / f"w{n}.bin").write_bytes(b"x")
    assert [p.name for p in target.iterdir()] == ["w2.bin"]


def test_nothing_written_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "x.parquet"):
            pass


def test_read_parquet_names_missing_columns(tmp_path):
    write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"t.parquet: expected columns \['a', 'b'\], missing \['b'\]"):
        read_parquet(tmp_path / "t.parquet", required=("a", "b"))
    with pytest.raises(FileNotFoundError, match="nope.parquet: table not found"):
        read_parquet(tmp_path / "nope.parquet")


def test_write_png_checks_dtype_and_name(tmp_path):
    with pytest.raises(ValueError, match="expected a uint8 image, got dtype float64"):
        write_png(np.zeros((4, 4, 3)), tmp_path / "a.png")
    with pytest.raises(ValueError, match="expected a .png file name"):
        write_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.jpg")
