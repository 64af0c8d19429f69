"""Which rows and which datasets a batch reader serves: shared by every adapter.

H5Sequence (Keras), the tf.data dataset and the PyTorch dataset select rows
(a split, a list of IDs, or all) and columns (``x``/``y`` as a name, a list or
a dict) the same way; the helpers live here, free of any framework import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np

from ._files import open_h5
from .errors import UnknownIDError
from .layout import Layout, read_split, validate

__all__ = [
    "DEFAULT_Y",
    "ColumnSpec",
    "resolve_columns",
    "column_names",
    "normalize_columns",
    "normalize_shard",
    "positive_int",
    "rows_for_ids",
    "select_rows",
]

ColumnSpec = Union[str, Sequence[str], Mapping[str, str], None]

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


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1. Received: {value!r}")
    return int(value)


def normalize_shard(shard: Any) -> tuple[int, int] | None:
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


def rows_for_ids(path: str, all_ids: np.ndarray, wanted: Sequence[str]) -> np.ndarray:
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


def select_rows(
    path: str, split: str | None, ids: Sequence[str] | None, *, allow_virtual: bool
) -> tuple[Layout, np.ndarray]:
    """Open and validate ``path`` once; the rows of ``split``, of ``ids``, or all.

    Raises:
        ValueError: both ``split`` and ``ids`` given.
        TypeError: ``split`` not a str, ``ids`` a single str.
        UnknownSplitError, UnknownIDError, FormatError: from the file.
    """
    if split is not None and ids is not None:
        raise ValueError("pass split or ids, not both")
    if split is not None and not isinstance(split, str):
        raise TypeError(f"split must be a split name (str). Received: {split!r}")
    with open_h5(os.fspath(path)) as f:
        if ids is not None:
            layout, all_ids = validate(f, return_ids=True, allow_virtual=allow_virtual)
            return layout, rows_for_ids(path, all_ids, ids)
        layout = validate(f, allow_virtual=allow_virtual)
        rows = read_split(f, split) if split is not None else np.arange(layout.n_rows, dtype=np.int64)
    return layout, rows


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
