"""What every converter shares: options, labels and partitions, ID checks,
parallel decoding, and the one write loop.

Each source format (``npy.py``, ``images.py``, ``csv.py``, ``arrays.py``)
only lists its samples and decodes them into blocks of rows; this module
turns those blocks into a file through :class:`h5feed.DatasetWriter`, so
that every converter gets the same atomic output, progress and checks.

Parallel decoding: ``workers=N`` decodes blocks of samples in N processes
(``forkserver`` or ``spawn``, never ``fork``) while this process alone
writes; blocks come back in order, at most ``2 * N`` in flight. With
compression, the writer compresses whole chunks in N threads too
(``compress_threads``). See the design note ``docs/design/converting.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set as AbstractSet
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from h5feed import DatasetWriter, append
from h5feed._shared import (
    COMPRESSIONS,
    WEIGHTS_DATASET,
    MetaTable,
    Progress,
    check_bool,
    check_int,
    check_output,
    check_shard,
    discard,
    incoming_path,
    load_metadata,
    shard_of_keys,
)
from h5feed.errors import InvalidSampleIDError, SourceError, WorkerError

__all__ = [
    "ConversionResult",
    "Options",
    "check_inside",
    "check_sample_id",
    "check_weights",
    "load_labels",
    "load_partition",
    "load_weights",
    "natural_key",
    "ordered_map",
    "some",
    "weight_value",
    "write_dataset",
]

logger = logging.getLogger("h5feed")

ProgressCallback = Callable[[int, int], None]

# Rows are decoded and handed to the writer in blocks of about this many
# bytes (and at most _BLOCK_MAX_ROWS rows), big enough to amortise a worker
# round trip, small enough that a few blocks in flight stay well inside the
# memory budget.
_BLOCK_BYTES = 4 * 1024 * 1024
_BLOCK_MAX_ROWS = 1024
_COMPRESSIONS = (None, "none", *COMPRESSIONS)


@dataclass(frozen=True)
class ConversionResult:
    """What a conversion wrote.

    Attributes:
        path: the absolute path of the new file.
        rows: the number of samples written.
        seconds: the wall time the conversion took.
    """

    path: str
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Options:
    """The options every converter takes, normalised and checked once.

    See :func:`h5feed.convert.from_npy_dir` for their meaning.
    """

    compression: str | None = None
    chunk_rows: int | None = None
    shuffle_rows: bool = False
    seed: int = 0
    workers: int = 1
    overwrite: bool = False
    checksum: bool = False
    quiet: bool = True
    progress: ProgressCallback | None = None
    shard: tuple[int, int] | None = None
    metadata: MetaTable | None = None
    append_to: str | None = None

    def __post_init__(self) -> None:
        if self.compression not in _COMPRESSIONS:
            raise ValueError(
                f"compression must be None, 'none', 'gzip', 'lzf', 'zstd' or 'lz4'. Received: {self.compression!r}"
            )
        for name in ("shuffle_rows", "overwrite", "checksum", "quiet"):
            check_bool(getattr(self, name), name)
        check_int(self.seed, "seed", minimum=0)
        check_int(self.workers, "workers", minimum=1)
        check_int(self.chunk_rows, "chunk_rows", minimum=1, none_ok=True)
        if self.progress is not None and not callable(self.progress):
            raise TypeError(f"progress must be a callable(rows_done, rows_total) or None. Received: {self.progress!r}")
        if self.shard is not None:
            # frozen: normalised through object.__setattr__
            object.__setattr__(self, "shard", check_shard(self.shard))
        if self.metadata is not None:
            # Read and checked before any sample is: a bad table fails at once.
            object.__setattr__(self, "metadata", load_metadata(self.metadata, error=SourceError))
        if self.append_to is not None:
            if not isinstance(self.append_to, (str, os.PathLike)):
                raise TypeError(f"append_to must be a path or None. Received: {self.append_to!r}")
            if self.overwrite:
                raise ValueError("append_to (--append-to) adds rows to a dataset; overwrite (--overwrite) cannot apply")
            object.__setattr__(self, "append_to", os.path.abspath(os.fspath(self.append_to)))

    def output(self, out: str | os.PathLike[str] | None) -> str:
        """Where the converter writes, checked before any input is read:
        ``out``, or with ``append_to`` a new file in the growing dataset's
        parts folder, which :func:`write_dataset` then appends (moved, not
        copied: the new rows are written once).

        Raises:
            TypeError: neither ``out`` nor ``append_to``, or both.
            OutputExistsError, WriterInputError: ``out`` cannot be written.
        """
        if (out is None) == (self.append_to is None):
            raise TypeError("give the output file (out) or a growing dataset (append_to), one of the two")
        if self.append_to is None:
            return check_output(out, overwrite=self.overwrite)
        return incoming_path(self.append_to)

    def order(self, n: int) -> np.ndarray:
        """The order in which the ``n`` listed samples become rows."""
        if not self.shuffle_rows:
            return np.arange(n)
        return np.random.default_rng(self.seed).permutation(n)

    def select(self, ids: Sequence[str], where: str) -> np.ndarray:
        """The positions of the listed samples ``ids`` to write, in row order.

        All of them without ``shard``; with ``shard=(i, n)`` only the ``i``-th
        of ``n`` parts by sorted ID (``shard_of_keys``), in
        listing order. ``shuffle_rows`` then permutes them.

        The metadata table, if any, must hold exactly the listed samples
        (with ``shard``, those of the whole source).

        Raises:
            SourceError: the shard holds no samples; metadata that misses a
                listed sample or names an ID that is none.
        """
        if self.metadata is not None:
            self.metadata.check_covers(ids, where, SourceError)
        if self.shard is None:
            return self.order(len(ids))
        picked = shard_of_keys(ids, *self.shard)
        if picked.size == 0:
            raise SourceError(
                f"{where}: shard {self.shard[0]}/{self.shard[1]} holds no samples; "
                f"the source has only {len(ids)}"
            )
        return picked[self.order(picked.size)]


def some(items: Sequence[Any], n: int = 5) -> str:
    """The first few ``items`` as reprs, for messages about sets.

    Example:
        >>> some(["a", "b", "c"], 2)
        "'a', 'b', ..."
    """
    shown = ", ".join(repr(i) for i in list(items[:n]))
    return shown + (", ..." if len(items) > n else "")


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that puts ``id-2`` before ``id-10``.

    Example:
        >>> sorted(["id-10", "id-2", "id-1"], key=natural_key)
        ['id-1', 'id-2', 'id-10']
    """
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text) if p)


# --------------------------------------------------------------------------
# Sample IDs that name files.

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_sample_id(sample_id: Any, where: str) -> str:
    """Refuse an ID that is not safe as a file name inside the data folder.

    Called on every ID before any sample file is opened, so that an ID like
    ``../../etc/passwd`` never becomes a path.

    Raises:
        InvalidSampleIDError: not a str, empty, ``.`` or ``..``, holds a path
            separator, a NUL or another control character, or a drive.

    Example:
        >>> check_sample_id("id-1", "labels.json")
        'id-1'
        >>> check_sample_id("../x", "labels.json")
        Traceback (most recent call last):
        ...
        h5feed.errors.InvalidSampleIDError: labels.json: invalid sample ID '../x': holds a path separator ('/'); IDs name files inside the data folder
    """
    if not isinstance(sample_id, str):
        raise InvalidSampleIDError(
            f"{where}: invalid sample ID {sample_id!r}: expected text, not {type(sample_id).__name__}"
        )
    why = None
    if not sample_id:
        why = "it is empty"
    elif sample_id in (".", ".."):
        why = "it names a folder, not a file"
    elif _CONTROL.search(sample_id):
        why = f"holds the control character {_CONTROL.search(sample_id).group()!r}"  # type: ignore[union-attr]
    else:
        for sep in {"/", "\\", os.sep, os.altsep or "/"}:
            if sep in sample_id:
                why = f"holds a path separator ({sep!r}); IDs name files inside the data folder"
                break
        else:
            if os.path.isabs(sample_id) or os.path.splitdrive(sample_id)[0]:
                why = "it is an absolute path"
    if why:
        raise InvalidSampleIDError(f"{where}: invalid sample ID {sample_id!r}: {why}")
    return sample_id


def check_inside(folder: str, name: str, sample_id: str, where: str) -> None:
    """Refuse ``folder/name`` when a symbolic link takes it outside ``folder``.

    Only links are resolved (``os.path.realpath``: lstat and readlink, no
    open), so this costs nothing for ordinary files.

    Raises:
        InvalidSampleIDError: the path resolves outside ``folder``.
    """
    path = os.path.join(folder, name)
    if not os.path.islink(path):
        return
    root = os.path.realpath(folder)
    target = os.path.realpath(path)
    if os.path.commonpath([root, target]) != root:
        raise InvalidSampleIDError(
            f"{where}: invalid sample ID {sample_id!r}: {name!r} is a symbolic link to {target!r}, "
            f"outside the data folder {root!r}"
        )


# --------------------------------------------------------------------------
# Labels and partitions: JSON objects (the tutorial's dicts) or CSV tables.


def _reject_duplicate_keys(path: str, what: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    # json.load keeps the last of two equal keys without a word; a labels
    # file that lists an ID twice is a mistake we report instead.
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        dupes: list[str] = []
        for key, value in pairs:
            if key in seen:
                dupes.append(key)
            seen[key] = value
        if dupes:
            raise SourceError(f"{path}: {len(dupes)} duplicate {what} ID(s), e.g. {some(dupes)}")
        return seen

    return hook


def _is_json(path: str) -> bool:
    if path.lower().endswith(".json"):
        return True
    if path.lower().endswith((".csv", ".tsv", ".txt")):
        return False
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    return head.startswith(b"{")


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh, object_pairs_hook=_reject_duplicate_keys(path, what))
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text: {exc}") from exc


def _json_object_or_table(
    source: str | os.PathLike[str], kind: str, what: str, shape: str
) -> tuple[str, dict[str, Any] | None]:
    """``(path, object)`` for a JSON ``kind`` file, ``(path, None)`` for a CSV table.

    Raises:
        SourceError: the file is missing, or its JSON is invalid, repeats a
            key ("duplicate ``what`` ID(s)") or is not an object ``shape``.
    """
    where = os.fspath(source)
    if not os.path.isfile(where):
        raise SourceError(f"{where}: no such {kind} file")
    if not _is_json(where):
        return where, None
    obj = _read_json(where, what)
    if not isinstance(obj, dict):
        raise SourceError(f"{where}: expected a JSON object {shape}. Received: a JSON {type(obj).__name__}")
    return where, obj


def _read_table(path: str, columns: tuple[str, str]) -> Iterator[tuple[int, str, str]]:
    """Yield ``(line, first, second)`` from a CSV whose header is ``columns``."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header] != list(columns):
                raise SourceError(
                    f"{path}: expected a CSV with the header {','.join(columns)!r}. Received: "
                    f"{','.join(header) if header else 'an empty file'!r}"
                )
            for row in reader:
                if not row:
                    continue
                if len(row) != 2:
                    raise SourceError(
                        f"{path}, line {reader.line_num}: expected 2 values ({','.join(columns)}). Received: {row!r}"
                    )
                yield reader.line_num, row[0].strip(), row[1].strip()
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text: {exc}") from exc


def _by_id(
    source: str | os.PathLike[str] | Mapping[str, Any], kind: str, column: str, adjective: str
) -> tuple[str, dict[str, Any]]:
    """``{ID: value}`` from a JSON object, a CSV with header ``id,<column>``, or a dict.

    The one reader of files by sample ID: labels and weights. Values are
    returned as found (from JSON as typed, from CSV as text); IDs keep the
    file's order.

    Raises:
        SourceError: unreadable, not a JSON object, a bad CSV header, an ID
            given twice ("duplicate <adjective> ID(s)"), or nothing at all.
    """
    if isinstance(source, Mapping):
        where = kind
        result = dict(source)
    else:
        where, obj = _json_object_or_table(source, kind, adjective, f"{{ID: {column}}}")
        if obj is not None:
            result = obj
        else:
            result = {}
            dupes: list[str] = []
            for _, sid, value in _read_table(where, ("id", column)):
                if sid in result:
                    dupes.append(sid)
                result[sid] = value
            if dupes:
                raise SourceError(f"{where}: {len(dupes)} duplicate {adjective} ID(s), e.g. {some(dupes)}")
    if not result:
        raise SourceError(f"{where}: holds no {kind} (an empty source)")
    return where, result


def load_labels(labels: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Read labels ``{ID: label}`` from a JSON object, a CSV ``id,label``, or a dict.

    The values are returned as found (ints from JSON, text from CSV); the
    caller decides what a valid label is. IDs keep the file's order.

    Returns:
        ``(where, labels)``: a name for messages and the labels.

    Raises:
        SourceError: unreadable, not a JSON object, a bad CSV header, a
            duplicate ID, or no labels at all.
    """
    return _by_id(labels, "labels", "label", "labelled")


def load_weights(weights: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """Read sample weights ``{ID: weight}`` from a JSON object, a CSV ``id,weight``, or a dict.

    Returns:
        ``(where, weights)``: a name for messages and the weights, as floats.

    Raises:
        SourceError: unreadable, not a JSON object, a bad CSV header, a
            duplicate ID, a weight that is not a finite number >= 0, or no
            weights at all.
    """
    where, raw = _by_id(weights, "weights", "weight", "weighted")
    return where, {sid: weight_value(value, f"{where}: sample {sid!r}") for sid, value in raw.items()}


def weight_value(value: Any, where: str) -> float:
    """One sample weight as a float: a finite number >= 0 (text from a CSV too).

    Raises:
        SourceError: not a number (bools are not), not finite, or negative.
    """
    if isinstance(value, (bool, np.bool_)):
        number = None
    else:
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            number = None
    if number is None or not np.isfinite(number) or number < 0:
        raise SourceError(f"{where}: expected a sample weight, a finite number >= 0. Received: {value!r}")
    return number


def check_weights(where: str, weights: Mapping[str, float], ids: Sequence[str], source: str) -> None:
    """Refuse weights that do not cover the samples exactly.

    Raises:
        SourceError: a sample without a weight, or a weight for an ID that
            is no sample (the count and the first few IDs).
    """
    missing = [sid for sid in ids if sid not in weights]
    if missing:
        raise SourceError(f"{where}: {len(missing)} sample(s) of {source} have no weight, e.g. {some(missing)}")
    known = set(ids)
    unknown = [sid for sid in weights if sid not in known]
    if unknown:
        raise SourceError(f"{where}: {len(unknown)} weighted ID(s) have no sample in {source}, e.g. {some(unknown)}")


def load_partition(partition: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, dict[str, list[str]]]:
    """Read a partition ``{split: [IDs]}`` from JSON, a CSV ``id,split``, or a dict.

    Returns:
        ``(where, partition)``.

    Raises:
        SourceError: unreadable, a bad split name, an ID that is not text, an
            ID listed twice within a split or in two splits.
    """
    if isinstance(partition, Mapping):
        where = "partition"
        raw = dict(partition)
    else:
        where, obj = _json_object_or_table(partition, "partition", "split", "{split: [IDs]}")
        if obj is not None:
            raw = obj
        else:
            raw = {}
            for _, sid, split in _read_table(where, ("id", "split")):
                raw.setdefault(split, []).append(sid)
    result: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    overlaps: list[str] = []
    for name, members in raw.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise SourceError(f"{where}: split names must be non-empty text without '/'. Received: {name!r}")
        if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
            raise SourceError(f"{where}: split {name!r} must be a list of IDs. Received: {members!r}")
        members = list(members)
        twice = [sid for sid, count in _counts(members).items() if count > 1]
        if twice:
            raise SourceError(f"{where}: split {name!r} lists {len(twice)} ID(s) twice, e.g. {some(twice)}")
        for sid in members:
            if not isinstance(sid, str):
                raise SourceError(f"{where}: split {name!r}: sample IDs must be text. Received: {sid!r}")
            if sid in owner:
                overlaps.append(sid)
            owner[sid] = name
        result[name] = members
    if overlaps:
        raise SourceError(
            f"{where}: {len(overlaps)} ID(s) are in more than one split, e.g. {some(overlaps)}"
        )
    return where, result


def _counts(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def check_partition_ids(where: str, partition: Mapping[str, Sequence[str]], known: Iterable[str], source: str) -> None:
    """Refuse partition IDs that are not samples of the source.

    ``known``: the source's IDs; a set (any ``collections.abc.Set``) or a
    mapping is asked directly, anything else is made a set first.

    Raises:
        SourceError: with the count and the first few unknown IDs.
    """
    known_set = known if isinstance(known, (AbstractSet, Mapping)) else set(known)
    missing = [sid for members in partition.values() for sid in members if sid not in known_set]
    if missing:
        raise SourceError(f"{where}: {len(missing)} partition ID(s) have no sample in {source}, e.g. {some(missing)}")


def class_indices(where: str, labels: Mapping[str, Any], n_classes: int | None) -> tuple[np.ndarray, int]:
    """Labels as int64 class indices, checked against ``[0, n_classes)``.

    ``n_classes`` defaults to the largest label plus one.

    Raises:
        SourceError: a label that is not an integer (bools and 1.5 are not;
            text like ``"3"`` from a CSV is), or one outside the range.
    """
    values = np.empty(len(labels), dtype=np.int64)
    for i, (sid, label) in enumerate(labels.items()):
        value = _as_class_index(label)
        if value is None:
            raise SourceError(
                f"{where}: sample {sid!r}: expected an integer class index as its label. Received: {label!r}"
            )
        values[i] = value
    if n_classes is not None:
        check_int(n_classes, "n_classes", minimum=1)
    limit = int(values.max()) + 1 if n_classes is None else int(n_classes)
    bad = np.flatnonzero((values < 0) | (values >= limit))
    if bad.size:
        ids = list(labels)
        first = int(bad[0])
        raise SourceError(
            f"{where}: sample {ids[first]!r}: class index {int(values[first])!r} is outside [0, {limit})"
            + (f" ({bad.size} labels are outside)" if bad.size > 1 else "")
        )
    return values, limit


def _as_class_index(label: Any) -> int | None:
    if isinstance(label, (bool, np.bool_)):
        return None
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, str) and re.fullmatch(r"[+-]?\d+", label.strip()):
        return int(label)
    return None


# --------------------------------------------------------------------------
# Parallel decoding (see the module docstring).


# Modules the forkserver imports once, so that each worker it forks starts
# with them loaded instead of importing numpy, h5py and Pillow anew.
_PRELOAD = ["h5feed.convert.npy", "h5feed.convert.images", "h5feed.convert.csv"]


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)  # no effect once the server runs
        return ctx
    return multiprocessing.get_context("spawn")


def ordered_map(fn: Callable[[Any], Any], tasks: Iterable[Any], *, workers: int) -> Iterator[Any]:
    """Yield ``fn(task)`` for each task, in order.

    With ``workers > 1`` the calls run in that many processes, with at most
    ``2 * workers`` tasks in flight; ``fn`` must be a module-level function
    and tasks must pickle. An exception raised by ``fn`` is raised here.

    Raises:
        WorkerError: a worker process died (killed, out of memory).
    """
    if workers > 1 and not _main_is_importable():
        logger.warning(
            "decoding in this process: worker processes must re-import the main module, "
            "and %r is not a file (run the script from a file, or use workers=1)", _main_file()
        )
        workers = 1
    if workers <= 1:
        for task in tasks:
            yield fn(task)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context())
    try:
        pending: deque[Any] = deque()
        it = iter(tasks)
        try:
            for task in it:
                pending.append(pool.submit(fn, task))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                result = pending.popleft().result()
                for task in it:
                    pending.append(pool.submit(fn, task))
                    break
                yield result
        except BrokenProcessPool as exc:
            raise WorkerError(
                "a decoding worker process died: it was killed, ran out of memory, or the main "
                "module starts a conversion when imported (worker processes import it: put the call "
                f"under `if __name__ == \"__main__\":`); nothing was written. ({exc})"
            ) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _main_file() -> str | None:
    return getattr(sys.modules.get("__main__"), "__file__", None)


def _main_is_importable() -> bool:
    # spawn and forkserver children re-run the parent's main module from its
    # path; a main read from stdin ("<stdin>") cannot be, and the pool breaks.
    path = _main_file()
    return path is None or os.path.exists(path)


def block_rows(row_nbytes: int) -> int:
    """Rows per decoding block for rows of ``row_nbytes`` bytes."""
    return max(1, min(_BLOCK_MAX_ROWS, _BLOCK_BYTES // max(1, row_nbytes)))


# --------------------------------------------------------------------------
# The one write loop.

Block = tuple[Sequence[str], Any, Any]


def write_dataset(
    out: str | os.PathLike[str],
    blocks: Iterable[Block],
    *,
    options: Options,
    n_rows: int,
    sample_shape: tuple[int, ...],
    dtype: Any,
    target_shape: tuple[int, ...] = (),
    target_dtype: Any = "int64",
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    splits: Mapping[str, Sequence[str] | np.ndarray] | None = None,
    weights: Mapping[str, float] | None = None,
    label: str = "converting",
    virtual: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> ConversionResult:
    """Write ``blocks`` of ``(ids, xs, ys)`` as one h5feed file.

    The output appears under ``out`` only when every block was written and
    the splits resolved; on any error nothing is left behind. ``weights``
    (by sample ID, checked by :func:`check_weights`) are written as the
    float32 dataset ``w``.

    ``splits`` are ``{name: IDs}`` (with ``shard``, only the IDs written
    count) or ``{name: int array of output rows}`` (taken as they are).
    ``virtual`` makes columns virtual datasets over source datasets (see
    :class:`h5feed.DatasetWriter`): their rows, given in the blocks, are
    hashed, not written.

    Raises:
        SampleError, SourceError, WriterError: bad input or a failed write.
    """
    start = time.perf_counter()
    # Contiguous x (the fastest layout to read) needs the row count up front;
    # an explicit --chunk-rows asks for chunked storage instead.
    expected = None if options.chunk_rows is not None else n_rows
    writer = DatasetWriter(
        out,
        sample_shape=sample_shape,
        dtype=dtype,
        target_shape=target_shape,
        target_dtype=target_dtype,
        n_classes=n_classes,
        class_names=class_names,
        expected_rows=expected,
        compression=options.compression,
        chunk_rows=options.chunk_rows,
        checksum=options.checksum,
        overwrite=options.overwrite,
        virtual=virtual,
        compress_threads=options.workers,
        extras=None if weights is None else {WEIGHTS_DATASET: ((), np.float32)},
    )
    bar = Progress(n_rows, label, enabled=not options.quiet)
    try:
        # A shard's splits keep only the shard's own members.
        written: set[str] | None = set() if options.shard is not None else None
        with writer, bar:
            for ids, xs, ys in blocks:
                if weights is None:
                    writer.extend(ids, xs, ys)
                else:
                    ws = np.fromiter((weights[sid] for sid in ids), dtype=np.float32, count=len(ids))
                    writer.extend(ids, xs, ys, **{WEIGHTS_DATASET: ws})
                if written is not None:
                    written.update(ids)
                bar.update(len(ids))
                if options.progress is not None:
                    options.progress(writer.rows, n_rows)
            if writer.rows != n_rows:
                raise SourceError(f"{writer.path}: {n_rows} samples were listed but {writer.rows} were decoded")
            for name, members in (splits or {}).items():
                if written is not None and not isinstance(members, np.ndarray):
                    members = [m for m in members if m in written]
                writer.add_split(name, members)
            if options.metadata is not None:
                table = options.metadata
                writer.set_metadata(table if written is None else table.subset(sorted(written)))
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:  # stop the decoding workers at once on error
            close()
    if options.append_to is None:
        return ConversionResult(path=writer.path, rows=writer.rows, seconds=time.perf_counter() - start)
    try:
        source = label.split(" ", 1)[-1]  # "converting data/" names the source
        append(options.append_to, writer.path, _move=True, _shown=f"the samples of {source}")
    finally:
        discard(writer.path)  # gone once appended; an append that failed leaves nothing
    return ConversionResult(path=options.append_to, rows=writer.rows, seconds=time.perf_counter() - start)


def gather_blocks(
    x: Any, y: Any, ids: Sequence[str], order: np.ndarray, step: int
) -> Iterator[Block]:
    """Blocks of ``(ids, x rows, y rows)`` in ``order``, from arrays that may
    be memory-mapped: each block is read with its rows sorted (so a mapped
    file is read forwards) and then put in ``order``. In order, an ``x``
    with a ``block(start, stop)`` method gives its rows as it returns them
    (a :class:`~h5feed.writer.RowBlock`, read by the writer itself)."""
    n = len(order)
    in_order = bool(np.array_equal(order, np.arange(n)))
    block = getattr(x, "block", None)
    for start in range(0, n, step):
        stop = min(n, start + step)
        if in_order:
            xs = x[start:stop] if block is None else block(start, stop)
            yield ids[start:stop], xs, None if y is None else y[start:stop]
            continue
        rows = order[start:stop]
        sorted_rows = np.sort(rows)
        back = np.searchsorted(sorted_rows, rows)
        xs = np.asarray(x[sorted_rows])[back]
        ys = None if y is None else np.asarray(y[sorted_rows])[back]
        yield [ids[i] for i in rows.tolist()], xs, ys
