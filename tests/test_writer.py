"""DatasetWriter and write_arrays: checks, layout choices, atomicity.

Every test whose write succeeds reads back what it wrote (readback.py)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import errors

from readback import read_back


def _writer(path, **kw):
    opts = dict(sample_shape=(3,), dtype="float32", n_classes=4)
    opts.update(kw)
    return h5feed.DatasetWriter(path, **opts)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_exception_inside_with_leaves_no_file(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with _writer(target) as w:
            w.append("a", np.zeros(3, np.float32), 1)
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_keyboard_interrupt_inside_with_leaves_no_file(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        with _writer(target) as w:
            w.append("a", np.zeros(3, np.float32), 1)
            raise KeyboardInterrupt
    assert _leftovers(tmp_path) == []


def test_failed_overwrite_leaves_existing_target_byte_identical(tmp_path, small_file):
    before = small_file.read_bytes()
    with pytest.raises(errors.SampleError):
        with _writer(small_file, overwrite=True) as w:
            w.append("a", np.zeros(3, np.float32), 1)
            w.append("b", np.zeros(4, np.float32), 1)  # wrong shape
    assert small_file.read_bytes() == before
    assert _leftovers(tmp_path) == [small_file.name]


def test_existing_target_without_overwrite_is_refused_before_writing(small_file):
    with pytest.raises(errors.WriterError, match="already exists"):
        _writer(small_file)


def test_overwrite_replaces_target_only_on_success(tmp_path, small_file):
    with _writer(small_file, overwrite=True) as w:
        w.append("only", np.ones(3, np.float32), 2)
    back = read_back(small_file)
    assert back["ids"] == ["only"] and back["splits"] == {}
    np.testing.assert_array_equal(back["x"], np.ones((1, 3), np.float32))
    np.testing.assert_array_equal(back["y"], [2])


def test_missing_output_folder_is_refused_and_nothing_is_created(tmp_path):
    with pytest.raises(errors.WriterError, match="does not exist"):
        _writer(tmp_path / "no" / "such" / "out.h5")
    assert _leftovers(tmp_path) == []


BAD_APPENDS = [
    ("wrong-shape", ("a", np.zeros(4, np.float32), 1), "expected shape \\(3,\\)"),
    ("unsafe-dtype", ("a", np.zeros(3, np.float64), 1), "expected dtype float32"),
    ("label-too-big", ("a", np.zeros(3, np.float32), 4), r"outside \[0, 4\)"),
    ("label-negative", ("a", np.zeros(3, np.float32), -1), r"outside \[0, 4\)"),
    ("label-not-integer", ("a", np.zeros(3, np.float32), 1.5), "integer class index"),
    ("label-missing", ("a", np.zeros(3, np.float32), None), "missing its label"),
    ("id-not-str", (7, np.zeros(3, np.float32), 1), "must be str"),
    ("id-empty", ("", np.zeros(3, np.float32), 1), "invalid sample ID ''"),
]


@pytest.mark.parametrize("args, match", [c[1:] for c in BAD_APPENDS], ids=[c[0] for c in BAD_APPENDS])
def test_bad_append_names_the_sample_and_writes_nothing(tmp_path, args, match):
    with pytest.raises(errors.H5FeedError, match=match) as info:
        with _writer(tmp_path / "out.h5") as w:
            w.append("ok", np.zeros(3, np.float32), 0)
            w.append(*args)
    if isinstance(args[0], str) and args[0]:
        assert repr(args[0]) in str(info.value)
    assert _leftovers(tmp_path) == []


def test_duplicate_id_names_both_rows(tmp_path):
    with pytest.raises(errors.SampleError, match="duplicate sample ID 'a' \\(first at row 0\\)"):
        with _writer(tmp_path / "out.h5") as w:
            w.append("a", np.zeros(3, np.float32), 0)
            w.append("a", np.zeros(3, np.float32), 0)


def test_python_numbers_that_fit_are_accepted(tmp_path):
    with _writer(tmp_path / "out.h5", dtype="uint8") as w:
        w.append("a", [1, 2, 255], 3)
    back = read_back(tmp_path / "out.h5")
    assert back["x"].dtype == np.uint8 and back["x"].tolist() == [[1, 2, 255]] and back["y"].tolist() == [3]
    with pytest.raises(errors.SampleError, match="dtype uint8"):
        with _writer(tmp_path / "out2.h5", dtype="uint8") as w:
            w.append("a", [1, 2, 256], 3)


def test_empty_writer_is_an_error(tmp_path):
    with pytest.raises(errors.WriterError, match="no samples"):
        with _writer(tmp_path / "out.h5"):
            pass
    assert _leftovers(tmp_path) == []


def test_unknown_split_id_and_overlapping_splits_are_errors(tmp_path):
    with pytest.raises(errors.UnknownIDError, match="'zz'"):
        with _writer(tmp_path / "a.h5") as w:
            w.append("a", np.zeros(3, np.float32), 0)
            w.add_split("train", ["a", "zz"])
    with pytest.raises(errors.WriterError, match="overlap"):
        with _writer(tmp_path / "b.h5") as w:
            w.extend(["a", "b"], np.zeros((2, 3), np.float32), [0, 1])
            w.add_split("train", ["a", "b"])
            w.add_split("validation", ["b"])
    assert _leftovers(tmp_path) == []


def test_known_row_count_without_compression_is_contiguous(tmp_path, arrays):
    ids, x, y = arrays
    path = h5feed.write_arrays(tmp_path / "c.h5", ids, x, y, n_classes=5)
    with h5py.File(path) as f:
        assert f["x"].chunks is None and f["x"].compression is None
    back = read_back(path)
    assert back["ids"] == ids
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["y"], y)


@pytest.mark.parametrize("options", [{"compression": "gzip"}, {"compression": "lzf"}, {"checksum": True}])
def test_compressed_or_checksummed_data_is_chunked_256k_to_1m(tmp_path, options):
    x = np.random.default_rng(0).integers(0, 8, (3000, 28, 28), dtype=np.uint8)
    y = np.arange(3000) % 2
    path = h5feed.write_arrays(tmp_path / "c.h5", [str(i) for i in range(3000)], x, y, n_classes=2, **options)
    with h5py.File(path) as f:
        chunk_bytes = np.prod(f["x"].chunks) * f["x"].dtype.itemsize
        assert 256 * 1024 <= chunk_bytes <= 1024 * 1024
        assert f["x"].chunks[1:] == (28, 28)
    back = read_back(path)
    assert back["ids"] == [str(i) for i in range(3000)]
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["y"], y)


def test_expected_rows_must_be_met(tmp_path):
    with pytest.raises(errors.WriterError, match="expected_rows=3, but 2"):
        with _writer(tmp_path / "a.h5", expected_rows=3) as w:
            w.extend(["a", "b"], np.zeros((2, 3), np.float32), [0, 1])
    with pytest.raises(errors.SampleError, match="'c'"):
        with _writer(tmp_path / "b.h5", expected_rows=2) as w:
            w.extend(["a", "b"], np.zeros((2, 3), np.float32), [0, 1])
            w.append("c", np.zeros(3, np.float32), 0)
    assert _leftovers(tmp_path) == []


def test_round_trip_by_id_across_buffer_flushes(tmp_path):
    n = 5000  # several 4 MiB blocks of 1 KiB rows
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, 256)).astype(np.float32)
    y = rng.integers(0, 7, n)
    path = tmp_path / "big.h5"
    with h5feed.DatasetWriter(path, sample_shape=(256,), dtype="float32", n_classes=7) as w:
        for i in range(0, n, 999):
            w.extend([f"r{j}" for j in range(i, min(n, i + 999))], x[i : i + 999], y[i : i + 999])
    back = read_back(path)
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["y"], y)
    assert back["ids"] == [f"r{j}" for j in range(n)]


class _Block:
    """A RowBlock over an array, counting reads; ``fail_at`` raises there."""

    def __init__(self, arr, fail_at=None):
        self.arr, self.fail_at, self.reads = arr, fail_at, 0
        self.shape, self.dtype = arr.shape, arr.dtype

    def read_into(self, out, start, stop):
        if self.fail_at is not None and start <= self.fail_at < stop:
            raise OSError(f"row {self.fail_at} cannot be read")
        self.reads += 1
        out[...] = self.arr[start:stop]


def test_row_blocks_write_what_arrays_write(tmp_path):
    """A RowBlock fills the writer's buffers itself, across flushes and
    with a safe cast (int16 into float32): same rows, same completion
    record as the same rows given as arrays."""
    n = 5000
    rng = np.random.default_rng(4)
    x = rng.integers(-900, 900, (n, 256)).astype(np.int16)
    y = rng.integers(0, 7, n)
    paths = tmp_path / "arrays.h5", tmp_path / "blocks.h5"
    blocks = []
    for path, as_block in zip(paths, (False, True)):
        with h5feed.DatasetWriter(path, sample_shape=(256,), dtype="float32", n_classes=7) as w:
            for i in range(0, n, 1999):
                xs = x[i : i + 1999]
                if as_block:
                    xs = _Block(xs)
                    blocks.append(xs)
                w.extend([f"r{j}" for j in range(i, min(n, i + 1999))], xs, y[i : i + 1999])
    back = read_back(paths[1])
    np.testing.assert_array_equal(back["x"], x.astype(np.float32))
    assert all(b.reads >= 1 for b in blocks)
    with h5py.File(paths[0], "r") as a, h5py.File(paths[1], "r") as b:
        assert a.attrs["h5feed_complete"] == b.attrs["h5feed_complete"]  # the completion record, digests included


def test_row_block_of_unsafe_dtype_or_shape_is_refused_unread(tmp_path):
    with _writer(tmp_path / "out.h5") as w:
        block = _Block(np.zeros((2, 3), np.float64))
        with pytest.raises(errors.SampleError, match="expected dtype float32.*float64"):
            w.extend(["a", "b"], block, [0, 1])
        block = _Block(np.zeros((2, 4), np.float32))
        with pytest.raises(errors.SampleError, match=r"expected shape \(2, 3\)"):
            w.extend(["a", "b"], block, [0, 1])
        assert block.reads == 0
        w.extend(["a", "b"], np.zeros((2, 3), np.float32), [0, 1])
    assert read_back(tmp_path / "out.h5")["ids"] == ["a", "b"]


def test_row_block_that_fails_to_read_gives_up_the_file(tmp_path):
    """Rows of the call may be written already: the writer closes, and
    nothing is left under the target's name or beside it."""
    w = h5feed.DatasetWriter(tmp_path / "out.h5", sample_shape=(256,), dtype="float32", n_classes=7)
    n = 9000  # more than one 4 MiB block of 1 KiB rows before the bad one
    with pytest.raises(OSError, match="row 8000 cannot be read"):
        w.extend([f"r{j}" for j in range(n)], _Block(np.ones((n, 256), np.float32), fail_at=8000), np.zeros(n, int))
    with pytest.raises(errors.WriterInputError, match="closed"):
        w.extend(["z"], np.zeros((1, 256), np.float32), [0])
    assert _leftovers(tmp_path) == []


def test_unlabelled_data_has_no_y(tmp_path):
    path = tmp_path / "u.h5"
    with h5feed.DatasetWriter(path, sample_shape=(2,), dtype="float32", target_dtype=None) as w:
        w.append("a", np.array([1.5, -2], np.float32))
    info = h5feed.open_file(path)
    assert not info.has_y and info.n_classes is None
    back = read_back(path)
    assert back["ids"] == ["a"] and "y" not in back and back["x"].tolist() == [[1.5, -2]]


def test_regression_targets_and_extras(tmp_path):
    ids = ["a", "b", "c"]
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    targets = np.array([[0.5, 1], [2, 3], [-1, 4.25]], np.float32)
    path = h5feed.write_arrays(tmp_path / "r.h5", ids, x, targets, extras={"weight": np.array([1.0, 2.0, 3.0])})
    info = h5feed.open_file(path)
    assert info.n_classes is None and info.column("y").shape == (3, 2)
    assert info.column("weight").shape == (3,)
    back = read_back(path)
    assert back["ids"] == ids
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["y"], targets)
    np.testing.assert_array_equal(back["weight"], [1.0, 2.0, 3.0])


def test_write_arrays_reads_an_h5py_dataset_a_block_at_a_time(tmp_path):
    rows, shape = 64, (64, 64, 8)  # 128 KiB rows: 32 per block
    x = np.random.default_rng(0).standard_normal((rows, *shape)).astype(np.float32)
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["x"], f["y"] = x, np.arange(rows) % 3

    class Recording:
        """An h5py dataset that records its reads and refuses to be read whole."""

        def __init__(self, dset):
            self.dset, self.reads = dset, []
            self.shape, self.dtype = dset.shape, dset.dtype

        def __len__(self):
            return len(self.dset)

        def __getitem__(self, key):
            self.reads.append(key)
            return self.dset[key]

        def __array__(self, *args, **kwargs):
            raise AssertionError("read whole")

    with h5py.File(tmp_path / "src.h5") as f:
        recording = Recording(f["x"])
        path = h5feed.write_arrays(tmp_path / "o.h5", [str(i) for i in range(rows)], recording, f["y"], n_classes=3)
    assert len(recording.reads) == 2 and all(k.stop - k.start == 32 for k in recording.reads)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["x"][()], x)
        np.testing.assert_array_equal(f["y"][()], np.arange(rows) % 3)


def test_write_arrays_rejects_unknown_options(tmp_path, arrays):
    ids, x, y = arrays
    with pytest.raises(TypeError, match="compresion"):
        h5feed.write_arrays(tmp_path / "a.h5", ids, x, y, compresion="gzip")


def test_stale_temporary_of_a_dead_writer_is_removed(tmp_path):
    import socket

    stale = tmp_path / f".out.h5.{socket.gethostname()}.999999999.abcd.h5feed-tmp"
    stale.write_bytes(b"leftover")
    with _writer(tmp_path / "out.h5") as w:
        w.append("a", np.full(3, 7, np.float32), 0)
    assert _leftovers(tmp_path) == ["out.h5"]
    back = read_back(tmp_path / "out.h5")
    assert back["ids"] == ["a"] and back["x"].tolist() == [[7, 7, 7]] and back["y"].tolist() == [0]
