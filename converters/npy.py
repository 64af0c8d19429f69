"""``DATA_DIR/<ID>.npy`` per sample (the tutorial's layout) -> one h5feed file.

Reading untrusted .npy files: sample files never go to ``np.load`` (a
pickled object array would run code). The header is parsed with numpy's own
parser (with a size cap), anything but a plain numeric array is refused, and
the file must hold the bytes the header declares before anything is
allocated. See the design note ``docs/design/converting.md``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from h5feed.errors import SourceError

from ._common import (
    ConversionResult,
    Options,
    block_rows,
    check_inside,
    check_partition_ids,
    check_sample_id,
    check_weights,
    class_indices,
    load_labels,
    load_partition,
    load_weights,
    natural_key,
    ordered_map,
    some,
    write_dataset,
)

__all__ = ["NpyHeader", "from_npy_dir", "read_npy", "read_npy_header"]

SUFFIX = ".npy"
# numpy's own default cap; real headers of numeric arrays are ~100 bytes.
MAX_HEADER_BYTES = 10000
MAX_NDIM = 32


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header declares, checked against the file's size."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


_MAGIC = b"\x93NUMPY"
# Headers parsed so far, by their exact bytes: the files of one folder almost
# always share one header, and numpy's parser (ast.literal_eval) costs more
# than reading a small sample. Same bytes, same result, so this is safe.
_HEADER_CACHE: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}
_HEADER_CACHE_MAX = 256


def read_npy_header(fh: Any, where: str) -> NpyHeader:
    """Parse and check the header of the open ``.npy`` file ``fh``.

    Args:
        fh: a binary file positioned at its start.
        where: the file (and sample) named in messages.

    Raises:
        SourceError: not a .npy file, an unsupported version, a header over
            10000 bytes, an object or other non-numeric dtype, a bad shape,
            or fewer data bytes than the header declares (truncated).
    """
    prefix = fh.read(12)
    if len(prefix) < 10 or not prefix.startswith(_MAGIC):
        raise SourceError(f"{where}: not a .npy file (no numpy magic string; {len(prefix)} bytes read)")
    version = (prefix[6], prefix[7])
    if version == (1, 0):
        length, start = int.from_bytes(prefix[8:10], "little"), 10
    elif version == (2, 0) and len(prefix) == 12:
        length, start = int.from_bytes(prefix[8:12], "little"), 12
    else:
        raise SourceError(f"{where}: unsupported .npy format version {version[0]}.{version[1]} (expected 1.0 or 2.0)")
    if length > MAX_HEADER_BYTES:
        raise SourceError(
            f"{where}: unreadable .npy header: it declares {length} bytes, over the limit of {MAX_HEADER_BYTES}"
        )
    raw = prefix + fh.read(start + length - len(prefix))
    if len(raw) < start + length:
        raise SourceError(f"{where}: truncated inside its .npy header ({len(raw)} of {start + length} bytes)")
    parsed = _HEADER_CACHE.get(raw)
    if parsed is None:
        parsed = _parse_header(raw, version, where)
        if len(_HEADER_CACHE) >= _HEADER_CACHE_MAX:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[raw] = parsed
    shape, fortran_order, dtype = parsed
    header = NpyHeader(shape, dtype, fortran_order, len(raw))
    size = os.fstat(fh.fileno()).st_size
    if size - header.offset < header.nbytes:
        raise SourceError(
            f"{where}: truncated: the header declares shape {header.shape!r} {dtype} "
            f"({header.nbytes} bytes of data), but the file holds {max(0, size - header.offset)}"
        )
    return header


def _parse_header(raw: bytes, version: tuple[int, int], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """numpy's own parser on the header bytes, then our checks."""
    fmt = np.lib.format
    buf = io.BytesIO(raw)
    try:
        fmt.read_magic(buf)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        try:
            shape, fortran_order, dtype = read(buf, max_header_size=MAX_HEADER_BYTES)
        except TypeError:  # numpy < 1.24: no max_header_size (checked above)
            shape, fortran_order, dtype = read(buf)
    except (ValueError, SyntaxError, EOFError) as exc:
        raise SourceError(f"{where}: unreadable .npy header: {exc}") from exc
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise SourceError(
            f"{where}: holds an object (pickled) array; h5feed never loads pickles. "
            "Save samples as numeric arrays"
        )
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise SourceError(f"{where}: expected a numeric (bool, int, uint or float) array. Received: dtype {dtype!r}")
    if len(shape) > MAX_NDIM or any(not isinstance(d, int) or d < 0 for d in shape):
        raise SourceError(f"{where}: the .npy header declares an invalid shape {shape!r}")
    return tuple(shape), bool(fortran_order), dtype


def read_npy(path: str, where: str | None = None) -> np.ndarray:
    """Read one numeric ``.npy`` file safely (see the module docstring).

    Raises:
        SourceError: as :func:`read_npy_header`, or the file is unreadable.
    """
    where = where or path
    try:
        with open(path, "rb", buffering=0) as fh:
            header = read_npy_header(fh, where)
            out = np.empty(header.shape[::-1] if header.fortran_order else header.shape, dtype=header.dtype)
            _read_exact(fh, out, where)
    except OSError as exc:
        raise SourceError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    return out.T if header.fortran_order else out


def _read_exact(fh: Any, out: np.ndarray, where: str) -> None:
    view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            raise SourceError(f"{where}: truncated: ended after {got} of {len(view)} data bytes")
        got += n


@dataclass(frozen=True)
class _Task:
    """One block for a decoder: which files, and what each must look like."""

    paths: tuple[str, ...]
    ids: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    first_id: str


def _decode_block(task: _Task, out: np.ndarray | None = None) -> np.ndarray:
    """Read the task's files into one ``(k, *shape)`` block (runs in workers)."""
    dtype = np.dtype(task.dtype)
    if out is None or out.shape[0] < len(task.paths):
        out = np.empty((len(task.paths), *task.shape), dtype=dtype)
    block = out[: len(task.paths)]
    for i, (path, sid) in enumerate(zip(task.paths, task.ids)):
        where = f"{path} (sample {sid!r})"
        try:
            with open(path, "rb", buffering=0) as fh:
                header = read_npy_header(fh, where)
                if header.shape != task.shape or header.dtype.newbyteorder("=") != dtype:
                    raise SourceError(
                        f"{where}: expected shape {task.shape!r} and dtype {dtype} like the first "
                        f"sample {task.first_id!r}. Received: shape {header.shape!r}, dtype {header.dtype}"
                    )
                if header.fortran_order or not header.dtype.isnative:
                    raw = np.empty(header.shape[::-1] if header.fortran_order else header.shape, dtype=header.dtype)
                    _read_exact(fh, raw, where)
                    block[i] = raw.T if header.fortran_order else raw
                else:
                    _read_exact(fh, block[i], where)
        except FileNotFoundError as exc:
            raise SourceError(f"{where}: the file disappeared during conversion") from exc
        except OSError as exc:
            raise SourceError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    return block


def _prefetched(tasks: Iterator[_Task], block_shape: tuple[int, ...], dtype: np.dtype) -> Iterator[np.ndarray]:
    """Decode the next block in a helper thread while the caller writes this one.

    Reading files releases the GIL, so reading block k + 1 overlaps with
    hashing and writing block k. Two buffers take turns: a block handed out
    is not touched again until the caller asks for the next one (by then the
    writer has copied it).
    """
    buffers = [np.empty(block_shape, dtype=dtype), np.empty(block_shape, dtype=dtype)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="h5feed-npy-read") as pool:
        it = iter(tasks)
        task = next(it, None)
        if task is None:
            return
        future = pool.submit(_decode_block, task, buffers[0])
        turn = 0
        try:
            for task in it:
                block = future.result()
                turn ^= 1
                future = pool.submit(_decode_block, task, buffers[turn])
                yield block
            yield future.result()
        finally:
            future.cancel()


def _list_npy(data_dir: str) -> dict[str, str]:
    """``{ID: file name}`` for every ``*.npy`` file directly in ``data_dir``."""
    if not os.path.isdir(data_dir):
        raise SourceError(f"{data_dir}: no such folder (expected DATA_DIR with one <ID>.npy per sample)")
    found: dict[str, str] = {}
    with os.scandir(data_dir) as entries:
        for entry in entries:
            if entry.name.endswith(SUFFIX) and entry.is_file():
                found[entry.name[: -len(SUFFIX)]] = entry.name
    return found


def from_npy_dir(
    data_dir: str | os.PathLike[str],
    labels: str | os.PathLike[str] | Mapping[str, Any] | None,
    out: str | os.PathLike[str] | None = None,
    *,
    partition: str | os.PathLike[str] | Mapping[str, Sequence[str]] | None = None,
    no_labels: bool = False,
    n_classes: int | None = None,
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
    weights: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> ConversionResult:
    """Convert a folder of ``<ID>.npy`` samples (the tutorial's layout).

    Rows follow the order of ``labels`` (or, with ``no_labels``, the files'
    natural order: ``id-2`` before ``id-10``), unless ``shuffle_rows``.
    Every sample must have the shape and dtype of the first. All checks on
    the labels and partition run before any sample file is opened.

    Args:
        data_dir: the folder holding ``<ID>.npy`` files.
        labels: ``{ID: class index}``: a JSON file, a CSV file with header
            ``id,label``, or a dict (the tutorial's ``labels``). None only
            with ``no_labels=True``.
        out: the h5feed file to write (or give ``append_to``).
        partition: ``{split: [IDs]}``: a JSON file, a CSV file with header
            ``id,split``, or a dict (the tutorial's ``partition``).
        no_labels: write unlabelled samples (every ``*.npy`` in the folder).
        n_classes: the number of classes (default: largest label + 1).
        compression: None, ``"gzip"``, ``"lzf"``, ``"zstd"`` or ``"lz4"``
            (the last two need hdf5plugin: ``pip install "h5feed[codecs]"``).
        chunk_rows: rows per chunk; given, ``x`` is stored chunked instead of
            contiguous.
        shuffle_rows: store the rows in a seeded random order, so that
            contiguous reads are already well mixed.
        seed: the seed of ``shuffle_rows``.
        workers: processes that read samples in parallel (one writer);
            with compression, also threads that compress chunks.
        overwrite: replace ``out`` if it exists (only once complete).
        checksum: store Fletcher32 checksums, so that reads and
            ``h5feed verify`` detect corruption.
        quiet: no progress bar on stderr.
        progress: optional ``fn(rows_done, rows_total)`` called per block.
        shard: ``(i, n)`` to convert only the ``i``-th (0-based) of ``n``
            parts of the source, split by sorted sample ID (each machine lists
            the whole source and decodes its part); join the part files with
            ``h5feed merge``. Splits keep the part's own members.
            ``"auto"`` reads the part from a Slurm array job's environment
            (``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT``).
        weights: per-sample weights ``{ID: weight}`` (finite numbers >= 0),
            written as the float32 dataset ``w`` for
            ``H5Sequence(..., sample_weight="w")``: a JSON file, a CSV file
            with header ``id,weight``, or a dict. Every sample needs one.
        metadata: per-sample metadata, stored per row under ``meta/`` (see
            :func:`h5feed.read_metadata`): a CSV file with an ``id`` column
            and any other columns, or a dict ``{"id": [...], column:
            [...]}``. Columns of integers become int64, of other numbers
            float64 (empty cells NaN), anything else text. Every sample of
            the source needs exactly one row (with ``shard``, of the whole
            source), and no row may name another ID.
        append_to: instead of ``out``, a growing dataset to add the samples
            to (created when it does not exist), as :func:`h5feed.append`
            does; the new rows are written once, into its parts folder.

    Returns:
        A :class:`ConversionResult` with ``.path`` and ``.rows``.

    Raises:
        InvalidSampleIDError: an ID that would leave ``data_dir``.
        SourceError: missing folder, empty source, a labelled ID without a
            file, a file without a label, a partition ID without a file,
            overlapping splits, a bad label, an unreadable, truncated, object
            or mismatched ``.npy``, weights that miss a sample or name an ID
            without one, a weight that is not a finite number >= 0,
            metadata that misses a sample or names an ID without one.
        OutputExistsError: ``out`` exists (without ``overwrite``).
        WriterInputError: ``out`` cannot be written (its folder is missing
            or not writable, or it is a folder).
        DiskFullError, WriterError: writing failed.

    Example:
        >>> partition = {"train": ["id-1", "id-2", "id-3"], "validation": ["id-4"]}
        >>> labels = {"id-1": 0, "id-2": 1, "id-3": 2, "id-4": 1}
        >>> from_npy_dir("data", labels, "data.h5", partition=partition)  # doctest: +SKIP
        ConversionResult(path='/.../data.h5', rows=4, seconds=...)
    """
    options = Options(compression=compression, chunk_rows=chunk_rows, shuffle_rows=shuffle_rows, seed=seed,
                      workers=workers, overwrite=overwrite, checksum=checksum, quiet=quiet, progress=progress,
                      shard=shard, metadata=metadata, append_to=append_to)
    data_dir = os.fspath(data_dir)
    if not isinstance(no_labels, bool):
        raise TypeError(f"no_labels must be a bool. Received: {no_labels!r}")
    if no_labels and labels is not None:
        raise ValueError("pass either labels or no_labels=True, not both")
    if not no_labels and labels is None:
        raise ValueError("labels are required; pass no_labels=True to convert unlabelled samples")
    out = options.output(out)

    # 1. Every ID is checked before any sample file is opened.
    label_values: np.ndarray | None = None
    if labels is not None:
        labels_where, label_map = load_labels(labels)
        for sid in label_map:
            check_sample_id(sid, labels_where)
        label_values, n_classes = class_indices(labels_where, label_map, n_classes)
    splits: dict[str, list[str]] = {}
    if partition is not None:
        partition_where, splits = load_partition(partition)
        for members in splits.values():
            for sid in members:
                check_sample_id(sid, partition_where)

    # 2. The folder's files against the labels and the partition.
    files = _list_npy(data_dir)
    if not files:
        raise SourceError(f"{data_dir}: no .npy files (an empty source)")
    for sid, name in files.items():
        check_sample_id(sid, data_dir)
        check_inside(data_dir, name, sid, data_dir)
    if labels is not None:
        ids = list(label_map)
        unlabelled = sorted((s for s in files if s not in label_map), key=natural_key)
        if unlabelled:
            raise SourceError(
                f"{data_dir}: {len(unlabelled)} file(s) have no label in {labels_where}, "
                f"e.g. {some([s + SUFFIX for s in unlabelled])}"
            )
        missing = [s for s in ids if s not in files]
        if missing:
            raise SourceError(
                f"{labels_where}: {len(missing)} labelled ID(s) have no file in {data_dir}, "
                f"e.g. {some([s + SUFFIX for s in missing])}"
            )
    else:
        ids = sorted(files, key=natural_key)
    if splits:
        check_partition_ids(partition_where, splits, files, data_dir)
    weight_map = None
    if weights is not None:
        weights_where, weight_map = load_weights(weights)
        check_weights(weights_where, weight_map, ids, data_dir)

    # 3. Stream the samples, in row order, to the writer.
    order = options.select(ids, data_dir)
    ids = [ids[i] for i in order.tolist()]
    y = None if label_values is None else label_values[order]
    first_path = os.path.join(data_dir, files[ids[0]])
    with open(first_path, "rb") as fh:
        first = read_npy_header(fh, f"{first_path} (sample {ids[0]!r})")
    dtype = first.dtype.newbyteorder("=")
    step = block_rows(first.nbytes)

    def tasks() -> Iterator[_Task]:
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            yield _Task(tuple(os.path.join(data_dir, files[s]) for s in chunk), tuple(chunk),
                        first.shape, dtype.str, ids[0])

    def blocks() -> Iterator[tuple[list[str], np.ndarray, np.ndarray | None]]:
        if options.workers > 1:
            decoded: Iterator[np.ndarray] = ordered_map(_decode_block, tasks(), workers=options.workers)
        else:
            decoded = _prefetched(tasks(), (step, *first.shape), dtype)
        start = 0
        try:
            for block in decoded:
                k = block.shape[0]
                yield ids[start : start + k], block, None if y is None else y[start : start + k]
                start += k
        finally:
            close = getattr(decoded, "close", None)
            if close is not None:
                close()

    return write_dataset(
        out, blocks(), options=options, n_rows=len(ids), sample_shape=first.shape, dtype=dtype,
        target_dtype=None if y is None else np.int64, n_classes=None if y is None else n_classes,
        splits=splits, weights=weight_map, label=f"converting {data_dir}",
    )
