"""Damaged files: one mechanism that names the damage.

NOTE [ Damaged files ]
HDF5 reports a damaged file through h5py as whatever its parser hits first:
``OSError`` ("ran off end of input buffer while decoding"), ``RuntimeError``
("wrong B-tree signature", "Link iteration failed"), ``KeyError`` (an object
header that does not parse), ``TypeError``/``ValueError`` (a datatype with no
numpy equivalent, a string that is not UTF-8), ``IndexError``/
``OverflowError``/``MemoryError`` (absurd sizes). Every place where h5feed
touches a file -- opening it (``_files.open_h5``), each step of
``layout.validate``, the readers, ``h5feed verify`` and ``h5feed info``,
merge -- does so inside :class:`touching`, which turns any of these into an
h5feed error naming the file and the HDF5 object, with the original chained
as ``__cause__``:

- :class:`~h5feed.errors.DamagedFileError` (a ``FormatError``, so a
  ``ValueError``): the file's structure is damaged; it is refused;
- :class:`~h5feed.errors.ReadError` (an ``OSError``): data cannot be read
  back -- a chunk that fails its checksum or does not decompress, and any
  failure while reading rows after the file was opened. For a read of rows
  ``start..stop-1``, :func:`read_error` reads that span again chunk by chunk
  and names exactly the chunks that fail, with their row ranges; this runs
  only after a failure, so sound reads cost nothing extra.

h5feed's own errors pass through unchanged; nothing else is caught, so a
bug in h5feed (an ``AttributeError``, say) is not dressed up as damage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._heap import check_dataset
from .errors import DamagedFileError, H5FeedError, ReadError

__all__ = ["HDF5_FAILURES", "damaged_chunks", "decoded", "first_line", "read_error", "read_whole", "touching"]

# At most this many damaged chunks are named in one message; `h5feed verify`
# lists them all.
_MAX_NAMED = 5

# What h5py and numpy raise when HDF5 meets damage (NOTE [ Damaged files ]).
# UnicodeDecodeError is a ValueError.
HDF5_FAILURES: tuple[type[BaseException], ...] = (
    OSError, RuntimeError, KeyError, TypeError, ValueError, IndexError, OverflowError, MemoryError,
)


class touching:  # noqa: N801 - used as a statement: ``with touching(path, "/x"):``
    """Turn HDF5's failures inside the block into an h5feed error naming the damage.

    Args:
        path: the file.
        obj: the HDF5 object being touched: ``"/x"``, ``"/"`` (the root group
            and its attributes), ``"/splits/train"``.
        error: the class to raise: :class:`~h5feed.errors.DamagedFileError`
            (a file refused) or :class:`~h5feed.errors.ReadError` (data that
            cannot be read back).
        dset: with ``rows``, the dataset whose rows ``rows = (start, stop)``
            are being read: the :class:`~h5feed.errors.ReadError` then names
            the damaged chunks (:func:`read_error`). ``rows`` may be updated
            inside the block, to the span being read.

    A plain class rather than ``contextlib.contextmanager``: the readers
    enter it once per batch, where a generator's set-up would show.

    Example:
        >>> with touching("data.h5", "/ids"):  # doctest: +SKIP
        ...     ids = f["ids"].asstr()[()]
    """

    __slots__ = ("dset", "error", "obj", "path", "rows")

    def __init__(self, path: Any, obj: str, error: type[H5FeedError] = DamagedFileError, *,
                 dset: Any = None, rows: tuple[int, int] | None = None) -> None:
        self.path = path
        self.obj = obj
        self.error = error
        self.dset = dset
        self.rows = rows

    def __enter__(self) -> touching:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, H5FeedError) or not isinstance(exc, HDF5_FAILURES):
            return False
        if self.dset is not None and self.rows is not None:
            raise read_error(str(self.path), self.dset, self.rows[0], self.rows[1], exc) from exc
        what = "damaged: HDF5 cannot read it" if self.error is DamagedFileError else "cannot be read"
        obj = "/ (the root group)" if self.obj == "/" else self.obj
        raise self.error(f"{self.path}:{obj}: {what} ({type(exc).__name__}: {first_line(exc)})") from exc


def damaged_chunks(dset: Any, start: int, stop: int) -> list[tuple[int, int, str]]:
    """The chunks in rows ``start..stop-1`` that fail to read.

    Args:
        dset: the open h5py dataset (chunked along its first axis).
        start, stop: the rows whose read failed.

    Returns:
        ``(first row, last row, the error's first line)`` of each damaged
        chunk; empty when ``dset`` is not chunked. (Not the error itself:
        its traceback would keep ``dset``, and so the file, open.)
    """
    if dset.chunks is None or not dset.shape:
        return []
    rows = int(dset.chunks[0])
    n = int(dset.shape[0])
    bad = []
    for first in range((start // rows) * rows, stop, rows):
        last = min(n, first + rows) - 1
        try:
            dset[first : last + 1]
        except HDF5_FAILURES as exc:
            bad.append((first, last, first_line(exc)))
    return bad


def read_error(path: str, dset: Any, start: int, stop: int, exc: BaseException) -> ReadError:
    """A :class:`ReadError` for a failed read of rows ``start..stop-1`` of ``dset``.

    For chunked data it names the dataset and the exact rows of each damaged
    chunk (at most five; ``h5feed verify`` lists all).
    """
    cause = first_line(exc)
    try:
        where = f"{path}:{dset.name}"
        bad = damaged_chunks(dset, start, stop)
        checked = bool(dset.fletcher32)
        rows = int(dset.chunks[0]) if bad else 0
    except Exception:  # narrowing is a courtesy; never mask the real error
        where = f"{path}:{getattr(dset, 'name', '') or '/'}"
        bad = []
    if not bad:
        return ReadError(f"{where}: cannot read rows {start}..{stop - 1}: {cause}")
    why = (
        "failed its Fletcher32 checksum: the data there is damaged"
        if checked
        else "cannot be read or decompressed: the data there is damaged"
    )
    named = ", ".join(f"rows {a}..{b} (chunk {a // rows})" for a, b, _ in bad[:_MAX_NAMED])
    more = f" and {len(bad) - _MAX_NAMED} more chunk(s)" if len(bad) > _MAX_NAMED else ""
    return ReadError(
        f"{where}: {named}{more} {why}. `h5feed verify {path}` lists every damaged chunk. [{cause}]"
    )


def read_whole(path: str, dset: Any, as_str: bool = False) -> Any:
    """All of ``dset`` (as str when ``as_str``), or a :class:`ReadError` naming the damage."""
    with touching(path, dset.name, ReadError, dset=dset, rows=(0, int(dset.shape[0]) if dset.shape else 1)):
        if as_str:
            check_dataset(dset.file, dset)  # NOTE [ Global heap ] (h5feed/_heap.py)
            return dset.asstr()[()]
        return dset[()]


def decoded(values: Any, path: str, obj: str, rows: Any) -> list[str]:
    """Strings h5py read as bytes, decoded as UTF-8.

    Args:
        values: the bytes read.
        path, obj: the file and the dataset, for the message.
        rows: the row of each value (an array), or of the first (an int; the
            values are then consecutive rows).

    Raises:
        ReadError: a string that is not UTF-8, naming its row, with the
            ``UnicodeDecodeError`` as ``__cause__``.
    """
    values = values if isinstance(values, list) else list(values)
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError as exc:
        at = 0
        for at, v in enumerate(values):  # noqa: B007 - the first bad one is wanted
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                break
        row = int(rows) + at if isinstance(rows, (int, np.integer)) else int(np.asarray(rows)[at])
        raise ReadError(
            f"{path}:{obj}: the string of row {row} is not UTF-8 ({first_line(exc)}): the data there is damaged"
        ) from exc


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (h5py's run to many), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
