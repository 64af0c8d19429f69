"""``H5Sequence``: a worker-safe ``keras.utils.PyDataset`` over one h5feed file.

Importing this module imports Keras (and so TensorFlow or the configured
backend); ``import h5feed`` alone does not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import numpy as np

from . import _plan
from ._files import open_h5
from ._keras import keras
from .errors import H5FeedError, UnknownIDError
from .layout import Layout, read_split, validate
from .reader import Reader

__all__ = ["H5Sequence"]

ColumnSpec = Union[str, Sequence[str], Mapping[str, str], None]
_DEFAULT = object()
_PYDATASET_KWARGS = ("workers", "use_multiprocessing", "max_queue_size")


def _normalize_columns(spec: Any, what: str) -> Any:
    """str | list[str] | dict[str, str] -> the same, checked; lists as tuples."""
    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"{what} as a dict must map str to str. Received: {spec!r}")
        if not spec:
            raise ValueError(f"{what} must not be empty")
        return dict(spec)
    if isinstance(spec, (list, tuple)):
        if not spec or not all(isinstance(v, str) for v in spec):
            raise TypeError(f"{what} as a list must hold dataset names (str). Received: {spec!r}")
        return tuple(spec)
    raise TypeError(f"{what} must be a dataset name, a list of names or a dict. Received: {spec!r}")


def _column_names(spec: Any) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, dict):
        return list(spec.values())
    return list(spec)


class H5Sequence(keras.utils.PyDataset):
    """Batches ``(X, Y)`` from one h5feed file, for ``model.fit``.

    Args:
        path: the h5feed file.
        split: a split name to read (``"train"``, ``"validation"``, ...);
            None for all rows.
        ids: sample IDs to read, in this order (the tutorial's
            ``partition['train']``); exclusive with ``split``.
        batch_size: samples per batch.
        shuffle: True for a new permutation every epoch; ``"block"`` for a
            quasi-random order that keeps reads contiguous (blocks of
            ``block_rows`` rows, mixed ``block_window`` blocks at a time);
            False for file (or ``ids``) order.
        seed: the shuffling seed. None draws one; every worker process uses
            the same, so all agree on the epoch order.
        one_hot: one-hot ``Y`` (float32). None means one-hot exactly when the
            file stores ``n_classes``.
        x: the input dataset(s): a name, a list of names (a tuple of arrays),
            or ``{model_input_name: dataset_name}``.
        y: the target dataset(s), same forms; None for inputs only. The
            default is ``"y"`` when the file has it.
        drop_remainder: drop the last, short batch.
        transform: ``fn(X, Y) -> (X, Y)`` applied to each batch in the process
            that reads it; must be a module-level function to work with
            process workers.
        block_rows: block size for ``shuffle="block"`` (default: the chunk
            rows of ``x`` when chunked, else 64).
        block_window: blocks mixed together for ``shuffle="block"``.
        shard: ``(index, count)`` to read only this worker's equal part of
            every epoch (multi-machine training).
        allow_virtual: accept virtual datasets (data in other files); only
            for files whose sources you trust.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size``,
            passed to ``keras.utils.PyDataset``.

    Raises:
        UnknownSplitError: the split is not in the file.
        UnknownIDError: an ID is not in the file.
        FormatError: the file is not a valid h5feed file.
        TypeError: an unknown keyword argument or an option of a wrong type.

    Example:
        >>> seq = H5Sequence("data.h5", "train", batch_size=32, seed=0)  # doctest: +SKIP
        >>> model.fit(seq, validation_data=H5Sequence("data.h5", "validation"))  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str | None = None,
        *,
        ids: Sequence[str] | None = None,
        batch_size: int = 32,
        shuffle: bool | str = True,
        seed: int | None = None,
        one_hot: bool | None = None,
        x: ColumnSpec = "x",
        y: Any = _DEFAULT,
        drop_remainder: bool = False,
        transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        block_rows: int | None = None,
        block_window: int = 8,
        shard: tuple[int, int] | None = None,
        allow_virtual: bool = False,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(_PYDATASET_KWARGS))
        if unknown:
            raise TypeError(
                f"H5Sequence() got unexpected keyword argument(s) {unknown!r}; "
                f"it passes only {list(_PYDATASET_KWARGS)!r} to keras.utils.PyDataset"
            )
        super().__init__(**kwargs)
        self.path = os.path.abspath(os.fspath(path))
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1. Received: {batch_size!r}")
        self.batch_size = int(batch_size)
        if shuffle not in (True, False, "block"):
            raise ValueError(f"shuffle must be True, False or 'block'. Received: {shuffle!r}")
        self.shuffle = shuffle
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int or None. Received: {seed!r}")
        self.seed = int(seed)
        if one_hot is not None and not isinstance(one_hot, (bool, np.bool_)):
            raise TypeError(f"one_hot must be True, False or None. Received: {one_hot!r}")
        if not isinstance(drop_remainder, (bool, np.bool_)):
            raise TypeError(f"drop_remainder must be a bool. Received: {drop_remainder!r}")
        self.drop_remainder = bool(drop_remainder)
        if not isinstance(allow_virtual, (bool, np.bool_)):
            raise TypeError(f"allow_virtual must be a bool. Received: {allow_virtual!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable. Received: {transform!r}")
        self.transform = transform
        if split is not None and ids is not None:
            raise ValueError("pass split or ids, not both")
        if split is not None and not isinstance(split, str):
            raise TypeError(f"split must be a split name (str). Received: {split!r}")
        self.split = split
        self._shard = _normalize_shard(shard)

        with open_h5(self.path) as f:
            # Validate once, here; workers trust this layout (NOTE [ Handles
            # across processes ] in reader.py).
            if ids is not None:
                layout, all_ids = validate(f, return_ids=True, allow_virtual=allow_virtual)
                rows = _rows_for_ids(self.path, all_ids, ids)
            else:
                layout = validate(f, allow_virtual=allow_virtual)
                rows = read_split(f, split) if split is not None else np.arange(layout.n_rows, dtype=np.int64)
        self.layout: Layout = layout
        self._rows = rows

        self.x = _normalize_columns(x, "x")
        if self.x is None:
            raise ValueError("x must name at least one dataset")
        if y is _DEFAULT:
            y = "y" if layout.has_y else None
        self.y = _normalize_columns(y, "y")
        for name in _column_names(self.x) + _column_names(self.y):
            layout.column(name)  # raises LayoutError naming the dataset
        if one_hot is None:
            one_hot = layout.n_classes is not None and self.y == "y"
        if one_hot:
            if layout.n_classes is None:
                raise ValueError(f"{self.path}: one_hot=True needs the file's n_classes attribute; it has none")
            if not isinstance(self.y, str):
                raise ValueError("one_hot=True needs a single y dataset of class indices")
        self.one_hot = bool(one_hot)

        x_col = layout.column(_column_names(self.x)[0])
        if block_rows is None:
            block_rows = x_col.chunk_rows or 64
        self.block_rows = _positive_int(block_rows, "block_rows")
        self.block_window = _positive_int(block_window, "block_window")

        self._reader = Reader(layout)
        self._epoch = 0
        self._epoch_rows = self._compute_epoch_rows(0)

    # -- epochs ------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current epoch number (0-based)."""
        return self._epoch

    @property
    def rows(self) -> np.ndarray:
        """The selected rows in selection order (read-only view)."""
        view = self._rows.view()
        view.flags.writeable = False
        return view

    def _compute_epoch_rows(self, epoch: int) -> np.ndarray:
        n = self._rows.size
        order = _plan.epoch_order(
            n,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=epoch,
            block=self.block_rows,
            window=self.block_window,
        )
        if self._shard is not None:
            start, stop = _plan.shard_bounds(n, *self._shard, drop_remainder=self.drop_remainder)
            order = order[start:stop]
        return self._rows[order]

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch`` (to resume training): its order is recomputed."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0. Received: {epoch!r}")
        self._epoch = int(epoch)
        self._epoch_rows = self._compute_epoch_rows(self._epoch)

    def on_epoch_end(self) -> None:
        """Called by Keras after each epoch: draw the next epoch's order."""
        self.set_epoch(self._epoch + 1)

    def epoch_rows(self) -> np.ndarray:
        """The rows of the current epoch, in batch order (a copy)."""
        n = len(self) * self.batch_size
        return self._epoch_rows[:n].copy()

    # -- the PyDataset protocol --------------------------------------------

    def __len__(self) -> int:
        return _plan.num_batches(self._epoch_rows.size, self.batch_size, drop_remainder=self.drop_remainder)

    @property
    def num_batches(self) -> int:
        return len(self)

    def batch_rows(self, index: int) -> np.ndarray:
        """The file rows of batch ``index`` in the current epoch."""
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"batch index must be an int. Received: {index!r}")
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"batch index {index!r} out of range for {n} batches")
        start, stop = _plan.batch_bounds(int(index), self._epoch_rows.size, self.batch_size)
        return self._epoch_rows[start:stop]

    def __getitem__(self, index: int) -> Any:
        rows = self.batch_rows(index)
        try:
            X = self._gather(self.x, rows)
            if self.y is None:
                Y = None
            else:
                Y = self._gather(self.y, rows)
                if self.one_hot:
                    Y = _one_hot(Y, self.layout.n_classes)  # type: ignore[arg-type]
        except (H5FeedError, OSError) as exc:
            raise _with_context(exc, f"batch {index} of {self.path}, sample IDs {self._ids_for(rows)}") from exc
        if self.transform is not None:
            try:
                X, Y = self.transform(X, Y)
            except Exception as exc:
                raise _with_context(exc, f"transform failed on batch {index} (sample IDs {self._ids_for(rows)})") from exc
        return (X,) if self.y is None else (X, Y)

    def _gather(self, spec: Any, rows: np.ndarray) -> Any:
        if isinstance(spec, str):
            return self._reader.read(spec, rows)
        if isinstance(spec, dict):
            return {key: self._reader.read(name, rows) for key, name in spec.items()}
        return tuple(self._reader.read(name, rows) for name in spec)

    def _ids_for(self, rows: np.ndarray, limit: int = 8) -> str:
        try:
            ids = self._reader.read_ids(rows[:limit])
        except Exception:  # the IDs are context only; never mask the real error
            return f"rows {rows[:limit].tolist()!r}"
        more = f" and {rows.size - limit} more" if rows.size > limit else ""
        return f"{ids!r}{more}"

    # -- resources and pickling --------------------------------------------

    def close(self) -> None:
        """Close this process's file handles (safe twice; reopens on use)."""
        self._reader.close()

    def __enter__(self) -> H5Sequence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # The reader pickles as its layout only (no handles); arrays of rows
        # stay numpy arrays, which pickle compactly.
        return dict(self.__dict__)

    def __repr__(self) -> str:
        what = f"split={self.split!r}" if self.split is not None else f"{self._rows.size} rows"
        return (
            f"<H5Sequence {self.path!r} {what} batch_size={self.batch_size} "
            f"shuffle={self.shuffle!r} epoch={self._epoch} batches={len(self)}>"
        )


def _one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((labels.shape[0], n_classes), dtype=np.float32)
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def _with_context(exc: BaseException, context: str) -> BaseException:
    """The same exception type with ``context`` added, when it can be rebuilt."""
    try:
        return type(exc)(f"{exc} [{context}]")
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc} [{context}]")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1. Received: {value!r}")
    return int(value)


def _normalize_shard(shard: Any) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (index, count). Received: {shard!r}") from None
    for v in (index, count):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"shard must be (index, count) of ints. Received: {shard!r}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must satisfy 0 <= index < count. Received: {shard!r}")
    return int(index), int(count)


def _rows_for_ids(path: str, all_ids: np.ndarray, wanted: Sequence[str]) -> np.ndarray:
    if isinstance(wanted, str):
        raise TypeError(f"ids must be a list of sample IDs, not one string. Received: {wanted!r}")
    row_of = {sid: i for i, sid in enumerate(all_ids.tolist())}
    wanted = list(wanted)
    missing = [sid for sid in wanted if sid not in row_of]
    if missing:
        raise UnknownIDError(
            f"{path}: {len(missing)} of the requested IDs are not in the file, e.g. {missing[:5]!r}"
        )
    return np.fromiter((row_of[sid] for sid in wanted), dtype=np.int64, count=len(wanted))

