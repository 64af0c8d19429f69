"""Rows at scale (issue 20): opening reads metadata only, the sorted ID index,
selections without per-row objects, epoch orders computed a slice at a time,
workers that never validate."""

from __future__ import annotations

import json
import os
import pickle
import tracemalloc

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import _ids, _plan, _select, errors, layout
from h5feed.inspection import verify

from conftest import make_arrays

H5Sequence = pytest.importorskip("h5feed.sequence").H5Sequence


def _write(path, n, *, chunked=False, split_every=2):
    ids, x, y = make_arrays(n, shape=(2,), seed=n)
    options = {"chunk_rows": 64} if chunked else {}
    h5feed.write_arrays(path, ids, x, y, splits={"half": range(0, n, split_every)}, n_classes=5, **options)
    return path


def _strip_index(path):
    """Make ``path`` a file as h5feed wrote it before the ID index."""
    with h5py.File(path, "r+") as f:
        record = json.loads(f.attrs["h5feed_complete"])
        record["sha256"] = {k: v for k, v in record["sha256"].items() if not k.startswith("ids_index/")}
        del f["ids_index"]
        f.attrs["h5feed_complete"] = json.dumps(record, sort_keys=True)
    return path


class _Reads:
    """Records every h5py dataset read through h5py's Python API, by name."""

    def __init__(self, monkeypatch):
        self.names: list[str] = []
        reads = self

        def spy(method):
            def wrapper(dset, *args, **kwargs):
                reads.names.append(dset.name)
                return method(dset, *args, **kwargs)
            return wrapper

        for method in ("__getitem__", "read_direct", "asstr"):
            monkeypatch.setattr(h5py.Dataset, method, spy(getattr(h5py.Dataset, method)))
        real_points = _ids.read_points
        monkeypatch.setattr(_ids, "read_points", lambda dset, rows: (reads.names.append(f"{dset.name}@{len(rows)}"), real_points(dset, rows))[1])


# -- opening reads metadata only ---------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["contiguous", "chunked"])
def test_opening_reads_no_ids_no_labels_and_only_the_selected_split(tmp_path, monkeypatch, chunked):
    path = _write(tmp_path / "a.h5", 300, chunked=chunked)
    reads = _Reads(monkeypatch)
    h5feed.open_file(path)
    assert reads.names == []
    seq = H5Sequence(path, "half", batch_size=8, seed=0)
    seq[0]
    # The split may be read (or memory-mapped), and the batch's own rows.
    assert not {"/ids", "/splits/train"} & set(reads.names), reads.names
    assert {n for n in reads.names if n not in ("/splits/half", "/x", "/y")} == set()
    seq.close()


def test_a_file_whose_ids_cannot_be_read_still_opens_and_trains(tmp_path):
    # Opening never reads /ids: damage there shows only where IDs are needed.
    path = _write(tmp_path / "a.h5", 200)
    with h5py.File(path, "r+") as f:
        record = json.loads(f.attrs["h5feed_complete"])
        del f["ids"]
        # Fixed-length strings (valid /ids too) take a checksum filter.
        f.create_dataset("ids", data=[f"id-{i}".encode() for i in range(200)], dtype=h5py.string_dtype("utf-8", 8),
                         chunks=(50,), fletcher32=True)
        f.attrs["h5feed_complete"] = json.dumps(record)
    with h5py.File(path) as f:
        offset = f["ids"].id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 3)
        fh.write(b"\xff\xff")
    seq = H5Sequence(path, "half", batch_size=10, seed=0)
    assert len(seq) == 10 and seq[0][0].shape == (10, 2)
    with pytest.raises(errors.ReadError):
        H5Sequence(path, ids=["id-60"])
    assert not verify(path).sound


# -- the sorted ID index -------------------------------------------------------------------


def test_the_writer_stores_a_sorted_index_in_the_record(tmp_path):
    ids = ["b", "é", "a", "ab", "Z"]
    path = tmp_path / "a.h5"
    h5feed.write_arrays(path, ids, np.zeros((5, 1)))
    with h5py.File(path) as f:
        rows, ends, data = (f[f"ids_index/{n}"][()] for n in ("rows", "ends", "bytes"))
        record = json.loads(f.attrs["h5feed_complete"])
        assert all(f[f"ids_index/{n}"].chunks is None for n in ("rows", "ends", "bytes"))  # memory-mappable
    assert [ids[r] for r in rows] == sorted(ids)
    starts = np.concatenate(([0], ends[:-1]))
    assert [data[a:b].tobytes().decode() for a, b in zip(starts, ends)] == sorted(ids)
    assert {"ids_index/rows", "ids_index/ends", "ids_index/bytes"} <= set(record["sha256"])
    assert verify(path).sound


def test_a_lookup_reads_only_the_rows_it_found(tmp_path, monkeypatch):
    path = _write(tmp_path / "a.h5", 5000)
    reads = _Reads(monkeypatch)
    seq = H5Sequence(path, ids=["id-4999", "id-7", "id-7", "id-123"], shuffle=False, batch_size=4)
    assert "/ids" not in reads.names  # no scan
    assert [n for n in reads.names if n.startswith("/ids@")] == ["/ids@3"]  # one read, the distinct rows
    np.testing.assert_array_equal(seq.rows, [4999, 7, 7, 123])


@pytest.mark.parametrize("indexed", [True, False], ids=["index", "scan"])
def test_selecting_by_id_gives_the_same_rows_with_or_without_the_index(tmp_path, indexed):
    path = _write(tmp_path / "a.h5", 3000)
    if not indexed:
        _strip_index(path)
        assert verify(path).sound  # an older file, as sound as ever
    rng = np.random.default_rng(0)
    wanted = rng.integers(0, 3000, 500)
    seq = H5Sequence(path, ids=[f"id-{i}" for i in wanted], shuffle=False, batch_size=100)
    np.testing.assert_array_equal(seq.rows, wanted)
    np.testing.assert_array_equal(seq[0][0][:, 0], wanted[:100])
    with pytest.raises(errors.UnknownIDError, match=r"3 of the requested IDs are not in the file, e\.g\. \['nope', 7, 'id-3000'\]"):
        H5Sequence(path, ids=["id-1", "nope", 7, "id-3000"])


def test_a_damaged_index_never_selects_a_wrong_row(tmp_path):
    path = _write(tmp_path / "a.h5", 100)
    with h5py.File(path, "r+") as f:
        rows = f["ids_index/rows"][()]
        rows[[10, 11]] = rows[[11, 10]]  # two entries point at each other's rows
        f["ids_index/rows"][:] = rows
    with h5py.File(path) as f:
        ends, data = f["ids_index/ends"][()], f["ids_index/bytes"][()]
    victim = data[ends[9] : ends[10]].tobytes().decode()
    with pytest.raises(errors.LayoutError, match=rf"the index is damaged: it finds sample ID '{victim}' at row"):
        H5Sequence(path, ids=[victim])
    problems = verify(path).problems
    assert problems[0].startswith("layout: ") and "ids_index: entry 10" in problems[0]


def test_index_ends_outside_its_bytes_are_a_named_error_not_a_search_astray(tmp_path):
    path = _write(tmp_path / "a.h5", 100)
    with h5py.File(path, "r+") as f:
        f["ids_index/ends"][50] = 2**62  # the search starts in the middle
    with pytest.raises(errors.LayoutError, match=r"ids_index/ends: entry 50 ends at 4611686018427387904.*damaged"):
        H5Sequence(path, ids=["id-3"])


@pytest.mark.parametrize("indexed", [True, False], ids=["index", "scan"])
def test_damaged_ids_open_and_are_a_named_error_where_a_lookup_reads_them(tmp_path, indexed):
    path = _write(tmp_path / "a.h5", 100)
    if not indexed:
        _strip_index(path)
    with h5py.File(path) as f:
        at = int(f["ids"].id.get_offset()) + 5 * 16  # row 5's string descriptor: its length first
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write((0xE0000000).to_bytes(4, "little"))  # claims 3.5 GiB (h5feed/_heap.py)
    h5feed.open_file(path)  # metadata only: the strings are not read
    with pytest.raises(errors.DamagedFileError, match=rf"{path}:/ids: damaged: the string of row 5 claims"):
        H5Sequence(path, ids=["id-5"])


def test_verify_finds_repeated_ids_with_and_without_the_index(tmp_path):
    path = _write(tmp_path / "a.h5", 50)
    with h5py.File(path, "r+") as f:
        f["ids"][7] = "id-3"
    problems = verify(path).problems
    assert problems[0].startswith("layout: ") and "ids_index" in problems[0]  # the index no longer matches
    assert "sample IDs must be unique; 1 repeat, e.g. ['id-3'] (rows 3 and 7)" in problems[1]
    _strip_index(path)
    assert "sample IDs must be unique; 1 repeat, e.g. ['id-3'] (rows 3 and 7)" in verify(path).problems[0]


def test_the_writer_refuses_an_id_repeated_across_calls_naming_both_rows(tmp_path):
    path = tmp_path / "a.h5"
    with pytest.raises(errors.SampleError, match=r"duplicate sample ID 'b' \(first at row 1\) at row 4"):
        with h5feed.DatasetWriter(path, sample_shape=(1,), dtype="float32", target_dtype=None) as w:
            w.extend(["a", "b", "c"], np.zeros((3, 1), np.float32))
            w.extend(["d", "b"], np.zeros((2, 1), np.float32))
    assert not path.exists()


def test_splits_by_id_resolve_through_the_sorted_ids(tmp_path):
    ids = [f"k{i:04d}" for i in range(2000)][::-1]
    path = tmp_path / "a.h5"
    train = ids[::3]
    h5feed.write_arrays(path, ids, np.zeros((2000, 1)), splits={"train": train, "few": ["k0008", "k0002"]})
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["splits/train"][()], sorted(ids.index(s) for s in train))
        np.testing.assert_array_equal(f["splits/few"][()], sorted([ids.index("k0008"), ids.index("k0002")]))


def test_a_virtual_merge_gets_an_index_of_all_parts(tmp_path):
    from h5feed.merge import merge_files

    for k in range(2):
        ids, x, y = make_arrays(40, shape=(2,), seed=k)
        h5feed.write_arrays(tmp_path / f"p{k}.h5", [f"p{k}-{i}" for i in range(40)], x, y, n_classes=5)
    out = merge_files([tmp_path / "p0.h5", tmp_path / "p1.h5"], tmp_path / "all.h5")
    seq = H5Sequence(out, ids=["p1-3", "p0-39"], shuffle=False, allow_virtual=True)
    np.testing.assert_array_equal(seq.rows, [43, 39])
    assert verify(out, allow_virtual=True).sound


# -- selections and epochs without per-row objects -------------------------------------------


def _peak_traced(make):
    tracemalloc.start()
    try:
        obj = make()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return obj, peak


def test_opening_a_large_file_allocates_no_memory_per_row(tmp_path):
    # Both files are larger than what is computed at a time (a piece of the
    # epoch order, a block of the split checked): four times the rows must
    # not cost more.
    small, big = _write(tmp_path / "s.h5", 100_000), _write(tmp_path / "b.h5", 400_000)
    for name in (None, "half"):
        _, at_small = _peak_traced(lambda: H5Sequence(small, name, batch_size=32, seed=1)[0])
        _, at_big = _peak_traced(lambda: H5Sequence(big, name, batch_size=32, seed=1)[0])
        # A split is memory-mapped (not traced); all rows are a count.
        assert at_big - at_small < 2**20, (name, at_small, at_big)


def test_sequences_and_datasets_pickle_small_whatever_the_rows(tmp_path):
    small, big = _write(tmp_path / "s.h5", 1_000), _write(tmp_path / "b.h5", 100_000)
    sizes = {}
    for path in (small, big):
        seq = H5Sequence(path, "half", batch_size=32, seed=1)
        first = seq[0]
        sizes[path] = len(pickle.dumps(seq))
        clone = pickle.loads(pickle.dumps(seq))
        np.testing.assert_array_equal(clone[0][0], first[0])
    assert abs(sizes[big] - sizes[small]) < 1024, sizes


def test_epoch_orders_are_computed_a_slice_at_a_time(tmp_path):
    # A permutation of ten billion positions costs nothing to set up.
    for shuffle in (True, "block"):
        order = _plan.EpochOrder(10**10, shuffle=shuffle, seed=5, epoch=2, block=64, window=8)
        batch = order[123_456_789:123_456_789 + 32]
        assert batch.size == 32 and np.unique(batch).size == 32 and batch.min() >= 0 and batch.max() < 10**10


@pytest.mark.parametrize("shuffle", [True, "block"])
@pytest.mark.parametrize("seed", range(3))
def test_slices_of_an_epoch_order_are_the_whole_order_cut(shuffle, seed):
    n = _plan._PIECE * 3 + 17
    order = _plan.EpochOrder(n, shuffle=shuffle, seed=seed, epoch=1, block=50, window=3, shard=(1, 3))
    whole = order.all()
    np.testing.assert_array_equal(np.sort(_plan.EpochOrder(n, shuffle=shuffle, seed=seed, epoch=1, block=50, window=3).all()), np.arange(n))
    rng = np.random.default_rng(seed)
    for _ in range(20):
        a = int(rng.integers(0, len(order)))
        b = int(rng.integers(a, len(order) + 10))
        np.testing.assert_array_equal(order[a:b], whole[a:b])


@pytest.mark.parametrize("seed", range(3))
def test_slices_of_an_epochs_rows_are_its_whole_rows_cut(seed):
    # EpochRows keeps the rows of the pieces last asked for: slices within
    # a piece, across pieces, empty or past the end give the rows of the
    # whole epoch cut, in any order of asking, and after pickling.
    n = _plan.PIECE * 2 + 33
    rng = np.random.default_rng(seed)
    selection = _select.Selection.given(np.sort(rng.choice(5 * n, n, replace=False)))
    rows = _select.EpochRows(selection, _plan.EpochOrder(n, shuffle=True, seed=seed, epoch=3))
    whole = rows.all()
    assert sorted(whole.tolist()) == selection.array().tolist()
    for _ in range(40):
        a = int(rng.integers(0, n + 5))
        b = a + int(rng.choice([0, 1, 32, 1000, _plan.PIECE + 7]))
        if rng.random() < 0.2:
            rows = pickle.loads(pickle.dumps(rows))
        np.testing.assert_array_equal(rows[a:b], whole[a:b])


def test_a_selection_is_a_count_a_mapped_split_or_the_rows_found(tmp_path):
    path = _write(tmp_path / "a.h5", 1000)
    _, everything = _select.select_rows(str(path), None, None, allow_virtual=False)
    _, half = _select.select_rows(str(path), "half", None, allow_virtual=False)
    _, found = _select.select_rows(str(path), None, ["id-9", "id-2"], allow_virtual=False)
    assert everything._rows is None and len(everything) == 1000
    assert isinstance(half._array(), np.memmap) and len(pickle.dumps(half)) < 300
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(half)).array(), np.arange(0, 1000, 2))
    np.testing.assert_array_equal(found.array(), [9, 2])
    with pytest.raises(ValueError):
        found.array()[0] = 1  # read-only


# -- worker processes get resolved rows ------------------------------------------------------


def _refuse_in_a_child(real, parent):
    def guarded(*args, **kwargs):
        if os.getpid() != parent:
            raise AssertionError(f"{real.__name__} called in worker process {os.getpid()}")
        return real(*args, **kwargs)
    return guarded


@pytest.mark.slow
def test_worker_processes_never_validate_nor_look_up_ids(tmp_path, monkeypatch):
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork to carry the spies into the workers")
    path = _write(tmp_path / "a.h5", 2000)
    parent = os.getpid()
    for module, name in ((layout, "validate"), (_ids, "find_rows"), (_select, "validate")):
        monkeypatch.setattr(module, name, _refuse_in_a_child(getattr(module, name), parent))
    for selection in ({"split": "half"}, {"ids": [f"id-{i}" for i in range(0, 2000, 3)]}):
        seq = H5Sequence(path, **selection, batch_size=50, seed=3, workers=2, use_multiprocessing=True)
        seq._mp_context = multiprocessing.get_context("fork")
        try:
            rows = np.concatenate([seq[i][0][:, 0] for i in range(len(seq))]).astype(np.int64)
            assert seq._pool is not None
        finally:
            seq.close()
        np.testing.assert_array_equal(np.sort(rows), np.sort(seq.rows))
