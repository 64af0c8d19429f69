"""Per-process read access to one validated h5feed file.

A :class:`Reader` holds only a path and the file's :class:`~h5feed.layout.Layout`
until it is first used; then it opens its own handles in the current process.

NOTE [ Handles across processes ]
HDF5 state must never cross a ``fork``: a child that uses (or even closes) a
handle its parent opened shares the parent's library state and caches, and
Keras forks worker pools after reading batches in the parent. The reader keys
its handles by the process id (``_proc.this_pid``): in a new process it
abandons the inherited objects without touching them (kept referenced, so
their finalisers never run in the child) and opens fresh ones. Pickling drops
handles entirely, which covers ``spawn`` and ``forkserver``.
See the design note ``docs/design/reading.md``.

NOTE [ Fast path ]
A dataset stored as one contiguous, unfiltered block is memory-mapped (the
offset comes from HDF5 at validation) and rows are gathered with one
``numpy.take``, with the page cache as the memory: an HDF5 call per read
costs more than copying a small row. Everything else (chunked, compressed,
checksummed, non-native byte order) goes through HDF5 with a
:func:`~h5feed._plan.plan_reads` plan, one slice read per span.
``tests/test_reader.py`` proves both paths return the same bytes.
See the design note ``docs/design/reading.md``.

NOTE [ Chunked path ]
A dataset chunked by whole rows is read chunk by chunk outside HDF5's lock:
each chunk a batch touches is read raw and decoded in the
:class:`~h5feed._chunks.ChunkCache`'s threads, or taken from that cache,
and its rows are copied into the batch (NOTE [ Decoding chunks ] in
``_chunks.py``). ``decode_threads=0``, and chunks that do not span whole
rows, take HDF5's path above.

NOTE [ Cold cache ]
On a cold page cache each fault on the map reads the page and the kernel's
read-around (``read_ahead_kb``) and waits for it, so a shuffled epoch of
large rows is read one synchronous row at a time. :meth:`Reader.advise` asks
the kernel (``MADV_WILLNEED``) to start reading given rows without waiting;
:class:`~h5feed._readahead.ReadAhead` uses it, with :meth:`Reader.cached`
and :meth:`Reader.read_ahead_limits`, to keep what the next batches need in
flight while batches come from disk. One advice call reads at most
``max(read_ahead_kb, max_sectors_kb)`` of the device (``force_page_cache_ra``
in the kernel's ``mm/readahead.c``), so longer ranges are cut into pieces of
that size.
See the design note ``docs/design/read-ahead.md``.
"""

from __future__ import annotations

import mmap
import os
import threading
from typing import Any, TypeVar

import h5py
import numpy as np

from . import _codecs
from ._args import check_int
from ._chunks import DEFAULT_CACHE_BYTES, ChunkCache, ChunkedColumn, default_decode_threads
from ._damage import touching
from ._files import open_h5
from ._plan import ReadPlan, advice_ranges, plan_reads, span_advice_ranges
from ._proc import this_pid
from .errors import ReadError
from .layout import ColumnInfo, Layout, read_ids

__all__ = ["Reader"]

# Handles abandoned after a fork: referenced forever so that nothing in the
# child ever finalises (closes) an HDF5 object that belongs to the parent.
_ABANDONED: list[Any] = []

_CAN_ADVISE = hasattr(mmap.mmap, "madvise") and hasattr(mmap, "MADV_WILLNEED")
# The kernel's default read_ahead_kb: assumed where the device's is unknown.
_DEFAULT_READ_AHEAD = 128 << 10


def _read_ahead_limits(path: str) -> tuple[int, int]:
    """``(read_ahead, max_request)`` bytes of the block device holding ``path``.

    ``read_ahead`` is what a page fault reads around itself; one advice call
    reads at most ``max(read_ahead, max_request)`` (NOTE [ Cold cache ]).
    The kernel's defaults where sysfs does not say (other OS, network file
    systems, containers).
    """
    try:
        dev = os.stat(path).st_dev
        base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        # A partition's limits are its disk's.
        for queue in (f"{base}/queue", f"{base}/../queue"):
            if os.path.isdir(queue):
                kib = []
                for name in ("read_ahead_kb", "max_sectors_kb"):
                    with open(f"{queue}/{name}") as fh:
                        kib.append(max(0, int(fh.read())))
                return kib[0] << 10, kib[1] << 10
    except (OSError, ValueError):  # no sysfs, odd values
        pass
    return _DEFAULT_READ_AHEAD, _DEFAULT_READ_AHEAD


def checked_rows(path: str, col: ColumnInfo, rows: Any) -> np.ndarray:
    """``rows`` of ``col`` as a 1-D int64 array, checked to be in range.

    Raises:
        IndexError: a row outside the dataset (the message names the file,
            the dataset and the row).
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= col.shape[0]):
        bad = rows[(rows < 0) | (rows >= col.shape[0])][0]
        raise IndexError(f"{path}:/{col.name}: row {int(bad)} is outside [0, {col.shape[0]})")
    return rows


_R = TypeVar("_R", bound="_PicklesAsLayout")


class _PicklesAsLayout:
    """A reader that pickles as its layout and options only (never handles),
    and closes as a context manager; its ``__init__(layout, use_mmap=...,
    cache_bytes=..., decode_threads=...)`` rebuilds it."""

    layout: Layout
    use_mmap: bool
    cache_bytes: int
    decode_threads: int

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "use_mmap": self.use_mmap,
            "cache_bytes": self.cache_bytes,
            "decode_threads": self.decode_threads,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        layout = state.pop("layout")
        self.__init__(layout, **state)  # type: ignore[misc]


def reader_options(cache_bytes: int | None, decode_threads: int | None) -> tuple[int, int]:
    """``(cache_bytes, decode_threads)`` checked, with None as the defaults.

    Raises:
        ValueError: not an int (a bool is not), or below 0.
    """
    cache = check_int(cache_bytes, "cache_bytes", minimum=0, none_ok=True)
    threads = check_int(decode_threads, "decode_threads", minimum=0, none_ok=True)
    return (
        DEFAULT_CACHE_BYTES if cache is None else int(cache),
        default_decode_threads() if threads is None else int(threads),
    )


class Reader(_PicklesAsLayout):
    """Reads rows of a file's per-row datasets, in any order.

    Args:
        layout: the validated layout of the file (see :func:`~h5feed.layout.validate`).
        use_mmap: use the memory-mapped fast path where the storage allows.
        cache_bytes: bytes of decoded chunks of chunked (compressed)
            datasets kept for later reads, per process (default 256 MiB);
            0 keeps none.
        decode_threads: threads that read and decode chunks outside HDF5's
            lock (default: one per core, at most 4); 0 leaves decoding to
            HDF5 in the calling thread, without the cache.

    The reader is safe to pickle and to use after ``fork``, and safe to share
    between threads: HDF5 calls take its lock; decoding chunks does not.
    See the design note ``docs/design/chunks.md``.
    """

    def __init__(
        self,
        layout: Layout,
        *,
        use_mmap: bool = True,
        cache_bytes: int | None = None,
        decode_threads: int | None = None,
        _cache: ChunkCache | None = None,
    ) -> None:
        self.layout = layout
        self.use_mmap = bool(use_mmap)
        self.cache_bytes, self.decode_threads = reader_options(cache_bytes, decode_threads)
        # Decoded chunks, shared with the readers of a merged file's parts.
        self._cache = _cache if _cache is not None else ChunkCache(self.cache_bytes, self.decode_threads)
        self._chunked: dict[str, ChunkedColumn] = {}
        self._pid: int | None = None
        self._file: h5py.File | None = None
        self._dsets: dict[str, h5py.Dataset] = {}
        self._maps: dict[str, np.ndarray] = {}
        self._mmaps: list[mmap.mmap] = []
        self._map_at: dict[str, tuple[mmap.mmap, int]] = {}
        self._limits: tuple[int, int] | None = None  # _read_ahead_limits of the file
        self._advice_most: int | None = None  # bytes per advice call, whole pages
        self._lock_pid = this_pid()
        self._lock_obj = threading.Lock()

    @property
    def _lock(self) -> threading.Lock:
        # A lock held by another thread at fork time stays held forever in
        # the child, so each process gets its own.
        pid = this_pid()
        if self._lock_pid != pid:
            self._lock_pid = pid
            self._lock_obj = threading.Lock()
        return self._lock_obj

    # -- lifecycle ---------------------------------------------------------

    def _ensure_process(self) -> None:
        pid = this_pid()
        if self._pid == pid:
            return
        if self._pid is not None:
            # Inherited across fork: abandon, never close (NOTE above).
            _ABANDONED.append((self._file, self._dsets, self._maps, self._mmaps, self._chunked))
        self._chunked = {}
        self._pid = pid
        self._file = None
        self._dsets = {}
        self._maps = {}
        self._mmaps = []
        self._map_at = {}

    def _h5(self) -> h5py.File:
        self._ensure_process()
        if self._file is None:
            self._file = open_h5(self.layout.path)
        return self._file

    def _mapped(self, col: ColumnInfo) -> np.ndarray | None:
        """The column as a read-only array over the file's pages, or None."""
        if self._pid == this_pid():
            arr = self._maps.get(col.name)
            if arr is not None:
                return arr
        if not self.use_mmap or col.offset is None or col.fletcher32:
            return None
        if not col.dtype.isnative or col.shape[0] == 0 or col.row_nbytes == 0:
            return None
        self._ensure_process()
        arr = self._maps.get(col.name)
        if arr is None:
            nbytes = col.shape[0] * col.row_nbytes
            with open(self.layout.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if col.offset + nbytes > size:
                    raise ReadError(
                        f"{self.layout.path}:/{col.name}: the file is {size} bytes, but the "
                        f"dataset's data ends at byte {col.offset + nbytes}: truncated"
                    )
                # mmap offsets must be page aligned; map from the page start.
                base = col.offset - col.offset % mmap.ALLOCATIONGRANULARITY
                mm = mmap.mmap(fh.fileno(), col.offset + nbytes - base, access=mmap.ACCESS_READ, offset=base)
            self._mmaps.append(mm)
            self._map_at[col.name] = (mm, col.offset - base)
            arr = np.frombuffer(mm, dtype=col.dtype, count=int(np.prod(col.shape)), offset=col.offset - base)
            arr = arr.reshape(col.shape)
            self._maps[col.name] = arr
        return arr

    def close(self) -> None:
        """Release this process's handles. Safe to call twice; reopens lazily."""
        with self._lock:
            if self._pid == this_pid():
                self._maps = {}
                self._map_at = {}
                self._dsets = {}
                # Arrays may still view the maps; let the GC close them then.
                self._mmaps = []
                # Each closes its descriptor once no decoding uses it.
                self._chunked = {}
                if self._file is not None:
                    try:
                        self._file.close()
                    except Exception:  # closing twice or at interpreter exit
                        pass
            self._file = None
            self._pid = None
        self._cache.clear()

    # -- reading -----------------------------------------------------------

    def read(self, name: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` of dataset ``name``, in the order given.

        Args:
            name: a per-row dataset of the layout (``"x"``, ``"y"``, ...).
            rows: row numbers, any order, repeats allowed.
            out: optional preallocated output of shape
                ``(len(rows), *row_shape)`` and the dataset's dtype.

        Returns:
            The rows as a new (or the given) numpy array.

        Raises:
            ReadError: a chunk could not be read or failed its checksum; the
                message names the dataset and the row range.
        """
        col = self.layout.column(name)
        rows = checked_rows(self.layout.path, col, rows)
        with self._lock:
            mapped = self._mapped(col)
            if mapped is not None:
                return _gather(mapped, rows, out)
            chunked = self._chunked_column(col)
        if out is None:
            out = np.empty((rows.size, *col.row_shape), dtype=col.dtype.newbyteorder("="))
        if chunked is not None:
            # NOTE [ Chunked path ]: outside the lock.
            return self._read_chunks(col, chunked, rows, out)
        with self._lock:
            plan = plan_reads(rows, chunk_rows=col.chunk_rows)
            return self._read_plan(col, plan, out)

    def take(self, name: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Like :meth:`read` for rows already known valid (int64, 1-D, in range).

        The per-batch path of :class:`~h5feed.H5Sequence`, whose rows were
        checked once when it was built: skips the argument checks, which cost
        as much as gathering a small batch.
        """
        if self._pid == this_pid():
            mapped = self._maps.get(name)
            if mapped is not None:
                return mapped[rows] if out is None else _gather(mapped, rows, out)
            chunked = self._chunked.get(name)
            if chunked is not None:  # NOTE [ Chunked path ]
                if out is None:
                    out = np.empty((rows.size, *chunked.row_shape), dtype=chunked.out_dtype)
                return self._cache.read((self.layout.path, name), chunked, rows, out)
        return self.read(name, rows, out)

    def read_ahead_limits(self) -> tuple[int, int]:
        """``(read_ahead, max_request)`` bytes of the device holding the file.

        What a page fault reads around itself, and the largest request; one
        advice call reads at most the larger (NOTE [ Cold cache ]).
        """
        if self._limits is None:
            self._limits = _read_ahead_limits(self.layout.path)
        return self._limits

    def cached(self, name: str, rows: np.ndarray) -> bool | None:
        """Whether the first page of each of ``rows`` of ``name`` is in the page cache.

        Asked without reading from the disk (``preadv`` with ``RWF_NOWAIT``),
        before the first batch of an epoch, so that read-ahead can start
        with it on a cold cache. None where it cannot tell (not a
        memory-mapped column, no ``RWF_NOWAIT``).
        """
        col = self.layout.column(name)
        flag = getattr(os, "RWF_NOWAIT", None)
        if flag is None or col.offset is None or self.use_mmap is False or rows.size == 0:
            return None
        page = bytearray(1)
        try:
            fd = os.open(self.layout.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            for row in rows.tolist():
                try:
                    if os.preadv(fd, [page], col.offset + row * col.row_nbytes, flag) < 1:
                        return None  # at or past the end: the read will say
                except BlockingIOError:
                    return False
        except OSError:  # EOPNOTSUPP on some file systems, for one
            return None
        finally:
            os.close(fd)
        return True

    def advise(self, name: str, rows: np.ndarray | None = None, *, spans: tuple[Any, Any] | None = None) -> bool:
        """Ask the kernel to start reading ``rows`` of ``name``; do not wait.

        Only for a column that can be memory-mapped (NOTE [ Cold cache ]);
        rows already checked. ``spans=(starts, stops)`` instead of ``rows``:
        the rows ``starts[i] <= row < stops[i]`` (ascending, not
        overlapping; clipped to the column).

        Returns:
            False when there is nothing to advise (not memory-mapped, or no
            ``madvise`` on this platform): the caller can stop asking.
        """
        if not _CAN_ADVISE:
            return False
        col = self.layout.column(name)
        with self._lock:
            try:
                if self._mapped(col) is None:
                    return False
            except (OSError, ReadError):  # advice only: the read says what is wrong, with context
                return False
            mm, first_byte = self._map_at[name]
        if self._advice_most is None:
            most = max(self.read_ahead_limits())
            self._advice_most = max(mmap.PAGESIZE, most - most % mmap.PAGESIZE)
        where = {"row_nbytes": col.row_nbytes, "first_byte": first_byte, "page": mmap.PAGESIZE, "most": self._advice_most}
        if spans is None:
            starts, lengths = advice_ranges(rows, **where)
        else:
            n = col.shape[0]
            starts, lengths = span_advice_ranges(np.minimum(spans[0], n), np.minimum(spans[1], n), **where)
        size = len(mm)
        for start, length in zip(starts.tolist(), lengths.tolist()):
            try:
                mm.madvise(mmap.MADV_WILLNEED, start, min(length, size - start))
            except (OSError, ValueError):  # advice only; the read will tell
                return False
        return True

    def _dataset(self, name: str) -> h5py.Dataset:
        # Kept open: HDF5 drops a dataset's chunk cache when the dataset is
        # closed, so opening it per batch would decompress every chunk every time.
        f = self._h5()
        dset = self._dsets.get(name)
        if dset is None:
            if _codecs.is_plugin(self.layout.column(name).compression):
                _codecs.load_plugins()  # for HDF5 to decode hdf5plugin's filters
            with touching(self.layout.path, f"/{name}", ReadError):
                dset = self._dsets[name] = f[name]
        return dset

    def _chunked_column(self, col: ColumnInfo) -> ChunkedColumn | None:
        """``col``'s chunks in this process, or None where HDF5 reads it
        (NOTE [ Chunked path ]); under the lock."""
        if self.decode_threads == 0 or col.chunks is None or tuple(col.chunks[1:]) != col.row_shape:
            return None
        self._ensure_process()
        if col.name not in self._chunked:
            self._chunked[col.name] = ChunkedColumn(self.layout.path, self._dataset(col.name), self._lock)
        return self._chunked[col.name]

    def prefetch(self, name: str, rows: np.ndarray) -> bool:
        """Start decoding the chunks that ``rows`` (checked) of ``name`` need,
        into the chunk cache; return at once.

        Returns:
            False when ``name`` is not read through the chunk cache (nothing
            to start): the caller can stop asking.
        """
        col = self.layout.column(name)
        with self._lock:
            if self._mapped(col) is not None:
                return False
            chunked = self._chunked_column(col)
        if chunked is None:
            return False
        self._cache.prefetch((self.layout.path, col.name), chunked, rows)
        return True

    def _read_chunks(self, col: ColumnInfo, chunked: ChunkedColumn, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        return self._cache.read((self.layout.path, col.name), chunked, rows, out)

    def _read_plan(self, col: ColumnInfo, plan: ReadPlan, out: np.ndarray) -> np.ndarray:
        dset = self._dataset(col.name)
        direct = plan.take is None and plan.inverse is None
        buf = out if direct else np.empty((plan.span_rows, *col.row_shape), dtype=out.dtype)
        pos = 0
        # A failed read names the damaged chunks' rows exactly (NOTE [ Damaged files ]).
        with touching(self.layout.path, f"/{col.name}", ReadError, dset=dset) as guard:
            for start, stop in zip(plan.starts.tolist(), plan.stops.tolist()):
                n = stop - start
                guard.rows = (start, stop)
                dset.read_direct(buf, np.s_[start:stop], np.s_[pos : pos + n])
                pos += n
        if direct:
            return out
        # Spans -> distinct rows -> requested order, composed into one gather.
        if plan.take is None:
            index = plan.inverse
        elif plan.inverse is None:
            index = plan.take
        else:
            index = plan.take[plan.inverse]
        return _gather(buf, index, out)

    def read_ids(self, rows: np.ndarray) -> list[str]:
        """The sample IDs of ``rows``, in the order given."""
        with self._lock:
            f = self._h5()
            with touching(self.layout.path, "/ids", ReadError):
                return read_ids(f, rows)


def _gather(source: np.ndarray, rows: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``source[rows]``, into ``out`` when given; ``rows`` already checked.

    ``take(mode="clip")`` writes straight into ``out``: the default
    ``mode="raise"`` buffers the whole output through a temporary first.
    """
    if out is None:
        return source[rows]
    np.take(source, rows, axis=0, out=out, mode="clip")
    return out
