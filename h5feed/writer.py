"""Writing h5feed files: checked appends, a temporary file, an atomic rename.

:class:`DatasetWriter` streams samples into a temporary file beside the
target and renames it into place only when the ``with`` block ends without an
error; :func:`write_arrays` is the one-call form for arrays already in memory
(or memory-mapped).

NOTE [ Atomic output ]
The target name only ever holds a finished file. Writing goes to
``.<name>.<host>.<pid>.<random>.h5feed-tmp`` in the same folder (same filesystem, so
the final rename is atomic). On success the completion record is written
last, the file is flushed and fsynced, and then renamed: with
``overwrite=False`` through ``os.link`` (which refuses to replace an existing
file, closing the race between the check in ``__init__`` and the rename),
with ``overwrite=True`` through ``os.replace``. On any exception, including
KeyboardInterrupt, the temporary file is removed and the target is left as it
was. A writer killed outright (SIGKILL) leaves its temporary file behind; the
next writer to the same target removes temporary files whose process is gone.

NOTE [ Isolated writing ]
After a write fails with ENOSPC/EFBIG, HDF5 (checked on h5py 3.14 with HDF5
1.14.6, and reported for HDF5 2.0) can leave its library state damaged so
that the Python process segfaults later, at exit or when the broken file
object is collected, even after a clean ``DiskFullError`` and ``close()``.
No amount of care inside one process prevents that, so the conversions that
the ``h5feed`` command runs do their HDF5 writing in a child process through
:func:`run_isolated`: the child runs the whole conversion (reading the
source and writing), sends back its result or its exception, and leaves with
``os._exit`` so HDF5's exit handlers never run. The parent only waits. If the
child dies anyway (a signal, a crash inside HDF5), the parent raises a
:class:`~h5feed.errors.WriterError` naming the signal and removes the dead
child's temporary file; a Ctrl-C is passed on to the child, which removes its
temporary file itself. The child is started with ``spawn`` (a fork of a
process that runs threads -- TensorFlow, say -- or holds HDF5 state is not
safe) and asks the kernel for SIGINT when its parent dies, so a parent killed
outright does not leave a writer running on. The cost is a Python start-up
(about half a second) per conversion. In-process writing (``DatasetWriter``,
``write_arrays``) stays the default of the Python API, where the caller owns
its process; ``run_isolated`` is there for callers that want the same
protection.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import multiprocessing
import secrets
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import h5py
import numpy as np

from . import layout as L
from ._files import create_h5
from ._proc import pid_alive
from .errors import DiskFullError, InvalidSampleIDError, SampleError, UnknownIDError, WriterError

__all__ = ["DatasetWriter", "check_output_folder", "run_isolated", "write_arrays"]

logger = logging.getLogger("h5feed")

_TMP_SUFFIX = ".h5feed-tmp"
# Chunked datasets get chunks of about this many bytes (256 KiB - 1 MiB):
# large enough that HDF5's per-chunk cost is small, small enough that a
# random row does not drag in much else.
_TARGET_CHUNK_BYTES = 512 * 1024
# Rows are buffered and written in blocks of about this many bytes.
_BLOCK_BYTES = 4 * 1024 * 1024
_COMPRESSIONS = {None: None, "none": None, "gzip": "gzip", "lzf": "lzf"}
# Blocks at least this big are hashed beside the HDF5 write (NOTE [ Hashing
# beside writing ]); smaller ones are not worth a thread hand-off.
_THREAD_HASH_BYTES = 256 * 1024
# After this many bytes written since the last sync, a helper thread syncs
# the temporary file (NOTE [ Early writeback ]).
_WRITEBACK_BYTES = 64 * 1024 * 1024


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
        # Big blocks take turns between two buffers, so that one fills while
        # the other is still being hashed (NOTE [ Hashing beside writing ]).
        self._buffers: list[np.ndarray | None] = [self.buffer, None]
        self._hashing: list[Future[None] | None] = [None, None]
        self._turn = 0

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


def _check_cast(arr: np.ndarray, original: Any, dtype: np.dtype, where: str) -> None:
    if np.can_cast(arr.dtype, dtype, "safe"):
        return
    # Plain Python numbers and lists carry no dtype of their own; accept them
    # when the values survive the cast unchanged.
    if not isinstance(original, (np.ndarray, np.generic)) and arr.dtype.kind in "biuf":
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
        compression: None, ``"gzip"`` or ``"lzf"``; implies chunked storage.
        overwrite: replace an existing file at ``path`` (only on success).
        chunk_rows: rows per chunk for chunked storage (default: about 512 KiB).
        checksum: store HDF5 Fletcher32 checksums so corruption is detected.
        extras: further per-row datasets, ``{name: (row_shape, dtype)}``,
            filled through keyword arguments of :meth:`append`/:meth:`extend`.

    Raises:
        WriterError: the target exists (without ``overwrite``), is a folder,
            or its folder is missing or not writable.
        TypeError: an option of the wrong type.

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
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.sample_shape = _normalize_shape(sample_shape, "sample_shape")
        self.dtype = _normalize_dtype(dtype, "dtype")
        self.target_shape = _normalize_shape(target_shape, "target_shape")
        self.target_dtype = None if target_dtype is None else _normalize_dtype(target_dtype, "target_dtype")
        if compression not in _COMPRESSIONS:
            raise ValueError(
                f"compression must be None, 'none', 'gzip' or 'lzf'. Received: {compression!r}"
            )
        self.compression = _COMPRESSIONS[compression]
        for name, value in (("overwrite", overwrite), ("checksum", checksum)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool. Received: {value!r}")
        self.overwrite = bool(overwrite)
        self.checksum = bool(checksum)
        self.expected_rows = _optional_count(expected_rows, "expected_rows", minimum=0)
        self.chunk_rows = _optional_count(chunk_rows, "chunk_rows", minimum=1)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        if class_names is not None and n_classes is None:
            n_classes = len(self.class_names)  # type: ignore[arg-type]
        self.n_classes = _optional_count(n_classes, "n_classes", minimum=1)
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
        self._check_target()

        self._columns: dict[str, _Column] = {L.X: _Column(L.X, self.sample_shape, self.dtype)}
        if self.target_dtype is not None:
            self._columns[L.Y] = _Column(L.Y, self.target_shape, self.target_dtype)
        for name, spec in (extras or {}).items():
            if name in (L.IDS, L.X, L.Y, L.SPLITS) or not name or "/" in name:
                raise ValueError(f"extras: {name!r} is not allowed as a dataset name")
            shape, dt = spec
            self._columns[name] = _Column(name, _normalize_shape(shape, f"extras[{name!r}] shape"), _normalize_dtype(dt, f"extras[{name!r}] dtype"))
        self._contiguous = self.expected_rows is not None and self.compression is None and not self.checksum

        self._row_of: dict[str, int] = {}
        self._ids: list[str] = []
        self._ids_hasher = hashlib.sha256()
        self._rows_written = 0
        self._splits: dict[str, Any] = {}
        self._file: h5py.File | None = None
        self._tmp: str | None = None
        self._done = False
        self._hash_thread: ThreadPoolExecutor | None = None
        self._sync_thread: ThreadPoolExecutor | None = None
        self._writeback: Future[None] | None = None
        self._unsynced = 0
        self._open()

    # -- set-up ------------------------------------------------------------

    def _check_target(self) -> None:
        check_output_folder(self.path)
        if os.path.lexists(self.path) and not self.overwrite:
            raise WriterError(f"{self.path}: already exists; pass overwrite=True to replace it")

    def _open(self) -> None:
        folder, base = os.path.split(self.path)
        _remove_stale_temporaries(folder, base)
        self._tmp = os.path.join(
            folder, f".{base}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        )
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
        # The format goes first and the completion record last, so that a
        # killed writer's leftover reads as "an h5feed file, incomplete".
        f.attrs[L.ATTR_FORMAT] = np.int64(L.FORMAT_VERSION)
        n = self.expected_rows
        for col in self._columns.values():
            kwargs: dict[str, Any] = {}
            if self._contiguous:
                shape = (n, *col.row_shape)
            else:
                shape = (0, *col.row_shape)
                rows = self.chunk_rows if (self.chunk_rows and col.name == L.X) else default_chunk_rows(col.row_nbytes)
                kwargs.update(maxshape=(None, *col.row_shape), chunks=(rows, *col.row_shape))
                if self.compression is not None:
                    kwargs["compression"] = self.compression
                    kwargs["shuffle"] = col.dtype.itemsize > 1
                    if self.compression == "gzip":
                        kwargs["compression_opts"] = 4
                if self.checksum:
                    kwargs["fletcher32"] = True
            col.dset = f.create_dataset(col.name, shape=shape, dtype=col.dtype, **kwargs)
        str_dt = h5py.string_dtype("utf-8")
        if self._contiguous:
            self._ids_dset = f.create_dataset(L.IDS, shape=(n,), dtype=str_dt)
        else:
            self._ids_dset = f.create_dataset(L.IDS, shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(4096,))

    # -- appending ---------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows appended so far."""
        return len(self._ids)

    def _check_id(self, sample_id: Any) -> str:
        if not isinstance(sample_id, str):
            raise InvalidSampleIDError(
                f"{self.path}: sample IDs must be str. Received: {sample_id!r} ({type(sample_id).__name__})"
            )
        if not sample_id or "\x00" in sample_id:
            raise InvalidSampleIDError(f"{self.path}: invalid sample ID {sample_id!r}: empty or holds NUL")
        if sample_id in self._row_of:
            raise SampleError(
                f"{self.path}: duplicate sample ID {sample_id!r} (first at row {self._row_of[sample_id]})"
            )
        if self.expected_rows is not None and len(self._ids) >= self.expected_rows:
            raise SampleError(
                f"{self.path}: sample {sample_id!r} would be row {len(self._ids)}, "
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
        self._add_ids([sid])
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

    def _add_ids(self, ids: Iterable[str]) -> None:
        base = len(self._ids)
        for k, sid in enumerate(ids):
            self._row_of[sid] = base + k
            self._ids.append(sid)

    def extend(self, ids: Sequence[str], xs: Any, ys: Any = None, **extras: Any) -> None:
        """Append many samples at once (faster than :meth:`append` per row).

        Args:
            ids: their unique IDs.
            xs: array-like of shape ``(len(ids), *sample_shape)``.
            ys: targets of shape ``(len(ids), *target_shape)``, or None.
            **extras: one array per extra dataset.

        Raises:
            SampleError: as :meth:`append`; nothing of this call is written.
        """
        self._require_open()
        ids = list(ids)
        k = len(ids)
        seen: set[str] = set()
        for sid in ids:
            self._check_id(sid)
            if sid in seen:
                raise SampleError(f"{self.path}: duplicate sample ID {sid!r} within one extend() call")
            seen.add(sid)
        if self.expected_rows is not None and len(self._ids) + k > self.expected_rows:
            raise SampleError(
                f"{self.path}: {len(self._ids) + k} rows would exceed expected_rows={self.expected_rows} "
                f"(first extra ID {ids[self.expected_rows - len(self._ids)]!r})"
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
                col.buffer[col.fill : col.fill + step] = arrays[name][pos : pos + step]
                col.fill += step
            self._add_ids(ids[pos : pos + step])
            pos += step
            if any(c.fill == c.block_rows for c in self._columns.values()):
                self._flush()

    def _check_block(self, name: str, values: Any, k: int, first: Any) -> Any:
        col = self._columns[name]
        arr = values if isinstance(values, np.ndarray) else np.asarray(values)
        if arr.shape != (k, *col.row_shape):
            raise SampleError(
                f"{self.path}: {name!r} for {k} samples starting at {first!r}: expected shape "
                f"{(k, *col.row_shape)!r}. Received: {arr.shape!r}"
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

    # -- flushing and finishing --------------------------------------------

    def _require_open(self) -> None:
        if self._done or self._file is None:
            raise WriterError(f"{self.path}: the writer is closed")

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
                # NOTE [ Hashing beside writing ]: hashlib releases the GIL on
                # large updates, so a big block is hashed in a helper thread
                # while HDF5 writes it and the next block fills the column's
                # other buffer. One thread hashes blocks in the order given,
                # and a buffer is refilled only once its hash is done.
                hashed = None
                if block.nbytes >= _THREAD_HASH_BYTES:
                    if self._hash_thread is None:
                        self._hash_thread = ThreadPoolExecutor(1, thread_name_prefix="h5feed-hash")
                    hashed = self._hash_thread.submit(L.hash_rows, col.hasher, block)
                else:
                    L.hash_rows(col.hasher, block)
                if not self._contiguous:
                    col.dset.resize(stop, axis=0)
                col.dset.write_direct(block, dest_sel=np.s_[start:stop])
                if hashed is not None:
                    col.hashed_in_background(hashed)
                col.fill = 0
            new_ids = self._ids[start:stop]
            L.hash_rows(self._ids_hasher, new_ids)
            if not self._contiguous:
                self._ids_dset.resize((stop,))
            self._ids_dset[start:stop] = np.array(new_ids, dtype=object)
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

    def _os_error(self, exc: BaseException, doing: str) -> Exception:
        if _is_disk_full(exc):
            size = _size_or_none(self._tmp)
            got = f", {size:,} bytes on disk" if size is not None else ""
            return DiskFullError(
                f"{self.path}: disk full (or the file size limit reached) while {doing}: "
                f"{self._rows_written} of {self.rows} rows had been written{got}. The temporary "
                f"file was removed and {os.path.basename(self.path)!r} was left as it was. "
                f"Free some space (or write elsewhere) and run again. [{_first_line(exc)}]"
            )
        return WriterError(f"{self.path}: {doing} failed: {exc}")

    def _resolve_split(self, name: str, items: Any) -> np.ndarray:
        n = len(self._ids)
        arr = np.asarray(items) if not isinstance(items, np.ndarray) else items
        if arr.size == 0:
            rows = np.zeros(0, dtype=np.int64)
        elif arr.dtype.kind in "iu":
            rows = arr.astype(np.int64).reshape(-1)
            bad = rows[(rows < 0) | (rows >= n)]
            if bad.size:
                raise WriterError(f"{self.path}: split {name!r}: row {int(bad[0])} is outside [0, {n})")
        else:
            missing = [s for s in arr.reshape(-1).tolist() if s not in self._row_of]
            if missing:
                raise UnknownIDError(
                    f"{self.path}: split {name!r} names {len(missing)} unknown sample ID(s), "
                    f"e.g. {missing[:5]!r}"
                )
            rows = np.fromiter((self._row_of[s] for s in arr.reshape(-1).tolist()), dtype=np.int64, count=arr.size)
        rows.sort()
        if rows.size > 1 and np.any(rows[1:] == rows[:-1]):
            dup = rows[1:][rows[1:] == rows[:-1]]
            raise WriterError(
                f"{self.path}: split {name!r} lists {dup.size} sample(s) twice, e.g. "
                f"{[self._ids[r] for r in dup[:5].tolist()]!r}"
            )
        return rows

    def _write_splits(self) -> dict[str, str]:
        f = self._file
        assert f is not None  # noqa: S101
        digests: dict[str, str] = {}
        resolved = {name: self._resolve_split(name, items) for name, items in self._splits.items()}
        names = sorted(resolved)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                both = np.intersect1d(resolved[a], resolved[b], assume_unique=True)
                if both.size:
                    raise WriterError(
                        f"{self.path}: splits {a!r} and {b!r} overlap in {both.size} sample(s), "
                        f"e.g. {[self._ids[r] for r in both[:5].tolist()]!r}"
                    )
        if resolved:
            group = f.create_group(L.SPLITS)
            for name in names:
                group.create_dataset(name, data=resolved[name], dtype=np.int64)
                h = hashlib.sha256()
                L.hash_rows(h, resolved[name])
                digests[f"{L.SPLITS}/{name}"] = h.hexdigest()
        return digests

    def _finish(self) -> None:
        self._flush()
        for col in self._columns.values():
            col.wait_hashed()
        self._stop_hash_thread()
        n = len(self._ids)
        if n == 0:
            raise WriterError(f"{self.path}: no samples were appended; refusing to write an empty file")
        if self.expected_rows is not None and n != self.expected_rows:
            raise WriterError(
                f"{self.path}: expected_rows={self.expected_rows}, but {n} samples were appended"
            )
        f = self._file
        assert f is not None  # noqa: S101
        digests = {L.IDS: self._ids_hasher.hexdigest()}
        digests.update({name: col.hasher.hexdigest() for name, col in self._columns.items()})
        digests.update(self._write_splits())
        f.attrs[L.ATTR_FORMAT] = np.int64(L.FORMAT_VERSION)
        if self.n_classes is not None:
            f.attrs[L.ATTR_N_CLASSES] = np.int64(self.n_classes)
        if self.class_names is not None:
            f.attrs.create(L.ATTR_CLASS_NAMES, self.class_names, dtype=h5py.string_dtype("utf-8"))
        # The completion record goes last: a file with it is whole.
        f.attrs[L.ATTR_COMPLETE] = json.dumps({"rows": n, "sha256": digests}, sort_keys=True)
        f.flush()
        f.close()
        self._file = None
        self._stop_writeback(wait=True)
        tmp = self._tmp
        assert tmp is not None  # noqa: S101
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        self._rename(tmp)
        self._tmp = None

    def _rename(self, tmp: str) -> None:
        if self.overwrite:
            os.replace(tmp, self.path)
        else:
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                raise WriterError(
                    f"{self.path}: appeared while writing; pass overwrite=True to replace it"
                ) from None
            except OSError:
                # Filesystems without hard links: check, then rename.
                if os.path.lexists(self.path):
                    raise WriterError(f"{self.path}: already exists; pass overwrite=True to replace it") from None
                os.replace(tmp, self.path)
            else:
                os.unlink(tmp)
        _fsync_dir(os.path.dirname(self.path))

    def close(self) -> str:
        """Finish the file and move it into place; return its path.

        Raises:
            WriterError: nothing was appended, the row count differs from
                ``expected_rows``, a split is invalid, or writing failed. The
                temporary file is removed and the target left as it was.
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
        logger.info("wrote %s (%d rows)", self.path, len(self._ids))
        return self.path

    def abort(self) -> None:
        """Discard everything written; the target is left as it was."""
        self._cleanup()

    def _start_writeback(self) -> None:
        """NOTE [ Early writeback ]: the final fsync waits until every byte
        of the file is on disk, which for a big file takes long and does
        nothing else. Syncing the temporary file every 64 MiB in a helper
        thread (through its own descriptor, so HDF5's is never touched) lets
        the disk work while the conversion goes on and leaves little for the
        end. At most one sync runs at a time; a failed one fails the write."""
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

    def _cleanup(self) -> None:
        # A second Ctrl-C must not cut the clean-up short (NOTE [ Atomic
        # output ]): SIGINT waits until the temporary file is gone.
        with _sigint_deferred():
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
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
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


def check_output_folder(path: str | os.PathLike[str]) -> str:
    """Refuse an output path whose folder is missing or not writable.

    Converters call this before they read any input, so that a typo in the
    output path costs nothing; :class:`DatasetWriter` calls it again.

    Returns:
        The absolute path.

    Raises:
        WriterError: the folder is missing or not writable, or ``path`` is a
            folder.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise WriterError(f"{path}: the output folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriterError(f"{path}: the output folder {folder!r} is not writable")
    if os.path.isdir(path):
        raise WriterError(f"{path}: is a folder, expected a file name")
    return path


class _sigint_deferred:
    """Hold SIGINT back (in the main thread, where Python handles it) for a block."""

    def __enter__(self) -> None:
        self._old = None
        if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            except (OSError, ValueError):
                self._old = None

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old)


def _size_or_none(path: str | None) -> int | None:
    try:
        return os.path.getsize(path) if path else None
    except OSError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sync_file(path: str | None) -> None:
    """Sync ``path``'s data to disk through a descriptor of our own."""
    if path is None:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        getattr(os, "fdatasync", os.fsync)(fd)
    finally:
        os.close(fd)


def _optional_count(value: Any, name: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} or None. Received: {value!r}")
    return int(value)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(folder: str, base: str) -> None:
    """Remove temporary files of earlier writers to ``base`` that died."""
    prefix = f".{base}."
    host = socket.gethostname()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        parts = name[len(prefix) : -len(_TMP_SUFFIX)].rsplit(".", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            logger.info("removed %s, left by a writer that died", name)
        except OSError:
            pass


def write_arrays(
    path: str | os.PathLike[str],
    ids: Sequence[str] | np.ndarray,
    x: Any,
    y: Any = None,
    splits: Mapping[str, Iterable[Any]] | None = None,
    *,
    extras: Mapping[str, Any] | None = None,
    **options: Any,
) -> str:
    """Write arrays already in memory (or memory-mapped) as one h5feed file.

    The sample and target shapes and dtypes come from the arrays; rows are
    copied in blocks, so a memory-mapped ``x`` is never loaded whole.

    Args:
        path: the file to create.
        ids: N unique sample IDs.
        x: samples, shape ``(N, *sample_shape)``.
        y: targets, shape ``(N,)`` or ``(N, *target_shape)``; None for none.
        splits: ``{name: rows or IDs}``.
        extras: further per-row arrays ``{name: array of first dimension N}``.
        **options: :class:`DatasetWriter` keyword options (``n_classes``,
            ``class_names``, ``compression``, ``overwrite``, ``checksum``,
            ``chunk_rows``).

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
    x = x if isinstance(x, np.ndarray) else np.asarray(x)
    ids = [str(i) if isinstance(i, np.str_) else i for i in (ids.tolist() if isinstance(ids, np.ndarray) else list(ids))]
    if x.ndim < 1 or x.shape[0] != len(ids):
        raise SampleError(f"{os.fspath(path)}: x has shape {x.shape!r} for {len(ids)} IDs; expected ({len(ids)}, ...)")
    yarr = None if y is None else (y if isinstance(y, np.ndarray) else np.asarray(y))
    if yarr is not None and (yarr.ndim < 1 or yarr.shape[0] != len(ids)):
        raise SampleError(f"{os.fspath(path)}: y has shape {yarr.shape!r} for {len(ids)} IDs; expected ({len(ids)}, ...)")
    extra_arrays = {k: (v if isinstance(v, np.ndarray) else np.asarray(v)) for k, v in (extras or {}).items()}
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
# Writing in a child process (NOTE [ Isolated writing ]).


def run_isolated(path: str | os.PathLike[str], fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in a child process that writes ``path``.

    A crash of HDF5 in the child (as after a full disk) cannot take the
    calling process down; see NOTE [ Isolated writing ] in this module.

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
        _remove_stale_temporaries(os.path.dirname(target), os.path.basename(target))
        raise
    finally:
        receiver.close()
    if message is None:
        _remove_stale_temporaries(os.path.dirname(target), os.path.basename(target))
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
        # after a full disk (NOTE [ Isolated writing ]).
        os._exit(status)
