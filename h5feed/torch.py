"""PyTorch: a map-style dataset that reads whole batches, and a block sampler.

``import h5feed`` never imports this module; ``import h5feed.torch`` imports
PyTorch. The dataset and the sampler plan nothing themselves: rows come from
:mod:`h5feed._plan` (the same epoch permutations, blocks and shards as
:class:`~h5feed.sequence.H5Sequence`) and are read by a
:class:`~h5feed.reader.Reader` (sorted-run plans, per-process handles, safe
to pickle and to use after fork), so ``DataLoader(num_workers=N)`` works
under fork, spawn and forkserver.

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

from . import _plan
from ._batch import BatchMaker
from ._select import (
    DEFAULT_Y,
    ColumnSpec,
    column_names,
    resolve_columns,
    normalize_shard,
    positive_int,
    select_rows,
)
from .layout import Layout

__all__ = ["BlockBatchSampler", "H5Dataset", "collate"]



class _Batch(list):
    """What :meth:`H5Dataset.__getitems__` returns: a list of samples (so
    ``default_collate`` works) that also carries the batch's arrays, which
    :func:`collate` turns into tensors without stacking samples again."""

    arrays: Any = None


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
        transform: ``fn(X, Y) -> (X, Y)`` applied to each batch of numpy
            arrays in the process that reads it (a worker); must be a
            module-level function under spawn. Without targets it gets
            ``Y=None``.
        shard: ``(index, count)``: the default shard of a
            :class:`BlockBatchSampler` built on this dataset (the dataset
            itself keeps every row addressable, as ``DataLoader`` expects).
        allow_virtual: accept a merged file of HDF5 virtual datasets.

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
        transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        shard: tuple[int, int] | None = None,
        allow_virtual: bool = False,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.split = split
        for name, value in (("one_hot", one_hot), ("allow_virtual", allow_virtual)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool. Received: {value!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable. Received: {transform!r}")
        self.transform = transform
        self.shard = normalize_shard(shard)
        self.allow_virtual = bool(allow_virtual)
        layout, rows = select_rows(self.path, split, ids, allow_virtual=self.allow_virtual)
        self.layout: Layout = layout
        self._rows = rows
        self.x, self.y, self.one_hot = resolve_columns(layout, x, y, bool(one_hot))
        self._maker = BatchMaker(layout, self.x, self.y, one_hot=self.one_hot, transform=transform)

    @property
    def rows(self) -> np.ndarray:
        """The file rows of items ``0..len-1`` (read-only view)."""
        view = self._rows.view()
        view.flags.writeable = False
        return view

    @property
    def chunk_rows(self) -> int | None:
        """Rows per chunk of the first ``x`` dataset (None when contiguous)."""
        return self.layout.column(column_names(self.x)[0]).chunk_rows

    def __len__(self) -> int:
        return int(self._rows.size)

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
        n = self._rows.size
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise IndexError(f"index {int(bad[0])!r} out of range for {n} samples of {self.path}")
        rows = self._rows[idx]
        made = self._maker.make(rows, f"items {idx[:8].tolist()!r}")
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
    the epoch of the next pass, as with ``DistributedSampler``. Epoch ``e`` is ``_plan.epoch_order`` of
    ``(seed, e)``; with ``shard=(k, n)``, shard ``k`` takes its consecutive,
    equal part of that same order, so ``n`` processes with the same seed
    visit every item exactly once per epoch (replacing
    ``DistributedSampler``). For the same seed, epoch, batch size and options
    the batches are exactly the rows ``H5Sequence`` gives.

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
        if isinstance(data_source, H5Dataset):
            n = len(data_source)
            if shard is None:
                shard = data_source.shard
            if block_rows is None:
                block_rows = data_source.chunk_rows
        elif isinstance(data_source, (int, np.integer)) and not isinstance(data_source, bool) and data_source >= 0:
            n = int(data_source)
        else:
            raise TypeError(f"data_source must be an H5Dataset or a count >= 0. Received: {data_source!r}")
        self.n = n
        self.batch_size = positive_int(batch_size, "batch_size")
        if shuffle not in (True, False, "block"):
            raise ValueError(f"shuffle must be True, False or 'block'. Received: {shuffle!r}")
        self.shuffle = shuffle
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int. Received: {seed!r}")
        self.seed = int(seed)
        if not isinstance(drop_last, (bool, np.bool_)):
            raise TypeError(f"drop_last must be a bool. Received: {drop_last!r}")
        self.drop_last = bool(drop_last)
        self.shard = normalize_shard(shard)
        self.block_rows = positive_int(block_rows if block_rows is not None else 64, "block_rows")
        self.block_window = positive_int(block_window, "block_window")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0. Received: {epoch!r}")
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The items of ``epoch`` for this shard, in batch order (before batching)."""
        order = _plan.epoch_order(
            self.n, shuffle=self.shuffle, seed=self.seed, epoch=epoch,
            block=self.block_rows, window=self.block_window,
        )
        if self.shard is not None:
            start, stop = _plan.shard_bounds(self.n, *self.shard, drop_remainder=self.drop_last)
            order = order[start:stop]
        return order

    def _n_items(self) -> int:
        if self.shard is None:
            return self.n
        start, stop = _plan.shard_bounds(self.n, *self.shard, drop_remainder=self.drop_last)
        return stop - start

    def __len__(self) -> int:
        return _plan.num_batches(self._n_items(), self.batch_size, drop_remainder=self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        # The epoch is taken when the first batch is drawn, not in iter():
        # DataLoader creates (and drops unused) more than one iterator per
        # epoch when it uses worker processes.
        epoch = self.epoch
        self.epoch += 1
        order = self.epoch_indices(epoch)
        n_batches = _plan.num_batches(order.size, self.batch_size, drop_remainder=self.drop_last)
        for i in range(n_batches):
            yield order[slice(*_plan.batch_bounds(i, order.size, self.batch_size))].tolist()
