"""One big array pair ``X.npy`` (and ``Y.npy``) -> one h5feed file.

Both arrays are read block by block (with ``pread``, so that even the page
cache pages of a huge array never count against this process), so an array
larger than memory converts in bounded memory. Their headers are checked the same
way as sample files (see ``npy.py``): no pickles, and the file must hold
the bytes it declares.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence, Set as AbstractSet
from typing import Any

import numpy as np

from h5feed.errors import SourceError

from ._common import (
    ConversionResult,
    Options,
    block_rows,
    check_partition_ids,
    check_weights,
    gather_blocks,
    load_partition,
    load_weights,
    some,
    weight_value,
    write_dataset,
)
from .npy import NpyHeader, read_npy_header

__all__ = ["LABEL_TYPES", "NpyRows", "from_arrays", "map_npy"]

LABEL_TYPES = ("auto", "index", "value")


class NpyRows:
    """Rows of a C-order ``.npy`` file, read on demand with ``pread``.

    Unlike a memory map, the pages read do not stay in this process's
    resident memory, so converting an array of any size keeps the process
    small. Supports ``len``, ``rows[a:b]`` and ``rows[sorted int array]``,
    which is all the converter asks of it.
    """

    def __init__(self, path: str, header: NpyHeader) -> None:
        self.path = path
        self.shape = header.shape
        self.dtype = header.dtype
        self.ndim = len(header.shape)
        self._offset = header.offset
        self._row_shape = header.shape[1:]
        self._row_nbytes = int(np.prod(self._row_shape, dtype=np.int64)) * header.dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, stop: int, out: np.ndarray) -> None:
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, end = 0, (stop - start) * self._row_nbytes
        while pos < end:
            n = os.preadv(self._fd, [view[pos:end]], self._offset + start * self._row_nbytes + pos)
            if n <= 0:
                raise SourceError(f"{self.path}: truncated while reading rows {start}..{stop - 1}")
            pos += n

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("NpyRows supports contiguous slices only")
            out = np.empty((max(0, stop - start), *self._row_shape), dtype=self.dtype)
            if stop > start:
                self._read(start, stop, out)
            return out.astype(self.dtype.newbyteorder("="), copy=False)
        rows = np.asarray(key, dtype=np.int64)
        out = np.empty((rows.size, *self._row_shape), dtype=self.dtype)
        # Runs of consecutive rows are read with one call each.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for part, first in zip(np.split(np.arange(rows.size), breaks), rows[np.r_[0, breaks]] if rows.size else []):
            self._read(int(first), int(first) + part.size, out[part[0] : part[-1] + 1])
        return out.astype(self.dtype.newbyteorder("="), copy=False)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def map_npy(path: str | os.PathLike[str], what: str) -> Any:
    """Open a numeric ``.npy`` file for reading rows, after checking its header.

    C-order files (what ``np.save`` writes) are read with :class:`NpyRows`;
    Fortran-order ones, whose rows are not contiguous, are memory-mapped (as
    is everything where ``os.preadv`` is missing, e.g. on Windows).

    Raises:
        SourceError: missing, not a numeric .npy, truncated.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SourceError(f"{path}: no such file ({what})")
    try:
        with open(path, "rb") as fh:
            header = read_npy_header(fh, f"{path} ({what})")
    except OSError as exc:
        raise SourceError(f"{path} ({what}): cannot read: {exc.strerror or exc}") from exc
    if not header.shape:
        raise SourceError(f"{path} ({what}): expected an array with one row per sample. Received: a scalar")
    if header.nbytes == 0:
        return np.zeros(header.shape, dtype=header.dtype)
    if header.fortran_order or not hasattr(os, "preadv"):  # Windows has no preadv
        return np.memmap(path, dtype=header.dtype, mode="r", offset=header.offset, shape=header.shape, order="F")
    return NpyRows(path, header)


def _as_array(value: Any, what: str) -> np.ndarray:
    if isinstance(value, (str, os.PathLike)):
        return map_npy(value, what)
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise SourceError(f"{what}: expected a numeric array. Received: dtype {arr.dtype}")
    if arr.ndim == 0:
        raise SourceError(f"{what}: expected an array with one row per sample. Received: a scalar")
    return arr


class _RowNumbers(Sequence[str]):
    """The default IDs ``"0"``, ``"1"``, ...: made a block at a time as the
    writer takes them, never all at once (10 million rows would otherwise
    hold 10 million strings)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [str(j) for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return str(i % self.n)

    def ids(self) -> _RowNumberSet:
        return _RowNumberSet(self.n)


class _RowNumberSet(AbstractSet[str]):
    """:class:`_RowNumbers` as a set, for membership tests."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __contains__(self, sid: object) -> bool:
        return (
            isinstance(sid, str) and sid.isascii() and sid.isdigit() and str(int(sid)) == sid and int(sid) < self.n
        )

    def __iter__(self) -> Iterator[str]:
        return (str(i) for i in range(self.n))

    def __len__(self) -> int:
        return self.n


def _read_ids(ids: Any, n: int) -> list[str]:
    if isinstance(ids, (str, os.PathLike)):
        where = os.fspath(ids)
        try:
            with open(where, encoding="utf-8") as fh:
                values = [line.rstrip("\r\n").strip() for line in fh]
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{where}: cannot read the IDs: {exc}") from exc
        while values and not values[-1]:
            values.pop()
        empty = [i + 1 for i, v in enumerate(values) if not v]
        if empty:
            raise SourceError(f"{where}: line {empty[0]}: empty sample ID ({len(empty)} empty lines)")
    else:
        where = "ids"
        values = list(ids)
        for v in values:
            if not isinstance(v, str) or not v:
                raise SourceError(f"ids: sample IDs must be non-empty text. Received: {v!r}")
    if len(values) != n:
        raise SourceError(f"{where}: {len(values)} IDs for {n} rows of X; expected one ID per row")
    seen: set[str] = set()
    dupes = []
    for v in values:
        if v in seen:
            dupes.append(v)
        seen.add(v)
    if dupes:
        raise SourceError(f"{where}: {len(dupes)} duplicate sample ID(s), e.g. {some(dupes)}")
    return values


def _class_range(y: np.ndarray, n_classes: int | None, where: str, step: int) -> int:
    """Check integer labels block by block (y may be mapped); return n_classes."""
    low, high = None, None
    for start in range(0, y.shape[0], step):
        block = np.asarray(y[start : start + step])
        lo, hi = int(block.min()), int(block.max())
        low = lo if low is None else min(low, lo)
        high = hi if high is None else max(high, hi)
        limit = n_classes if n_classes is not None else None
        if lo < 0 or (limit is not None and hi >= limit):
            bad = int(np.flatnonzero((block < 0) | (block >= (limit if limit is not None else np.inf)))[0])
            raise SourceError(
                f"{where}: row {start + bad}: class index {int(block[bad])!r} is outside "
                f"[0, {limit if limit is not None else 'n_classes'})"
            )
    return int(high) + 1 if n_classes is None else n_classes  # type: ignore[operator]


def _weights_by_id(weights: Any, ids: list[str], x_where: str) -> dict[str, float]:
    """``{ID: weight}`` from a ``.npy`` or an array (one per row), or from a
    JSON/CSV file or a dict by ID (:func:`load_weights`).

    Raises:
        SourceError: not one weight per row, or weights that are not finite
            numbers >= 0.
    """
    is_npy = isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower().endswith(".npy")
    if not (is_npy or isinstance(weights, (np.ndarray, list, tuple))):
        where, by_id = load_weights(weights)
        check_weights(where, by_id, ids, x_where)
        return by_id
    where = os.fspath(weights) if is_npy else "weights"
    w = _as_array(weights, "W")
    if w.dtype.kind not in "iuf" or w.ndim != 1 or w.shape[0] != len(ids):
        raise SourceError(
            f"{where}: expected one weight per row of X, shape ({len(ids)},). Received: shape {tuple(w.shape)!r}"
        )
    values = np.asarray(w[:], dtype=np.float64)
    if isinstance(w, NpyRows):
        w.close()
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        weight_value(float(values[bad[0]]), f"{where}: row {int(bad[0])} (sample {ids[int(bad[0])]!r})")
    return dict(zip(ids, values.tolist()))


def from_arrays(
    x: str | os.PathLike[str] | np.ndarray,
    y: str | os.PathLike[str] | np.ndarray | None,
    out: str | os.PathLike[str] | None = None,
    *,
    ids: str | os.PathLike[str] | Sequence[str] | None = None,
    label_type: str = "auto",
    n_classes: int | None = None,
    partition: str | os.PathLike[str] | Mapping[str, Sequence[str]] | None = None,
    compression: str | None = None,
    chunk_rows: int | None = None,
    shuffle_rows: bool = False,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    checksum: bool = False,
    quiet: bool = True,
    progress: Any = None,
    shard: tuple[int, int] | str | None = None,
    metadata: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    append_to: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | np.ndarray | Mapping[str, Any] | None = None,
) -> ConversionResult:
    """Convert one array of samples (and one of targets) into one file.

    Args:
        x: ``X.npy`` (read block by block) or an array (a ``np.memmap``
            works), shape ``(N, *sample_shape)``.
        y: ``Y.npy`` or an array with N rows; None for unlabelled data.
        out: the h5feed file to write (or give ``append_to``).
        ids: a text file with one ID per line, or a list of N IDs; None
            numbers the rows ``"0"``, ``"1"``, ...
        label_type: ``"auto"`` (a 1-D integer ``y`` holds class indices,
            anything else targets), ``"index"`` or ``"value"``.
        n_classes: the number of classes (default: largest label + 1).
        partition: ``{split: [IDs]}`` as for
            :func:`~h5feed.convert.from_npy_dir`.
        compression, chunk_rows, shuffle_rows, seed, overwrite, checksum,
        quiet, progress, shard, metadata, append_to: as for :func:`~h5feed.convert.from_npy_dir`.
        workers: accepted for symmetry; copying from a memory map gains
            nothing from more processes, so it is done in this one.
        weights: per-sample weights (finite numbers >= 0), written as the
            float32 dataset ``w`` for ``H5Sequence(..., sample_weight="w")``:
            ``W.npy`` or an array with one weight per row of X, or
            ``{ID: weight}`` as a JSON file, a CSV file with header
            ``id,weight``, or a dict.

    Returns:
        A :class:`ConversionResult`.

    Raises:
        SourceError: unreadable, object or truncated arrays, rows that
            disagree, bad or duplicate IDs, labels out of range, no rows,
            weights that do not cover the rows exactly or are not finite
            numbers >= 0.
    """
    options = Options(compression=compression, chunk_rows=chunk_rows, shuffle_rows=shuffle_rows, seed=seed,
                      workers=workers, overwrite=overwrite, checksum=checksum, quiet=quiet, progress=progress,
                      shard=shard, metadata=metadata, append_to=append_to)
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES!r}. Received: {label_type!r}")
    out = options.output(out)
    x_where = os.fspath(x) if isinstance(x, (str, os.PathLike)) else "x"
    xa = _as_array(x, "X")
    n = xa.shape[0]
    if n == 0:
        raise SourceError(f"{x_where}: has no rows (an empty source)")
    ya = None
    if y is not None:
        y_where = os.fspath(y) if isinstance(y, (str, os.PathLike)) else "y"
        ya = _as_array(y, "Y")
        if ya.shape[0] != n:
            raise SourceError(f"{y_where}: has {ya.shape[0]} rows, but X has {n}; expected one label per row")
    elif label_type != "auto" or n_classes is not None:
        raise ValueError("label_type and n_classes need labels (y)")
    id_list: Sequence[str] = _RowNumbers(n) if ids is None else _read_ids(ids, n)
    step = block_rows(int(np.prod(xa.shape[1:], dtype=np.int64)) * xa.dtype.itemsize)

    classes = None
    if ya is not None:
        is_index = label_type == "index" or (label_type == "auto" and ya.ndim == 1 and ya.dtype.kind in "iu")
        if is_index:
            if ya.ndim != 1 or ya.dtype.kind not in "iu":
                raise SourceError(
                    f"{y_where}: label_type='index' needs 1-D integer labels. Received: "
                    f"shape {ya.shape!r}, dtype {ya.dtype}"
                )
            classes = _class_range(ya, n_classes, y_where, max(step, 1 << 20))
        elif n_classes is not None:
            raise ValueError("n_classes needs class-index labels (label_type='index')")
    splits: dict[str, list[str]] = {}
    if partition is not None:
        where, splits = load_partition(partition)
        known = id_list.ids() if isinstance(id_list, _RowNumbers) else set(id_list)
        check_partition_ids(where, splits, known, x_where)
    weight_map = None if weights is None else _weights_by_id(weights, id_list, x_where)

    order = options.select(id_list, x_where)
    try:
        return write_dataset(
            out, gather_blocks(xa, ya, id_list, order, step), options=options, n_rows=len(order),
            sample_shape=xa.shape[1:], dtype=xa.dtype.newbyteorder("="),
            target_shape=() if ya is None or classes is not None else ya.shape[1:],
            target_dtype=None if ya is None else (np.int64 if classes is not None else ya.dtype.newbyteorder("=")),
            n_classes=classes, splits=splits, weights=weight_map, label=f"converting {x_where}",
        )
    finally:
        for arr in (xa, ya):
            if isinstance(arr, NpyRows):
                arr.close()
