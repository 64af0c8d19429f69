"""``h5feed info`` and ``h5feed verify`` on sound and damaged files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import _record
from h5feed import layout as L
from h5feed.cli import main
from h5feed.inspection import describe, verify

from conftest import make_arrays


def _flip_byte(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _chunk_offset(path, name, index):
    """(byte offset, size) of chunk ``index`` of dataset ``name``."""
    with h5py.File(path) as f:
        info = f[name].id.get_chunk_info(index)
    return info.byte_offset, info.size


def test_info_describes_storage_splits_and_class_counts(small_file, arrays, capsys):
    _, _, y = arrays
    info = describe(small_file)
    assert info["rows"] == 100 and info["format"] == 1 and info["n_classes"] == 5
    assert info["datasets"]["x"]["shape"] == [100, 4, 3] and info["datasets"]["x"]["dtype"] == "float32"
    assert info["datasets"]["x"]["layout"] == "contiguous" and info["datasets"]["x"]["chunks"] is None
    assert info["datasets"]["ids"]["dtype"] == "utf-8 string"
    assert info["splits"] == {"train": 70, "validation": 30}
    assert info["class_counts"]["all"] == np.bincount(y, minlength=5).tolist()
    assert info["class_counts"]["train"] == np.bincount(y[:70], minlength=5).tolist()
    assert info["class_counts"]["validation"] == np.bincount(y[70:], minlength=5).tolist()

    assert main(["info", str(small_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(info))
    assert main(["info", str(small_file)]) == 0
    text = capsys.readouterr().out
    assert "100 rows" in text and "contiguous" in text and "train       70 rows" in text and "classes: 5" in text


def test_info_shows_chunks_compression_checksum_and_class_names(tmp_path, arrays, capsys):
    ids, x, y = arrays
    path = tmp_path / "c.h5"
    h5feed.write_arrays(path, ids, x, y, compression="gzip", checksum=True, chunk_rows=16,
                        class_names=["a", "b", "c", "d", "e"])
    d = describe(path)["datasets"]["x"]
    assert (d["layout"], d["chunks"], d["compression"], d["checksum"]) == ("chunked", [16, 4, 3], "gzip", True)
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "chunked (16, 4, 3)" in text and "gzip, fletcher32" in text and "classes: 5: a, b, c, d, e" in text


def test_info_on_a_file_that_is_not_h5feed_exits_1(tmp_path, capsys):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    assert main(["info", str(tmp_path / "junk.h5")]) == 1
    assert "not an HDF5 file" in capsys.readouterr().err


def test_verify_passes_every_layout(any_layout_file, capsys):
    report = verify(any_layout_file)
    assert report.sound, report.problems
    assert set(report.checked) == {"ids", "x", "y", "splits/train", "ids_index/rows", "ids_index/ends", "ids_index/bytes"}
    assert main(["verify", str(any_layout_file), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"{any_layout_file}: sound"


@pytest.mark.parametrize("chunk", [0, 3, 19])
def test_verify_names_the_dataset_and_rows_of_a_chunk_failing_its_checksum(tmp_path, arrays, capsys, chunk):
    ids, x, y = arrays
    path = tmp_path / "k.h5"
    h5feed.write_arrays(path, ids, x, y, checksum=True, chunk_rows=5, n_classes=5)
    offset, size = _chunk_offset(path, "x", chunk)
    _flip_byte(path, offset + size // 2)
    assert main(["verify", str(path), "-q"]) == 1
    out = capsys.readouterr().out
    first, last = chunk * 5, chunk * 5 + 4
    assert f"FAILED  x: rows {first}..{last} unreadable (checksum failed or data damaged)" in out
    assert out.count("FAILED") == 1 and "ok      y" in out
    assert out.strip().splitlines()[-1] == f"{path}: DAMAGED (1 problem(s))"
    # Training reads detect it too, naming the rows.
    from h5feed.reader import Reader

    with Reader(h5feed.open_file(path)) as reader, pytest.raises(h5feed.errors.ReadError, match=rf"rows {first}\.\.{last}"):
        reader.read("x", np.arange(first, last + 1))


def test_verify_reports_every_damaged_chunk(tmp_path, arrays):
    ids, x, y = arrays
    path = tmp_path / "k.h5"
    h5feed.write_arrays(path, ids, x, y, checksum=True, chunk_rows=10, n_classes=5)
    for chunk in (1, 7):
        offset, size = _chunk_offset(path, "x", chunk)
        _flip_byte(path, offset + 3)
    report = verify(path)
    assert [p.split(" unreadable")[0] for p in report.problems] == ["x: rows 10..19", "x: rows 70..79"]


def test_verify_compares_stored_sha256_of_unchecksummed_data(small_file, capsys):
    layout = h5feed.open_file(small_file)
    offset = layout.column("x").offset
    _flip_byte(small_file, offset + 40 * 4 * 3 * 4 + 5)  # a byte of row 40
    report = verify(small_file)
    assert not report.sound
    assert len(report.problems) == 1
    assert report.problems[0].startswith("x: its SHA-256 differs from the completion record")
    assert "y" in report.checked and "ids" in report.checked
    assert main(["verify", str(small_file), "--json", "-q"]) == 1
    assert json.loads(capsys.readouterr().out)["sound"] is False


def test_verify_sha256_matches_the_layout_digests(small_file):
    layout = h5feed.open_file(small_file)
    with h5py.File(small_file) as f:
        for name, digest in layout.completion["sha256"].items():
            assert _record.dataset_sha256(f[name]) == digest


@pytest.mark.parametrize(
    "damage, message",
    [
        ("incomplete", "layout: incomplete file"),
        ("not-hdf5", "layout: "),
        ("truncated", "layout: "),
        ("dropped-y-label", "layout: "),
    ],
)
def test_verify_reports_a_broken_layout_and_exits_1(small_file, capsys, damage, message):
    if damage == "incomplete":
        with h5py.File(small_file, "r+") as f:
            del f.attrs[L.ATTR_COMPLETE]
    elif damage == "not-hdf5":
        small_file.write_bytes(b"hello")
    elif damage == "truncated":
        small_file.write_bytes(small_file.read_bytes()[:3000])
    elif damage == "dropped-y-label":
        with h5py.File(small_file, "r+") as f:
            f["y"][0] = 99  # outside n_classes
    report = verify(small_file)
    assert not report.sound and report.problems[0].startswith(message)
    assert main(["verify", str(small_file), "-q"]) == 1
    assert "DAMAGED" in capsys.readouterr().out


def test_verify_of_a_converted_checksum_file_round_trip(tmp_path, capsys):
    ids, x, y = make_arrays(40, shape=(6,))
    np.save(tmp_path / "X.npy", x)
    np.save(tmp_path / "Y.npy", y)
    out = tmp_path / "a.h5"
    assert main(["convert", "arrays", str(tmp_path / "X.npy"), str(tmp_path / "Y.npy"), "-o", str(out),
                 "--checksum", "--chunk-rows", "8", "-q"]) == 0
    assert main(["verify", str(out), "-q"]) == 0
    offset, size = _chunk_offset(out, "x", 2)
    _flip_byte(out, offset + 1)
    assert main(["verify", str(out), "-q"]) == 1
    assert "x: rows 16..23 unreadable" in capsys.readouterr().out


def test_info_of_unlabelled_and_regression_files(tmp_path, capsys):
    x = np.zeros((5, 2), np.float32)
    h5feed.write_arrays(tmp_path / "u.h5", list("abcde"), x)
    h5feed.write_arrays(tmp_path / "r.h5", list("abcde"), x, np.linspace(0, 1, 5))
    assert main(["info", str(tmp_path / "u.h5")]) == 0
    text = capsys.readouterr().out
    assert "targets: none (unlabelled)" in text and "splits: none" in text
    info = describe(tmp_path / "r.h5")
    assert info["n_classes"] is None and "class_counts" not in info and info["datasets"]["y"]["dtype"] == "float64"


def test_verify_of_a_missing_file_is_an_error_not_damage(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope.h5")]) == 1
    captured = capsys.readouterr()
    assert "h5feed verify: error:" in captured.err and "no such file" in captured.err
    assert "DAMAGED" not in captured.out


def test_a_failed_read_leaves_no_handle_that_hides_new_damage(tmp_path, arrays):
    # A reader dropped after a ReadError (as a crashed loop drops it) must
    # let its file go: if naming the damaged chunk kept the dataset alive (an
    # exception's traceback in a reference cycle), HDF5 would hand the next
    # open of the same path the old file state, whose cached chunks hide new
    # damage.
    import gc
    import shutil

    from h5feed.reader import Reader

    ids, x, y = arrays
    sound = tmp_path / "sound.h5"
    h5feed.write_arrays(sound, ids, x, y, checksum=True, compression="gzip", chunk_rows=10, n_classes=5)
    copy = tmp_path / "copy.h5"
    shutil.copyfile(sound, copy)
    offset, size = _chunk_offset(copy, "x", 5)
    _flip_byte(copy, offset + size // 2)
    gc.disable()  # only reference counting may let the file go
    try:
        reader = Reader(h5feed.open_file(copy))
        reader.read("x", np.arange(0, 10))  # chunk 0, sound, now cached
        with pytest.raises(h5feed.errors.ReadError, match=r"rows 50\.\.59"):
            reader.read("x", np.arange(50, 60))
        del reader
        shutil.copyfile(sound, copy)
        offset, size = _chunk_offset(copy, "x", 0)
        _flip_byte(copy, offset + size // 2)
        reader = Reader(h5feed.open_file(copy))
        with pytest.raises(h5feed.errors.ReadError, match=r"rows 0\.\.9"):
            reader.read("x", np.arange(0, 10))
    finally:
        gc.enable()
