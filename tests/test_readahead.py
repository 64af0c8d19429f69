"""Read-ahead while reading from disk: asks for the right rows, only when cold."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import _plan, _readahead
from h5feed._readahead import COLD_MIN_SECONDS, ReadAhead
from h5feed.reader import Reader

BIG = 64 << 10  # bytes per row: above the read-ahead's minimum
N_BATCHES = 10
ORDER = np.arange(4 * N_BATCHES)  # batch c is rows 4c .. 4c+3


class _Recorder:
    def __init__(self, answer: bool = True) -> None:
        self.calls: list[tuple[str, list[int]]] = []  # rows advised
        self.span_calls: list[tuple[str, list[int], list[int]]] = []  # spans advised
        self.answer = answer

    def advise(self, name: str, rows: np.ndarray | None = None, *, spans=None) -> bool:
        if spans is None:
            self.calls.append((name, rows.tolist()))
        else:
            self.span_calls.append((name, spans[0].tolist(), spans[1].tolist()))
        return self.answer


def _advised_batches(rec: _Recorder) -> list[int]:
    return [rows[0] // 4 for _, rows in rec.calls]


# (seconds, major faults) of reading a 4-row batch, where faults are not
# counted: judged by time.
FAST, SLOW = (1e-9, None), (10.0, None)


def test_warm_batches_advise_nothing():
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", BIG)], batch_size=4, depth=3)
    for k in range(N_BATCHES):
        ahead.batch_read(k, FAST, ORDER)
    assert rec.calls == [] and not ahead.active


@pytest.mark.parametrize("depth", [1, 3, 20])
@pytest.mark.parametrize("first_slow", [0, 4])
def test_a_slow_batch_keeps_the_next_batches_advised_each_once(depth, first_slow):
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", BIG), ("y", 8)], batch_size=4, depth=depth)
    for k in range(N_BATCHES):
        ahead.batch_read(k, SLOW if k == first_slow else FAST, ORDER)
        # Once cold, the `depth` batches after k have been asked for.
        if k >= first_slow:
            assert set(range(k + 1, min(N_BATCHES, k + 1 + depth))) <= set(_advised_batches(rec))
    batches = _advised_batches(rec)
    assert batches == list(range(first_slow + 1, N_BATCHES))  # in order, once, never past the end
    assert all(rows == ORDER[4 * c:4 * c + 4].tolist() for c, (_, rows) in zip(batches, rec.calls))
    assert {name for name, _ in rec.calls} == {"x"}  # small rows are advised as pieces:
    assert rec.span_calls == [("y", [0], [(128 << 10) // 8])]  # ... y's one, once


def test_a_new_epoch_starts_off_again():
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", BIG)], batch_size=4, depth=2)
    ahead.batch_read(0, SLOW, ORDER)
    assert ahead.active
    ahead.reset()
    rec.calls.clear()
    ahead.batch_read(0, FAST, ORDER)
    assert not ahead.active and rec.calls == []


def test_nothing_to_advise_disables_it():
    assert ReadAhead(_Recorder(), [("x", 784)], batch_size=4).enabled  # small rows: as pieces
    assert not ReadAhead(object(), [("x", BIG)], batch_size=4).enabled  # a reader without advise
    assert not ReadAhead(None, [("x", 784)], batch_size=4).enabled  # readahead=False
    rec = _Recorder(answer=False)  # not memory-mapped: the reader says so
    ahead = ReadAhead(rec, [("x", BIG)], batch_size=4, depth=2)
    ahead.batch_read(0, SLOW, ORDER)
    ahead.batch_read(1, SLOW, ORDER)
    assert len(rec.calls) == 1 and not ahead.enabled


def test_a_fast_batch_of_small_rows_is_not_cold():
    # 4 rows of 784 bytes in 100 us is far below 2 GiB/s, yet warm: a cold
    # batch waits milliseconds for the disk.
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", 784)], batch_size=4)
    ahead.batch_read(0, (COLD_MIN_SECONDS / 2, None), ORDER)
    assert not ahead.active and rec.span_calls == []
    ahead.batch_read(1, (10 * COLD_MIN_SECONDS, None), ORDER)
    assert ahead.active and rec.span_calls


def test_major_faults_decide_where_they_are_counted():
    # A slow batch without a major fault was not waiting for the disk (a
    # busy machine, pages new to this process); one with a fault was.
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", BIG)], batch_size=4)
    ahead.batch_read(0, (10.0, 0), ORDER)
    assert not ahead.active and rec.calls == []
    ahead.batch_read(1, (1e-9, 1), ORDER)
    assert ahead.active and _advised_batches(rec) == [2, 3, 4, 5]
    ahead.reset()
    ahead.ask_kernel = False  # time alone
    ahead.batch_read(0, (10.0, 0), ORDER)
    assert ahead.active


def test_a_slow_advised_batch_is_cold_without_a_major_fault():
    # Waiting for pages already advised (in flight) takes no major fault;
    # for those batches time decides.
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", BIG)], batch_size=4, depth=2)
    ahead.prime(ORDER)
    ahead.batch_read(0, (1e-9, 0), ORDER)  # advised, fast: warm
    assert not ahead.active
    ahead.batch_read(1, (10.0, 0), ORDER)  # advised, slow: the disk
    assert ahead.active and _advised_batches(rec) == [0, 1, 2, 3]


@pytest.mark.parametrize("cached", [True, False, None])
def test_priming_asks_whether_the_first_batch_is_cached(cached):
    class Probed(_Recorder):
        def cached(self, name, rows):
            self.probed = (name, rows.tolist())
            return cached

    rec = Probed()
    ahead = ReadAhead(rec, [("x", BIG)], batch_size=4, depth=2)
    ahead.prime(ORDER)
    assert rec.probed == ("x", ORDER[:4].tolist())
    # Cached: nothing to do. Not cached: on, from the first batch. Unknown:
    # the first batches advised, the reads then decide.
    assert ahead.active == (cached is False)
    assert _advised_batches(rec) == ([] if cached else [0, 1])


def test_reader_tells_whether_rows_are_cached(big_rows_file, any_layout_file):
    path = big_rows_file
    with open(path, "rb") as fh:
        fh.read()  # in the page cache now
    reader = Reader(h5feed.open_file(path))
    assert reader.cached("x", np.array([0, 39])) in (True, None)  # None: no RWF_NOWAIT here
    other = Reader(h5feed.open_file(any_layout_file))
    if other.layout.column("x").offset is None:  # chunked: cannot tell
        assert other.cached("x", np.array([0])) is None
    reader.close()
    other.close()


def test_a_worker_batch_counts_as_slow_only_with_most_of_the_last_few():
    # Timed in a busy worker, a warm batch is now and then slow.
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", BIG)], batch_size=4)
    for k in range(N_BATCHES):
        ahead.batch_read(k, SLOW if k % 2 else FAST, ORDER, by_worker=True)
    assert not ahead.active  # half slow
    ahead.reset()
    for k in range(5):
        ahead.batch_read(k, SLOW, ORDER, by_worker=True)
    assert ahead.active and _advised_batches(rec) == [5, 6, 7, 8]
    # Where faults are counted, a cold worker batch is slow and faulted: slow
    # without a fault is contention, a fault in a fast read a retried one
    # (two workers on one page); one stray cold-looking batch is not enough.
    ahead.reset()
    ahead.batch_read(0, (10.0, 1), ORDER, by_worker=True)
    for k in range(1, 5):
        ahead.batch_read(k, (10.0, 0), ORDER, by_worker=True)
    for k in range(5, 9):
        ahead.batch_read(k, (1e-9, 3), ORDER, by_worker=True)
    assert not ahead.active
    for k in range(9, 13):
        ahead.batch_read(k, (10.0, 3), ORDER, by_worker=True)
    assert not ahead.active  # 4 of the last 8
    ahead.batch_read(13, (10.0, 3), ORDER, by_worker=True)
    assert ahead.active  # 5 of the last 8


def test_reading_a_batch_reports_its_major_faults(small_rows_file):
    seq = h5feed.H5Sequence(small_rows_file, batch_size=4, readahead=False)
    reads = []
    seq._maker.make(seq._epoch_rows[:4], 0, on_read=reads.append)
    (seconds, faults), = reads
    assert seconds >= 0
    assert faults is None if _readahead.major_faults() is None else faults >= 0
    seq.close()


def test_priming_advises_the_first_batches_before_any_is_read():
    rec = _Recorder()
    ahead = ReadAhead(rec, [("x", BIG)], batch_size=4, depth=3)
    ahead.prime(ORDER)
    assert _advised_batches(rec) == [0, 1, 2] and not ahead.active
    ahead.batch_read(0, SLOW, ORDER)  # cold after all: on, without asking twice
    assert _advised_batches(rec) == [0, 1, 2, 3] and ahead.active
    ahead.prime(ORDER)  # once per epoch
    assert len(rec.calls) == 4


@pytest.mark.parametrize("read_ahead", [0, 128 << 10, 8 << 20])
@pytest.mark.parametrize("max_request", [64 << 10, 4 << 20])
def test_pieces_read_no_more_than_a_fault_or_a_request(read_ahead, max_request):
    piece = _readahead.piece_nbytes(read_ahead, max_request)
    assert piece == max(_readahead.MIN_PIECE_BYTES, min(read_ahead, max_request))
    assert piece <= max(_readahead.MIN_PIECE_BYTES, read_ahead)


def _first_need(order: np.ndarray, rows_per_piece: int) -> dict[int, int]:
    """piece -> the first position of `order` whose row lies in it."""
    need: dict[int, int] = {}
    for pos, row in enumerate(order.tolist()):
        need.setdefault(row // rows_per_piece, pos)
    return need


@pytest.mark.parametrize("kind", ["shuffle", "block", "sequential", "subset"])
@pytest.mark.parametrize("cache", ["cold", "cached", "unknown, slow at batch 7"])
@pytest.mark.parametrize("lead_bytes", [0, 1, 1 << 20, 1 << 40])  # 0: the next batches only
@pytest.mark.parametrize("depth", [1, 6])
def test_small_rows_are_advised_as_whole_pieces_each_once_before_they_are_needed(kind, cache, lead_bytes, depth):
    # 784-byte rows in pieces of 128 KiB: 167 rows a piece, 30 pieces.
    n, size, row_nbytes = 5000, 32, 784
    rng = np.random.default_rng(3)
    order = {
        "shuffle": rng.permutation(n),
        "block": _plan.block_permutation(n, block=64, window=8, seed=3, epoch=0),
        "sequential": np.arange(n),
        "subset": np.sort(rng.choice(n, 2000, replace=False))[rng.permutation(2000)],
    }[kind]
    per_piece = (128 << 10) // row_nbytes

    class Probed(_Recorder):
        def read_ahead_limits(self):
            return 128 << 10, 128 << 10

        def cached(self, name, rows):
            return {"cold": False, "cached": True}.get(cache)

    rec = Probed()
    ahead = ReadAhead(rec, [("x", row_nbytes)], batch_size=size, depth=depth, lead_bytes=lead_bytes)
    need = _first_need(order, per_piece)
    pieces: list[int] = []
    for k in range(-(-order.size // size)):
        if k == 0:
            ahead.prime(order)
        advised = [(s, e) for _, starts, stops in rec.span_calls for s, e in zip(starts, stops)]
        pieces = [p for s, e in advised for p in range(s // per_piece, -(-e // per_piece))]
        # Whole pieces, each once, only pieces the epoch needs.
        assert all(s % per_piece == 0 and e % per_piece == 0 for s, e in advised)
        assert len(pieces) == len(set(pieces)) and set(pieces) <= set(need)
        # Beyond the next `depth` batches, about `lead_bytes` more (one
        # batch's pieces over) at most.
        cover = min(order.size, (k + depth) * size)
        beyond = sum(1 for p in pieces if need[p] >= cover) * per_piece * row_nbytes
        assert beyond < lead_bytes + size * per_piece * row_nbytes
        if cache == "cached":
            assert not ahead.enabled and pieces == []  # cached at the start: not watched
            continue
        # Watched until every piece the epoch needs is advised, no longer.
        assert ahead.enabled == (set(pieces) != set(need))
        if ahead.active:
            # Every piece the next `depth` batches need (from batch k on) is in flight.
            assert {p for p, pos in need.items() if k * size <= pos < cover} <= set(pieces)
        if ahead.enabled:
            assert ahead.active == (cache == "cold" or k > 7)
        ahead.batch_read(k, SLOW if k == 7 else FAST, order)
    if cache != "cached":
        assert sorted(pieces) == sorted(need)  # the whole epoch's pieces, in the end


def test_an_epoch_of_small_rows_that_starts_cached_is_not_watched():
    class Cached(_Recorder):
        def cached(self, name, rows):
            return True

    ahead = ReadAhead(Cached(), [("x", 784), ("y", 8)], batch_size=4)
    ahead.prime(ORDER)
    assert not ahead.enabled  # warm batches of small rows pay nothing
    ahead.reset()
    assert ahead.enabled  # each epoch is asked again
    both = ReadAhead(Cached(), [("x", BIG), ("y", 8)], batch_size=4)
    both.prime(ORDER)
    assert both.enabled  # large rows are watched batch by batch


def _rows_file(path, n, row_shape):
    x = np.random.default_rng(0).standard_normal((n, *row_shape)).astype(np.float32)
    x.reshape(n, -1)[:, 0] = np.arange(n)
    h5feed.write_arrays(path, [f"s{i}" for i in range(n)], x, np.arange(n) % 3, n_classes=3)
    return path


@pytest.fixture
def big_rows_file(tmp_path):
    """Rows of 64 KiB, contiguous: the memory-mapped path read-ahead serves."""
    return _rows_file(tmp_path / "big.h5", 40, (16, 32, 32))


@pytest.fixture
def small_rows_file(tmp_path):
    """Rows of 1 KiB: read ahead as the pieces that hold them."""
    return _rows_file(tmp_path / "small.h5", 700, (16, 16))


def test_reader_advises_mapped_rows_only(big_rows_file, any_layout_file):
    reader = Reader(h5feed.open_file(big_rows_file))
    assert reader.advise("x", np.array([1, 2]))  # maps the column if nothing read yet
    assert reader.advise("x", np.array([39, 3, 4, 5]))
    assert reader.advise("x", spans=(np.array([0, 30]), np.array([10, 10**6])))  # clipped to the column
    with h5py.File(big_rows_file, "r") as f:
        np.testing.assert_array_equal(reader.read("x", np.array([39, 3])), f["x"][[3, 39]][::-1])
    other = Reader(h5feed.open_file(any_layout_file))
    assert other.advise("x", np.array([1])) == bool(other._maps)  # chunked data: no
    reader.close()
    other.close()


def test_read_ahead_limits_come_from_the_device_or_the_kernel_default(big_rows_file):
    read_ahead, max_request = Reader(h5feed.open_file(big_rows_file)).read_ahead_limits()
    assert read_ahead >= 0 and max_request >= 0 and max(read_ahead, max_request) > 0


@pytest.mark.parametrize("rows", ["big", "small"])
@pytest.mark.parametrize("shuffle", [True, "block"])
def test_read_ahead_changes_no_batch(request, monkeypatch, rows, shuffle):
    path = request.getfixturevalue(f"{rows}_rows_file")
    # The kernel's default read-around, whatever this machine's disk says.
    monkeypatch.setattr(h5feed.reader, "_read_ahead_limits", lambda path: (128 << 10, 128 << 10))
    plain = h5feed.H5Sequence(path, batch_size=4, seed=5, shuffle=shuffle, readahead=False)
    ahead = h5feed.H5Sequence(path, batch_size=4, seed=5, shuffle=shuffle)
    assert ahead._ahead.enabled
    assert not plain._ahead.enabled
    ahead._ahead.ask_kernel = False
    ahead._ahead.cold_bytes_per_s = float("inf")  # every batch counts as cold...
    ahead._ahead.cold_min_seconds = 0.0  # ...however fast
    advised = []
    advise = Reader.advise
    monkeypatch.setattr(Reader, "advise", lambda self, *a, **k: advised.append(a) or advise(self, *a, **k))
    for epoch in range(2):
        advised.clear()
        for i in range(len(plain)):
            a, b = ahead[i], plain[i]
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
        assert advised  # read ahead, in each epoch
        ahead.on_epoch_end()
        plain.on_epoch_end()
        assert not ahead._ahead.active  # each epoch starts off


def test_read_ahead_asks_the_kernel_for_every_byte_of_the_next_batches(big_rows_file, monkeypatch):
    # The advice must reach the kernel: recorded at madvise itself, below
    # Reader.advise, so that an advise() that stopped calling it fails here.
    import mmap

    if not hasattr(mmap, "MADV_WILLNEED"):
        pytest.skip("no madvise here")
    calls: list[tuple[int, int]] = []

    class Recording(mmap.mmap):
        def madvise(self, option, start=0, length=None):
            if option == mmap.MADV_WILLNEED:
                calls.append((start, start + (len(self) - start if length is None else length)))
            return super().madvise(option, start, len(self) - start if length is None else length)

    monkeypatch.setattr(mmap, "mmap", Recording)
    seq = h5feed.H5Sequence(big_rows_file, batch_size=4, seed=5)
    seq._ahead.ask_kernel = False
    seq._ahead.cold_bytes_per_s = float("inf")  # every batch counts as cold...
    seq._ahead.cold_min_seconds = 0.0  # ...however fast
    seq[0]
    reader = seq._maker.reader
    _, first_byte = reader._map_at["x"]
    row_nbytes = reader.layout.column("x").row_nbytes
    advised = np.zeros(first_byte + 40 * row_nbytes, dtype=bool)
    for start, stop in calls:
        advised[start:stop] = True
    for k in range(1, 1 + seq._ahead.depth):  # the batches after the one read
        for row in seq._epoch_rows[4 * k : 4 * k + 4].tolist():
            lo = first_byte + row * row_nbytes
            assert advised[lo : lo + row_nbytes].all(), (k, row, calls)
    seq.close()


def test_readahead_must_be_a_bool(small_file):
    with pytest.raises(TypeError, match="readahead must be a bool"):
        h5feed.H5Sequence(small_file, readahead="yes")


def test_a_file_truncated_after_open_fails_in_the_read_with_its_batch_named(big_rows_file):
    # Read-ahead is advice: when the data cannot be mapped, the read itself
    # raises, with the batch and its sample IDs in the message.
    seq = h5feed.H5Sequence(big_rows_file, batch_size=4, seed=5)
    assert seq._ahead.enabled
    size = big_rows_file.stat().st_size
    with open(big_rows_file, "r+b") as fh:
        fh.truncate(size - 200_000)
    with pytest.raises(h5feed.errors.ReadError, match=r"truncated.*batch 0 of .*sample IDs"):
        seq[0]
    seq.close()


@pytest.mark.parametrize("workers", [
    {"workers": 2},  # h5feed's threads
    pytest.param({"workers": 2, "use_multiprocessing": True}, marks=pytest.mark.slow),  # its processes
])
def test_with_workers_this_process_reads_ahead_for_them(big_rows_file, workers):
    # The page cache is shared: advice given here serves the workers' reads.
    # It must reach past the batches they already make, and change no batch.
    plain = h5feed.H5Sequence(big_rows_file, batch_size=4, seed=5, readahead=False)
    seq = h5feed.H5Sequence(big_rows_file, batch_size=4, seed=5, **workers)
    seq._ahead.ask_kernel = False
    seq._ahead.cold_bytes_per_s = float("inf")  # every batch counts as cold...
    seq._ahead.cold_min_seconds = 0.0  # ...however fast
    advised = []
    advise = seq._maker.reader.advise

    def advise_rows(name, rows=None, *, spans=None):
        if spans is None:  # large rows (y's one piece is advised as spans)
            advised.append(rows.tolist())
        return advise(name, rows, spans=spans)

    seq._maker.reader.advise = advise_rows
    try:
        for _ in range(2):
            for i in range(len(seq)):
                a, b = seq[i], plain[i]
                np.testing.assert_array_equal(a[0], b[0])
                np.testing.assert_array_equal(a[1], b[1])
            assert seq._ahead.active and seq._ahead.depth > 4
            # Every batch was advised, here, once, in epoch order (the first
            # before it was read).
            assert advised == [seq._epoch_rows[4 * c:4 * c + 4].tolist() for c in range(len(seq))]
            advised.clear()
            seq.on_epoch_end()
            plain.on_epoch_end()
    finally:
        seq.close()
        plain.close()


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not hasattr(os, "RWF_NOWAIT"), reason="Linux only")
@pytest.mark.parametrize("kind", ["one file", "merged parts"])
def test_a_cold_first_batch_turns_read_ahead_on_before_it_is_read(request, kind):
    from h5feed.benchmarks.bench import evict

    if kind == "one file":
        path = request.getfixturevalue("big_rows_file")
        files, options = [path], {}
    else:  # a merged file's rows lie in its parts
        path, files = request.getfixturevalue("merged_big_rows")
        options = {"allow_virtual": True}
    for file in files:
        evict(str(file))
    seq = h5feed.H5Sequence(path, batch_size=4, seed=5, **options)
    cold = seq._maker.reader.cached("x", seq._epoch_rows[:4])
    if cold is not False:
        seq.close()
        pytest.skip("the page cache cannot be emptied here (a tmpfs, say)")
    seq[0]
    assert seq._ahead.active and seq._ahead._advised_to == 1 + 4  # batch 0 and the 4 after it
    seq.close()


# -- merged files: read-ahead through the parts ---------------------------------

PART_ROWS = (13, 14, 13)  # parts of a merged file: rows [0, 13), [13, 27), [27, 40)


def _merged_file(folder, row_shape):
    """A virtual merge of three parts; x's first value is the merged row."""
    from h5feed.merge import merge_files

    folder.mkdir()
    parts, start = [], 0
    for k, n in enumerate(PART_ROWS):
        x = np.random.default_rng(k).standard_normal((n, *row_shape)).astype(np.float32)
        x.reshape(n, -1)[:, 0] = np.arange(start, start + n)
        path = folder / f"part-{k}.h5"
        h5feed.write_arrays(path, [f"p{k}-{i}" for i in range(n)], x, np.arange(n) % 3, n_classes=3)
        parts.append(path)
        start += n
    return merge_files(parts, folder / "merged.h5"), [str(p) for p in parts]


@pytest.fixture
def merged_big_rows(tmp_path):
    return _merged_file(tmp_path / "big", (16, 32, 32))


@pytest.fixture
def merged_small_rows(tmp_path):
    return _merged_file(tmp_path / "small", (16, 16))


def _part_of(row):
    bounds = np.cumsum((0, *PART_ROWS))
    k = int(np.searchsorted(bounds, row, side="right")) - 1
    return k, row - int(bounds[k])


def test_parts_reader_splits_advice_and_cache_probes_at_the_parts_bounds(merged_big_rows):
    from h5feed._parts import PartsReader

    merged, parts = merged_big_rows
    reader = PartsReader(h5feed.open_file(merged, allow_virtual=True))
    calls, answers = [], {}
    for k, path in enumerate(parts):
        part = reader._parts[path]
        part.advise = lambda name, rows=None, *, spans=None, k=k: calls.append(
            (k, name, None if rows is None else rows.tolist(), None if spans is None else [s.tolist() for s in spans])
        ) or answers.get(k, True)
        part.cached = lambda name, rows, k=k: answers.get(k, True)
    assert reader.advise("x", np.array([12, 13, 39, 0]))
    assert calls == [(0, "x", [12, 0], None), (1, "x", [0], None), (2, "x", [12], None)]
    calls.clear()
    assert reader.advise("x", spans=(np.array([10, 30]), np.array([20, 40])))
    assert calls == [(0, "x", None, [[10], [13]]), (1, "x", None, [[0], [7]]), (2, "x", None, [[3], [13]])]
    # Cache probes: False if any part's rows are not cached, None if one cannot tell.
    answers.update({0: True, 1: None, 2: False})
    assert reader.cached("x", np.array([0, 13])) is None
    assert reader.cached("x", np.array([0, 13, 30])) is False
    assert reader.cached("x", np.array([0, 1])) is True
    # A part that cannot be advised is not asked again; once none can, advise says so.
    answers.update({0: False, 1: False, 2: False})
    calls.clear()
    assert reader.advise("x", np.array([0, 20]))  # part 2 not known yet
    assert not reader.advise("x", np.array([0, 20, 30]))
    assert [k for k, *_ in calls] == [0, 1, 2]
    limits = [r.read_ahead_limits() for r in (reader._base, *reader._parts.values())]
    assert reader.read_ahead_limits() == (min(a for a, _ in limits), min(b for _, b in limits))
    reader.close()


@pytest.mark.parametrize("rows", ["big", "small"])
def test_a_cold_merged_file_advises_its_parts_rows(request, monkeypatch, rows):
    merged, parts = request.getfixturevalue(f"merged_{rows}_rows")
    monkeypatch.setattr(h5feed.reader, "_read_ahead_limits", lambda path: (128 << 10, 128 << 10))
    plain = h5feed.H5Sequence(merged, batch_size=4, seed=5, allow_virtual=True, readahead=False)
    seq = h5feed.H5Sequence(merged, batch_size=4, seed=5, allow_virtual=True)
    assert seq._ahead.enabled
    seq._ahead.ask_kernel = False
    seq._ahead.cold_bytes_per_s = float("inf")  # every batch counts as cold...
    seq._ahead.cold_min_seconds = 0.0  # ...however fast
    advised: list[tuple[str, str, list[int]]] = []  # (file, column, its rows)
    advise = Reader.advise

    def record(self, name, rows=None, *, spans=None):
        local = rows.tolist() if spans is None else [r for a, b in zip(*spans) for r in range(a, b)]
        advised.append((self.layout.path, name, local))
        return advise(self, name, rows, spans=spans)

    monkeypatch.setattr(Reader, "advise", record)
    for i in range(len(seq)):
        a, b = seq[i], plain[i]
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # Only the parts are advised (the merged file holds no rows of x), and
    # between them, every row of x the epoch read.
    assert {path for path, _, _ in advised} == set(parts)
    got = {parts.index(path) * 1000 + row for path, name, local in advised if name == "x" for row in local}
    want = {1000 * k + r for k, r in map(_part_of, seq.epoch_rows().tolist())}
    assert want <= got if rows == "small" else want == got  # small rows: whole pieces
    seq.close()
    plain.close()

