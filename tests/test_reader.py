"""The reader: fast path and HDF5 path return the same bytes; few reads."""

from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest

import h5feed
from h5feed.reader import Reader


@pytest.mark.parametrize("seed", range(5))
def test_every_layout_reads_the_same_bytes_as_plain_h5py(any_layout_file, seed):
    rng = np.random.default_rng(seed)
    info = h5feed.open_file(any_layout_file)
    with h5py.File(any_layout_file) as f:
        x_all, y_all = f["x"][()], f["y"][()]
    reader = Reader(info)
    for _ in range(5):
        rows = rng.integers(0, info.n_rows, int(rng.integers(1, 40)))
        np.testing.assert_array_equal(reader.read("x", rows), x_all[rows])
        np.testing.assert_array_equal(reader.read("y", rows), y_all[rows])
    reader.close()
    reader.close()  # twice is safe


def test_fast_path_and_hdf5_path_agree(small_file):
    info = h5feed.open_file(small_file)
    rows = np.random.default_rng(0).permutation(info.n_rows)
    fast, slow = Reader(info), Reader(info, use_mmap=False)
    np.testing.assert_array_equal(fast.read("x", rows), slow.read("x", rows))
    assert fast._maps and not slow._maps  # each really took its own path


class _RecordingDataset:
    """Stands in for an h5py dataset and records every read call."""

    def __init__(self, data):
        self.data = data
        self.calls = []

    def read_direct(self, dest, source_sel, dest_sel):
        self.calls.append((source_sel.start, source_sel.stop))
        dest[dest_sel] = self.data[source_sel]


@pytest.mark.parametrize(
    "rows, expected_calls",
    [
        (np.arange(10, 42), [(10, 42)]),  # k consecutive rows: one read
        (np.arange(41, 9, -1), [(10, 42)]),  # reversed: still one read
        (np.array([5, 6, 7, 50, 51, 90]), [(5, 8), (50, 52), (90, 91)]),
        (np.array([3, 3, 4]), [(3, 5)]),  # repeats read once
    ],
    ids=["consecutive", "reversed", "three-runs", "repeats"],
)
def test_batch_costs_one_read_per_run(small_file, monkeypatch, rows, expected_calls):
    info = h5feed.open_file(small_file)
    with h5py.File(small_file) as f:
        data = f["x"][()]
    fake = _RecordingDataset(data)
    reader = Reader(info, use_mmap=False)
    monkeypatch.setattr(reader, "_dataset", lambda name: fake)
    out = reader.read("x", rows)
    assert fake.calls == expected_calls
    np.testing.assert_array_equal(out, data[rows])


def test_reader_pickles_without_handles_and_reopens(small_file):
    reader = Reader(h5feed.open_file(small_file))
    first = reader.read("x", np.arange(5))
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._file is None and not clone._maps
    np.testing.assert_array_equal(clone.read("x", np.arange(5)), first)


def test_out_of_range_row_is_an_index_error(small_file):
    reader = Reader(h5feed.open_file(small_file))
    with pytest.raises(IndexError, match="row 100"):
        reader.read("x", np.array([1, 100]))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_reader_used_in_parent_works_in_child_processes(small_file, method):
    import multiprocessing as mp

    reader = Reader(h5feed.open_file(small_file))
    expected = reader.read("x", np.arange(20))  # parent opens its handles first
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(_read_in_child, [(reader, k) for k in range(4)])
    for pid, batch in results:
        assert pid != os.getpid()
        np.testing.assert_array_equal(batch, expected)


def _read_in_child(args):
    reader, _ = args
    return os.getpid(), reader.read("x", np.arange(20))


@pytest.mark.parametrize("seed", range(4))
def test_take_and_out_paths_read_the_same_bytes_as_plain_h5py(any_layout_file, seed):
    """The trusted per-batch path (take), with and without a given output."""
    rng = np.random.default_rng(seed)
    info = h5feed.open_file(any_layout_file)
    with h5py.File(any_layout_file) as f:
        x_all = f["x"][()]
    reader = Reader(info)
    for _ in range(5):
        rows = rng.integers(0, info.n_rows, int(rng.integers(1, 40))).astype(np.int64)
        np.testing.assert_array_equal(reader.take("x", rows), x_all[rows])
        out = np.full((rows.size, *x_all.shape[1:]), -1, dtype=x_all.dtype)
        assert reader.take("x", rows, out) is out
        np.testing.assert_array_equal(out, x_all[rows])
        out2 = np.empty_like(out)
        assert reader.read("x", rows, out2) is out2
        np.testing.assert_array_equal(out2, x_all[rows])
    assert bool(reader._maps) == (info.column("x").offset is not None)


@pytest.mark.parametrize("seed", range(5))
def test_compressed_batch_decompresses_each_chunk_at_most_once(tmp_path, arrays, monkeypatch, seed):
    """HDF5's path (decode_threads=0): one read per chunk group of a batch."""
    ids, x, y = arrays
    path = tmp_path / "gz.h5"
    h5feed.write_arrays(path, ids, x, y, n_classes=5, compression="gzip", chunk_rows=6)
    info = h5feed.open_file(path)
    with h5py.File(path) as f:
        data = f["x"][()]
    fake = _RecordingDataset(data)
    reader = Reader(info, decode_threads=0)
    monkeypatch.setattr(reader, "_dataset", lambda name: fake)
    rng = np.random.default_rng(seed)
    for _ in range(10):
        fake.calls.clear()
        rows = rng.integers(0, info.n_rows, 32)
        np.testing.assert_array_equal(reader.read("x", rows), data[rows])
        chunks = [c for start, stop in fake.calls for c in range(start // 6, (stop - 1) // 6 + 1)]
        assert len(chunks) == len(set(chunks))  # no chunk touched by two reads


def test_reader_keeps_its_datasets_open_between_batches(any_layout_file):
    """HDF5 drops a dataset's chunk cache when it is closed: keep it open."""
    reader = Reader(h5feed.open_file(any_layout_file), use_mmap=False)
    reader.read("x", np.arange(3))
    first = reader._dsets["x"]
    reader.read("x", np.arange(5, 9))
    assert reader._dsets["x"] is first
    reader.close()
    assert not reader._dsets
