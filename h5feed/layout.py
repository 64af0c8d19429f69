"""The on-disk layout of an h5feed file, format version 1, in one place.

An h5feed file is a plain HDF5 file that any HDF5 tool can read::

    /ids              (N,)            UTF-8 strings, unique: the sample IDs
    /x                (N, *sample)    any numeric dtype: the samples
    /y                (N,) or (N, *target)  class indices or numeric targets
                                      (optional: absent for unlabelled data)
    /splits/<name>    (k,)            int64 rows, strictly increasing, < N
    /w                (N,)            optional: sample weights (float32), as the
                                      converters' --weights write them
    /<other>          (N, ...)        optional further per-row datasets
    /ids_index/rows   (N,)  int64     optional: the rows of /ids in the
    /ids_index/ends   (N,)  int64       order of their UTF-8 bytes, where
    /ids_index/bytes  (B,)  uint8       each sorted ID ends, and their bytes
    /meta/<column>    (N,)            optional per-sample metadata: int64,
                                      float64 or UTF-8 strings, in row order

    root attributes:
    h5feed_format     1
    n_classes         int, when /y holds class indices
    class_names       strings, optional, one per class
    h5feed_complete   JSON completion record, written last (see below)

The completion record is a JSON object ``{"rows": N, "sha256": {path: hex}}``
with one SHA-256 per dataset (see :func:`hash_rows` for what is hashed). A
writer sets it as the very last step, so a file without it was never finished
and is refused. The record and its hashing are implemented in
``h5feed/_record.py``; its names are re-exported here with the rest of the
format.

:func:`validate` checks what the metadata tells, once, when a file is opened,
and returns a frozen :class:`Layout`; nothing else in h5feed guesses names or
shapes. It reads no per-row data (NOTE [ Opening reads metadata only ]).
Metadata columns (``meta/``, since h5feed 0.2; older readers ignore the
group) are described here too: :func:`metadata_dtype` says how a column is
stored, :func:`check_meta_name` which names are allowed, and
:func:`validate` checks them with the rest. A
file whose HDF5 structure is damaged is refused with a ``DamagedFileError``
naming the object (NOTE [ Damaged files ] in ``h5feed/_damage.py``).
:func:`write_attributes` is how writers set the root attributes.

NOTE [ Opening reads metadata only ]
Opening a file costs the same for a thousand rows as for a hundred million:
:func:`validate` checks the format, the completion record, the storage of
every dataset and their shapes and types, and nothing that needs a row. The
checks that do are made where the rows are read anyway, or by the tools that
read everything:

- IDs unique and valid: the writer refuses a repeat (it sorts every ID once
  when it closes) and vouches for the file with its completion record; an ID
  lookup (``_ids.find_rows``) names a repeat it meets; ``h5feed verify``
  checks all of them, and the ID index against ``/ids``.
- class indices in ``[0, n_classes)``: each batch's labels
  (:func:`check_labels`, in ``_batch.py``); ``h5feed verify`` checks all.
- split rows strictly increasing and in range: :func:`read_split` checks the
  split it reads; ``h5feed verify`` checks every split.
- the IDs' strings sound (NOTE [ Global heap ] in ``h5feed/_heap.py``):
  opening checks only that ``/ids`` stores one string descriptor per row (its
  layout message or chunk index); the descriptors and the heap collections
  of the rows read are checked before HDF5 reads them (``layout.read_ids``,
  the lookups of ``_ids.py``, verify), so damaged IDs are a named h5feed
  error where they are read.
See the design note ``docs/design/scale.md``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace as _replace
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np

from . import _codecs
from ._damage import decoded, read_whole, touching
from ._files import open_h5
from ._heap import check_attribute, check_dataset, check_storage, check_virtual_layout
from ._record import ATTR_COMPLETE, hash_rows, read_record, record_digest_of
from .errors import (
    DamagedFileError,
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
    "IDS_INDEX",
    "META",
    "PART_IDS",
    "SPLITS",
    "W",
    "X",
    "Y",
    "ColumnInfo",
    "Layout",
    "VirtualPart",
    "check_labels",
    "check_split_rows",
    "check_meta_name",
    "check_virtual_source",
    "compression_of",
    "grown_split_files",
    "hash_rows",
    "mapped_rows",
    "meta_path",
    "metadata_dtype",
    "open_and_validate",
    "parts_folder",
    "read_ids",
    "read_split",
    "source_name",
    "validate",
    "write_attributes",
]

FORMAT_VERSION = 1

# A grown file (h5feed append) keeps its parts in the folder named after it
# plus this suffix: DATA.h5's parts lie in DATA.h5.parts/.
PARTS_SUFFIX = ".parts"

IDS = "ids"
X = "x"
Y = "y"
W = "w"  # sample weights, by convention: any per-row numeric dataset may serve
SPLITS = "splits"
# The optional sorted index of the IDs (format version 1, since h5feed 0.2):
# rows, ends and bytes, listed in the completion record (docs/format.md).
IDS_INDEX = "ids_index"
META = "meta"  # per-sample metadata columns, one dataset each
# A grown file's optional bounds of each part's IDs: PART_IDS/first and
# PART_IDS/last, the smallest and largest ID of each part (docs/format.md).
PART_IDS = "part_ids"

ATTR_FORMAT = "h5feed_format"
ATTR_N_CLASSES = "n_classes"
ATTR_CLASS_NAMES = "class_names"

# Caps for untrusted files: no real dataset of ours comes near them, and a
# file that declares more is refused before any data is read.
MAX_ROWS = 2**34
MAX_DATASET_BYTES = 2**46  # 64 TiB
MAX_CHUNK_BYTES = 2**28  # 256 MiB per chunk
MAX_CLASSES = 2**24  # one-hot batches grow with the class count
# Deflate cannot compress better than about 1032:1; a dataset whose stored
# bytes are fewer than its logical bytes / this limit is not real data.
MAX_COMPRESSION_RATIO = 1100
# Zstd stores a run of up to 128 KiB in 4 bytes (Blosc may hold Zstd): the
# limit for datasets with those filters, whose headers are checked besides.
MAX_ZSTD_RATIO = 33_000
# Filters h5feed knows how to read: deflate, shuffle, fletcher32, szip,
# scale-offset, n-bit, LZF; and, where hdf5plugin is installed, Blosc and Zstd.
KNOWN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000, *_codecs.PLUGIN_FILTERS})


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
        sources: for a trusted virtual dataset, where its rows live, in row
            order (see :func:`validate`); else None.
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
        # math.prod: readers ask this per batch, and numpy's prod of a short
        # tuple costs microseconds.
        return math.prod(self.row_shape) * self.dtype.itemsize

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
        column: the source dataset, as stored, named by its path in the
            source file (its ``offset`` allows reading it memory-mapped).
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
        metadata: the names of the metadata columns (``meta/<name>``), sorted.
    """

    path: str
    n_rows: int
    columns: Mapping[str, ColumnInfo]
    splits: Mapping[str, int]
    n_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    completion: Mapping[str, Any] = field(default_factory=dict)
    metadata: tuple[str, ...] = ()

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
# Validation, one small check per field.


def _where(f: h5py.File, name: str = "") -> str:
    return f"{f.filename}:/{name}" if name else f.filename


def _root_attr(f: h5py.File, name: str) -> Any:
    """The root attribute ``name``, or None when the file has none."""
    with touching(f.filename, f"/ (attribute {name!r})"):
        if name not in f.attrs:
            return None
        check_attribute(f, name)  # NOTE [ Global heap ] (h5feed/_heap.py)
        return f.attrs[name]


def _members(f: h5py.File, group: h5py.Group) -> Any:
    """``(name, object)`` of each member of ``group``, each opened under
    :class:`~h5feed._damage.touching` (a damaged header names its object)."""
    prefix = group.name.rstrip("/") + "/"
    with touching(f.filename, group.name):
        names = list(group)
    for name in names:
        with touching(f.filename, prefix + name):
            check_virtual_layout(f, group, name)  # NOTE [ Virtual dataset mappings ] (h5feed/_heap.py)
            obj = group.get(name)
        yield name, obj


def _check_format(f: h5py.File) -> int:
    raw = _root_attr(f, ATTR_FORMAT)
    if raw is None:
        raise UnsupportedFormatVersionError(
            f"{f.filename}: not an h5feed file: the root has no {ATTR_FORMAT!r} "
            f"attribute (expected {ATTR_FORMAT} = {FORMAT_VERSION})"
        )
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
    with touching(f.filename, group.name):
        names = list(group)
    for name in names:
        with touching(f.filename, group.name.rstrip("/") + "/" + name):
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
        if code in _codecs.PLUGIN_FILTERS and not h5py.h5z.filter_avail(code) and not _codecs.load_plugins():
            raise UntrustedFileError(
                f"{where}: uses hdf5plugin's {_codecs.PLUGIN_FILTERS[code]} filter ({code}), and hdf5plugin "
                'is not installed here: pip install "h5feed[codecs]"'
            )
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
    ratio = MAX_ZSTD_RATIO if any(code in _codecs.PLUGIN_FILTERS for code in codes) else MAX_COMPRESSION_RATIO
    if nbytes and stored and nbytes / stored > ratio:
        raise UntrustedFileError(
            f"{where}: {nbytes} bytes stored in {stored}, a compression ratio "
            f"of {nbytes / stored:.0f}:1 that no real data has"
        )
    if any(code in _INFLATING_FILTERS for code in codes):
        _check_chunks(where, dset, chunk_bytes, ratio)
    if codes:
        _check_filtered_chunks(where, dset, plist)


# Filters whose output can be much larger than their input (decompressors):
# deflate, szip, LZF, Blosc, Zstd.
_INFLATING_FILTERS = frozenset({1, 4, 32000, *_codecs.PLUGIN_FILTERS})
# Bytes a chunk may be stored larger than its data: the Fletcher32 checksum
# and filter headers, plus a thousandth for the block headers of a
# compressor that stores incompressible data as it is (Zstd's raw blocks).
_CHUNK_OVERHEAD = 1024


def _each_chunk(dset: h5py.Dataset, visit: Any) -> None:
    """Call ``visit(info)`` with the index entry of each stored chunk; reads
    only the chunk index."""
    if hasattr(dset.id, "chunk_iter"):
        dset.id.chunk_iter(visit)
    else:  # older h5py: slower, same answer
        for i in range(dset.id.get_num_chunks()):
            visit(dset.id.get_chunk_info(i))


def _check_chunks(where: str, dset: h5py.Dataset, chunk_bytes: int, ratio: float) -> None:
    """Refuse a compressed chunk that could inflate beyond its declared size.

    A chunk's decompressor grows its buffer until the stream ends, so one
    chunk stored larger than its data (a "zip bomb") would be inflated in
    full before HDF5 notices; the whole-dataset ratio cannot see one such
    chunk among many honest ones. HDF5's Blosc and Zstd filters allocate
    what a chunk's header declares: those headers are read and checked too
    (:func:`h5feed._codecs.oversized_chunks`). Otherwise reads only the
    chunk index.
    """
    bad: list[tuple[tuple[int, ...], int]] = []
    stored: list[tuple[int, int, int, tuple[int, ...]]] = []
    most = chunk_bytes + _CHUNK_OVERHEAD + chunk_bytes // 1024

    def visit(info: Any) -> None:
        size = int(info.size)
        offset = tuple(int(o) for o in info.chunk_offset)
        if size > most or (size and chunk_bytes / size > ratio):
            bad.append((offset, size))
        elif info.byte_offset is not None:
            stored.append((int(info.byte_offset), size, int(info.filter_mask), offset))

    _each_chunk(dset, visit)
    if bad:
        offset, size = bad[0]
        raise UntrustedFileError(
            f"{where}: the chunk at {offset!r} stores {size} bytes for {chunk_bytes} bytes of "
            f"data, which no real compressed data does ({len(bad)} such chunk(s)); refusing "
            "to decompress it"
        )
    lying = _codecs.oversized_chunks(dset.file.filename, _codecs.pipeline_of(dset), stored)
    if lying:
        offset, declared = lying[0]
        said = "no size" if declared is None else f"{declared} bytes"
        raise UntrustedFileError(
            f"{where}: the chunk at {offset!r} declares {said} in its header for {chunk_bytes} bytes "
            f"of data ({len(lying)} such chunk(s)); refusing to decompress it"
        )


def _check_filtered_chunks(where: str, dset: h5py.Dataset, plist: Any) -> None:
    """Refuse a filtered chunk whose index entry HDF5 would mis-read.

    HDF5 (through at least 1.14.6) runs the Fletcher32 filter over a chunk's
    stored bytes less its 4-byte checksum without checking that there are 4:
    a damaged chunk index that gives a size below that crashes the process.
    A chunk that skips a mandatory filter (Fletcher32 is one) is damage too:
    HDF5 would hand its bytes over unchecked. Reads only the chunk index.
    """
    least = 4 if plist.get_filter_by_id(h5py.h5z.FILTER_FLETCHER32) is not None else 1
    mandatory = 0
    for i in range(plist.get_nfilters()):
        if not plist.get_filter(i)[1] & h5py.h5z.FLAG_OPTIONAL:
            mandatory |= 1 << i
    bad: list[tuple[tuple[int, ...], int, int]] = []

    def visit(info: Any) -> None:
        if int(info.size) < least or int(info.filter_mask) & mandatory:
            bad.append((tuple(int(o) for o in info.chunk_offset), int(info.size), int(info.filter_mask)))

    _each_chunk(dset, visit)
    if bad:
        offset, size, mask = bad[0]
        raise DamagedFileError(
            f"{where}: damaged: the index of its chunks gives the chunk at {offset!r} {size} stored bytes "
            f"and filter mask {mask:#x}, which its filters cannot read ({len(bad)} such chunk(s))"
        )


# Trusting virtual datasets: they are refused unless the caller passes
# allow_virtual=True, and even then every mapping must name a plain dataset
# (at any path) of the same dtype and row shape in a file inside the virtual
# file's folder, select whole rows within its bounds, and the mappings must
# cover every row exactly once (else HDF5 reads fill values). Writers check
# their sources by the same rules (source_name, check_virtual_source).
# See docs/design/merged-files.md.


def source_name(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str | None:
    """How a virtual dataset in ``folder`` names its source file ``path``.

    Returns:
        ``path`` relative to ``folder``, with forward slashes (as HDF5 stores
        it), or None when ``path`` lies outside ``folder``: such a source is
        never trusted.

    Example:
        >>> source_name("/data/run/parts/p0.h5", "/data/run"), source_name("/data/p0.h5", "/data/run")
        ('parts/p0.h5', None)
    """
    try:
        rel = os.path.relpath(os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(folder)))
    except ValueError:  # another drive (Windows)
        return None
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir or os.path.isabs(rel):
        return None
    return rel.replace(os.sep, "/")


def check_virtual_source(
    path: str | os.PathLike[str], dataset: str, *, where: str | None = None, files: _SourceFiles | None = None
) -> ColumnInfo:
    """Check that dataset ``dataset`` of the file ``path`` may be a virtual
    dataset's source; describe it.

    The source must be a plain dataset (not virtual: no chains) that passes
    every storage check of :func:`validate` (no external storage, the same
    caps, only known and available filters). Reads no data.

    Args:
        path: the source file.
        dataset: the dataset's path inside it.
        where: how messages name the virtual dataset (default: the source).
        files: the source files already open in this validation, reused.

    Returns:
        The source as a :class:`ColumnInfo` named by its path inside the
        source file (without the leading ``/``); ``offset`` set where it can
        be memory-mapped.

    Raises:
        UntrustedFileError: missing file or dataset, or storage h5feed does
            not read.
    """
    src_path = os.fspath(path)
    where = where or f"{src_path}:/{dataset.lstrip('/')}"
    if not os.path.isfile(src_path):
        raise UntrustedFileError(
            f"{where}: virtual source {src_path!r} is missing; its rows would read as "
            "fill values. Put the part files back beside the merged file (the source beside a linked file)"
        )
    if files is not None:
        return files.checked(src_path, ("dataset", dataset), lambda: _check_source(files.get(src_path), src_path, dataset, where))
    with open_h5(src_path) as g:
        return _check_source(g, src_path, dataset, where)


def _check_source(g: h5py.File, src_path: str, dataset: str, where: str) -> ColumnInfo:
    with touching(src_path, f"/{dataset.lstrip('/')}"):  # damage in a part names the part
        src = g.get(dataset)
        if not isinstance(src, h5py.Dataset):
            raise UntrustedFileError(f"{where}: virtual source {src_path!r} has no plain dataset {dataset!r}")
        if not os.path.samefile(src.file.filename, src_path):
            raise UntrustedFileError(
                f"{where}: virtual source {src_path!r}:{dataset!r} leads through an external link to "
                f"{src.file.filename!r}; h5feed reads a source's data from the source file itself"
            )
        if src.is_virtual:
            raise UntrustedFileError(
                f"{where}: virtual source {src_path!r}:/{dataset.lstrip('/')} is itself a virtual dataset (a "
                "merged or grown file); h5feed does not follow chains of them: `h5feed compact` or "
                "`h5feed merge --copy` it first"
            )
        _check_storage(g, src)  # same caps and filters
        check_storage(g, src)  # strings: one descriptor per row (NOTE [ Global heap ])
        return _stored_as(src)


# What validation found of a source file (each dataset's ColumnInfo, the
# digest of its record), by the file's identity: device, inode, size, and
# modification and change times. Any change to a file changes its change
# time, which no program can set back, so a hit is the same file as checked
# (but for a change in place within the same tick of a filesystem that keeps
# coarse times; h5feed never changes a part in place).
_CHECKED: dict[tuple[Any, ...], Any] = {}
_CHECKED_MAX = 1 << 16


class _SourceFiles:
    """The source files of one validation, each opened once and closed at
    the end, and each file's checks remembered for the process
    (``_CHECKED``). A grown file of a year of nightly appends maps hundreds
    of parts from each of its virtual datasets, each part a file to open and
    datasets to check; an append validates the dataset before and after,
    and a training script opens one file for each split. So every part is
    opened once per validation, and a second validation in the process
    costs a stat per part."""

    def __init__(self) -> None:
        self._open: dict[str, h5py.File] = {}
        self._ids: dict[str, tuple[int, ...]] = {}

    def checked(self, path: str, what: tuple[str, ...], check: Any) -> Any:
        """``check()``, or what it returned for this very file before."""
        key = os.path.abspath(path)
        ident = self._ids.get(key)
        if ident is None:
            st = os.stat(key)
            ident = self._ids[key] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        found = _CHECKED.get((ident, what))
        if found is None:
            found = check()
            if len(_CHECKED) >= _CHECKED_MAX:
                _CHECKED.clear()
            _CHECKED[(ident, what)] = found
        return found

    def get(self, path: str) -> h5py.File:
        key = os.path.abspath(path)
        g = self._open.get(key)
        if g is None:
            g = self._open[key] = open_h5(key)
        return g

    def __enter__(self) -> _SourceFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        for g in self._open.values():
            g.close()
        self._open.clear()


def parts_folder(path: str | os.PathLike[str]) -> str:
    """The folder of a grown file's parts: ``DATA.h5`` keeps them in ``DATA.h5.parts``.

    Example:
        >>> parts_folder("/data/run/all.h5")
        '/data/run/all.h5.parts'
    """
    return os.fspath(path) + PARTS_SUFFIX


def grown_split_files(record: Mapping[str, Any]) -> list[str]:
    """A grown file's split files, by their names relative to its folder
    ([] when its splits are stored in it); its record is already checked."""
    return list(record.get("split_files", ()))


def _grown_parts(f: h5py.File, record: Mapping[str, Any]) -> tuple[list[str], bool] | None:
    """A grown file's parts (names relative to its folder), and whether they
    and its split files all lie in its own parts folder, which makes its
    virtual datasets trusted without ``allow_virtual``; None for a file that
    is not grown (its record has no ``part_records``)."""
    parts, records = record.get("parts"), record.get("part_records")
    if records is None:
        return None
    files, file_records = record.get("split_files", []), record.get("split_records", [])
    for names, digests, keys in ((parts, records, "'parts' and 'part_records'"),
                                 (files, file_records, "'split_files' and 'split_records'")):
        if not (
            isinstance(names, list)
            and isinstance(digests, list)
            and len(names) == len(digests)
            and all(isinstance(p, str) for p in names)
            and all(isinstance(r, str) for r in digests)
        ):
            raise LayoutError(
                f"{_where(f)}: the completion record's {keys} must be lists of "
                f"strings of the same length. Received: {names!r}, {digests!r}"
            )
    prefix = os.path.basename(parts_folder(f.filename)) + "/"
    own = all(p.startswith(prefix) and "/" not in p[len(prefix) :] for p in [*parts, *files])
    return parts, own


def _check_part_records(f: h5py.File, record: Mapping[str, Any], parts: list[str], files: _SourceFiles) -> None:
    """Each part and split file of a grown file must be the file it was
    grown from: the digest of its completion record must be the one this
    file's record holds."""
    folder = os.path.dirname(os.path.abspath(f.filename))
    listed = [("part", name, digest) for name, digest in zip(parts, record["part_records"])]
    listed += [("split file", name, digest)
               for name, digest in zip(grown_split_files(record), record.get("split_records", ()))]
    for kind, name, digest in listed:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise UntrustedFileError(
                f"{_where(f)}: its {kind} {name!r} is missing; its rows would read as fill values. "
                "Put the parts folder back beside the file"
            )
        if files.checked(path, ("record",), lambda: record_digest_of(files.get(path))) != digest:
            raise LayoutError(
                f"{_where(f)}: its {kind} {name!r} is not the file it was grown from (the {kind}'s "
                f"completion record differs from the one recorded); restore the {kind}, or convert again"
            )


def _with_virtual_sources(
    f: h5py.File, columns: dict[str, ColumnInfo], only: list[str] | None, files: _SourceFiles,
    split_files: list[str] | None = None,
) -> dict[str, ColumnInfo]:
    """Check the sources of every virtual dataset (``allow_virtual=True``);
    record them in its :class:`ColumnInfo` so the reader can use the parts.

    The IDs, their index and the splits must be stored in the file itself:
    lookups and selections read them (memory-mapped where they can be), and
    h5feed merge writes them so. ``only``: the source files allowed (a grown
    file's parts), by their names relative to the file's folder; a grown
    file's IDs and metadata may be virtual too, each mapping its parts' own
    in the order of its record (:func:`_check_grown_mapping`), and its
    splits may map its ``split_files`` (:func:`_check_grown_splits`).
    """
    names = [] if only is not None else [IDS]
    for group_name in (SPLITS, IDS_INDEX) if only is None else (IDS_INDEX,):
        group = f.get(group_name)
        if isinstance(group, h5py.Group):
            names += [f"{group_name}/{s}" for s in group]
    for name in names:
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset) and obj.is_virtual:
            raise UntrustedFileError(f"{_where(f, name)}: must be stored in the file, not as a virtual dataset")
    out = dict(columns)
    for name, info in columns.items():
        with touching(f.filename, f"/{name}"):
            dset = f[name]
            if dset.is_virtual:
                out[name] = _replace(info, sources=_virtual_sources(f, dset, only, files=files))
                if only is not None:
                    _check_grown_mapping(f, dset, only, out[name].sources)
    if only is not None:
        group = f.get(META)
        for name in [IDS, *(meta_path(m) for m in (group if isinstance(group, h5py.Group) else ()))]:
            with touching(f.filename, f"/{name}"):
                dset = f[name]
                if isinstance(dset, h5py.Dataset) and dset.is_virtual:
                    _check_grown_mapping(f, dset, only, _virtual_sources(f, dset, only, same_kind=True, files=files))
        group = f.get(SPLITS)
        for name in group if isinstance(group, h5py.Group) else ():
            with touching(f.filename, f"/{SPLITS}/{name}"):
                dset = group[name]
                if isinstance(dset, h5py.Dataset) and dset.is_virtual:
                    allowed = split_files or []
                    _check_grown_splits(f, dset, allowed, _virtual_sources(f, dset, allowed, files=files))
    return out


def _check_grown_splits(f: h5py.File, dset: h5py.Dataset, split_files: list[str], sources: Any) -> None:
    """A grown file's virtual split maps the same split of some of its split
    files, each whole, in the order of the record's ``split_files`` (each
    holds rows after the earlier ones': an append adds rows at the end)."""
    where = _where(f, dset.name.lstrip("/"))
    folder = os.path.dirname(os.path.abspath(f.filename))
    order = {os.path.abspath(os.path.join(folder, p)): k for k, p in enumerate(split_files)}
    at = [order.get(s.path, -1) for s in sources]
    if (
        any(k < 0 for k in at)
        or any(b <= a for a, b in zip(at, at[1:]))
        or any(s.source_start != 0 or s.stop - s.start != s.column.shape[0] or s.column.name != dset.name.lstrip("/")
               for s in sources)
    ):
        raise UntrustedFileError(
            f"{where}: must map the same split of its split files, each whole, in the order of the "
            "completion record's 'split_files'"
        )


def _check_grown_mapping(f: h5py.File, dset: h5py.Dataset, parts: list[str], sources: Any) -> None:
    """Each virtual dataset of a grown file must map the same dataset of
    every part, whole, in the order of the record's ``parts``: ID lookups
    search each part's own index and add the rows before it, and appends
    count each part's rows from ``x``."""
    where = _where(f, dset.name.lstrip("/"))
    folder = os.path.dirname(os.path.abspath(f.filename))
    want = [os.path.abspath(os.path.join(folder, p)) for p in parts]
    if [s.path for s in sources] != want or any(
        s.source_start != 0 or s.stop - s.start != s.column.shape[0] or s.column.name != dset.name.lstrip("/")
        for s in sources
    ):
        raise UntrustedFileError(
            f"{where}: must map its parts' own /{dset.name.lstrip('/')}, each whole, in the order of the "
            "completion record's 'parts'"
        )


def mapped_rows(vmap: Any) -> tuple[int, int, int, int, bool]:
    """``(first, last, source first, source last, whole source)``: the rows
    one mapping of ``dset.virtual_sources()`` fills, and those it takes from
    its source (all of them, from 0, when ``whole source``). Read only:
    :func:`_virtual_sources` checks them."""
    (v_lo, *_), (v_hi, *_) = vmap.vspace.get_select_bounds()
    if vmap.src_space.get_select_type() == h5py.h5s.SEL_ALL:
        return int(v_lo), int(v_hi), 0, int(v_hi - v_lo), True
    (s_lo, *_), (s_hi, *_) = vmap.src_space.get_select_bounds()
    return int(v_lo), int(v_hi), int(s_lo), int(s_hi), False


def _virtual_sources(
    f: h5py.File, dset: h5py.Dataset, only: list[str] | None = None, *, same_kind: bool = False,
    files: _SourceFiles | None = None,
) -> tuple[VirtualPart, ...]:
    """The mappings of ``dset``, each checked (see Trusting virtual datasets).
    ``same_kind``: a source may be any number for a number, any string for a
    string (a grown file's metadata: HDF5 converts int64 to float64); else
    its dtype must be the dataset's."""
    where = _where(f, dset.name.lstrip("/"))
    folder = os.path.dirname(os.path.abspath(f.filename))
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
                f"{folder!r}; h5feed only follows relative sources beside the merged file (or linked file)"
            )
        if only is not None and source.replace("\\", "/") not in only:
            raise UntrustedFileError(
                f"{where}: virtual source {source!r} is not one of the parts its completion record lists"
            )
        src_path = os.path.join(folder, source)
        v_lo, v_hi, s_lo, s_hi, whole_source = mapped_rows(vmap)
        n_sel = int(vmap.vspace.get_select_npoints())
        if n_sel != (v_hi - v_lo + 1) * row_elems:
            raise UntrustedFileError(f"{where}: virtual source {source!r} does not map whole rows")
        if not whole_source and int(vmap.src_space.get_select_npoints()) != n_sel:
            raise UntrustedFileError(f"{where}: virtual source {source!r} does not map whole rows")
        column = check_virtual_source(src_path, vmap.dset_name, where=where, files=files)
        kind_ok = (column.dtype.kind == "O") == (dset.dtype.kind == "O") if same_kind else column.dtype == dset.dtype
        if (
            not kind_ok
            or column.row_shape != tuple(dset.shape[1:])
            or s_hi >= column.shape[0]
            or (whole_source and column.shape[0] != s_hi + 1)
        ):
            raise UntrustedFileError(
                f"{where}: virtual source {src_path!r}:/{column.name} has shape {column.shape!r} and dtype "
                f"{column.dtype!r}; the mapping needs rows {s_lo}..{s_hi} of {dset.dtype!r} rows "
                f"{tuple(dset.shape[1:])!r}"
            )
        parts.append(
            VirtualPart(
                path=os.path.abspath(src_path),
                start=int(v_lo),
                stop=int(v_hi) + 1,
                source_start=int(s_lo),
                column=column,
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
    return _stored_as(dset)


def _stored_as(dset: h5py.Dataset) -> ColumnInfo:
    """``dset`` as stored, named by its path in its file."""
    return ColumnInfo(
        name=dset.name.lstrip("/"),
        shape=tuple(int(s) for s in dset.shape),
        dtype=np.dtype(dset.dtype),
        chunks=None if dset.chunks is None else tuple(int(c) for c in dset.chunks),
        compression=compression_of(dset),
        fletcher32=bool(dset.fletcher32),
        offset=_contiguous_offset(dset),
    )


def _get(f: h5py.File, name: str) -> Any:
    """``f.get(name)``; a header that does not parse is a DamagedFileError naming it."""
    with touching(f.filename, f"/{name}"):
        if "/" not in name and name in f:
            check_virtual_layout(f, f, name)  # NOTE [ Virtual dataset mappings ] (h5feed/_heap.py)
        return f.get(name)


def compression_of(dset: h5py.Dataset) -> str | None:
    """A dataset's compression as h5feed names it (``"gzip"``, ``"lzf"``,
    ``"zstd"``, ``"lz4"``, ...), or None."""
    if dset.chunks is None:
        return None
    plist = dset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    return _codecs.compression_name([f[0] for f in filters], {f[0]: tuple(f[2]) for f in filters})


def _require(f: h5py.File, name: str) -> h5py.Dataset:
    obj = _get(f, name)
    if obj is None:
        raise LayoutError(f"{_where(f, name)}: missing dataset {name!r}")
    if not isinstance(obj, h5py.Dataset):
        raise LayoutError(f"{_where(f, name)}: expected a dataset, found a group")
    return obj


def _check_ids(f: h5py.File) -> int:
    """N, from the shape of ``/ids``; the IDs themselves are not read
    (NOTE [ Opening reads metadata only ]), but their storage must hold one
    string descriptor per row (h5feed/_heap.py: ``check_storage``)."""
    dset = _require(f, IDS)
    if dset.ndim != 1 or h5py.check_string_dtype(dset.dtype) is None:
        raise LayoutError(
            f"{_where(f, IDS)}: expected a 1-D dataset of UTF-8 strings. "
            f"Received: shape {dset.shape!r}, dtype {dset.dtype!r}"
        )
    with touching(f.filename, f"/{IDS}"):
        if not dset.is_virtual:  # a grown file's: its parts' are checked with its sources
            check_storage(f, dset)
    return int(dset.shape[0])


def _check_rows(f: h5py.File, name: str, n_rows: int) -> ColumnInfo:
    dset = _require(f, name)
    with touching(f.filename, f"/{name}"):
        info = _column_info(f, dset)
    if not info.shape or info.shape[0] != n_rows:
        raise LayoutError(
            f"{_where(f, name)}: first dimension must match {IDS!r} ({n_rows} rows). "
            f"Received: shape {info.shape!r}"
        )
    return info


def _check_classes(f: h5py.File, columns: Mapping[str, ColumnInfo]) -> tuple[int | None, tuple[str, ...] | None]:
    n_classes = None
    raw = _root_attr(f, ATTR_N_CLASSES)
    if raw is not None:
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
    class_names = None
    raw_names = _root_attr(f, ATTR_CLASS_NAMES)
    if raw_names is not None:
        with touching(f.filename, f"/ (attribute {ATTR_CLASS_NAMES!r})"):  # names that are not UTF-8
            class_names = tuple(
                n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in np.atleast_1d(raw_names).tolist()
            )
        if n_classes is not None and len(class_names) != n_classes:
            raise LayoutError(
                f"{f.filename}: {ATTR_CLASS_NAMES!r} has {len(class_names)} names "
                f"for {n_classes} classes"
            )
    return n_classes, class_names


def _check_split(f: h5py.File, name: str, dset: Any) -> int:
    """The split's size, from its metadata; its rows are checked where they
    are read (:func:`read_split`; NOTE [ Opening reads metadata only ])."""
    where = _where(f, f"{SPLITS}/{name}")
    if not isinstance(dset, h5py.Dataset):
        raise LayoutError(f"{where}: expected a dataset of row numbers, found a group")
    if dset.ndim != 1 or dset.dtype.kind not in "iu":
        raise LayoutError(
            f"{where}: expected 1-D integer row numbers. "
            f"Received: shape {dset.shape!r}, dtype {dset.dtype!r}"
        )
    return int(dset.shape[0])


def check_split_rows(where: str, rows: np.ndarray, n_rows: int, first: int = 0) -> None:
    """Refuse split rows outside ``[0, n_rows)`` or not strictly increasing.

    ``rows`` may be one block of a split whose position ``first`` it starts
    at (the caller checks the step between blocks).

    Raises:
        LayoutError: naming ``where``, the row and its position.
    """
    if not rows.size:
        return
    if rows.min() < 0 or rows.max() >= n_rows:
        bad = rows[(rows < 0) | (rows >= n_rows)][0]
        raise LayoutError(f"{where}: row {int(bad)!r} is outside [0, {n_rows})")
    steps = np.diff(rows)
    if steps.size and steps.min() <= 0:
        at = int(np.flatnonzero(steps <= 0)[0])
        raise LayoutError(
            f"{where}: rows must be strictly increasing; "
            f"row {int(rows[at + 1])!r} follows {int(rows[at])!r} at position {first + at + 1}"
        )


def check_labels(where: str, labels: np.ndarray, n_classes: int, rows: Any = None) -> None:
    """Refuse class indices outside ``[0, n_classes)``.

    Args:
        where: the file and dataset, for the message.
        labels: the labels read.
        n_classes: the file's class count.
        rows: the file row of each label (an array), or the row of the first
            (an int; the labels are then consecutive rows); None: from row 0.

    Raises:
        LayoutError: naming ``where``, the first bad value and its row.
    """
    if not labels.size:
        return
    # One comparison finds negatives too: they wrap to huge unsigned values.
    unsigned = labels.view(np.dtype(f"u{labels.dtype.itemsize}")) if labels.dtype.kind == "i" else labels
    if int(unsigned.max()) < n_classes:
        return
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    at = int(bad[0])
    if rows is None or isinstance(rows, (int, np.integer)):
        row = at + int(rows or 0)
    else:
        row = int(np.asarray(rows)[at])
    raise LayoutError(
        f"{where}: class index {labels[at].item()!r} at row {row} is outside [0, {n_classes}) "
        f"({bad.size} of these {labels.size} labels are out of range)"
    )


def _check_untrusted(f: h5py.File, *, allow_virtual: bool, grown: bool = False) -> None:
    """Check the storage of every dataset h5feed reads, before reading any.
    Metadata is stored in the file itself, but for a grown file's, which may
    be virtual over its parts' (NOTE [ Grown files ] in ``grow.py``)."""
    _check_links(f, f)
    ids = _require(f, IDS)
    with touching(f.filename, f"/{IDS}"):
        _check_storage(f, ids, allow_virtual=allow_virtual)
        n = ids.shape[0] if ids.shape else 0
    for name, obj in _members(f, f):
        with touching(f.filename, f"/{name}"):
            if name == IDS or not isinstance(obj, h5py.Dataset):
                continue
            if name in (X, Y) or (obj.shape and obj.shape[0] == n):
                _check_storage(f, obj, allow_virtual=allow_virtual)
    for group_name, virtual_ok in (
        (SPLITS, allow_virtual), (IDS_INDEX, allow_virtual), (META, allow_virtual and grown), (PART_IDS, False)
    ):
        group = _get(f, group_name)
        if isinstance(group, h5py.Group):
            _check_links(f, group)
            for name, obj in _members(f, group):
                if isinstance(obj, h5py.Dataset):
                    with touching(f.filename, f"/{group_name}/{name}"):
                        _check_storage(f, obj, allow_virtual=virtual_ok)


def validate(f: h5py.File, *, allow_virtual: bool = False) -> Layout:
    """Check that an open file follows format version 1; describe it.

    Reads metadata only: its cost does not grow with the number of rows
    (NOTE [ Opening reads metadata only ]). Every check of storage (links,
    external storage, virtual datasets, filters, sizes) runs before anything
    else, so a hostile file costs nothing but its metadata.

    Args:
        f: an h5py file open for reading.
        allow_virtual: accept per-row datasets that are HDF5 virtual
            datasets (``h5feed merge`` makes them), provided every source
            passes the trust checks (``docs/design/merged-files.md``).

    Returns:
        The file's :class:`Layout`.

    Raises:
        UnsupportedFormatVersionError: no or an unknown ``h5feed_format``.
        IncompleteFileError: no valid completion record.
        LayoutError: a dataset missing, or of the wrong shape or dtype.
        UntrustedFileError: external links or storage, virtual datasets
            (unless allowed, and then any source outside the file's folder,
            missing, or not covering every row),
            unknown filters, shapes beyond the caps, data declared but not
            stored, compression beyond any real data's.
        DamagedFileError: HDF5 cannot read the file's structure (the
            message names the object; NOTE [ Damaged files ]).
    """
    # Each step names the object it touches; this names the file for the rest.
    with touching(f.filename, "/"):
        return _validate(f, allow_virtual=allow_virtual)


def _validate(f: h5py.File, *, allow_virtual: bool) -> Layout:
    _check_format(f)
    # An unfinished file is refused before anything else is read from it.
    grown = _grown_parts(f, read_record(f, None))
    # A grown file's virtual datasets are trusted without the flag when every
    # part lies in its own parts folder (and only those parts may be sources).
    trusted = bool(allow_virtual) or (grown is not None and grown[1])
    _check_untrusted(f, allow_virtual=trusted, grown=grown is not None)
    n_rows = _check_ids(f)
    completion = read_record(f, n_rows)
    columns: dict[str, ColumnInfo] = {X: _check_rows(f, X, n_rows)}
    for name, obj in _members(f, f):
        if name in (IDS, X, SPLITS) or not isinstance(obj, h5py.Dataset):
            continue
        if name == Y:
            columns[Y] = _check_rows(f, Y, n_rows)
        elif obj.shape and obj.shape[0] == n_rows:
            # Further per-row datasets are optional extras; others are
            # metadata that h5feed leaves alone.
            if obj.dtype.kind in "biuf":
                columns[name] = _column_info(f, obj)
    with _SourceFiles() as files:  # each part opened once, however many datasets map it
        if grown is not None:  # first: a replaced part is named as such
            _check_part_records(f, completion, grown[0], files)
        if trusted:
            columns = _with_virtual_sources(f, columns, None if grown is None else grown[0], files,
                                            None if grown is None else grown_split_files(completion))
    n_classes, class_names = _check_classes(f, columns)
    splits: dict[str, int] = {}
    group = f.get(SPLITS)
    if group is not None:
        if not isinstance(group, h5py.Group):
            raise LayoutError(f"{_where(f, SPLITS)}: expected a group of splits, found a dataset")
        for name in group:
            splits[name] = _check_split(f, name, group[name])
    metadata = _check_metadata(f, n_rows)
    layout = Layout(
        path=os.fspath(f.filename),
        n_rows=n_rows,
        columns=MappingProxyType(columns),
        splits=MappingProxyType(splits),
        n_classes=n_classes,
        class_names=class_names,
        completion=MappingProxyType(completion),
        metadata=metadata,
    )
    return layout


# --------------------------------------------------------------------------
# Metadata columns: meta/<name>, one value per row, in row order.


def metadata_dtype(values: np.ndarray) -> Any:
    """How a metadata column of ``values`` is stored: int64 for integers
    (and bools), float64 for other numbers, UTF-8 strings for text.

    Raises:
        TypeError: values of another kind (objects that are not all str,
            complex numbers, ...).

    Example:
        >>> metadata_dtype(np.array([1, 2])), metadata_dtype(np.array([0.5]))
        (dtype('int64'), dtype('float64'))
    """
    kind = values.dtype.kind
    if kind in "biu":
        return np.dtype(np.int64)
    if kind == "f":
        return np.dtype(np.float64)
    if kind == "U" or (kind == "O" and all(isinstance(v, str) for v in values.tolist())):
        return h5py.string_dtype("utf-8")
    raise TypeError(f"metadata values must be integers, floats or str. Received: dtype {values.dtype}")


def check_meta_name(name: Any, where: str) -> str:
    """A metadata column name: non-empty text without ``/`` or NUL, not ``id``.

    Raises:
        ValueError: otherwise (the error names ``where``).
    """
    if not isinstance(name, str) or not name or "/" in name or "\x00" in name or name == "id" or name.startswith("."):
        raise ValueError(
            f"{where}: metadata column names must be non-empty text without '/', not 'id' "
            f"and not starting with '.'. Received: {name!r}"
        )
    return name


def meta_path(name: str) -> str:
    """The HDF5 path of metadata column ``name`` (``meta/<name>``)."""
    return f"{META}/{name}"


def _check_metadata(f: h5py.File, n_rows: int) -> tuple[str, ...]:
    group = _get(f, META)
    if group is None:
        return ()
    if not isinstance(group, h5py.Group):
        raise LayoutError(f"{_where(f, META)}: expected a group of metadata columns, found a dataset")
    names = []
    for name, obj in _members(f, group):
        names.append(name)
        where = _where(f, meta_path(name))
        if not isinstance(obj, h5py.Dataset):
            raise LayoutError(f"{where}: expected a metadata column (a dataset), found a group")
        with touching(f.filename, f"/{meta_path(name)}"):
            is_text = h5py.check_string_dtype(obj.dtype) is not None
        if obj.ndim != 1 or obj.shape[0] != n_rows or not (is_text or obj.dtype.kind in "biuf"):
            raise LayoutError(
                f"{where}: expected a metadata column of {n_rows} numbers or strings (one per row). "
                f"Received: shape {obj.shape!r}, dtype {obj.dtype!r}"
            )
    return tuple(sorted(names))


def write_attributes(f: h5py.File, *, n_classes: int | None, class_names: Sequence[str] | None) -> None:
    """Set the root attributes of a file being written, all but the
    completion record (which goes last: :func:`h5feed._record.write_record`)."""
    f.attrs[ATTR_FORMAT] = np.int64(FORMAT_VERSION)
    if n_classes is not None:
        f.attrs[ATTR_N_CLASSES] = np.int64(n_classes)
    if class_names is not None:
        f.attrs.create(ATTR_CLASS_NAMES, list(class_names), dtype=h5py.string_dtype("utf-8"))


def open_and_validate(path: str | os.PathLike[str], *, allow_virtual: bool = False) -> Layout:
    """Open ``path``, validate it and close it again; see :func:`validate`."""
    with open_h5(path) as f:
        return validate(f, allow_virtual=allow_virtual)


def split_dataset(f: h5py.File, name: str) -> h5py.Dataset:
    """The dataset of split ``name``, or :class:`UnknownSplitError`."""
    with touching(f.filename, f"/{SPLITS}/{name}"):
        group = f.get(SPLITS)
        if not isinstance(group, h5py.Group) or name not in group:
            have = sorted(group) if isinstance(group, h5py.Group) else []
            raise UnknownSplitError(
                f"{f.filename}: no split {name!r}; the file has {have!r}"
            )
        return group[name]


def read_split(f: h5py.File, name: str) -> np.ndarray:
    """The rows of split ``name`` as int64, checked (:func:`check_split_rows`).

    Raises:
        UnknownSplitError: no such split.
        LayoutError: a row out of range, or rows not strictly increasing.
        ReadError: a damaged chunk of the split.
    """
    dset = split_dataset(f, name)
    rows = np.asarray(read_whole(f.filename, dset), dtype=np.int64)
    n_rows = int(f[IDS].shape[0])
    check_split_rows(_where(f, f"{SPLITS}/{name}"), rows, n_rows)
    return rows


def read_ids(f: h5py.File, rows: Any) -> list[str]:
    """The sample IDs of ``rows`` (int row numbers), in the order asked.

    The heap that holds them is checked first (NOTE [ Global heap ] in
    ``h5feed/_heap.py``); an ID that is not UTF-8 is a ``ReadError`` naming
    its row.
    """
    dset = f[IDS]
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    check_dataset(f, dset, rows)  # NOTE [ Global heap ] (h5feed/_heap.py)
    order = np.argsort(rows, kind="stable")
    uniq, inverse = np.unique(rows[order], return_inverse=True)
    values = decoded(dset[uniq].tolist(), os.fspath(f.filename), dset.name, uniq)
    out = [None] * rows.size
    for pos, k in zip(order.tolist(), inverse.tolist()):
        out[pos] = values[k]
    return out  # type: ignore[return-value]
