"""Read-ahead while reading from disk: asks for the right rows, only when cold."""

from __future__ import annotations

import numpy as np
import pytest

import h5feed
from h5feed._readahead import ReadAhead
from h5feed.reader import Reader

BIG = 64 << 10  # bytes per row: above the read-ahead's minimum
N_BATCHES = 10


def _rows_of(c: int) -> np.ndarray:
    return np.arange(4 * c, 4 * c + 4)


class _Recorder:
    def __init__(self, answer: bool = True) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.answer = answer

    def advise(self, name: str, rows: np.ndarray) -> bool:
        self.calls.append((name, rows.tolist()))
        return self.answer


def _advised_batches(rec: _Recorder) -> list[int]:
    return [rows[0] // 4 for _, rows in rec.calls]


FAST, SLOW = 1e-9, 10.0  # seconds for a 4-row batch: warm and cold


def test_warm_batches_advise_nothing():
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", BIG)], depth=3)
    for k in range(N_BATCHES):
        ahead.batch_read(k, 4, FAST, _rows_of, N_BATCHES)
    assert rec.calls == [] and not ahead.active


@pytest.mark.parametrize("depth", [1, 3, 20])
@pytest.mark.parametrize("first_slow", [0, 4])
def test_a_slow_batch_keeps_the_next_batches_advised_each_once(depth, first_slow):
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", BIG), ("y", 8)], depth=depth)
    for k in range(N_BATCHES):
        ahead.batch_read(k, 4, SLOW if k == first_slow else FAST, _rows_of, N_BATCHES)
        # Once cold, the `depth` batches after k have been asked for.
        if k >= first_slow:
            assert set(range(k + 1, min(N_BATCHES, k + 1 + depth))) <= set(_advised_batches(rec))
    batches = _advised_batches(rec)
    assert batches == list(range(first_slow + 1, N_BATCHES))  # in order, once, never past the end
    assert {name for name, _ in rec.calls} == {"x"}  # small rows are never advised


def test_a_new_epoch_starts_off_again():
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", BIG)], depth=2)
    ahead.batch_read(0, 4, SLOW, _rows_of, N_BATCHES)
    assert ahead.active
    ahead.reset()
    rec.calls.clear()
    ahead.batch_read(0, 4, FAST, _rows_of, N_BATCHES)
    assert not ahead.active and rec.calls == []


def test_nothing_to_advise_disables_it():
    assert not ReadAhead(_Recorder(), [("x", 784)]).enabled  # small rows
    assert not ReadAhead(object(), [("x", BIG)]).enabled  # a reader without advise
    rec = _Recorder(answer=False)  # not memory-mapped: the reader says so
    ahead = ReadAhead(rec, [("x", BIG)], depth=2)
    ahead.batch_read(0, 4, SLOW, _rows_of, N_BATCHES)
    ahead.batch_read(1, 4, SLOW, _rows_of, N_BATCHES)
    assert len(rec.calls) == 1 and not ahead.enabled


@pytest.fixture
def big_rows_file(tmp_path):
    """Rows of 64 KiB, contiguous: the memory-mapped path read-ahead serves."""
    n = 40
    x = np.random.default_rng(0).standard_normal((n, 16, 32, 32)).astype(np.float32)
    x.reshape(n, -1)[:, 0] = np.arange(n)
    path = tmp_path / "big.h5"
    h5feed.write_arrays(path, [f"s{i}" for i in range(n)], x, np.arange(n) % 3, n_classes=3)
    return path


def test_reader_advises_mapped_rows_only(big_rows_file, any_layout_file):
    reader = Reader(h5feed.open_file(big_rows_file))
    assert not reader.advise("x", np.array([1, 2]))  # nothing mapped yet in this process
    reader.read("x", np.array([0]))
    assert reader.advise("x", np.array([39, 3, 4, 5]))
    other = Reader(h5feed.open_file(any_layout_file))
    other.read("x", np.array([0]))
    assert other.advise("x", np.array([1])) == bool(other._maps)  # chunked data: no
    reader.close()
    other.close()


@pytest.mark.parametrize("shuffle", [True, "block"])
def test_read_ahead_changes_no_batch(big_rows_file, shuffle):
    plain = h5feed.H5Sequence(big_rows_file, batch_size=4, seed=5, shuffle=shuffle, readahead=False)
    ahead = h5feed.H5Sequence(big_rows_file, batch_size=4, seed=5, shuffle=shuffle)
    ahead._ahead.cold_bytes_per_s = float("inf")  # every batch counts as cold
    for epoch in range(2):
        for i in range(len(plain)):
            a, b = ahead[i], plain[i]
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
        assert ahead._ahead.active
        ahead.on_epoch_end()
        plain.on_epoch_end()
        assert not ahead._ahead.active  # each epoch starts off


def test_readahead_must_be_a_bool(small_file):
    with pytest.raises(TypeError, match="readahead must be a bool"):
        h5feed.H5Sequence(small_file, readahead="yes")
