"""Pure index planning: which rows, in which order, read how.

Nothing here does I/O; everything takes and returns numpy arrays, so each
function is tested on its own with seeded random input (tests/test_plan.py).

NOTE [ Read plans ]
A batch asks for rows in an arbitrary order (a shuffled epoch, or the order a
user's ``ids`` list gives). Reading them one by one costs one library call per
row; h5py fancy indexing (``dset[sorted_rows]``) is slower still because HDF5
builds a point selection. So a batch is planned as:

1. the distinct rows, sorted (``np.unique``), with ``inverse`` mapping each
   requested position back to its distinct row;
2. the sorted rows merged into *spans*: maximal runs of consecutive rows, and
   for chunked data also every row that shares a chunk with the span, so a
   chunk is decompressed once per batch at most;
3. ``take``: where each distinct row sits in the concatenated spans (None when
   the spans hold exactly the distinct rows, i.e. pure runs).

The reader reads each span as one slice into one buffer, then applies
``take`` and ``inverse`` (each skipped when it is the identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Literal, Union

import numpy as np

__all__ = [
    "ReadPlan",
    "advice_ranges",
    "batch_bounds",
    "block_permutation",
    "epoch_order",
    "num_batches",
    "plan_reads",
    "shard_bounds",
    "shard_of_keys",
    "span_advice_ranges",
]

Shuffle = Union[bool, Literal["block"]]


@dataclass(frozen=True)
class ReadPlan:
    """How to read one batch.

    Attributes:
        starts: first row of each span, ascending (int64).
        stops: one past the last row of each span (int64).
        take: positions, in the concatenated spans, of the distinct rows in
            ascending order; None when the spans are exactly those rows.
        inverse: for each requested position, its index among the distinct
            rows; None when the request was already sorted and distinct.
    """

    starts: np.ndarray
    stops: np.ndarray
    take: np.ndarray | None
    inverse: np.ndarray | None

    @property
    def n_spans(self) -> int:
        return int(self.starts.size)

    @property
    def span_rows(self) -> int:
        """Rows read in all (at least the distinct rows asked for)."""
        return int((self.stops - self.starts).sum())


def plan_reads(rows: np.ndarray, *, chunk_rows: int | None = None) -> ReadPlan:
    """Plan the reads of ``rows``: sorted spans plus the way back.

    Args:
        rows: the requested row numbers, any order, repeats allowed.
        chunk_rows: rows per chunk for chunked data; spans then also merge
            rows that share a chunk. None for contiguous data.

    Returns:
        A :class:`ReadPlan` with the fewest spans that cover the rows
        (runs of consecutive rows, and rows sharing a chunk when given).

    Example:
        >>> p = plan_reads(np.array([7, 3, 4, 5, 9]))
        >>> p.starts.tolist(), p.stops.tolist()
        ([3, 7, 9], [6, 8, 10])
        >>> p.take is None, p.inverse.tolist()
        (True, [3, 0, 1, 2, 4])
        >>> plan_reads(np.array([1, 6, 9]), chunk_rows=8).starts.tolist()
        [1, 9]
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ReadPlan(empty, empty, None, None)
    if rows.size == 1 or bool(np.all(rows[1:] > rows[:-1])):
        uniq, inverse = rows, None
    else:
        uniq, inv = np.unique(rows, return_inverse=True)
        inverse = inv.reshape(-1).astype(np.int64, copy=False)
    # A new span starts where the next distinct row is not the next row
    # (and, for chunked data, not in the same chunk either).
    breaks = uniq[1:] != uniq[:-1] + 1
    if chunk_rows is not None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1. Received: {chunk_rows!r}")
        chunk = uniq // chunk_rows
        breaks &= chunk[1:] != chunk[:-1]
    first = np.concatenate(([0], np.flatnonzero(breaks) + 1))
    last = np.concatenate((first[1:], [uniq.size])) - 1
    starts = uniq[first]
    stops = uniq[last] + 1
    take = None
    if int((stops - starts).sum()) != uniq.size:
        # Offsets of each span in the concatenated buffer, then each row's
        # distance from its span's start.
        offsets = np.concatenate(([0], np.cumsum(stops - starts)[:-1]))
        span_of_row = np.repeat(np.arange(starts.size), last - first + 1)
        take = offsets[span_of_row] + (uniq - starts[span_of_row])
    return ReadPlan(starts, stops, take, inverse)


def advice_ranges(
    rows: np.ndarray, *, row_nbytes: int, first_byte: int, page: int = 4096, most: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Page-aligned byte ranges that cover ``rows`` of a contiguous dataset.

    For read-ahead advice (``madvise``/``posix_fadvise``): the runs of
    consecutive rows, as byte ranges widened to whole pages, with ranges that
    touch or overlap after widening merged into one.

    Args:
        rows: row numbers, any order, repeats allowed.
        row_nbytes: bytes per row.
        first_byte: where row 0 starts (the dataset's offset in the mapping).
        page: the page size the ranges are aligned to.
        most: cut longer ranges into consecutive pieces of at most this
            many bytes (a multiple of ``page``): the kernel reads at most
            a device-dependent amount per advice call (NOTE [ Cold cache ]
            in ``reader.py``). None: no cut.

    Returns:
        ``(starts, lengths)`` in bytes, ascending, non-overlapping (int64).

    Example:
        >>> s, n = advice_ranges(np.array([9, 0, 1]), row_nbytes=1000, first_byte=100)
        >>> s.tolist(), n.tolist()
        ([0, 8192], [4096, 4096])
    """
    plan = plan_reads(rows)
    return span_advice_ranges(
        plan.starts, plan.stops, row_nbytes=row_nbytes, first_byte=first_byte, page=page, most=most
    )


def span_advice_ranges(
    starts: np.ndarray,
    stops: np.ndarray,
    *,
    row_nbytes: int,
    first_byte: int,
    page: int = 4096,
    most: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`advice_ranges` of the rows ``starts[i] <= row < stops[i]``.

    The spans ascending and not overlapping (as :func:`plan_reads` gives
    them); empty spans are dropped.

    Example:
        >>> s, n = span_advice_ranges(np.array([0, 9]), np.array([2, 10]), row_nbytes=1000, first_byte=100)
        >>> s.tolist(), n.tolist()
        ([0, 8192], [4096, 4096])
    """
    if row_nbytes < 1 or page < 1 or first_byte < 0:
        raise ValueError(
            f"row_nbytes and page must be >= 1, first_byte >= 0. "
            f"Received: {row_nbytes!r}, {page!r}, {first_byte!r}"
        )
    if most is not None and (most < page or most % page):
        raise ValueError(f"most must be a positive multiple of page ({page}). Received: {most!r}")
    starts = np.asarray(starts, dtype=np.int64)
    stops = np.asarray(stops, dtype=np.int64)
    keep = stops > starts
    if not keep.all():
        starts, stops = starts[keep], stops[keep]
    if starts.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    begin = first_byte + starts * row_nbytes
    end = first_byte + stops * row_nbytes
    begin -= begin % page
    end += -end % page
    # After widening, a range may reach into the next one's first page.
    new = np.concatenate(([True], begin[1:] > end[:-1]))
    first = np.flatnonzero(new)
    last = np.concatenate((first[1:], [begin.size])) - 1
    starts = begin[first]
    lengths = end[last] - starts
    if most is None or not (lengths > most).any():
        return starts, lengths
    pieces = -(-lengths // most)
    offsets = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    cut_starts = np.repeat(starts, pieces) + offsets * most
    cut_ends = np.minimum(cut_starts + most, np.repeat(starts + lengths, pieces))
    return cut_starts, cut_ends - cut_starts


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch)])


def block_permutation(
    n: int, *, block: int, window: int, seed: int, epoch: int
) -> np.ndarray:
    """A quasi-random order of ``range(n)`` that keeps reads contiguous.

    Positions are cut into blocks of ``block`` consecutive positions; the
    blocks are permuted, then taken ``window`` at a time, and the positions
    inside each window are shuffled. A batch then draws from at most
    ``window`` blocks (few spans, few chunks), yet the epoch order is well
    mixed. Each position appears exactly once.

    Example:
        >>> p = block_permutation(10, block=3, window=2, seed=0, epoch=0)
        >>> sorted(p.tolist()) == list(range(10))
        True
    """
    if block < 1 or window < 1:
        raise ValueError(f"block and window must be >= 1. Received: {block!r}, {window!r}")
    rng = _rng(seed, epoch)
    n_blocks = -(-n // block)
    block_order = rng.permutation(n_blocks)
    starts = block_order * block
    lengths = np.minimum(starts + block, n) - starts
    # Positions of the permuted blocks, laid end to end.
    order = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    order += np.arange(n)
    # Shuffle within each window of `window` blocks.
    window_len = np.add.reduceat(lengths, np.arange(0, n_blocks, window)) if n_blocks else lengths
    out = np.empty_like(order)
    pos = 0
    for w in window_len.tolist():
        out[pos : pos + w] = rng.permutation(order[pos : pos + w])
        pos += w
    return out


def epoch_order(
    n: int,
    *,
    shuffle: Shuffle,
    seed: int,
    epoch: int,
    block: int = 1,
    window: int = 8,
) -> np.ndarray:
    """The order in which an epoch visits positions ``0..n-1``.

    Depends only on its arguments, so every process (and every shard) that
    knows ``(seed, epoch)`` computes the same order.

    Args:
        n: how many positions.
        shuffle: False for ``0..n-1``; True for a full permutation;
            ``"block"`` for :func:`block_permutation`.
        seed: the shuffling seed.
        epoch: the epoch number (0-based).
        block: positions per block for ``"block"``.
        window: blocks mixed together for ``"block"``.

    Example:
        >>> epoch_order(5, shuffle=False, seed=0, epoch=3).tolist()
        [0, 1, 2, 3, 4]
        >>> a = epoch_order(5, shuffle=True, seed=1, epoch=0)
        >>> b = epoch_order(5, shuffle=True, seed=1, epoch=0)
        >>> bool((a == b).all())
        True
    """
    if shuffle is False:
        return np.arange(n, dtype=np.int64)
    if shuffle is True:
        return _rng(seed, epoch).permutation(n).astype(np.int64, copy=False)
    if shuffle == "block":
        return block_permutation(n, block=block, window=window, seed=seed, epoch=epoch)
    raise ValueError(f"shuffle must be True, False or 'block'. Received: {shuffle!r}")


def shard_bounds(n: int, index: int, count: int, *, drop_remainder: bool) -> tuple[int, int]:
    """The slice ``[start, stop)`` of an epoch order that shard ``index`` takes.

    Shards take consecutive, equal parts of the same epoch order. With
    ``drop_remainder`` every shard gets ``n // count`` positions and the
    last ``n % count`` are left out; without it the first ``n % count``
    shards get one more.

    Example:
        >>> [shard_bounds(10, k, 3, drop_remainder=False) for k in range(3)]
        [(0, 4), (4, 7), (7, 10)]
        >>> [shard_bounds(10, k, 3, drop_remainder=True) for k in range(3)]
        [(0, 3), (3, 6), (6, 9)]
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count. Received: {(index, count)!r}")
    base, extra = divmod(n, count)
    if drop_remainder:
        return index * base, (index + 1) * base
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def num_batches(n: int, batch_size: int, *, drop_remainder: bool) -> int:
    """ceil(n / batch_size), or floor with ``drop_remainder``.

    Example:
        >>> num_batches(10, 4, drop_remainder=False), num_batches(10, 4, drop_remainder=True)
        (3, 2)
    """
    return n // batch_size if drop_remainder else -(-n // batch_size)


def batch_bounds(index: int, n: int, batch_size: int) -> tuple[int, int]:
    """The positions ``[start, stop)`` of batch ``index`` (the last may be short)."""
    start = index * batch_size
    return start, min(n, start + batch_size)


def shard_of_keys(keys: Sequence[str], index: int, count: int) -> np.ndarray:
    """Positions of the items in part ``index`` of ``count`` of a listing.

    The listing is split by the sorted order of ``keys`` (sample IDs) into
    ``count`` consecutive parts as :func:`shard_bounds` cuts them (the first
    ``len % count`` parts one longer), so every machine that lists the same
    source computes the same parts whatever order it lists in, and the parts
    together hold every item exactly once.

    Returns:
        The positions in ``keys`` of part ``index``, ascending (the listing's
        own order).

    Example:
        >>> shard_of_keys(["d", "a", "c", "b", "e"], 0, 2).tolist()
        [1, 2, 3]
        >>> shard_of_keys(["d", "a", "c", "b", "e"], 1, 2).tolist()
        [0, 4]
    """
    by_key = np.argsort(np.asarray(list(keys), dtype=object), kind="stable")
    start, stop = shard_bounds(by_key.size, index, count, drop_remainder=False)
    return np.sort(by_key[start:stop]).astype(np.int64)
