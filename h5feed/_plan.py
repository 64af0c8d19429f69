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
See the design note ``docs/design/reading.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Literal, Union

import numpy as np

__all__ = [
    "EpochOrder",
    "ReadPlan",
    "advice_ranges",
    "batch_bounds",
    "block_permutation",
    "epoch_order",
    "epoch_positions",
    "epoch_size",
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


# -- epoch orders -------------------------------------------------------------

_M64 = (1 << 64) - 1
# Rounds of the Feistel network: four make a keyed pseudo-random permutation
# (Luby-Rackoff); TensorFlow's and Grain's index shuffles use as many.
_ROUNDS = 4
# Epoch positions are computed (and kept) this many at a time (EpochOrder).
_PIECE = 1 << 16
PIECE = _PIECE  # positions computed at a time (EpochOrder), rows too (_select.EpochRows)
# Domains up to this size are permuted by a permutation drawn whole from a
# generator keyed like the network: a Feistel network on a few bits per half
# cannot reach every permutation evenly, and the cost of drawing is small.
_SMALL = 1 << 16
# Salts that keep the permutations of an epoch's levels apart.
_ROWS, _BLOCKS, _WINDOWS = 1, 2, 3


def _splitmix(z: int) -> int:
    """splitmix64 on a Python int: a well-mixed 64-bit function of ``z``."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping products)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _round_keys(seed: int, epoch: int, salt: int) -> list[int]:
    """The Feistel round keys of one permutation of ``(seed, epoch)``."""
    base = _splitmix(_splitmix(_splitmix(int(seed) & _M64) ^ (int(epoch) & _M64)) ^ salt)
    keys = []
    for _ in range(_ROUNDS):
        base = _splitmix(base)
        keys.append(base)
    return keys


def _permute(x: np.ndarray, n: int, keys: list[Any], *, inverse: bool = False) -> np.ndarray:
    """A keyed bijection of ``range(n)`` applied to ``x`` (values in it).

    Large domains take :func:`_feistel`; up to ``_SMALL`` values, a
    permutation drawn whole from a generator seeded with the keys. A key may
    be an int or an array with one key per element of ``x`` (elements with
    equal keys share a permutation). ``inverse`` undoes the permutation.

    Example:
        >>> keys = _round_keys(0, 0, _ROWS)
        >>> for n in (10, 100_000):
        ...     y = _permute(np.arange(n), n, keys)
        ...     assert sorted(y.tolist()) == list(range(n))
        ...     assert (_permute(y, n, keys, inverse=True) == np.arange(n)).all()
    """
    x = np.asarray(x, dtype=np.int64)
    if n <= 1 or x.size == 0:
        return x.copy()
    if n > _SMALL:
        return _feistel(x, n, keys, inverse=inverse)
    out = np.empty_like(x)
    per_element = [np.broadcast_to(np.asarray(k, dtype=np.uint64), x.shape) for k in keys]
    if all(np.ndim(k) == 0 for k in keys):
        groups = [np.arange(x.size)]
    else:
        _, first, which = np.unique(per_element[0], return_index=True, return_inverse=True)
        groups = [np.flatnonzero(which == g) for g in range(first.size)]
    for at in groups:
        seed = [int(k[at[0]]) for k in per_element]
        perm = np.random.default_rng(seed).permutation(n)
        if inverse:
            perm = np.argsort(perm)
        out[at] = perm[x[at]]
    return out


def _feistel(x: np.ndarray, n: int, keys: list[Any], *, inverse: bool = False) -> np.ndarray:
    """:func:`_permute` for large domains, evaluated for ``x`` alone.

    A balanced Feistel network on ``2h`` bits permutes ``range(4**h)``, the
    smallest power of 4 not below ``n``; values that land at or past ``n``
    are sent through it again until they land inside (cycle walking), which
    keeps it a bijection of ``range(n)`` (Black and Rogaway, "Ciphers with
    arbitrary finite domains"); TensorFlow's and Grain's index shuffles are
    built the same way.

    Example:
        >>> keys = _round_keys(0, 0, _ROWS)
        >>> y = _feistel(np.arange(10), 10, keys)
        >>> sorted(y.tolist()) == list(range(10)), _feistel(y, 10, keys, inverse=True).tolist()
        (True, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    x = np.asarray(x, dtype=np.int64)
    if n <= 1 or x.size == 0:
        return x.copy()
    h = max(1, -(-int(n - 1).bit_length() // 2))
    half = np.uint64((1 << h) - 1)
    top = np.uint64(64 - h)
    uh = np.uint64(h)
    keys_u = [np.asarray(k, dtype=np.uint64) if not isinstance(k, int) else np.uint64(k) for k in keys]
    order = keys_u[::-1] if inverse else keys_u

    def once(v: np.ndarray, ks: list[Any]) -> np.ndarray:
        left, right = v >> uh, v & half
        for k in ks:
            if inverse:
                left, right = right ^ (_mix(left ^ k) >> top), left
            else:
                left, right = right, left ^ (_mix(right ^ k) >> top)
        return (left << uh) | right

    out = once(x.astype(np.uint64), order)
    todo = np.flatnonzero(out >= np.uint64(n))
    while todo.size:
        ks = [k if np.ndim(k) == 0 else k[todo] for k in order]
        out[todo] = once(out[todo], ks)
        todo = todo[out[todo] >= np.uint64(n)]
    return out.astype(np.int64)


def _block_positions(
    p: np.ndarray, n: int, *, block: int, window: int, seed: int, epoch: int
) -> np.ndarray:
    """Where the epoch's positions ``p`` of a ``shuffle="block"`` order lead.

    The blocks of ``block`` consecutive positions (the last may be short)
    are permuted; the permuted blocks, laid end to end, are cut into windows
    of ``window`` blocks; within each window the positions are permuted. All
    three are keyed bijections evaluated for ``p`` alone.
    """
    n_blocks = -(-n // block)
    short = n_blocks * block - n  # how much shorter the last block is
    keys_b = _round_keys(seed, epoch, _BLOCKS)
    # The slot of the permuted order that the short block takes.
    star = int(_permute(np.array([n_blocks - 1]), n_blocks, keys_b, inverse=True)[0]) if short else n_blocks

    def slot_start(j: np.ndarray) -> np.ndarray:
        return j * block - np.where(j > star, short, 0)

    def slot_of(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        after = q >= star * block + (block - short)
        shifted = q + np.where(after, short, 0)
        return shifted // block, shifted % block

    j, _ = slot_of(p)
    w = j // window
    first = slot_start(w * window)
    last = np.minimum((w + 1) * window, n_blocks)
    length = np.where(last == n_blocks, n, slot_start(last)) - first
    # Each window's own permutation: round keys that depend on the window.
    base = _round_keys(seed, epoch, _WINDOWS)
    spread = w.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    keys_w = [_mix(spread ^ np.uint64(k)) for k in base]
    inner = np.empty_like(p)
    for size in np.unique(length).tolist():  # at most three window lengths
        at = np.flatnonzero(length == size)
        inner[at] = _permute(p[at] - first[at], int(size), [k[at] for k in keys_w])
    j2, offset = slot_of(first + inner)
    return _permute(j2, n_blocks, keys_b) * block + offset


def _order_of(positions: np.ndarray, n: int, shuffle: Shuffle, seed: int, epoch: int, block: int, window: int) -> np.ndarray:
    if shuffle is False:
        return positions.astype(np.int64, copy=True)
    if shuffle is True:
        return _permute(positions, n, _round_keys(seed, epoch, _ROWS))
    return _block_positions(positions, n, block=block, window=window, seed=seed, epoch=epoch)


def _check_shuffle(shuffle: Any, block: int, window: int) -> None:
    if not (shuffle is True or shuffle is False or (isinstance(shuffle, str) and shuffle == "block")):
        raise ValueError(f"shuffle must be True, False or 'block'. Received: {shuffle!r}")
    if shuffle == "block" and (block < 1 or window < 1):
        raise ValueError(f"block and window must be >= 1. Received: {block!r}, {window!r}")


class EpochOrder:
    """The positions one epoch (or one shard of it) visits, computed on demand.

    NOTE [ Epoch orders without a permutation array ]
    Drawing a permutation of ``n`` positions costs O(n) time and memory
    before the first batch. Here an epoch's order is a keyed bijection of
    ``range(n)`` (:func:`_permute`, keyed by ``(seed, epoch)``), evaluated
    only for the positions asked for: setting an epoch up costs nothing, a
    batch costs O(batch). Positions are computed a piece of ``_PIECE`` at a
    time and the last two pieces kept, so consecutive batches cost a slice.
    Every process that knows ``(seed, epoch)`` computes the same order; shard
    ``k`` of ``count`` takes its consecutive part of it (:func:`shard_bounds`).
    ``shuffle="block"`` applies the same construction to blocks and to the
    windows of blocks (:func:`_block_positions`).
    See the design note ``docs/design/scale.md``.

    Args:
        n, shuffle, seed, epoch, block, window, shard, drop_remainder: as
            :func:`epoch_positions`.

    Example:
        >>> order = EpochOrder(10, shuffle=True, seed=3, epoch=0)
        >>> len(order), sorted(order[0:10].tolist()) == list(range(10))
        (10, True)
        >>> bool((order[2:5] == epoch_positions(10, shuffle=True, seed=3, epoch=0)[2:5]).all())
        True
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: Shuffle,
        seed: int,
        epoch: int,
        block: int = 1,
        window: int = 8,
        shard: tuple[int, int] | None = None,
        drop_remainder: bool = False,
    ) -> None:
        _check_shuffle(shuffle, block, window)
        self.n = int(n)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.block = int(block)
        self.window = int(window)
        if shard is None:
            self.first, last = 0, self.n
        else:
            self.first, last = shard_bounds(self.n, *shard, drop_remainder=drop_remainder)
        self.size = last - self.first
        # The last pieces computed, as (index, positions); replaced whole,
        # so threads reading at once never see half an update.
        self._kept: tuple[tuple[int, np.ndarray], ...] = ()

    def __len__(self) -> int:
        return self.size

    def _piece(self, i: int) -> np.ndarray:
        for index, values in self._kept:
            if index == i:
                return values
        start = self.first + i * _PIECE
        stop = self.first + min(self.size, (i + 1) * _PIECE)
        values = _order_of(
            np.arange(start, stop, dtype=np.int64), self.n, self.shuffle, self.seed, self.epoch, self.block, self.window
        )
        values.flags.writeable = False  # slices of it are handed out
        self._kept = ((i, values), *self._kept[:1])
        return values

    def positions(self, start: int, stop: int) -> np.ndarray:
        """The positions at places ``start..stop-1`` of this order (clipped to it)."""
        start, stop = max(0, int(start)), min(self.size, int(stop))
        if stop <= start:
            return np.zeros(0, dtype=np.int64)
        first, last = start // _PIECE, (stop - 1) // _PIECE
        if first == last:
            base = first * _PIECE
            return self._piece(first)[start - base : stop - base]
        parts = [self._piece(i) for i in range(first, last + 1)]
        base = first * _PIECE
        return np.concatenate(parts)[start - base : stop - base]

    def __getitem__(self, where: slice) -> np.ndarray:
        if not isinstance(where, slice) or where.step not in (None, 1):
            raise TypeError(f"an epoch order is sliced with [start:stop]. Received: {where!r}")
        start, stop, _ = where.indices(self.size)
        return self.positions(start, stop)

    def all(self) -> np.ndarray:
        """Every position of this order, in order (O(n): for tests and inspection)."""
        out = _order_of(
            np.arange(self.first, self.first + self.size, dtype=np.int64),
            self.n, self.shuffle, self.seed, self.epoch, self.block, self.window,
        )
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_kept"] = ()
        return state


def block_permutation(
    n: int, *, block: int, window: int, seed: int, epoch: int
) -> np.ndarray:
    """A quasi-random order of ``range(n)`` that keeps reads contiguous.

    Positions are cut into blocks of ``block`` consecutive positions; the
    blocks are permuted, then taken ``window`` at a time, and the positions
    inside each window are permuted. A batch then draws from at most
    ``window`` blocks (two windows' worth when it straddles them: few spans,
    few chunks), yet the epoch order is well mixed. Each position appears
    exactly once.

    Example:
        >>> p = block_permutation(10, block=3, window=2, seed=0, epoch=0)
        >>> sorted(p.tolist()) == list(range(10))
        True
    """
    return EpochOrder(n, shuffle="block", seed=seed, epoch=epoch, block=block, window=window).all()


def epoch_order(
    n: int,
    *,
    shuffle: Shuffle,
    seed: int,
    epoch: int,
    block: int = 1,
    window: int = 8,
) -> np.ndarray:
    """The order in which an epoch visits positions ``0..n-1`` (all of it at once).

    Depends only on its arguments, so every process (and every shard) that
    knows ``(seed, epoch)`` computes the same order. Readers use
    :class:`EpochOrder`, which computes the same order a slice at a time.

    Args:
        n: how many positions.
        shuffle: False for ``0..n-1``; True for a keyed pseudo-random
            permutation (NOTE [ Epoch orders without a permutation array ]);
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
    return EpochOrder(n, shuffle=shuffle, seed=seed, epoch=epoch, block=block, window=window).all()


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


def epoch_positions(
    n: int,
    *,
    shuffle: Shuffle,
    seed: int,
    epoch: int,
    block: int = 1,
    window: int = 8,
    shard: tuple[int, int] | None = None,
    drop_remainder: bool = False,
) -> np.ndarray:
    """The positions ``0..n-1`` that one shard visits in an epoch, in order.

    The one definition of an epoch's order that :class:`~h5feed.H5Sequence`
    and the PyTorch sampler share: the :func:`epoch_order` of ``(seed,
    epoch)``, then, with ``shard=(index, count)``, that shard's consecutive
    part of it (:func:`shard_bounds`). Every shard computes the same order,
    so together the shards visit each position exactly once per epoch (with
    ``drop_remainder``, each shard gets ``n // count`` positions and the last
    ``n % count`` of the order are left out). Without a shard,
    ``drop_remainder`` changes nothing here: the last short batch is the
    batching's to drop.

    Args:
        n: how many positions.
        shuffle, seed, epoch, block, window: as :func:`epoch_order`.
        shard: ``(index, count)``, or None for the whole epoch.
        drop_remainder: equal shards (see above).

    Returns:
        The positions, int64, :func:`epoch_size` of them.

    Example:
        >>> epoch_positions(10, shuffle=False, seed=0, epoch=0, shard=(1, 3)).tolist()
        [4, 5, 6]
        >>> parts = [epoch_positions(10, shuffle=True, seed=7, epoch=2, shard=(k, 3)) for k in range(3)]
        >>> sorted(np.concatenate(parts).tolist()) == list(range(10))
        True
    """
    return EpochOrder(
        n, shuffle=shuffle, seed=seed, epoch=epoch, block=block, window=window,
        shard=shard, drop_remainder=drop_remainder,
    ).all()


def epoch_size(n: int, *, shard: tuple[int, int] | None = None, drop_remainder: bool = False) -> int:
    """How many positions :func:`epoch_positions` gives, without drawing the order.

    Example:
        >>> epoch_size(10, shard=(0, 3)), epoch_size(10, shard=(0, 3), drop_remainder=True), epoch_size(10)
        (4, 3, 10)
    """
    if shard is None:
        return n
    start, stop = shard_bounds(n, *shard, drop_remainder=drop_remainder)
    return stop - start


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
