"""Naming the damaged chunk when a read fails.

HDF5 reports a failed Fletcher32 checksum (or a chunk that does not
decompress) for the whole read call, without saying which rows are bad. When
a read of rows ``start..stop-1`` fails, :func:`read_error` reads that span
again chunk by chunk and names exactly the chunks that fail, with their row
ranges. This runs only after a failure, so sound reads cost nothing extra.
"""

from __future__ import annotations

from typing import Any


from .errors import ReadError

__all__ = ["damaged_chunks", "read_error"]

# At most this many damaged chunks are named in one message; `h5feed verify`
# lists them all.
_MAX_NAMED = 5


def damaged_chunks(dset: Any, start: int, stop: int) -> list[tuple[int, int]]:
    """The row ranges ``(first, last)`` of the chunks in ``start..stop-1`` that fail to read.

    Args:
        dset: the open h5py dataset (chunked along its first axis).
        start, stop: the rows whose read failed.
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
        except OSError:
            bad.append((first, last))
    return bad


def read_error(path: str, dset: Any, start: int, stop: int, exc: BaseException) -> ReadError:
    """A :class:`ReadError` for a failed read of rows ``start..stop-1`` of ``dset``.

    For chunked data it names the dataset and the exact rows of each damaged
    chunk (at most five; ``h5feed verify`` lists all).
    """
    cause = _first_line(exc)
    where = f"{path}:{dset.name}"
    try:
        bad = damaged_chunks(dset, start, stop)
    except Exception:  # narrowing is a courtesy; never mask the real error
        bad = []
    if not bad:
        return ReadError(f"{where}: cannot read rows {start}..{stop - 1}: {cause}")
    why = (
        "failed its Fletcher32 checksum: the data there is damaged"
        if dset.fletcher32
        else "cannot be read or decompressed: the data there is damaged"
    )
    rows = int(dset.chunks[0])
    named = ", ".join(f"rows {a}..{b} (chunk {a // rows})" for a, b in bad[:_MAX_NAMED])
    more = f" and {len(bad) - _MAX_NAMED} more chunk(s)" if len(bad) > _MAX_NAMED else ""
    return ReadError(
        f"{where}: {named}{more} {why}. `h5feed verify {path}` lists every damaged chunk. [{cause}]"
    )


def read_whole(path: str, dset: Any, as_str: bool = False) -> Any:
    """All of ``dset`` (as str when ``as_str``), or a :class:`ReadError` naming the damage."""
    try:
        return dset.asstr()[()] if as_str else dset[()]
    except OSError as exc:
        n = int(dset.shape[0]) if dset.shape else 1
        raise read_error(path, dset, 0, n, exc) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
