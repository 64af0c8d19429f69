"""Read-ahead while batches come from disk: the next batches' rows in flight.

On a cold page cache each large row of a shuffled batch is one synchronous
read, issued one after another (NOTE [ Cold cache ] in ``reader.py``). When a
batch was read slower than memory can deliver, :class:`ReadAhead` asks the
reader to start reading the rows of the next ``depth`` batches of the epoch
order, so the disk always has work queued. It switches on at the first slow
batch of an epoch and stays on for that epoch; each new epoch starts off
again, so a warm second epoch pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["ReadAhead"]

# Rows smaller than this come in many per fault (the kernel's read-around,
# NOTE [ Cold cache ]); advising them cost more than it saved on "small".
MIN_ROW_BYTES = 32 << 10
# A batch read slower than this came (partly) from disk: warm pages gather
# at several GiB/s, a cold 128 KiB row costs a disk round trip.
COLD_BYTES_PER_S = 2 << 30


class ReadAhead:
    """Advises the rows of the batches after the one just read.

    Args:
        reader: has ``advise(name, rows) -> bool`` (:class:`~h5feed.reader.Reader`);
            a reader without it disables read-ahead.
        columns: ``(name, row_nbytes)`` of the datasets a batch reads.
        depth: batches kept in flight ahead of the one being read.
        min_row_bytes: columns with smaller rows are never advised.
        cold_bytes_per_s: a batch read slower than this turns read-ahead on.
    """

    def __init__(
        self,
        reader: Any,
        columns: Iterable[tuple[str, int]],
        *,
        depth: int = 4,
        min_row_bytes: int = MIN_ROW_BYTES,
        cold_bytes_per_s: float = COLD_BYTES_PER_S,
    ) -> None:
        columns = list(columns)
        self._row_nbytes = sum(nbytes for _, nbytes in columns)
        self._names = [name for name, nbytes in columns if nbytes >= min_row_bytes]
        if not callable(getattr(reader, "advise", None)):
            self._names = []
        self._reader = reader
        # False when nothing can ever be advised (small rows, no mmap); a
        # plain attribute, read on every batch.
        self.enabled = bool(self._names)
        self.depth = depth
        self.cold_bytes_per_s = cold_bytes_per_s
        self.reset()

    def reset(self) -> None:
        """A new epoch (or order): off, nothing advised yet."""
        self.active = False
        self._advised_to = 0  # batches below this were advised

    def batch_read(self, k: int, n_rows: int, seconds: float, rows_of: Callable[[int], np.ndarray], n_batches: int) -> None:
        """Batch ``k`` (``n_rows`` rows) took ``seconds`` to read; advise ahead.

        ``rows_of(c)`` gives the rows of batch ``c`` of the epoch order.
        """
        if not self._names:
            return
        if not self.active:
            if seconds <= 0 or n_rows * self._row_nbytes / seconds >= self.cold_bytes_per_s:
                return
            self.active = True
        start = max(self._advised_to, k + 1)
        stop = min(n_batches, k + 1 + self.depth)
        for c in range(start, stop):
            rows = rows_of(c)
            for name in self._names:
                if not self._reader.advise(name, rows):
                    self._names = []  # not mapped: nothing to advise, ever
                    self.enabled = False
                    return
        self._advised_to = max(self._advised_to, stop)
