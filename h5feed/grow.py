"""``h5feed append`` and ``h5feed compact``: datasets that grow.

NOTE [ Grown files ]
A grown file ``DATA.h5`` is an index over standalone part files in
``DATA.h5.parts/`` (``layout.parts_folder``): the per-row datasets, the IDs
and the metadata are virtual datasets over the parts' own, in order; it has
no ID index (a lookup searches each part's, ``_ids.locate``); each split is
a virtual dataset over split files (``NNNNNN.splits.h5``, one per append:
the split rows it added, in the dataset's row numbers); its completion
record lists the parts and split files and the SHA-256 of each one's own
record (``part_records``, ``split_records``) instead of digests of the rows.
An append never reads, copies or hashes an old part, its IDs or its split
rows, and never changes or removes one: it writes the new part, its split
file, and an index whose size grows with the number of parts only. Its only change to
``DATA.h5`` is the final rename of the new index over it, under a lock on
the parts folder. The layout, the trust rule, each step and what a
killed append leaves: the design note ``docs/design/grown-files.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import h5py
import numpy as np

from . import _ids, _record
from . import layout as L
from ._damage import read_whole, touching
from ._files import open_h5
from ._heap import check_dataset
from ._proc import pid_alive
from ._progress import Progress
from ._publish import (
    TMP_SUFFIX,
    _fsync_folder,
    check_output,
    create_h5,
    discard,
    publish,
    remove_stale_temporaries,
    sigint_deferred,
    temporary_path,
)
from .errors import LayoutError, NotH5FeedFileError, WriterError, WriterInputError
from .merge import _check_compatible, _Part, _read_ids, _row_in_part, _stream_parts, _unique_ids, _writer_like
from .writer import _slice

__all__ = ["COMMANDS", "append", "compact", "incoming_path", "is_grown"]

logger = logging.getLogger("h5feed")

_PART_NAME = re.compile(r"^[0-9]{6}\.h5$")
# A split file: the split rows one append added, in the dataset's row
# numbers (NOTE [ Grown files ]); named after the first part that append placed.
_SPLIT_FILE_NAME = re.compile(r"^[0-9]{6}\.splits\.h5$")
# incoming_path's names: incoming.HOST.PID.RANDOM.h5, so that the next
# append can tell those of dead writers.
_INCOMING = "incoming"
_INCOMING_NAME = re.compile(r"^incoming\.(?P<host>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]+\.h5$")


def is_grown(layout: L.Layout) -> bool:
    """Whether ``layout`` is a grown file's (see NOTE [ Grown files ])."""
    return "part_records" in layout.completion


@contextlib.contextmanager
def _locked(data: str) -> Iterator[str]:
    """Hold the exclusive lock on ``data``'s parts folder (created if
    missing); yield the folder. Appends and compactions of one file take
    turns; the lock goes with the process, so a killed one leaves none."""
    import fcntl  # POSIX only: imported here so that `import h5feed` works elsewhere

    folder = L.parts_folder(data)
    while True:
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY)
        except OSError as exc:
            raise WriterInputError(f"{data}: cannot create or open its parts folder {folder}: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.warning("%s: another append or compact is running; waiting for it", data)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            raise WriterError(
                f"{data}: cannot lock its parts folder {folder} ({exc.strerror}); appends would not be "
                "safe from each other here"
            ) from exc
        # A compaction that held the lock before us removed the folder: lock the new one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(folder))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield folder
    finally:
        # Left empty (a refused first append): gone again. A waiting append
        # notices and locks the folder it creates anew.
        with contextlib.suppress(OSError):
            os.rmdir(folder)
        os.close(fd)


def incoming_path(data: str | os.PathLike[str]) -> str:
    """A new temporary name in ``data``'s parts folder (created if missing)
    for a file to append with ``_move=True``: a converter's ``append_to``
    writes its output there, so that appending renames it instead of
    copying it. Leftovers of killed writers are removed by the next append."""
    target = os.path.abspath(os.fspath(data))
    folder = L.parts_folder(target)
    if not os.path.isdir(os.path.dirname(target)):
        raise WriterInputError(f"{target}: its folder {os.path.dirname(target)} does not exist")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise WriterInputError(f"{target}: cannot create its parts folder {folder}: {exc.strerror}") from exc
    name = f"{_INCOMING}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.h5"
    return os.path.join(folder, name)


def _open_incoming(path: str) -> _Part:
    if not os.path.isfile(path):
        raise NotH5FeedFileError(f"{path}: " + ("is a folder, expected an h5feed file" if os.path.isdir(path) else "no such file"))
    with open_h5(path) as f:
        layout = L.validate(f, allow_virtual=True)
        if any(col.sources for col in layout.columns.values()):
            raise WriterInputError(
                f"{path}: holds virtual datasets; append takes standalone h5feed files "
                "(write one with `h5feed merge --copy` or `h5feed compact`)"
            )
        splits = {name: L.read_split(f, name) for name in layout.splits}
    return _Part(path, layout, splits)


class _Current(NamedTuple):
    """What an append keeps of the dataset it grows."""

    part: _Part  # its splits: those stored in it
    parts: list[str]  # its parts, relative to its folder ([] for a standalone file)
    split_files: list[str]  # its split files, likewise
    # Each virtual split's (split file, rows), in order: mapped again as they are.
    split_sources: dict[str, list[tuple[str, int]]]


def _open_current(data: str) -> _Current:
    """``data``, validated. A grown file's virtual splits stay in its split
    files, which the new index maps again (NOTE [ Grown files ]): only their
    mappings are read."""
    with open_h5(data) as f:
        layout = L.validate(f)
        splits, sources = {}, {}
        for name in layout.splits:
            dset = L.split_dataset(f, name)
            if dset.is_virtual:
                spans = [(m.file_name, L.mapped_rows(m)) for m in dset.virtual_sources()]
                sources[name] = [(file, last - first + 1) for file, (first, last, *_) in spans]
            else:
                splits[name] = L.read_split(f, name)
    part = _Part(data, layout, splits)
    if is_grown(layout):
        return _Current(part, list(layout.completion["parts"]), L.grown_split_files(layout.completion), sources)
    if any(col.sources for col in layout.columns.values()):  # pragma: no cover - validate refuses these without the flag
        raise WriterInputError(f"{data}: holds virtual datasets; compact it or `h5feed merge --copy` it first")
    return _Current(part, [], [], {})


def _remove_unlisted(folder: str, listed: Sequence[str]) -> None:
    """Remove what killed appends left in the parts folder: part and split
    files the current file does not list, and temporary files of dead writers."""
    keep = {os.path.basename(name) for name in listed}
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if (_PART_NAME.match(name) or _SPLIT_FILE_NAME.match(name)) and name not in keep:
            with contextlib.suppress(OSError):
                os.unlink(path)
                logger.info("removed %s, placed by an append that did not finish", path)
        elif name.endswith(TMP_SUFFIX) and name.startswith("."):
            remove_stale_temporaries(os.path.join(folder, name[1:].split(".h5.", 1)[0] + ".h5"))
        elif (m := _INCOMING_NAME.match(name)) and m["host"] == socket.gethostname():
            pid = int(m["pid"])
            if pid != os.getpid() and not pid_alive(pid):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    logger.info("removed %s, converted by a process that died before appending it", path)


def _next_name(folder: str) -> str:
    taken = [int(n[:6]) for n in os.listdir(folder) if _PART_NAME.match(n)]
    return f"{max(taken, default=-1) + 1:06d}.h5"


def _copy_in(source: str, target: str, *, move: bool) -> None:
    """Give ``target`` the content of ``source``, synced, atomically:
    renamed when ``move`` (and on the same filesystem), else copied."""
    if move:
        try:
            os.replace(source, target)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    tmp = temporary_path(target)
    try:
        shutil.copyfile(source, tmp)
        publish(tmp, target, overwrite=False)
    except BaseException:
        discard(tmp)
        raise
    if move:
        os.unlink(source)


def _link_in(source: str, target: str) -> None:
    """``target`` as a second name of ``source`` (no copy), or a copy where
    the filesystem has no hard links."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        logger.info("%s: no hard links here (%s); copying it into its parts folder", source, exc.strerror)
        _copy_in(source, target, move=False)


def append(
    data: str | os.PathLike[str],
    *new: str | os.PathLike[str],
    progress: bool = False,
    _move: bool = False,
    _shown: str | None = None,
) -> str:
    """Append the rows of h5feed files to the dataset ``data``, which grows.

    After it, ``data`` holds its old rows followed by each new file's, in
    order; each split is the union of the same-named splits. The old rows
    and their IDs are never copied or re-read; the new IDs are looked up in
    the old parts' indexes, and only the list of parts and the splits are
    written again (see NOTE [ Grown files ]). ``data`` is created when it does not exist. It
    opens like any h5feed file; :func:`compact` makes it one standalone file
    again.

    Args:
        data: the growing dataset.
        *new: h5feed files (made by a converter or the writer; not virtual),
            in the order their rows should follow.
        progress: report the new rows checked on stderr.

    Returns:
        The path of ``data``.

    Raises:
        LayoutError: the files disagree with ``data`` (datasets, row shapes,
            dtypes, classes, metadata columns), a sample ID repeats (named,
            with its files), or a new file is damaged.
        FormatError: ``data`` or a new file is not a valid h5feed file.
        WriterInputError: no new file, a file given twice, ``data`` among
            them, or a new file with virtual datasets.
        WriterError: the parts folder cannot be locked, or writing failed.

        In every case ``data`` is left as it was.

    Example:
        >>> append("all.h5", "2026-12-01.h5")  # doctest: +SKIP
        >>> H5Sequence("all.h5", "train")  # doctest: +SKIP
    """
    target = os.path.abspath(os.fspath(data))
    if not new:
        raise WriterInputError(f"{target}: append needs at least one file to append")
    news = [os.path.abspath(os.fspath(p)) for p in new]
    repeated = sorted({p for p in news if news.count(p) > 1})
    if repeated:
        raise WriterInputError(f"{target}: each file may be appended once; repeated: {repeated!r}")
    if target in news:
        raise WriterInputError(f"{target}: cannot be appended to itself")
    check_output(target, overwrite=True)
    with _locked(target) as folder:
        return _append_locked(target, folder, news, progress=progress, move=_move, shown=_shown)


def _append_locked(target: str, folder: str, news: list[str], *, progress: bool, move: bool, shown: str | None) -> str:
    kept = _open_current(target) if os.path.exists(target) else None
    current = kept.part if kept is not None else None
    listed = kept.parts if kept is not None else []
    split_files = kept.split_files if kept is not None else []
    incoming = [_open_incoming(p) for p in news]
    if shown is not None:  # a converter's output, named by its source
        for part in incoming:
            part.shown = shown
    loaded = ([current] if current is not None else []) + incoming
    _check_compatible(loaded)
    names = list(loaded[0].layout.metadata)
    for part in loaded[1:]:
        if list(part.layout.metadata) != names:
            raise LayoutError(
                f"{part.where}: has metadata columns {list(part.layout.metadata)!r}, but {loaded[0].where} has "
                f"{names!r}; they must have the same columns"
            )
    offset = 0
    for part in loaded:
        part.offset = offset
        offset += part.layout.n_rows
    new_ids = _check_new_ids(current, incoming)
    bounds = _current_bounds(current, [os.path.join(os.path.dirname(target), p) for p in listed])
    at = 0
    for part in incoming:
        bounds.append(_bounds_of(_slice(new_ids, at, at + part.layout.n_rows)))
        at += part.layout.n_rows
    meta_dtypes = _joined_metadata_dtypes(current, incoming)
    _remove_unlisted(folder, listed + split_files)
    base = os.path.dirname(target)
    placed: list[str] = []
    try:
        if current is not None and not listed:
            name = os.path.join(folder, _next_name(folder))
            _link_in(target, name)
            placed.append(name)
        n_new = sum(p.layout.n_rows for p in incoming)
        with Progress(n_new, f"appending to {os.path.basename(target)}", enabled=progress) as bar:
            for part in incoming:
                name = os.path.join(folder, _next_name(folder))
                _copy_in(part.path, name, move=move)
                placed.append(name)
                if not move:  # a copy: check it against its own record
                    copied = _Part(name, part.layout, part.splits)
                    _stream_parts([copied], list(part.layout.columns), bar, lambda *_: None)
                else:
                    part.path = name  # its metadata is read from where it now lies
                    bar.update(part.layout.n_rows)
        parts = [os.path.join(base, p) for p in listed] + placed
        split_paths = [os.path.join(base, p) for p in split_files]
        split_sources = {name: list(sources) for name, sources in (kept.split_sources if kept else {}).items()}
        written = _write_split_file(placed[0], loaded, n_rows=offset)
        if written is not None:
            path, counts = written
            placed.append(path)
            split_paths.append(path)
            for name, rows in counts.items():
                split_sources.setdefault(name, []).append((L.source_name(path, base), rows))
        _fsync_folder(folder)  # the parts' and split files' names durable before the index that lists them
        _write_index(target, parts, loaded, meta_dtypes, bounds, split_paths, split_sources)
    except BaseException:
        with sigint_deferred():
            for name in placed:
                with contextlib.suppress(OSError):
                    os.unlink(name)
        raise
    logger.info("appended %d rows from %d files to %s", offset - (current.layout.n_rows if current else 0), len(news), target)
    return target


def _check_new_ids(current: _Part | None, incoming: list[_Part]) -> _ids.Encoded:
    """The new files' IDs, in order, which must be unique among them and new
    to the dataset.

    Each new file's IDs are read once and checked against its record; the
    dataset's are never read: each is looked up in its index (a grown
    file's: each part's, ``_ids.locate``), O(parts x k log N).

    Raises:
        LayoutError: an ID repeats, named with its files and rows.
    """
    new = _ids.Encoded.concat([_read_ids(part) for part in incoming])
    if current is not None:
        with open_h5(current.path) as f:
            rows = _ids.locate(f, new, current.layout.completion)
        hit = np.flatnonzero(rows >= 0)
        if hit.size:
            shown = []
            for i in hit[:5].tolist():
                part, row = _row_in_part(incoming, i)
                shown.append(f"{new.item(i)!r} in {current.where} (row {int(rows[i])}) and {part.where} (row {row})")
            raise LayoutError(f"sample IDs must be unique across parts; {hit.size} repeat: " + "; ".join(shown))
    return _unique_ids(incoming, new)


def _bounds_of(ids: _ids.Encoded) -> tuple[bytes, bytes]:
    """The smallest and the largest of ``ids`` (UTF-8 byte order)."""
    order = _ids.argsort(ids)
    lo, hi = int(order[0]), int(order[-1])
    return (ids.data[ids.starts[lo] : ids.ends[lo]].tobytes(), ids.data[ids.starts[hi] : ids.ends[hi]].tobytes())


def _file_bounds(path: str) -> tuple[bytes, bytes]:
    """:func:`_bounds_of` the IDs of a standalone file: the ends of its
    sorted index, or its IDs read in blocks when it has none."""
    with open_h5(path) as g:
        index = _ids.sorted_in_file(g, _record.read_record(g))
        if index is not None:
            starts, ends = index.span(np.array([0, index.n - 1], dtype=np.int64))
            return tuple(index.data[int(a) : int(b)].tobytes() for a, b in zip(starts, ends))  # type: ignore[return-value]
        return _bounds_of(_ids.Encoded.concat([block for _, block in _ids.blocks(g[L.IDS])]))


def _current_bounds(current: _Part | None, listed: list[str]) -> list[tuple[bytes, bytes]]:
    """The bounds of the dataset's parts (``listed``: their paths), as its
    index holds them, or found in each part; one for a standalone file."""
    if current is None:
        return []
    if not is_grown(current.layout):
        return [_file_bounds(current.path)]
    with open_h5(current.path) as f:
        held = _ids.part_bounds(f, current.layout.completion)
    if held is None:
        return [_file_bounds(p) for p in listed]
    first, last = held
    return [
        (first.data[first.starts[i] : first.ends[i]].tobytes(), last.data[last.starts[i] : last.ends[i]].tobytes())
        for i in range(len(listed))
    ]


def _joined_metadata_dtypes(current: _Part | None, incoming: list[_Part]) -> dict[str, np.dtype]:
    """The dtype of each metadata column of the grown file: text, int64, or
    float64 when some file stores the column as float64 (HDF5 converts the
    others' integers as it reads them through the virtual dataset)."""
    files = ([] if current is None else [current]) + incoming
    kinds: dict[str, dict[str, np.dtype]] = {}
    for part in files:
        with open_h5(part.path) as f:
            for name in part.layout.metadata:
                with touching(part.path, f"/{L.meta_path(name)}"):
                    kinds.setdefault(name, {})[part.where] = f[L.meta_path(name)].dtype
    joined = {}
    for name, dtypes in kinds.items():
        text = {where for where, dt in dtypes.items() if dt.kind == "O"}
        if text and len(text) != len(dtypes):
            numbers = sorted(set(dtypes) - text)
            raise LayoutError(
                f"metadata column {name!r} holds text in {sorted(text)[0]} and numbers in {numbers[0]}; "
                "they must agree"
            )
        if text:
            joined[name] = np.dtype(h5py.string_dtype("utf-8"))
        elif any(dt.kind == "f" for dt in dtypes.values()):
            joined[name] = np.dtype(np.float64)
        else:
            joined[name] = np.dtype(np.int64)
    return joined


def _write_split_file(first_part: str, loaded: list[_Part], *, n_rows: int) -> tuple[str, dict[str, int]] | None:
    """Write the split rows that ``loaded`` hold (the new files', and the
    current file's when its splits are stored in it), in the dataset's row
    numbers, as the split file named after ``first_part`` (the first part
    this append placed). Atomic, like a part. Returns its path and the rows
    of each split in it; None when there are none."""
    splits: dict[str, list[np.ndarray]] = {}
    for part in loaded:
        for name, rows in part.splits.items():
            if rows.size:
                splits.setdefault(name, []).append(rows + part.offset)
    if not splits:
        return None
    target = first_part[: -len(".h5")] + ".splits.h5"
    tmp = temporary_path(target)
    try:
        with create_h5(tmp, libver=("earliest", "latest")) as f:
            digests = {}
            for name, blocks in sorted(splits.items()):
                rows = np.concatenate(blocks).astype(np.int64)
                f.create_dataset(f"{L.SPLITS}/{name}", data=rows)
                digests[f"{L.SPLITS}/{name}"] = _record.digest_of(rows)
            _record.write_record(f, n_rows, digests)
        publish(tmp, target, overwrite=False)
    except BaseException:
        with sigint_deferred():
            discard(tmp)
        raise
    return target, {name: sum(b.size for b in blocks) for name, blocks in splits.items()}


def _write_index(
    target: str, parts: list[str], loaded: list[_Part], meta_dtypes: dict[str, np.dtype],
    bounds: list[tuple[bytes, bytes]], split_paths: list[str], split_sources: dict[str, list[tuple[str, int]]],
) -> None:
    """Write the grown file over ``parts`` (paths, in row order) and rename it
    over ``target``: every per-row dataset, the IDs and the metadata virtual
    over the parts' own, each split virtual over the split files'
    (``split_sources``: each split's (split file, rows), in order; a split
    of no rows, stored empty), and a record of the parts' and split files'
    records (NOTE [ Grown files ]). Its size grows with the number of parts
    and split files, not with the rows' data, IDs or split rows."""
    first = loaded[0].layout
    base = os.path.dirname(target)
    counts = _part_rows(parts, loaded)
    n_rows = sum(counts)
    names = [L.source_name(p, base) for p in parts]
    tmp = temporary_path(target)
    try:
        with create_h5(tmp, libver=("earliest", "latest")) as f:
            L.write_attributes(f, n_classes=first.n_classes, class_names=first.class_names)
            datasets = {name: (col.row_shape, col.dtype) for name, col in first.columns.items()}
            datasets[L.IDS] = ((), np.dtype(h5py.string_dtype("utf-8")))
            datasets.update({L.meta_path(name): ((), dt) for name, dt in meta_dtypes.items()})
            mappings = {name: list(zip(names, counts)) for name in datasets}
            for name, sources in split_sources.items():
                datasets[f"{L.SPLITS}/{name}"] = ((), np.dtype(np.int64))
                mappings[f"{L.SPLITS}/{name}"] = sources
            for dataset, (row_shape, dtype) in datasets.items():
                total = sum(rows for _, rows in mappings[dataset])
                vlayout = h5py.VirtualLayout(shape=(total, *row_shape), dtype=dtype)
                at = 0
                for name, rows in mappings[dataset]:
                    vlayout[at : at + rows] = h5py.VirtualSource(name, dataset, shape=(rows, *row_shape))
                    at += rows
                f.create_virtual_dataset(dataset, vlayout)
            digests = {}
            # A split without rows (HDF5 maps no empty source) is stored empty.
            for name in sorted({name for part in loaded for name in part.splits} - set(split_sources)):
                f.create_dataset(f"{L.SPLITS}/{name}", data=np.zeros(0, np.int64))
                digests[f"{L.SPLITS}/{name}"] = _record.digest_of(np.zeros(0, np.int64))
            for k, name in enumerate(("first", "last")):  # lookups skip the parts whose bounds hold no query
                values = [b[k].decode("utf-8") for b in bounds]
                f.create_dataset(f"{L.PART_IDS}/{name}", data=values, dtype=h5py.string_dtype("utf-8"))
                digests[f"{L.PART_IDS}/{name}"] = _record.digest_of(values)
            # The completion record goes last: a file with it is whole.
            _record.write_record(
                f, n_rows, digests, parts=names, part_records=_records(parts, loaded[0], "parts", "part_records"),
                split_files=[L.source_name(p, base) for p in split_paths],
                split_records=_records(split_paths, loaded[0], "split_files", "split_records"),
            )
        # It must open as a grown file before it takes the name (its parts
        # folder is named after the name it takes, so trust is asked here).
        L.open_and_validate(tmp, allow_virtual=True)
        publish(tmp, target, overwrite=True)
    except BaseException:
        with sigint_deferred():
            discard(tmp)
        raise


def _records(paths: list[str], current: _Part, names: str, records: str) -> list[str]:
    """The digest of the record of each of ``paths`` (parts, or split
    files): the current grown file's, from its record's lists ``names`` and
    ``records``, for those it lists (checked when it was opened); computed
    for the others."""
    known = {}
    if is_grown(current.layout):
        base = os.path.dirname(current.path)
        completion = current.layout.completion
        known = {os.path.join(base, n): d for n, d in zip(completion.get(names, ()), completion.get(records, ()))}
    return [known.get(p) or _record.record_digest(p) for p in paths]


def _part_rows(parts: list[str], loaded: list[_Part]) -> list[int]:
    """The rows of each of ``parts``: a grown current file's from its virtual
    ``x``, the others' from their layouts (``loaded`` holds the current file
    first, when there is one, then the new files)."""
    current = loaded[0]
    if is_grown(current.layout):
        counts = [s.stop - s.start for s in current.layout.column(L.X).sources or ()]
        return counts + [p.layout.n_rows for p in loaded[1:]]
    return [p.layout.n_rows for p in loaded]


def _read_meta(path: str, layout: L.Layout) -> dict[str, np.ndarray]:
    """The metadata columns of the file ``path``: numbers as stored, text as
    an object array of its UTF-8 bytes (never decoded: they are written
    again as they are)."""
    out = {}
    with open_h5(path) as f:
        for name in layout.metadata:
            dset = f[L.meta_path(name)]
            with touching(path, f"/{L.meta_path(name)}"):
                if dset.dtype.kind == "O":
                    check_dataset(f, dset)  # NOTE [ Global heap ] (h5feed/_heap.py)
                values = np.asarray(read_whole(path, dset))
            out[name] = values
    return out


def compact(data: str | os.PathLike[str], *, progress: bool = False) -> str:
    """Rewrite a grown file as one standalone file, atomically; then remove
    its parts folder. A standalone file is left as it is.

    The rows are read from the parts, each checked against its own
    completion record; the IDs, splits and metadata are the grown file's.
    A job still reading the grown version loses its parts: compact when
    none is.

    Returns:
        The path of ``data``.

    Raises:
        FormatError: ``data`` is not a valid h5feed file.
        LayoutError: a part is damaged (its rows differ from its record).
        WriterError: writing failed; ``data`` is left as it was.

    Example:
        >>> compact("all.h5")  # doctest: +SKIP
    """
    target = os.path.abspath(os.fspath(data))
    if not os.path.isfile(target):
        raise NotH5FeedFileError(f"{target}: no such file")
    with _locked(target) as folder:
        layout = L.open_and_validate(target)
        if not is_grown(layout):
            _remove_unlisted(folder, [])
            with contextlib.suppress(OSError):
                os.rmdir(folder)
            return target
        _compact_locked(target, layout, progress=progress)
        with sigint_deferred():
            _remove_unlisted(folder, [])
            with contextlib.suppress(OSError):  # not empty: a conversion is writing into it
                os.rmdir(folder)
    return target


def _compact_locked(target: str, layout: L.Layout, *, progress: bool) -> None:
    base = os.path.dirname(target)
    parts = []
    offset = 0
    for name in layout.completion["parts"]:
        part = _open_incoming(os.path.join(base, name))
        part.offset = offset
        offset += part.layout.n_rows
        parts.append(part)
    with open_h5(target) as f:
        ids = _ids.Encoded.concat([block for _, block in _ids.blocks(f[L.IDS])])
        splits = {name: L.read_split(f, name) for name in layout.splits}
    meta = _read_meta(target, layout) if layout.metadata else None
    names = list(layout.columns)
    extras = [n for n in names if n not in (L.X, L.Y)]
    with _writer_like(layout, target, layout.n_rows, names, overwrite=True) as writer, Progress(layout.n_rows, f"compacting {os.path.basename(target)}", enabled=progress) as bar:

        def sink(part: _Part, start: int, stop: int, blocks: dict[str, np.ndarray]) -> None:
            lo, hi = part.offset + start, part.offset + stop
            writer.extend(ids.items(range(lo, hi)), blocks[L.X], blocks.get(L.Y), **{n: blocks[n] for n in extras})

        _stream_parts(parts, names, bar, sink)
        for name, rows in splits.items():
            writer.add_split(name, rows)
        if meta is not None:
            writer._set_metadata_rows(meta)


# -- the command line ---------------------------------------------------------


def _append_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA.h5", help="the growing dataset (created if missing)")
    p.add_argument("new", nargs="+", metavar="NEW.h5", help="h5feed files whose rows to append, in order")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _append_run(args: argparse.Namespace) -> int:
    before = L.open_and_validate(args.data).n_rows if os.path.exists(args.data) else 0
    out = append(args.data, *args.new, progress=not args.quiet)
    layout = L.open_and_validate(out)
    print(
        f"appended {layout.n_rows - before} rows from {len(args.new)} file(s) to {out}: "
        f"{layout.n_rows} rows in {len(layout.completion['parts'])} parts"
    )
    return 0


def _compact_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA.h5", help="a grown dataset")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _compact_run(args: argparse.Namespace) -> int:
    grown = is_grown(L.open_and_validate(args.data))
    out = compact(args.data, progress=not args.quiet)
    if grown:
        print(f"compacted {out} into one standalone file ({L.open_and_validate(out).n_rows} rows)")
    else:
        print(f"{out} is already one standalone file", file=sys.stderr)
    return 0


COMMANDS: list[tuple[str, str, Any, Any]] = [
    ("append", "append the rows of h5feed files to a growing dataset", _append_args, _append_run),
    ("compact", "rewrite a grown dataset as one standalone file", _compact_args, _compact_run),
]
