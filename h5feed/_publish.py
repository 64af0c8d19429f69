"""Atomic output: a temporary file beside the target, published whole.

The one implementation that :class:`~h5feed.writer.DatasetWriter`,
:func:`~h5feed.merge.merge_files` and the command line use:

- :func:`check_output` refuses an output path that cannot be written (its
  folder missing or not writable, a folder, or an existing file without
  ``overwrite``), so that a typo fails before any input is read;
- :func:`temporary_path` names the temporary file
  ``.<name>.<host>.<pid>.<random>.h5feed-tmp`` in the target's folder (the
  same filesystem, so the final rename is atomic), after removing the
  temporary files of earlier writers to the same target whose process is
  gone (:func:`remove_stale_temporaries`);
- :func:`create_h5` creates it, without file locks where the filesystem
  refuses them;
- :func:`publish` syncs it and gives it the target's name: through
  ``os.link`` when not overwriting (which refuses to replace a file that
  appeared meanwhile), through ``os.replace`` when overwriting; then syncs
  the folder;
- :func:`discard` removes it, with Ctrl-C held back until it is gone.

The target name only ever holds a finished file. See the design note
``docs/design/atomic-writing.md``.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading

import h5py

from ._files import is_lock_error, warn_no_locking
from ._proc import pid_alive
from .errors import OutputExistsError, WriterInputError

__all__ = [
    "TMP_SUFFIX",
    "check_output",
    "create_h5",
    "discard",
    "publish",
    "remove_stale_temporaries",
    "sigint_deferred",
    "temporary_path",
]

logger = logging.getLogger("h5feed")

TMP_SUFFIX = ".h5feed-tmp"


def check_output(path: str | os.PathLike[str], *, overwrite: bool, how: str = "overwrite=True") -> str:
    """Refuse an output path that cannot be written.

    Args:
        path: the file to write.
        overwrite: whether an existing file may be replaced.
        how: how the caller asks for ``overwrite``, for the message
            (``"--overwrite"`` on the command line).

    Returns:
        The absolute path.

    Raises:
        WriterInputError: the folder is missing or not writable, or ``path``
            is a folder.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise WriterInputError(f"{path}: the output folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriterInputError(f"{path}: the output folder {folder!r} is not writable")
    if os.path.isdir(path):
        raise WriterInputError(f"{path}: is a folder, expected a file name")
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass {how} to replace it")
    return path


def temporary_path(target: str) -> str:
    """A new temporary name beside ``target`` (absolute), after removing the
    temporary files that dead writers to ``target`` left behind."""
    remove_stale_temporaries(target)
    folder, base = os.path.split(target)
    return os.path.join(folder, f".{base}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def remove_stale_temporaries(target: str) -> None:
    """Remove temporary files of earlier writers to ``target`` whose process
    is gone (on this host; a writer killed outright leaves its file)."""
    folder, base = os.path.split(os.path.abspath(target))
    prefix = f".{base}."
    host = socket.gethostname()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
            continue
        parts = name[len(prefix) : -len(TMP_SUFFIX)].rsplit(".", 2)
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


def create_h5(path: str, **kwargs: object) -> h5py.File:
    """Create a new HDF5 file (mode ``"w-"``), without locks if need be.

    A temporary file has a name no other process uses, so a lock on it
    protects nothing; where the filesystem refuses locks (NFS, Lustre), the
    file is created without one, with the one-time warning that reading
    gives. OSErrors other than lock refusals propagate unchanged.
    """
    try:
        return h5py.File(path, "w-", **kwargs)
    except OSError as exc:
        if not is_lock_error(exc):
            raise
        warn_no_locking(path, exc, "writing")
        # The failed attempt may have left an empty file behind.
        try:
            if os.path.getsize(path) == 0:
                os.unlink(path)
        except OSError:
            pass
        return h5py.File(path, "w-", locking=False, **kwargs)


def publish(tmp: str, target: str, *, overwrite: bool) -> None:
    """Sync the closed temporary file ``tmp`` and give it ``target``'s name.

    Raises:
        OutputExistsError: ``target`` appeared since it was checked and
            ``overwrite`` is False; ``tmp`` is left for the caller to
            discard.
    """
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    if overwrite:
        os.replace(tmp, target)
    else:
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise OutputExistsError(f"{target}: appeared while it was being written; pass overwrite=True to replace it") from None
        except OSError:
            # Filesystems without hard links: check, then rename.
            if os.path.lexists(target):
                raise OutputExistsError(f"{target}: already exists; pass overwrite=True to replace it") from None
            os.replace(tmp, target)
        else:
            os.unlink(tmp)
    _fsync_folder(os.path.dirname(target))


def discard(tmp: str | None) -> None:
    """Remove the temporary file ``tmp`` if it is there."""
    if tmp is None:
        return
    with sigint_deferred():
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


class sigint_deferred:
    """Hold SIGINT back for a block (in the main thread, where Python handles
    it), so that a second Ctrl-C cannot cut a clean-up short."""

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


def _fsync_folder(folder: str) -> None:
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
