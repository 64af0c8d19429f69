"""Editing a finished h5feed file in place, atomically: a rollback journal.

Replacing a file's splits must not cost a copy of its samples, so the file
is edited where it lies. HDF5 itself gives no atomicity there: it rewrites
metadata in several places (the root group, its attributes, heaps), so a
process killed while HDF5 writes could leave a file that is neither the old
one nor the new one. h5feed therefore never lets HDF5 write to the file:

1. HDF5 works on an overlay (:class:`_Overlay`, through h5py's file-object
   driver): reads come from the file, patched by earlier writes; writes stay
   in memory. When HDF5 closes the file, the overlay holds every byte it
   changed.
2. A rollback journal ``.<name>.h5feed-journal`` beside the file receives
   the file's old size and the old bytes of every changed range below it;
   it is written under a temporary name, synced and renamed into place, so
   a journal that exists is whole (it also carries its own SHA-256).
3. The changed ranges are written into the file, which is synced.
4. The journal is removed and the folder synced: the commit point.

Killed before the journal exists, the file was never touched. Killed
between 2 and 4, the journal is left, and whoever opens the file next
(:func:`recover`, which :func:`h5feed._files.open_h5` calls first) writes
the old bytes back and cuts the file to its old size: the old file again.
After 4 it is the new one. The editor holds an exclusive ``flock`` on the
file from start to end, the lock HDF5 readers take shared, so an edit waits
for no one and is refused while another process has the file open, and a
recovery never runs beside a live edit. See "Replacing splits" in
``docs/design/atomic-writing.md``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import h5py

from ._files import is_lock_error, warn_no_locking
from ._publish import _fsync_folder, sigint_deferred, temporary_path
from .errors import NotH5FeedFileError, WriterError

__all__ = ["JOURNAL_SUFFIX", "edit_in_place", "journal_path", "recover"]

logger = logging.getLogger("h5feed")

JOURNAL_SUFFIX = ".h5feed-journal"
_MAGIC = b"h5feed-journal-1\n"
_PAGE = 4096
# How long an opener waits for the exclusive lock before a recovery (an
# edit in progress holds it for the few writes of its commit).
_RECOVER_WAIT_S = 30.0


def journal_path(path: str | os.PathLike[str]) -> str:
    """The rollback journal of ``path``: ``.<name>.h5feed-journal`` beside it."""
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{base}{JOURNAL_SUFFIX}")


class _Overlay(io.RawIOBase):
    """A file as HDF5 sees it during an edit: the file's bytes, patched by
    the writes so far, which stay in memory (pages of ``_PAGE`` bytes)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.old_size = os.fstat(fd).st_size
        self.size = self.old_size
        self.pages: dict[int, bytearray] = {}
        self._pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _original(self, start: int, n: int) -> bytes:
        raw = os.pread(self._fd, n, start) if start < self.old_size else b""
        return raw + bytes(n - len(raw))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self._pos))
        if n == 0:
            return 0
        data = bytearray(self._original(self._pos, n))
        first, last = self._pos // _PAGE, (self._pos + n - 1) // _PAGE
        for page in range(first, last + 1):
            held = self.pages.get(page)
            if held is None:
                continue
            lo = max(self._pos, page * _PAGE)
            hi = min(self._pos + n, (page + 1) * _PAGE)
            data[lo - self._pos : hi - self._pos] = held[lo - page * _PAGE : hi - page * _PAGE]
        view[:n] = data
        self._pos += n
        return n

    def write(self, buffer: Any) -> int:
        data = memoryview(buffer).cast("B")
        n = len(data)
        at = self._pos
        while at < self._pos + n:
            page = at // _PAGE
            held = self.pages.get(page)
            if held is None:
                held = self.pages[page] = bytearray(self._original(page * _PAGE, _PAGE))
            lo = at - page * _PAGE
            take = min(_PAGE - lo, self._pos + n - at)
            held[lo : lo + take] = data[at - self._pos : at - self._pos + take]
            at += take
        self._pos += n
        self.size = max(self.size, self._pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        self.size = self._pos if size is None else int(size)
        return self.size

    def flush(self) -> None:
        pass

    def changes(self) -> tuple[int, list[tuple[int, bytes]]]:
        """``(new size, [(offset, new bytes)])``: every range that differs.

        The file never shrinks (bytes past HDF5's end of file are ignored by
        readers), so the old size always covers what a rollback restores.
        """
        size = max(self.size, self.old_size)
        out = []
        for page in sorted(self.pages):
            start = page * _PAGE
            stop = min(start + _PAGE, size)
            if start >= stop:
                continue
            new = bytes(self.pages[page][: stop - start])
            if start >= self.old_size or new != self._original(start, stop - start):
                out.append((start, new))
        return size, out


# -- the journal -----------------------------------------------------------------


def _encode_journal(old_size: int, undo: list[tuple[int, bytes]]) -> bytes:
    body = [struct.pack("<QQ", old_size, len(undo))]
    for offset, data in undo:
        body.append(struct.pack("<QQ", offset, len(data)))
        body.append(data)
    payload = b"".join(body)
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def _decode_journal(raw: bytes, where: str) -> tuple[int, list[tuple[int, bytes]]]:
    head = len(_MAGIC) + 32
    payload = raw[head:]
    if not raw.startswith(_MAGIC) or hashlib.sha256(payload).digest() != raw[len(_MAGIC) : head]:
        raise NotH5FeedFileError(
            f"{where}: the rollback journal of an interrupted edit is damaged; "
            "restore the file from a copy (h5feed verify tells whether it is sound)"
        )
    old_size, count = struct.unpack_from("<QQ", payload, 0)
    at = 16
    undo = []
    for _ in range(count):
        offset, n = struct.unpack_from("<QQ", payload, at)
        at += 16
        undo.append((offset, payload[at : at + n]))
        at += n
    return old_size, undo


def _write_journal(path: str, old_size: int, undo: list[tuple[int, bytes]]) -> str:
    target = journal_path(path)
    tmp = temporary_path(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        data = memoryview(_encode_journal(old_size, undo))
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, target)
    _fsync_folder(os.path.dirname(target))
    return target


def _apply(fd: int, ranges: list[tuple[int, bytes]], size: int | None) -> None:
    """Write ``ranges`` into the file, set its size, and sync it."""
    for offset, data in ranges:
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, offset + len(data) - len(view)) :]
    if size is not None and os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)
    os.fsync(fd)


# -- locking -----------------------------------------------------------------------


def _lock(fd: int, path: str, *, wait_s: float, refused: Callable[[], Exception]) -> bool:
    """Take the exclusive lock on ``fd``; False where the filesystem has no locks."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if is_lock_error(exc):
                warn_no_locking(path, exc, "editing")
                return False
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            if time.monotonic() >= deadline:
                raise refused() from None
            time.sleep(0.05)


@contextmanager
def edit_in_place(path: str | os.PathLike[str]) -> Iterator[h5py.File]:
    """Open ``path`` for an atomic in-place edit (see the module docstring).

    The ``with`` block edits the yielded h5py file; its changes reach the
    file only when the block ends without an error, all of them or none.

    Raises:
        WriterError: another process has the file open (HDF5's lock), or
            writing the journal or the file failed (the file is then rolled
            back, or left to the next open to roll back).
    """
    path = os.path.abspath(os.fspath(path))
    recover(path)
    fd = os.open(path, os.O_RDWR)
    try:
        _lock(fd, path, wait_s=0, refused=lambda: WriterError(
            f"{path}: is open in another process (it holds the file's lock); close it before editing"
        ))
        overlay = _Overlay(fd)
        with h5py.File(overlay, "r+") as f:
            yield f
        size, redo = overlay.changes()
        undo = [(offset, overlay._original(offset, min(len(data), overlay.old_size - offset)))
                for offset, data in redo if offset < overlay.old_size]
        if not redo:
            return
        with sigint_deferred():
            journal = _write_journal(path, overlay.old_size, undo)
            try:
                _apply(fd, redo, size)
            except BaseException:
                _apply(fd, undo, overlay.old_size)
                raise
            os.unlink(journal)
            _fsync_folder(os.path.dirname(journal))
    finally:
        os.close(fd)  # releases the lock


def recover(path: str | os.PathLike[str]) -> None:
    """Roll back an interrupted in-place edit of ``path``, if one left its journal.

    Costs one ``stat`` when there is none. Takes the file's exclusive lock,
    so it waits for an edit still committing, and never runs beside one.

    Raises:
        NotH5FeedFileError: a journal is there but the file cannot be
            rolled back (no write access, or the journal is damaged).
    """
    journal = journal_path(path)
    if not os.path.exists(journal):
        return
    path = os.path.abspath(os.fspath(path))
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise NotH5FeedFileError(
            f"{path}: an edit of this file was interrupted, and rolling it back needs write access "
            f"({exc.strerror}); run `h5feed verify {path}` as a user who may write it"
        ) from exc
    try:
        _lock(fd, path, wait_s=_RECOVER_WAIT_S, refused=lambda: NotH5FeedFileError(
            f"{path}: an edit of this file was interrupted, and another process holds the file "
            "open, so it cannot be rolled back now; close it and try again"
        ))
        with sigint_deferred():
            try:
                with open(journal, "rb") as fh:
                    raw = fh.read()
            except FileNotFoundError:  # an edit finished, or another opener rolled it back
                return
            old_size, undo = _decode_journal(raw, path)
            _apply(fd, undo, old_size)
            os.unlink(journal)
            _fsync_folder(os.path.dirname(journal))
        logger.warning("%s: rolled back an interrupted edit (its journal was left behind)", path)
    finally:
        os.close(fd)
