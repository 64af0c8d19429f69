"""``H5Sequence``: a worker-safe ``keras.utils.PyDataset`` over one h5feed file.

Importing this module imports Keras (and so TensorFlow or the configured
backend); ``import h5feed`` alone does not.

NOTE [ Plugging own workers into Keras ]
With ``use_multiprocessing=True`` the sequence serves batches from h5feed's
own worker processes (:class:`~h5feed._workers.BatchPool`;
NOTE [ Own workers ] there), and with ``workers=N`` alone from h5feed's own
threads; either way it reports ``workers=1, use_multiprocessing=False`` to
Keras, so that Keras starts no pool of its own; ``process_workers`` and
``thread_workers`` keep what the user asked. Keras's ``fit(shuffle=True)``
asks for indices in an unseeded order of its own, so a shuffled sequence binds
batches late: in the process that built it, the k-th distinct index asked for
in an epoch gets the k-th batch of the epoch order drawn from ``(seed,
epoch)``, so the batches reach the model in the seed's order whatever order
Keras asks in, each row is still read once per epoch, an index asked twice
gets the same batch, and the workers can prefetch. A copy in another process
serves index i = batch i; an unshuffled sequence always does. The process pool
starts at the third request of an epoch, serves the following epochs too
(:meth:`BatchPool.restart`), and stops on ``close()``, on garbage collection,
at interpreter exit and when a worker fails.
See the design note ``docs/design/late-binding.md``.

NOTE [ Decoding ahead ]
Reading in this process alone (no worker threads or processes), a sequence
over chunked datasets starts the decoding of the chunks of the batches up to
``DECODE_AHEAD`` after the one it makes (``Reader.prefetch``), so that the
decoding threads work while the batches in between come from the chunk cache
(NOTE [ The chunk cache ] in ``_chunks.py``). Only where the cache keeps what
it starts: the budget holds four windows of blocks, and a full shuffle's
file fits it whole. See the design note ``docs/design/chunks.md``.

NOTE [ Resuming mid-epoch ]
:meth:`H5Sequence.load_state_dict` puts the sequence at batch ``b`` of an
epoch's order: index ``i`` then serves batch ``b + i`` (late-bound as above)
and ``len(seq)`` is the ``n - b`` batches left, until ``on_epoch_end``
starts the next epoch whole. So a loop over ``range(len(seq))``, and Keras's
``fit``, which asks for ``len(seq)`` batches each epoch, continue exactly
where the state was saved. Every batch is made with its place ``(seed,
epoch, b + i, shard)`` (NOTE [ Random streams ] in ``_streams.py``), so a
transform that takes ``rng`` repeats itself too. See the design note
``docs/design/resume.md``.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import _plan, _state
from ._batch import BatchMaker
from ._keras import keras
from ._origin import note_raised
from ._proc import this_pid
from ._readahead import ReadAhead
from ._args import check_bool, check_int, check_shard
from ._streams import BatchPlace
from ._select import (
    DEFAULT_Y,
    ColumnSpec,
    EpochRows,
    column_names as _column_names,
    resolve_columns as _resolve_columns,
    resolve_sample_weight as _resolve_sample_weight,
    select_rows as _select_rows,
)
from ._workers import BatchPool
from .layout import Layout

# Batches of large rows kept advised ahead of the one being read, past those
# that h5feed's worker threads or processes already make.
READ_AHEAD_DEPTH = 4
# Batches after the one being made whose chunks are decoded ahead
# (NOTE [ Decoding ahead ]): about a window of blocks at the default sizes.
DECODE_AHEAD = 16

__all__ = ["H5Sequence"]

_PYDATASET_KWARGS = ("workers", "use_multiprocessing", "max_queue_size")


class H5Sequence(keras.utils.PyDataset):
    """Batches ``(X, Y)`` (or ``(X, Y, W)``) from one h5feed file, for ``model.fit``.

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
        seed: the shuffling seed, also the seed of a transform's ``rng``.
            None draws one (and :meth:`load_state_dict` then takes the
            saved one); every worker process uses the same, so all agree
            on the epoch order.
        one_hot: one-hot ``Y`` (float32). None means one-hot exactly when the
            file stores ``n_classes``.
        x: the input dataset(s): a name, a list of names (a tuple of arrays),
            or ``{model_input_name: dataset_name}``.
        y: the target dataset(s), same forms; None for inputs only. The
            default is ``"y"`` when the file has it.
        drop_remainder: drop the last, short batch.
        transform: ``fn(X, Y) -> (X, Y)`` or ``fn(X, Y, rng) -> (X, Y)``
            applied to each batch in the process that reads it; must be a
            module-level function to work with process workers. ``rng`` is
            a ``numpy.random.Generator`` drawn from the seed, the epoch, the
            batch's place in the epoch's order and the shard: the same
            batch gets the same numbers with or without workers, and after
            a resume.
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
        sample_weight: a per-row dataset of sample weights: batches
            are then ``(X, Y, W)``, which ``model.fit`` weighs as it does an
            in-memory ``sample_weight`` (``W`` is not passed to the
            transform, which must keep rows in place). Needs targets.
        readahead: while batches come from disk (cold page cache), ask the
            kernel to start reading what the next batches need: the rows of
            large-row datasets, the pieces of the file that hold small rows
            (memory-mapped datasets only, a merged file's parts included;
            NOTE [ Cold cache ] in ``reader.py``). False never asks.
        cache_bytes: bytes of decoded chunks of chunked (compressed)
            datasets kept for the batches that follow, in each process that
            reads (default 256 MiB); 0 keeps none. A file whose decoded size
            fits is decoded once, whatever the shuffle.
        decode_threads: threads that read and decode chunks outside HDF5's
            lock, in each process that reads (default: one per core, at most
            4); 0 leaves it to HDF5 (see ``docs/design/chunks.md``).
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
        ValueError: ``sample_weight`` without targets.

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
        transform: Callable[..., tuple[Any, Any]] | None = None,
        block_rows: int | None = None,
        block_window: int = 8,
        shard: tuple[int, int] | None = None,
        allow_virtual: bool = False,
        sample_weight: str | None = None,
        readahead: bool = True,
        cache_bytes: int | None = None,
        decode_threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(_PYDATASET_KWARGS))
        if unknown:
            raise TypeError(
                f"H5Sequence() got unexpected keyword argument(s) {unknown!r}; "
                f"it passes only {list(_PYDATASET_KWARGS)!r} to keras.utils.PyDataset"
            )
        workers = check_int(kwargs.get("workers", 1), "workers", minimum=0)
        multi = check_bool(kwargs.get("use_multiprocessing", False), "use_multiprocessing")
        self._process_workers = int(workers) if multi and workers >= 1 else 0
        self._thread_workers = int(workers) if not multi and workers > 1 else 0
        if self._process_workers or self._thread_workers:
            # Keras must not start its own pool (NOTE above).
            kwargs = dict(kwargs, workers=1, use_multiprocessing=False)
        super().__init__(**kwargs)
        self.path = os.path.abspath(os.fspath(path))
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        if shuffle not in (True, False, "block"):
            raise ValueError(f"shuffle must be True, False or 'block'. Received: {shuffle!r}")
        self.shuffle = shuffle
        if seed is None and shard is not None and shuffle:
            # Each process would draw its own seed, and the shards would
            # overlap; all workers must agree on the epoch permutation.
            raise ValueError(
                f"shard={shard!r} with shuffling needs an explicit seed, the same in every worker. Received: seed=None"
            )
        seed = check_int(seed, "seed", minimum=0, none_ok=True, error=TypeError)
        self._seed_given = seed is not None
        self.seed = int(np.random.SeedSequence().entropy % (2**63)) if seed is None else seed
        if one_hot is not None and not isinstance(one_hot, (bool, np.bool_)):
            raise TypeError(f"one_hot must be True, False or None. Received: {one_hot!r}")
        self.drop_remainder = check_bool(drop_remainder, "drop_remainder")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable. Received: {transform!r}")
        self.transform = transform
        if split is not None and ids is not None:
            raise ValueError("pass split or ids, not both")
        if split is not None and not isinstance(split, str):
            raise TypeError(f"split must be a split name (str). Received: {split!r}")
        self.split = split
        self._shard = check_shard(shard)
        self.allow_virtual = check_bool(allow_virtual, "allow_virtual")
        readahead = check_bool(readahead, "readahead")

        # Validated once, here; workers trust this layout (NOTE [ Handles
        # across processes ] in reader.py) and get their batches' rows
        # resolved (NOTE [ Selections ] in _select.py).
        layout, selection = _select_rows(self.path, split, ids, allow_virtual=self.allow_virtual)
        self.layout: Layout = layout
        self._selection = selection
        # What a state's fingerprint says of the selection (NOTE [ Resume
        # states ] in _state.py): ids select rows by a list, named by a digest.
        self._selection_name = _state.selection_name(split, ids, selection.array() if ids is not None else None)

        self.x, self.y, self.one_hot = _resolve_columns(layout, x, y, one_hot)
        self.sample_weight = _resolve_sample_weight(layout, sample_weight, self.y)

        x_col = layout.column(_column_names(self.x)[0])
        if block_rows is None:
            block_rows = x_col.chunk_rows or 64
        self.block_rows = check_int(block_rows, "block_rows", minimum=1)
        self.block_window = check_int(block_window, "block_window", minimum=1)

        self._maker = BatchMaker(
            layout, self.x, self.y, one_hot=self.one_hot, transform=transform,
            sample_weight=self.sample_weight, cache_bytes=cache_bytes, decode_threads=decode_threads,
        )
        self._ahead = ReadAhead(
            self._maker.reader if readahead else None,
            self._maker.columns(),
            batch_size=self.batch_size,
            depth=READ_AHEAD_DEPTH,
        )
        self._reset_pool_state()
        self._decode_ahead = self._can_decode_ahead(x_col)
        self._decoded_to = 0  # batches below this had their chunks started
        self._slot_bytes = 0
        # The multiprocessing context of the workers; None: the start
        # method in effect (multiprocessing.set_start_method).
        self._mp_context: Any = None
        self._pool_lock = threading.RLock()
        self._owner_pid = this_pid()  # where the late binding lives (NOTE above)
        self._epoch = 0
        self._start = 0  # the epoch's first batch served (NOTE [ Resuming mid-epoch ])
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
        """The selected rows in selection order (read-only; made on demand for all rows)."""
        return self._selection.array()

    def _compute_epoch_rows(self, epoch: int) -> EpochRows:
        # Costs nothing until batches are asked for (NOTE [ Epoch orders
        # without a permutation array ] in _plan.py).
        order = _plan.EpochOrder(
            len(self._selection),
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=epoch,
            block=self.block_rows,
            window=self.block_window,
            shard=self._shard,
            drop_remainder=self.drop_remainder,
        )
        return EpochRows(self._selection, order)

    def _can_decode_ahead(self, x_col: Any) -> bool:
        """Whether the cache keeps what decoding ahead starts (NOTE [ Decoding ahead ])."""
        row_bytes = self._maker.decodes_chunks()
        if not row_bytes or x_col.chunk_rows is None:
            return False
        budget = self._maker.reader.cache_bytes
        if budget < 4 * self.block_window * x_col.chunk_rows * row_bytes:
            return False
        return self.shuffle is not True or len(self._selection) * row_bytes <= budget

    def _start_decoding_after(self, k: int) -> None:
        """Start the chunks of the batches up to ``DECODE_AHEAD`` after ``k``."""
        stop = min(self._n_batches, k + 1 + DECODE_AHEAD)
        start = max(self._decoded_to, k + 1)
        if start < stop:
            self._decoded_to = stop
            self._maker.prefetch(self._epoch_rows[start * self.batch_size : stop * self.batch_size])

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch``: its order is recomputed."""
        self._move_to(check_int(epoch, "epoch", minimum=0), 0)

    def _move_to(self, epoch: int, start: int) -> None:
        """Serve ``epoch`` from batch ``start`` of its order on."""
        self._ahead.reset()
        self._decoded_to = 0
        self._epoch = epoch
        self._start = start
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
        """The rows the current epoch serves, in batch order (a new array, O(rows)).

        From its first batch, or, after :meth:`load_state_dict`, from the
        batch the state names.
        """
        return np.array(self._epoch_rows[self._start * self.batch_size:self._n_batches * self.batch_size])

    # -- saving and restoring the position ---------------------------------

    def _fingerprint(self) -> dict[str, Any]:
        fingerprint: dict[str, Any] = {
            "file": _state.file_digest(self.layout.completion),
            "selection": self._selection_name,
            "rows": len(self._selection),
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_remainder": self.drop_remainder,
            "shard": self._shard,
            "x": self.x,
            "y": self.y,
            "one_hot": self.one_hot,
            "sample_weight": self.sample_weight,
        }
        if self.shuffle == "block":
            fingerprint.update(block_rows=self.block_rows, block_window=self.block_window)
        return fingerprint

    def state_dict(self, *, epoch: int | None = None, batch: int | None = None) -> dict[str, Any]:
        """Where this sequence stands, as a small dict of JSON values.

        ``{"h5feed_state": 1, "kind": "H5Sequence", "epoch": e, "batch": b,
        "seed": s, "fingerprint": {...}}``: ``b`` batches of epoch ``e``'s
        order were served; the fingerprint names the file (a digest of its
        completion record), the selection and the options. Save it with
        ``json.dump``; :meth:`load_state_dict` continues from it.

        Args:
            epoch: describe this epoch instead of the current one.
            batch: count this many batches of the epoch as served instead of
                those this sequence served: for a loop that reads through a
                :meth:`to_tf_dataset` copy, or a trainer that reads ahead of
                what it trains on (:class:`h5feed.BackupAndRestore` passes
                the batches the model trained on).

        Raises:
            ValueError: ``epoch`` below 0, or ``batch`` outside ``[0, batches
                per epoch]``.

        Example:
            >>> seq = H5Sequence("data.h5", "train", seed=0)  # doctest: +SKIP
            >>> for i in range(5): seq[i]  # doctest: +SKIP
            >>> json.dump(seq.state_dict(), open("position.json", "w"))  # doctest: +SKIP
        """
        if epoch is None:
            epoch = self._epoch
        epoch = check_int(epoch, "epoch", minimum=0)
        if batch is None:
            with self._pool_lock:
                batch = self._start + self._next_content if epoch == self._epoch else 0
        return _state.make_state(
            "H5Sequence", epoch=epoch, batch=self._check_batch(batch), seed=self.seed, fingerprint=self._fingerprint()
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next batch served is the one after it.

        The epoch and its order become the state's, index 0 serves the
        batch after the ones the state counts as served, and ``len(seq)`` is
        the batches left in that epoch (a full epoch again after
        ``on_epoch_end``). A sequence made with ``seed=None`` takes the
        state's seed. (NOTE [ Resuming mid-epoch ])

        Raises:
            StateMismatchError: the state was saved for another file,
                selection, option set or seed (the message names every
                difference), or is not a state.
        """
        epoch, batch, seed = _state.read_state(
            state,
            "H5Sequence",
            fingerprint=self._fingerprint(),
            seed=self.seed if self._seed_given else None,
            n_batches=self._n_batches,
            where=self.path,
        )
        self.seed = seed
        self._move_to(epoch, batch)

    def _check_batch(self, batch: Any) -> int:
        """A position in an epoch: an int in ``[0, batches per epoch]``."""
        batch = check_int(batch, "batch", minimum=0)
        if batch > self._n_batches:
            raise ValueError(f"batch must be at most {self._n_batches}, the batches per epoch. Received: {batch!r}")
        return batch

    def _place(self, k: int) -> BatchPlace | None:
        """Where batch ``k`` of the current epoch's order sits, for a transform's
        ``rng``; None when the transform takes none (a batch of small rows
        costs little more than the calls that make it)."""
        return BatchPlace(self.seed, self._epoch, k, self._shard) if self._maker.takes_place else None

    def _task_place(self, k: int) -> BatchPlace:
        """Where batch ``k`` sits, for a worker process (which seeds its
        global generators by the epoch as well)."""
        return BatchPlace(self.seed, self._epoch, k, self._shard)

    # -- the PyDataset protocol --------------------------------------------

    def __len__(self) -> int:
        return self._n_batches - self._start

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
        """Which batch of the epoch order serves ``index`` (late binding, NOTE above).

        In the owning process every distinct index is counted as served
        (what :meth:`state_dict` reports).
        """
        if this_pid() != self._owner_pid:
            return self._start + index
        k = self._bound.get(index)
        if k is None:
            late = self._next_content if self.shuffle is not False else index
            k = self._bound[index] = self._start + late
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
            return np.array(self._content_rows(self._content_of(index)))

    def __getitem__(self, index: int) -> Any:
        try:
            # The per-batch path: a plain int in range skips the checks.
            if type(index) is not int or not 0 <= index < self._n_batches - self._start:
                index = self._check_index(index)
            if not self._process_workers:
                with self._pool_lock:
                    k = self._content_of(index)
                    pending = self._prefetch_threads(k) if self._thread_workers else None
                if pending is not None:
                    if not self._ahead.enabled:
                        return pending.result()
                    return self._read_ahead_of(k, pending.result, lambda: self._read_times.pop(k, None))
                if self._decode_ahead:
                    self._start_decoding_after(k)
                if self._ahead.enabled:
                    return self._make_reading_ahead(k, index)
                start = k * self.batch_size
                return self._maker.make(
                    self._epoch_rows[start:start + self.batch_size], index, place=self._place(k)
                )
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
                        k,
                        lambda: pool.get(k, self._n_batches, self._content_rows, index, self._task_place),
                        lambda: pool.last_read,
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
        return self._maker.make(self._content_rows(k), index, place=self._place(k))

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

        if k == self._start:
            ahead.prime(order)

        return self._maker.make(rows, index, on_read=read_ahead, place=self._place(k))

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
        for c in range(k + 1, min(self._n_batches, k + depth + 1)):
            if c not in self._prefetched:
                # Each thread notes how its read went, for read-ahead.
                on_read = functools.partial(self._read_times.__setitem__, c) if self._ahead.enabled else None
                self._prefetched[c] = self._threads.submit(
                    self._maker.make, self._content_rows(c), c, on_read=on_read, place=self._place(c)
                )
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

    # -- copies and other frameworks ----------------------------------------

    def copy_at_epoch(self, epoch: int, *, batch: int = 0) -> H5Sequence:
        """An independent copy of this sequence at ``epoch``, reading in this process.

        The copy has the same file, rows, columns, seed, shard and transform,
        and a file handle of its own; it never starts worker threads or
        processes, and using it (or closing it) leaves this sequence alone.
        For readers that run their own threads over a sequence, such as
        :meth:`to_tf_dataset`. Close it when done. ``batch``: the copy
        serves the epoch from that batch of its order on, as after
        :meth:`load_state_dict`.

        Raises:
            ValueError: ``epoch`` is negative, or ``batch`` outside ``[0,
                batches per epoch]``.
        """
        epoch = check_int(epoch, "epoch", minimum=0)
        batch = self._check_batch(batch)
        clone = copy.copy(self)
        clone._pool_lock = threading.RLock()
        clone._reset_pool_state()  # this sequence's pool stays its own
        clone._process_workers = 0
        clone._thread_workers = 0
        clone._maker = self._maker.fresh()
        # Read-ahead of its own, over its own reader, for its own reads.
        clone._ahead = self._ahead.fresh(clone._maker.reader)
        clone._ahead.depth = READ_AHEAD_DEPTH
        clone._move_to(epoch, batch)
        return clone

    def example_batch(self) -> Any:
        """A batch like every batch of this sequence: its structure and dtypes.

        ``seq[i]`` has the structure of this batch (``(X,)`` or ``(X, Y)``,
        each an array or a tuple or dict of arrays), and its arrays have the
        same dtypes and the same shapes past the first axis. Without a
        ``transform`` the batch has zero rows and is made from the file's
        layout, without reading; with one, only the transform knows what it
        returns, so this is batch 0 of the current epoch, read through it by
        :meth:`copy_at_epoch` (this sequence is left alone).
        """
        if self.transform is None:
            return self._maker.empty()
        probe = self.copy_at_epoch(self._epoch)
        try:
            return probe[0]
        finally:
            probe.close()

    def to_tf_dataset(self, *, first_epoch: int | None = None, prefetch: int | None = -1) -> Any:
        """The same batches as a ``tf.data.Dataset``, one epoch per iteration.

        Iteration ``k`` of the dataset reads epoch ``first_epoch + k`` from a
        :meth:`copy_at_epoch` of this sequence, so it gives the very batches
        ``seq[i]`` gives in that epoch, and this sequence is not changed
        (NOTE [ Epochs of a tf.data dataset ] in ``_tf.py``). ``model.fit(seq)``
        calls ``on_epoch_end`` once before training, so it trains on epochs
        1, 2, ...; ``model.fit(seq.to_tf_dataset())`` on epochs 0, 1, ...:
        pass ``first_epoch=1`` to match it exactly. A sharded sequence's
        dataset is not sharded again by ``tf.distribute``. Imports TensorFlow.

        Without ``first_epoch``, the first iteration starts where this
        sequence stands: after :meth:`load_state_dict`, at the batch the
        state names (so it is shorter, and the dataset's cardinality is
        unknown); the following iterations are whole epochs.

        Args:
            first_epoch: the epoch the first iteration reads, from its first
                batch (default: this sequence's position).
            prefetch: batches to read ahead in the background; ``-1``
                (``tf.data.AUTOTUNE``) lets tf.data decide, 0 or None turns it off.

        Returns:
            A ``tf.data.Dataset`` of ``len(seq)`` batches per iteration, as
            tensors with the spec of :meth:`example_batch`.

        Raises:
            ValueError: ``first_epoch`` below 0 or ``prefetch`` below -1.
        """
        from . import _tf

        first_batch = 0
        if first_epoch is None:
            first_epoch, first_batch = self._epoch, self._start
        first_epoch = check_int(first_epoch, "first_epoch", minimum=0)
        prefetch = check_int(prefetch, "prefetch", minimum=-1, none_ok=True)

        def batches_of(epoch: int, start: int) -> Iterator[Any]:
            reader = self.copy_at_epoch(epoch, batch=start)
            try:
                for i in range(len(reader)):
                    yield reader[i]
            finally:
                reader.close()

        return _tf.epochs_dataset(
            batches_of,
            element_spec=_tf.spec_like(self.example_batch()),
            n_batches=self._n_batches,
            first_epoch=first_epoch,
            first_batch=first_batch,
            sharded=self._shard is not None,
            prefetch=prefetch,
        )

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
        what = f"split={self.split!r}" if self.split is not None else f"{len(self._selection)} rows"
        return (
            f"<H5Sequence {self.path!r} {what} batch_size={self.batch_size} "
            f"shuffle={self.shuffle!r} epoch={self._epoch} batches={len(self)}>"
        )

