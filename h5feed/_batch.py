"""Making one batch from its rows: gather, one-hot, transform.

:class:`BatchMaker` is what :class:`~h5feed.H5Sequence` and its worker
processes share: small, picklable, free of Keras (so a ``spawn`` worker
starts without importing TensorFlow), and the single place where a batch's
arrays are made and where errors get their batch and sample-ID context.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import H5FeedError
from .layout import Layout
from ._parts import make_reader
from ._readahead import major_faults
from ._select import column_names

__all__ = ["BatchMaker", "with_context"]


class BatchMaker:
    """Reads batch ``(X, Y)`` (or ``(X,)``) for given rows.

    Args:
        layout: the validated file layout.
        x: the input spec: a dataset name, a tuple of names, or a dict.
        y: the target spec, same forms, or None.
        one_hot: one-hot ``Y`` with ``layout.n_classes`` classes.
        transform: ``fn(X, Y) -> (X, Y)`` run on each batch, or None.
    """

    def __init__(
        self,
        layout: Layout,
        x: Any,
        y: Any,
        *,
        one_hot: bool,
        transform: Callable[[Any, Any], tuple[Any, Any]] | None,
    ) -> None:
        self.layout = layout
        self.path = layout.path
        self.x = x
        self.y = y
        self.one_hot = one_hot
        self.n_classes = layout.n_classes
        self.transform = transform
        self._x_name = x if isinstance(x, str) else None
        self._y_name = y if isinstance(y, str) else None
        # A merged file's virtual columns are read from their parts.
        self.reader = make_reader(layout)
        # One-hot rows by indexing an identity matrix: one numpy call.
        self._eye = np.eye(self.n_classes, dtype=np.float32) if one_hot and self.n_classes else None

    def make(
        self,
        rows: np.ndarray,
        index: int | str,
        alloc: Callable[..., np.ndarray] | None = None,
        on_read: Callable[[tuple[float, int | None]], None] | None = None,
    ) -> tuple[Any, ...]:
        """The batch of file rows ``rows`` (checked int64), batch ``index`` for messages.

        ``alloc(shape, dtype)``, when given, provides the arrays the rows are
        read into (a worker passes views of its shared-memory slot, so a
        batch without a transform is written once, straight into the slot).
        ``on_read((seconds, major_faults))``, when given, is told how long
        reading the rows took and how many page faults of this thread waited
        for the disk meanwhile (None where unknown), before the transform
        runs (for :mod:`h5feed._readahead`).

        Raises:
            ReadError: (or another H5FeedError/OSError) with the batch and its
                sample IDs added to the message.
            Exception: whatever ``transform`` raised, same type, with context.
        """
        if on_read is not None:
            faults = major_faults()
            start = time.perf_counter()
        try:
            # One dataset each, read straight (a warm batch of "small" is
            # about 10 us; each call saved is a few percent of it).
            if alloc is None and self._x_name is not None:
                X = self.reader.take(self._x_name, rows)
            else:
                X = self._gather(self.x, rows, alloc)
            if self.y is None:
                Y = None
            else:
                if (alloc is None or self.one_hot) and self._y_name is not None:
                    Y = self.reader.take(self._y_name, rows)
                else:
                    Y = self._gather(self.y, rows, None if self.one_hot else alloc)
                if self._eye is not None:
                    Y = self._eye[Y]
        except (H5FeedError, OSError) as exc:
            _reraise(exc, f"batch {index} of {self.path}, sample IDs {self.ids_for(rows)}")
        if on_read is not None:
            seconds = time.perf_counter() - start
            after = major_faults()
            on_read((seconds, None if faults is None or after is None else after - faults))
        if self.transform is not None:
            try:
                X, Y = self.transform(X, Y)
            except Exception as exc:
                _reraise(exc, f"transform failed on batch {index} of {self.path} (sample IDs {self.ids_for(rows)})")
        return (X,) if self.y is None else (X, Y)

    def _gather(self, spec: Any, rows: np.ndarray, alloc: Callable[..., np.ndarray] | None = None) -> Any:
        if alloc is None:
            take = self.reader.take
        else:
            def take(name: str, rows: np.ndarray) -> np.ndarray:
                col = self.layout.column(name)
                out = alloc((rows.size, *col.row_shape), col.dtype.newbyteorder("="))
                return self.reader.take(name, rows, out)

        if isinstance(spec, str):
            return take(spec, rows)
        if isinstance(spec, dict):
            return {key: take(name, rows) for key, name in spec.items()}
        return tuple(take(name, rows) for name in spec)

    def ids_for(self, rows: np.ndarray, limit: int = 8) -> str:
        """Up to ``limit`` sample IDs of ``rows`` for a message (never raises)."""
        try:
            ids = self.reader.read_ids(rows[:limit])
        except Exception:  # the IDs are context only; never mask the real error
            return f"rows {rows[:limit].tolist()!r}"
        more = f" and {rows.size - limit} more" if rows.size > limit else ""
        return f"{ids!r}{more}"

    def close(self) -> None:
        self.reader.close()

    def fresh(self) -> BatchMaker:
        """A copy with a reader of its own (handles are never shared)."""
        clone = copy.copy(self)
        clone.reader = make_reader(self.layout)
        return clone

    def columns(self) -> list[tuple[str, int]]:
        """``(name, row_nbytes)`` of every dataset a batch reads."""
        names = dict.fromkeys(column_names(self.x) + column_names(self.y))
        return [(name, self.layout.column(name).row_nbytes) for name in names]

    def batch_nbytes(self, batch_size: int) -> int:
        """Bytes of one batch before ``transform`` (for sizing shared memory)."""
        total = 0
        for spec, is_y in ((self.x, False), (self.y, True)):
            for name in column_names(spec):
                col = self.layout.column(name)
                total += col.row_nbytes
                if is_y and self.one_hot:
                    total += 4 * int(self.n_classes or 0)
        return total * batch_size


def _reraise(exc: BaseException, context: str) -> None:
    new = with_context(exc, context)
    if new is exc:
        raise exc
    raise new from exc


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """float32 one-hot rows of class indices ``labels``.

    Example:
        >>> one_hot(np.array([2, 0]), 3).tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    return np.eye(n_classes, dtype=np.float32)[labels]


def with_context(exc: BaseException, context: str) -> BaseException:
    """The same exception type with ``context`` added to its message.

    When the type cannot be rebuilt from one message (a custom ``__init__``),
    the original exception is returned with ``context`` as a note, so its type
    is kept either way.
    """
    try:
        new = type(exc)(f"{exc} [{context}]")
    except Exception:
        new = None
    if new is not None and str(new).endswith(f"[{context}]"):
        return new
    if hasattr(exc, "add_note"):
        exc.add_note(context)
    return exc
