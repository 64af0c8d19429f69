"""Reading a merged file's virtual datasets from its parts directly.

NOTE [ Reading virtual datasets ]
HDF5 reads a virtual dataset one selection at a time through the library, and
never memory-mapped (it has no storage of its own); but each part of a merged
file is an ordinary h5feed file. :class:`PartsReader` splits a batch's rows by
part, using the mapping :func:`~h5feed.layout.validate` checked (each
column's :class:`~h5feed.layout.VirtualPart` list), and reads each part's rows
with an ordinary :class:`~h5feed.reader.Reader` over that part, memory-mapped
where the part allows; a batch of memory-mapped parts is gathered from all of
them at once (NOTE [ One view over the parts' maps ]). Read-ahead (NOTE
[ Cold cache ] in ``reader.py``) is split the same way: each part's reader
advises its own rows. Columns that are not virtual, and the IDs, are read
through the merged file itself.
See the design note ``docs/design/merged-files.md``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._chunks import ChunkCache
from .layout import ColumnInfo, Layout, VirtualPart
from ._proc import this_pid
from .reader import Reader, _gather, _PicklesAsLayout, checked_rows, reader_options

__all__ = ["ROW_BY_ROW_BYTES", "WHOLE_BYTES", "PartsReader", "make_reader"]

# A virtual column of at most this many bytes (labels, weights, small
# extras) is held in memory by each process that reads it: gathering a
# batch from it is then one step instead of one per part.
WHOLE_BYTES = 4 * 1024 * 1024
# Rows of at least this many bytes are copied one by one from the parts'
# memory maps into place: one copy each. Smaller rows are gathered in one
# numpy step and copied into place once more (see NOTE [ One view over the
# parts' maps ]).
ROW_BY_ROW_BYTES = 16 * 1024


def make_reader(
    layout: Layout, *, cache_bytes: int | None = None, decode_threads: int | None = None
) -> Reader | PartsReader:
    """The reader for ``layout``: a :class:`PartsReader` when it has virtual columns.

    ``cache_bytes`` and ``decode_threads`` as for :class:`~h5feed.reader.Reader`.
    """
    options = {"cache_bytes": cache_bytes, "decode_threads": decode_threads}
    if any(col.sources for col in layout.columns.values()):
        return PartsReader(layout, **options)
    return Reader(layout, **options)


class PartsReader(_PicklesAsLayout):
    """A :class:`~h5feed.reader.Reader` for a file with virtual columns.

    Same interface (``read``, ``take``, ``read_ids``, ``close``, pickling,
    fork safety, and the read-ahead calls ``advise``, ``cached``,
    ``read_ahead_limits``); see NOTE [ Reading virtual datasets ].
    """

    def __init__(
        self,
        layout: Layout,
        *,
        use_mmap: bool = True,
        cache_bytes: int | None = None,
        decode_threads: int | None = None,
    ) -> None:
        self.layout = layout
        self.use_mmap = bool(use_mmap)
        self.cache_bytes, self.decode_threads = reader_options(cache_bytes, decode_threads)
        # One budget of decoded chunks for the file and all its parts.
        options = {
            "use_mmap": use_mmap,
            "cache_bytes": self.cache_bytes,
            "decode_threads": self.decode_threads,
            "_cache": ChunkCache(self.cache_bytes, self.decode_threads),
        }
        self._base = Reader(layout, **options)
        # One Reader per part file, over just the source datasets it holds
        # (named by their paths there, which a linked source need not share
        # with the column).
        columns: dict[str, dict[str, ColumnInfo]] = {}
        for col in layout.columns.values():
            for part in col.sources or ():
                columns.setdefault(part.path, {})[part.column.name] = part.column
        self._parts = {
            path: Reader(
                Layout(path=path, n_rows=max(c.shape[0] for c in cols.values()), columns=cols, splits={}),
                **options,
            )
            for path, cols in columns.items()
        }
        # (part path, source dataset) that its part's reader cannot advise (not mapped).
        self._unadvisable: set[tuple[str, str]] = set()
        self._starts = {
            col.name: np.array([p.start for p in col.sources], dtype=np.int64)
            for col in layout.columns.values()
            if col.sources
        }
        # A part's row in its own file is a row here minus its shift.
        self._shifts = {
            col.name: [p.start - p.source_start for p in col.sources]
            for col in layout.columns.values()
            if col.sources
        }
        self._shift_arrays = {name: np.asarray(shifts, dtype=np.int64) for name, shifts in self._shifts.items()}
        # This process's state (made again after a fork): columns held
        # whole, spans over the parts' maps, and for each column found to
        # have one of them, the call that gathers a batch from it.
        self._whole: dict[str, np.ndarray] = {}
        self._spans: dict[str, _Span | None] = {}
        self._fast: dict[str, Callable[[np.ndarray, np.ndarray | None], np.ndarray]] = {}
        self._local_pid: int | None = None

    def read(self, name: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` of dataset ``name``, in the order given (see :meth:`Reader.read`)."""
        col = self.layout.column(name)
        if not col.sources:
            return self._base.read(name, rows, out)
        rows = checked_rows(self.layout.path, col, rows)
        if out is None:
            out = np.empty((rows.size, *col.row_shape), dtype=col.dtype.newbyteorder("="))
        for at, part, reader, local in self._by_part(col, rows):
            if at.size == rows.size:
                return reader.read(part.column.name, local, out)
            out[at] = reader.read(part.column.name, local)
        return out

    def _by_part(
        self, col: ColumnInfo, rows: np.ndarray
    ) -> Iterator[tuple[np.ndarray, VirtualPart, Reader, np.ndarray]]:
        """``(positions in rows, the part, its reader, its rows there)`` for each part ``rows`` touch."""
        which = np.searchsorted(self._starts[col.name], rows, side="right") - 1
        for k in np.unique(which).tolist():
            part = col.sources[k]
            at = np.flatnonzero(which == k)
            yield at, part, self._parts[part.path], rows[at] - part.start + part.source_start

    # -- read-ahead (the interface of Reader that ReadAhead uses) ------------

    def read_ahead_limits(self) -> tuple[int, int]:
        """``(read_ahead, max_request)``: the smallest of the file's and its parts' devices.

        Small rows are advised in pieces no larger than these, so a piece
        never reads more than a fault would on any of the devices.
        """
        limits = [reader.read_ahead_limits() for reader in (self._base, *self._parts.values())]
        return min(read_ahead for read_ahead, _ in limits), min(request for _, request in limits)

    def cached(self, name: str, rows: np.ndarray) -> bool | None:
        """Whether the first page of each of ``rows`` is in the page cache (see :meth:`Reader.cached`).

        False when any part's rows are not, None when a part cannot tell.
        """
        col = self.layout.column(name)
        if not col.sources:
            return self._base.cached(name, rows)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        answers = [reader.cached(part.column.name, local) for _, part, reader, local in self._by_part(col, rows)]
        if any(answer is False for answer in answers):
            return False
        if not answers or any(answer is None for answer in answers):
            return None
        return True

    def advise(self, name: str, rows: np.ndarray | None = None, *, spans: tuple[Any, Any] | None = None) -> bool:
        """Ask the kernel to start reading ``rows`` (or ``spans``) of ``name``, from its parts.

        As :meth:`Reader.advise`, each part's rows advised by that part's
        reader, so only memory-mapped parts are advised.

        Returns:
            False when no part of the column can be advised: the caller can
            stop asking.
        """
        col = self.layout.column(name)
        if not col.sources:
            return self._base.advise(name, rows, spans=spans)
        if spans is None:
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            calls = [(part, reader, local, None) for _, part, reader, local in self._by_part(col, rows)]
        else:
            calls = [(part, self._parts[part.path], None, part_spans) for part, part_spans in _split_spans(col, *spans)]
        for part, reader, local, part_spans in calls:
            key = (part.path, part.column.name)
            if key not in self._unadvisable and not reader.advise(part.column.name, local, spans=part_spans):
                self._unadvisable.add(key)
        return any((part.path, part.column.name) not in self._unadvisable for part in col.sources)

    def prefetch(self, name: str, rows: np.ndarray) -> bool:
        """Start decoding the chunks ``rows`` of ``name`` need, in their parts
        (see :meth:`Reader.prefetch`); False when no part decodes chunks."""
        col = self.layout.column(name)
        if not col.sources:
            return self._base.prefetch(name, rows)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        started = [reader.prefetch(name, local) for _, reader, local in self._by_part(col, rows)]
        return any(started)

    def take(self, name: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Like :meth:`read` for rows already known valid (see
        :meth:`Reader.take`): the per-batch path.

        A batch of a shuffled epoch touches most parts, so the cost per part
        is what counts. Where every part's rows are memory-mapped, a batch
        is gathered from all parts at once (NOTE [ One view over the parts'
        maps ]); otherwise the rows are grouped by part with one stable
        sort, each part's reader gathers its rows straight into a slice of
        one buffer, and one scatter puts them in order. A column small
        enough (:data:`WHOLE_BYTES`) is read whole once per process and
        gathered in one step, as labels are.
        """
        if self._local_pid == this_pid():
            fast = self._fast.get(name)
            if fast is not None:
                return fast(rows, out)
        col = self.layout.column(name)
        if not col.sources:
            return self._base.take(name, rows, out)
        whole = self._whole_column(col)
        if whole is not None:
            self._fast[name] = functools.partial(_gather, whole)
            return _gather(whole, rows, out)
        span = self._span(col)
        if span is not None:
            self._fast[name] = span.gather
            return span.gather(rows, out)
        which = np.searchsorted(self._starts[name], rows, side="right") - 1
        if rows.size == 0 or not (which - which[0]).any():
            k = int(which[0]) if rows.size else 0
            part = col.sources[k]
            return self._parts[part.path].take(part.column.name, rows - self._shifts[name][k], out)
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(col.sources) + 1))
        grouped = rows[order]
        buf = np.empty((rows.size, *col.row_shape), dtype=col.dtype.newbyteorder("="))
        for k in np.flatnonzero(np.diff(bounds)).tolist():
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            part = col.sources[k]
            self._parts[part.path].take(part.column.name, grouped[lo:hi] - self._shifts[name][k], buf[lo:hi])
        if out is None:
            out = np.empty_like(buf)
        out[order] = buf
        return out

    def _ensure_process(self) -> None:
        """Drop what another process (this one's parent, before a fork) made."""
        pid = this_pid()
        if self._local_pid != pid:
            self._whole, self._spans, self._fast, self._local_pid = {}, {}, {}, pid

    def _span(self, col: ColumnInfo) -> _Span | None:
        """``col``'s rows in all its parts as one :class:`_Span` (made once
        per process), or None when a part's rows are not memory-mapped
        (chunked, compressed)."""
        self._ensure_process()
        if col.name not in self._spans:
            maps: list[np.ndarray] = []
            for part in col.sources or ():
                reader = self._parts[part.path]
                with reader._lock:
                    mapped = reader._mapped(part.column)
                if mapped is None:
                    break
                maps.append(mapped)
            else:
                self._spans[col.name] = _Span(col, maps, self._starts[col.name], self._shift_arrays[col.name])
            self._spans.setdefault(col.name, None)
        return self._spans[col.name]

    def _whole_column(self, col: ColumnInfo) -> np.ndarray | None:
        """The column in memory, when it holds at most :data:`WHOLE_BYTES`
        (read from its parts once per process); else None."""
        if col.shape[0] * col.row_nbytes > WHOLE_BYTES:
            return None
        self._ensure_process()
        arr = self._whole.get(col.name)
        if arr is None:
            arr = self._whole[col.name] = self.read(col.name, np.arange(col.shape[0], dtype=np.int64))
        return arr

    def read_ids(self, rows: np.ndarray) -> list[str]:
        """The sample IDs of ``rows``, from the file's ``/ids`` (stored in a
        merged file; virtual over the parts' own in a grown file)."""
        return self._base.read_ids(rows)

    def close(self) -> None:
        """Release this process's handles on the file and its parts."""
        self._whole, self._spans, self._fast, self._local_pid = {}, {}, {}, None
        self._base.close()
        for reader in self._parts.values():
            reader.close()

    def __repr__(self) -> str:
        return f"<PartsReader {os.path.basename(self.layout.path)!r}: {len(self._parts)} parts>"


class _Span:
    """A virtual column's rows in all its parts' memory maps, addressed as
    byte offsets from one view.

    NOTE [ One view over the parts' maps ]
    Gathering a batch part by part costs a few numpy calls per part, and a
    shuffled batch touches most parts: for small rows that overhead is most
    of the batch's time. numpy gathers from one array only, so this view
    starts at the lowest of the parts' maps and runs to the end of the
    highest, one item per byte offset (``as_strided``, items of a row's size
    at a stride of one byte). Row ``r`` of part ``k`` lies at byte
    ``(r - shift[k]) * row_nbytes`` of part ``k``'s map, so one
    ``searchsorted`` and two array operations turn a batch's rows into
    offsets, and one fancy index gathers them all. The view also covers the
    address space between the maps, which it must never read: it is only
    indexed at the offsets of rows already checked valid, each inside one
    part's map, and it holds every map (so none is unmapped while it lives).
    """

    def __init__(self, col: ColumnInfo, maps: list[np.ndarray], starts: np.ndarray, shifts: np.ndarray) -> None:
        self.maps = maps
        self.row_shape = col.row_shape
        self.dtype = maps[0].dtype
        rb = self.row_nbytes = col.row_nbytes
        addresses = np.array([m.__array_interface__["data"][0] for m in maps], dtype=np.int64)
        lowest = maps[int(np.argmin(addresses))].reshape(-1).view(np.uint8)
        size = max(a + m.nbytes for a, m in zip(addresses.tolist(), maps)) - int(addresses.min())
        self.bytes = np.lib.stride_tricks.as_strided(lowest, shape=(size,), strides=(1,), writeable=False)
        self.view = memoryview(self.bytes)
        self.rows = np.lib.stride_tricks.as_strided(
            lowest.view(np.dtype((np.void, rb))), shape=(size - rb + 1,), strides=(1,), writeable=False
        )
        # Which part holds a row: its index in the parts' first rows after the first.
        self.bounds = np.asarray(starts[1:], dtype=np.int64)
        # A row's byte offset is row * row_nbytes + adjust[its part].
        self.adjust = (addresses - addresses.min()) - shifts * rb

    def gather(self, rows: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """Rows ``rows`` (already checked), into ``out`` when given."""
        rb = self.row_nbytes
        if rows.dtype != np.int64:
            rows = rows.astype(np.int64)
        offsets = rows * rb
        offsets += self.adjust[self.bounds.searchsorted(rows, side="right")]
        direct = out is not None and out.dtype == self.dtype and out.flags.c_contiguous
        if direct and rb >= ROW_BY_ROW_BYTES:
            # Big rows straight to their place: one copy each, where
            # gathering first would copy every byte twice.
            dst = memoryview(out.reshape(-1).view(np.uint8))
            for at, o in enumerate(offsets.tolist()):
                dst[at * rb : (at + 1) * rb] = self.view[o : o + rb]
            return out
        got = self.rows[offsets]
        if direct:
            out.reshape(-1).view(got.dtype)[...] = got
        elif out is None:
            out = got.view(self.dtype).reshape(rows.size, *self.row_shape)
        else:
            out[...] = got.view(self.dtype).reshape(rows.size, *self.row_shape)
        return out


def _split_spans(
    col: ColumnInfo, starts: np.ndarray, stops: np.ndarray
) -> Iterator[tuple[VirtualPart, tuple[np.ndarray, np.ndarray]]]:
    """The row spans ``starts[i] <= row < stops[i]`` of a virtual column, cut at
    its parts' bounds: ``(part, (starts, stops) in the part's rows)`` per part."""
    starts = np.asarray(starts, dtype=np.int64)
    stops = np.asarray(stops, dtype=np.int64)
    for part in col.sources or ():
        lo, hi = np.maximum(starts, part.start), np.minimum(stops, part.stop)
        keep = lo < hi
        if keep.any():
            shift = part.source_start - part.start
            yield part, (lo[keep] + shift, hi[keep] + shift)
