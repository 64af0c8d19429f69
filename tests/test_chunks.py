"""Chunked datasets read outside HDF5's lock (h5feed/_chunks.py): the same
bytes as h5py, each chunk decoded once per epoch within the cache's budget,
threads and processes, and damaged chunks named as before."""

from __future__ import annotations

import os
import pickle
import shutil
import threading

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import _plan
from h5feed._chunks import ChunkCache
from h5feed._parts import PartsReader
from h5feed.errors import ReadError
from h5feed.reader import Reader

from conftest import make_arrays

N = 1000
CHUNK = 25  # 40 chunks of 25 rows of 4x3 float32 (300 bytes a row, 7.5 KB a chunk)


@pytest.fixture(params=["gzip", "lzf", "zstd", "lz4"])
def compressed(request, tmp_path):
    ids, x, y = make_arrays(N)
    path = tmp_path / f"{request.param}.h5"
    h5feed.write_arrays(path, ids, x, y, n_classes=5, compression=request.param, chunk_rows=CHUNK, checksum=True)
    return path, x


def _epoch(reader, order, batch=32):
    return [reader.read("x", order[i : i + batch]) for i in range(0, order.size, batch)]


@pytest.mark.parametrize("seed", range(3))
def test_batches_are_the_bytes_of_plain_h5py_and_of_hdf5s_own_path(compressed, seed):
    path, x = compressed
    layout = h5feed.open_file(path)
    rng = np.random.default_rng(seed)
    ours, hdf5s = Reader(layout), Reader(layout, decode_threads=0)
    for _ in range(20):
        rows = rng.integers(0, N, int(rng.integers(1, 80)))  # any order, repeats
        got = ours.read("x", rows)
        np.testing.assert_array_equal(got, x[rows])
        np.testing.assert_array_equal(hdf5s.read("x", rows), got)
        out = np.empty_like(got)
        assert ours.read("x", rows, out) is out
        np.testing.assert_array_equal(out, got)
    assert ours._chunked and not hdf5s._chunked  # each took its own path


@pytest.mark.parametrize("shuffle", ["block", True])
def test_an_epoch_that_fits_the_budget_decodes_each_chunk_once(compressed, shuffle):
    path, x = compressed
    reader = Reader(h5feed.open_file(path))
    order = _plan.epoch_order(N, shuffle=shuffle, seed=3, epoch=0, block=CHUNK, window=4)
    batches = _epoch(reader, order)
    np.testing.assert_array_equal(np.concatenate(batches), x[order])
    assert reader._cache.stats().decoded == N // CHUNK
    _epoch(reader, _plan.epoch_order(N, shuffle=shuffle, seed=3, epoch=1, block=CHUNK, window=4))
    assert reader._cache.stats().decoded == N // CHUNK  # the next epoch decodes nothing


def test_a_block_shuffled_epoch_larger_than_the_budget_still_decodes_each_chunk_once(compressed):
    # A batch draws from at most two windows of 4 blocks (chunks): a budget
    # of 9 of the 40 chunks holds what the batches after it need.
    path, x = compressed
    chunk_bytes = CHUNK * x[0].nbytes
    reader = Reader(h5feed.open_file(path), cache_bytes=9 * chunk_bytes)
    order = _plan.epoch_order(N, shuffle="block", seed=5, epoch=0, block=CHUNK, window=4)
    np.testing.assert_array_equal(np.concatenate(_epoch(reader, order)), x[order])
    stats = reader._cache.stats()
    assert stats.decoded == N // CHUNK and stats.evicted > 0
    assert stats.peak_nbytes <= 9 * chunk_bytes


@pytest.mark.parametrize("budget_chunks", [0, 1, 3])
def test_a_full_shuffle_under_a_small_budget_reads_right_and_stays_within_it(compressed, budget_chunks):
    path, x = compressed
    chunk_bytes = CHUNK * x[0].nbytes
    reader = Reader(h5feed.open_file(path), cache_bytes=budget_chunks * chunk_bytes, decode_threads=2)
    order = _plan.epoch_order(N, shuffle=True, seed=1, epoch=0)
    batches = _epoch(reader, order, batch=64)
    np.testing.assert_array_equal(np.concatenate(batches), x[order])
    stats = reader._cache.stats()
    assert stats.peak_nbytes <= budget_chunks * chunk_bytes
    if budget_chunks == 0:  # nothing kept: each batch decodes each of its chunks once
        assert stats.decoded == sum(np.unique(order[i : i + 64] // CHUNK).size for i in range(0, N, 64))


def test_threads_sharing_a_reader_get_their_rows_and_share_each_decoding(compressed):
    path, x = compressed
    reader = Reader(h5feed.open_file(path), decode_threads=3)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                rows = rng.integers(0, N, 48)
                np.testing.assert_array_equal(reader.read("x", rows), x[rows])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert reader._cache.stats().decoded == N // CHUNK  # never twice, however many asked at once


def _damage(path, tmp_path, chunk):
    """A copy of ``path`` with a byte of chunk ``chunk`` of /x flipped."""
    copy = tmp_path / f"damaged-{os.path.basename(path)}"
    shutil.copyfile(path, copy)
    with h5py.File(copy) as f:
        info = f["x"].id.get_chunk_info(chunk)
    with open(copy, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    return copy


def test_a_failed_checksum_is_the_same_read_error_naming_the_rows(compressed, tmp_path):
    path, x = compressed
    copy = _damage(path, tmp_path, 6)
    layout = h5feed.open_file(copy)
    messages = []
    for reader in (Reader(layout), Reader(layout, decode_threads=0)):
        np.testing.assert_array_equal(reader.read("x", np.arange(0, 150)), x[:150])  # chunks 0-5 sound
        with pytest.raises(ReadError, match=r"rows 150\.\.174 \(chunk 6\) failed its Fletcher32 checksum") as info:
            reader.read("x", np.array([3, 160, 400]))
        messages.append(str(info.value))
        np.testing.assert_array_equal(reader.read("x", np.arange(175, 300)), x[175:300])  # the rest reads on
    assert messages[0] == messages[1]


def test_a_damaged_stream_without_checksums_is_a_read_error_naming_its_rows(tmp_path):
    ids, x, y = make_arrays(N)
    path = tmp_path / "gz.h5"
    h5feed.write_arrays(path, ids, x, y, n_classes=5, compression="gzip", chunk_rows=CHUNK)
    copy = _damage(path, tmp_path, 2)
    reader = Reader(h5feed.open_file(copy))
    rows = np.arange(50, 75)
    try:
        got = reader.read("x", rows)
    except ReadError as exc:
        assert "rows 50..74 (chunk 2)" in str(exc)
    else:  # a flipped byte deflate does not notice: HDF5 reads the same wrong bytes
        with h5py.File(copy) as f:
            np.testing.assert_array_equal(got, f["x"][50:75])


def test_a_file_cut_short_is_the_read_error_hdf5s_path_gives(compressed, tmp_path):
    path, _ = compressed
    with h5py.File(path) as f:
        last = f["x"].id.get_chunk_info(N // CHUNK - 1)
    cut = tmp_path / "cut.h5"
    shutil.copyfile(path, cut)
    layout = h5feed.open_file(cut)
    readers = [Reader(layout), Reader(layout, decode_threads=0)]
    for reader in readers:
        reader.read("x", np.array([0]))  # open, before the file is cut
    with open(cut, "r+b") as fh:
        fh.truncate(last.byte_offset + last.size // 2)
    messages = []
    for reader in readers:
        with pytest.raises(ReadError) as info:
            reader.read("x", np.array([N - 1]))
        messages.append(str(info.value))
    assert "rows 975..999" in messages[0] and messages[0] == messages[1]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_reader_used_in_the_parent_reads_in_child_processes(compressed, method):
    import multiprocessing as mp

    path, x = compressed
    reader = Reader(h5feed.open_file(path), cache_bytes=10_000, decode_threads=2)
    reader.read("x", np.arange(0, N, 10))  # threads started, chunks cached in the parent
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(_read_in_child, [(reader, k) for k in range(4)])
    for k, (pid, batch, options) in enumerate(results):
        assert pid != os.getpid() and options == (10_000, 2)
        np.testing.assert_array_equal(batch, x[k::7])


def _read_in_child(args):
    reader, k = args
    return os.getpid(), reader.read("x", np.arange(k, N, 7)), (reader.cache_bytes, reader.decode_threads)


def test_the_reader_pickles_with_its_options_and_without_its_cache(compressed):
    path, x = compressed
    reader = Reader(h5feed.open_file(path), cache_bytes=123_456, decode_threads=3)
    reader.read("x", np.arange(100))
    clone = pickle.loads(pickle.dumps(reader))
    assert (clone.cache_bytes, clone.decode_threads) == (123_456, 3)
    assert clone._cache.stats().decoded == 0
    np.testing.assert_array_equal(clone.read("x", np.arange(100)), x[:100])


@pytest.mark.parametrize(
    "options, error",
    [
        ({"cache_bytes": -1}, ValueError),
        ({"decode_threads": -1}, ValueError),
        ({"decode_threads": True}, ValueError),
        ({"cache_bytes": "1G"}, ValueError),
    ],
    ids=["negative-cache", "negative-threads", "bool-threads", "text-cache"],
)
def test_bad_options_are_refused(small_file, options, error):
    with pytest.raises(error, match=list(options)[0]):
        Reader(h5feed.open_file(small_file), **options)


def test_close_drops_the_cache_and_the_reader_reads_on(compressed):
    path, x = compressed
    reader = Reader(h5feed.open_file(path))
    reader.read("x", np.arange(N))
    assert reader._cache.stats().nbytes > 0
    reader.close()
    assert reader._cache.stats().nbytes == 0
    np.testing.assert_array_equal(reader.read("x", np.arange(10)), x[:10])


def test_a_merged_files_parts_share_one_cache(tmp_path):
    from h5feed.merge import merge_files

    parts = []
    for k in range(3):
        ids, x, y = make_arrays(300, seed=k)
        part = tmp_path / f"part{k}.h5"
        h5feed.write_arrays(part, [f"p{k}-{i}" for i in ids], x, y, n_classes=5, compression="zstd", chunk_rows=CHUNK)
        parts.append((part, x))
    merged = tmp_path / "all.h5"
    merge_files([p for p, _ in parts], merged)
    reader = PartsReader(h5feed.open_file(merged, allow_virtual=True), cache_bytes=1 << 20)
    caches = {id(r._cache) for r in (reader._base, *reader._parts.values())}
    assert len(caches) == 1
    everything = np.concatenate([x for _, x in parts])
    rows = np.random.default_rng(0).permutation(900)
    np.testing.assert_array_equal(reader.read("x", rows), everything[rows])


def test_a_cache_is_empty_in_a_forked_child():
    cache = ChunkCache(1 << 20, 2)
    state = cache._state()
    pid = os.fork()
    if pid == 0:  # the child: a fresh state, nothing of the parent's
        os._exit(0 if cache._state() is not state else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_decoding_threads_never_wait_for_the_caches_lock(compressed):
    """While a reader holds the cache's lock (gathering a batch), one
    decoding thread still decodes every chunk it was given, one after
    another; what they were is entered at the next read."""
    path, x = compressed
    reader = Reader(h5feed.open_file(path), decode_threads=1)
    reader.prefetch("x", np.arange(0, 8 * CHUNK))  # 8 chunks queued on 1 thread
    s = reader._cache._state()
    futures = [future for future, _ in s.loading.values()]
    assert len(futures) == 8
    with s.lock:
        for future in futures:
            future.result(timeout=30)  # a thread stuck on the lock would hold the rest back
        assert len(s.landed) == 8
    np.testing.assert_array_equal(reader.read("x", np.arange(0, 8 * CHUNK, 3)), x[0 : 8 * CHUNK : 3])
    assert not s.landed and not s.loading and reader._cache.stats().decoded == 8


@pytest.mark.parametrize("shuffle", ["block", True, False])
def test_a_sequence_decodes_ahead_and_still_decodes_each_chunk_once(compressed, shuffle):
    from h5feed import H5Sequence

    path, x = compressed
    seq = H5Sequence(path, batch_size=20, shuffle=shuffle, seed=4, block_rows=CHUNK, block_window=2)
    assert seq._decode_ahead  # the default budget holds the whole file
    first = seq[0]
    started = seq._reader._cache.stats().decoded
    assert started > np.unique(seq.batch_rows(0) // CHUNK).size  # the next batches' chunks too
    batches = [first[0]] + [seq[i][0] for i in range(1, len(seq))]
    np.testing.assert_array_equal(np.concatenate(batches), x[seq.epoch_rows()])
    assert seq._reader._cache.stats().decoded == N // CHUNK + 1  # and the labels' one chunk
    seq.close()


def test_no_decoding_ahead_where_the_cache_cannot_keep_it(compressed):
    from h5feed import H5Sequence

    path, x = compressed
    small = H5Sequence(path, shuffle=True, seed=1, cache_bytes=10 * CHUNK * x[0].nbytes)  # a quarter of the file
    assert not small._decode_ahead
    assert not H5Sequence(path, shuffle="block", seed=1, decode_threads=0)._decode_ahead
