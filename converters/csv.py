"""A CSV table (one sample per row) -> one h5feed file.

The feature columns become ``x`` of shape ``(N, F)``, float32. The label
column becomes ``y``: integer labels are class indices, other numbers are
float32 targets (regression), and text labels become class indices into the
sorted ``class_names`` (``--label-type`` overrides the guess).

The table is read twice and never held in memory: the first pass checks
every row (width, IDs, labels) and counts them, so that the file can be
written contiguous; the second parses the features block by block (in worker
processes with ``workers``).
"""

from __future__ import annotations

import csv as _csv
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from h5feed.errors import SourceError

from ._common import (
    ConversionResult,
    Options,
    block_rows,
    check_partition_ids,
    gather_blocks,
    load_partition,
    weight_value,
    ordered_map,
    some,
    write_dataset,
)

__all__ = ["LABEL_TYPES", "from_csv"]

LABEL_TYPES = ("auto", "index", "name", "value")
_INT = re.compile(r"\s*[+-]?\d+\s*")


@dataclass(frozen=True)
class _Task:
    path: str
    lines: tuple[int, ...]
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def _parse_block(task: _Task) -> np.ndarray:
    """Feature cells -> float32 ``(k, F)``, naming the cell that fails (runs in workers)."""
    try:
        return np.array(task.rows, dtype=np.float32).reshape(len(task.rows), len(task.columns))
    except ValueError:
        pass
    for line, row in zip(task.lines, task.rows):
        for column, cell in zip(task.columns, row):
            try:
                float(cell)
            except ValueError:
                raise SourceError(
                    f"{task.path}, line {line}, column {column!r}: expected a number. Received: {cell!r}"
                ) from None
    raise SourceError(f"{task.path}: cannot parse lines {task.lines[0]}..{task.lines[-1]} as numbers")


def _open(path: str) -> Any:
    return open(path, encoding="utf-8-sig", newline="")


def _rows(path: str, width: int) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line, cells)`` of every data row, checking its width."""
    try:
        with _open(path) as fh:
            reader = _csv.reader(fh)
            next(reader, None)
            for cells in reader:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # blank line
                if len(cells) != width:
                    raise SourceError(
                        f"{path}, line {reader.line_num}: expected {width} values like the header. "
                        f"Received: {len(cells)}"
                    )
                yield reader.line_num, cells
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text: {exc}") from exc
    except _csv.Error as exc:
        raise SourceError(f"{path}: malformed CSV: {exc}") from exc


def _header(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise SourceError(f"{path}: no such file")
    try:
        with _open(path) as fh:
            header = next(_csv.reader(fh), None)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text: {exc}") from exc
    if not header:
        raise SourceError(f"{path}: empty file (an empty source); expected a header row")
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise SourceError(f"{path}: the header repeats column(s) {some(dupes)}")
    return header


def _column(path: str, header: list[str], name: str, what: str) -> int:
    if name not in header:
        raise SourceError(f"{path}: no {what} column {name!r}; the header has {some(header, 12)}")
    return header.index(name)


def _labels(path: str, column: str, texts: list[str], lines: list[int], label_type: str) -> tuple[np.ndarray, int | None, list[str] | None]:
    """Label texts -> ``(y, n_classes, class_names)`` by ``label_type``."""
    for text, line in zip(texts, lines):
        if not text.strip():
            raise SourceError(f"{path}, line {line}, column {column!r}: empty label")
    if label_type == "auto":
        if all(_INT.fullmatch(t) for t in texts):
            label_type = "index"
        else:
            try:
                np.array(texts, dtype=np.float64)
                label_type = "value"
            except ValueError:
                label_type = "name"
    if label_type == "name":
        names = sorted(set(t.strip() for t in texts))
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[t.strip()] for t in texts], dtype=np.int64), len(names), names
    if label_type == "index":
        values = np.empty(len(texts), dtype=np.int64)
        for i, (text, line) in enumerate(zip(texts, lines)):
            if not _INT.fullmatch(text):
                raise SourceError(
                    f"{path}, line {line}, column {column!r}: expected an integer class index. Received: {text!r}"
                )
            values[i] = int(text)
            if values[i] < 0:
                raise SourceError(
                    f"{path}, line {line}, column {column!r}: class index {int(values[i])!r} is negative"
                )
        return values, int(values.max()) + 1, None
    values32 = np.empty(len(texts), dtype=np.float32)
    for i, (text, line) in enumerate(zip(texts, lines)):
        try:
            values32[i] = float(text)
        except ValueError:
            raise SourceError(f"{path}, line {line}, column {column!r}: expected a number. Received: {text!r}") from None
    return values32, None, None


def from_csv(
    table: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    label_column: str | None,
    id_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    label_type: str = "auto",
    partition: str | os.PathLike[str] | Mapping[str, Sequence[str]] | None = None,
    compression: str | None = None,
    chunk_rows: int | None = None,
    shuffle_rows: bool = False,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    checksum: bool = False,
    quiet: bool = True,
    progress: Any = None,
    shard: tuple[int, int] | str | None = None,
    metadata: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    append_to: str | os.PathLike[str] | None = None,
    weight_column: str | None = None,
) -> ConversionResult:
    """Convert a CSV table with a header row, one sample per row.

    Args:
        table: the CSV file (UTF-8, comma-separated, a header row).
        out: the h5feed file to write (or give ``append_to``).
        label_column: the column holding the labels; None for unlabelled data.
        id_column: the column holding unique sample IDs; None numbers the rows
            ``"0"``, ``"1"``, ... (data rows, from 0).
        feature_columns: the columns that make up ``x``, in this order
            (default: every other column).
        weight_column: the column holding per-sample weights (finite
            numbers >= 0), written as the float32 dataset ``w`` for
            ``H5Sequence(..., sample_weight="w")``; None for none.
        label_type: ``"auto"`` (integers are class indices, other numbers
            float targets, anything else class names), ``"index"``,
            ``"name"`` or ``"value"``.
        partition: ``{split: [IDs]}`` as for
            :func:`~h5feed.convert.from_npy_dir`.
        compression, chunk_rows, shuffle_rows, seed, workers, overwrite,
        checksum, quiet, progress, shard, metadata, append_to: as for
            :func:`~h5feed.convert.from_npy_dir`.

    Returns:
        A :class:`ConversionResult`.

    Raises:
        SourceError: a missing column, a row of the wrong width, an empty or
            duplicate ID, an empty or bad label, a feature that is not a
            number, a weight that is not a finite number >= 0, no rows.
    """
    options = Options(compression=compression, chunk_rows=chunk_rows, shuffle_rows=shuffle_rows, seed=seed,
                      workers=workers, overwrite=overwrite, checksum=checksum, quiet=quiet, progress=progress,
                      shard=shard, metadata=metadata, append_to=append_to)
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES!r}. Received: {label_type!r}")
    out = options.output(out)
    path = os.fspath(table)
    header = _header(path)
    label_at = None if label_column is None else _column(path, header, label_column, "label")
    id_at = None if id_column is None else _column(path, header, id_column, "ID")
    weight_at = None if weight_column is None else _column(path, header, weight_column, "weight")
    if feature_columns is None:
        features = [i for i in range(len(header)) if i not in (label_at, id_at, weight_at)]
    else:
        if isinstance(feature_columns, str):
            raise TypeError(f"feature_columns must be a list of column names. Received: {feature_columns!r}")
        features = [_column(path, header, c, "feature") for c in feature_columns]
        used = [header[i] for i in features if i in (label_at, id_at, weight_at)]
        if used:
            raise SourceError(f"{path}: column(s) {some(used)} cannot be both a feature and the label, ID or weight")
    if weight_at is not None and weight_at in (label_at, id_at):
        raise SourceError(f"{path}: column {weight_column!r} cannot be both the weight and the label or ID")
    if not features:
        raise SourceError(f"{path}: no feature columns besides the label, ID and weight columns")
    feature_names = tuple(header[i] for i in features)

    # Pass 1: check every row, collect IDs and labels.
    ids: list[str] = []
    lines: list[int] = []
    label_texts: list[str] = []
    weight_map: dict[str, float] | None = None if weight_at is None else {}
    first_line: dict[str, int] = {}
    dupes: list[str] = []
    for line, cells in _rows(path, len(header)):
        if id_at is None:
            sid = str(len(ids))
        else:
            sid = cells[id_at].strip()
            if not sid:
                raise SourceError(f"{path}, line {line}, column {id_column!r}: empty sample ID")
            if sid in first_line:
                dupes.append(sid)
            first_line[sid] = line
        ids.append(sid)
        lines.append(line)
        if label_at is not None:
            label_texts.append(cells[label_at])
        if weight_map is not None:
            weight_map[sid] = weight_value(cells[weight_at], f"{path}, line {line}, column {weight_column!r}")
    if not ids:
        raise SourceError(f"{path}: no data rows (an empty source)")
    if dupes:
        raise SourceError(f"{path}: {len(dupes)} duplicate sample ID(s) in column {id_column!r}, e.g. {some(dupes)}")
    y, n_classes, class_names = (None, None, None)
    if label_at is not None:
        y, n_classes, class_names = _labels(path, header[label_at], label_texts, lines, label_type)
    del label_texts
    splits: dict[str, list[str]] = {}
    if partition is not None:
        where, splits = load_partition(partition)
        check_partition_ids(where, splits, set(ids), path)

    # Pass 2: parse features block by block, in file order.
    step = block_rows(4 * len(features))

    def tasks() -> Iterator[_Task]:
        rows: list[tuple[str, ...]] = []
        row_lines: list[int] = []
        for line, cells in _rows(path, len(header)):
            rows.append(tuple(cells[i] for i in features))
            row_lines.append(line)
            if len(rows) == step:
                yield _Task(path, tuple(row_lines), feature_names, tuple(rows))
                rows, row_lines = [], []
        if rows:
            yield _Task(path, tuple(row_lines), feature_names, tuple(rows))

    def in_file_order() -> Iterator[np.ndarray]:
        parsed = ordered_map(_parse_block, tasks(), workers=options.workers)
        try:
            yield from parsed
        finally:
            parsed.close()

    order = options.select(ids, path)
    target_dtype = None if y is None else y.dtype

    if not options.shuffle_rows:
        # With a shard, every row is still parsed (a CSV is read from its
        # start) but only the shard's rows are written.
        keep = None
        if options.shard is not None:
            keep = np.zeros(len(ids), dtype=bool)
            keep[order] = True

        def blocks() -> Iterator[Any]:
            start = 0
            for xs in in_file_order():
                k = xs.shape[0]
                block_ids, block_y = ids[start : start + k], None if y is None else y[start : start + k]
                if keep is not None:
                    sel = keep[start : start + k]
                    block_ids = [sid for sid, s in zip(block_ids, sel.tolist()) if s]
                    xs, block_y = xs[sel], None if block_y is None else block_y[sel]
                start += k
                if len(block_ids):
                    yield block_ids, xs, block_y

        return write_dataset(
            out, blocks(), options=options, n_rows=len(order), sample_shape=(len(features),), dtype=np.float32,
            target_dtype=target_dtype, n_classes=n_classes, class_names=class_names, splits=splits,
            weights=weight_map, label=f"converting {path}",
        )
    # Shuffled rows: stage the parsed features in a memory-mapped scratch
    # file beside the output, then write them in the shuffled order.
    scratch = tempfile.mkdtemp(prefix=".h5feed-csv-", dir=os.path.dirname(os.path.abspath(os.fspath(out))))
    try:
        staged = np.lib.format.open_memmap(
            os.path.join(scratch, "x.npy"), mode="w+", dtype=np.float32, shape=(len(ids), len(features))
        )
        start = 0
        for xs in in_file_order():
            staged[start : start + xs.shape[0]] = xs
            start += xs.shape[0]
        staged.flush()
        return write_dataset(
            out, gather_blocks(staged, y, ids, order, step), options=options, n_rows=len(order),
            sample_shape=(len(features),), dtype=np.float32, target_dtype=target_dtype, n_classes=n_classes,
            class_names=class_names, splits=splits, weights=weight_map, label=f"converting {path}",
        )
    finally:
        staged = None  # noqa: F841 - release the map before removing its file
        shutil.rmtree(scratch, ignore_errors=True)
