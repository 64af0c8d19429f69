"""Transforms that fail inside worker processes (importable by spawned workers).

The fault is configured through the environment so that every worker, however
it was started, sees it: ``H5FEED_TEST_FAULT`` is ``raise:K`` (raise
:class:`TransformFailed` on batches holding row K) or ``kill:K`` (the first
worker process to see row K SIGKILLs itself, writing the time to
``H5FEED_TEST_MARKER`` first; only once the file ``H5FEED_TEST_ARMED``
exists, when that is set, so that the kill lands while fit trains).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np


class TransformFailed(ArithmeticError):
    """A deliberately unusual type, to prove it reaches ``fit`` unchanged."""


def faulty(X, Y):
    kind, _, row = os.environ.get("H5FEED_TEST_FAULT", "none:0").partition(":")
    row = int(row)
    rows = np.asarray(X).reshape(len(X), -1)[:, 0].astype(int)
    if row in rows.tolist():
        if kind == "raise":
            raise TransformFailed(f"transform refused row {row}")
        armed = os.environ.get("H5FEED_TEST_ARMED")
        if (kind == "kill" and os.getpid() != int(os.environ["H5FEED_TEST_PARENT"])
                and (armed is None or os.path.exists(armed))):
            marker = os.environ["H5FEED_TEST_MARKER"]
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return X, Y
            os.write(fd, f"{time.time()} {os.getpid()}".encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return X, Y
