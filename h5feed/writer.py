"""Writing h5feed files: checked appends, a temporary file, an atomic rename.

:class:`DatasetWriter` streams samples into a temporary file beside the
target and gives it the target's name only when the ``with`` block ends
without an error; :func:`write_arrays` is the one-call form for arrays
already in memory (or memory-mapped).

Atomic output: the target name only ever holds a finished file. On any
exception, KeyboardInterrupt included, the temporary file is removed and the
target is left as it was; the temporary file of a writer killed outright is
removed by the next writer to the same target (:mod:`h5feed._publish`).

Isolated writing: after a failed write (a full disk), HDF5 can leave its
library state damaged so that the process crashes later, even after a clean
error. The ``h5feed`` command therefore writes in a child process
(:func:`run_isolated`), which leaves with ``os._exit``; in-process writing
stays the default of the Python API.

See the design note ``docs/design/atomic-writing.md``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import h5py
import numpy as np

from . import _codecs, _ids, _meta, _record
from . import layout as L
from ._args import check_bool, check_int
from ._damage import first_line
from ._publish import (
    check_output,
    create_h5,
    discard,
    publish,
    remove_stale_temporaries,
    sigint_deferred,
    temporary_path,
)
from .errors import (
    DiskFullError,
    InvalidSampleIDError,
    SampleError,
    UnknownIDError,
    WriterError,
    WriterInputError,
)

__all__ = ["DatasetWriter", "RowBlock", "run_isolated", "write_arrays"]

logger = logging.getLogger("h5feed")

# Chunked datasets get chunks of about this many bytes (256 KiB - 1 MiB):
# large enough that HDF5's per-chunk cost is small, small enough that a
# random row does not drag in much else.
_TARGET_CHUNK_BYTES = 512 * 1024
# Rows are buffered and written in blocks of about this many bytes.
_BLOCK_BYTES = 4 * 1024 * 1024
_COMPRESSIONS = {None: None, "none": None, **{name: name for name in _codecs.COMPRESSIONS}}
# Blocks at least this big are hashed in a helper thread beside the HDF5
# write; smaller ones are not worth a thread hand-off.
_THREAD_HASH_BYTES = 256 * 1024
# After this many bytes written since the last sync, a helper thread syncs
# the temporary file (see _start_writeback): little enough that the disk
# keeps pace with the writing and the final sync has little left, enough
# that the syncs (each a journal commit) stay few.
_WRITEBACK_BYTES = 16 * 1024 * 1024


def default_chunk_rows(row_nbytes: int) -> int:
    """Rows per chunk so that a chunk holds about 512 KiB (at least one row).

    Example:
        >>> default_chunk_rows(784), default_chunk_rows(131072), default_chunk_rows(8 << 20)
        (668, 4, 1)
    """
    return max(1, _TARGET_CHUNK_BYTES // max(1, row_nbytes))


def _normalize_shape(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    try:
        shape = tuple(value)
    except TypeError:
        raise TypeError(f"{what} must be a tuple of ints. Received: {value!r}") from None
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 0:
            raise TypeError(f"{what} must be a tuple of non-negative ints. Received: {value!r}")
    return tuple(int(d) for d in shape)


def _normalize_dtype(value: Any, what: str) -> np.dtype:
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"{what} must be a numpy dtype. Received: {value!r}") from None
    if dtype.kind not in "biuf":
        raise TypeError(f"{what} must be a numeric (bool, int, uint or float) dtype. Received: {dtype!r}")
    return dtype


def _is_disk_full(exc: BaseException) -> bool:
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc)
    return any(
        s in text
        for s in ("No space left", "File too large", "Disk quota", "errno = 28", "errno = 27", "errno = 122")
    )


class _Column:
    """One per-row dataset being written: buffer, HDF5 dataset, running hash."""

    def __init__(self, name: str, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.name = name
        self.row_shape = row_shape
        self.dtype = dtype
        self.row_nbytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
        self.block_rows = max(1, _BLOCK_BYTES // max(1, self.row_nbytes))
        self.buffer = np.empty((self.block_rows, *row_shape), dtype=dtype)
        self.fill = 0
        self.hasher = hashlib.sha256()
        self.dset: h5py.Dataset | None = None
        # Set when whole chunks are compressed here (compress_threads > 1).
        self.pipeline: _codecs.Pipeline | None = None
        # Big blocks take turns between two buffers, so that one fills while
        # the other is still being hashed.
        self._buffers: list[np.ndarray | None] = [self.buffer, None]
        self._hashing: list[Future[None] | None] = [None, None]
        self._turn = 0

    def align(self, chunk_rows: int) -> None:
        """Blocks of whole chunks (before anything is appended), so that each
        flush compresses whole chunks only."""
        rows = max(chunk_rows, self.block_rows // chunk_rows * chunk_rows)
        if rows != self.block_rows:
            self.block_rows = rows
            self.buffer = np.empty((rows, *self.row_shape), dtype=self.dtype)
            self._buffers = [self.buffer, None]

    def hashed_in_background(self, hashing: Future[None]) -> None:
        """The current buffer is being hashed: switch to the other one."""
        self._hashing[self._turn] = hashing
        self._turn ^= 1
        other = self._buffers[self._turn]
        if other is None:
            other = self._buffers[self._turn] = np.empty_like(self.buffer)
        pending = self._hashing[self._turn]
        if pending is not None:  # its last block must be hashed before it is refilled
            pending.result()
            self._hashing[self._turn] = None
        self.buffer = other

    def wait_hashed(self) -> None:
        """Wait for (and raise any error of) the hashing still running."""
        for i, pending in enumerate(self._hashing):
            if pending is not None:
                self._hashing[i] = None
                pending.result()

    def check(self, value: Any, sample_id: str, path: str) -> np.ndarray:
        arr = np.asarray(value)
        if arr.shape != self.row_shape:
            raise SampleError(
                f"{path}: sample {sample_id!r}: {self.name!r} expected shape {self.row_shape!r}. "
                f"Received: {arr.shape!r}"
            )
        _check_cast(arr, value, self.dtype, f"{path}: sample {sample_id!r}: {self.name!r}")
        return arr


@runtime_checkable
class RowBlock(Protocol):
    """Rows that read themselves into the writer's buffer.

    :meth:`DatasetWriter.extend` takes one in place of an array: the rows go
    from their source straight into the buffer that is written and hashed,
    with no array of their own in between, which would be one more pass
    over every byte on the thread that also writes. `h5feed convert h5`
    hands the writer blocks of its source this way. Any object with these
    three members is one; the writer checks ``shape`` and ``dtype`` as it
    checks an array's, before it reads anything. ``read_into`` may cast,
    but only safely: the writer takes a block whose ``dtype`` casts to the
    column's without loss. A block that raises while reading gives up the
    writer's file, as a failed write does.
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    def read_into(self, out: np.ndarray, start: int, stop: int) -> None:
        """Fill ``out`` with rows ``start..stop-1`` of this block."""


def _check_cast(arr: np.ndarray | RowBlock, original: Any, dtype: np.dtype, where: str) -> None:
    if np.can_cast(arr.dtype, dtype, "safe"):
        return
    # Plain Python numbers and lists carry no dtype of their own; accept them
    # when the values survive the cast unchanged.
    if isinstance(arr, np.ndarray) and not isinstance(original, (np.ndarray, np.generic)) and arr.dtype.kind in "biuf":
        with np.errstate(all="ignore"):
            cast = arr.astype(dtype)
        if np.array_equal(cast, arr):
            return
    raise SampleError(
        f"{where} expected dtype {dtype} (or one that casts to it safely). "
        f"Received: {arr.dtype}"
    )


class DatasetWriter:
    """Write one h5feed file, sample by sample or block by block.

    Virtual columns: a column named in ``virtual`` keeps its rows in other
    HDF5 files (``h5feed merge`` and ``h5feed convert h5 --link`` write files
    this way). Every source must lie in the target's folder (or below it),
    since the file names it relative to that folder, and pass the checks
    that readers apply to virtual sources (``docs/design/merged-files.md``),
    with the column's dtype and row shape. The column's rows still go
    through :meth:`append` or :meth:`extend`, in order: they are checked and
    hashed into the completion record (so ``h5feed verify`` notices a source
    that changed later) but not written. The record lists the source files
    (``"parts"``); the file is validated with ``allow_virtual=True`` before
    it takes its name, and reading it needs ``allow_virtual=True``.

    Args:
        path: the file to create.
        sample_shape: the shape of one sample (``x`` row).
        dtype: the dtype of ``x``; appended samples must cast to it safely.
        target_shape: the shape of one target; ``()`` for class indices.
        target_dtype: the dtype of ``y``; None for unlabelled data (no ``y``).
        n_classes: the number of classes when ``y`` holds class indices;
            labels outside ``[0, n_classes)`` are refused.
        class_names: optional names of the classes (sets ``n_classes``).
        expected_rows: the number of rows, when known. With no compression or
            checksum, ``x`` is then stored contiguous, the fastest layout for
            random reads, and exactly this many rows must be appended.
        compression: None, ``"gzip"``, ``"lzf"``, ``"zstd"`` or ``"lz4"``;
            implies chunked storage. ``"zstd"`` and ``"lz4"`` (LZ4 inside
            Blosc) are hdf5plugin's filters (``pip install "h5feed[codecs]"``):
            several times faster to read than gzip, and readable by any HDF5
            tool that loads hdf5plugin. Bytes are shuffled before compressing
            (see ``docs/performance.md`` for the trade-offs).
        overwrite: replace an existing file at ``path`` (only on success).
        chunk_rows: rows per chunk for chunked storage (default: about 512 KiB).
        checksum: store HDF5 Fletcher32 checksums so corruption is detected.
        extras: further per-row datasets, ``{name: (row_shape, dtype)}``,
            filled through keyword arguments of :meth:`append`/:meth:`extend`.
        virtual: columns stored as HDF5 virtual datasets over other files,
            ``{name: [(source file, dataset path), ...]}``: each source
            dataset, whole, holds the next rows of the column (see
            "Virtual columns" above). Needs ``expected_rows``.
        compress_threads: compress chunks in this many threads (compressed
            or checksummed storage): whole chunks are compressed here, side
            by side, and written as they are (``write_direct_chunk``); 1
            lets HDF5 compress them as it writes.

    Raises:
        OutputExistsError: the target exists (without ``overwrite``).
        WriterInputError: the target is a folder, or its folder is missing
            or not writable; a virtual source outside the target's folder,
            of another dtype or row shape, or whose rows do not add up to
            ``expected_rows``.
        UntrustedFileError: a virtual source that readers would refuse
            (missing, itself virtual, stored in a way h5feed does not read).
        WriterError: the temporary file could not be created.
        TypeError: an option of the wrong type.
        ImportError: ``compression="zstd"`` or ``"lz4"`` without hdf5plugin.

    Example:
        >>> import numpy as np, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "d.h5")
        >>> with DatasetWriter(out, sample_shape=(2,), dtype="float32", n_classes=3) as w:
        ...     w.append("a", np.zeros(2, "float32"), 1)
        ...     w.append("b", np.ones(2, "float32"), 2)
        ...     w.add_split("train", ["a", "b"])
        >>> os.path.exists(out)
        True
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sample_shape: Any,
        dtype: Any,
        target_shape: Any = (),
        target_dtype: Any = "int64",
        n_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        expected_rows: int | None = None,
        compression: str | None = None,
        overwrite: bool = False,
        chunk_rows: int | None = None,
        checksum: bool = False,
        extras: Mapping[str, tuple[Any, Any]] | None = None,
        virtual: Mapping[str, Sequence[tuple[str | os.PathLike[str], str]]] | None = None,
        compress_threads: int = 1,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.sample_shape = _normalize_shape(sample_shape, "sample_shape")
        self.dtype = _normalize_dtype(dtype, "dtype")
        self.target_shape = _normalize_shape(target_shape, "target_shape")
        self.target_dtype = None if target_dtype is None else _normalize_dtype(target_dtype, "target_dtype")
        if compression not in _COMPRESSIONS:
            raise ValueError(
                f"compression must be None, 'none', 'gzip', 'lzf', 'zstd' or 'lz4'. Received: {compression!r}"
            )
        self.compression = _COMPRESSIONS[compression]
        if self.compression is not None:
            _codecs.dataset_options(self.compression, 1)  # ImportError now, before any file
        self.compress_threads = check_int(compress_threads, "compress_threads", minimum=1)
        self.overwrite = check_bool(overwrite, "overwrite")
        self.checksum = check_bool(checksum, "checksum")
        self.expected_rows = check_int(expected_rows, "expected_rows", minimum=0, none_ok=True)
        self.chunk_rows = check_int(chunk_rows, "chunk_rows", minimum=1, none_ok=True)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        if class_names is not None and n_classes is None:
            n_classes = len(self.class_names)  # type: ignore[arg-type]
        self.n_classes = check_int(n_classes, "n_classes", minimum=1, none_ok=True)
        if self.class_names is not None and len(self.class_names) != self.n_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names for n_classes={self.n_classes}"
            )
        if self.n_classes is not None:
            if self.target_dtype is None or self.target_dtype.kind not in "iu" or self.target_shape != ():
                raise ValueError(
                    "n_classes needs integer class indices: target_shape=() and an integer "
                    f"target_dtype. Received: target_shape={self.target_shape!r}, "
                    f"target_dtype={self.target_dtype!r}"
                )
        check_output(self.path, overwrite=self.overwrite)

        self._columns: dict[str, _Column] = {L.X: _Column(L.X, self.sample_shape, self.dtype)}
        if self.target_dtype is not None:
            self._columns[L.Y] = _Column(L.Y, self.target_shape, self.target_dtype)
        for name, spec in (extras or {}).items():
            if name in (L.IDS, L.X, L.Y, L.SPLITS) or not name or "/" in name:
                raise ValueError(f"extras: {name!r} is not allowed as a dataset name")
            shape, dt = spec
            self._columns[name] = _Column(name, _normalize_shape(shape, f"extras[{name!r}] shape"), _normalize_dtype(dt, f"extras[{name!r}] dtype"))
        self._contiguous = self.expected_rows is not None and self.compression is None and not self.checksum
        self._virtual = self._check_virtual(virtual or {})

        # The IDs, as UTF-8 bytes (NOTE [ IDs at scale ] in _ids.py): those
        # written, a block each, and those waiting for the next flush (runs
        # of appended str, or encoded extends).
        self._ids_written: list[_ids.Encoded] = []
        self._ids_pending: list[_ids.Encoded | list[str]] = []
        self._n_ids = 0
        self._ids_hasher = hashlib.sha256()
        self._rows_written = 0
        self._splits: dict[str, Any] = {}
        self._metadata: _meta.MetaTable | None = None
        self._metadata_rows: dict[str, np.ndarray] | None = None
        self._file: h5py.File | None = None
        self._tmp: str | None = None
        self._done = False
        self._hash_thread: ThreadPoolExecutor | None = None
        self._compress_pool: ThreadPoolExecutor | None = None
        self._sync_thread: ThreadPoolExecutor | None = None
        self._writeback: Future[None] | None = None
        self._unsynced = 0
        self._open()

    # -- set-up ------------------------------------------------------------

    def _open(self) -> None:
        self._tmp = temporary_path(self.path)
        try:
            self._file = create_h5(self._tmp, libver=("earliest", "latest"))
            self._create_datasets()
        except BaseException as exc:
            error = self._os_error(exc, "creating the file") if isinstance(exc, OSError) else None
            self._cleanup()
            if error is not None:
                raise error from exc
            raise

    def _create_datasets(self) -> None:
        f = self._file
        assert f is not None  # noqa: S101 - internal invariant, set by _open
        # The attributes go first and the completion record last, so that a
        # killed writer's leftover reads as "an h5feed file, incomplete".
        L.write_attributes(f, n_classes=self.n_classes, class_names=self.class_names)
        n = self.expected_rows
        for col in self._columns.values():
            if col.name in self._virtual:
                col.dset = self._create_virtual(f, col, self._virtual[col.name])
                continue
            kwargs: dict[str, Any] = {}
            if self._contiguous:
                shape = (n, *col.row_shape)
            else:
                shape = (0, *col.row_shape)
                rows = self.chunk_rows if (self.chunk_rows and col.name == L.X) else default_chunk_rows(col.row_nbytes)
                kwargs.update(maxshape=(None, *col.row_shape), chunks=(rows, *col.row_shape))
                if self.compression is not None:
                    kwargs.update(_codecs.dataset_options(self.compression, col.dtype.itemsize))
                if self.checksum:
                    kwargs["fletcher32"] = True
            col.dset = f.create_dataset(col.name, shape=shape, dtype=col.dtype, **kwargs)
            if kwargs.get("chunks") and self.compress_threads > 1 and (self.compression or self.checksum):
                pipeline = _codecs.pipeline_of(col.dset)
                if pipeline.encodable:
                    col.pipeline = pipeline
                    col.align(pipeline.chunk_shape[0])
        str_dt = h5py.string_dtype("utf-8")
        if self._contiguous:
            self._ids_dset = f.create_dataset(L.IDS, shape=(n,), dtype=str_dt)
        else:
            self._ids_dset = f.create_dataset(L.IDS, shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(4096,))

    def _check_virtual(
        self, virtual: Mapping[str, Sequence[tuple[str | os.PathLike[str], str]]]
    ) -> dict[str, list[tuple[str, str, int]]]:
        """``{column: [(source name relative to the target's folder, dataset, rows)]}``,
        each source checked as readers will check it (see Virtual columns)."""
        if not virtual:
            return {}
        if self.expected_rows is None:
            raise ValueError("virtual columns need expected_rows (the rows of their sources)")
        folder = os.path.dirname(self.path)
        checked: dict[str, list[tuple[str, str, int]]] = {}
        for name, sources in virtual.items():
            col = self._columns.get(name)
            if col is None:
                raise ValueError(f"virtual: {name!r} is not a column of this writer; expected one of {list(self._columns)!r}")
            if isinstance(sources, (str, os.PathLike)) or isinstance(sources, tuple) and len(sources) == 2 and isinstance(sources[1], str):
                raise TypeError(f"virtual[{name!r}] must be a list of (file, dataset) pairs. Received: {sources!r}")
            checked[name] = []
            for source, dataset in sources:
                path = os.path.abspath(os.fspath(source))
                rel = L.source_name(path, folder)
                if rel is None:
                    raise WriterInputError(
                        f"{self.path}: a virtual dataset names its sources relative to its own folder "
                        f"{folder!r}, but the source {path!r} lies outside it"
                    )
                if path == self.path:
                    raise WriterInputError(f"{self.path}: a virtual source cannot be the file being written")
                info = L.check_virtual_source(path, dataset)
                if info.row_shape != col.row_shape or info.dtype != col.dtype:
                    raise WriterInputError(
                        f"{path}:/{info.name}: rows of shape {info.row_shape!r} and dtype {info.dtype}; "
                        f"the virtual column {name!r} expected {col.row_shape!r} and {col.dtype}"
                    )
                checked[name].append((rel, dataset, info.shape[0]))
            total = sum(rows for _, _, rows in checked[name])
            if total != self.expected_rows:
                raise WriterInputError(
                    f"{self.path}: the sources of the virtual column {name!r} hold {total} rows; "
                    f"expected_rows={self.expected_rows}"
                )
        return checked

    def _create_virtual(self, f: h5py.File, col: _Column, sources: list[tuple[str, str, int]]) -> h5py.Dataset:
        vlayout = h5py.VirtualLayout(shape=(self.expected_rows, *col.row_shape), dtype=col.dtype)
        at = 0
        for rel, dataset, rows in sources:
            if rows:  # an empty source maps nothing
                vlayout[at : at + rows] = h5py.VirtualSource(rel, dataset, shape=(rows, *col.row_shape))
                at += rows
        return f.create_virtual_dataset(col.name, vlayout)

    # -- appending ---------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows appended so far."""
        return self._n_ids

    def _check_id(self, sample_id: Any) -> str:
        # A repeat of an earlier row is found when the writer closes, where
        # every ID is sorted once (NOTE [ IDs at scale ] in _ids.py).
        if not isinstance(sample_id, str):
            raise InvalidSampleIDError(
                f"{self.path}: sample IDs must be str. Received: {sample_id!r} ({type(sample_id).__name__})"
            )
        if not sample_id or "\x00" in sample_id:
            raise InvalidSampleIDError(f"{self.path}: invalid sample ID {sample_id!r}: empty or holds NUL")
        if self.expected_rows is not None and self._n_ids >= self.expected_rows:
            raise SampleError(
                f"{self.path}: sample {sample_id!r} would be row {self._n_ids}, "
                f"but expected_rows={self.expected_rows}"
            )
        return sample_id

    def _check_labels(self, labels: np.ndarray, ids: Sequence[str]) -> None:
        """Refuse labels that are not integral or outside [0, n_classes)."""
        if self.n_classes is None:
            return
        flat = np.atleast_1d(labels)
        if flat.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                bad = np.flatnonzero(~(flat == np.floor(flat)))
            what = "an integer class index"
        elif flat.dtype.kind not in "iu":
            bad = np.arange(flat.size)
            what = "an integer class index"
        else:
            bad = np.array([], dtype=np.int64)
        if not bad.size:
            with np.errstate(invalid="ignore"):
                bad = np.flatnonzero((flat < 0) | (flat >= self.n_classes))
            what = "a class index"
        if bad.size:
            i = int(bad[0])
            value = flat[i].item() if hasattr(flat[i], "item") else flat[i]
            problem = (
                f"class index {value!r} is outside [0, {self.n_classes})"
                if what == "a class index"
                else f"expected an integer class index in [0, {self.n_classes}). Received: {value!r}"
            )
            more = f" ({bad.size} labels are bad)" if bad.size > 1 else ""
            raise SampleError(f"{self.path}: sample {ids[i]!r}: {problem}{more}")

    def append(self, sample_id: str, x: Any, y: Any = None, **extras: Any) -> None:
        """Append one sample.

        Args:
            sample_id: its unique ID.
            x: the sample, of ``sample_shape``.
            y: its target (class index or array of ``target_shape``); must be
                None when the writer has no targets.
            **extras: one value per extra dataset.

        Raises:
            SampleError: wrong shape, a dtype that does not cast safely, a
                duplicate ID, a label out of range. The file is unchanged.
        """
        self._require_open()
        sid = self._check_id(sample_id)
        values = {L.X: self._columns[L.X].check(x, sid, self.path)}
        if L.Y in self._columns:
            if y is None:
                raise SampleError(f"{self.path}: sample {sid!r}: missing its label (y)")
            ycol = self._columns[L.Y]
            if self.n_classes is not None:
                yarr = np.asarray(y)
                if yarr.shape != () or isinstance(y, (bool, np.bool_)):
                    raise SampleError(
                        f"{self.path}: sample {sid!r}: expected an integer class index. Received: {y!r}"
                    )
                self._check_labels(yarr, [sid])
                values[L.Y] = yarr.astype(ycol.dtype)
            else:
                values[L.Y] = ycol.check(y, sid, self.path)
        elif y is not None:
            raise SampleError(f"{self.path}: sample {sid!r}: this writer has no targets (target_dtype=None), got y={y!r}")
        values.update(self._check_extras(extras, sid))
        for name, col in self._columns.items():
            col.buffer[col.fill] = values[name]
            col.fill += 1
        pending = self._ids_pending
        if pending and isinstance(pending[-1], list):
            pending[-1].append(sid)
        else:
            pending.append([sid])
        self._n_ids += 1
        if self._columns[L.X].fill == self._columns[L.X].block_rows or any(
            c.fill == c.block_rows for c in self._columns.values()
        ):
            self._flush()

    def _check_extras(self, extras: Mapping[str, Any], sid: str) -> dict[str, np.ndarray]:
        wanted = [n for n in self._columns if n not in (L.X, L.Y)]
        unknown = sorted(set(extras) - set(wanted))
        if unknown:
            raise TypeError(f"unexpected extra dataset(s) {unknown!r}; this writer has {wanted!r}")
        missing = [n for n in wanted if n not in extras]
        if missing:
            raise SampleError(f"{self.path}: sample {sid!r}: missing extra dataset(s) {missing!r}")
        return {n: self._columns[n].check(extras[n], sid, self.path) for n in wanted}

    def extend(self, ids: Sequence[str], xs: Any, ys: Any = None, **extras: Any) -> None:
        """Append many samples at once (faster than :meth:`append` per row).

        Args:
            ids: their unique IDs.
            xs: array-like of shape ``(len(ids), *sample_shape)``, or a
                :class:`RowBlock` of that shape.
            ys: targets of shape ``(len(ids), *target_shape)``, or None.
            **extras: one array per extra dataset.

        Raises:
            SampleError: as :meth:`append`; nothing of this call is written.

            A :class:`RowBlock` that fails to read gives up the whole file,
            as a failed write does: rows of this call may already be in it.
        """
        self._require_open()
        ids = ids if isinstance(ids, list) else list(ids)
        k = len(ids)
        encoded = _ids.encode(ids, self.path)  # every ID a str, not empty, no NUL
        if _ids.any_repeat(encoded):
            seen: set[str] = set()
            for sid in ids:
                if sid in seen:
                    raise SampleError(f"{self.path}: duplicate sample ID {sid!r} within one extend() call")
                seen.add(sid)
        if self.expected_rows is not None and self._n_ids + k > self.expected_rows:
            raise SampleError(
                f"{self.path}: {self._n_ids + k} rows would exceed expected_rows={self.expected_rows} "
                f"(first extra ID {ids[self.expected_rows - self._n_ids]!r})"
            )
        first = ids[0] if ids else None
        arrays = {L.X: self._check_block(L.X, xs, k, first)}
        if L.Y in self._columns:
            if ys is None:
                raise SampleError(f"{self.path}: extend() of {k} samples starting at {first!r}: missing labels (ys)")
            if self.n_classes is not None:
                yarr = np.asarray(ys)
                if yarr.shape != (k,):
                    raise SampleError(
                        f"{self.path}: labels for {k} samples starting at {first!r}: expected shape ({k},). "
                        f"Received: {yarr.shape!r}"
                    )
                if yarr.dtype.kind == "b":
                    raise SampleError(f"{self.path}: labels starting at {first!r}: expected integer class indices, got bool")
                self._check_labels(yarr, ids)
                arrays[L.Y] = yarr
            else:
                arrays[L.Y] = self._check_block(L.Y, ys, k, first)
        elif ys is not None:
            raise SampleError(f"{self.path}: this writer has no targets (target_dtype=None), got ys")
        wanted = [n for n in self._columns if n not in (L.X, L.Y)]
        unknown = sorted(set(extras) - set(wanted))
        if unknown:
            raise TypeError(f"unexpected extra dataset(s) {unknown!r}; this writer has {wanted!r}")
        for name in wanted:
            if name not in extras:
                raise SampleError(f"{self.path}: extend() starting at {first!r}: missing extra dataset {name!r}")
            arrays[name] = self._check_block(name, extras[name], k, first)
        # All checked: copy through the buffers in blocks.
        pos = 0
        while pos < k:
            step = min(k - pos, min(c.block_rows - c.fill for c in self._columns.values()))
            for name, col in self._columns.items():
                rows = arrays[name]
                if isinstance(rows, np.ndarray):
                    col.buffer[col.fill : col.fill + step] = rows[pos : pos + step]
                else:
                    self._read_block(rows, col.buffer[col.fill : col.fill + step], pos)
                col.fill += step
            self._ids_pending.append(_slice(encoded, pos, pos + step))
            self._n_ids += step
            pos += step
            if any(c.fill == c.block_rows for c in self._columns.values()):
                self._flush()

    def _read_block(self, block: RowBlock, out: np.ndarray, pos: int) -> None:
        """Rows ``pos..`` of ``block`` into ``out``. A failure gives up the
        whole file: rows of this call may already be written."""
        try:
            block.read_into(out, pos, pos + len(out))
        except BaseException:
            self._cleanup()
            raise

    def _check_block(self, name: str, values: Any, k: int, first: Any) -> Any:
        col = self._columns[name]
        arr = values if isinstance(values, (np.ndarray, RowBlock)) else np.asarray(values)
        if tuple(arr.shape) != (k, *col.row_shape):
            raise SampleError(
                f"{self.path}: {name!r} for {k} samples starting at {first!r}: expected shape "
                f"{(k, *col.row_shape)!r}. Received: {tuple(arr.shape)!r}"
            )
        _check_cast(arr, values, col.dtype, f"{self.path}: {name!r} for samples starting at {first!r}:")
        return arr

    def add_split(self, name: str, ids_or_rows: Iterable[Any]) -> None:
        """Record a split, by sample IDs or row numbers; resolved on close.

        Args:
            name: the split's name (``"train"``, ``"validation"``, ...).
            ids_or_rows: sample IDs (str) or row numbers (int), any order.

        Raises:
            ValueError: a bad name, or a split given twice.
        """
        self._require_open()
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"split names must be non-empty str without '/'. Received: {name!r}")
        if name in self._splits:
            raise ValueError(f"{self.path}: split {name!r} was already added")
        self._splits[name] = list(ids_or_rows) if not isinstance(ids_or_rows, np.ndarray) else ids_or_rows

    def set_metadata(self, metadata: Any) -> None:
        """Record per-sample metadata, by sample ID; stored on close.

        On close, the table must hold exactly the samples appended; each
        column is stored as ``meta/<column>`` in row order (int64, float64
        or UTF-8 strings), hashed into the completion record.

        Args:
            metadata: a CSV file with an ``id`` column, a mapping
                ``{"id": [...], column: [...]}``, or a table from
                :func:`h5feed._meta.load_table`.

        Raises:
            WriterInputError: a bad table (no ``id`` column, a bad column
                name, repeated IDs, values neither numbers nor text), or
                metadata given twice.
        """
        self._require_open()
        if self._metadata is not None:
            raise WriterInputError(f"{self.path}: metadata was already set")
        self._metadata = _meta.load_table(metadata, error=WriterInputError)

    def _set_metadata_rows(self, columns: Mapping[str, np.ndarray]) -> None:
        """Metadata columns already in row order, as read from h5feed files
        (numbers, or text as UTF-8 ``bytes``): stored as they are, without
        matching IDs, so that joining files' metadata (``h5feed append``)
        costs C loops, not a Python string per row."""
        self._require_open()
        if self._metadata is not None or self._metadata_rows is not None:
            raise WriterInputError(f"{self.path}: metadata was already set")
        self._metadata_rows = dict(columns)

    # -- flushing and finishing --------------------------------------------

    def _require_open(self) -> None:
        if self._done or self._file is None:
            raise WriterInputError(f"{self.path}: the writer is closed")

    def _flush(self) -> None:
        fill = self._columns[L.X].fill
        if fill == 0:
            return
        start = self._rows_written
        stop = start + fill
        try:
            for col in self._columns.values():
                block = col.buffer[:fill]
                assert col.dset is not None  # noqa: S101 - set in _create_datasets
                # Hashing beside writing: one helper thread hashes big blocks
                # in order while HDF5 writes them (hashlib releases the GIL);
                # a buffer is refilled only once its hash is done. See
                # docs/design/atomic-writing.md.
                hashed = None
                if block.nbytes >= _THREAD_HASH_BYTES:
                    if self._hash_thread is None:
                        self._hash_thread = ThreadPoolExecutor(1, thread_name_prefix="h5feed-hash")
                    hashed = self._hash_thread.submit(_record.hash_rows, col.hasher, block)
                else:
                    # The hasher takes blocks in row order: an earlier block
                    # may still be in the helper thread.
                    col.wait_hashed()
                    _record.hash_rows(col.hasher, block)
                if col.name in self._virtual:
                    pass  # hashed only: the rows stay in the sources
                else:
                    if not self._contiguous:
                        col.dset.resize(stop, axis=0)
                    if col.pipeline is not None:
                        self._write_chunks(col, block, start)
                    else:
                        col.dset.write_direct(block, dest_sel=np.s_[start:stop])
                if hashed is not None:
                    col.hashed_in_background(hashed)
                col.fill = 0
            new_ids = _ids.Encoded.concat(
                [p if isinstance(p, _ids.Encoded) else _ids.encode(p, self.path) for p in self._ids_pending]
            )
            self._ids_pending = []
            _record.hash_ids(self._ids_hasher, new_ids.data, new_ids.starts, new_ids.ends)
            if not self._contiguous:
                self._ids_dset.resize((stop,))
            _ids.write_strings(self._ids_dset, start, new_ids)
            self._ids_written.append(new_ids)
            self._unsynced += fill * sum(c.row_nbytes for c in self._columns.values())
            if self._unsynced >= _WRITEBACK_BYTES and (self._writeback is None or self._writeback.done()):
                self._start_writeback()
        except (OSError, RuntimeError) as exc:
            if not isinstance(exc, OSError) and not _is_disk_full(exc):
                raise
            # A failed write leaves the file in an unknown state: give up on
            # it now, so the message's promise holds even without ``with``.
            error = self._os_error(exc, f"writing rows {start}..{stop - 1}")
            self._cleanup()
            raise error from exc
        self._rows_written = stop

    def _write_chunks(self, col: _Column, block: np.ndarray, start: int) -> None:
        """Write rows ``start`` on: the whole chunks among them compressed in
        ``compress_threads`` threads and written as they are; the rows of a
        chunk begun or left unfinished by this block through HDF5."""
        assert col.dset is not None and col.pipeline is not None  # noqa: S101 - set in _create_datasets
        rows = col.pipeline.chunk_shape[0]
        stop = start + len(block)
        first = -(-start // rows) * rows  # the first whole chunk's first row
        end = max(first, stop // rows * rows)  # one past the last whole chunk's rows
        for a, b in ((start, min(first, stop)), (max(end, start), stop)):
            if a < b:
                col.dset.write_direct(block, np.s_[a - start : b - start], np.s_[a:b])
        if first >= end:
            return
        if self._compress_pool is None:
            self._compress_pool = ThreadPoolExecutor(self.compress_threads, thread_name_prefix="h5feed-compress")
        pipeline = col.pipeline
        starts = range(first, end, rows)
        encoded = self._compress_pool.map(lambda row: pipeline.encode(block[row - start : row - start + rows]), starts)
        zeros = (0,) * len(col.row_shape)
        for row, (mask, data) in zip(starts, encoded):
            col.dset.id.write_direct_chunk((row, *zeros), data, filter_mask=mask)

    def _os_error(self, exc: BaseException, doing: str) -> Exception:
        if _is_disk_full(exc):
            size = _size_or_none(self._tmp)
            got = f", {size:,} bytes on disk" if size is not None else ""
            return DiskFullError(
                f"{self.path}: disk full (or the file size limit reached) while {doing}: "
                f"{self._rows_written} of {self.rows} rows had been written{got}. The temporary "
                f"file was removed and {os.path.basename(self.path)!r} was left as it was. "
                f"Free some space (or write elsewhere) and run again. [{first_line(exc)}]"
            )
        return WriterError(f"{self.path}: {doing} failed: {exc}")

    def _resolve_split(self, name: str, items: Any, ids: _ids.Encoded, index: _ids.Sorted) -> np.ndarray:
        n = ids.size
        if isinstance(items, np.ndarray):
            by_row = items.dtype.kind in "iu"
            values = items.reshape(-1) if by_row else items.reshape(-1).tolist()
        else:
            values = items
            by_row = all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values)
        if len(values) == 0:
            rows = np.zeros(0, dtype=np.int64)
        elif by_row:
            rows = np.asarray(values, dtype=np.int64).reshape(-1)
            bad = rows[(rows < 0) | (rows >= n)]
            if bad.size:
                raise WriterInputError(f"{self.path}: split {name!r}: row {int(bad[0])} is outside [0, {n})")
        else:
            wanted = values
            valid = [isinstance(s, str) and bool(s) and "\x00" not in s for s in wanted]
            if all(valid):
                found = index.find(_ids.encode(wanted, self.path))
                missing = [s for s, p in zip(wanted, found.tolist()) if p < 0]
            else:  # no such ID can be in the file
                missing = [s for s, ok in zip(wanted, valid) if not ok]
            if missing:
                raise UnknownIDError(
                    f"{self.path}: split {name!r} names {len(missing)} unknown sample ID(s), "
                    f"e.g. {missing[:5]!r}"
                )
            rows = index.rows(found)
        rows = np.sort(rows)
        if rows.size > 1 and np.any(rows[1:] == rows[:-1]):
            dup = rows[1:][rows[1:] == rows[:-1]]
            raise WriterInputError(
                f"{self.path}: split {name!r} lists {dup.size} sample(s) twice, e.g. "
                f"{ids.items(dup[:5].tolist())!r}"
            )
        return rows

    def _write_splits(self, ids: _ids.Encoded, index: _ids.Sorted) -> dict[str, str]:
        f = self._file
        assert f is not None  # noqa: S101
        digests: dict[str, str] = {}
        resolved = {name: self._resolve_split(name, items, ids, index) for name, items in self._splits.items()}
        names = sorted(resolved)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                both = np.intersect1d(resolved[a], resolved[b], assume_unique=True)
                if both.size:
                    raise WriterInputError(
                        f"{self.path}: splits {a!r} and {b!r} overlap in {both.size} sample(s), "
                        f"e.g. {ids.items(both[:5].tolist())!r}"
                    )
        if resolved:
            group = f.create_group(L.SPLITS)
            for name in names:
                group.create_dataset(name, data=resolved[name], dtype=np.int64)
                digests[f"{L.SPLITS}/{name}"] = _record.digest_of(resolved[name])
        return digests

    def _index_ids(self) -> tuple[_ids.Encoded, np.ndarray]:
        """Every ID, sorted once: a repeat of an earlier row is refused here,
        naming both rows (NOTE [ IDs at scale ] in _ids.py)."""
        ids = _ids.Encoded.concat(self._ids_written)
        self._ids_written = [ids]
        order, repeats = _ids.sort(ids)
        if repeats.size:
            at = int(repeats[0])
            first = int(order[at - 1])  # equal IDs sort in row order
            more = f"; {repeats.size} repeated IDs in all" if repeats.size > 1 else ""
            raise SampleError(
                f"{self.path}: duplicate sample ID {ids.item(int(order[at]))!r} (first at row {first}) "
                f"at row {int(order[at])}{more}"
            )
        return ids, order

    def _write_metadata(self, ids: _ids.Encoded) -> dict[str, str]:
        """Write ``meta/<column>`` in row order; return their digests. (Only a
        file with metadata holds its IDs as Python strings here, to match
        them with the table's.)"""
        if self._metadata_rows is not None:
            return self._write_metadata_rows(len(ids))
        table = self._metadata
        if table is None:
            return {}
        assert self._file is not None  # noqa: S101
        strings = ids.items(range(len(ids)))
        table.check_covers(strings, "this file", WriterInputError)
        rows = table.rows_of(strings)
        group = self._file.create_group(L.META)
        digests = {}
        for name, values in table.columns.items():
            ordered = values[rows]
            group.create_dataset(name, data=ordered, dtype=L.metadata_dtype(ordered))
            digests[L.meta_path(name)] = _record.digest_of(ordered)
        return digests

    def _write_metadata_rows(self, n: int) -> dict[str, str]:
        assert self._file is not None and self._metadata_rows is not None  # noqa: S101
        group = self._file.create_group(L.META)
        digests = {}
        for name, values in self._metadata_rows.items():
            if len(values) != n:
                raise WriterInputError(f"{self.path}: metadata column {name!r} has {len(values)} rows, expected {n}")
            if values.dtype.kind == "O":  # UTF-8 bytes
                encoded = _ids.encode_bytes(list(values))
                hasher = hashlib.sha256()
                _record.hash_ids(hasher, encoded.data, encoded.starts, encoded.ends)
                group.create_dataset(name, data=values, dtype=h5py.string_dtype("utf-8"))
                digests[L.meta_path(name)] = hasher.hexdigest()
            else:
                group.create_dataset(name, data=values, dtype=L.metadata_dtype(values))
                digests[L.meta_path(name)] = _record.digest_of(values)
        return digests

    def _finish(self) -> None:
        self._flush()
        for col in self._columns.values():
            col.wait_hashed()
        self._stop_hash_thread()
        n = self._n_ids
        if n == 0:
            raise WriterInputError(f"{self.path}: no samples were appended; refusing to write an empty file")
        if self.expected_rows is not None and n != self.expected_rows:
            raise WriterInputError(
                f"{self.path}: expected_rows={self.expected_rows}, but {n} samples were appended"
            )
        f = self._file
        assert f is not None  # noqa: S101
        ids, order = self._index_ids()
        digests = {L.IDS: self._ids_hasher.hexdigest()}
        digests.update({name: col.hasher.hexdigest() for name, col in self._columns.items()})
        digests.update(self._write_splits(ids, _ids.Sorted.of(ids, order)))
        hashers = {name: hashlib.sha256() for name in _ids.INDEX_NAMES}
        _ids.write_index(f, ids, order, hashers)
        digests.update({name: h.hexdigest() for name, h in hashers.items()})
        digests.update(self._write_metadata(ids))
        parts = list(dict.fromkeys(rel for sources in self._virtual.values() for rel, _, _ in sources))
        # The completion record goes last: a file with it is whole.
        _record.write_record(f, n, digests, parts=parts or None)
        f.flush()
        f.close()
        self._file = None
        self._stop_writeback(wait=True)
        assert self._tmp is not None  # noqa: S101
        if self._virtual:
            # A file of virtual columns must open as a trusted virtual file
            # before it takes its name.
            L.open_and_validate(self._tmp, allow_virtual=True)
        publish(self._tmp, self.path, overwrite=self.overwrite)
        self._tmp = None

    def close(self) -> str:
        """Finish the file and move it into place; return its path.

        Raises:
            WriterInputError: nothing was appended, the row count differs
                from ``expected_rows``, or a split is invalid (overlaps
                another, lists a sample twice, a row out of range), or
                the metadata misses a sample or names an ID that is none.
            UnknownIDError: a split names a sample ID that was not appended.
            OutputExistsError: the target appeared meanwhile (without
                ``overwrite``).
            DiskFullError: the disk or the file size limit ran out.
            WriterError: writing failed otherwise.

            In every case the temporary file is removed and the target is
            left as it was.
        """
        if self._done:
            return self.path
        try:
            self._finish()
        except BaseException as exc:
            error = None
            # h5py reports a failed flush or close as a RuntimeError.
            if (isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and _is_disk_full(exc))) and not isinstance(
                exc, WriterError
            ):
                error = self._os_error(exc, "finishing the file")
            self._cleanup()
            if error is not None:
                raise error from exc
            raise
        self._done = True
        logger.info("wrote %s (%d rows)", self.path, self._n_ids)
        return self.path

    def abort(self) -> None:
        """Discard everything written; the target is left as it was."""
        self._cleanup()

    def _start_writeback(self) -> None:
        """Early writeback: sync the temporary file in a helper thread, through
        its own descriptor, so that little is left for the final fsync. At
        most one sync runs at a time; a failed one fails the write. See the
        design note ``docs/design/atomic-writing.md``."""
        if self._writeback is not None:
            self._writeback.result()  # finished: raise its error, if any
        if self._sync_thread is None:
            self._sync_thread = ThreadPoolExecutor(1, thread_name_prefix="h5feed-sync")
        self._unsynced = 0
        self._writeback = self._sync_thread.submit(_sync_file, self._tmp)

    def _stop_writeback(self, *, wait: bool) -> None:
        writeback, self._writeback = self._writeback, None
        if self._sync_thread is not None:
            self._sync_thread.shutdown(wait=wait, cancel_futures=True)
            self._sync_thread = None
        if wait and writeback is not None and not writeback.cancelled():
            writeback.result()

    def _stop_hash_thread(self) -> None:
        if self._hash_thread is not None:
            self._hash_thread.shutdown(wait=True)
            self._hash_thread = None
        if self._compress_pool is not None:
            self._compress_pool.shutdown(wait=True, cancel_futures=True)
            self._compress_pool = None

    def _cleanup(self) -> None:
        # A second Ctrl-C must not cut the clean-up short: SIGINT waits
        # until the temporary file is gone.
        with sigint_deferred():
            self._cleanup_now()

    def _cleanup_now(self) -> None:
        self._done = True
        self._stop_hash_thread()
        self._stop_writeback(wait=False)  # its own descriptor: removal can go ahead
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # already broken (disk full, say); removal follows
                pass
            self._file = None
        discard(self._tmp)
        self._tmp = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_done", True) and getattr(self, "_tmp", None):
            self._cleanup()

    def __repr__(self) -> str:
        return f"<DatasetWriter {self.path!r}: {self.rows} rows{' (closed)' if self._done else ''}>"


def _slice(ids: _ids.Encoded, start: int, stop: int) -> _ids.Encoded:
    """IDs ``start..stop-1`` of ``ids`` (NUL-terminated), over the bytes they use only."""
    if start == 0 and stop == ids.size:
        return ids
    first = int(ids.starts[start])
    last = int(ids.ends[stop - 1]) + 1  # with its NUL
    return _ids.Encoded(ids.data[first:last], ids.starts[start:stop] - first, ids.ends[start:stop] - first)


def _size_or_none(path: str | None) -> int | None:
    try:
        return os.path.getsize(path) if path else None
    except OSError:
        return None


def _sync_file(path: str | None) -> None:
    """Sync ``path``'s data to disk through a descriptor of our own."""
    if path is None:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        getattr(os, "fdatasync", os.fsync)(fd)
    finally:
        os.close(fd)


def _rows(value: Any) -> Any:
    """``value`` as something to slice rows from: arrays, and array-likes that
    read on slicing (an h5py dataset, a memory map), stay as they are, so
    that only one block at a time is read; anything else becomes an array."""
    if isinstance(value, np.ndarray):
        return value
    if all(hasattr(value, a) for a in ("shape", "dtype", "__getitem__", "__len__")):
        return value
    return np.asarray(value)


def write_arrays(
    path: str | os.PathLike[str],
    ids: Sequence[str] | np.ndarray,
    x: Any,
    y: Any = None,
    splits: Mapping[str, Iterable[Any]] | None = None,
    *,
    extras: Mapping[str, Any] | None = None,
    metadata: Any = None,
    **options: Any,
) -> str:
    """Write arrays already in memory (or memory-mapped) as one h5feed file.

    The sample and target shapes and dtypes come from the arrays; rows are
    copied in blocks, so a memory-mapped ``x`` or an h5py dataset is never
    loaded whole.

    Args:
        path: the file to create.
        ids: N unique sample IDs.
        x: samples, shape ``(N, *sample_shape)``: an array, a memory map, or
            an h5py dataset (read a block of rows at a time).
        y: targets, shape ``(N,)`` or ``(N, *target_shape)``; None for none.
        splits: ``{name: rows or IDs}``.
        extras: further per-row arrays ``{name: array of first dimension N}``.
        metadata: per-sample metadata, stored under ``meta/``: a CSV file
            with an ``id`` column, or ``{"id": ids, column: values, ...}``
            (see :meth:`DatasetWriter.set_metadata`).
        **options: :class:`DatasetWriter` keyword options (``n_classes``,
            ``class_names``, ``compression``, ``overwrite``, ``checksum``,
            ``chunk_rows``, ``compress_threads``).

    Returns:
        The path written.

    Example:
        >>> import numpy as np, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "d.h5")
        >>> write_arrays(out, ["a", "b", "c"], np.zeros((3, 4)), np.array([0, 1, 1]),
        ...              splits={"train": ["a", "b"], "validation": [2]}, n_classes=2) == out
        True
    """
    for reserved in ("sample_shape", "dtype", "target_shape", "target_dtype", "expected_rows", "extras"):
        if reserved in options:
            raise TypeError(f"write_arrays() takes {reserved!r} from the arrays; do not pass it")
    x = _rows(x)
    ids = [str(i) if isinstance(i, np.str_) else i for i in (ids.tolist() if isinstance(ids, np.ndarray) else list(ids))]
    if len(x.shape) < 1 or x.shape[0] != len(ids):
        raise SampleError(f"{os.fspath(path)}: x has shape {x.shape!r} for {len(ids)} IDs; expected ({len(ids)}, ...)")
    yarr = None if y is None else _rows(y)
    if yarr is not None and (len(yarr.shape) < 1 or yarr.shape[0] != len(ids)):
        raise SampleError(f"{os.fspath(path)}: y has shape {yarr.shape!r} for {len(ids)} IDs; expected ({len(ids)}, ...)")
    extra_arrays = {k: _rows(v) for k, v in (extras or {}).items()}
    writer = DatasetWriter(
        path,
        sample_shape=x.shape[1:],
        dtype=x.dtype,
        target_shape=() if yarr is None else yarr.shape[1:],
        target_dtype=None if yarr is None else yarr.dtype,
        expected_rows=len(ids),
        extras={k: (v.shape[1:], v.dtype) for k, v in extra_arrays.items()},
        **options,
    )
    with writer:
        if metadata is not None:
            writer.set_metadata(metadata)
        step = max(1, _BLOCK_BYTES // max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize))
        for start in range(0, len(ids), step):
            stop = min(len(ids), start + step)
            writer.extend(
                ids[start:stop],
                x[start:stop],
                None if yarr is None else yarr[start:stop],
                **{k: v[start:stop] for k, v in extra_arrays.items()},
            )
        for name, items in (splits or {}).items():
            writer.add_split(name, items)
    return writer.path


# --------------------------------------------------------------------------
# Writing in a child process (isolated writing, see the module docstring).


def run_isolated(path: str | os.PathLike[str], fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in a child process that writes ``path``.

    A crash of HDF5 in the child (as after a full disk) cannot take the
    calling process down. The child is started with ``spawn`` and asks for
    SIGINT when its parent dies; a Ctrl-C is passed on to it, and it removes
    its temporary file itself. See the design note
    ``docs/design/atomic-writing.md``.

    Args:
        path: the file ``fn`` writes (its folder is cleaned of the
            temporary files of a child that died).
        fn: a module-level function (it is pickled to the child), typically
            one that builds a :class:`DatasetWriter` and returns its path.
        *args, **kwargs: picklable arguments for ``fn``.

    Returns:
        What ``fn`` returned.

    Raises:
        Exception: whatever ``fn`` raised, with its type kept.
        WriterError: the child died without answering (killed, crashed).
        KeyboardInterrupt: after passing the interrupt on to the child and
            waiting for it to clean up.

    Example:
        >>> import numpy as np, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "d.h5")
        >>> run_isolated(out, write_arrays, out, ["a", "b"], np.zeros((2, 3))) == out  # doctest: +SKIP
        True
    """
    target = os.path.abspath(os.fspath(path))
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_isolated_child,
        args=(sender, os.getpid(), fn, args, kwargs),
        name=f"h5feed-writer:{os.path.basename(target)}",
        daemon=False,
    )
    child.start()
    sender.close()
    message = None
    try:
        while message is None:
            if receiver.poll(0.1):
                try:
                    message = receiver.recv()
                except EOFError:  # the child died before answering
                    break
            elif not child.is_alive():
                if receiver.poll(0):
                    continue
                break
        child.join()
    except KeyboardInterrupt:
        _stop_child(child)
        remove_stale_temporaries(target)
        raise
    finally:
        receiver.close()
    if message is None:
        remove_stale_temporaries(target)
        code = child.exitcode
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
            if -code in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT):
                how += " (a crash inside HDF5; a full disk is a common cause)"
        else:
            how = f"exited with status {code!r} without an answer"
        raise WriterError(
            f"{target}: the writing process (pid {child.pid}) {how}; "
            f"{os.path.basename(target)!r} was left as it was"
        )
    kind, value, text = message
    if kind == "ok":
        return value
    if text:
        logger.debug("the writing process failed:\n%s", text)
    raise value


def _stop_child(child: Any, grace: float = 30.0) -> None:
    """Pass a Ctrl-C on to ``child`` and wait for it to clean up."""
    # A Ctrl-C at a terminal reaches the child too; a second SIGINT is
    # harmless, as the writer holds SIGINT back while it cleans up.
    if child.is_alive():
        try:
            os.kill(child.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    child.join(grace)
    if child.is_alive():
        child.kill()
        child.join()


def _set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except Exception:  # best effort: without it a killed parent leaves us running
        pass


def _isolated_child(conn: Any, parent_pid: int, fn: Any, args: Any, kwargs: Any) -> None:
    _set_parent_death_signal(signal.SIGINT)
    status = 0
    try:
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            raise KeyboardInterrupt
        result = fn(*args, **kwargs)
        message: tuple[str, Any, str] = ("ok", result, "")
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        message = ("error", exc, traceback.format_exc())
        status = 1
    try:
        try:
            conn.send(message)
        except Exception as exc:  # the exception or result does not pickle
            kind, value, text = message
            what = f"{type(value).__name__}: {value}"
            conn.send(("error", WriterError(f"{what} (could not be sent back: {exc})"), text))
    except Exception:  # the parent is gone
        status = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        # Skip interpreter shutdown: HDF5's exit handlers are what crash
        # after a full disk.
        os._exit(status)
