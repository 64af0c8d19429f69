"""Read-ahead while batches come from disk: the next batches' rows in flight.

On a cold page cache each large row of a shuffled batch is one synchronous
read, issued one after another (NOTE [ Cold cache ] in ``reader.py``). While
batches come from disk, :class:`ReadAhead` asks the reader to start reading
what the next batches of the epoch order need, so the disk always has work
queued:

- large rows (``min_row_bytes`` or more): the rows of the next ``depth``
  batches, row by row;
- small rows: the pieces of the file that hold them (no larger than one
  fault's read-around or one device request, :func:`piece_nbytes`), each as
  soon as a position ahead first needs it, ``lead_bytes`` beyond the next
  batches: never more than the faults would read, but queued ahead.

It switches on before the first batch of an epoch whose rows are not in the
page cache, or (large rows only) at the first batch that needed the disk (a
major page fault; where those are not counted, a slow batch), and stays on
for that epoch, or, for small rows only, until every piece the epoch needs is
advised. Each new epoch starts off again, so a warm epoch pays nothing.
See the design note ``docs/design/read-ahead.md``.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Iterable
from typing import Any

import numpy as np

try:
    import resource
except ImportError:  # pragma: no cover - not Unix
    resource = None  # type: ignore[assignment]

__all__ = ["ReadAhead", "major_faults", "piece_nbytes"]

_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)


def major_faults() -> int | None:
    """Page faults of this thread so far that waited for the disk; None where unknown.

    The exact sign of a cold read: a page of a memory-mapped file that was
    not in the page cache. Pages already cached but new to this process
    (a fresh worker, an epoch touching other rows) fault too, but as minor
    faults, and read at memory speed.
    """
    if _RUSAGE_THREAD is None:
        return None
    return resource.getrusage(_RUSAGE_THREAD).ru_majflt


# Rows smaller than this come in many per fault (the kernel's read-around,
# NOTE [ Cold cache ]), so advising them one by one costs more system calls
# than it saves; they are advised as the pieces of the file that hold them.
MIN_ROW_BYTES = 32 << 10
# Bytes of small-row pieces kept in flight beyond the next `depth` batches.
LEAD_BYTES = 16 << 20
# The smallest piece of small rows advised in one call.
MIN_PIECE_BYTES = 128 << 10
# A batch read slower than this came (partly) from disk: warm pages gather
# at memory speed, well above it, while each cold row waits for the disk.
COLD_BYTES_PER_S = 2 << 30
# ... and took at least this long: a warm batch of small rows is over far
# sooner, so its rate alone says nothing, while a cold one waits for the disk.
COLD_MIN_SECONDS = 200e-6
# Where major faults are not counted, time is the only sign. Batches read by
# h5feed's worker threads or processes are timed there, among busy
# processes, where a warm batch now and then takes several times its usual
# time. So a worker's batch counts as slow only below half the rate, and
# read-ahead turns on only when most of the last few worker batches were
# slow (and faulted, where faults are counted: a fresh worker faults on warm
# data too), since advising warm data costs the owning process throughput.
# The first batches of an epoch are read in this process, and a cold start
# is caught by `prime`.
WORKER_RATE_FACTOR = 0.5
WORKER_WINDOW, WORKER_SLOW = 8, 5


def piece_nbytes(read_ahead: int, max_request: int) -> int:
    """Bytes of the pieces small rows are advised in, for a device's limits.

    No more than one page fault would read around itself (``read_ahead``),
    so that read-ahead never reads more than the faults it saves, and no
    more than one device request (``max_request``); at least
    ``MIN_PIECE_BYTES`` (a device with read-around turned off).

    Example:
        >>> piece_nbytes(8 << 20, 4 << 20) >> 20
        4
    """
    return max(MIN_PIECE_BYTES, min(read_ahead, max_request))


class ReadAhead:
    """Advises what the batches after the one just read will need.

    Args:
        reader: has ``advise(name, rows=None, *, spans=None) -> bool``
            (:class:`~h5feed.reader.Reader`); a reader without it disables
            read-ahead.
        columns: ``(name, row_nbytes)`` of the datasets a batch reads.
        batch_size: rows per batch of the epoch order.
        depth: batches kept in flight ahead of the one read.
        lead_bytes: bytes of small-row pieces kept in flight beyond those
            ``depth`` batches.
        min_row_bytes: rows this large are advised row by row; smaller ones
            as the pieces that hold them.
        cold_bytes_per_s: where major faults are not counted, a batch read
            slower than this turns read-ahead on.
    """

    def __init__(
        self,
        reader: Any,
        columns: Iterable[tuple[str, int]],
        *,
        batch_size: int = 1,
        depth: int = 4,
        lead_bytes: int = LEAD_BYTES,
        min_row_bytes: int = MIN_ROW_BYTES,
        cold_bytes_per_s: float = COLD_BYTES_PER_S,
    ) -> None:
        columns = list(columns)
        self._row_nbytes = sum(nbytes for _, nbytes in columns)
        can_advise = callable(getattr(reader, "advise", None))
        limits = getattr(reader, "read_ahead_limits", None)
        piece_bytes = piece_nbytes(*limits()) if callable(limits) else MIN_PIECE_BYTES
        self._row_names: list[str] = []
        # Small-row columns: (name, rows per piece, bytes per piece).
        self._pieces: list[tuple[str, int, int]] = []
        for name, nbytes in columns if can_advise else ():
            if nbytes >= min_row_bytes:
                self._row_names.append(name)
            elif nbytes > 0:
                rows = max(1, piece_bytes // nbytes)
                self._pieces.append((name, rows, rows * nbytes))
        self._reader = reader
        self.batch_size = batch_size
        self.depth = depth
        self.lead_bytes = lead_bytes
        self.cold_bytes_per_s = cold_bytes_per_s
        self.cold_min_seconds = COLD_MIN_SECONDS
        # Ask the kernel whether reads need the disk (page-cache probes,
        # major-fault counts) where it tells; False: judge by time alone.
        self.ask_kernel = True
        self.reset()

    def fresh(self, reader: Any) -> ReadAhead:
        """A copy with the same settings, advising through ``reader`` (of the same
        file), in the state of a new epoch. Off for good where this one is."""
        clone = copy.copy(self)
        clone._reader = reader
        clone.reset()
        return clone

    def _can_advise(self) -> bool:
        return bool(self._row_names or self._pieces)

    def reset(self) -> None:
        """A new epoch (or order): off, nothing advised yet."""
        # Whether batches need watching this epoch: a plain attribute, read
        # on every batch. False when nothing can ever be advised (no mmap),
        # or when only small rows are read and the epoch began cached or
        # has had every piece advised.
        self.enabled = self._can_advise()
        self.active = False
        self._worker_slow: list[bool] = []  # the last WORKER_WINDOW worker batches: slow?
        self._advised_to = 0  # batches below this were advised (large rows)
        self._scanned_to = 0  # order positions below this had their pieces advised
        self._piece_marks: list[np.ndarray] | None = None  # per piece column: advised?
        self._pieces_left = 0
        self._lead: collections.deque[tuple[int, int]] = collections.deque()  # (position, bytes advised)
        self._lead_bytes = 0

    def prime(self, order: np.ndarray) -> None:
        """Before the first batch of ``order`` is read: read ahead from it if it is not cached.

        A cold epoch's first batch would otherwise wait for its rows one
        fault at a time, each pulling in the kernel's read-around. Where the
        reader cannot tell whether the rows are cached, the first batches are
        advised anyway (one call per range on cached pages, once an epoch),
        without turning read-ahead on. Small rows are judged here only: an
        epoch of them that starts cached is not watched, since timing a warm
        batch of small rows would cost a good part of reading it.
        """
        if not self.enabled or self.active or self._advised_to or self._scanned_to:
            return
        name = self._row_names[0] if self._row_names else self._pieces[0][0]
        probe = getattr(self._reader, "cached", None) if self.ask_kernel else None
        cached = probe(name, order[: min(self.batch_size, 8)]) if callable(probe) else None
        if cached is True:
            self.enabled = bool(self._row_names)
            return
        if cached is False:
            self.active = True
        self._advance(-1, order)

    def batch_read(
        self, k: int, read: tuple[float, int | None], order: np.ndarray, *, by_worker: bool = False
    ) -> None:
        """Batch ``k`` of the epoch order ``order`` was read; advise ahead if cold.

        ``read`` is ``(seconds, major faults)`` of reading its rows (the
        faults None where unknown); ``order`` holds the epoch's file rows in
        the order they are served: batch ``c`` is
        ``order[c * batch_size:(c + 1) * batch_size]``. ``by_worker``: a
        worker thread or process read it (and timed it).
        """
        if not self.enabled:
            return
        if not self.active:
            seconds, faults = read
            size = self.batch_size
            counted = faults is not None and self.ask_kernel
            n_rows = max(0, min(order.size, (k + 1) * size) - k * size)
            rate = self.cold_bytes_per_s * (WORKER_RATE_FACTOR if by_worker else 1.0)
            timed_slow = seconds > max(self.cold_min_seconds, n_rows * self._row_nbytes / rate)
            if by_worker:
                # Among busy workers a slow read may be CPU contention, and a
                # major fault a retried one (two workers faulting one page
                # count it as major); a cold read is both, in most of the
                # last few batches.
                recent = self._worker_slow
                recent.append(timed_slow and (faults > 0 if counted else True))
                del recent[:-WORKER_WINDOW]
                slow = sum(recent) >= WORKER_SLOW
            else:
                # A read that waits for pages already advised (and in
                # flight) takes no major fault: for those time decides too.
                advised = k < self._advised_to or (k + 1) * size <= self._scanned_to
                slow = faults > 0 if counted and (faults or not advised) else timed_slow
            if not slow:
                return
            self.active = True
        self._advance(k, order)

    def _advance(self, k: int, order: np.ndarray) -> None:
        """Advise what the batches after batch ``k`` need, not yet advised."""
        size = self.batch_size
        start = (k + 1) * size  # the first position not read yet
        if self._row_names:
            n_batches = -(-order.size // size)
            first, stop = max(self._advised_to, k + 1), min(n_batches, k + 1 + self.depth)
            for c in range(first, stop):
                if not self._advise(self._row_names, order[c * size:(c + 1) * size]):
                    return
            self._advised_to = max(self._advised_to, stop)
        if self._pieces:
            self._advance_pieces(start, order)

    def _advance_pieces(self, start: int, order: np.ndarray) -> None:
        """Advise the pieces of small rows that positions ``start`` on need first.

        Scans the order ahead of ``start`` a batch at a time and advises
        each piece the first time a position needs it, until the next
        ``depth`` batches are covered and ``lead_bytes`` of pieces are in
        flight beyond ``start``.
        """
        if self._piece_marks is None:
            top = int(order.max()) + 1 if order.size else 0
            self._piece_marks = [np.zeros(-(-top // rows), dtype=bool) for _, rows, _ in self._pieces]
            self._pieces_left = sum(marks.size for marks in self._piece_marks)
        lead = self._lead
        while lead and lead[0][0] < start:
            self._lead_bytes -= lead.popleft()[1]
        size = self.batch_size
        scan = max(self._scanned_to, start)
        cover = min(order.size, start + self.depth * size)
        while self._pieces_left and scan < order.size and (scan < cover or self._lead_bytes < self.lead_bytes):
            chunk = order[scan:scan + size]
            nbytes = 0
            for (name, rows, piece_bytes), marks in zip(self._pieces, self._piece_marks):
                ids = chunk // rows
                new = np.unique(ids[~marks[ids]])
                if new.size == 0:
                    continue
                marks[new] = True
                self._pieces_left -= new.size
                # The reader merges consecutive pieces into one range.
                if not self._reader.advise(name, spans=(new * rows, (new + 1) * rows)):
                    self._stop_advising()
                    return
                nbytes += new.size * piece_bytes
            if nbytes:
                lead.append((scan, nbytes))
                self._lead_bytes += nbytes
            scan += chunk.size
        self._scanned_to = scan
        if not self._pieces_left and not self._row_names:
            # Every piece is in flight or read: nothing is left to advise
            # this epoch, so its remaining batches take the plain path,
            # unwatched (watching costs CPU that no disk wait hides).
            self.enabled = False

    def _advise(self, names: list[str], rows: np.ndarray) -> bool:
        for name in names:
            if not self._reader.advise(name, rows):
                self._stop_advising()
                return False
        return True

    def _stop_advising(self) -> None:
        # Not mapped: nothing to advise, ever.
        self._row_names, self._pieces = [], []
        self.enabled = False
