"""The completion record: how rows are hashed, and the record itself.

Every h5feed file ends with a root attribute ``h5feed_complete`` holding the
JSON object ``{"rows": N, "sha256": {dataset path: hex digest}}`` (a merged
file adds ``"parts"``: its part files, relative to its folder). A writer sets
it as the very last step, so a file without it was never finished.

This module is the one implementation of that record for everything that
makes or checks one: :class:`~h5feed.writer.DatasetWriter` and
:func:`~h5feed.merge.merge_files` hash rows as they go and write the record
(:func:`write_record`); merge and :func:`~h5feed.inspection.verify` read
datasets back in blocks of whole chunks (:func:`row_blocks`,
:func:`dataset_sha256`) and compare; :func:`~h5feed.layout.validate` reads
and checks the record (:func:`read_record`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from ._damage import HDF5_FAILURES, decoded, touching
from ._files import open_h5
from ._heap import check_attribute, check_dataset
from .errors import IncompleteFileError

__all__ = [
    "ATTR_COMPLETE",
    "dataset_sha256",
    "digest_of",
    "hash_ids",
    "hash_rows",
    "read_record",
    "read_rows",
    "record_digest",
    "record_digest_of",
    "replace_digests",
    "row_blocks",
    "write_record",
]

ATTR_COMPLETE = "h5feed_complete"

# Datasets are read back in blocks of about this many bytes.
BLOCK_BYTES = 16 * 1024 * 1024

_LITTLE = np.little_endian


def hash_rows(hasher: Any, block: np.ndarray | Iterable[str]) -> None:
    """Feed one block of rows into ``hasher`` as the completion record does.

    Numeric rows are hashed as their little-endian C-order bytes in the
    stored dtype; string rows (the IDs) as each string's UTF-8 bytes preceded
    by its length as 8 little-endian bytes. Feeding blocks in row order gives
    the same digest whatever the block sizes.

    Example:
        >>> h1, h2 = hashlib.sha256(), hashlib.sha256()
        >>> hash_rows(h1, np.arange(6, dtype="<i4"))
        >>> hash_rows(h2, np.arange(3, dtype="<i4")); hash_rows(h2, np.arange(3, 6, dtype="<i4"))
        >>> h1.hexdigest() == h2.hexdigest()
        True
    """
    if isinstance(block, np.ndarray) and block.dtype.kind not in "OUS":
        arr = np.ascontiguousarray(block)
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        hasher.update(memoryview(arr).cast("B"))
        return
    parts = []
    for item in block:
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(len(raw).to_bytes(8, "little"))
        parts.append(raw)
    hasher.update(b"".join(parts))


def hash_ids(hasher: Any, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
    """Feed IDs held as UTF-8 bytes (ID ``i`` is ``data[starts[i]:ends[i]]``)
    into ``hasher`` exactly as :func:`hash_rows` hashes them as strings.

    Builds the hashed stream (each ID's length as 8 little-endian bytes, then
    its bytes) with a few numpy calls, for blocks of many IDs.

    Example:
        >>> h1, h2 = hashlib.sha256(), hashlib.sha256()
        >>> hash_rows(h1, ["a", "bé"])
        >>> raw = np.frombuffer("a,bé".encode(), np.uint8)
        >>> hash_ids(h2, raw, np.array([0, 2]), np.array([1, 5]))
        >>> h1.hexdigest() == h2.hexdigest()
        True
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    lengths = ends - starts
    k = lengths.size
    if not k:
        return
    record = lengths + 8
    at = np.cumsum(record) - record  # where each ID's record starts in the stream
    size = int(record.sum())
    out = np.empty(size + 8, dtype=np.uint8)
    # The length slots, written as 8-byte integers through a view of `out`
    # whose items overlap (one byte apart): one call for all of them.
    slots = np.ndarray(shape=(size + 1,), dtype="<u8", buffer=out, strides=(1,))
    packed = bool((starts[1:] == ends[:-1]).all())
    if packed or bool((starts[1:] == ends[:-1] + 1).all() and not data[ends[:-1]].any()):
        # The IDs lie one after the other (with a NUL after each, as
        # `_ids.encode` makes them): the rest of `out` is their bytes in order.
        region = data[int(starts[0]) : int(ends[-1])]
        ids_bytes = region if packed else region[region != 0]
        is_id = np.ones(size + 8, dtype=np.uint8)
        np.ndarray(shape=(size + 1,), dtype="<u8", buffer=is_id, strides=(1,))[at] = 0
        is_id[size:] = 0
        out[is_id.view(bool)] = ids_bytes
    else:
        total = int(lengths.sum())
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[np.repeat(at + 8, lengths) + within] = data[np.repeat(starts, lengths) + within]
    slots[at] = lengths.astype("<u8")
    hasher.update(memoryview(out[:size]))


def digest_of(rows: np.ndarray | Sequence[str]) -> str:
    """The record's digest of rows held whole in memory (IDs, a split).

    Example:
        >>> digest_of(["a", "b"]) == digest_of(np.array(["a", "b"], dtype=object))
        True
    """
    hasher = hashlib.sha256()
    hash_rows(hasher, rows)
    return hasher.hexdigest()


def row_blocks(dsets: Sequence[h5py.Dataset], block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, int]]:
    """Row ranges ``(start, stop)`` that cover datasets read side by side.

    The datasets share their first dimension. Each range holds about
    ``block_bytes`` of all of them together, and whole chunks of the first
    chunked one (at least one chunk), so that no chunk of it is read and
    decompressed twice.
    """
    n = int(dsets[0].shape[0]) if dsets[0].shape else 0
    row_bytes = sum(max(1, int(np.prod(d.shape[1:], dtype=np.int64)) * d.dtype.itemsize) for d in dsets)
    chunk = next((int(d.chunks[0]) for d in dsets if d.chunks is not None), 1)
    step = max(chunk, (max(1, block_bytes // row_bytes) // chunk) * chunk)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def read_rows(dset: h5py.Dataset, start: int, stop: int) -> Any:
    """Rows ``start..stop-1`` of ``dset``; strings as ``str``, as they are hashed."""
    if h5py.check_string_dtype(dset.dtype) is not None:
        check_dataset(dset.file, dset, (start, stop))  # NOTE [ Global heap ] (h5feed/_heap.py)
        values = decoded(dset[start:stop].tolist(), os.fspath(dset.file.filename), dset.name, start)
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return dset[start:stop]


def dataset_sha256(
    dset: h5py.Dataset,
    *,
    on_block: Callable[[int], None] | None = None,
    on_unreadable: Callable[[int, int, BaseException], None] | None = None,
    on_rows: Callable[[int, Any], None] | None = None,
) -> str:
    """The completion record's digest of a whole dataset, read in blocks.

    Args:
        dset: the dataset.
        on_block: called with the number of rows after each block.
        on_unreadable: called with ``(start, stop, error)`` for a block that
            cannot be read (any of HDF5's failures, ``_damage.HDF5_FAILURES``;
            the digest then covers the readable rows only); without it the
            error is raised.
        on_rows: called with ``(start, rows)`` for each block read, so that
            a caller checks the rows without reading them again.
    """
    hasher = hashlib.sha256()
    for start, stop in row_blocks([dset]):
        try:
            rows = read_rows(dset, start, stop)
        except HDF5_FAILURES as exc:
            if on_unreadable is None:
                raise
            on_unreadable(start, stop, exc)
        else:
            hash_rows(hasher, rows)
            if on_rows is not None:
                on_rows(start, rows)
        if on_block is not None:
            on_block(stop - start)
    return hasher.hexdigest()


def write_record(
    f: h5py.File,
    rows: int,
    digests: Mapping[str, str],
    *,
    parts: Sequence[str] | None = None,
    part_records: Sequence[str] | None = None,
    split_files: Sequence[str] | None = None,
    split_records: Sequence[str] | None = None,
) -> None:
    """Set the completion record: the writer's last step, after every dataset
    and attribute is in place. ``part_records`` (a grown file's): the
    :func:`record_digest` of each of ``parts``; ``split_records`` likewise of
    each of its ``split_files`` (left out when it has none)."""
    record: dict[str, Any] = {"rows": int(rows), "sha256": dict(digests)}
    if parts is not None:
        record["parts"] = list(parts)
    if part_records is not None:
        record["part_records"] = list(part_records)
    if split_files:
        record["split_files"] = list(split_files)
        record["split_records"] = list(split_records or ())
    f.attrs[ATTR_COMPLETE] = json.dumps(record, sort_keys=True)


def record_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the completion record of the file ``path``, as stored
    (its UTF-8 bytes): how a grown file's record names each part's, so that
    a part replaced by another file is noticed on open.

    Raises:
        IncompleteFileError: the file has no valid completion record.
    """
    with open_h5(path) as f:
        return record_digest_of(f)


def record_digest_of(f: h5py.File) -> str:
    """:func:`record_digest` of an open file."""
    read_record(f)
    raw = f.attrs[ATTR_COMPLETE]
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def replace_digests(f: h5py.File, prefix: str, digests: Mapping[str, str], *, drop: Sequence[str] = ()) -> None:
    """Rewrite the record of a finished file with every digest of a dataset
    under ``prefix`` (``"splits/"``) replaced by ``digests``, and the keys
    ``drop`` removed; the rest of the record is kept as it is."""
    record = read_record(f)
    kept = {name: d for name, d in record["sha256"].items() if not name.startswith(prefix)}
    record["sha256"] = {**kept, **digests}
    for key in drop:
        record.pop(key, None)
    f.attrs[ATTR_COMPLETE] = json.dumps(record, sort_keys=True)


def read_record(f: h5py.File, n_rows: int | None = None) -> dict[str, Any]:
    """The parsed completion record of ``f``; ``n_rows`` None checks its form only.

    Raises:
        IncompleteFileError: no record, an unreadable one, or one whose row
            count is not ``n_rows``.
        DamagedFileError: HDF5 cannot read the attribute.
    """
    with touching(f.filename, f"/ (attribute {ATTR_COMPLETE!r})"):
        if ATTR_COMPLETE in f.attrs:
            check_attribute(f, ATTR_COMPLETE)  # NOTE [ Global heap ] (h5feed/_heap.py)
            raw = f.attrs[ATTR_COMPLETE]
        else:
            raw = None
    if raw is None:
        raise IncompleteFileError(
            f"incomplete file: {f.filename} has no completion record "
            f"({ATTR_COMPLETE!r}); its writer did not finish. Convert it again."
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    shown = repr(raw) if len(repr(raw)) <= 300 else repr(raw)[:300] + "..."
    unreadable = f"incomplete file: {f.filename}: the completion record is unreadable: {shown}"
    try:
        record = json.loads(str(raw))
        rows = record["rows"]
        digests = record["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IncompleteFileError(unreadable) from exc
    if (
        not isinstance(digests, dict)
        or not all(isinstance(v, str) for v in digests.values())
        or isinstance(rows, bool)
        or not isinstance(rows, int)
    ):
        raise IncompleteFileError(unreadable)
    if n_rows is not None and rows != n_rows:
        raise IncompleteFileError(
            f"incomplete file: {f.filename}: the completion record says {rows!r} rows, "
            f"the file holds {n_rows}"
        )
    return record
