"""PyTorch: a map-style dataset that reads whole batches, and a block sampler.

``import h5feed`` never imports this module; ``import h5feed.torch`` imports
PyTorch. The dataset and the sampler plan nothing themselves: rows come from
:mod:`h5feed._plan` (the same epoch permutations, blocks and shards as
:class:`~h5feed.sequence.H5Sequence`) and are read by a
:class:`~h5feed.reader.Reader` (sorted-run plans, per-process handles, safe
to pickle and to use after fork), so ``DataLoader(num_workers=N)`` works
under fork, spawn and forkserver.

The sampler yields each batch's indices with the batch's place (seed, epoch,
place in the order, shard), so a transform ``fn(X, Y, rng)`` gets the very
generator :class:`~h5feed.sequence.H5Sequence` gives the same batch
(NOTE [ Random streams ] in ``_streams.py``), and it saves and restores its
position (``state_dict``), for ``torchdata``'s ``StatefulDataLoader``
(NOTE [ Resume states ] in ``_state.py``).

Example:
    >>> from torch.utils.data import DataLoader  # doctest: +SKIP
    >>> from h5feed.torch import H5Dataset, BlockBatchSampler, collate  # doctest: +SKIP
    >>> ds = H5Dataset("data.h5", "train")  # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_sampler=BlockBatchSampler(ds, 64, seed=0),
    ...                     collate_fn=collate, num_workers=4)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import Dataset, Sampler, default_collate
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "h5feed.torch needs PyTorch: pip install \"h5feed[torch]\" (or pip install torch)"
    ) from exc

from . import _plan, _state
from ._batch import BatchMaker
from ._args import check_bool, check_int, check_shard
from ._select import (
    DEFAULT_Y,
    ColumnSpec,
    column_names,
    resolve_columns,
    resolve_sample_weight,
    select_rows,
)
from ._streams import BatchPlace
from .errors import StateMismatchError
from .layout import Layout

__all__ = ["BlockBatchSampler", "H5Dataset", "collate"]



class _Batch(list):
    """What :meth:`H5Dataset.__getitems__` returns: a list of samples (so
    ``default_collate`` works) that also carries the batch's arrays, which
    :func:`collate` turns into tensors without stacking samples again."""

    arrays: Any = None


class _PlacedBatch(list):
    """What :class:`BlockBatchSampler` yields: a batch's item indices (a list,
    as ``DataLoader`` expects) that also carries the batch's place, which
    survives pickling to a worker process."""

    place: BatchPlace | None = None


class H5Dataset(Dataset):
    """A map-style ``torch.utils.data.Dataset`` over one h5feed file.

    Item ``i`` is the ``i``-th row of the selection (the split, the ``ids``
    in their order, or the whole file). ``DataLoader`` fetches a batch with
    one :meth:`__getitems__` call, which reads each dataset with one
    sorted-run plan instead of one read per sample.

    Args:
        path: the h5feed file.
        split: a split name, or None for all rows.
        ids: sample IDs to read, in this order; exclusive with ``split``.
        x: the input dataset(s): a name, a list of names (a tuple per
            sample), or a dict ``{key: dataset_name}``.
        y: the target dataset(s), same forms; None for inputs only (samples
            are then ``x`` alone). Default ``"y"`` when the file has it.
        one_hot: one-hot float32 targets. Default False: PyTorch's losses
            take class indices (int64).
        transform: ``fn(X, Y) -> (X, Y)`` or ``fn(X, Y, rng) -> (X, Y)``
            applied to each batch of numpy arrays in the process that reads
            it (a worker); must be a module-level function under spawn.
            Without targets it gets ``Y=None``. ``rng`` is the
            ``numpy.random.Generator`` of the batch's place, which
            :class:`BlockBatchSampler` passes along (the generator
            :class:`~h5feed.sequence.H5Sequence` gives the same batch); a
            batch asked for without a place (a plain list of indices) is
            refused with such a transform.
        shard: ``(index, count)``: the default shard of a
            :class:`BlockBatchSampler` built on this dataset (the dataset
            itself keeps every row addressable, as ``DataLoader`` expects).
        allow_virtual: accept a merged file of HDF5 virtual datasets.
        sample_weight: a per-row dataset of sample weights: samples
            are then ``(x, y, w)`` and batches ``(X, Y, W)``. Needs targets.
        cache_bytes, decode_threads: decoded chunks kept and decoding
            threads, in each process that reads, as for
            :class:`~h5feed.sequence.H5Sequence`.

    Raises:
        UnknownSplitError, UnknownIDError, FormatError: from the file.
        TypeError, ValueError: an option of a wrong type or value.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str | None = None,
        *,
        ids: Sequence[str] | None = None,
        x: ColumnSpec = "x",
        y: Any = DEFAULT_Y,
        one_hot: bool = False,
        transform: Callable[..., tuple[Any, Any]] | None = None,
        shard: tuple[int, int] | None = None,
        allow_virtual: bool = False,
        sample_weight: str | None = None,
        cache_bytes: int | None = None,
        decode_threads: int | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.split = split
        one_hot = check_bool(one_hot, "one_hot")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable. Received: {transform!r}")
        self.transform = transform
        self.shard = check_shard(shard)
        self.allow_virtual = check_bool(allow_virtual, "allow_virtual")
        layout, selection = select_rows(self.path, split, ids, allow_virtual=self.allow_virtual)
        self.layout: Layout = layout
        self._selection = selection
        self._selection_name = _state.selection_name(split, ids, selection.array() if ids is not None else None)
        self.x, self.y, self.one_hot = resolve_columns(layout, x, y, bool(one_hot))
        self.sample_weight = resolve_sample_weight(layout, sample_weight, self.y)
        self._maker = BatchMaker(
            layout, self.x, self.y, one_hot=self.one_hot, transform=transform,
            sample_weight=self.sample_weight, cache_bytes=cache_bytes, decode_threads=decode_threads,
        )

    @property
    def rows(self) -> np.ndarray:
        """The file rows of items ``0..len-1`` (read-only; made on demand for all rows)."""
        return self._selection.array()

    @property
    def chunk_rows(self) -> int | None:
        """Rows per chunk of the first ``x`` dataset (None when contiguous)."""
        return self.layout.column(column_names(self.x)[0]).chunk_rows

    def __len__(self) -> int:
        return len(self._selection)

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> _Batch:
        """Items ``indices`` as a list of samples, read as one batch.

        Raises:
            IndexError: an index outside ``[-len, len)``.
            ReadError: a chunk could not be read (the message names the
                sample IDs).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self._selection)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise IndexError(f"index {int(bad[0])!r} out of range for {n} samples of {self.path}")
        rows = self._selection.rows_at(np.where(idx < 0, idx + n, idx))
        made = self._maker.make(rows, f"items {idx[:8].tolist()!r}", place=getattr(indices, "place", None))
        arrays = made[0] if self.y is None else made
        batch = _Batch(_split_rows(arrays, idx.size))
        batch.arrays = arrays
        return batch

    def close(self) -> None:
        """Close this process's file handles (safe twice; reopens on use)."""
        self._maker.close()

    def __repr__(self) -> str:
        what = f"split={self.split!r}" if self.split is not None else f"{len(self)} rows"
        return f"<H5Dataset {self.path!r} {what}>"


def _split_rows(tree: Any, n: int) -> list[Any]:
    """A batch structure of arrays -> n per-sample structures (views)."""
    if isinstance(tree, dict):
        per_key = {k: _split_rows(v, n) for k, v in tree.items()}
        return [{k: per_key[k][i] for k in tree} for i in range(n)]
    if isinstance(tree, tuple):
        parts = [_split_rows(v, n) for v in tree]
        return [tuple(p[i] for p in parts) for i in range(n)]
    return list(tree)


def _to_tensors(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_tensors(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_to_tensors(v) for v in tree)
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(tree))
    return torch.as_tensor(tree)


def collate(batch: Any) -> Any:
    """``collate_fn`` for :class:`H5Dataset`: the batch's arrays as tensors.

    A batch from :meth:`H5Dataset.__getitems__` becomes tensors that share
    the arrays' memory (no per-sample stacking); anything else goes to
    ``torch.utils.data.default_collate``. Both give the same values.
    """
    if isinstance(batch, _Batch) and batch.arrays is not None:
        return _to_tensors(batch.arrays)
    return default_collate(batch)


class BlockBatchSampler(Sampler[list[int]]):
    """Batches of item indices: the epoch orders of :class:`H5Sequence`.

    Each pass over the sampler (each ``DataLoader`` epoch) is the next
    epoch, counted when its first batch is drawn; :meth:`set_epoch` chooses
    the epoch of the next pass, as with ``DistributedSampler``. Epoch ``e`` is
    :func:`h5feed._plan.epoch_positions` of ``(seed, e)``, as for
    :class:`H5Sequence`: with ``shard=(k, n)``, shard ``k`` takes its
    consecutive, equal part of the same order, so ``n`` processes with the same seed
    visit every item exactly once per epoch (replacing
    ``DistributedSampler``). For the same seed, epoch, batch size and options
    the batches are exactly the rows ``H5Sequence`` gives, and each carries
    its place, so a transform's ``rng`` is the one ``H5Sequence`` gives too.

    The sampler saves and restores its position (:meth:`state_dict`,
    :meth:`load_state_dict`), and so does each pass (its iterator), which is
    what ``torchdata.stateful_dataloader.StatefulDataLoader`` needs to
    resume mid-epoch, with or without workers, at the exact batch.

    Args:
        data_source: an :class:`H5Dataset` (its ``shard`` and chunking give
            the defaults) or the number of items.
        batch_size: items per batch.
        shuffle: True for a full permutation each epoch; ``"block"`` for
            blocks of ``block_rows`` consecutive items mixed ``block_window``
            at a time (contiguous reads); False for item order.
        seed: the shuffling seed; every process must pass the same one.
        drop_last: drop the last short batch (and, with a shard, the last
            ``n % count`` items so all shards are equally long).
        shard: ``(index, count)``, e.g. ``(rank, world_size)``; default the
            dataset's ``shard``.
        block_rows: block size for ``"block"`` (default: the ``x`` chunk rows
            when chunked, else 64).
        block_window: blocks mixed together for ``"block"``.
    """

    def __init__(
        self,
        data_source: H5Dataset | int,
        batch_size: int,
        *,
        shuffle: bool | str = True,
        seed: int = 0,
        drop_last: bool = False,
        shard: tuple[int, int] | None = None,
        block_rows: int | None = None,
        block_window: int = 8,
    ) -> None:
        source: dict[str, Any] = {}
        if isinstance(data_source, H5Dataset):
            n = len(data_source)
            if shard is None:
                shard = data_source.shard
            if block_rows is None:
                block_rows = data_source.chunk_rows
            # A state from a sampler over another file or selection is refused.
            source = {"file": _state.file_digest(data_source.layout.completion), "selection": data_source._selection_name}
        elif isinstance(data_source, (int, np.integer)) and not isinstance(data_source, bool) and data_source >= 0:
            n = int(data_source)
        else:
            raise TypeError(f"data_source must be an H5Dataset or a count >= 0. Received: {data_source!r}")
        self.n = n
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        if shuffle not in (True, False, "block"):
            raise ValueError(f"shuffle must be True, False or 'block'. Received: {shuffle!r}")
        self.shuffle = shuffle
        self.seed = check_int(seed, "seed", minimum=0, error=TypeError)
        self.drop_last = check_bool(drop_last, "drop_last")
        self.shard = check_shard(shard)
        self.block_rows = check_int(block_rows if block_rows is not None else 64, "block_rows", minimum=1)
        self.block_window = check_int(block_window, "block_window", minimum=1)
        self.epoch = 0
        self._source = source
        self._resume_at = 0  # the batch the next pass starts from (load_state_dict)
        self._last: _Pass | None = None  # the pass drawn last

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``, from its first batch."""
        self.epoch = check_int(epoch, "epoch", minimum=0)
        self._resume_at = 0

    def _order(self, epoch: int) -> _plan.EpochOrder:
        return _plan.EpochOrder(
            self.n, shuffle=self.shuffle, seed=self.seed, epoch=epoch,
            block=self.block_rows, window=self.block_window,
            shard=self.shard, drop_remainder=self.drop_last,
        )

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The items of ``epoch`` for this shard, in batch order (before batching; O(items))."""
        return self._order(epoch).all()

    def __len__(self) -> int:
        n_items = _plan.epoch_size(self.n, shard=self.shard, drop_remainder=self.drop_last)
        return _plan.num_batches(n_items, self.batch_size, drop_remainder=self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        # The epoch is taken when the first batch is drawn, not in iter():
        # DataLoader creates (and drops unused) more than one iterator per
        # epoch when it uses worker processes.
        return _Pass(self)

    def _fingerprint(self) -> dict[str, Any]:
        fingerprint: dict[str, Any] = dict(
            self._source, items=self.n, batch_size=self.batch_size, shuffle=self.shuffle,
            drop_last=self.drop_last, shard=self.shard,
        )
        if self.shuffle == "block":
            fingerprint.update(block_rows=self.block_rows, block_window=self.block_window)
        return fingerprint

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position: the next batch it hands out, as JSON values.

        ``{"h5feed_state": 1, "kind": "BlockBatchSampler", "epoch": e,
        "batch": b, "seed": s, "fingerprint": {...}}``: batch ``b`` of epoch
        ``e`` comes next (a pass that has handed out its last batch counts
        as done: the next epoch's first batch comes next). A ``DataLoader``
        draws batches ahead of those it has returned, so a loop over a plain
        ``DataLoader`` should save ``StatefulDataLoader.state_dict()``
        instead, which holds this and the state of the pass in progress.
        """
        last = self._last
        if last is not None and last.epoch is not None and last.batch < last.n_batches:
            epoch, batch = last.epoch, last.batch
        else:
            epoch, batch = self.epoch, self._resume_at
        return _state.make_state(
            "BlockBatchSampler", epoch=epoch, batch=batch, seed=self.seed, fingerprint=self._fingerprint()
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next pass starts at its batch.

        Raises:
            StateMismatchError: the state was saved by a sampler over another
                file or selection, or with other options or another seed (the
                message names every difference), or is not a state.
        """
        epoch, batch, _ = _state.read_state(
            state, "BlockBatchSampler", fingerprint=self._fingerprint(), seed=self.seed,
            n_batches=len(self), where=repr(self),
        )
        self.epoch, self._resume_at = epoch, batch
        self._last = None

    def __repr__(self) -> str:
        return (
            f"<BlockBatchSampler {self.n} items batch_size={self.batch_size} shuffle={self.shuffle!r} "
            f"seed={self.seed} shard={self.shard!r} epoch={self.epoch}>"
        )


class _Pass:
    """One pass over a :class:`BlockBatchSampler`: one epoch's batches, in order.

    It draws its epoch (the sampler's next) when its first batch is asked
    for. Its own state (:meth:`state_dict`) is the epoch and the batches it
    handed out; ``StatefulDataLoader`` saves it beside the sampler's and, on
    resume, loads it into a new pass, which then hands out the rest of that
    epoch -- nothing, when the saved pass had handed out its last batch --
    where a pass that is not loaded starts the sampler's next epoch.
    """

    def __init__(self, sampler: BlockBatchSampler) -> None:
        self.sampler = sampler
        self.epoch: int | None = None  # drawn on the first batch (or loaded)
        self.batch = 0  # batches handed out
        self.n_batches = 0
        # Each batch's items are computed when it is drawn (NOTE [ Epoch
        # orders without a permutation array ] in _plan.py).
        self._order: _plan.EpochOrder | None = None

    def _begin(self, epoch: int, batch: int) -> None:
        sampler = self.sampler
        self.epoch, self.batch = epoch, batch
        self._order = sampler._order(epoch)
        self.n_batches = _plan.num_batches(len(self._order), sampler.batch_size, drop_remainder=sampler.drop_last)
        sampler.epoch, sampler._resume_at = epoch + 1, 0
        sampler._last = self

    def __iter__(self) -> _Pass:
        return self

    def __next__(self) -> list[int]:
        if self.epoch is None:
            self._begin(self.sampler.epoch, self.sampler._resume_at)
        if self.batch >= self.n_batches:
            raise StopIteration
        sampler, k = self.sampler, self.batch
        order: _plan.EpochOrder = self._order  # type: ignore[assignment]  # set by _begin
        batch = _PlacedBatch(order[slice(*_plan.batch_bounds(k, len(order), sampler.batch_size))].tolist())
        batch.place = BatchPlace(sampler.seed, self.epoch, k, sampler.shard)
        self.batch = k + 1
        return batch

    def state_dict(self) -> dict[str, Any] | None:
        """``{"epoch": e, "batch": b}`` once the pass has drawn its epoch, else None."""
        if self.epoch is None:
            return None
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Resume the pass a :meth:`state_dict` describes (None: start afresh)."""
        if state is None:
            return
        epoch, batch = state.get("epoch"), state.get("batch")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, batch)):
            raise StateMismatchError(
                f"{self.sampler!r}: a pass's state must hold epoch and batch >= 0. Received: {state!r}"
            )
        self._begin(epoch, batch)
