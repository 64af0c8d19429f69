"""Per-sample metadata tables: read from a CSV or a dict, checked, put in row order.

A metadata table is an ``id`` column plus any other columns, one row per
sample. :func:`load_table` reads one (a CSV file or a mapping of columns) and
decides how each column is stored (:func:`h5feed.layout.metadata_dtype`):
from a CSV, a column whose cells are all integers becomes int64, one whose
cells are all numbers (empty cells read as NaN) float64, anything else
UTF-8 text. The writer (:meth:`h5feed.DatasetWriter.set_metadata`) and the
converters (``--metadata``) both go through here; the file layout itself
(``meta/<column>``) is :mod:`h5feed.layout`'s.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import layout as L

__all__ = ["MetaTable", "load_table", "some"]

_INT = re.compile(r"[+-]?\d+")


def some(items: Sequence[Any], n: int = 5) -> str:
    """The first few ``items`` as reprs, for messages about sets.

    Example:
        >>> some(["a", "b", "c"], 2)
        "'a', 'b', ... (3 in all)"
    """
    shown = ", ".join(repr(i) for i in list(items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


@dataclass(frozen=True)
class MetaTable:
    """A checked metadata table.

    Attributes:
        where: the source's name, for messages (the CSV's path, or ``"metadata"``).
        ids: the sample IDs, as an object array of str, unique.
        columns: column name -> values (int64, float64, or an object array
            of str), one per ID, in the order of ``ids``.
    """

    where: str
    ids: np.ndarray
    columns: Mapping[str, np.ndarray]

    def uncovered(self, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """``(missing, extra)``: IDs of ``ids`` without a row here, and IDs
        here that are not in ``ids`` (each in its own order)."""
        mine = set(self.ids.tolist())
        wanted = ids if isinstance(ids, (set, frozenset)) else set(ids)
        missing = [s for s in ids if s not in mine]
        extra = [s for s in self.ids.tolist() if s not in wanted]
        return missing, extra

    def check_covers(self, ids: Sequence[str], source: str, error: type[Exception]) -> None:
        """Refuse a table that does not hold exactly the samples ``ids``.

        Raises:
            error: naming the count and the first few missing or extra IDs.
        """
        missing, extra = self.uncovered(ids)
        if missing:
            raise error(f"{self.where}: {len(missing)} sample(s) of {source} have no metadata row: {some(missing)}")
        if extra:
            raise error(f"{self.where}: {len(extra)} metadata ID(s) are no sample of {source}: {some(extra)}")

    def subset(self, ids: Sequence[str]) -> MetaTable:
        """The rows of ``ids`` (all present), in the order of ``ids``."""
        rows = self.rows_of(ids)
        return MetaTable(self.where, np.array(list(ids), dtype=object), {n: v[rows] for n, v in self.columns.items()})

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """The positions in this table of ``ids`` (all present)."""
        index = {sid: i for i, sid in enumerate(self.ids.tolist())}
        return np.fromiter((index[s] for s in ids), dtype=np.int64, count=len(ids))


def load_table(source: Any, *, error: type[Exception] = ValueError) -> MetaTable:
    """A :class:`MetaTable` from a CSV path, a mapping of columns, or a table.

    Args:
        source: a CSV file (header ``id,<column>,...``; UTF-8), a mapping
            ``{"id": [...], column: [...], ...}`` of equal-length sequences,
            or a :class:`MetaTable` (returned as it is).
        error: the exception class for a bad source (the converters use
            :class:`~h5feed.errors.SourceError`).

    Raises:
        error: a missing file or ``id`` column, a bad or repeated column
            name, a row of the wrong length, an empty or repeated ID,
            columns of unequal length, values that are neither numbers nor
            text.
        TypeError: ``source`` is none of the above.
    """
    if isinstance(source, MetaTable):
        return source
    if isinstance(source, (str, os.PathLike)):
        where, raw = _read_csv(os.fspath(source), error)
        columns = {name: _infer(values) for name, values in raw.items() if name != "id"}
        ids = raw["id"]
    elif isinstance(source, Mapping):
        where = "metadata"
        if "id" not in source:
            raise error(f"{where}: expected an 'id' column. Received columns: {sorted(map(str, source))!r}")
        ids = [i.item() if isinstance(i, np.str_) else i for i in np.asarray(source["id"], dtype=object).tolist()]
        columns = {}
        for name, values in source.items():
            if name == "id":
                continue
            _name(name, where, error)
            arr = np.asarray(values)
            try:
                dtype = L.metadata_dtype(arr)
            except TypeError as exc:
                raise error(f"{where}: column {name!r}: {exc}") from None
            if arr.ndim != 1 or arr.shape[0] != len(ids):
                raise error(f"{where}: column {name!r} has shape {arr.shape!r}; expected ({len(ids)},), one value per ID")
            columns[name] = np.array(arr.tolist(), dtype=object) if dtype.kind == "O" else arr.astype(dtype)
    else:
        raise TypeError(f"metadata must be a CSV path or a mapping of columns with 'id'. Received: {type(source).__name__}")
    bad = [i for i in ids if not isinstance(i, str) or not i or "\x00" in i]
    if bad:
        raise error(f"{where}: sample IDs must be non-empty text. Received: {some(bad)}")
    seen: set[str] = set()
    dupes = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    if dupes:
        raise error(f"{where}: {len(dupes)} ID(s) have more than one metadata row: {some(dupes)}")
    return MetaTable(where, np.array(ids, dtype=object), columns)


def _name(name: Any, where: str, error: type[Exception]) -> str:
    try:
        return L.check_meta_name(name, where)
    except ValueError as exc:
        raise error(str(exc)) from None


def _read_csv(path: str, error: type[Exception]) -> tuple[str, dict[str, list[str]]]:
    if not os.path.isfile(path):
        raise error(f"{path}: no such metadata file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if "id" not in header:
                raise error(f"{path}: expected a CSV header with an 'id' column. Received: {','.join(header)!r}")
            for name in header:
                if name != "id":
                    _name(name, path, error)
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise error(f"{path}: the header names column(s) {repeated!r} more than once")
            cells: list[list[str]] = [[] for _ in header]
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise error(
                        f"{path}, line {reader.line_num}: expected {len(header)} values "
                        f"({','.join(header)}). Received: {row!r}"
                    )
                for column, cell in zip(cells, row):
                    column.append(cell.strip())
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text: {exc}") from exc
    return path, dict(zip(header, cells))


def _infer(cells: list[str]) -> np.ndarray:
    """A CSV column's values: int64, float64 (empty cells NaN), or str.

    Example:
        >>> _infer(["1", "2"]).dtype, _infer(["1", ""]).tolist(), _infer(["a", "1"]).tolist()
        (dtype('int64'), [1.0, nan], ['a', '1'])
    """
    filled = [c for c in cells if c]
    if filled and len(filled) == len(cells) and all(_INT.fullmatch(c) for c in cells):
        try:
            return np.array([int(c) for c in cells], dtype=np.int64)
        except OverflowError:  # beyond int64 (a long barcode): keep it exact, as text
            return np.array(cells, dtype=object)
    if filled:
        try:
            return np.array([float(c) if c else np.nan for c in cells], dtype=np.float64)
        except ValueError:
            pass
    return np.array(cells, dtype=object)
