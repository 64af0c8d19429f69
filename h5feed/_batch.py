"""Making one batch from its rows: gather, one-hot, transform, sample weights.

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
from .layout import Y, Layout, check_labels
from ._parts import make_reader
from ._readahead import major_faults
from ._select import column_names
from ._streams import BatchPlace, takes_rng

__all__ = ["BatchMaker", "with_context"]


class BatchMaker:
    """Reads batch ``(X, Y)`` (or ``(X,)``, or ``(X, Y, W)``) for given rows.

    Args:
        layout: the validated file layout.
        x: the input spec: a dataset name, a tuple of names, or a dict.
        y: the target spec, same forms, or None.
        one_hot: one-hot ``Y`` with ``layout.n_classes`` classes.
        transform: ``fn(X, Y) -> (X, Y)`` or ``fn(X, Y, rng) -> (X, Y)`` run
            on each batch, or None (NOTE [ Random streams ] in ``_streams.py``).
        sample_weight: the dataset of per-row sample weights ``W``, appended
            to each batch after the transform; None for none.
        cache_bytes, decode_threads: for the reader of chunked datasets
            (:class:`~h5feed.reader.Reader`).
    """

    def __init__(
        self,
        layout: Layout,
        x: Any,
        y: Any,
        *,
        one_hot: bool,
        transform: Callable[..., tuple[Any, Any]] | None,
        sample_weight: str | None = None,
        cache_bytes: int | None = None,
        decode_threads: int | None = None,
    ) -> None:
        self.layout = layout
        self.path = layout.path
        self.x = x
        self.y = y
        self.one_hot = one_hot
        self.n_classes = layout.n_classes
        self.transform = transform
        # Whether make() needs the batch's place: only for a transform's rng.
        self.takes_place = transform is not None and takes_rng(transform)
        self.sample_weight = sample_weight
        self._x_name = x if isinstance(x, str) else None
        self._y_name = y if isinstance(y, str) else None
        # A merged file's virtual columns are read from their parts.
        self.reader = make_reader(layout, cache_bytes=cache_bytes, decode_threads=decode_threads)
        # One-hot rows by indexing an identity matrix: one numpy call.
        self._eye = np.eye(self.n_classes, dtype=np.float32) if one_hot and self.n_classes else None
        # Class indices are checked per batch, not when the file is opened
        # (NOTE [ Opening reads metadata only ] in layout.py): viewed as
        # unsigned, where negatives are huge, by one reduction, or, for
        # one-hot rows, by the indexing that makes them.
        self._labels: tuple[np.dtype, str] | None = None
        if self.n_classes is not None and Y in column_names(y):
            y_dtype = layout.column(Y).dtype.newbyteorder("=")
            unsigned = np.dtype(f"u{y_dtype.itemsize}") if y_dtype.kind == "i" else y_dtype
            self._labels = (unsigned, f"{self.path}:/{Y}")
        self._checked_one_hot = self._eye is not None and self._labels is not None and self._y_name == Y

    def make(
        self,
        rows: np.ndarray,
        index: int | str,
        alloc: Callable[..., np.ndarray] | None = None,
        on_read: Callable[[tuple[float, int | None]], None] | None = None,
        place: BatchPlace | None = None,
    ) -> tuple[Any, ...]:
        """The batch of file rows ``rows`` (checked int64), batch ``index`` for messages.

        ``place`` is where the batch sits (seed, epoch, place in the order,
        shard): a transform that takes ``rng`` gets ``place.rng()``.

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
            ValueError: a transform that takes ``rng`` and no ``place``.
        """
        if on_read is not None:
            faults = major_faults()
            start = time.perf_counter()
        try:
            # One dataset each, read straight: a warm batch of small rows
            # costs little more than the calls that make it.
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
                if self._checked_one_hot:
                    Y = self._one_hot(Y, rows)
                else:
                    if self._labels is not None:
                        self._check_labels(Y, rows)
                    if self._eye is not None:
                        Y = self._eye[Y]
            if self.sample_weight is not None:
                W = self._gather(self.sample_weight, rows, alloc)
        except (H5FeedError, OSError) as exc:
            _reraise(exc, f"batch {index} of {self.path}, sample IDs {self.ids_for(rows)}")
        if on_read is not None:
            seconds = time.perf_counter() - start
            after = major_faults()
            on_read((seconds, None if faults is None or after is None else after - faults))
        if self.transform is not None:
            if self.takes_place and place is None:
                raise ValueError(
                    f"transform {self.transform!r} takes an rng, which comes from the batch's place in its "
                    f"epoch; batch {index} of {self.path} was asked for without one (draw batches through "
                    "H5Sequence, tf_dataset, or h5feed.torch.BlockBatchSampler)"
                )
            try:
                if self.takes_place:
                    X, Y = self.transform(X, Y, place.rng())  # type: ignore[union-attr]
                else:
                    X, Y = self.transform(X, Y)
            except Exception as exc:
                _reraise(exc, f"transform failed on batch {index} of {self.path} (sample IDs {self.ids_for(rows)})")
        if self.y is None:
            return (X,)
        return (X, Y) if self.sample_weight is None else (X, Y, W)

    def _one_hot(self, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``eye[labels]``, which is the range check too: through the unsigned
        view a negative label is out of range as well (a LayoutError naming
        its row, as :meth:`_check_labels` gives)."""
        unsigned, where = self._labels  # type: ignore[misc]
        try:
            return self._eye[labels.view(unsigned)]  # type: ignore[index]
        except IndexError:
            check_labels(where, labels, self.n_classes, rows)  # type: ignore[arg-type]
            raise

    def _check_labels(self, targets: Any, rows: np.ndarray) -> None:
        """Refuse a class index outside ``[0, n_classes)`` (a LayoutError naming its row)."""
        unsigned, where = self._labels  # type: ignore[misc]
        for labels in _arrays_of(self.y, targets, Y):
            if labels.size and int(labels.view(unsigned).max()) >= self.n_classes:  # type: ignore[operator]
                check_labels(where, labels, self.n_classes, rows)  # type: ignore[arg-type]

    def _gather(self, spec: Any, rows: np.ndarray, alloc: Callable[..., np.ndarray] | None = None) -> Any:
        if alloc is None:
            return _map_columns(spec, lambda name: self.reader.take(name, rows))

        def take(name: str) -> np.ndarray:
            col = self.layout.column(name)
            out = alloc((rows.size, *col.row_shape), col.dtype.newbyteorder("="))
            return self.reader.take(name, rows, out)

        return _map_columns(spec, take)

    def decodes_chunks(self) -> int:
        """Decoded bytes of the chunked datasets a batch reads through the
        chunk cache, per row (0: none; NOTE [ Decoding ahead ] in ``sequence.py``)."""
        if self.reader.decode_threads == 0:
            return 0
        return sum(nbytes for name, nbytes in self.columns() if self.layout.column(name).chunks is not None)

    def prefetch(self, rows: np.ndarray) -> None:
        """Start decoding the chunks ``rows`` need, for every dataset a batch reads."""
        for name, _ in self.columns():
            if self.layout.column(name).chunks is not None:
                self.reader.prefetch(name, rows)

    def empty(self) -> tuple[Any, ...]:
        """A batch of zero rows, made without reading: what every batch is like
        before ``transform`` (structure, dtypes, shapes past the first axis)."""

        def no_rows(name: str) -> np.ndarray:
            col = self.layout.column(name)
            return np.empty((0, *col.row_shape), dtype=col.dtype.newbyteorder("="))

        X = _map_columns(self.x, no_rows)
        if self.y is None:
            return (X,)
        Y = self._eye[np.zeros(0, dtype=np.int64)] if self._eye is not None else _map_columns(self.y, no_rows)
        return (X, Y) if self.sample_weight is None else (X, Y, no_rows(self.sample_weight))

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
        clone.reader = make_reader(
            self.layout, cache_bytes=self.reader.cache_bytes, decode_threads=self.reader.decode_threads
        )
        return clone

    def columns(self) -> list[tuple[str, int]]:
        """``(name, row_nbytes)`` of every dataset a batch reads."""
        names = dict.fromkeys(column_names(self.x) + column_names(self.y) + column_names(self.sample_weight))
        return [(name, self.layout.column(name).row_nbytes) for name in names]

    def batch_nbytes(self, batch_size: int) -> int:
        """Bytes of one batch before ``transform`` (for sizing shared memory)."""
        total = 0
        for spec, is_y in ((self.x, False), (self.y, True), (self.sample_weight, False)):
            for name in column_names(spec):
                col = self.layout.column(name)
                total += col.row_nbytes
                if is_y and self.one_hot:
                    total += 4 * int(self.n_classes or 0)
        return total * batch_size


def _arrays_of(spec: Any, made: Any, name: str) -> list[np.ndarray]:
    """The arrays of ``made`` (shaped like ``spec``) read from dataset ``name``."""
    if isinstance(spec, str):
        return [made] if spec == name else []
    if isinstance(spec, dict):
        return [made[key] for key, value in spec.items() if value == name]
    return [arr for value, arr in zip(spec, made) if value == name]


def _reraise(exc: BaseException, context: str) -> None:
    new = with_context(exc, context)
    if new is exc:
        raise exc
    raise new from exc


def _map_columns(spec: Any, fn: Callable[[str], Any]) -> Any:
    """``fn`` of each dataset name in a column spec (a name, a tuple, a dict), same structure."""
    if isinstance(spec, str):
        return fn(spec)
    if isinstance(spec, dict):
        return {key: fn(name) for key, name in spec.items()}
    return tuple(fn(name) for name in spec)


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
