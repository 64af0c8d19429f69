"""A lab's own HDF5 file -> one h5feed file (``h5feed convert h5``).

The files labs already have: an ``X`` and a ``y`` dataset (Keras's old
``HDF5Matrix`` files), NeXus-style trees (``/entry/data/data``), one pair of
arrays per split (``X_train``, ``y_train``, ...), and MATLAB v7.3 ``.mat``
files (HDF5, with every array stored transposed: the samples on the last
axis, ``sample_axis=-1``).

Everything is checked before the first row is written: the paths, the
storage (virtual and external datasets, filters), the types, the row counts,
the labels (one pass over ``y``) and the IDs. Then ``x`` is read block by
block, in whole chunks of a chunked source, and never held whole; the IDs
are kept as one compact numpy array (integers or UTF-8 bytes), not as a
Python string per row.

``link=True`` writes the IDs, the labels and the splits, and makes ``x`` a
virtual column of :class:`h5feed.DatasetWriter` over the source's dataset;
``x`` is still read once, to hash it into the completion record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from h5feed._shared import (
    check_bool,
    check_int,
    check_virtual_source,
    first_line,
    open_h5,
    source_name,
)
from h5feed.errors import FormatError, ReadError, SourceError, UntrustedFileError

from ._common import (
    ConversionResult,
    Options,
    check_partition_ids,
    gather_blocks,
    load_partition,
    some,
    write_dataset,
)

__all__ = ["LABEL_TYPES", "SourceRows", "check_arguments", "from_h5"]

logger = logging.getLogger("h5feed")

LABEL_TYPES = ("auto", "index", "onehot", "value")

# Rows are read in blocks of about this many bytes of x (whole chunks of a
# chunked x), and the labels and IDs in blocks of about _SCAN_BYTES.
_BLOCK_BYTES = 4 * 1024 * 1024
_BLOCK_MAX_ROWS = 1 << 16
_SCAN_BYTES = 8 * 1024 * 1024
# Each source dataset's chunk cache: rows are read in whole chunks, in order,
# so a chunk is decoded once with any cache; a bigger one would only add its
# size to the memory a conversion takes.
_CACHE_BYTES = 4 * 1024 * 1024
# A path that is not in the file gets a listing of at most this many datasets.
_LISTED = 40
# HDF5 allows at most 32 dimensions.
_MAX_RANK = 32

# hdf5plugin's filters by their registered HDF5 filter ID, to name them when
# hdf5plugin is not installed (the file stores only a description).
_PLUGIN_FILTERS = {
    307: "bzip2", 32001: "Blosc", 32004: "LZ4", 32008: "bitshuffle", 32013: "ZFP", 32015: "Zstd",
    32017: "SZ", 32018: "FCIDECOMP", 32024: "SZ3", 32026: "Blosc2", 32028: "SPERR", 32033: "HTJ2K",
}
_CODECS_HINT = 'pip install "h5feed[codecs]" (hdf5plugin)'


# --------------------------------------------------------------------------
# Opening the source and finding its datasets.


def _open_source(src: str) -> h5py.File:
    try:
        return open_h5(src, chunk_cache_bytes=_CACHE_BYTES)
    except FormatError as exc:
        hint = ""
        if src.lower().endswith(".mat") and os.path.isfile(src) and not h5py.is_hdf5(src):
            hint = "; a MATLAB .mat file is HDF5 only when saved with -v7.3 (save(..., '-v7.3'))"
        raise SourceError(f"{exc}{hint}. Expected an HDF5 file (.h5, .hdf5, .nxs, MATLAB v7.3 .mat)") from exc


def _listing(group: h5py.Group) -> str:
    """The datasets below ``group``, one per line, as ``h5ls -r`` shows them."""
    lines: list[str] = []
    count = 0

    def visit(name: str, obj: Any) -> None:
        nonlocal count
        if isinstance(obj, h5py.Dataset):
            count += 1
            if len(lines) < _LISTED:
                shape = "{" + ", ".join(str(d) for d in obj.shape) + "}" if obj.shape else "{SCALAR}"
                lines.append((obj.name, f"Dataset {shape} {_dtype_text(obj.dtype)}"))

    group.visititems(visit)
    if not lines:
        return "no datasets"
    width = max(len(name) for name, _ in lines)
    text = "\n".join(f"  {name.ljust(width)}  {what}" for name, what in lines)
    if count > len(lines):
        text += f"\n  ... and {count - len(lines)} more"
    return text


def _dtype_text(dtype: np.dtype) -> str:
    if h5py.check_string_dtype(dtype) is not None:
        return "string"
    if dtype.names:
        return f"compound {dtype}"
    return str(dtype)


def _plugins_loaded() -> bool:
    """Import hdf5plugin, which registers its filters with HDF5; False when it is missing."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        return False
    return True


def _check_filters(dset: h5py.Dataset, where: str) -> None:
    """Refuse a dataset compressed with a filter this process cannot decode,
    naming the filter and where to get it."""
    plist = dset.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _flags, _values, raw_name = plist.get_filter(i)
        if h5py.h5z.filter_avail(code) or (_plugins_loaded() and h5py.h5z.filter_avail(code)):
            continue
        name = _PLUGIN_FILTERS.get(code) or raw_name.decode("utf-8", "replace").split(";")[0].strip() or "unnamed"
        if code in _PLUGIN_FILTERS and not _plugins_loaded():
            fix = f"install it with {_CODECS_HINT}"
        elif _plugins_loaded():
            fix = "neither HDF5 nor hdf5plugin provides it: convert the file with the tool that wrote it"
        else:
            fix = f"if hdf5plugin provides it, {_CODECS_HINT}; else convert with the tool that wrote the file"
        raise SourceError(
            f"{where}: is compressed with the HDF5 filter {name!r} (filter ID {code}), which is not "
            f"available here; {fix}"
        )


def _dataset(f: h5py.File, src: str, path: str, role: str, allow_virtual: bool) -> h5py.Dataset:
    """The dataset at ``path``, checked to be readable and stored in ``src``
    itself (unless ``allow_virtual``)."""
    if not isinstance(path, str) or not path.strip("/"):
        raise SourceError(
            f"{src}: {role}: expected the path of a dataset in the file. Received: {path!r}. "
            f"The file holds:\n{_listing(f)}"
        )
    name = "/" + path.strip("/")
    where = f"{src}:{name} ({role})"
    group: h5py.Group = f
    components = [c for c in name.split("/") if c]
    for depth, component in enumerate(components):
        here = "/" + "/".join(components[: depth + 1])
        link = group.get(component, getlink=True)
        if link is None:
            raise SourceError(f"{where}: no such dataset in the file (no {here!r}). The file holds:\n{_listing(f)}")
        if isinstance(link, h5py.ExternalLink) and not allow_virtual:
            raise SourceError(
                f"{where}: {here} is an external link to {link.filename!r}:{link.path!r}, another file. "
                "Expected data stored in the file itself; pass --allow-virtual (allow_virtual=True) "
                "if you trust the other file"
            )
        obj = group.get(component)
        if obj is None:
            raise SourceError(f"{where}: {here} is a link that leads nowhere. The file holds:\n{_listing(f)}")
        if depth < len(components) - 1 and not isinstance(obj, h5py.Group):
            raise SourceError(f"{where}: {here} is not a group, so it holds no {name!r}. The file holds:\n{_listing(f)}")
        group = obj
    obj = group
    if isinstance(obj, h5py.Group):
        raise SourceError(f"{where}: is a group, expected a dataset. The group holds:\n{_listing(obj)}")
    if not isinstance(obj, h5py.Dataset):
        raise SourceError(f"{where}: is a {type(obj).__name__}, expected a dataset. The file holds:\n{_listing(f)}")
    dset = obj
    if dset.is_virtual:
        files = sorted({vs.file_name for vs in dset.virtual_sources()})
        if not allow_virtual:
            raise SourceError(
                f"{where}: is a virtual dataset: its data lives in other files ({some(files)}). Expected "
                "data stored in the file itself; pass --allow-virtual (allow_virtual=True) if you trust them"
            )
        _check_virtual_files(dset, src, where)
    if dset.external:
        if not allow_virtual:
            raise SourceError(
                f"{where}: stores its data in external files ({some([e[0] for e in dset.external])}). "
                "Expected data stored in the file itself; pass --allow-virtual (allow_virtual=True) if you trust them"
            )
    if dset.shape is None or dset.shape == ():
        raise SourceError(
            f"{where}: expected an array with one row per sample. Received: "
            f"{'an empty (null) dataset' if dset.shape is None else 'a scalar'}"
        )
    _check_filters(dset, where)
    return dset


def _check_virtual_files(dset: h5py.Dataset, src: str, where: str) -> None:
    """Refuse a virtual dataset whose source file is missing: HDF5 would
    read its rows as fill values without a word."""
    folder = os.path.dirname(src)
    for vs in dset.virtual_sources():
        name = vs.file_name
        if name == "." or "%" in name:  # the file itself, or a name pattern HDF5 expands
            continue
        candidates = [name] if os.path.isabs(name) else [os.path.join(folder, name), name]
        if not any(os.path.isfile(c) for c in candidates):
            raise SourceError(
                f"{where}: its virtual source {name!r} is missing; its rows would read as fill values"
            )


# --------------------------------------------------------------------------
# Rows along the sample axis.


class SourceRows:
    """Rows of one source dataset, taken along its sample axis, read on demand.

    Supports ``len``, ``rows[a:b]`` and ``rows[sorted int array]`` (each
    run of consecutive rows is one HDF5 read), which is all the converter
    asks of it. The row axis comes first in what it returns.

    Args:
        dset: the open dataset.
        axis: its sample axis (already normalised, ``0 <= axis < ndim``).
        where: ``file:/path``, for messages.
    """

    def __init__(self, dset: h5py.Dataset, axis: int, where: str) -> None:
        self.dset = dset
        self.axis = axis
        self.where = where
        shape = tuple(int(d) for d in dset.shape)
        self.shape = (shape[axis], *shape[:axis], *shape[axis + 1 :])
        self.dtype = dset.dtype
        self.chunk_rows = None if dset.chunks is None else int(dset.chunks[axis])

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, stop: int) -> np.ndarray:
        sel: list[Any] = [slice(None)] * len(self.dset.shape)
        sel[self.axis] = slice(start, stop)
        try:
            block = self.dset[tuple(sel)]
        except OSError as exc:
            raise self._read_error(start, stop, exc) from exc
        return block if self.axis == 0 else np.moveaxis(block, self.axis, 0)

    def _read_error(self, start: int, stop: int, exc: OSError) -> ReadError:
        return ReadError(f"{self.where}: rows {start}..{stop - 1} cannot be read: {first_line(exc)}")

    def read_into(self, out: np.ndarray, start: int, stop: int) -> None:
        """Rows ``start..stop-1`` straight into ``out`` (sample axis 0 only),
        HDF5 casting them to ``out``'s dtype."""
        try:
            self.dset.read_direct(out, np.s_[start:stop])
        except OSError as exc:
            raise self._read_error(start, stop, exc) from exc

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("SourceRows supports contiguous slices only")
            return self._read(start, max(start, stop))
        rows = np.asarray(key, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return self._read(0, 0)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = rows[np.r_[0, breaks]].tolist()
        sizes = np.diff(np.r_[0, breaks, rows.size]).tolist()
        return np.concatenate([self._read(a, a + k) for a, k in zip(starts, sizes)])


class _Block:
    """Rows ``start..stop-1`` of a :class:`SourceRows` with sample axis 0,
    read when the writer asks for them (a :class:`~h5feed.writer.RowBlock`)."""

    def __init__(self, rows: SourceRows, start: int, stop: int) -> None:
        self.rows, self.start = rows, start
        self.shape = (stop - start, *rows.row_shape)
        self.dtype = rows.dtype

    def read_into(self, out: np.ndarray, start: int, stop: int) -> None:
        self.rows.read_into(out, self.start + start, self.start + stop)


class _Rows:
    """Several :class:`SourceRows` (one per split), one after another."""

    def __init__(self, parts: list[SourceRows], dtype: np.dtype | None = None) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.row_shape = parts[0].row_shape
        self.dtype = np.dtype(dtype if dtype is not None else parts[0].dtype)
        self.shape = (int(self.offsets[-1]), *self.row_shape)
        self.chunk_rows = parts[0].chunk_rows

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _part_of(self, row: int) -> int:
        return int(np.searchsorted(self.offsets, row, side="right")) - 1

    def block(self, start: int, stop: int) -> _Block | np.ndarray:
        """Rows ``start..stop-1``: a :class:`~h5feed.writer.RowBlock` that the
        writer reads straight into its buffer where one part holds them
        along its first axis and casts safely, else an array read now."""
        k = self._part_of(start)
        part, first = self.parts[k], int(self.offsets[k])
        if stop <= first + len(part) and part.axis == 0 and np.can_cast(part.dtype, self.dtype, "safe"):
            return _Block(part, start - first, stop - first)
        return self[start:stop]

    def locate(self, row: int) -> str:
        """``file:/path row R``: where row ``row`` of the whole lies in its source."""
        k = self._part_of(row)
        return f"{self.parts[k].where} row {row - int(self.offsets[k])}"

    def __getitem__(self, key: Any) -> np.ndarray:
        if len(self.parts) == 1:
            return self.parts[0][key]
        rows = np.arange(*key.indices(len(self))) if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        pieces = []
        for k in np.unique(which).tolist():
            local = rows[which == k] - int(self.offsets[k])
            if local.size and local[-1] - local[0] + 1 == local.size:
                piece = self.parts[k][int(local[0]) : int(local[-1]) + 1]
            else:
                piece = self.parts[k][local]
            pieces.append(piece.astype(self.dtype, copy=False))
        if not pieces:
            return np.empty((0, *self.row_shape), dtype=self.dtype)
        return np.concatenate(pieces)

    def blocks(self, rows_per_block: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, block)`` over every row in order, a part at a time."""
        for part, offset in zip(self.parts, self.offsets.tolist()):
            for start in range(0, len(part), rows_per_block):
                yield offset + start, part[start : start + rows_per_block]


def _check_numeric(rows: _Rows, role: str, what: str) -> None:
    """Refuse non-numeric parts, or parts (splits) whose rows differ in shape;
    ``rows.dtype`` becomes the type that holds them all."""
    for part in rows.parts:
        if part.dtype.kind not in "biuf":
            raise SourceError(
                f"{part.where} ({role}): expected numeric {what}. Received: dtype {_dtype_text(part.dtype)}"
            )
        if part.row_shape != rows.row_shape:
            raise SourceError(
                f"{part.where} ({role}): rows of shape {part.row_shape!r}, but {rows.parts[0].where} has "
                f"{rows.row_shape!r}; every split's rows must have the same shape"
            )
    rows.dtype = np.result_type(*[p.dtype for p in rows.parts])


def _axis(dset: h5py.Dataset, sample_axis: int, where: str) -> int:
    """The row axis of ``dset``: ``sample_axis`` (negative counts from the end)
    for arrays of two or more axes, the only axis of a 1-D one."""
    ndim = len(dset.shape)
    if ndim == 1:
        return 0
    axis = sample_axis + ndim if sample_axis < 0 else sample_axis
    if not 0 <= axis < ndim:
        raise SourceError(
            f"{where}: expected sample_axis in [{-ndim}, {ndim}) for a dataset of shape {tuple(dset.shape)!r}. "
            f"Received: {sample_axis!r} (MATLAB keeps the samples on the last axis of every array: -1)"
        )
    return axis


def _rows_scanned(rows: _Rows) -> int:
    return max(1, _SCAN_BYTES // max(1, int(np.prod(rows.row_shape, dtype=np.int64)) * rows.dtype.itemsize))


# --------------------------------------------------------------------------
# The sample IDs, compact.


class _Ids:
    """The sample IDs: integers (row numbers, or an integer dataset) or
    UTF-8 bytes in one numpy array, turned into text a block at a time."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def _text(self, values: np.ndarray) -> list[str]:
        if values.dtype.kind == "S":
            return [v.decode("utf-8") for v in values.tolist()]
        return [str(v) for v in values.tolist()]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return self._text(self.values[key])
        return self._text(self.values[int(key) : int(key) + 1])[0]

    def strings(self) -> list[str]:
        return self._text(self.values)


def _id_block(block: np.ndarray, start: int, rows: _Rows) -> np.ndarray:
    """One block of a string ID dataset as UTF-8 bytes, checked."""
    flat = np.asarray(block).reshape(-1)
    try:
        out = flat.astype("S") if flat.dtype.kind in "OS" else None
    except UnicodeEncodeError:
        out = None
    if out is None:
        out = np.array([v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in flat.tolist()], dtype="S")
    lengths = np.char.str_len(out) if out.size else np.zeros(0, np.int64)
    bad = np.flatnonzero(lengths == 0)
    if bad.size:
        raise SourceError(f"{rows.locate(start + int(bad[0]))}: expected a non-empty sample ID. Received: ''")
    # A NUL inside an ID: fewer non-zero bytes than its length (numpy's
    # fixed-width bytes drop trailing NULs only).
    width = out.dtype.itemsize
    nonzero = np.count_nonzero(out.view(np.uint8).reshape(out.size, width), axis=1) if width else lengths
    bad = np.flatnonzero(nonzero < lengths)
    if bad.size:
        raise SourceError(
            f"{rows.locate(start + int(bad[0]))}: expected a sample ID without NUL characters. "
            f"Received: {out[bad[0]]!r}"
        )
    for k, value in enumerate(out.tolist()):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise SourceError(f"{rows.locate(start + k)}: expected a UTF-8 sample ID. Received: {value!r}") from None
    return out


def _read_ids(rows: _Rows) -> _Ids:
    """Every ID of ``rows`` (string or integer datasets), checked to be unique."""
    string = h5py.check_string_dtype(rows.parts[0].dtype) is not None or rows.dtype.kind == "S"
    for part in rows.parts:
        ok = (h5py.check_string_dtype(part.dtype) is not None or part.dtype.kind == "S") if string else part.dtype.kind in "iu"
        if not ok or part.row_shape not in ((), (1,)):
            raise SourceError(
                f"{part.where}: expected one sample ID per row, a string or an integer. Received: "
                f"rows of shape {part.row_shape!r}, dtype {_dtype_text(part.dtype)}"
            )
    pieces = []
    for start, block in rows.blocks(1 << 20):
        pieces.append(_id_block(block, start, rows) if string else np.asarray(block).reshape(-1))
    values = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    _check_unique(values, rows)
    return _Ids(values)


def _check_unique(values: np.ndarray, rows: _Rows) -> None:
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    if same.size:
        first = int(same[0])
        a, b = sorted((int(order[first]), int(order[first + 1])))
        value = _Ids(ordered[first : first + 1])[0]
        raise SourceError(
            f"{rows.locate(b)}: sample IDs must be unique; {value!r} is also at {rows.locate(a)} "
            f"({same.size} repeated ID(s) in all)"
        )


# --------------------------------------------------------------------------
# Labels: class indices, one-hot rows, or targets.


@dataclass(frozen=True)
class _LabelPlan:
    kind: str  # "index", "onehot" or "value"
    n_classes: int | None
    class_names: list[str] | None
    target_shape: tuple[int, ...]
    target_dtype: np.dtype


class _Labels:
    """The labels as the output stores them, converted a block at a time."""

    def __init__(self, rows: _Rows, kind: str) -> None:
        self.rows = rows
        self.kind = kind

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        block = self.rows[key]
        if self.kind == "index":
            return block.reshape(-1).astype(np.int64)
        if self.kind == "onehot":
            return np.argmax(block, axis=1).astype(np.int64)
        return block


def _first_not_one_hot(block: np.ndarray) -> int | None:
    with np.errstate(invalid="ignore"):
        ok = np.all((block == 0) | (block == 1), axis=1) & (np.count_nonzero(block, axis=1) == 1)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else None


def _is_one_hot(y: _Rows) -> bool:
    if len(y.row_shape) != 1 or y.row_shape[0] < 2:
        return False
    return all(_first_not_one_hot(block) is None for _, block in y.blocks(_rows_scanned(y)))


def _shown(row: np.ndarray) -> str:
    values = row.tolist()
    return repr(values) if len(values) <= 10 else repr(values[:10])[:-1] + ", ...]"


def _class_range(y: _Rows, limit: int | None) -> int:
    """Check class indices (integer, or float holding integers), return the largest."""
    high = -1
    for start, block in y.blocks(_rows_scanned(y)):
        flat = block.reshape(-1)
        if flat.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                bad = np.flatnonzero(~(flat == np.floor(flat)) | (flat < 0))
        else:
            bad = np.flatnonzero(flat < 0)
        if bad.size:
            value = flat[bad[0]].item()
            what = "NaN" if value != value else ("negative" if value < 0 else "not a whole number")
            raise SourceError(
                f"{y.locate(start + int(bad[0]))}: expected a class index (an integer >= 0). "
                f"Received: {value!r} ({what}; {bad.size} such label(s) in this block)"
            )
        if flat.size:
            high = max(high, int(flat.max()))
            if limit is not None and high >= limit:
                at = int(np.flatnonzero(flat >= limit)[0])
                raise SourceError(
                    f"{y.locate(start + at)}: expected a class index in [0, {limit}). Received: {flat[at].item()!r}"
                )
    return high


def _names_attribute(y: _Rows) -> list[str] | None:
    """The ``class_names`` attribute of the label dataset(s), when present."""
    found: list[str] | None = None
    for part in y.parts:
        if "class_names" not in part.dset.attrs:
            continue
        raw = part.dset.attrs["class_names"]
        items = np.atleast_1d(raw).tolist()
        names = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in items]
        if len(names) == 1 and "," in names[0]:  # one comma-separated string
            names = [n.strip() for n in names[0].split(",")]
        if found is not None and names != found:
            raise SourceError(
                f"{part.where}: its class_names attribute {names!r} differs from {y.parts[0].where}'s {found!r}"
            )
        found = names
    return found


def _plan_labels(
    y: _Rows, label_type: str, n_classes: int | None, class_names: list[str] | None
) -> _LabelPlan:
    where = y.parts[0].where
    _check_numeric(y, "y", "labels (class indices, one-hot rows or targets)")
    single = y.row_shape in ((), (1,))
    kind = label_type
    if kind == "auto":
        if single and y.dtype.kind in "iu":
            kind = "index"
        elif _is_one_hot(y):
            kind = "onehot"
        else:
            kind = "value"
    attr = _names_attribute(y) if class_names is None else None
    if kind == "value":
        if class_names is not None or n_classes is not None:
            raise SourceError(
                f"{where}: class_names and n_classes need class labels, but the labels are numeric targets "
                f"(rows of shape {y.row_shape!r}, dtype {y.dtype}); pass label_type='index' or 'onehot'"
            )
        if attr is not None:
            logger.warning("%s: has a class_names attribute but holds numeric targets; pass "
                           "--label-type index or onehot to store class indices", where)
        return _LabelPlan("value", None, None, y.row_shape, y.dtype.newbyteorder("="))
    names = class_names if class_names is not None else attr
    limit = n_classes if n_classes is not None else (len(names) if names is not None else None)
    if names is not None and n_classes is not None and len(names) != n_classes:
        raise SourceError(f"{where}: {len(names)} class names for n_classes={n_classes}; expected one name per class")
    if kind == "index":
        if not single:
            raise SourceError(
                f"{where}: label_type='index' needs one class index per row. Received: rows of shape {y.row_shape!r}"
            )
        high = _class_range(y, limit)
        count = limit if limit is not None else high + 1
    else:  # onehot
        if len(y.row_shape) != 1:
            raise SourceError(
                f"{where}: label_type='onehot' needs rows of shape (n_classes,). Received: rows of shape {y.row_shape!r}"
            )
        for start, block in y.blocks(_rows_scanned(y)):
            bad = _first_not_one_hot(block)
            if bad is not None:
                raise SourceError(
                    f"{y.locate(start + bad)}: expected a one-hot row (one 1, the rest 0). "
                    f"Received: {_shown(block[bad])}"
                )
        count = y.row_shape[0]
        if limit is not None and limit != count:
            raise SourceError(
                f"{where}: one-hot rows of {count} classes, but {limit} "
                f"{'class names' if n_classes is None else 'classes (n_classes)'} were given"
            )
    return _LabelPlan(kind, count, names, (), np.dtype(np.int64))


# --------------------------------------------------------------------------
# Arguments.


def _paths(value: Any, role: str, splits: list[str] | None) -> dict[str, str] | str | None:
    """``x``/``y``/``ids`` normalised: a path, ``{split: path}`` or None."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        path = os.fspath(value)
        if splits is not None:
            raise ValueError(f"{role}: x names one dataset per split, so {role} must too. Received: {value!r}")
        return path
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{role} must name at least one split. Received: {{}}")
        out = {}
        for name, path in value.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"{role}: split names must be non-empty text without '/'. Received: {name!r}")
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"{role}[{name!r}] must be a dataset path. Received: {path!r}")
            out[name] = os.fspath(path)
        if splits is not None and list(out) != splits:
            raise ValueError(f"{role} must name the same splits as x, in the same order: {splits!r}. Received: {list(out)!r}")
        if splits is None and role != "x":
            raise ValueError(f"{role}: per-split datasets need x per split too. Received: {value!r}")
        return out
    raise TypeError(f"{role} must be a dataset path or {{split: path}}. Received: {value!r}")


def _names(class_names: Any) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)):
        raise TypeError(f"class_names must be a list of names, not one string. Received: {class_names!r}")
    names = [str(n) for n in class_names]
    if not names or not all(names):
        raise ValueError(f"class_names must be non-empty names. Received: {class_names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct. Received: {class_names!r}")
    return names


_INSTEAD = "convert instead (without link=True / --link)"


@dataclass(frozen=True)
class _Arguments:
    """:func:`from_h5`'s arguments, normalised and checked before the source is opened."""

    options: Options
    x: dict[str, str] | str
    y: dict[str, str] | str | None
    ids: dict[str, str] | str | None
    splits: list[str] | None  # the split names of per-split arrays, in order
    sample_axis: int
    label_type: str
    class_names: list[str] | None
    n_classes: int | None
    link: bool
    allow_virtual: bool


def check_arguments(
    *,
    x: Any,
    y: Any = None,
    ids: Any = None,
    sample_axis: Any = 0,
    label_type: str = "auto",
    class_names: Any = None,
    n_classes: Any = None,
    partition: Any = None,
    link: Any = False,
    allow_virtual: Any = False,
    **options: Any,
) -> _Arguments:
    """Normalise and check :func:`from_h5`'s arguments (``options``: those of
    :class:`Options`); the command line calls it first to report bad usage.

    Raises:
        ValueError, TypeError: arguments that do not fit together.
    """
    opts = Options(**options)
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES!r}. Received: {label_type!r}")
    axis = check_int(sample_axis, "sample_axis", minimum=-_MAX_RANK, error=TypeError)
    if axis >= _MAX_RANK:
        raise ValueError(f"sample_axis must be below {_MAX_RANK} (HDF5's most dimensions). Received: {sample_axis!r}")
    link = check_bool(link, "link")
    allow_virtual = check_bool(allow_virtual, "allow_virtual")
    n_classes = check_int(n_classes, "n_classes", minimum=1, none_ok=True)
    names = _names(class_names)
    x_paths = _paths(x, "x", None)
    if x_paths is None:
        raise TypeError("x must be a dataset path or {split: path}. Received: None")
    splits = list(x_paths) if isinstance(x_paths, dict) else None
    y_paths = _paths(y, "y", splits)
    id_paths = _paths(ids, "ids", splits)
    if y_paths is None and (label_type != "auto" or names is not None or n_classes is not None):
        raise ValueError("label_type, class_names and n_classes need labels (y)")
    if splits is not None and partition is not None:
        raise ValueError("partition cannot be combined with per-split x: the splits come from the arrays")
    if link:
        if splits is not None:
            raise ValueError(
                f"link=True (--link) needs one x dataset; per-split arrays are joined by copying: {_INSTEAD}"
            )
        if opts.append_to is not None:
            raise ValueError(
                "link=True (--link) refers to the source's rows, but append_to (--append-to) needs them "
                "copied into the growing dataset's parts; drop one of the two"
            )
        for name, flag, value in (("shard", "--shard", opts.shard), ("shuffle_rows", "--shuffle-rows", opts.shuffle_rows),
                                  ("compression", "--compression", opts.compression),
                                  ("chunk_rows", "--chunk-rows", opts.chunk_rows)):
            if value not in (None, False, "none"):
                raise ValueError(
                    f"link=True (--link) keeps x as the source stores it, in its order, so {name} ({flag}) "
                    f"cannot apply: {_INSTEAD}"
                )
    return _Arguments(opts, x_paths, y_paths, id_paths, splits, axis, label_type, names, n_classes, link,
                      allow_virtual)


def _check_link(src: str, out: str, x: SourceRows) -> None:
    """Refuse a source dataset that a linked x cannot refer to, saying to convert instead."""
    where = f"{x.where} (x)"
    if x.axis != 0:
        raise SourceError(
            f"{where}: its samples lie along axis {x.axis}; a linked x must have them on the first axis: {_INSTEAD}"
        )
    if not os.path.samefile(x.dset.file.filename, src):
        raise SourceError(f"{where}: lies in another file, {x.dset.file.filename!r} (an external link): {_INSTEAD}")
    folder = os.path.dirname(out)
    if source_name(src, folder) is None:
        raise SourceError(
            f"{src}: a linked output names its source relative to its own folder, so the source must lie in "
            f"the output's folder {folder!r} or below it; write the output beside the source, or {_INSTEAD}"
        )
    try:
        check_virtual_source(src, x.dset.name)
    except UntrustedFileError as exc:
        raise SourceError(f"{exc}. A linked x must be stored the way h5feed reads it: {_INSTEAD}") from exc


def from_h5(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    x: str | Mapping[str, str],
    y: str | Mapping[str, str] | None = None,
    ids: str | Mapping[str, str] | None = None,
    sample_axis: int = 0,
    label_type: str = "auto",
    class_names: Sequence[str] | None = None,
    n_classes: int | None = None,
    partition: str | os.PathLike[str] | Mapping[str, Sequence[str]] | None = None,
    link: bool = False,
    allow_virtual: bool = False,
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
) -> ConversionResult:
    """Convert datasets of any HDF5 file (or link to them) into one h5feed file.

    See the guide page ``docs/guide/from-hdf5.md`` for the common layouts.

    Args:
        src: the HDF5 file (``.h5``, ``.hdf5``, ``.nxs``, a MATLAB v7.3
            ``.mat``, ...). Only read.
        out: the h5feed file to write (or give ``append_to``).
        x: the path of the samples' dataset, at any depth
            (``"/entry/data/data"``), or ``{split: path}`` for a file that
            keeps each split in its own arrays (``{"train": "X_train",
            "test": "X_test"}``): the output holds them one after another,
            with those splits.
        y: the labels' dataset (or ``{split: path}``, like ``x``); None for
            unlabelled samples.
        ids: a dataset of sample IDs, strings or integers (stored as their
            decimal text), or ``{split: path}``; None numbers the rows
            ``"0"``, ``"1"``, ... (``"<split>/0"``, ... per split).
        sample_axis: the axis of ``x`` (and of ``y`` and ``ids`` with two or
            more axes) that holds the samples; negative counts from the end.
            MATLAB v7.3 files keep them last: ``-1``.
        label_type: ``"auto"`` (a 1-D integer ``y`` holds class indices, a
            2-D one whose every row is one-hot holds classes one-hot, anything
            else numeric targets), ``"index"``, ``"onehot"`` or ``"value"``.
            Class labels are stored as class indices.
        class_names: the names of the classes; default: the ``class_names``
            attribute of ``y``, when it has one.
        n_classes: the number of classes (default: the class names' count,
            the one-hot width, or the largest label + 1).
        partition: ``{split: [IDs]}`` as for
            :func:`~h5feed.convert.from_npy_dir`; not with per-split ``x``.
        link: write the IDs, labels and splits only, and make ``x`` a
            virtual dataset over the source's (the source must lie in the
            output's folder or below it; read the output with
            ``allow_virtual=True``). Not with per-split arrays, another
            ``sample_axis``, ``shard``, ``shuffle_rows``, ``compression`` or
            ``chunk_rows``, nor for a source dataset h5feed would not read as
            it is stored.
        allow_virtual: read source datasets that are virtual or stored in
            external files (their data lives in other files).
        compression, chunk_rows, shuffle_rows, seed, overwrite, checksum,
        quiet, progress, shard, metadata, append_to: as for :func:`~h5feed.convert.from_npy_dir`.
        workers: accepted for symmetry; HDF5 reads gain nothing from more
            processes, so it is done in this one.

    Returns:
        A :class:`ConversionResult`.

    Raises:
        SourceError: not an HDF5 file; a path that is missing (the message
            lists the file's datasets) or a group; virtual or external data
            without ``allow_virtual``; a filter that is not available; a
            non-numeric ``x``; row counts that differ; labels that are not
            one-hot, NaN, negative or out of range; empty or duplicate IDs;
            no rows; for ``link``, a source it cannot link to.
        ReadError: a source chunk that cannot be read.
        WriterError: as :class:`h5feed.DatasetWriter`.
        ValueError, TypeError: arguments that do not fit together.

    Example:
        >>> from_h5("run.h5", "train.h5", x="/entry/data/data", y="/entry/labels")  # doctest: +SKIP
        >>> from_h5("keras.h5", "train.h5", x={"train": "X_train", "test": "X_test"},
        ...         y={"train": "y_train", "test": "y_test"})  # doctest: +SKIP
    """
    args = check_arguments(
        x=x, y=y, ids=ids, sample_axis=sample_axis, label_type=label_type, class_names=class_names,
        n_classes=n_classes, partition=partition, link=link, allow_virtual=allow_virtual,
        compression=compression, chunk_rows=chunk_rows, shuffle_rows=shuffle_rows, seed=seed, workers=workers,
        overwrite=overwrite, checksum=checksum, quiet=quiet, progress=progress, shard=shard,
        metadata=metadata, append_to=append_to,
    )
    options = args.options
    src = os.path.abspath(os.fspath(src))
    out = options.output(out)
    if os.path.exists(src) and os.path.exists(out) and os.path.samefile(src, out):
        raise SourceError(f"{out}: is the source; write the output under another name")
    return _convert(src, out, args, partition)


def _convert(src: str, out: str, args: _Arguments, partition: Any) -> ConversionResult:
    options = args.options
    splits_order = args.splits
    with _open_source(src) as f:
        def rows_of(paths: dict[str, str] | str, role: str) -> _Rows:
            parts = []
            for path in paths.values() if isinstance(paths, dict) else [paths]:
                dset = _dataset(f, src, path, role, args.allow_virtual)
                where = f"{src}:{dset.name}"
                parts.append(SourceRows(dset, _axis(dset, args.sample_axis, f"{where} ({role})"), where))
            return _Rows(parts)

        xr = rows_of(args.x, "x")
        _check_numeric(xr, "x", "samples (bool, int, uint or float)")
        xr.dtype = xr.dtype.newbyteorder("=")
        if args.link:
            _check_link(src, out, xr.parts[0])
        yr = None if args.y is None else rows_of(args.y, "y")
        ir = None if args.ids is None else rows_of(args.ids, "ids")
        for other, role, what in ((yr, "y", "label"), (ir, "ids", "ID")):
            for xp, op in zip(xr.parts, other.parts if other is not None else []):
                if len(op) != len(xp):
                    raise SourceError(
                        f"{src}: {op.where.split(':', 1)[1]} ({role}) has {len(op)} rows but "
                        f"{xp.where.split(':', 1)[1]} (x) has {len(xp)}; expected one {what} per sample"
                    )
        n = len(xr)
        if n == 0:
            raise SourceError(f"{xr.parts[0].where} (x): has no rows (an empty source)")

        plan = None
        if yr is not None:
            plan = _plan_labels(yr, args.label_type, args.n_classes, args.class_names)
        if ir is not None:
            id_list = _read_ids(ir)
        elif splits_order is None:
            id_list = _Ids(np.arange(n, dtype=np.int64))
        else:
            id_list = _Ids(np.concatenate([
                np.char.add(f"{name}/".encode(), np.arange(len(p)).astype("S"))
                for name, p in zip(splits_order, xr.parts)
            ]))

        splits: dict[str, Any] = {}
        if partition is not None:
            where, splits = load_partition(partition)
            check_partition_ids(where, splits, set(id_list.strings()), src)
        needs_text = options.shard is not None or options.metadata is not None
        order = options.select(id_list.strings() if needs_text else id_list, src)
        if splits_order is not None:
            output_row = np.full(n, -1, dtype=np.int64)
            output_row[order] = np.arange(order.size)
            for name, start, stop in zip(splits_order, xr.offsets[:-1].tolist(), xr.offsets[1:].tolist()):
                rows = output_row[start:stop]
                splits[name] = np.sort(rows[rows >= 0])

        row_nbytes = max(1, int(np.prod(xr.row_shape, dtype=np.int64)) * xr.dtype.itemsize)
        step = max(1, min(_BLOCK_MAX_ROWS, _BLOCK_BYTES // row_nbytes))
        if xr.chunk_rows:  # whole chunks per block: no chunk is decompressed twice
            step = max(xr.chunk_rows, step // xr.chunk_rows * xr.chunk_rows)
        labels = None if yr is None or plan is None else _Labels(yr, plan.kind)
        x_dtype = xr.parts[0].dtype if args.link else xr.dtype
        result = write_dataset(
            out, gather_blocks(xr, labels, id_list, order, step), options=options, n_rows=len(order),
            sample_shape=xr.row_shape, dtype=x_dtype,
            target_shape=() if plan is None else plan.target_shape,
            target_dtype=None if plan is None else plan.target_dtype,
            n_classes=None if plan is None else plan.n_classes,
            class_names=None if plan is None else plan.class_names,
            splits=splits, label=f"{'linking' if args.link else 'converting'} {os.path.basename(src)}",
            virtual={"x": [(src, xr.parts[0].dset.name)]} if args.link else None,
        )
    return result
