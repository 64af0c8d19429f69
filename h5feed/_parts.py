"""Reading a merged file's virtual datasets from its parts directly.

NOTE [ Reading virtual datasets ]
HDF5 reads a virtual dataset one selection at a time through the library,
so a shuffled batch costs one HDF5 call per run of rows, like a chunked
file, and never gets the reader's memory-mapped fast path (the virtual
dataset has no storage of its own). But each part of a merged file is an
ordinary h5feed file, usually contiguous. :class:`PartsReader` therefore
uses the mapping that :func:`~h5feed.layout.validate` checked (each
column's :class:`~h5feed.layout.VirtualPart` list): it splits a batch's rows
by part and reads each part's rows with an ordinary
:class:`~h5feed.reader.Reader` over that part, memory-mapped where the part
allows. Columns that are not virtual, and the IDs, are read from the merged
file itself. Measured (2 busy cores, warm cache) on 4 contiguous parts of
2048 rows of 16 KiB, a shuffled epoch in batches of 64: 59,000 samples/s,
against 6,500 through HDF5's virtual dataset and 230,000 from a ``--copy``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .layout import ColumnInfo, Layout
from .reader import Reader

__all__ = ["PartsReader", "make_reader"]


def make_reader(layout: Layout) -> Reader | PartsReader:
    """The reader for ``layout``: a :class:`PartsReader` when it has virtual columns."""
    if any(col.sources for col in layout.columns.values()):
        return PartsReader(layout)
    return Reader(layout)


class PartsReader:
    """A :class:`~h5feed.reader.Reader` for a file with virtual columns.

    Same interface (``read``, ``read_ids``, ``close``, pickling, fork
    safety); see NOTE [ Reading virtual datasets ].
    """

    def __init__(self, layout: Layout, *, use_mmap: bool = True) -> None:
        self.layout = layout
        self.use_mmap = bool(use_mmap)
        self._base = Reader(layout, use_mmap=use_mmap)
        # One Reader per part file, over just the columns it holds.
        columns: dict[str, dict[str, ColumnInfo]] = {}
        for col in layout.columns.values():
            for part in col.sources or ():
                columns.setdefault(part.path, {})[col.name] = part.column
        self._parts = {
            path: Reader(
                Layout(path=path, n_rows=max(c.shape[0] for c in cols.values()), columns=cols, splits={}),
                use_mmap=use_mmap,
            )
            for path, cols in columns.items()
        }
        self._starts = {
            col.name: np.array([p.start for p in col.sources], dtype=np.int64)
            for col in layout.columns.values()
            if col.sources
        }

    def read(self, name: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` of dataset ``name``, in the order given (see :meth:`Reader.read`)."""
        col = self.layout.column(name)
        if not col.sources:
            return self._base.read(name, rows, out)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= col.shape[0]):
            bad = rows[(rows < 0) | (rows >= col.shape[0])][0]
            raise IndexError(f"{self.layout.path}:/{name}: row {int(bad)} is outside [0, {col.shape[0]})")
        if out is None:
            out = np.empty((rows.size, *col.row_shape), dtype=col.dtype.newbyteorder("="))
        which = np.searchsorted(self._starts[name], rows, side="right") - 1
        for k in np.unique(which).tolist():
            part = col.sources[k]
            at = np.flatnonzero(which == k)
            local = rows[at] - part.start + part.source_start
            reader = self._parts[part.path]
            if at.size == rows.size:
                return reader.read(name, local, out)
            out[at] = reader.read(name, local)
        return out

    # Rows of a batch are checked by read() anyway: no separate fast path.
    take = read

    def read_ids(self, rows: np.ndarray) -> list[str]:
        """The sample IDs of ``rows`` (stored in the merged file itself)."""
        return self._base.read_ids(rows)

    def close(self) -> None:
        """Release this process's handles on the file and its parts."""
        self._base.close()
        for reader in self._parts.values():
            reader.close()

    def __enter__(self) -> PartsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"layout": self.layout, "use_mmap": self.use_mmap}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["layout"], use_mmap=state["use_mmap"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<PartsReader {os.path.basename(self.layout.path)!r}: {len(self._parts)} parts>"
