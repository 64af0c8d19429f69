"""Chunked datasets read outside HDF5's lock: decoding threads and a cache.

NOTE [ Decoding chunks ]
h5py holds one global lock for every HDF5 call, and HDF5 decompresses a
chunk inside the call that reads it: through HDF5, decompression never uses
a second core, and a batch that needs eight chunks decompresses them one
after another. So the reader asks HDF5 only where a chunk lies (its file
offset, stored size and filter mask, kept per chunk), reads the stored bytes
itself (``os.pread``) and decodes them with :mod:`h5feed._codecs` in a small
pool of threads (``decode_threads``), whose codecs release the GIL. Each
chunk a batch touches is decoded once, whole, and its rows are copied into
the batch.

NOTE [ The chunk cache ]
A :class:`ChunkCache` keeps decoded chunks for the batches that follow, up to
``cache_bytes`` in all. Each dataset's chunks live in slots of one buffer
(an arena: an anonymous memory map, touched only where slots are used), so a
batch whose chunks are all cached is one ``numpy.take`` from the arena, as
from a memory-mapped file. When the budget is full, the chunk used longest
ago that no reader holds gives up its slot (its pages are handed back to the
system when another dataset takes the room). A block-shuffled epoch takes its
batches from a few chunks at a time, so it decodes each chunk once; a fully
shuffled epoch of a file whose decoded size fits the budget does too, and the
epochs after it decode nothing. Two threads that want the same chunk wait
for one decoding of it; a reader holds the slots of its batch until it has
copied its rows. A chunk for which no slot is free (a budget smaller than
what a batch touches) is decoded into a buffer of its own, at most
``2 * decode_threads`` of them at a time per reading thread.

A pipeline that :mod:`h5feed._codecs` does not decode, a chunk that it
rejects (a failed checksum, a damaged stream, a file that ends early) and a
chunk that was never written are read through HDF5 instead, under the
reader's lock: HDF5 either reads it (the same bytes) or fails, and the
failure is named as for any read (``h5feed/_damage.py``), so a damaged chunk
gives the same :class:`~h5feed.errors.ReadError` naming its rows.
``decode_threads=0`` leaves every chunk to HDF5, as h5feed 0.1 did.
See the design note ``docs/design/chunks.md``.
"""

from __future__ import annotations

import collections
import logging
import mmap
import os
import threading
from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._codecs import ChunkError, Pipeline, pipeline_of
from ._damage import read_error
from ._proc import this_pid

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "CacheStats",
    "ChunkCache",
    "ChunkedColumn",
    "default_decode_threads",
]

logger = logging.getLogger("h5feed")

# Decoded chunks kept per process by default: a file of up to this size is
# decoded once, then served from memory, whatever the shuffle.
DEFAULT_CACHE_BYTES = 256 << 20
# Decoding threads per process by default (at most one per core).
MAX_DEFAULT_THREADS = 4

_CAN_RELEASE = hasattr(mmap.mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED")
_PRIVATE = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}


def default_decode_threads() -> int:
    """One decoding thread per core this process may run on, at most four."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores))


class ChunkedColumn:
    """Whole chunks of one chunked dataset of one file, in this process.

    Args:
        path: the file.
        dset: the open h5py dataset; used only under ``lock``.
        lock: the reader's lock, held for every HDF5 call.

    Reads stored chunks through a descriptor of its own, closed when the
    column is dropped (a decoding still running keeps it, so the number is
    never reused under it). Holds no reference to its reader, so that a
    dropped reader closes its file at once.
    """

    def __init__(self, path: str, dset: Any, lock: threading.Lock) -> None:
        self.path = path
        self._dset = dset
        self._lock = lock
        self._fd = os.open(path, os.O_RDONLY)
        self._owner = this_pid()
        self.pipeline: Pipeline = pipeline_of(dset)
        self.chunk_rows = int(dset.chunks[0])
        self.n_rows = int(dset.shape[0])
        self.n_chunks = -(-self.n_rows // self.chunk_rows)
        self.row_shape = tuple(int(d) for d in dset.shape[1:])
        self.out_dtype = np.dtype(dset.dtype).newbyteorder("=")
        self._where: dict[int, tuple[int, int, int] | None] = {}

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None and self._owner == this_pid():
            os.close(fd)

    def _locate(self, chunk: int) -> tuple[int, int, int] | None:
        """``(file offset, stored size, filter mask)`` of ``chunk``; None when
        it was never written (HDF5 then reads its fill value)."""
        where = self._where.get(chunk, False)
        if where is False:
            coord = (chunk * self.chunk_rows,) + (0,) * len(self.row_shape)
            with self._lock:
                info = self._dset.id.get_chunk_info_by_coord(coord)
            where = None if info.byte_offset is None else (int(info.byte_offset), int(info.size), int(info.filter_mask))
            self._where[chunk] = where
        return where  # type: ignore[return-value]

    def load(self, chunk: int, out: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``chunk`` decoded, shape ``(chunk_rows, *row_shape)``; runs in any thread.

        ``out``: an array of that shape and :attr:`out_dtype` to decode into.

        Raises:
            ReadError: HDF5 cannot read it either; names its rows.
        """
        if self.pipeline.decodable:
            where = self._locate(chunk)
            if where is not None:
                offset, size, mask = where
                in_place = out if self.pipeline.dtype == self.out_dtype else None
                try:
                    raw = os.pread(self._fd, size, offset)
                    if len(raw) != size:
                        raise ChunkError(f"the file ends inside the chunk at byte {offset}")
                    decoded = self.pipeline.decode(raw, mask, in_place)
                except (ChunkError, OSError) as exc:
                    # HDF5 decides: it reads the chunk or names the damage.
                    logger.debug("%s:%s chunk %d: %s; reading it through HDF5", self.path, self._dset.name, chunk, exc)
                else:
                    if out is not None and decoded is not out:
                        out[...] = decoded  # to the native byte order
                    return decoded if out is None else out
        return self._through_hdf5(chunk, out)

    def _through_hdf5(self, chunk: int, out: np.ndarray | None = None) -> np.ndarray:
        first = chunk * self.chunk_rows
        stop = min(self.n_rows, first + self.chunk_rows)
        if out is None:
            out = np.empty((self.chunk_rows, *self.row_shape), dtype=self.out_dtype)
        with self._lock:
            dset = self._dset
            try:
                dset.read_direct(out, np.s_[first:stop], np.s_[0 : stop - first])
            except OSError as exc:
                raise read_error(self.path, dset, first, stop, exc) from exc
        return out


@dataclass(frozen=True)
class CacheStats:
    """What a :class:`ChunkCache` did in this process.

    Attributes:
        decoded: chunks decoded (each decoding once, however many waited).
        evicted: chunks dropped to stay within the budget.
        nbytes: bytes of slots in use now (chunks held and being decoded).
        peak_nbytes: the most ever in use at once.
    """

    decoded: int
    evicted: int
    nbytes: int
    peak_nbytes: int


# Slot states.
_FREE, _LOADING, _HELD, _FAILED = 0, 1, 2, 3


class _Arena:
    """The cached chunks of one dataset: slot ``s`` holds rows
    ``s * chunk_rows`` to ``(s + 1) * chunk_rows`` of :attr:`rows`."""

    def __init__(self, column: ChunkedColumn, n_slots: int) -> None:
        self.chunk_rows = column.chunk_rows
        row_elems = int(np.prod(column.row_shape, dtype=np.int64))
        self.slot_nbytes = self.chunk_rows * row_elems * column.out_dtype.itemsize
        self.n_slots = n_slots
        # Private anonymous memory: the system provides pages as slots are
        # written and takes back those of a slot given up (release()); a
        # forked child gets copies on write, never the parent's pages.
        self._map = mmap.mmap(-1, max(1, n_slots * self.slot_nbytes), **_PRIVATE)
        self.rows = np.frombuffer(
            self._map, dtype=column.out_dtype, count=n_slots * self.chunk_rows * row_elems
        ).reshape(n_slots * self.chunk_rows, *column.row_shape)
        self.slot_of = np.full(column.n_chunks, -1, dtype=np.int64)  # chunk -> slot, when held
        self.chunk_in = np.full(n_slots, -1, dtype=np.int64)  # slot -> chunk
        self.state = np.zeros(n_slots, dtype=np.int8)
        self.last = np.zeros(n_slots, dtype=np.int64)  # when last used
        self.pins = np.zeros(n_slots, dtype=np.int64)  # readers holding the slot

    def slot_view(self, slot: int) -> np.ndarray:
        return self.rows[slot * self.chunk_rows : (slot + 1) * self.chunk_rows]

    def release(self, slot: int) -> None:
        """Hand the whole pages of ``slot`` back to the system."""
        if not _CAN_RELEASE:
            return
        page = mmap.PAGESIZE
        start = -(-slot * self.slot_nbytes // page) * page
        end = (slot + 1) * self.slot_nbytes // page * page
        if end > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)


class _State:
    """A :class:`ChunkCache` in one process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arenas: dict[Hashable, _Arena | None] = {}
        self.loading: dict[tuple[Hashable, int], tuple[Future[Any], int]] = {}
        # Decodings done, not yet entered in the books: the decoding thread
        # only appends here (deque appends are atomic), and whoever takes
        # the lock next enters them (ChunkCache._enter_landed). A decoding
        # thread that waited for the lock instead sat idle while a batch
        # was gathered under it.
        self.landed: collections.deque[tuple[Hashable, _Arena, int, int, Future[Any]]] = collections.deque()
        self.pool: ThreadPoolExecutor | None = None
        self.tick = 0
        self.nbytes = self.peak = self.decoded = self.evicted = 0


class ChunkCache:
    """Decoded chunks of one process, up to ``budget`` bytes, and the threads
    that decode them (NOTE [ Decoding chunks ], NOTE [ The chunk cache ]).

    Shared by the readers of one file (a merged file's parts too); a
    dataset's key names its file and its name. After a fork the child starts
    empty, with threads of its own. Pickles as its settings only.

    Args:
        budget: bytes of decoded chunks to keep; below one chunk keeps none
            (each batch still decodes each of its chunks once).
        threads: decoding threads (at least 1).
    """

    def __init__(self, budget: int = DEFAULT_CACHE_BYTES, threads: int = 1) -> None:
        self.budget = int(budget)
        self.threads = max(1, int(threads))
        self._pid = -1
        self._s = _State()

    def _state(self) -> _State:
        if self._pid != this_pid():
            # A fork's child: the parent's threads and locks are not ours.
            self._pid = this_pid()
            self._s = _State()
        return self._s

    def read(self, key: Hashable, column: ChunkedColumn, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (checked int64) of ``column`` into ``out``, through the cache.

        Raises:
            ReadError: a chunk cannot be read (from :meth:`ChunkedColumn.load`).
        """
        s = self._s if self._pid == this_pid() else self._state()
        R = column.chunk_rows
        chunks, local = np.divmod(rows, R)
        with s.lock:
            if s.landed:
                self._enter_landed(s)
            arena = s.arenas.get(key, False)
            if arena is False:
                arena = s.arenas[key] = self._new_arena(column)
            s.tick += 1
            if arena is not None and rows.size:
                slots = arena.slot_of[chunks]
                if slots.min() >= 0:
                    # Every chunk held: one gather, under the lock, so no
                    # slot changes meanwhile.
                    arena.last[slots] = s.tick
                    slots *= R
                    slots += local
                    np.take(arena.rows, slots, axis=0, out=out, mode="clip")
                    return out
            return self._read_slow(s, key, column, arena, chunks, local, out)

    def prefetch(self, key: Hashable, column: ChunkedColumn, rows: np.ndarray) -> None:
        """Start decoding the chunks of ``rows`` that are neither held nor
        being decoded, into free room or the slots used longest ago; return
        at once (NOTE [ Decoding ahead ] in ``sequence.py``)."""
        s = self._state()
        chunks = np.unique(rows // column.chunk_rows)
        started: list[tuple[Future[Any], int, int]] = []
        with s.lock:
            self._enter_landed(s)
            arena = s.arenas.get(key, False)
            if arena is False:
                arena = s.arenas[key] = self._new_arena(column)
            if arena is None:
                return
            for chunk in chunks[arena.slot_of[chunks] < 0].tolist():
                if (key, chunk) in s.loading:
                    continue
                slot = self._reserve(s, arena)
                if slot < 0:
                    break
                future = self._pool(s).submit(_load_into, column, chunk, arena, slot)
                s.loading[(key, chunk)] = (future, slot)
                s.decoded += 1
                started.append((future, chunk, slot))
        self._on_landing(s, key, arena, started)

    def _read_slow(
        self,
        s: _State,
        key: Hashable,
        column: ChunkedColumn,
        arena: _Arena | None,
        chunks: np.ndarray,
        local: np.ndarray,
        out: np.ndarray,
    ) -> np.ndarray:
        """:meth:`read` for a batch with chunks to decode; called under the
        lock, which it releases while it waits for them."""
        uniq = np.unique(chunks)
        slot_of = np.full(uniq.size, -1, dtype=np.int64)
        waits: list[Future[Any]] = []
        started: list[tuple[Future[Any], int, int]] = []
        own: list[int] = []  # chunks that get no slot: decoded into buffers of their own
        pinned: list[int] = []
        for i, chunk in enumerate(uniq.tolist()):
            slot = -1 if arena is None else int(arena.slot_of[chunk])
            if slot >= 0:
                arena.last[slot] = s.tick  # type: ignore[union-attr]
            else:
                loading = s.loading.get((key, chunk))
                if loading is not None:
                    future, slot = loading
                else:
                    slot = self._reserve(s, arena)
                    if slot < 0:
                        own.append(chunk)
                        continue
                    future = self._pool(s).submit(_load_into, column, chunk, arena, slot)
                    s.loading[(key, chunk)] = (future, slot)
                    s.decoded += 1
                    started.append((future, chunk, slot))
                waits.append(future)
            arena.pins[slot] += 1  # type: ignore[union-attr]
            pinned.append(slot)
            slot_of[i] = slot
        future = None  # no future named by this frame (see _wait)
        s.lock.release()
        try:
            # Outside the lock: a future already done calls back at once.
            self._on_landing(s, key, arena, started)
            started.clear()
            if own:
                self._read_own(s, column, own, chunks, local, out)
            while waits:
                _wait(waits.pop())
            held = slot_of[np.searchsorted(uniq, chunks)]
            mine = held >= 0
            if mine.all():
                np.take(arena.rows, held * column.chunk_rows + local, axis=0, out=out, mode="clip")  # type: ignore[union-attr]
            elif mine.any():
                out[mine] = arena.rows[held[mine] * column.chunk_rows + local[mine]]  # type: ignore[union-attr]
            return out
        finally:
            s.lock.acquire()
            self._enter_landed(s)
            for slot in pinned:
                arena.pins[slot] -= 1  # type: ignore[union-attr]
                if arena.pins[slot] == 0 and arena.state[slot] == _FAILED:  # type: ignore[union-attr]
                    self._free(s, arena, slot)  # type: ignore[arg-type]

    def _on_landing(
        self, s: _State, key: Hashable, arena: _Arena | None, started: list[tuple[Future[Any], int, int]]
    ) -> None:
        for future, chunk, slot in started:
            future.add_done_callback(lambda done, c=chunk, slot=slot: s.landed.append((key, arena, c, slot, done)))

    def _read_own(
        self, s: _State, column: ChunkedColumn, own: list[int], chunks: np.ndarray, local: np.ndarray, out: np.ndarray
    ) -> None:
        """Decode chunks that get no slot, a few at a time, and copy their rows."""
        window = 2 * self.threads
        pending: collections.deque[tuple[int, Future[np.ndarray]]] = collections.deque()
        with s.lock:
            pool = self._pool(s)
            s.decoded += len(own)
        for i, chunk in enumerate(own):
            pending.append((chunk, pool.submit(column.load, chunk)))
            while pending and (len(pending) >= window or i == len(own) - 1):
                done_chunk = pending[0][0]
                at = np.flatnonzero(chunks == done_chunk)
                out[at] = _wait(pending.popleft()[1])[local[at]]

    def _new_arena(self, column: ChunkedColumn) -> _Arena | None:
        row_elems = int(np.prod(column.row_shape, dtype=np.int64))
        slot_nbytes = column.chunk_rows * row_elems * column.out_dtype.itemsize
        if slot_nbytes == 0 or self.budget < slot_nbytes:
            return None
        return _Arena(column, min(column.n_chunks, self.budget // slot_nbytes))

    def _pool(self, s: _State) -> ThreadPoolExecutor:
        if s.pool is None:
            s.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="h5feed-decode")
        return s.pool

    def _reserve(self, s: _State, arena: _Arena | None) -> int:
        """A free slot of ``arena`` for a chunk to be decoded into, within the
        budget, pinned and marked loading; -1 when none can be had."""
        if arena is None:
            return -1
        while True:
            free = np.flatnonzero(arena.state == _FREE)
            if free.size and s.nbytes + arena.slot_nbytes <= self.budget:
                break
            # Room in the budget but none in this arena: give up one of its own.
            if not self._evict(s, arena if free.size == 0 else None, arena):
                return -1
        slot = int(free[0])
        arena.state[slot] = _LOADING
        s.nbytes += arena.slot_nbytes
        s.peak = max(s.peak, s.nbytes)
        return slot

    def _evict(self, s: _State, only: _Arena | None, taker: _Arena) -> bool:
        """Give up the held, unpinned chunk used longest ago (of ``only``, or of
        any arena); False when every chunk is pinned or loading."""
        best: tuple[int, _Arena, int] | None = None
        for arena in [only] if only is not None else [a for a in s.arenas.values() if a is not None]:
            idle = np.flatnonzero((arena.state == _HELD) & (arena.pins == 0))
            if idle.size:
                slot = int(idle[np.argmin(arena.last[idle])])
                if best is None or arena.last[slot] < best[0]:
                    best = (int(arena.last[slot]), arena, slot)
        if best is None:
            return False
        _, arena, slot = best
        arena.slot_of[arena.chunk_in[slot]] = -1
        self._free(s, arena, slot)
        s.evicted += 1
        if arena is not taker:
            arena.release(slot)  # the room goes to another dataset
        return True

    def _free(self, s: _State, arena: _Arena, slot: int) -> None:
        arena.chunk_in[slot] = -1
        arena.state[slot] = _FREE
        s.nbytes -= arena.slot_nbytes

    def _enter_landed(self, s: _State) -> None:
        """Enter the decodings done since (``_State.landed``); under the lock."""
        while s.landed:
            key, arena, chunk, slot, future = s.landed.popleft()
            s.loading.pop((key, chunk), None)
            if future.cancelled() or future.exception() is not None:
                arena.state[slot] = _FAILED
                if arena.pins[slot] == 0:
                    self._free(s, arena, slot)
                continue
            arena.state[slot] = _HELD
            arena.chunk_in[slot] = chunk
            arena.slot_of[chunk] = slot
            arena.last[slot] = s.tick

    def stats(self) -> CacheStats:
        """Counts of this process (see :class:`CacheStats`)."""
        s = self._state()
        with s.lock:
            self._enter_landed(s)
            return CacheStats(s.decoded, s.evicted, s.nbytes, s.peak)

    def clear(self) -> None:
        """Drop every decoded chunk and stop the threads (they restart on use).

        A decoding still running lands in the dropped state, not here."""
        s = self._state()
        self._s = _State()
        with s.lock:
            pool, s.pool = s.pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"budget": self.budget, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["budget"], state["threads"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<ChunkCache {self.budget} bytes, {self.threads} thread(s)>"


def _load_into(column: ChunkedColumn, chunk: int, arena: _Arena, slot: int) -> None:
    column.load(chunk, arena.slot_view(slot))


def _wait(future: Future[Any]) -> Any:
    try:
        return future.result()
    finally:
        # A failed future's exception has this frame in its traceback:
        # dropping the reference keeps the two from holding each other.
        del future
