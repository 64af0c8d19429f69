"""Opening HDF5 files: one place that turns h5py's errors at open into ours.

Everything that opens a file for reading goes through :func:`open_h5`, so a
missing, truncated, damaged or non-HDF5 file always gets the same clear
error (what comes after the open is ``_damage.touching``'s). The
test for a filesystem that refuses file locks (:func:`is_lock_error`) and its
one-time warning live here too; writers use them when they create a file
(:func:`h5feed._publish.create_h5`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import warnings

import h5py

from ._damage import HDF5_FAILURES
from .errors import NotH5FeedFileError

__all__ = ["is_lock_error", "open_h5", "warn_no_locking"]

logger = logging.getLogger("h5feed")

# errno values that filesystems without lock support return from flock():
# ENOLCK (37), ENOSYS (38) and Linux's ENOTSUPP (524), seen on NFS and Lustre.
_NO_LOCK_ERRNOS = {errno.ENOLCK, errno.ENOSYS, 524}
_warned_no_locking = False

# The chunk cache of each handle: big enough to keep a few chunks of a batch
# (and of the next batches under block shuffling) decompressed, so that no
# chunk is decompressed twice for one batch.
CHUNK_CACHE_BYTES = 32 * 1024 * 1024
CHUNK_CACHE_SLOTS = 10007  # a prime well above the number of cached chunks


# HDF5 reports a failed flock() in the message only ("unable to lock file,
# errno = 38, error message = 'Function not implemented'"); h5py's OSError
# usually carries no errno of its own.
_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")


def is_lock_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a filesystem refusing file locks (NFS, Lustre)."""
    if getattr(exc, "errno", None) in _NO_LOCK_ERRNOS:
        return True
    text = str(exc).lower()
    if "lock" not in text:
        return False
    if any(int(n) in _NO_LOCK_ERRNOS for n in _ERRNO_IN_TEXT.findall(text)):
        return True
    return any(word in text for word in ("not supported", "function not implemented", "no locks"))


def warn_no_locking(path: str, exc: BaseException, doing: str = "reading") -> None:
    """Warn, once per process, that ``path`` is read or written without locks."""
    global _warned_no_locking
    if _warned_no_locking:
        return
    _warned_no_locking = True
    warnings.warn(
        f"{path}: the filesystem refuses file locks ({exc}); "
        f"{doing} without locking. Set HDF5_USE_FILE_LOCKING=FALSE "
        "to skip the attempt.",
        RuntimeWarning,
        stacklevel=3,
    )


def open_h5(path: str | os.PathLike[str], *, chunk_cache_bytes: int = CHUNK_CACHE_BYTES) -> h5py.File:
    """Open ``path`` read-only, or raise :class:`NotH5FeedFileError`.

    On filesystems that refuse file locks (NFS, Lustre), the open is retried
    without locking and a warning is issued once per process; setting
    ``HDF5_USE_FILE_LOCKING=FALSE`` avoids the first attempt.
    ``chunk_cache_bytes`` is the chunk cache of each dataset opened from it.
    An in-place edit (``h5feed split``) that was killed half-way is rolled
    back first (:func:`h5feed._inplace.recover`).

    Raises:
        NotH5FeedFileError: the path is missing, a folder, unreadable,
            truncated, or not an HDF5 file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise NotH5FeedFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise NotH5FeedFileError(f"{path}: is a folder, expected an HDF5 file")
    from ._inplace import recover  # here: _inplace builds on this module

    recover(path)  # an in-place edit killed half-way is rolled back first
    kwargs = dict(rdcc_nbytes=chunk_cache_bytes, rdcc_nslots=CHUNK_CACHE_SLOTS)
    try:
        return h5py.File(path, "r", **kwargs)
    except HDF5_FAILURES as exc:  # a damaged superblock is not always an OSError
        if isinstance(exc, OSError) and is_lock_error(exc):
            warn_no_locking(path, exc)
            try:
                return h5py.File(path, "r", locking=False, **kwargs)
            except HDF5_FAILURES as exc2:
                exc = exc2
        raise NotH5FeedFileError(_describe_open_error(path, exc)) from exc


def _describe_open_error(path: str, exc: BaseException) -> str:
    size = os.path.getsize(path) if os.path.exists(path) else -1
    text = str(exc)
    if isinstance(exc, PermissionError) or "ermission denied" in text:
        return f"{path}: permission denied"
    if size == 0:
        return f"{path}: the file is empty (0 bytes), expected an HDF5 file"
    if not h5py.is_hdf5(path):
        return f"{path}: not an HDF5 file ({size} bytes, no HDF5 signature)"
    if "truncated" in text or "eof" in text.lower():
        return f"{path}: the HDF5 file is truncated or damaged ({size} bytes): {text}"
    return f"{path}: cannot open as HDF5: {text}"
