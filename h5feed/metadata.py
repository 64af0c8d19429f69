"""Reading per-sample metadata, and choosing samples by it.

A file's metadata columns (``meta/<column>``, written by the converters'
``--metadata`` or :meth:`h5feed.DatasetWriter.set_metadata`) hold one value
per row, in row order. :func:`read_metadata` returns them as numpy arrays;
:func:`select_ids` returns the IDs of the rows whose metadata match, ready
for ``H5Sequence(path, ids=...)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import layout as L
from ._damage import read_whole
from ._files import open_h5
from .errors import UnknownColumnError

__all__ = ["read_metadata", "select_ids"]


def _column(f: Any, layout: L.Layout, name: str) -> np.ndarray:
    if name not in layout.metadata:
        raise UnknownColumnError(
            f"{layout.path}: no metadata column {name!r}; the file has {list(layout.metadata)!r}"
        )
    dset = f[L.meta_path(name)]
    if dset.dtype.kind == "O":
        return np.asarray(read_whole(layout.path, dset, as_str=True), dtype=str)
    return np.asarray(read_whole(layout.path, dset))


def read_metadata(path: str | os.PathLike[str], *, allow_virtual: bool = False) -> dict[str, np.ndarray]:
    """The file's metadata columns, each an array of one value per row, in row order.

    Numbers come back as int64 or float64 arrays, text as numpy ``str``
    arrays. A file without metadata gives ``{}``.

    Args:
        path: an h5feed file.
        allow_virtual: accept a file made by ``h5feed merge`` (see
            :func:`h5feed.open_file`).

    Raises:
        FormatError: not a valid h5feed file.
        ReadError: a column cannot be read (damaged).

    Example:
        >>> site = read_metadata("data.h5").get("site")  # doctest: +SKIP
        >>> site[:3]  # doctest: +SKIP
        array(['A', 'A', 'B'], dtype='<U1')
    """
    with open_h5(path) as f:
        layout = L.validate(f, allow_virtual=allow_virtual)
        return {name: _column(f, layout, name) for name in layout.metadata}


def select_ids(path: str | os.PathLike[str], *, allow_virtual: bool = False, **conditions: Any) -> list[str]:
    """The IDs of the rows whose metadata match every condition, in row order.

    Each keyword names a metadata column and gives one value or a list of
    values; a row matches when its value is one of them, in every column
    named (AND across columns, OR within one).

    Args:
        path: an h5feed file.
        allow_virtual: accept a file made by ``h5feed merge``.
        **conditions: ``column=value`` or ``column=[value, ...]``.

    Returns:
        The matching sample IDs (possibly none), for
        ``H5Sequence(path, ids=...)``.

    Raises:
        UnknownColumnError: a column the file does not have (the message
            lists those it has).
        ValueError: text asked of a column of numbers.
        FormatError: not a valid h5feed file.

    Example:
        >>> ids = select_ids("data.h5", site=["A", "B"], scanner="X")  # doctest: +SKIP
        >>> seq = H5Sequence("data.h5", ids=ids, batch_size=32)  # doctest: +SKIP
    """
    if not conditions:
        raise TypeError("select_ids() needs at least one condition, column=value or column=[values]")
    with open_h5(path) as f:
        layout = L.validate(f, allow_virtual=allow_virtual)
        keep = np.ones(layout.n_rows, dtype=bool)
        for name, wanted in conditions.items():
            values = _column(f, layout, name)
            keep &= np.isin(values, _as_list(name, wanted, values))
        return L.read_ids(f, np.flatnonzero(keep))  # only the selected rows' IDs are read


def _as_list(name: str, wanted: Any, values: np.ndarray) -> np.ndarray:
    items = list(wanted) if isinstance(wanted, Iterable) and not isinstance(wanted, (str, bytes)) else [wanted]
    if values.dtype.kind == "U":
        return np.asarray([str(w) for w in items], dtype=str)
    bad = [w for w in items if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, float, np.integer, np.floating))]
    if bad:
        raise ValueError(f"select_ids(): metadata column {name!r} holds numbers. Received: {bad[0]!r}")
    return np.asarray(items, dtype=np.float64 if values.dtype.kind == "f" else None)
