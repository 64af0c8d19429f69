"""h5feed's own worker processes: same batches, shared memory, no leaks, clear failures."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from h5feed import H5Sequence
from h5feed._proc import pid_alive as _alive
from h5feed._workers import SHM_PREFIX, BatchPool
from h5feed.errors import WorkerError

pytestmark = pytest.mark.slow

METHODS = ["fork", "spawn", "forkserver"]


def _segments() -> set[str]:
    """h5feed's shared-memory segments made by this process."""
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()
    return {n for n in names if n.startswith(f"{SHM_PREFIX}{os.getpid()}_")}


class Boom(Exception):
    """A user's exception type, raised by a transform."""


def boom_on_row_45(X, Y):
    if (X.reshape(len(X), -1)[:, 0] == 45).any():
        raise Boom("row 45 is cursed")
    return X, Y


def inflate(X, Y):
    """Makes a batch far bigger than its slot (float32 -> float64, 64 times the rows)."""
    return np.repeat(X, 64, axis=0).astype(np.float64), np.repeat(Y, 64, axis=0)


def scale(X, Y):
    return X * 2, Y


@pytest.fixture(params=METHODS)
def method(request):
    return mp.get_context(request.param)


def _rows_of(batch) -> list[int]:
    return batch[0].reshape(len(batch[0]), -1)[:, 0].astype(int).tolist()


def _with_context(seq: H5Sequence, ctx) -> H5Sequence:
    """Start this sequence's workers with ``ctx`` (not the global start method)."""
    seq._mp_context = ctx
    return seq


def test_shuffled_epoch_in_any_request_order_sees_every_row_once(small_file, method):
    seq = _with_context(H5Sequence(small_file, "train", batch_size=8, seed=3, workers=2, use_multiprocessing=True), method)
    assert (seq.workers, seq.use_multiprocessing, seq.process_workers) == (1, False, 2)
    pids = None
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(len(seq))
        got = {}
        for i in order.tolist():
            got[i] = seq[i]
            # What seq[i] returned is what batch_rows(i) says, and asking
            # again gives the same batch.
            assert _rows_of(got[i]) == seq.batch_rows(i).tolist()
        assert seq._pool is not None and len(seq._pool.pids) == 2
        again = int(order[len(order) // 2])
        np.testing.assert_array_equal(seq[again][0], got[again][0])
        rows = sorted(r for b in got.values() for r in _rows_of(b))
        assert rows == list(range(70))
        seq.on_epoch_end()
        # The same processes serve the next epoch; no segment is visible.
        assert seq._pool.pids == (pids or seq._pool.pids) and not _segments()
        pids = seq._pool.pids
    seq.close()
    assert not any(_alive(p) for p in pids)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize("served", [0, 3, 8])
def test_an_epoch_ended_with_batches_in_flight_drops_them(small_file, start_method, served):
    # The workers are ahead of the epoch when it ends; the next epoch's
    # batches have the same numbers. Each must be the new epoch's.
    seq = _with_context(
        H5Sequence(small_file, "train", batch_size=8, seed=3, workers=2, use_multiprocessing=True, max_queue_size=6),
        mp.get_context(start_method),
    )
    for i in range(served):
        seq[i]
    for epoch in range(1, 3):
        seq.on_epoch_end()
        got = [_rows_of(seq[i]) for i in range(len(seq))]
        assert got == [seq.batch_rows(i).tolist() for i in range(len(seq))]
        assert sorted(r for rows in got for r in rows) == list(range(70))
    seq.close()
    assert not _segments()


def test_a_restarted_pool_never_serves_a_batch_of_the_old_order(small_file):
    seq = H5Sequence(small_file, "train", batch_size=8, shuffle=False)
    maker = seq._maker

    def old(k):
        return np.arange(8 * k, 8 * k + 8)

    def new(k):
        return np.arange(8 * k, 8 * k + 8)[::-1] + 1

    pool = BatchPool(maker, workers=2, slots=6, slot_bytes=maker.batch_nbytes(8) + 4096,
                     context=mp.get_context("fork"))
    try:
        assert pool.get(0, 8, old, 0) is None  # the first request starts the stream
        assert _rows_of(pool.get(1, 8, old, 1)) == old(1).tolist()  # 2..7 now in flight
        pool.restart()
        # Batch 3 of the old order is in flight: not served for the new one
        # (the caller reads it); the pool follows the new order from there.
        assert pool.get(3, 8, new, 3) is None
        for k in (4, 5, 6, 7):
            assert _rows_of(pool.get(k, 8, new, k)) == new(k).tolist()
    finally:
        pool.close()
        seq.close()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_batches_held_by_the_caller_are_never_overwritten(small_file, start_method):
    # Batches are lent as views of their shared-memory slot; a slot is used
    # again only once its batch is gone. Holding every batch of two epochs
    # (far more than there are slots) must leave each one intact.
    plain = H5Sequence(small_file, "train", batch_size=4, seed=9, transform=scale)
    seq = _with_context(
        H5Sequence(small_file, "train", batch_size=4, seed=9, transform=scale, workers=2, use_multiprocessing=True),
        mp.get_context(start_method),
    )
    held, want = [], []
    for _ in range(2):
        for i in range(len(seq)):
            held.append(seq[i])
            want.append(plain[i])
        pool = seq._pool
        assert 0 < len(pool._lent) <= pool.n_slots // 2  # some lent, never more than half
        seq.on_epoch_end()
        plain.on_epoch_end()
    for (X, Y), (Xp, Yp) in zip(held, want):
        np.testing.assert_array_equal(X, Xp)
        np.testing.assert_array_equal(Y, Yp)
    lent_before = len(pool._lent)
    del held, X, Y
    gc.collect()
    for i in range(len(seq)):
        seq[i]
    assert len(pool._lent) < lent_before  # dropped batches gave their slots back
    seq.close()


def test_a_lent_batch_outlives_the_pool_intact(small_file):
    seq = _with_context(
        H5Sequence(small_file, "train", batch_size=4, shuffle=False, workers=2, use_multiprocessing=True),
        mp.get_context("fork"),
    )
    seq[0], seq[1], seq[2]  # in-process; the pool starts
    X, Y = seq[3]  # made by a worker, lent
    assert seq._pool._lent
    expected = H5Sequence(small_file, "train", batch_size=4, shuffle=False)[3]
    seq.close()
    assert not _segments()
    np.testing.assert_array_equal(X, expected[0])
    X[...] = 7  # still its own memory, writable
    assert (X == 7).all()
    del X, Y
    gc.collect()


def test_worker_batches_equal_in_process_batches_unshuffled(any_layout_file):
    ctx = mp.get_context("fork")
    plain = H5Sequence(any_layout_file, "train", batch_size=6, shuffle=False, transform=scale)
    seq = _with_context(
        H5Sequence(any_layout_file, "train", batch_size=6, shuffle=False, transform=scale,
                   workers=2, use_multiprocessing=True),
        ctx,
    )
    order = list(range(len(seq))) + [3, 4, 5, 0, 1]  # in order, then a jump back
    for i in order:
        X, Y = seq[i]
        Xp, Yp = plain[i]
        assert X.dtype == Xp.dtype and Y.dtype == Yp.dtype
        np.testing.assert_array_equal(X, Xp)
        np.testing.assert_array_equal(Y, Yp)
    seq.close()
    assert not _segments()


def test_batches_bigger_than_a_slot_come_back_and_resize_the_next_pool(small_file):
    seq = _with_context(
        H5Sequence(small_file, "train", batch_size=8, shuffle=False, transform=inflate,
                   workers=2, use_multiprocessing=True),
        mp.get_context("fork"),
    )
    for i in range(len(seq)):
        X, Y = seq[i]
        assert X.dtype == np.float64 and len(X) == 64 * len(seq.batch_rows(i))
    needed = seq._pool.max_needed
    assert needed > seq._pool.slot_bytes
    seq.on_epoch_end()
    seq[0], seq[1], seq[2]
    assert seq._pool.slot_bytes >= needed
    seq.close()


def test_worker_exception_keeps_its_type_names_worker_and_ids(small_file, method):
    seq = _with_context(
        H5Sequence(small_file, "train", batch_size=8, shuffle=False, transform=boom_on_row_45,
                   workers=2, use_multiprocessing=True),
        method,
    )
    with pytest.raises(Boom) as info:
        for i in range(len(seq)):
            seq[i]
    text = str(info.value)
    assert "row 45 is cursed" in text and "id-45" in text and "batch 5" in text
    assert "h5feed worker" in text
    assert "Traceback" in str(info.value.__cause__)
    assert seq._pool is None and not _segments()  # the failed pool closed itself
    seq.close()


def test_killed_worker_raises_worker_error_instead_of_hanging(small_file, method):
    seq = _with_context(
        H5Sequence(small_file, "train", batch_size=4, shuffle=False, workers=2, use_multiprocessing=True),
        method,
    )
    seq[0], seq[1], seq[2]
    pids = list(seq._pool.pids)
    os.kill(pids[0], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker 0 \(pid \d+\) reading .*small.h5 was killed by SIGKILL"):
        for i in range(3, len(seq)):
            seq[i]
    assert time.monotonic() - start < 30
    assert not _segments() and not any(_alive(p) for p in pids)
    # The sequence recovers: a new pool next time.
    seq.on_epoch_end()
    assert len(seq[0][0]) == 4
    seq.close()


def test_a_worker_killed_between_epochs_is_reported_and_replaced(small_file, method):
    seq = _with_context(
        H5Sequence(small_file, "train", batch_size=4, seed=2, workers=2, use_multiprocessing=True),
        method,
    )
    seq[0], seq[1], seq[2]  # the pool starts; later batches in flight
    pids = list(seq._pool.pids)
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker 1 \(pid \d+\) reading .*small.h5 was killed by SIGKILL"):
        seq.on_epoch_end()  # waits for the batches in flight...
        for i in range(len(seq)):  # ... or the next epoch finds it dead
            seq[i]
    assert time.monotonic() - start < 30
    assert not any(_alive(p) for p in pids)
    rows = sorted(r for i in range(len(seq)) for r in _rows_of(seq[i]))
    assert rows == list(range(70)) and seq._pool is not None and seq._pool.pids != pids
    seq.close()


def allocate_like_a_transform(X, Y):
    """A transform holding four 4 MiB temporaries at once; its Y is (the
    minor page faults that took, this process's pid) for each row."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    live = [np.ones(1 << 20, dtype=np.float32) for _ in range(4)]
    del live
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return X, np.tile(np.array([faults, os.getpid()], dtype=np.int64), (len(X), 1))


def test_a_worker_process_makes_batch_after_batch_in_memory_it_already_has(small_file):
    # A worker's allocator keeps freed memory (glibc, _keep_freed_memory), so
    # batch after batch touches pages already mapped instead of faulting in
    # fresh ones. Measured where transforms run, in h5feed's own worker
    # process (spawned, so its allocator starts fresh, untuned by pytest's).
    import resource

    if resource.getrusage(resource.RUSAGE_SELF).ru_minflt == 0:
        pytest.skip("minor page faults are not counted here")
    seq = _with_context(
        H5Sequence(small_file, batch_size=4, shuffle=False, transform=allocate_like_a_transform, one_hot=False,
                   workers=1, use_multiprocessing=True, readahead=False),
        mp.get_context("spawn"),
    )
    try:
        made = [seq[i][1][0].tolist() for i in range(12)]
    finally:
        seq.close()
    in_workers = [faults for faults, pid in made if pid != os.getpid()]
    assert len(in_workers) >= 6, made  # most batches were made by the worker
    pages = 4 * (4 << 20) // 4096  # what one batch's temporaries fault in afresh
    # The first batch in a worker faults its memory in; later ones reuse it.
    assert sum(in_workers[1:]) < len(in_workers[1:]) * pages // 10, in_workers


def test_close_and_gc_stop_processes_and_free_memory(small_file):
    seq = _with_context(
        H5Sequence(small_file, "train", batch_size=4, workers=2, use_multiprocessing=True),
        mp.get_context("fork"),
    )
    for i in range(4):
        seq[i]
    pids = list(seq._pool.pids)
    # Unlinked once every worker mapped it: nothing to leak even if killed.
    assert not _segments() and all(_alive(p) for p in pids)
    seq.on_epoch_end()
    assert all(_alive(p) for p in pids)  # kept for the next epoch
    seq.close()
    assert not _segments() and not any(_alive(p) for p in pids)
    seq.close()  # twice is safe
    for i in range(4):
        seq[i]
    pids = list(seq._pool.pids)
    del seq
    gc.collect()
    assert not _segments() and not any(_alive(p) for p in pids)


def test_fit_ends_and_fails_without_leaking_shared_memory(small_file):
    import keras

    def model_for(seq):
        m = keras.Sequential([keras.Input(seq[0][0].shape[1:]), keras.layers.Flatten(), keras.layers.Dense(5)])
        m.compile("sgd", "mse")
        return m

    seq = H5Sequence(small_file, "train", batch_size=8, seed=1, workers=2, use_multiprocessing=True)
    model_for(seq).fit(seq, epochs=2, verbose=0)
    pids = list(seq._pool.pids)
    assert not _segments() and all(_alive(p) for p in pids)  # kept until close
    seq.close()
    assert not any(_alive(p) for p in pids)

    bad = H5Sequence(small_file, "train", batch_size=8, seed=1, transform=boom_on_row_45,
                     workers=2, use_multiprocessing=True)
    model = model_for(H5Sequence(small_file, "train", batch_size=8))
    with pytest.raises(Exception, match="row 45 is cursed"):
        model.fit(bad, epochs=1, verbose=0)
    gc.collect()
    assert not _segments()
    bad.close()


def test_sequence_with_running_workers_pickles_without_them(small_file):
    import pickle

    seq = _with_context(
        H5Sequence(small_file, "train", batch_size=4, shuffle=False, workers=2, use_multiprocessing=True),
        mp.get_context("fork"),
    )
    for i in range(4):
        seq[i]
    clone = pickle.loads(pickle.dumps(seq))
    assert clone._pool is None and clone.process_workers == 2
    np.testing.assert_array_equal(clone[5][0], seq[5][0])
    clone.close()
    seq.close()
    assert not _segments()


def test_keras_sees_one_worker_whether_h5feed_runs_processes_or_threads(small_file):
    own = H5Sequence(small_file, workers=3, use_multiprocessing=True, max_queue_size=4)
    assert (own.workers, own.use_multiprocessing, own.process_workers, own.thread_workers) == (1, False, 3, 0)
    threads = H5Sequence(small_file, workers=2, use_multiprocessing=False)
    assert (threads.workers, threads.use_multiprocessing, threads.process_workers, threads.thread_workers) == (
        1, False, 0, 2,
    )
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        H5Sequence(small_file, workers=-1)
    with pytest.raises(TypeError, match="use_multiprocessing must be a bool"):
        H5Sequence(small_file, use_multiprocessing="yes")


class _Unpicklable(Exception):
    """An exception the parent cannot get back by pickle (a lambda inside)."""

    def __init__(self, message):
        super().__init__(message)
        self.callback = lambda: None


def test_messages_are_frozen_dataclasses_that_pickle_as_themselves():
    import dataclasses
    import pickle

    from h5feed import _workers as w

    at = w._ArrayAt(np.dtype("<f4"), (2, 3), 64)
    messages = [
        w._Task(ticket=1, slot=2, rows=np.arange(3), index=4),
        w._Stop(),
        w._Ready(worker=0, pid=123),
        w._InSlot(ticket=1, slot=2, worker=0, read=(0.5, None), layout=(at, {"k": at}, "label")),
        w._Pickled(ticket=1, slot=2, worker=0, read=(0.5, 3), batch=(np.ones(2),), needed=4096),
        w._Failed(ticket=1, slot=2, worker=1, read=(0.0, None), error=w._pack_exception(Boom("no")), traceback="tb"),
    ]
    for msg in messages:
        assert dataclasses.is_dataclass(msg) and not isinstance(msg, tuple)
        assert not hasattr(msg, "__dict__")  # slotted: small on the wire
        for field in dataclasses.fields(msg):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(msg, field.name, 9)
        back = pickle.loads(pickle.dumps(msg))
        assert type(back) is type(msg)
        for field in dataclasses.fields(msg):
            a, b = getattr(msg, field.name), getattr(back, field.name)
            if isinstance(a, np.ndarray) or field.name in ("batch", "error"):
                assert repr(a) == repr(b)
            else:
                assert a == b
    # An exception that cannot be pickled comes back as WorkerError naming
    # its type and message; one that can, as itself.
    text = w._unpack_exception(w._pack_exception(_Unpicklable("odd state")))
    assert isinstance(text, WorkerError) and "_Unpicklable: odd state" in str(text)
    same = w._unpack_exception(w._pack_exception(Boom("no")))
    assert type(same) is Boom and str(same) == "no"


def test_a_batch_in_a_slot_comes_back_with_its_structure_and_bytes():
    from h5feed import _workers as w

    buf = memoryview(bytearray(4096))
    batch = (
        {"img": np.arange(12, dtype=np.float32).reshape(3, 4), "meta": np.arange(3, dtype=np.int16)},
        [np.ones((3, 2), dtype=np.float64), "a label"],
        np.zeros((0, 5), dtype=np.uint8),
    )
    layout = w._encode(batch, buf, 1024, 2048, [0])
    assert isinstance(layout[0]["img"], w._ArrayAt) and layout[1][1] == "a label"
    for back in (
        w._decode(layout, lambda at: w._copy_from(buf, 1024, at)),
        w._decode(layout, lambda at: w._view_in(np.frombuffer(buf, np.uint8, 2048, 1024), at)),
    ):
        assert type(back[0]) is dict and type(back[1]) is list and back[1][1] == "a label"
        for got, want in ((back[0]["img"], batch[0]["img"]), (back[0]["meta"], batch[0]["meta"]),
                          (back[1][0], batch[1][0]), (back[2], batch[2])):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    with pytest.raises(w._TooBig):
        w._encode(batch, buf, 1024, 64, [0])
