"""``h5feed append`` and ``h5feed compact``: datasets that grow.

NOTE [ Grown files ]
A grown file ``DATA.h5`` is an index over standalone part files in
``DATA.h5.parts/`` (``layout.parts_folder``): virtual per-row datasets over
the parts; IDs, their index, splits and metadata stored in it; a completion
record that lists the parts and the SHA-256 of each part's own record
(``part_records``) instead of digests of the rows. An append never reads,
copies or hashes an old part, and never changes or removes one; its only
change to ``DATA.h5`` is the final rename of the new index over it, under a
lock on the parts folder. The layout, the trust rule, each step and what a
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
from typing import Any

import numpy as np

from . import _ids
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
    discard,
    publish,
    remove_stale_temporaries,
    sigint_deferred,
    temporary_path,
)
from .errors import LayoutError, NotH5FeedFileError, WriterError, WriterInputError
from .merge import _check_compatible, _Part, _stream_parts, _unique_ids, _writer_like
from .writer import _slice

__all__ = ["COMMANDS", "append", "compact", "incoming_path", "is_grown"]

logger = logging.getLogger("h5feed")

_PART_NAME = re.compile(r"^[0-9]{6}\.h5$")
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


def _open_current(data: str) -> tuple[_Part, list[str]]:
    """``data`` as a part (its splits and metadata are the dataset's), and
    the names of its parts relative to its folder ([] for a standalone file)."""
    with open_h5(data) as f:
        layout = L.validate(f)
        splits = {name: L.read_split(f, name) for name in layout.splits}
    if is_grown(layout):
        return _Part(data, layout, splits), list(layout.completion["parts"])
    if any(col.sources for col in layout.columns.values()):  # pragma: no cover - validate refuses these without the flag
        raise WriterInputError(f"{data}: holds virtual datasets; compact it or `h5feed merge --copy` it first")
    return _Part(data, layout, splits), []


def _remove_unlisted(folder: str, listed: Sequence[str]) -> None:
    """Remove what killed appends left in the parts folder: part files the
    current file does not list, and temporary files of dead writers."""
    keep = {os.path.basename(name) for name in listed}
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if _PART_NAME.match(name) and name not in keep:
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
    are never copied or re-read; only the index of IDs, splits and metadata
    is written again (see NOTE [ Grown files ]). ``data`` is created when it does not exist. It
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
    current, listed = _open_current(target) if os.path.exists(target) else (None, [])
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
    ids = _unique_ids(loaded)  # each file's IDs checked against its record
    _remove_unlisted(folder, listed)
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
        _fsync_folder(folder)  # the parts' names durable before the index that lists them
        _write_index(target, parts, loaded, ids)
    except BaseException:
        with sigint_deferred():
            for name in placed:
                with contextlib.suppress(OSError):
                    os.unlink(name)
        raise
    logger.info("appended %d rows from %d files to %s", offset - (current.layout.n_rows if current else 0), len(news), target)
    return target


def _write_index(target: str, parts: list[str], loaded: list[_Part], ids: _ids.Encoded) -> None:
    """Write the grown file over ``parts`` (paths) with ``ids``, the splits
    and the metadata of ``loaded`` joined, and rename it over ``target``."""
    first = loaded[0].layout
    columns = list(first.columns)
    n_rows = sum(p.layout.n_rows for p in loaded)
    virtual = {name: [(p, name) for p in parts] for name in columns}
    with _writer_like(first, target, n_rows, columns, overwrite=True, virtual=virtual, _vouched=True) as writer:
        step = 1 << 20
        for start in range(0, n_rows, step):
            writer._extend_vouched(_slice(ids, start, min(n_rows, start + step)))
        splits: dict[str, list[np.ndarray]] = {}
        for part in loaded:
            for name, rows in part.splits.items():
                splits.setdefault(name, []).append(rows + part.offset)
        for name, blocks in splits.items():
            writer.add_split(name, np.concatenate(blocks).astype(np.int64))
        if first.metadata:
            writer._set_metadata_rows(_joined_metadata(loaded))


def _joined_metadata(loaded: list[_Part]) -> dict[str, np.ndarray]:
    """The metadata of ``loaded``, joined in row order (text as UTF-8 bytes);
    a column that is int64 in one file and float64 in another becomes float64."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in loaded[0].layout.metadata}
    for part in loaded:
        for name, values in _read_meta(part.path, part.layout).items():
            columns[name].append(values)
    joined = {}
    for name, blocks in columns.items():
        text = {b.dtype.kind == "O" for b in blocks}
        if len(text) > 1:
            raise LayoutError(f"metadata column {name!r} holds text in some files and numbers in others; they must agree")
        joined[name] = np.concatenate(blocks)
    return joined


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
