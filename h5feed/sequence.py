"""``H5Sequence``: a worker-safe ``keras.utils.PyDataset`` over one h5feed file.

Importing this module imports Keras (and so TensorFlow or the configured
backend); ``import h5feed`` alone does not.

NOTE [ Plugging own workers into Keras ]
With ``use_multiprocessing=True`` the sequence serves batches from its own
worker processes (:class:`~h5feed._workers.BatchPool`, shared memory instead
of Keras's pickling; see NOTE [ Own workers ] there). Keras must then not start
its own pool: Keras's adapter starts one whenever the dataset's ``workers``
property is above 1 (or 1 with ``use_multiprocessing``), so the sequence
reports ``workers=1, use_multiprocessing=False`` to Keras and keeps what the
user asked in ``process_workers``.

Keras's ``fit(shuffle=True)`` (its default) asks for the batch indices of an
epoch in a random order of its own, drawn from Python's unseeded ``random``,
which no prefetcher can follow and which would make the same seed give a
different sample order on every run. Since the sequence's epoch order is
already a random permutation (or a block shuffle) drawn from ``(seed,
epoch)``, a shuffled sequence serves the k-th distinct index asked for in an
epoch with the k-th batch of its epoch order ("late binding"), in-process and
with process workers alike: each row is still seen exactly once per epoch, an
index asked twice gets the same batch, the batches reach the model in the
seed's order whatever Keras's shuffle, and the workers can prefetch. Thread
workers (``workers=N`` without ``use_multiprocessing``) are h5feed's too, for
the same reason: with Keras's thread pool, which request binds to which batch
would follow the threads' timing. h5feed's threads make the batches after the
one just served, in the epoch order, so the order stays the seed's.
The binding lives in the process that built the sequence, where Keras calls
``on_epoch_end``; a copy of the sequence in another process (pickled into a
pool of the user's own) serves index i = batch i, so that processes that split
the indices between them still read each row exactly once.
An unshuffled sequence keeps index i = batch i; the pool then prefetches along
the order of the requests and reads in-process when they jump.

The pool starts at the third request of an epoch (the TensorFlow backend
peeks at batches 0 and 1 before training, and a pool is not worth starting
for them) and serves the following epochs too (:meth:`BatchPool.restart`:
a new process each epoch would map the file's pages again, one fault at a
time). It stops on ``close()``, on garbage collection and at interpreter
exit, and when a worker fails; its shared memory never shows in
``/dev/shm`` after the workers have started.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _plan
from ._batch import BatchMaker
from ._keras import keras
from ._origin import note_raised
from ._proc import this_pid
from ._readahead import ReadAhead
from ._select import (
    DEFAULT_Y,
    ColumnSpec,
    column_names as _column_names,
    resolve_columns as _resolve_columns,
    normalize_shard as _normalize_shard,
    positive_int as _positive_int,
    select_rows as _select_rows,
)
from ._workers import BatchPool
from .layout import Layout

# Batches of large rows kept advised ahead of the one being read, past those
# that h5feed's worker threads or processes already make.
READ_AHEAD_DEPTH = 4

__all__ = ["H5Sequence"]

_PYDATASET_KWARGS = ("workers", "use_multiprocessing", "max_queue_size")


class H5Sequence(keras.utils.PyDataset):
    """Batches ``(X, Y)`` from one h5feed file, for ``model.fit``.

    Args:
        path: the h5feed file.
        split: a split name to read (``"train"``, ``"validation"``, ...);
            None for all rows.
        ids: sample IDs to read, in this order (the tutorial's
            ``partition['train']``); exclusive with ``split``.
        batch_size: samples per batch.
        shuffle: True for a new permutation every epoch; ``"block"`` for a
            quasi-random order that keeps reads contiguous (blocks of
            ``block_rows`` rows, mixed ``block_window`` blocks at a time);
            False for file (or ``ids``) order.
        seed: the shuffling seed. None draws one; every worker process uses
            the same, so all agree on the epoch order.
        one_hot: one-hot ``Y`` (float32). None means one-hot exactly when the
            file stores ``n_classes``.
        x: the input dataset(s): a name, a list of names (a tuple of arrays),
            or ``{model_input_name: dataset_name}``.
        y: the target dataset(s), same forms; None for inputs only. The
            default is ``"y"`` when the file has it.
        drop_remainder: drop the last, short batch.
        transform: ``fn(X, Y) -> (X, Y)`` applied to each batch in the process
            that reads it; must be a module-level function to work with
            process workers.
        block_rows: block size for ``shuffle="block"`` (default: the chunk
            rows of ``x`` when chunked, else 64).
        block_window: blocks mixed together for ``shuffle="block"``.
        shard: ``(index, count)`` to read only this worker's equal part of
            every epoch (multi-machine training): every shard draws the same
            epoch permutation from ``seed`` and takes its own consecutive,
            equal part of it; ``drop_remainder`` drops the last ``n % count``
            rows of the epoch so that all shards have the same length.
        allow_virtual: accept a file whose datasets are HDF5 virtual datasets
            (made by ``h5feed merge``); its sources must lie in its folder.
        readahead: while batches come from disk (cold page cache), ask the
            kernel to start reading what the next batches need (memory-mapped
            datasets: rows of 32 KiB or more, or blocks of smaller rows under
            ``shuffle="block"``; NOTE [ Cold cache ] in ``reader.py``). False
            never asks.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size``.
            With ``use_multiprocessing=True`` h5feed runs ``workers`` worker
            processes of its own that return batches through shared memory
            and prefetch up to ``max(max_queue_size, 2 * workers)`` batches
            (NOTE [ Plugging own workers into Keras ]); otherwise they go to
            ``keras.utils.PyDataset`` (threads).

    Raises:
        UnknownSplitError: the split is not in the file.
        UnknownIDError: an ID is not in the file.
        FormatError: the file is not a valid h5feed file.
        TypeError: an unknown keyword argument or an option of a wrong type.

    Example:
        >>> seq = H5Sequence("data.h5", "train", batch_size=32, seed=0)  # doctest: +SKIP
        >>> model.fit(seq, validation_data=H5Sequence("data.h5", "validation"))  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str | None = None,
        *,
        ids: Sequence[str] | None = None,
        batch_size: int = 32,
        shuffle: bool | str = True,
        seed: int | None = None,
        one_hot: bool | None = None,
        x: ColumnSpec = "x",
        y: Any = DEFAULT_Y,
        drop_remainder: bool = False,
        transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        block_rows: int | None = None,
        block_window: int = 8,
        shard: tuple[int, int] | None = None,
        allow_virtual: bool = False,
        readahead: bool = True,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(_PYDATASET_KWARGS))
        if unknown:
            raise TypeError(
                f"H5Sequence() got unexpected keyword argument(s) {unknown!r}; "
                f"it passes only {list(_PYDATASET_KWARGS)!r} to keras.utils.PyDataset"
            )
        workers = kwargs.get("workers", 1)
        multi = kwargs.get("use_multiprocessing", False)
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
            raise ValueError(f"workers must be an int >= 0. Received: {workers!r}")
        if not isinstance(multi, (bool, np.bool_)):
            raise TypeError(f"use_multiprocessing must be a bool. Received: {multi!r}")
        self._process_workers = int(workers) if multi and workers >= 1 else 0
        self._thread_workers = int(workers) if not multi and workers > 1 else 0
        if self._process_workers or self._thread_workers:
            # Keras must not start its own pool (NOTE above).
            kwargs = dict(kwargs, workers=1, use_multiprocessing=False)
        super().__init__(**kwargs)
        self.path = os.path.abspath(os.fspath(path))
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1. Received: {batch_size!r}")
        self.batch_size = int(batch_size)
        if shuffle not in (True, False, "block"):
            raise ValueError(f"shuffle must be True, False or 'block'. Received: {shuffle!r}")
        self.shuffle = shuffle
        if seed is None and shard is not None and shuffle:
            # Each process would draw its own seed, and the shards would
            # overlap; all workers must agree on the epoch permutation.
            raise ValueError(
                f"shard={shard!r} with shuffling needs an explicit seed, the same in every worker. Received: seed=None"
            )
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int or None. Received: {seed!r}")
        self.seed = int(seed)
        if one_hot is not None and not isinstance(one_hot, (bool, np.bool_)):
            raise TypeError(f"one_hot must be True, False or None. Received: {one_hot!r}")
        if not isinstance(drop_remainder, (bool, np.bool_)):
            raise TypeError(f"drop_remainder must be a bool. Received: {drop_remainder!r}")
        self.drop_remainder = bool(drop_remainder)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable. Received: {transform!r}")
        self.transform = transform
        if split is not None and ids is not None:
            raise ValueError("pass split or ids, not both")
        if split is not None and not isinstance(split, str):
            raise TypeError(f"split must be a split name (str). Received: {split!r}")
        self.split = split
        self._shard = _normalize_shard(shard)
        if not isinstance(allow_virtual, (bool, np.bool_)):
            raise TypeError(f"allow_virtual must be a bool. Received: {allow_virtual!r}")
        self.allow_virtual = bool(allow_virtual)
        if not isinstance(readahead, (bool, np.bool_)):
            raise TypeError(f"readahead must be a bool. Received: {readahead!r}")

        # Validated once, here; workers trust this layout (NOTE [ Handles
        # across processes ] in reader.py).
        layout, rows = _select_rows(self.path, split, ids, allow_virtual=self.allow_virtual)
        self.layout: Layout = layout
        self._rows = rows

        self.x, self.y, self.one_hot = _resolve_columns(layout, x, y, one_hot)

        x_col = layout.column(_column_names(self.x)[0])
        if block_rows is None:
            block_rows = x_col.chunk_rows or 64
        self.block_rows = _positive_int(block_rows, "block_rows")
        self.block_window = _positive_int(block_window, "block_window")

        self._maker = BatchMaker(layout, self.x, self.y, one_hot=self.one_hot, transform=transform)
        self._ahead = ReadAhead(
            self._maker.reader if readahead else None,
            self._maker.columns(),
            batch_size=self.batch_size,
            depth=READ_AHEAD_DEPTH,
        )
        self._reset_pool_state()
        self._slot_bytes = 0
        # The multiprocessing context of the workers; None: the start
        # method in effect (multiprocessing.set_start_method).
        self._mp_context: Any = None
        self._pool_lock = threading.RLock()
        self._owner_pid = this_pid()  # where the late binding lives (NOTE above)
        self._epoch = 0
        self._epoch_rows = self._compute_epoch_rows(0)
        # Every epoch has as many rows (a permutation of the same ones).
        self._n_batches = _plan.num_batches(self._epoch_rows.size, self.batch_size, drop_remainder=self.drop_remainder)

    @property
    def process_workers(self) -> int:
        """h5feed worker processes serving batches (0: this process reads).

        ``workers`` and ``use_multiprocessing`` report what Keras must see
        (1 and False when h5feed's own processes are used), since Keras reads
        them to decide whether to start a pool of its own.
        """
        return self._process_workers

    @property
    def thread_workers(self) -> int:
        """h5feed threads making batches ahead (``workers=N`` without processes)."""
        return self._thread_workers

    @property
    def _reader(self) -> Any:
        return self._maker.reader

    # -- epochs ------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current epoch number (0-based)."""
        return self._epoch

    @property
    def rows(self) -> np.ndarray:
        """The selected rows in selection order (read-only view)."""
        view = self._rows.view()
        view.flags.writeable = False
        return view

    def _compute_epoch_rows(self, epoch: int) -> np.ndarray:
        n = self._rows.size
        order = _plan.epoch_order(
            n,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=epoch,
            block=self.block_rows,
            window=self.block_window,
        )
        if self._shard is not None:
            start, stop = _plan.shard_bounds(n, *self._shard, drop_remainder=self.drop_remainder)
            order = order[start:stop]
        return self._rows[order]

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch`` (to resume training): its order is recomputed."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0. Received: {epoch!r}")
        self._ahead.reset()
        self._epoch = int(epoch)
        self._epoch_rows = self._compute_epoch_rows(self._epoch)
        # Last: a worker that died meanwhile raises here, the epoch set.
        self._close_pool(keep_processes=True)

    def on_epoch_end(self) -> None:
        """Called by Keras after each epoch: draw the next epoch's order."""
        self.set_epoch(self._epoch + 1)

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(index, count)`` when this sequence reads one shard, else None."""
        return self._shard

    def epoch_rows(self) -> np.ndarray:
        """The rows of the current epoch, in batch order (a copy)."""
        n = len(self) * self.batch_size
        return self._epoch_rows[:n].copy()

    # -- the PyDataset protocol --------------------------------------------

    def __len__(self) -> int:
        return self._n_batches

    @property
    def num_batches(self) -> int:
        return len(self)

    def _check_index(self, index: int) -> int:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"batch index must be an int. Received: {index!r}")
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"batch index {index!r} out of range for {n} batches")
        return int(index)

    def _content_rows(self, k: int) -> np.ndarray:
        start, stop = _plan.batch_bounds(k, self._epoch_rows.size, self.batch_size)
        return self._epoch_rows[start:stop]

    def _content_of(self, index: int) -> int:
        """Which batch of the epoch order serves ``index`` (late binding, NOTE above)."""
        if self.shuffle is False or this_pid() != self._owner_pid:
            return index
        k = self._bound.get(index)
        if k is None:
            k = self._bound[index] = self._next_content
            self._next_content += 1
        return k

    def batch_rows(self, index: int) -> np.ndarray:
        """The file rows of batch ``index`` in the current epoch.

        With shuffling, the rows of the batch that ``seq[index]`` returns (or
        will return) this epoch: the first index asked for in an epoch gets
        the first batch of the epoch order (NOTE [ Plugging own workers into
        Keras ]).
        """
        index = self._check_index(index)
        with self._pool_lock:
            return self._content_rows(self._content_of(index))

    def __getitem__(self, index: int) -> Any:
        try:
            # The per-batch path: a plain int in range skips the checks (a
            # warm batch of "small" takes about 10 us in all).
            if type(index) is not int or not 0 <= index < self._n_batches:
                index = self._check_index(index)
            if not self._process_workers:
                with self._pool_lock:
                    k = self._content_of(index)
                    pending = self._prefetch_threads(k) if self._thread_workers else None
                if pending is not None:
                    if not self._ahead.enabled:
                        return pending.result()
                    return self._read_ahead_of(k, pending.result, lambda: self._read_times.pop(k, None))
                if self._ahead.enabled:
                    return self._make_reading_ahead(k, index)
                start = k * self.batch_size
                return self._maker.make(self._epoch_rows[start:start + self.batch_size], index)
            return self._from_pool(index)
        except Exception as exc:
            # For h5feed.original_errors() (NOTE [ Exceptions through tf.data ]).
            note_raised(exc)
            raise

    def _from_pool(self, index: int) -> Any:
        """Batch ``index`` from h5feed's worker processes (started on the third request)."""
        with self._pool_lock:
            k = self._content_of(index)
            self._requests += 1
            if self._pool is None and self._requests > 2:
                self._pool = self._start_pool()
            if self._pool is not None:
                pool = self._pool
                try:
                    batch = self._read_ahead_of(
                        k, lambda: pool.get(k, len(self), self._content_rows, index), lambda: pool.last_read
                    )
                except BaseException:
                    # The pool closed itself before raising; the epoch's
                    # binding stays, so a retry still sees each row once.
                    self._pool = None
                    raise
                if batch is not None:
                    return batch
        if self._ahead.enabled:
            return self._make_reading_ahead(k, index)
        return self._maker.make(self._content_rows(k), index)

    def _read_ahead_of(
        self, k: int, wait: Callable[[], Any], read_of: Callable[[], tuple[float, int | None] | None]
    ) -> Any:
        """``wait()`` for batch ``k`` made by a worker, then read ahead from here if it was cold.

        The page cache is shared, so advice given in this process serves
        the workers' reads. ``read_of()`` is ``(seconds, major faults)`` of
        the worker's read of the batch's rows (before any transform), or None.
        """
        batch = wait()
        ahead = self._ahead
        if batch is not None and ahead.enabled:
            read = read_of()
            if read is not None:
                ahead.batch_read(k, read, self._epoch_rows, by_worker=True)
        return batch

    def _make_reading_ahead(self, k: int, index: int) -> Any:
        """Batch ``k`` of the epoch order (as ``index``), then read-ahead if cold."""
        rows = self._content_rows(k)
        ahead, order = self._ahead, self._epoch_rows

        def read_ahead(read: tuple[float, int | None]) -> None:
            ahead.batch_read(k, read, order)

        if k == 0:
            ahead.prime(order)

        return self._maker.make(rows, index, on_read=read_ahead)

    # -- own worker processes ----------------------------------------------

    def _prefetch_threads(self, k: int) -> Future[Any] | None:
        """Keep the batches after ``k`` in flight on h5feed's threads; ``k``'s future.

        Called under the pool lock. The threads make batches of the epoch
        order itself, so what the model sees does not depend on which thread
        runs first (NOTE [ Plugging own workers into Keras ]).
        """
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self._thread_workers, thread_name_prefix="h5feed-batch")
        pending = self._prefetched.pop(k, None)
        depth = max(int(self.max_queue_size or 0), 2 * self._thread_workers)
        # Read-ahead reaches past the batches the threads already make.
        self._ahead.depth = READ_AHEAD_DEPTH + depth
        for stale in [c for c in self._prefetched if not k < c <= k + depth]:
            self._prefetched.pop(stale).cancel()
            self._read_times.pop(stale, None)
        for c in range(k + 1, min(len(self), k + depth + 1)):
            if c not in self._prefetched:
                # Each thread notes how its read went, for read-ahead.
                on_read = functools.partial(self._read_times.__setitem__, c) if self._ahead.enabled else None
                self._prefetched[c] = self._threads.submit(self._maker.make, self._content_rows(c), c, on_read=on_read)
        return pending

    def _reset_pool_state(self) -> None:
        self._threads: ThreadPoolExecutor | None = None
        self._prefetched: dict[int, Future[Any]] = {}
        # batch -> (seconds, major faults) of its thread's read
        self._read_times: dict[int, tuple[float, int | None]] = {}
        self._pool: BatchPool | None = None
        self._bound: dict[int, int] = {}
        self._next_content = 0
        self._requests = 0

    def _start_pool(self) -> BatchPool:
        slot_bytes = max(self._slot_bytes, self._maker.batch_nbytes(self.batch_size) + 4096)
        slots = max(int(self.max_queue_size or 0), 2 * self._process_workers)
        # Read-ahead reaches past the batches the workers already make.
        self._ahead.depth = READ_AHEAD_DEPTH + slots
        return BatchPool(
            self._maker,
            workers=self._process_workers,
            slots=slots,
            slot_bytes=slot_bytes,
            context=self._mp_context,
            description=self.path,
        )

    def _close_pool(self, *, keep_processes: bool = False) -> None:
        """Stop h5feed's worker threads and processes; all pool state starts over.

        ``keep_processes``: between epochs, keep the worker processes for
        the next one where they can serve it (NOTE [ Plugging own workers
        into Keras ]); a worker that died meanwhile raises here.
        """
        lock = getattr(self, "_pool_lock", None)
        if lock is None:  # during __init__
            return
        with lock:
            if self._threads is not None:
                self._threads.shutdown(wait=True, cancel_futures=True)
            pool = self._pool
            # A batch that outgrew its slot: a new pool, with bigger slots.
            keep = keep_processes and pool is not None and not pool.closed and pool.max_needed <= pool.slot_bytes
            if pool is not None and not keep:
                pool.close()
                # A transform that made batches bigger than a slot: size the
                # next pool's slots for them.
                self._slot_bytes = max(self._slot_bytes, pool.max_needed)
            self._reset_pool_state()
            if keep:
                pool.restart()  # closes itself before raising
                self._pool = pool

    # -- other frameworks --------------------------------------------------

    def to_tf_dataset(self, *, first_epoch: int | None = None, prefetch: int | None = -1) -> Any:
        """The same batches as a ``tf.data.Dataset``; see :func:`h5feed.tf_data.dataset_from_sequence`."""
        from .tf_data import dataset_from_sequence

        return dataset_from_sequence(self, first_epoch=first_epoch, prefetch=prefetch)

    def _clone(self, epoch: int) -> H5Sequence:
        """A shallow copy at ``epoch`` that reads in-process with its own reader.

        Handles are never shared, and the clone never starts worker processes
        (tf.data runs its own threads over it).
        """
        clone = copy.copy(self)
        clone._pool_lock = threading.RLock()
        clone._reset_pool_state()  # the parent's pool stays the parent's
        clone._process_workers = 0
        clone._thread_workers = 0
        clone._maker = self._maker.fresh()
        clone.set_epoch(epoch)
        return clone

    # -- resources and pickling --------------------------------------------

    def close(self) -> None:
        """Stop worker processes and close this process's file handles.

        Safe twice; the sequence reopens (and restarts workers) on use.
        """
        self._close_pool()
        self._maker.close()

    def __enter__(self) -> H5Sequence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # The reader pickles as its layout only (no handles); arrays of rows
        # stay numpy arrays, which pickle compactly. A worker pool belongs to
        # the process that started it.
        state = dict(self.__dict__)
        state.update(
            _pool=None, _threads=None, _prefetched={}, _read_times={}, _bound={}, _next_content=0, _requests=0
        )
        del state["_pool_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.RLock()

    def __repr__(self) -> str:
        what = f"split={self.split!r}" if self.split is not None else f"{self._rows.size} rows"
        return (
            f"<H5Sequence {self.path!r} {what} batch_size={self.batch_size} "
            f"shuffle={self.shuffle!r} epoch={self._epoch} batches={len(self)}>"
        )
