"""The writer's helper threads: blocks hashed beside the write (NOTE [ Hashing
beside writing ]) must give the digest of the data as read back, whatever mix
of append and extend filled the two buffers; the early writeback (NOTE
[ Early writeback ]) syncs as it goes, and its failure fails the write."""

from __future__ import annotations

import errno
import os
import threading
import time

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import _record
from h5feed.inspection import verify

from readback import read_back


@pytest.mark.parametrize("chunked", [False, True], ids=["contiguous", "chunked"])
@pytest.mark.parametrize("seed", [0, 1])
def test_digests_match_the_data_read_back(tmp_path, monkeypatch, chunked, seed):
    real_hash_rows = _record.hash_rows

    def slow_hash_rows(hasher, block):  # a slow hasher exposes any buffer reuse race
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.01)
        real_hash_rows(hasher, block)

    monkeypatch.setattr(_record, "hash_rows", slow_hash_rows)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 90))
    x = rng.standard_normal((n, 128, 256)).astype(np.float32)  # 128 KiB rows: threaded hashing
    y = rng.integers(0, 4, n)
    path = tmp_path / "big.h5"
    options = {"chunk_rows": 5} if chunked else {"expected_rows": n}
    with h5feed.DatasetWriter(path, sample_shape=x.shape[1:], dtype=x.dtype, n_classes=4, **options) as w:
        pos = 0
        while pos < n:  # random mix of single appends and extends of any size
            if rng.random() < 0.4:
                w.append(f"id-{pos}", x[pos], y[pos])
                pos += 1
            else:
                k = int(min(n - pos, rng.integers(1, 70)))
                w.extend([f"id-{i}" for i in range(pos, pos + k)], x[pos : pos + k], y[pos : pos + k])
                pos += k
    back = read_back(path)
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["y"], y)
    assert back["ids"] == [f"id-{i}" for i in range(n)]
    with h5py.File(path) as f:
        recorded = h5feed.open_file(path).completion["sha256"]
        assert recorded["x"] == _record.dataset_sha256(f["x"])
        assert recorded["y"] == _record.dataset_sha256(f["y"])
    assert verify(path).sound


@pytest.mark.parametrize("tail", [1, 10, 60])
def test_a_small_last_block_is_hashed_after_the_big_one_before_it(tmp_path, monkeypatch, tail):
    # A block too small for the helper thread is hashed here, in the main
    # thread: only once the helper has hashed the blocks before it.
    real_hash_rows = _record.hash_rows

    def slow_hash_rows(hasher, block):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.2)
        real_hash_rows(hasher, block)

    monkeypatch.setattr(_record, "hash_rows", slow_hash_rows)
    n = 1024 + tail  # 4 KiB rows: one 4 MiB block for the helper, then `tail` rows
    x = np.random.default_rng(tail).standard_normal((n, 1024)).astype(np.float32)
    path = tmp_path / "tail.h5"
    with h5feed.DatasetWriter(path, sample_shape=(1024,), dtype=x.dtype, target_dtype=None, expected_rows=n) as w:
        w.extend([f"id-{i}" for i in range(n)], x)
    assert verify(path).sound


def _write_big(path, rows, **options):
    x = np.ones((8, 1024, 512), np.float32)  # 2 MiB rows, written 8 at a time
    with h5feed.DatasetWriter(path, sample_shape=x.shape[1:], dtype=x.dtype, target_dtype=None, **options) as w:
        for start in range(0, rows, 8):
            w.extend([f"r{i}" for i in range(start, start + 8)], x)


def test_early_writeback_syncs_while_writing(tmp_path, monkeypatch):
    import h5feed.writer as W

    synced = []
    real = W._sync_file
    monkeypatch.setattr(W, "_sync_file", lambda path: (synced.append(path), real(path)))
    monkeypatch.setattr(W, "_WRITEBACK_BYTES", 8 * 1024 * 1024)
    _write_big(tmp_path / "big.h5", rows=24)
    assert synced and all(p.endswith(".h5feed-tmp") for p in synced)
    back = read_back(tmp_path / "big.h5")  # verify finds it sound, too
    assert back["ids"] == [f"r{i}" for i in range(24)]
    assert back["x"].shape == (24, 1024, 512) and (back["x"] == 1).all()


def test_a_failed_writeback_fails_the_write_and_leaves_nothing(tmp_path, monkeypatch):
    import h5feed.writer as W

    def broken(path):
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(W, "_sync_file", broken)
    monkeypatch.setattr(W, "_WRITEBACK_BYTES", 8 * 1024 * 1024)
    with pytest.raises(h5feed.errors.WriterError, match="Input/output error"):
        _write_big(tmp_path / "big.h5", rows=24)
    assert os.listdir(tmp_path) == []
