"""Which rows and which datasets a batch reader serves: shared by every adapter.

H5Sequence (Keras), the tf.data dataset and the PyTorch dataset select rows
(a split, a list of IDs, or all) and columns (``x``/``y`` as a name, a list or
a dict) the same way; the helpers live here, free of any framework import.

NOTE [ Selections ]
A :class:`Selection` holds the rows an adapter serves without a Python
object per row, and costs at most 8 bytes per selected row: all rows are a
count; a split is its int64 rows, memory-mapped from the file where the
split is stored contiguous (every process then shares the page cache, and a
forked worker copies nothing), else read once; ``ids=`` is the int64 array
its lookup found (``_ids.find_rows``). It is built once, in the process that
opens the file, and pickles small (a count, or where the split lies): worker
threads and processes get it, or their batches' rows, already resolved, and
never validate the file again.
See the design note ``docs/design/scale.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import h5py
import numpy as np

from . import _ids
from ._plan import PIECE
from ._damage import read_whole
from ._files import open_h5
from .layout import IDS, SPLITS, Layout, _contiguous_offset, check_split_rows, split_dataset, validate

__all__ = [
    "DEFAULT_Y",
    "ColumnSpec",
    "EpochRows",
    "Selection",
    "resolve_columns",
    "resolve_sample_weight",
    "column_names",
    "normalize_columns",
    "select_rows",
]

ColumnSpec = Union[str, Sequence[str], Mapping[str, str], None]

# A split's rows are checked this many at a time.
_CHECK_ROWS = 1 << 16

# The default ``y`` of every adapter: "y" when the file has it, else none.
DEFAULT_Y: Any = object()


def normalize_columns(spec: Any, what: str) -> Any:
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


def column_names(spec: Any) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, dict):
        return list(spec.values())
    return list(spec)


class Selection:
    """The rows an adapter serves, in its order (NOTE [ Selections ]).

    Build one with :meth:`all`, :meth:`split` or :meth:`given`.

    Example:
        >>> sel = Selection.given(np.array([5, 2, 9]))
        >>> len(sel), sel.rows_at(np.array([2, 0])).tolist()
        (3, [9, 5])
        >>> Selection.all(4).rows_at(np.array([3, 1])).tolist()
        [3, 1]
    """

    def __init__(self, size: int, rows: np.ndarray | None, mapped: tuple[str, str, int] | None = None) -> None:
        self.size = int(size)
        self._rows = rows
        # (path, dataset, byte offset) of a split stored contiguous as native int64.
        self._mapped = mapped

    @classmethod
    def all(cls, n_rows: int) -> Selection:
        """Every row of the file, in file order."""
        return cls(n_rows, None)

    @classmethod
    def given(cls, rows: np.ndarray) -> Selection:
        """These rows (int64, checked), in this order."""
        return cls(rows.size, np.asarray(rows, dtype=np.int64))

    @classmethod
    def split(cls, f: h5py.File, name: str) -> Selection:
        """The rows of split ``name`` of the open file ``f``, checked once.

        Raises:
            UnknownSplitError: no such split.
            LayoutError: rows out of range or not strictly increasing.
            ReadError: a damaged chunk of the split.
        """
        dset = split_dataset(f, name)
        where = f"{f.filename}:/{SPLITS}/{name}"
        n_rows = int(f[IDS].shape[0])
        count = int(dset.shape[0]) if dset.shape else 0
        offset = _contiguous_offset(dset) if count else None
        if offset is not None and dset.dtype == np.dtype("int64") and dset.dtype.isnative:
            sel = cls(count, None, (os.fspath(f.filename), dset.name, int(offset)))
            rows = sel._array()
        else:
            rows = np.asarray(read_whole(f.filename, dset), dtype=np.int64)
            sel = cls(count, rows)
        # In blocks: the check's temporaries stay small beside the rows.
        for start in range(0, count, _CHECK_ROWS):
            block = rows[max(0, start - 1) : start + _CHECK_ROWS]
            check_split_rows(where, np.asarray(block), n_rows, first=max(0, start - 1))
        return sel

    def _array(self) -> np.ndarray | None:
        if self._rows is None and self._mapped is not None:
            path, name, offset = self._mapped
            self._rows = _ids.map_dataset(path, name, offset, np.int64, self.size)
        return self._rows

    def __len__(self) -> int:
        return self.size

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """The file rows at ``positions`` (int64, in ``[0, size)``) of the selection."""
        rows = self._rows if self._rows is not None else self._array()
        if rows is None:
            return np.asarray(positions, dtype=np.int64)
        return np.asarray(rows[positions], dtype=np.int64)

    def max_row(self) -> int:
        """The largest selected row (-1 when none): splits are sorted."""
        if not self.size:
            return -1
        rows = self._array()
        if rows is None:
            return self.size - 1
        if self._mapped is not None:
            return int(rows[-1])
        if getattr(self, "_max", None) is None:
            self._max = int(rows.max())
        return self._max

    def array(self) -> np.ndarray:
        """Every selected row, in order, as a read-only int64 array."""
        rows = self._array()
        out = np.arange(self.size, dtype=np.int64) if rows is None else rows.view(np.ndarray)
        if out.flags.writeable:
            out = out.view()
            out.flags.writeable = False
        return out

    def __getstate__(self) -> dict[str, Any]:
        # A mapped split travels as where it lies, and is mapped again on use.
        return {"size": self.size, "rows": None if self._mapped else self._rows, "mapped": self._mapped}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["size"], state["rows"], state["mapped"])  # type: ignore[misc]


class EpochRows:
    """The file rows of one epoch in batch order: ``selection`` at the
    positions of ``order`` (an :class:`~h5feed._plan.EpochOrder`), computed a
    piece of ``PIECE`` positions at a time and the last two pieces kept, so
    an epoch costs no array of its own and a batch costs a slice.

    Example:
        >>> from h5feed._plan import EpochOrder
        >>> rows = EpochRows(Selection.given(np.array([7, 8, 9])), EpochOrder(3, shuffle=False, seed=0, epoch=0))
        >>> rows.size, rows[1:3].tolist(), rows.max()
        (3, [8, 9], 9)
    """

    def __init__(self, selection: Selection, order: Any) -> None:
        self.selection = selection
        self.order = order
        self.size = len(order)
        # The rows of the last pieces of the order asked for, as (index,
        # rows), replaced whole as EpochOrder keeps its positions: a batch
        # within a piece is then one slice, as when an epoch was an array.
        self._kept: tuple[tuple[int, np.ndarray], ...] = ()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, where: slice) -> np.ndarray:
        if isinstance(where, slice) and where.step in (None, 1):
            start, stop, _ = where.indices(self.size)
            piece = start // PIECE
            if start < stop and (stop - 1) // PIECE == piece:
                base = piece * PIECE
                return self._piece(piece)[start - base : stop - base]
        return self.selection.rows_at(self.order[where])

    def _piece(self, i: int) -> np.ndarray:
        for index, rows in self._kept:
            if index == i:
                return rows
        rows = self.selection.rows_at(self.order[i * PIECE : (i + 1) * PIECE])
        rows.flags.writeable = False  # slices of it are handed out
        self._kept = ((i, rows), *self._kept[:1])
        return rows

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_kept": ()}

    def max(self) -> int:
        """The largest row the epoch can hold (that of its selection)."""
        return self.selection.max_row()

    def all(self) -> np.ndarray:
        """Every row of the epoch, in order (O(rows))."""
        return self.selection.rows_at(self.order.all())


def select_rows(
    path: str, split: str | None, ids: Sequence[str] | None, *, allow_virtual: bool
) -> tuple[Layout, Selection]:
    """Open and validate ``path`` once; the rows of ``split``, of ``ids``, or all.

    Reads the file's metadata, and the split or the IDs' lookup
    (NOTE [ Selections ]); never every ID.

    Raises:
        ValueError: both ``split`` and ``ids`` given.
        TypeError: ``split`` not a str, ``ids`` a single str.
        UnknownSplitError, UnknownIDError, FormatError: from the file.
    """
    if split is not None and ids is not None:
        raise ValueError("pass split or ids, not both")
    if split is not None and not isinstance(split, str):
        raise TypeError(f"split must be a split name (str). Received: {split!r}")
    if isinstance(ids, str):
        raise TypeError(f"ids must be a list of sample IDs, not one string. Received: {ids!r}")
    with open_h5(os.fspath(path)) as f:
        layout = validate(f, allow_virtual=allow_virtual)
        if ids is not None:
            return layout, Selection.given(_ids.find_rows(f, ids, layout.completion))
        if split is not None:
            return layout, Selection.split(f, split)
    return layout, Selection.all(layout.n_rows)


def resolve_columns(layout: Layout, x: Any, y: Any, one_hot: bool | None) -> tuple[Any, Any, bool]:
    """Check ``x``/``y`` against the layout; settle ``one_hot``.

    Args:
        layout: the file's validated layout.
        x: the input spec (a name, a list of names, a dict).
        y: the target spec, None, or :data:`DEFAULT_Y` ("y" when the file has it).
        one_hot: True, False, or None for "when the file has ``n_classes``
            and ``y`` is its ``"y"``".

    Returns:
        ``(x, y, one_hot)`` normalised.

    Raises:
        LayoutError: a named dataset is not in the file.
        ValueError: no ``x``, or ``one_hot`` without class indices.
    """
    x = normalize_columns(x, "x")
    if x is None:
        raise ValueError("x must name at least one dataset")
    if y is DEFAULT_Y:
        y = "y" if layout.has_y else None
    y = normalize_columns(y, "y")
    for name in column_names(x) + column_names(y):
        layout.column(name)  # raises LayoutError naming the dataset
    if one_hot is None:
        one_hot = layout.n_classes is not None and y == "y"
    if one_hot:
        if layout.n_classes is None:
            raise ValueError(f"{layout.path}: one_hot=True needs the file's n_classes attribute; it has none")
        if not isinstance(y, str):
            raise ValueError("one_hot=True needs a single y dataset of class indices")
    return x, y, bool(one_hot)


def resolve_sample_weight(layout: Layout, name: Any, y: Any) -> str | None:
    """Check ``sample_weight``: None, or a per-row dataset (all are numeric), with targets.

    Raises:
        TypeError: not a name.
        LayoutError: no such per-row dataset.
        ValueError: no targets to weigh.
    """
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"sample_weight must be the name of a dataset (str) or None. Received: {name!r}")
    layout.column(name)  # LayoutError naming the dataset
    if y is None:
        raise ValueError(f"sample_weight={name!r} needs targets to weigh. Received: y=None")
    return name
