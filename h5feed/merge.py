"""``h5feed merge``: join part files (converted on many machines) into one.

By default the merged file holds *virtual* datasets (HDF5 VDS): ``x``, ``y``
and the extras read their rows straight from the parts, so nothing is
copied. The small datasets -- the IDs and the splits -- are written into the
merged file itself (the IDs are read whole at every open, and a split must be
one array). ``copy=True`` (``--copy``) writes a standalone file through
:class:`~h5feed.writer.DatasetWriter` instead.

NOTE [ Merged files ]
- Parts must agree: the same per-row datasets with the same row shapes and
  dtypes, the same ``n_classes`` and ``class_names``. Sample IDs must be
  unique across parts; the error names the repeated IDs and their parts.
- Rows keep the order of the parts as given, then each part's own order; a
  split of the merged file is the union of that split in every part (with
  each part's rows shifted by its offset).
- Every part's data is read once, block by block, to hash it: each part's
  digests are checked against its own completion record (a damaged part is
  refused), and the merged file gets a completion record over its own rows,
  so ``verify`` checks a merged file like any other.
- A virtual merged file names its parts by paths relative to its own folder,
  so the parts must lie in that folder (or below it), and the folder can be
  moved as a whole. Readers refuse virtual datasets unless asked
  (``allow_virtual=True``; NOTE [ Trusting virtual datasets ] in layout.py),
  and then read the parts directly (NOTE [ Reading virtual datasets ] in
  _parts.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from . import layout as L
from ._files import open_h5
from ._progress import Progress
from .errors import LayoutError, WriterError
from .writer import _TMP_SUFFIX, DatasetWriter, _fsync_dir, _remove_stale_temporaries

__all__ = ["COMMANDS", "merge_files"]

logger = logging.getLogger("h5feed")

_BLOCK_BYTES = 8 * 1024 * 1024


@dataclass
class _Part:
    path: str
    layout: L.Layout
    ids: np.ndarray
    splits: dict[str, np.ndarray]
    offset: int = 0


def _read_part(path: str) -> _Part:
    with open_h5(path) as f:
        layout, ids = L.validate(f, return_ids=True)
        splits = {name: L.read_split(f, name) for name in layout.splits}
    return _Part(path, layout, ids, splits)


def _check_compatible(parts: list[_Part]) -> None:
    first = parts[0]
    want = {name: (c.row_shape, c.dtype) for name, c in first.layout.columns.items()}
    for part in parts[1:]:
        have = {name: (c.row_shape, c.dtype) for name, c in part.layout.columns.items()}
        if set(have) != set(want):
            raise LayoutError(
                f"{part.path}: has per-row datasets {sorted(have)!r}, but {first.path} has "
                f"{sorted(want)!r}; parts must have the same datasets"
            )
        for name, (shape, dtype) in want.items():
            if have[name] != (shape, dtype):
                raise LayoutError(
                    f"{part.path}:/{name}: rows of shape {have[name][0]!r} and dtype {have[name][1]}, "
                    f"but {first.path}:/{name} has {shape!r} and {dtype}; parts must agree"
                )
        for attr in ("n_classes", "class_names"):
            if getattr(part.layout, attr) != getattr(first.layout, attr):
                raise LayoutError(
                    f"{part.path}: {attr} is {getattr(part.layout, attr)!r}, but {first.path} has "
                    f"{getattr(first.layout, attr)!r}; parts must agree"
                )


def _check_unique_ids(parts: list[_Part]) -> None:
    seen: dict[str, int] = {}
    dupes: list[str] = []
    n_dupes = 0
    for k, part in enumerate(parts):
        for row, sid in enumerate(part.ids.tolist()):
            first = seen.setdefault(sid, k)
            if first != k:
                n_dupes += 1
                if len(dupes) < 5:
                    dupes.append(f"{sid!r} in {parts[first].path} and {part.path} (row {row})")
    if n_dupes:
        raise LayoutError(
            f"sample IDs must be unique across parts; {n_dupes} repeat: " + "; ".join(dupes)
        )


def _stream_parts(parts: list[_Part], names: list[str], bar: Progress, sink: Any = None) -> dict[str, str]:
    """Read every part's datasets ``names`` once, in blocks of whole rows.

    Checks each part's digests against its completion record, hashes the
    merged rows, and hands each block to ``sink(part, start, stop, blocks)``.

    Returns:
        The merged file's digest of each dataset in ``names``.
    """
    merged = {name: hashlib.sha256() for name in names}
    for part in parts:
        with open_h5(part.path) as f:
            dsets = {name: f[name] for name in names}
            own = {name: hashlib.sha256() for name in names}
            row_bytes = sum(
                max(1, int(np.prod(d.shape[1:], dtype=np.int64)) * d.dtype.itemsize) for d in dsets.values()
            )
            step = max(1, _BLOCK_BYTES // row_bytes)
            n = part.layout.n_rows
            for start in range(0, n, step):
                stop = min(n, start + step)
                blocks = {name: dsets[name][start:stop] for name in names}
                for name, block in blocks.items():
                    L.hash_rows(own[name], block)
                    L.hash_rows(merged[name], block)
                if sink is not None:
                    sink(part, start, stop, blocks)
                bar.update(stop - start)
        for name in names:
            recorded = part.layout.completion.get("sha256", {}).get(name)
            if recorded is not None and recorded != own[name].hexdigest():
                raise LayoutError(
                    f"{part.path}:/{name}: its data does not match the file's completion record "
                    f"(SHA-256 {own[name].hexdigest()} != {recorded}); the part is damaged, convert it again"
                )
    return {name: h.hexdigest() for name, h in merged.items()}


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
    """Merge h5feed part files into one h5feed file; see NOTE [ Merged files ].

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
        FormatError: a part is not a valid h5feed file.
        WriterError: no parts, a part given twice, the output exists
            (without ``overwrite``) or is a part, or, for a virtual merge, a
            part lies outside the output's folder.

    Example:
        >>> merge_files(["part-0.h5", "part-1.h5"], "all.h5")  # doctest: +SKIP
        >>> H5Sequence("all.h5", "train", allow_virtual=True)  # doctest: +SKIP
    """
    if isinstance(parts, (str, os.PathLike)):
        raise TypeError(f"parts must be a list of paths, not one path. Received: {parts!r}")
    paths = [os.path.abspath(os.fspath(p)) for p in parts]
    output = os.path.abspath(os.fspath(output))
    if not paths:
        raise WriterError(f"{output}: merge needs at least one part")
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise WriterError(f"{output}: each part may be given once; repeated: {repeated!r}")
    if output in paths:
        raise WriterError(f"{output}: is one of the parts; choose another output name")
    folder = os.path.dirname(output)
    if not copy:
        outside = [p for p in paths if os.path.relpath(p, folder).split(os.sep)[0] == os.pardir]
        if outside:
            raise WriterError(
                f"{output}: a virtual merge reads its parts by paths relative to {folder!r}, "
                f"but {outside[:3]!r} lie outside it; move the parts there or pass --copy"
            )
    if os.path.lexists(output) and not overwrite:
        raise WriterError(f"{output}: already exists; pass overwrite=True (--overwrite) to replace it")

    loaded = [_read_part(p) for p in paths]
    _check_compatible(loaded)
    _check_unique_ids(loaded)
    offset = 0
    for part in loaded:
        part.offset = offset
        offset += part.layout.n_rows
    n_rows = offset
    names = list(loaded[0].layout.columns)  # x first, then y and extras
    with Progress(n_rows, f"merging {len(loaded)} parts", enabled=progress) as bar:
        if copy:
            _merge_copy(loaded, output, names, n_rows, overwrite, bar)
        else:
            _merge_virtual(loaded, output, names, n_rows, overwrite, bar)
    logger.info("merged %d parts (%d rows) into %s", len(loaded), n_rows, output)
    return output


def _merge_copy(parts: list[_Part], output: str, names: list[str], n_rows: int, overwrite: bool, bar: Progress) -> None:
    first = parts[0].layout
    x = first.column(L.X)
    y = first.columns.get(L.Y)
    extras = {n: (first.column(n).row_shape, first.column(n).dtype) for n in names if n not in (L.X, L.Y)}
    with DatasetWriter(
        output,
        sample_shape=x.row_shape,
        dtype=x.dtype,
        target_shape=() if y is None else y.row_shape,
        target_dtype=None if y is None else y.dtype,
        n_classes=first.n_classes,
        class_names=first.class_names,
        expected_rows=n_rows,
        extras=extras,
        overwrite=overwrite,
    ) as writer:

        def append(part: _Part, start: int, stop: int, blocks: dict[str, np.ndarray]) -> None:
            writer.extend(
                part.ids[start:stop].tolist(),
                blocks[L.X],
                blocks.get(L.Y),
                **{name: blocks[name] for name in extras},
            )

        _stream_parts(parts, names, bar, append)
        for name, rows in _merged_splits(parts).items():
            writer.add_split(name, rows)


def _merge_virtual(parts: list[_Part], output: str, names: list[str], n_rows: int, overwrite: bool, bar: Progress) -> None:
    folder, base = os.path.split(output)
    _remove_stale_temporaries(folder, base)
    tmp = os.path.join(folder, f".{base}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        digests = _stream_parts(parts, names, bar)
        ids = np.concatenate([p.ids for p in parts])
        id_hasher = hashlib.sha256()
        L.hash_rows(id_hasher, ids.tolist())
        digests[L.IDS] = id_hasher.hexdigest()
        first = parts[0].layout
        with h5py.File(tmp, "w-", libver=("earliest", "latest")) as f:
            f.create_dataset(L.IDS, data=ids.astype(object), dtype=h5py.string_dtype("utf-8"))
            for name in names:
                col = first.column(name)
                vlayout = h5py.VirtualLayout(shape=(n_rows, *col.row_shape), dtype=col.dtype)
                for part in parts:
                    k = part.layout.n_rows
                    if k == 0:
                        continue
                    rel = os.path.relpath(part.path, folder).replace(os.sep, "/")
                    vlayout[part.offset : part.offset + k] = h5py.VirtualSource(rel, name, shape=(k, *col.row_shape))
                f.create_virtual_dataset(name, vlayout)
            splits = _merged_splits(parts)
            if splits:
                group = f.create_group(L.SPLITS)
                for name, rows in splits.items():
                    group.create_dataset(name, data=rows, dtype=np.int64)
                    h = hashlib.sha256()
                    L.hash_rows(h, rows)
                    digests[f"{L.SPLITS}/{name}"] = h.hexdigest()
            f.attrs[L.ATTR_FORMAT] = np.int64(L.FORMAT_VERSION)
            if first.n_classes is not None:
                f.attrs[L.ATTR_N_CLASSES] = np.int64(first.n_classes)
            if first.class_names is not None:
                f.attrs.create(L.ATTR_CLASS_NAMES, list(first.class_names), dtype=h5py.string_dtype("utf-8"))
            record = {
                "rows": n_rows,
                "sha256": digests,
                "parts": [os.path.relpath(p.path, folder).replace(os.sep, "/") for p in parts],
            }
            # The completion record goes last: a file with it is whole.
            f.attrs[L.ATTR_COMPLETE] = json.dumps(record, sort_keys=True)
        # The merged file must open as a trusted virtual file before it takes
        # its final name.
        L.open_and_validate(tmp, allow_virtual=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, output)
        else:
            try:
                os.link(tmp, output)
            except FileExistsError:
                raise WriterError(f"{output}: appeared while merging; pass overwrite=True to replace it") from None
            os.unlink(tmp)
        _fsync_dir(folder)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
