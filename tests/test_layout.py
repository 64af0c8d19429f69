"""Validation of the on-disk layout: valid and invalid twins."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import _record, _select, errors, layout
from h5feed._batch import BatchMaker
from h5feed.inspection import verify


def _valid(path, n=6):
    """A minimal valid file written by hand with h5py, as another tool would."""
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=[f"s{i}" for i in range(n)], dtype=h5py.string_dtype())
        f.create_dataset("x", data=np.zeros((n, 2), np.float32))
        f.create_dataset("y", data=np.arange(n) % 3)
        f.create_dataset("splits/train", data=np.arange(0, n, 2, dtype=np.int64))
        f.attrs["h5feed_format"] = 1
        f.attrs["n_classes"] = 3
        f.attrs["h5feed_complete"] = json.dumps({"rows": n, "sha256": {}})
    return path


def _drop(name):
    def edit(f):
        del f[name]
    return edit


def _replace(name, data, **kw):
    def edit(f):
        del f[name]
        f.create_dataset(name, data=data, **kw)
    return edit


def _attr(name, value):
    def edit(f):
        if value is None:
            del f.attrs[name]
        else:
            f.attrs[name] = value
    return edit


INVALID = [
    ("no-format-attr", _attr("h5feed_format", None), errors.UnsupportedFormatVersionError, "h5feed_format"),
    ("future-version", _attr("h5feed_format", 2), errors.UnsupportedFormatVersionError, "version 2"),
    ("no-completion", _attr("h5feed_complete", None), errors.IncompleteFileError, "incomplete file"),
    ("wrong-row-count", _attr("h5feed_complete", json.dumps({"rows": 5, "sha256": {}})), errors.IncompleteFileError, "5"),
    ("missing-x", _drop("x"), errors.LayoutError, "missing dataset 'x'"),
    ("missing-ids", _drop("ids"), errors.LayoutError, "missing dataset 'ids'"),
    ("short-x", _replace("x", np.zeros((5, 2), np.float32)), errors.LayoutError, r"/x.*6 rows"),
    ("short-y", _replace("y", np.zeros(4, np.int64)), errors.LayoutError, r"/y.*6 rows"),
    ("string-x", _replace("x", ["a"] * 6, dtype=h5py.string_dtype()), errors.LayoutError, "numeric"),
    ("split-of-strings", _replace("splits/train", ["a"], dtype=h5py.string_dtype()), errors.LayoutError, "integer row"),
]


def _select_ids(path):
    return _select.select_rows(str(path), None, ["s1", "s0"], allow_virtual=False)


def _select_train(path):
    return _select.select_rows(str(path), "train", None, allow_virtual=False)


def _read_batch(path):
    layout = h5feed.open_file(path)
    maker = BatchMaker(layout, "x", "y", one_hot=False, transform=None)
    try:
        maker.make(np.arange(layout.n_rows), 0)
    finally:
        maker.close()


# Damage that only the rows show: opening (metadata only) leaves it; the read
# that meets those rows refuses it, and verify reports it, with one message.
PER_ROW = [
    ("duplicate-ids", _replace("ids", ["s0", "s1", "s0", "c", "d", "e"], dtype=h5py.string_dtype()), _select_ids,
     r"/ids: sample ID 's0' is at rows 0 and 2", r"/ids: sample IDs must be unique; 1 repeat, e.g. \['s0'\] \(rows 0 and 2\)"),
    ("split-out-of-range", _replace("splits/train", np.array([0, 6])), _select_train, r"splits/train: row 6 is outside \[0, 6\)", None),
    ("split-unsorted", _replace("splits/train", np.array([3, 1])), _select_train, "strictly increasing", None),
    ("split-repeats", _replace("splits/train", np.array([1, 1])), _select_train, "strictly increasing", None),
    ("label-out-of-range", _replace("y", np.array([0, 1, 2, 3, 0, 0])), _read_batch, r"/y: class index 3 at row 3 is outside \[0, 3\)", None),
    ("label-negative", _replace("y", np.array([0, 1, 2, -1, 0, 0])), _read_batch, r"/y: class index -1 at row 3 is outside \[0, 3\)", None),
]


def test_valid_file_opens_and_describes_itself(tmp_path):
    info = h5feed.open_file(_valid(tmp_path / "v.h5"))
    assert info.n_rows == 6 and info.n_classes == 3
    assert dict(info.splits) == {"train": 3}
    assert info.column("x").offset is not None  # contiguous: memory-mappable


@pytest.mark.parametrize("edit, exc, match", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_twin_is_refused_naming_file_and_dataset(tmp_path, edit, exc, match):
    path = _valid(tmp_path / "v.h5")
    h5feed.open_file(path)  # the valid twin opens
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(exc, match=match) as info:
        h5feed.open_file(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "edit, read, match, verify_match", [c[1:] for c in PER_ROW], ids=[c[0] for c in PER_ROW]
)
def test_damage_in_the_rows_is_refused_where_read_and_by_verify(tmp_path, edit, read, match, verify_match):
    path = _valid(tmp_path / "v.h5")
    read(path)  # the valid twin reads
    with h5py.File(path, "a") as f:
        edit(f)
    h5feed.open_file(path)  # metadata only (NOTE [ Opening reads metadata only ])
    with pytest.raises(errors.LayoutError, match=match) as info:
        read(path)
    assert str(path) in str(info.value)
    problems = verify(path).problems
    assert problems and problems[0].startswith("layout: "), problems
    assert re.search(verify_match or match, problems[0]), problems


@pytest.mark.parametrize(
    "content, match",
    [(b"", "empty"), (b"hello, not hdf5 at all" * 10, "not an HDF5 file")],
    ids=["empty", "text"],
)
def test_not_hdf5_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.h5"
    path.write_bytes(content)
    with pytest.raises(errors.NotH5FeedFileError, match=match):
        h5feed.open_file(path)


@pytest.mark.parametrize("keep", [0, 4, 100, "half", "one-short"])
def test_truncated_file_is_a_clear_error(tmp_path, small_file, keep):
    data = small_file.read_bytes()
    n = {"half": len(data) // 2, "one-short": len(data) - 1}.get(keep, keep)
    path = tmp_path / "cut.h5"
    path.write_bytes(data[:n])
    with pytest.raises(errors.FormatError) as info:
        info_ = h5feed.open_file(path)
        # Some truncations leave the metadata whole: reading must then fail.
        from h5feed.reader import Reader

        Reader(info_).read("x", np.arange(info_.n_rows))
    assert str(path) in str(info.value)


def test_missing_file_is_also_an_oserror(tmp_path):
    with pytest.raises(OSError, match="no such file"):
        h5feed.open_file(tmp_path / "nope.h5")


def test_external_link_is_refused(tmp_path):
    path = _valid(tmp_path / "v.h5")
    with h5py.File(path, "a") as f:
        f["elsewhere"] = h5py.ExternalLink("/etc/passwd", "/x")
    with pytest.raises(errors.UntrustedFileError, match="external link"):
        h5feed.open_file(path)


def test_extra_per_row_datasets_are_columns(tmp_path):
    path = _valid(tmp_path / "v.h5")
    with h5py.File(path, "a") as f:
        f.create_dataset("weight", data=np.ones(6, np.float32))
        f.create_dataset("notes", data=np.ones(2))  # not per-row: left alone
    info = h5feed.open_file(path)
    assert "weight" in info.columns and "notes" not in info.columns
    with pytest.raises(errors.LayoutError, match="'notes'"):
        info.column("notes")


def test_hash_rows_is_independent_of_block_size():
    import hashlib

    data = np.arange(100, dtype=np.float64).reshape(25, 4)
    a, b = hashlib.sha256(), hashlib.sha256()
    layout.hash_rows(a, data)
    for i in range(0, 25, 7):
        layout.hash_rows(b, data[i : i + 7])
    assert a.hexdigest() == b.hexdigest()


def test_completion_record_matches_the_data(small_file):
    with h5py.File(small_file) as f:
        record = json.loads(f.attrs["h5feed_complete"])
        for name in ("ids", "x", "y", "splits/train"):
            assert record["sha256"][name] == _record.dataset_sha256(f[name])
