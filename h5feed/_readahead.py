"""Read-ahead while batches come from disk: the next batches' rows in flight.

On a cold page cache each large row of a shuffled batch is one synchronous
read, issued one after another (NOTE [ Cold cache ] in ``reader.py``). While
batches come from disk, :class:`ReadAhead` asks the reader to start reading
what the next batches of the epoch order need, so the disk always has work
queued:

- large rows (``min_row_bytes`` or more): the rows of the next ``depth``
  batches, row by row;
- small rows under ``shuffle="block"``: whole windows of blocks ahead, about
  ``lead_bytes`` of them. One small row is not worth a system call, but a
  block of them is one contiguous range, and a window's rows are all read
  within a few batches. Not where the kernel's read-around (what one page
  fault reads) is already larger than a window.

It switches on before the first batch of an epoch whose rows are not in
the page cache, or at the first batch that needed the disk (a major page
fault while reading it; where those are not counted, a slow batch), and
stays on for that epoch; each new epoch starts off again, so a warm second
epoch pays nothing.

Small rows under a full shuffle are never advised: a shuffled batch needs
one page here and one there, which the kernel's read-around serves better
than advice can.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

try:
    import resource
except ImportError:  # pragma: no cover - not Unix
    resource = None  # type: ignore[assignment]

__all__ = ["ReadAhead", "major_faults"]

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


# Rows (or blocks of rows) smaller than this come in many per fault (the
# kernel's read-around, NOTE [ Cold cache ]); advising single small rows cost
# more than it saved on "small".
MIN_ROW_BYTES = 32 << 10
# Bytes of small-row windows kept advised ahead under a block shuffle.
LEAD_BYTES = 8 << 20
# A batch read slower than this came (partly) from disk: warm pages gather
# at several GiB/s, a cold 128 KiB row costs a disk round trip.
COLD_BYTES_PER_S = 2 << 30
# ... and took at least this long: a warm batch of small rows takes tens of
# microseconds, so its rate alone says nothing, while a cold one waits
# milliseconds for the disk.
COLD_MIN_SECONDS = 200e-6
# Where major faults are not counted, time is the only sign. Batches read by
# h5feed's worker threads or processes are timed there, on a busy machine: a
# warm 4 MiB batch of "volume" read by one of two worker processes took
# 0.85 ms at the median but 2.4-4.3 ms at the 90th percentile (13 ms at
# worst), against 8.5 ms for a cold one. So a worker's batch counts as slow
# below half the rate, and read-ahead turns on only when most of the last
# few worker batches were slow (or faulted: a fresh worker's first batch
# took one major fault on warm data): advising on warm data cost the owning
# process a fifth of its throughput with two workers. The first batches of
# an epoch are read here, and a cold start is caught by `prime`.
WORKER_RATE_FACTOR = 0.5
WORKER_WINDOW, WORKER_SLOW = 8, 5


class ReadAhead:
    """Advises what the batches after the one just read will need.

    Args:
        reader: has ``advise(name, rows) -> bool`` (:class:`~h5feed.reader.Reader`);
            a reader without it disables read-ahead.
        columns: ``(name, row_nbytes)`` of the datasets a batch reads.
        batch_size: rows per batch of the epoch order.
        block: ``(block_rows, block_window)`` when the order is a block
            shuffle (:func:`h5feed._plan.block_permutation`), else None.
        depth: batches of large rows kept in flight ahead of the one read.
        lead_bytes: bytes of small-row windows kept in flight (block shuffle).
        min_row_bytes: the smallest row (or, for small rows, block) advised.
        cold_bytes_per_s: where major faults are not counted, a batch read
            slower than this turns read-ahead on.
    """

    def __init__(
        self,
        reader: Any,
        columns: Iterable[tuple[str, int]],
        *,
        batch_size: int = 1,
        block: tuple[int, int] | None = None,
        depth: int = 4,
        lead_bytes: int = LEAD_BYTES,
        min_row_bytes: int = MIN_ROW_BYTES,
        cold_bytes_per_s: float = COLD_BYTES_PER_S,
    ) -> None:
        columns = list(columns)
        self._row_nbytes = sum(nbytes for _, nbytes in columns)
        can_advise = callable(getattr(reader, "advise", None))
        block_rows, block_window = block if block is not None else (0, 0)
        self._row_names: list[str] = []
        self._window_names: list[str] = []
        window_row_nbytes = 0
        for name, nbytes in columns if can_advise else ():
            if nbytes >= min_row_bytes:
                self._row_names.append(name)
            elif block_rows * nbytes >= min_row_bytes:
                self._window_names.append(name)
                window_row_nbytes += nbytes
        self._window_rows = block_rows * block_window
        limits = getattr(reader, "read_ahead_limits", None)
        if self._window_names and callable(limits) and limits()[0] >= self._window_rows * window_row_nbytes:
            # One fault already reads around more than a window's rows; with
            # 8 MiB of read-around, advising 50 KiB blocks measured slower.
            self._window_names = []
        self._reader = reader
        self.batch_size = batch_size
        self.depth = depth
        self._lead_windows = (
            -(-lead_bytes // (self._window_rows * window_row_nbytes)) if self._window_names else 0
        )
        self.cold_bytes_per_s = cold_bytes_per_s
        self.cold_min_seconds = COLD_MIN_SECONDS
        # Ask the kernel whether reads need the disk (page-cache probes,
        # major-fault counts) where it tells; False: judge by time alone.
        self.ask_kernel = True
        self._update_enabled()
        self.reset()

    def _update_enabled(self) -> None:
        # False when nothing can ever be advised (small rows under a full
        # shuffle, no mmap); a plain attribute, read on every batch.
        self.enabled = bool(self._row_names or self._window_names)

    def reset(self) -> None:
        """A new epoch (or order): off, nothing advised yet."""
        self.active = False
        self._worker_slow: list[bool] = []  # the last WORKER_WINDOW worker batches: slow?
        self._advised_to = 0  # batches below this were advised
        self._windows_to = 0  # windows below this were advised

    def prime(self, order: np.ndarray) -> None:
        """Before the first batch of ``order`` is read: read ahead from it if it is not cached.

        A cold epoch's first batch would otherwise wait for its rows one
        fault at a time, each pulling in the kernel's read-around (a cold
        batch of "volume" read so took 200 ms on this project's machine,
        against 3 ms advised). Where the reader cannot tell whether the rows
        are cached, the first batches are advised anyway (one call per range
        on cached pages, once an epoch), without turning read-ahead on.
        """
        if not self.enabled or self.active or self._advised_to or self._windows_to:
            return
        names = self._row_names or self._window_names
        probe = getattr(self._reader, "cached", None) if self.ask_kernel else None
        cached = probe(names[0], order[: min(self.batch_size, 8)]) if callable(probe) else None
        if cached is True:
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
                advised = k < self._advised_to or (
                    bool(self._window_names) and k * size // self._window_rows < self._windows_to
                )
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
        if self._window_names:
            w_size = self._window_rows
            n_windows = -(-order.size // w_size)
            here = start // w_size if start < order.size else n_windows
            first, stop = max(self._windows_to, here), min(n_windows, here + 1 + self._lead_windows)
            for w in range(first, stop):
                if not self._advise(self._window_names, order[w * w_size:(w + 1) * w_size]):
                    return
            self._windows_to = max(self._windows_to, stop)

    def _advise(self, names: list[str], rows: np.ndarray) -> bool:
        for name in names:
            if not self._reader.advise(name, rows):
                # Not mapped: nothing to advise, ever.
                self._row_names, self._window_names = [], []
                self._update_enabled()
                return False
        return True
