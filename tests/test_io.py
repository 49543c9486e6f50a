import cv2
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
    with pytest.raises(ValueError, match=r"expected a uint8 image or a grey uint16 one, got dtype float64 with "
                                         r"shape \(4, 4, 3\)"):
        write_png(np.zeros((4, 4, 3)), tmp_path / "a.png")
    with pytest.raises(ValueError, match="got dtype uint16 with shape"):
        write_png(np.zeros((4, 4, 3), np.uint16), tmp_path / "a.png")  # 16-bit colour: not written
    grey16 = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000
    write_png(grey16, tmp_path / "g.png")
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED), grey16)
    with pytest.raises(ValueError, match="expected a .png file name"):
        write_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.jpg")


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system (tmpfs): writing more than that fails with ENOSPC. Needs root (CI runs as root)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def _only(folder, *names):
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_full_disk_is_a_clear_error_and_keeps_the_earlier_file(small_disk):
    import torch

    table = small_disk / "table.parquet"
    write_parquet(pd.DataFrame({"a": [1]}), table)
    big = pd.DataFrame({"a": np.random.default_rng(0).random(300_000)})  # 2.4 MB
    with pytest.raises(OSError, match=r"cannot write .*table.parquet: no space left on its device"):
        write_parquet(big, table)
    assert pd.read_parquet(table)["a"].tolist() == [1]
    # torch.save reports a full disk as a RuntimeError about stream positions, OpenCV only returns False.
    with pytest.raises(OSError, match=r"model.resume.pt: no space left on its device \(0.0 MiB free"):
        with atomic_path(small_disk / "model.resume.pt") as tmp:
            torch.save(torch.zeros(600_000), tmp)
    with pytest.raises(OSError, match=r"big.png: no space left"):
        write_png(np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8), small_disk / "big.png")
    _only(small_disk, "table.parquet")  # no temporary left behind


def test_a_quota_error_from_any_writer_is_named(tmp_path, monkeypatch):
    """The errno route, on any machine: a writer that fails with EDQUOT while space is left (a quota)."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(OSError, match=r"t.parquet: no space left on its device \(.* MiB free; or the disk quota"):
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    _only(tmp_path)


def test_unwritable_folder_is_a_clear_error(tmp_path):
    """A read-only mount when root (root ignores file modes), a folder without write permission otherwise."""
    import os
    import subprocess

    folder = tmp_path / "results"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]).returncode != 0:
            pytest.skip("this machine does not allow mounting a tmpfs")
        expected = "the file system is read-only"
    else:
        folder.chmod(0o555)
        expected = "permission denied"
    try:
        with pytest.raises(PermissionError, match=rf"cannot write .*results/stage/t.parquet: {expected} in "):
            write_parquet(pd.DataFrame({"a": [1]}), folder / "stage" / "t.parquet")
        with pytest.raises(PermissionError, match=rf"results/t.parquet: {expected} .*expected a folder this user"):
            write_parquet(pd.DataFrame({"a": [1]}), folder / "t.parquet")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)
        else:
            folder.chmod(0o755)
