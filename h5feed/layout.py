"""The on-disk layout of an h5feed file, format version 1, in one place.

An h5feed file is a plain HDF5 file that any HDF5 tool can read::

    /ids              (N,)            UTF-8 strings, unique: the sample IDs
    /x                (N, *sample)    any numeric dtype: the samples
    /y                (N,) or (N, *target)  class indices or numeric targets
                                      (optional: absent for unlabelled data)
    /splits/<name>    (k,)            int64 rows, strictly increasing, < N
    /<other>          (N, ...)        optional further per-row datasets

    root attributes:
    h5feed_format     1
    n_classes         int, when /y holds class indices
    class_names       strings, optional, one per class
    h5feed_complete   JSON completion record, written last (see below)

The completion record is a JSON object ``{"rows": N, "sha256": {path: hex}}``
with one SHA-256 per dataset (see :func:`hash_rows` for what is hashed). A
writer sets it as the very last step, so a file without it was never finished
and is refused.

:func:`validate` checks all of this once, when a file is opened, and returns a
frozen :class:`Layout`; nothing else in h5feed guesses names or shapes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace as _replace
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np

from ._damage import read_whole
from ._files import open_h5
from .errors import (
    IncompleteFileError,
    LayoutError,
    UnknownSplitError,
    UnsupportedFormatVersionError,
    UntrustedFileError,
)

__all__ = [
    "ATTR_CLASS_NAMES",
    "ATTR_COMPLETE",
    "ATTR_FORMAT",
    "ATTR_N_CLASSES",
    "FORMAT_VERSION",
    "IDS",
    "SPLITS",
    "X",
    "Y",
    "ColumnInfo",
    "Layout",
    "VirtualPart",
    "hash_rows",
    "open_and_validate",
    "read_ids",
    "read_split",
    "validate",
]

FORMAT_VERSION = 1

IDS = "ids"
X = "x"
Y = "y"
SPLITS = "splits"

ATTR_FORMAT = "h5feed_format"
ATTR_N_CLASSES = "n_classes"
ATTR_CLASS_NAMES = "class_names"
ATTR_COMPLETE = "h5feed_complete"

# Caps for untrusted files: no real dataset of ours comes near them, and a
# file that declares more is refused before any data is read.
MAX_ROWS = 2**34
MAX_DATASET_BYTES = 2**46  # 64 TiB
MAX_CHUNK_BYTES = 2**28  # 256 MiB per chunk
MAX_CLASSES = 2**24  # one-hot batches grow with the class count
# Deflate cannot compress better than about 1032:1; a dataset whose stored
# bytes are fewer than its logical bytes / this limit is not real data.
MAX_COMPRESSION_RATIO = 1100
# Filters h5feed knows how to read: deflate, shuffle, fletcher32, szip,
# scale-offset, n-bit, LZF.
KNOWN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})


@dataclass(frozen=True)
class ColumnInfo:
    """One per-row dataset (``x``, ``y`` or an extra), as stored.

    Attributes:
        name: the dataset's name at the file root.
        shape: the full shape, first dimension N.
        dtype: the stored dtype.
        chunks: the chunk shape, or None when contiguous.
        compression: the compression filter name, or None.
        fletcher32: whether HDF5's checksum filter is on.
        offset: the byte offset of the data in the file when it is one
            contiguous, allocated, unfiltered block (memory-mappable), else
            None.
        sources: for a trusted virtual dataset, where its rows live (see
            NOTE [ Trusting virtual datasets ]), in row order; else None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    compression: str | None
    fletcher32: bool
    offset: int | None
    sources: tuple[VirtualPart, ...] | None = None

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def row_nbytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def chunk_rows(self) -> int | None:
        return None if self.chunks is None else int(self.chunks[0])

    @property
    def layout(self) -> str:
        if self.chunks is not None:
            return "chunked"
        return "contiguous"


@dataclass(frozen=True)
class VirtualPart:
    """Rows ``[start, stop)`` of a virtual dataset, stored in another file.

    Attributes:
        path: the source file (absolute).
        start: the first virtual row mapped to it.
        stop: one past the last.
        source_start: the source row that holds virtual row ``start``.
        column: the source dataset, as stored (its ``offset`` allows reading
            it memory-mapped).
    """

    path: str
    start: int
    stop: int
    source_start: int
    column: ColumnInfo


@dataclass(frozen=True)
class Layout:
    """What :func:`validate` learned about a file. Small and picklable.

    Attributes:
        path: the file's path.
        n_rows: N, the number of samples.
        columns: per-row datasets other than ``ids``, by name.
        splits: split name -> number of rows.
        n_classes: the number of classes when ``y`` holds class indices.
        class_names: the class names, when stored.
        completion: the parsed completion record.
    """

    path: str
    n_rows: int
    columns: Mapping[str, ColumnInfo]
    splits: Mapping[str, int]
    n_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    completion: Mapping[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> ColumnInfo:
        """The per-row dataset ``name``, or a :class:`LayoutError`."""
        try:
            return self.columns[name]
        except KeyError:
            raise LayoutError(
                f"{self.path}: no per-row dataset {name!r}; "
                f"expected one of {sorted(self.columns)!r}"
            ) from None

    @property
    def has_y(self) -> bool:
        return Y in self.columns

    def __getstate__(self) -> dict[str, Any]:
        # MappingProxyType does not pickle; store plain dicts.
        state = dict(self.__dict__)
        state["columns"] = dict(self.columns)
        state["splits"] = dict(self.splits)
        state["completion"] = dict(self.completion)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key in ("columns", "splits", "completion"):
            state[key] = MappingProxyType(state[key])
        self.__dict__.update(state)


# --------------------------------------------------------------------------
# Hashing: the completion record's digest of a dataset.


def hash_rows(hasher: Any, block: np.ndarray | Iterable[str]) -> None:
    """Feed one block of rows into ``hasher`` as the completion record does.

    Numeric rows are hashed as their little-endian C-order bytes in the
    stored dtype; string rows (the IDs, class names) as each string's UTF-8
    bytes preceded by its length as 8 little-endian bytes. Feeding blocks in
    row order gives the same digest whatever the block sizes.

    Example:
        >>> import hashlib
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


_LITTLE = np.little_endian


def dataset_sha256(dset: h5py.Dataset, block_bytes: int = 16 * 1024 * 1024) -> str:
    """The completion-record digest of a whole dataset, read in blocks."""
    hasher = hashlib.sha256()
    n = dset.shape[0] if dset.shape else 0
    is_str = h5py.check_string_dtype(dset.dtype) is not None
    row_bytes = max(1, int(np.prod(dset.shape[1:], dtype=np.int64)) * dset.dtype.itemsize)
    step = max(1, block_bytes // row_bytes)
    for start in range(0, n, step):
        stop = min(n, start + step)
        if is_str:
            hash_rows(hasher, dset.asstr()[start:stop])
        else:
            hash_rows(hasher, dset[start:stop])
    return hasher.hexdigest()


# --------------------------------------------------------------------------
# Validation, one small check per field.


def _where(f: h5py.File, name: str = "") -> str:
    return f"{f.filename}:/{name}" if name else f.filename


def _check_format(f: h5py.File) -> int:
    if ATTR_FORMAT not in f.attrs:
        raise UnsupportedFormatVersionError(
            f"{f.filename}: not an h5feed file: the root has no {ATTR_FORMAT!r} "
            f"attribute (expected {ATTR_FORMAT} = {FORMAT_VERSION})"
        )
    raw = f.attrs[ATTR_FORMAT]
    value = raw.item() if isinstance(raw, np.ndarray) and raw.size == 1 else raw
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise UnsupportedFormatVersionError(
            f"{f.filename}: attribute {ATTR_FORMAT!r} must be an integer. "
            f"Received: {value!r}"
        )
    if int(value) != FORMAT_VERSION:
        raise UnsupportedFormatVersionError(
            f"{f.filename}: h5feed format version {int(value)!r} is not supported "
            f"by this h5feed (expected {FORMAT_VERSION}); upgrade h5feed"
        )
    return int(value)


def _check_links(f: h5py.File, group: h5py.Group) -> None:
    for name in group:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise UntrustedFileError(
                f"{_where(f, group.name.strip('/') + '/' + name if group.name != '/' else name)}: "
                f"is an external link to {link.filename!r}:{link.path!r}; "
                "h5feed reads data from the file itself only"
            )


def _check_storage(f: h5py.File, dset: h5py.Dataset, *, allow_virtual: bool = False) -> None:
    """Refuse storage that h5feed must not trust; reads no data.

    Untrusted files can point outside themselves (external storage, virtual
    datasets) or declare sizes that would exhaust memory when read (absurd
    shapes, huge chunks, compressed chunks that inflate far beyond what any
    real data does).
    """
    where = _where(f, dset.name.lstrip("/"))
    if dset.is_virtual and not allow_virtual:
        raise UntrustedFileError(
            f"{where}: is a virtual dataset (its data lives in other files); "
            "open with allow_virtual=True if you trust its sources"
        )
    if dset.external:
        raise UntrustedFileError(
            f"{where}: stores its data in external files {[e[0] for e in dset.external]!r}; "
            "h5feed reads data from the file itself only"
        )
    if dset.shape is None:
        raise LayoutError(f"{where}: has no shape (a null dataspace)")
    if dset.shape and dset.shape[0] > MAX_ROWS:
        raise UntrustedFileError(
            f"{where}: declares {dset.shape[0]} rows, beyond the cap of {MAX_ROWS}"
        )
    nbytes = int(np.prod(dset.shape, dtype=object)) * dset.dtype.itemsize
    if nbytes > MAX_DATASET_BYTES:
        raise UntrustedFileError(
            f"{where}: declares {nbytes} bytes of data, beyond the cap of {MAX_DATASET_BYTES}"
        )
    if dset.is_virtual:
        return  # allowed: validate() checks its sources (_with_virtual_sources)
    chunk_bytes = 0
    if dset.chunks is not None:
        chunk_bytes = int(np.prod(dset.chunks, dtype=object)) * dset.dtype.itemsize
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise UntrustedFileError(
                f"{where}: declares chunks of {chunk_bytes} bytes {dset.chunks!r}, "
                f"beyond the cap of {MAX_CHUNK_BYTES}"
            )
    stored = dset.id.get_storage_size()
    if nbytes and not stored:
        # h5feed writes every row; a dataset that declares rows and stores
        # none is not data (and reading it would conjure fill values).
        raise UntrustedFileError(
            f"{where}: declares {dset.shape!r} ({nbytes} bytes) but stores no data"
        )
    if dset.chunks is None:
        return
    plist = dset.id.get_create_plist()
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    for code in codes:
        if code not in KNOWN_FILTERS or not h5py.h5z.filter_avail(code):
            raise UntrustedFileError(
                f"{where}: uses HDF5 filter {code!r}, which h5feed does not read "
                f"(known and available here: {sorted(c for c in KNOWN_FILTERS if h5py.h5z.filter_avail(c))!r})"
            )
    if nbytes:
        want = 1
        for size, chunk in zip(dset.shape, dset.chunks):
            want *= -(-int(size) // int(chunk))
        have = dset.id.get_num_chunks()
        if have < want:
            raise UntrustedFileError(
                f"{where}: declares {dset.shape!r} in {want} chunks but stores only {have}; "
                "the rest would read as made-up fill values"
            )
    if nbytes and stored and nbytes / stored > MAX_COMPRESSION_RATIO:
        raise UntrustedFileError(
            f"{where}: {nbytes} bytes stored in {stored}, a compression ratio "
            f"of {nbytes / stored:.0f}:1 that no real data has"
        )
    if any(code in _INFLATING_FILTERS for code in codes):
        _check_chunks(where, dset, chunk_bytes)


# Filters whose output can be much larger than their input (decompressors):
# deflate, szip, LZF.
_INFLATING_FILTERS = frozenset({1, 4, 32000})
# Bytes a chunk may be stored larger than its data: the Fletcher32 checksum
# and filter headers. Compressors that would grow a chunk store it raw.
_CHUNK_OVERHEAD = 1024


def _check_chunks(where: str, dset: h5py.Dataset, chunk_bytes: int) -> None:
    """Refuse a compressed chunk that could inflate beyond its declared size.

    A chunk's decompressor grows its buffer until the stream ends, so one
    chunk stored larger than its data (a "zip bomb") would be inflated in
    full before HDF5 notices; the whole-dataset ratio cannot see one such
    chunk among many honest ones. Reads only the chunk index.
    """
    bad: list[tuple[tuple[int, ...], int]] = []

    def visit(info: Any) -> None:
        size = int(info.size)
        if size > chunk_bytes + _CHUNK_OVERHEAD or (size and chunk_bytes / size > MAX_COMPRESSION_RATIO):
            bad.append((tuple(int(o) for o in info.chunk_offset), size))

    if hasattr(dset.id, "chunk_iter"):
        dset.id.chunk_iter(visit)
    else:  # older h5py: slower, same answer
        for i in range(dset.id.get_num_chunks()):
            visit(dset.id.get_chunk_info(i))
    if bad:
        offset, size = bad[0]
        raise UntrustedFileError(
            f"{where}: the chunk at {offset!r} stores {size} bytes for {chunk_bytes} bytes of "
            f"data, which no real compressed data does ({len(bad)} such chunk(s)); refusing "
            "to decompress it"
        )


# NOTE [ Trusting virtual datasets ]
# A virtual dataset reads its rows from other HDF5 files, which an untrusted
# file could point anywhere (absolute paths, "..", printf-style name
# patterns); and HDF5 silently returns fill values for rows whose source is
# missing, so a lost part would train on zeros. Virtual datasets are
# therefore refused unless the caller passes ``allow_virtual=True``, and even
# then every mapping must: name a relative file inside the virtual file's
# folder (no "..", no "%" pattern), exist there as a plain, non-virtual,
# same-named dataset of the same dtype and row shape, select whole rows
# within that source's bounds; and the mappings together must cover every
# row exactly once.


def _with_virtual_sources(f: h5py.File, columns: dict[str, ColumnInfo]) -> dict[str, ColumnInfo]:
    """Check the sources of every virtual dataset (``allow_virtual=True``);
    record them in its :class:`ColumnInfo` so the reader can use the parts.

    The IDs and splits must be stored in the file itself: they are small,
    read whole at every open, and h5feed merge writes them so.
    """
    group = f.get(SPLITS)
    names = [IDS] + ([f"{SPLITS}/{s}" for s in group] if isinstance(group, h5py.Group) else [])
    for name in names:
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset) and obj.is_virtual:
            raise UntrustedFileError(f"{_where(f, name)}: must be stored in the file, not as a virtual dataset")
    out = dict(columns)
    for name, info in columns.items():
        dset = f[name]
        if dset.is_virtual:
            out[name] = _replace(info, sources=_virtual_sources(f, dset))
    return out


def _virtual_sources(f: h5py.File, dset: h5py.Dataset) -> tuple[VirtualPart, ...]:
    where = _where(f, dset.name.lstrip("/"))
    folder = os.path.dirname(os.path.abspath(f.filename))
    name = dset.name.lstrip("/")
    n_rows = dset.shape[0] if dset.shape else 0
    row_elems = int(np.prod(dset.shape[1:], dtype=np.int64)) if dset.shape else 1
    covered: list[tuple[int, int]] = []
    parts: list[VirtualPart] = []
    for vmap in dset.virtual_sources():
        source = vmap.file_name
        components = source.replace("\\", "/").split("/")
        if (
            os.path.isabs(source)
            or ".." in components
            or "%" in source
            or "%" in vmap.dset_name
            or source == "."
        ):
            raise UntrustedFileError(
                f"{where}: virtual source {source!r}:{vmap.dset_name!r} is not a file inside "
                f"{folder!r}; h5feed only follows relative sources beside the merged file"
            )
        if vmap.dset_name.lstrip("/") != name:
            raise UntrustedFileError(
                f"{where}: virtual source {source!r} maps dataset {vmap.dset_name!r}; "
                f"expected {name!r}"
            )
        src_path = os.path.join(folder, source)
        if not os.path.isfile(src_path):
            raise UntrustedFileError(
                f"{where}: virtual source {src_path!r} is missing; its rows would read as "
                "fill values. Put the part files back beside the merged file"
            )
        (v_lo, *_), (v_hi, *_) = vmap.vspace.get_select_bounds()
        n_sel = int(vmap.vspace.get_select_npoints())
        if n_sel != (v_hi - v_lo + 1) * row_elems:
            raise UntrustedFileError(f"{where}: virtual source {source!r} does not map whole rows")
        whole_source = vmap.src_space.get_select_type() == h5py.h5s.SEL_ALL
        if whole_source:
            s_lo, s_hi = 0, v_hi - v_lo
        else:
            (s_lo, *_), (s_hi, *_) = vmap.src_space.get_select_bounds()
            if int(vmap.src_space.get_select_npoints()) != n_sel:
                raise UntrustedFileError(f"{where}: virtual source {source!r} does not map whole rows")
        with open_h5(src_path) as g:
            src = g.get(name)
            if not isinstance(src, h5py.Dataset):
                raise UntrustedFileError(
                    f"{where}: virtual source {src_path!r} has no plain dataset {name!r}"
                )
            _check_storage(g, src)  # no virtual chains, same caps and filters
            if (
                src.dtype != dset.dtype
                or tuple(src.shape[1:]) != tuple(dset.shape[1:])
                or s_hi >= src.shape[0]
                or (whole_source and src.shape[0] != s_hi + 1)
            ):
                raise UntrustedFileError(
                    f"{where}: virtual source {src_path!r}:/{name} has shape {src.shape!r} and dtype "
                    f"{src.dtype!r}; the mapping needs rows {s_lo}..{s_hi} of {dset.dtype!r} rows "
                    f"{tuple(dset.shape[1:])!r}"
                )
            parts.append(
                VirtualPart(
                    path=os.path.abspath(src_path),
                    start=int(v_lo),
                    stop=int(v_hi) + 1,
                    source_start=int(s_lo),
                    column=ColumnInfo(
                        name=name,
                        shape=tuple(int(d) for d in src.shape),
                        dtype=np.dtype(src.dtype),
                        chunks=None if src.chunks is None else tuple(int(c) for c in src.chunks),
                        compression=src.compression,
                        fletcher32=bool(src.fletcher32),
                        offset=_contiguous_offset(src),
                    ),
                )
            )
        covered.append((int(v_lo), int(v_hi) + 1))
    covered.sort()
    expect = 0
    for lo, hi in covered:
        if lo != expect:
            raise UntrustedFileError(
                f"{where}: virtual rows {min(lo, expect)}..{max(lo, expect) - 1} are "
                f"{'mapped twice' if lo < expect else 'not mapped to any source'}"
            )
        expect = hi
    if expect != n_rows:
        raise UntrustedFileError(f"{where}: virtual rows {expect}..{n_rows - 1} are not mapped to any source")
    return tuple(sorted(parts, key=lambda p: p.start))


def _contiguous_offset(dset: h5py.Dataset) -> int | None:
    """The data's file offset when it can be memory-mapped, else None."""
    if dset.chunks is not None or dset.compression is not None:
        return None
    if dset.id.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS:
        return None
    offset = dset.id.get_offset()
    if offset is None:
        return None
    if dset.id.get_storage_size() < int(np.prod(dset.shape, dtype=np.int64)) * dset.dtype.itemsize:
        return None
    return int(offset)


def _column_info(f: h5py.File, dset: h5py.Dataset) -> ColumnInfo:
    if dset.dtype.kind not in "biuf":
        raise LayoutError(
            f"{_where(f, dset.name.lstrip('/'))}: expected a numeric dtype. "
            f"Received: {dset.dtype!r}"
        )
    return ColumnInfo(
        name=dset.name.lstrip("/"),
        shape=tuple(int(s) for s in dset.shape),
        dtype=np.dtype(dset.dtype),
        chunks=None if dset.chunks is None else tuple(int(c) for c in dset.chunks),
        compression=dset.compression,
        fletcher32=bool(dset.fletcher32),
        offset=_contiguous_offset(dset),
    )


def _require(f: h5py.File, name: str) -> h5py.Dataset:
    obj = f.get(name)
    if obj is None:
        raise LayoutError(f"{_where(f, name)}: missing dataset {name!r}")
    if not isinstance(obj, h5py.Dataset):
        raise LayoutError(f"{_where(f, name)}: expected a dataset, found a group")
    return obj


def _check_ids(f: h5py.File) -> tuple[int, np.ndarray]:
    dset = _require(f, IDS)
    if dset.ndim != 1 or h5py.check_string_dtype(dset.dtype) is None:
        raise LayoutError(
            f"{_where(f, IDS)}: expected a 1-D dataset of UTF-8 strings. "
            f"Received: shape {dset.shape!r}, dtype {dset.dtype!r}"
        )
    ids = np.asarray(read_whole(f.filename, dset, as_str=True), dtype=object)
    if len(ids) != len(set(ids.tolist())):
        uniq, counts = np.unique(ids.astype(str), return_counts=True)
        dupes = uniq[counts > 1]
        raise LayoutError(
            f"{_where(f, IDS)}: sample IDs must be unique; {len(dupes)} repeat, "
            f"e.g. {dupes[:5].tolist()!r}"
        )
    return len(ids), ids


def _check_rows(f: h5py.File, name: str, n_rows: int) -> ColumnInfo:
    dset = _require(f, name)
    info = _column_info(f, dset)
    if not info.shape or info.shape[0] != n_rows:
        raise LayoutError(
            f"{_where(f, name)}: first dimension must match {IDS!r} ({n_rows} rows). "
            f"Received: shape {info.shape!r}"
        )
    return info


def _check_classes(f: h5py.File, columns: Mapping[str, ColumnInfo]) -> tuple[int | None, tuple[str, ...] | None]:
    n_classes = None
    if ATTR_N_CLASSES in f.attrs:
        raw = f.attrs[ATTR_N_CLASSES]
        raw = raw.item() if isinstance(raw, np.ndarray) and raw.size == 1 else raw
        if isinstance(raw, (bool, np.bool_)) or not isinstance(raw, (int, np.integer)) or raw < 1:
            raise LayoutError(
                f"{f.filename}: attribute {ATTR_N_CLASSES!r} must be a positive integer. "
                f"Received: {raw!r}"
            )
        n_classes = int(raw)
        if n_classes > MAX_CLASSES:
            # One-hot labels would take batch_size * n_classes floats.
            raise UntrustedFileError(
                f"{f.filename}: attribute {ATTR_N_CLASSES!r} declares {n_classes} classes, "
                f"beyond the cap of {MAX_CLASSES}"
            )
        y = columns.get(Y)
        if y is None:
            raise LayoutError(f"{f.filename}: has {ATTR_N_CLASSES!r} but no {Y!r} dataset")
        if y.dtype.kind not in "iu" or len(y.shape) != 1:
            raise LayoutError(
                f"{_where(f, Y)}: with {ATTR_N_CLASSES!r} set, expected 1-D integer class "
                f"indices. Received: shape {y.shape!r}, dtype {y.dtype!r}"
            )
        labels = read_whole(f.filename, f[Y])
        if labels.size:
            bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
            if bad.size:
                raise LayoutError(
                    f"{_where(f, Y)}: class index {labels[bad[0]].item()!r} at row {int(bad[0])} "
                    f"is outside [0, {n_classes}) ({bad.size} rows out of range)"
                )
    class_names = None
    if ATTR_CLASS_NAMES in f.attrs:
        raw_names = np.atleast_1d(f.attrs[ATTR_CLASS_NAMES])
        class_names = tuple(
            n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw_names.tolist()
        )
        if n_classes is not None and len(class_names) != n_classes:
            raise LayoutError(
                f"{f.filename}: {ATTR_CLASS_NAMES!r} has {len(class_names)} names "
                f"for {n_classes} classes"
            )
    return n_classes, class_names


def _check_split(f: h5py.File, name: str, dset: Any, n_rows: int) -> int:
    where = _where(f, f"{SPLITS}/{name}")
    if not isinstance(dset, h5py.Dataset):
        raise LayoutError(f"{where}: expected a dataset of row numbers, found a group")
    if dset.ndim != 1 or dset.dtype.kind not in "iu":
        raise LayoutError(
            f"{where}: expected 1-D integer row numbers. "
            f"Received: shape {dset.shape!r}, dtype {dset.dtype!r}"
        )
    rows = read_whole(f.filename, dset)
    if rows.size:
        if rows[0] < 0 or rows[-1] >= n_rows or rows.min() < 0 or rows.max() >= n_rows:
            bad = rows[(rows < 0) | (rows >= n_rows)][0]
            raise LayoutError(f"{where}: row {int(bad)!r} is outside [0, {n_rows})")
        steps = np.diff(rows)
        if steps.size and steps.min() <= 0:
            at = int(np.flatnonzero(steps <= 0)[0])
            raise LayoutError(
                f"{where}: rows must be strictly increasing; "
                f"row {int(rows[at + 1])!r} follows {int(rows[at])!r} at position {at + 1}"
            )
    return int(rows.size)


def _check_completion(f: h5py.File, n_rows: int | None) -> dict[str, Any]:
    """The parsed completion record; ``n_rows`` None checks its form only."""
    if ATTR_COMPLETE not in f.attrs:
        raise IncompleteFileError(
            f"incomplete file: {f.filename} has no completion record "
            f"({ATTR_COMPLETE!r}); its writer did not finish. Convert it again."
        )
    raw = f.attrs[ATTR_COMPLETE]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        record = json.loads(str(raw))
        rows = record["rows"]
        digests = record["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IncompleteFileError(
            f"incomplete file: {f.filename}: the completion record is unreadable: {raw!r}"
        ) from exc
    if not isinstance(digests, dict) or isinstance(rows, bool) or not isinstance(rows, int):
        raise IncompleteFileError(
            f"incomplete file: {f.filename}: the completion record is unreadable: {raw!r}"
        )
    if n_rows is not None and rows != n_rows:
        raise IncompleteFileError(
            f"incomplete file: {f.filename}: the completion record says {rows!r} rows, "
            f"the file holds {n_rows}"
        )
    return record


def _check_untrusted(f: h5py.File, *, allow_virtual: bool) -> None:
    """Check the storage of every dataset h5feed reads, before reading any."""
    _check_links(f, f)
    ids = _require(f, IDS)
    _check_storage(f, ids, allow_virtual=allow_virtual)
    n = ids.shape[0] if ids.shape else 0
    for name, obj in f.items():
        if name == IDS or not isinstance(obj, h5py.Dataset):
            continue
        if name in (X, Y) or (obj.shape and obj.shape[0] == n):
            _check_storage(f, obj, allow_virtual=allow_virtual)
    group = f.get(SPLITS)
    if isinstance(group, h5py.Group):
        _check_links(f, group)
        for obj in group.values():
            if isinstance(obj, h5py.Dataset):
                _check_storage(f, obj, allow_virtual=allow_virtual)


def validate(
    f: h5py.File, *, return_ids: bool = False, allow_virtual: bool = False
) -> Layout | tuple[Layout, np.ndarray]:
    """Check that an open file follows format version 1; describe it.

    Every check of storage (links, external storage, virtual datasets,
    filters, sizes) runs before any data is read, so a hostile file costs
    nothing but its metadata.

    Args:
        f: an h5py file open for reading.
        return_ids: also return the sample IDs (read anyway to check that
            they are unique).
        allow_virtual: accept per-row datasets that are HDF5 virtual
            datasets (``h5feed merge`` makes them), provided every source
            passes the checks of NOTE [ Trusting virtual datasets ].

    Returns:
        The file's :class:`Layout`, and with ``return_ids`` its IDs as an
        object array of str.

    Raises:
        UnsupportedFormatVersionError: no or an unknown ``h5feed_format``.
        IncompleteFileError: no valid completion record.
        LayoutError: a dataset missing, of the wrong shape or dtype, duplicate
            IDs, a class index or split row out of range, unsorted splits.
        UntrustedFileError: external links or storage, virtual datasets
            (unless allowed, and then any source outside the file's folder,
            missing, or not covering every row),
            unknown filters, shapes beyond the caps, data declared but not
            stored, compression beyond any real data's.
        ReadError: the IDs, labels or splits cannot be read (a damaged
            chunk; the message names its rows).
    """
    _check_format(f)
    # An unfinished file is refused before anything else is read from it.
    _check_completion(f, None)
    _check_untrusted(f, allow_virtual=bool(allow_virtual))
    n_rows, ids = _check_ids(f)
    completion = _check_completion(f, n_rows)
    columns: dict[str, ColumnInfo] = {X: _check_rows(f, X, n_rows)}
    for name, obj in f.items():
        if name in (IDS, X, SPLITS) or not isinstance(obj, h5py.Dataset):
            continue
        if name == Y:
            columns[Y] = _check_rows(f, Y, n_rows)
        elif obj.shape and obj.shape[0] == n_rows:
            # Further per-row datasets are optional extras; others are
            # metadata that h5feed leaves alone.
            if obj.dtype.kind in "biuf":
                columns[name] = _column_info(f, obj)
    if allow_virtual:
        columns = _with_virtual_sources(f, columns)
    n_classes, class_names = _check_classes(f, columns)
    splits: dict[str, int] = {}
    group = f.get(SPLITS)
    if group is not None:
        if not isinstance(group, h5py.Group):
            raise LayoutError(f"{_where(f, SPLITS)}: expected a group of splits, found a dataset")
        for name in group:
            splits[name] = _check_split(f, name, group[name], n_rows)
    layout = Layout(
        path=os.fspath(f.filename),
        n_rows=n_rows,
        columns=MappingProxyType(columns),
        splits=MappingProxyType(splits),
        n_classes=n_classes,
        class_names=class_names,
        completion=MappingProxyType(completion),
    )
    return (layout, ids) if return_ids else layout


def open_and_validate(
    path: str | os.PathLike[str], *, return_ids: bool = False, allow_virtual: bool = False
) -> Any:
    """Open ``path``, validate it and close it again; see :func:`validate`."""
    with open_h5(path) as f:
        return validate(f, return_ids=return_ids, allow_virtual=allow_virtual)


def read_split(f: h5py.File, name: str) -> np.ndarray:
    """The rows of split ``name`` as int64, or :class:`UnknownSplitError`."""
    group = f.get(SPLITS)
    if group is None or name not in group:
        have = sorted(group) if group is not None else []
        raise UnknownSplitError(
            f"{f.filename}: no split {name!r}; the file has {have!r}"
        )
    return np.asarray(group[name][()], dtype=np.int64)


def read_ids(f: h5py.File, rows: np.ndarray | slice | None = None) -> list[str]:
    """The sample IDs of ``rows`` (all when None), in the order asked."""
    dset = f[IDS].asstr()
    if rows is None:
        return list(dset[()])
    if isinstance(rows, slice):
        return list(dset[rows])
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    order = np.argsort(rows, kind="stable")
    uniq, inverse = np.unique(rows[order], return_inverse=True)
    values = dset[uniq]
    out = [None] * rows.size
    for pos, k in zip(order.tolist(), inverse.tolist()):
        out[pos] = values[k]
    return out  # type: ignore[return-value]
