"""``h5feed merge``: join part files (converted on many machines) into one.

By default the merged file holds *virtual* datasets (HDF5 VDS): ``x``, ``y``
and the extras read their rows straight from the parts, so nothing is
copied. The small datasets -- the IDs, their sorted index, the splits and
the metadata columns (``meta/``) -- are written into the merged file itself
(lookups read the IDs and their index, memory-mapped where they can be, and
a split must be one array). ``copy=True`` (``--copy``) writes a standalone
file instead. Both are written by :class:`~h5feed.writer.DatasetWriter` (a
virtual merge as its virtual columns).

The rules: parts must agree (per-row datasets, row shapes and dtypes,
classes, metadata columns) and their sample IDs must be unique; rows keep the order of the
parts, then each part's own order, and a split is the union of the parts'
splits. Every part is read once to check it against its own completion
record, and the merged file gets a record over its own rows and the sorted
index of its IDs. The IDs are held encoded, never as a Python object each
(NOTE [ IDs at scale ] in ``_ids.py``). A virtual merged file names its
parts relative to its folder, so they must lie in it; readers refuse virtual
datasets unless given ``allow_virtual=True``. See the design note
``docs/design/merged-files.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _ids, _meta, _record
from . import layout as L
from ._damage import touching
from ._files import open_h5
from ._progress import Progress
from ._publish import check_output
from .errors import LayoutError, ReadError, WriterInputError
from .writer import DatasetWriter

__all__ = ["COMMANDS", "merge_files"]

logger = logging.getLogger("h5feed")

@dataclass
class _Part:
    path: str
    layout: L.Layout
    splits: dict[str, np.ndarray]
    offset: int = 0
    # How messages name the part, when not by its path (a converter's
    # output appended as it is written: "the samples of data/").
    shown: str | None = None

    @property
    def where(self) -> str:
        return self.path if self.shown is None else self.shown


def _read_part(path: str) -> _Part:
    with open_h5(path) as f:
        layout = L.validate(f)
        splits = {name: L.read_split(f, name) for name in layout.splits}
    return _Part(path, layout, splits)


def _read_ids(part: _Part) -> _ids.Encoded:
    """The part's IDs, in blocks, checked against its completion record."""
    hasher = hashlib.sha256()
    blocks = []
    with open_h5(part.path) as f:
        for _, block in _ids.blocks(f[L.IDS]):
            _record.hash_ids(hasher, block.data, block.starts, block.ends)
            blocks.append(block)
    recorded = part.layout.completion.get("sha256", {}).get(L.IDS)
    if recorded is not None and recorded != hasher.hexdigest():
        raise LayoutError(
            f"{part.path}:/{L.IDS}: its data does not match the file's completion record "
            f"(SHA-256 {hasher.hexdigest()} != {recorded}); the part is damaged, convert it again"
        )
    return _ids.Encoded.concat(blocks)


def _check_compatible(parts: list[_Part]) -> None:
    first = parts[0]
    want = {name: (c.row_shape, c.dtype) for name, c in first.layout.columns.items()}
    for part in parts[1:]:
        have = {name: (c.row_shape, c.dtype) for name, c in part.layout.columns.items()}
        if set(have) != set(want):
            raise LayoutError(
                f"{part.where}: has per-row datasets {sorted(have)!r}, but {first.where} has "
                f"{sorted(want)!r}; parts must have the same datasets"
            )
        for name, (shape, dtype) in want.items():
            if have[name] != (shape, dtype):
                raise LayoutError(
                    f"{part.where}:/{name}: rows of shape {have[name][0]!r} and dtype {have[name][1]}, "
                    f"but {first.where}:/{name} has {shape!r} and {dtype}; parts must agree"
                )
        for attr in ("n_classes", "class_names"):
            if getattr(part.layout, attr) != getattr(first.layout, attr):
                raise LayoutError(
                    f"{part.where}: {attr} is {getattr(part.layout, attr)!r}, but {first.where} has "
                    f"{getattr(first.layout, attr)!r}; parts must agree"
                )


def _unique_ids(parts: list[_Part], ids: _ids.Encoded | None = None) -> _ids.Encoded:
    """Every part's IDs, in merged row order (``ids``: those, already read).

    Raises:
        LayoutError: an ID repeats (across parts or within one), naming the
            IDs, their parts and rows.
    """
    if ids is None:
        ids = _ids.Encoded.concat([_read_ids(part) for part in parts])
    order, repeats = _ids.sort(ids)
    if repeats.size:
        dupes = []
        for i in repeats[:5].tolist():
            (a, ra), (b, rb) = _row_in_part(parts, int(order[i - 1])), _row_in_part(parts, int(order[i]))
            sid = ids.item(int(order[i]))
            dupes.append(
                f"{sid!r} twice in {a.where} (rows {ra} and {rb})" if a is b else f"{sid!r} in {a.where} and {b.where} (row {rb})"
            )
        raise LayoutError(
            f"sample IDs must be unique across parts; {repeats.size} repeat: " + "; ".join(dupes)
        )
    return ids


def _row_in_part(parts: list[_Part], row: int) -> tuple[_Part, int]:
    """The part that holds ``row`` of the parts' rows one after the other,
    and the row in it."""
    starts = np.cumsum([0] + [p.layout.n_rows for p in parts[:-1]])
    k = int(np.searchsorted(starts, row, side="right")) - 1
    return parts[k], row - int(starts[k])


def _stream_parts(parts: list[_Part], names: list[str], bar: Progress, sink: Any) -> None:
    """Read every part's datasets ``names`` once, side by side, in blocks.

    Checks each part's digests against its completion record and hands each
    block to ``sink(part, start, stop, blocks)``.
    """
    for part in parts:
        with open_h5(part.path) as f:
            dsets = {}
            for name in names:
                with touching(part.path, f"/{name}"):
                    dsets[name] = f[name]
            own = {name: hashlib.sha256() for name in names}
            for start, stop in _record.row_blocks(list(dsets.values())):
                blocks = {}
                for name, dset in dsets.items():
                    with touching(part.path, f"/{name}", ReadError, dset=dset, rows=(start, stop)):
                        blocks[name] = dset[start:stop]
                for name, block in blocks.items():
                    _record.hash_rows(own[name], block)
                sink(part, start, stop, blocks)
                bar.update(stop - start)
        for name in names:
            recorded = part.layout.completion.get("sha256", {}).get(name)
            if recorded is not None and recorded != own[name].hexdigest():
                raise LayoutError(
                    f"{part.path}:/{name}: its data does not match the file's completion record "
                    f"(SHA-256 {own[name].hexdigest()} != {recorded}); the part is damaged, convert it again"
                )


def _merged_splits(parts: list[_Part]) -> dict[str, np.ndarray]:
    names = sorted({name for p in parts for name in p.splits})
    return {
        name: np.concatenate([p.splits[name] + p.offset for p in parts if name in p.splits]).astype(np.int64)
        for name in names
    }


def merge_files(
    parts: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    copy: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    """Merge h5feed part files into one h5feed file (rules in the module docstring).

    Args:
        parts: the part files, in the order their rows should appear.
        output: the merged file to create.
        copy: write a standalone copy instead of virtual datasets.
        overwrite: replace ``output`` if it exists (only on success).
        progress: report rows read to stderr.

    Returns:
        The path written.

    Raises:
        LayoutError: parts that disagree, repeated IDs, a damaged part.
        FormatError: a part is not a valid h5feed file
            (``DamagedFileError`` when HDF5 cannot read its structure).
        ReadError: a part's data cannot be read back (a damaged chunk).
        WriterInputError: no parts, a part given twice, the output is a
            part or cannot be written, or, for a virtual merge, a part lies
            outside the output's folder.
        OutputExistsError: the output exists (without ``overwrite``).

    Example:
        >>> merge_files(["part-0.h5", "part-1.h5"], "all.h5")  # doctest: +SKIP
        >>> H5Sequence("all.h5", "train", allow_virtual=True)  # doctest: +SKIP
    """
    if isinstance(parts, (str, os.PathLike)):
        raise TypeError(f"parts must be a list of paths, not one path. Received: {parts!r}")
    paths = [os.path.abspath(os.fspath(p)) for p in parts]
    output = os.path.abspath(os.fspath(output))
    if not paths:
        raise WriterInputError(f"{output}: merge needs at least one part")
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise WriterInputError(f"{output}: each part may be given once; repeated: {repeated!r}")
    if output in paths:
        raise WriterInputError(f"{output}: is one of the parts; choose another output name")
    folder = os.path.dirname(output)
    if not copy:
        outside = [p for p in paths if L.source_name(p, folder) is None]
        if outside:
            raise WriterInputError(
                f"{output}: a virtual merge reads its parts by paths relative to {folder!r}, "
                f"but {outside[:3]!r} lie outside it; move the parts there or pass --copy"
            )
    check_output(output, overwrite=overwrite)

    loaded = [_read_part(p) for p in paths]
    _check_compatible(loaded)
    offset = 0
    for part in loaded:
        part.offset = offset
        offset += part.layout.n_rows
    n_rows = offset
    ids = _unique_ids(loaded)
    names = list(loaded[0].layout.columns)  # x first, then y and extras
    with Progress(n_rows, f"merging {len(loaded)} parts", enabled=progress) as bar:
        _merge(loaded, ids, output, names, n_rows, overwrite, bar, virtual=not copy)
    logger.info("merged %d parts (%d rows) into %s", len(loaded), n_rows, output)
    return output


def _writer_like(layout: L.Layout, output: str, n_rows: int, names: list[str], **options: Any) -> DatasetWriter:
    """A :class:`DatasetWriter` of ``n_rows`` rows to ``output`` with the
    columns ``names`` of ``layout`` (same row shapes, dtypes and classes):
    how merge, append and compact write what their inputs hold.
    ``options``: more arguments of the writer."""
    x = layout.column(L.X)
    y = layout.columns.get(L.Y)
    extras = {n: (layout.column(n).row_shape, layout.column(n).dtype) for n in names if n not in (L.X, L.Y)}
    return DatasetWriter(
        output,
        sample_shape=x.row_shape,
        dtype=x.dtype,
        target_shape=() if y is None else y.row_shape,
        target_dtype=None if y is None else y.dtype,
        n_classes=layout.n_classes,
        class_names=layout.class_names,
        expected_rows=n_rows,
        extras=extras,
        **options,
    )


def _merge(
    parts: list[_Part], ids: _ids.Encoded, output: str, names: list[str], n_rows: int, overwrite: bool,
    bar: Progress, *, virtual: bool,
) -> None:
    """Write the merged file through :class:`DatasetWriter`: copying the
    rows, or with every per-row dataset a virtual column over the parts (the
    writer still hashes their rows, so both files get the same record).
    ``ids``: every part's IDs in merged row order, given to the writer a
    block at a time."""
    first = parts[0].layout
    extras = [n for n in names if n not in (L.X, L.Y)]
    sources = {name: [(p.path, name) for p in parts] for name in names} if virtual else None
    with _writer_like(parts[0].layout, output, n_rows, names, overwrite=overwrite, virtual=sources) as writer:

        def append(part: _Part, start: int, stop: int, blocks: dict[str, np.ndarray]) -> None:
            first, last = part.offset + start, part.offset + stop
            writer.extend(
                ids.items(range(first, last)),
                blocks[L.X],
                blocks.get(L.Y),
                **{name: blocks[name] for name in extras},
            )

        _stream_parts(parts, names, bar, append)
        for name, rows in _merged_splits(parts).items():
            writer.add_split(name, rows)
        if first.metadata:
            writer.set_metadata(_merged_metadata(parts, ids))


def _merged_metadata(parts: list[_Part], ids: _ids.Encoded) -> _meta.MetaTable:
    """The parts' metadata columns joined in row order, each part's read
    whole and checked against its completion record. Parts must have the
    same columns; a column that is int64 in one part and float64 in another
    becomes float64; text and numbers do not mix."""
    names = parts[0].layout.metadata
    columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for part in parts:
        if part.layout.metadata != names:
            raise LayoutError(
                f"{part.where}: has metadata columns {list(part.layout.metadata)!r}, but {parts[0].where} has "
                f"{list(names)!r}; parts must have the same columns"
            )
        recorded = part.layout.completion.get("sha256", {})
        with open_h5(part.path) as f:
            for name in names:
                path = L.meta_path(name)
                values = _record.read_rows(f[path], 0, part.layout.n_rows)
                if recorded.get(path) not in (None, _record.digest_of(values)):
                    raise LayoutError(
                        f"{part.path}:/{path}: its data does not match the file's completion record; "
                        "the part is damaged, convert it again"
                    )
                columns[name].append(np.asarray(values))
    joined = {}
    for name, blocks in columns.items():
        text = {b.dtype.kind == "O" for b in blocks}
        if len(text) > 1:
            raise LayoutError(f"metadata column {name!r} holds text in some parts and numbers in others; parts must agree")
        joined[name] = np.concatenate(blocks) if text == {False} else np.concatenate(blocks).astype(object)
    # A table is keyed by Python strings: only a merge with metadata holds them.
    return _meta.MetaTable("merge", np.array(ids.items(range(len(ids))), dtype=object), joined)


# -- the command line ---------------------------------------------------------


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("parts", nargs="+", metavar="PART.h5", help="the part files, in row order")
    p.add_argument("-o", "--output", required=True, metavar="ALL.h5", help="the merged file to create")
    p.add_argument(
        "--copy", action="store_true",
        help="write a standalone file (copies the data) instead of virtual datasets over the parts",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _merge_run(args: argparse.Namespace) -> int:
    out = merge_files(args.parts, args.output, copy=args.copy, overwrite=args.overwrite, progress=not args.quiet)
    layout = L.open_and_validate(out, allow_virtual=not args.copy)
    kind = "a standalone copy" if args.copy else "virtual datasets; keep the parts beside it"
    print(f"merged {len(args.parts)} parts ({layout.n_rows} rows) into {out} ({kind})")
    return 0


COMMANDS = [
    ("merge", "join h5feed part files into one file (virtual datasets, or --copy)", _merge_args, _merge_run),
]
