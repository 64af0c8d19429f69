"""Getting h5feed's exceptions back from frameworks that convert them.

NOTE [ Exceptions through tf.data ]
``tf.data.Dataset.from_generator`` (through which Keras feeds a ``PyDataset``
on the TensorFlow backend, and :func:`h5feed.tf_dataset` its batches) turns
any Python exception into a ``tf.errors.OpError`` that keeps the original
only as text, and nothing h5feed owns runs between that thread and the
caller of ``fit``. So the batch readers note each exception they raise
(:func:`note_raised`, a short bounded record), and :func:`original_errors`,
wrapped around ``fit`` by the caller, raises the noted original in place of
the framework's error that carries its message, chained to it. On the JAX
and PyTorch backends exceptions pass through ``fit`` unchanged.
See the design note ``docs/design/tf-data.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Iterator

__all__ = ["note_raised", "original_errors"]

_LOCK = threading.Lock()
_COUNTER = itertools.count(1)
# (serial number, exception), newest last; a few are enough: the error that
# stops fit is among the last raised.
_RAISED: deque[tuple[int, BaseException]] = deque(maxlen=8)


def note_raised(exc: BaseException) -> None:
    """Remember ``exc``, about to leave a batch reader, for :func:`original_errors`."""
    with _LOCK:
        _RAISED.append((next(_COUNTER), exc))


def _converted(err: BaseException) -> bool:
    """Is ``err`` a framework's stand-in for a Python exception?"""
    return type(err).__module__.startswith("tensorflow")


def _original_of(err: BaseException, since: int) -> BaseException | None:
    text = str(err)
    with _LOCK:
        noted = [exc for serial, exc in _RAISED if serial > since]
    for exc in reversed(noted):
        head = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if exc is not err and head in text:
            return exc
    return None


@contextlib.contextmanager
def original_errors() -> Iterator[None]:
    """Raise h5feed's own exceptions out of ``fit`` on the TensorFlow backend.

    Inside the block, an exception that an :class:`~h5feed.H5Sequence` (or
    :func:`~h5feed.tf_dataset`) raised while reading a batch and that
    TensorFlow turned into a ``tf.errors`` error comes out as the original
    exception -- its type, and its message with the batch's sample IDs --
    chained to TensorFlow's error (NOTE [ Exceptions through tf.data ]).
    Every other exception passes through unchanged.

    Example:
        >>> with h5feed.original_errors():  # doctest: +SKIP
        ...     model.fit(H5Sequence("data.h5", "train"))
        Traceback (most recent call last):
        h5feed.errors.ReadError: /data/d.h5:/x: rows 256-319 are damaged ... [batch 7 of ..., sample IDs [...]]
    """
    with _LOCK:
        since = next(_COUNTER)
    try:
        yield
    except Exception as err:
        original = _original_of(err, since) if _converted(err) else None
        if original is None:
            raise
        raise original from err
