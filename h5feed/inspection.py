"""``h5feed info`` and ``h5feed verify``: describe a file, and prove it sound.

:func:`describe` reads the layout and the labels (for class counts), never
the samples. :func:`verify` validates the layout and then reads every row of
every dataset once, chunk by chunk, comparing each dataset with the SHA-256
of the completion record; a chunk that cannot be read (a failed Fletcher32
checksum, a damaged compressed block) is reported with its rows, and the
check goes on with the next chunk, so one run lists every damaged place.
Reading the rows, it also makes every check that opening a file leaves out
(NOTE [ Opening reads metadata only ] in ``layout.py``): the IDs valid and
unique, the ID index consistent with them, every class index in range, every
split sorted and in range.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from . import _ids, _record
from . import layout as L
from ._damage import damaged_chunks, first_line, touching
from ._files import open_h5
from ._progress import Progress
from .errors import FormatError, H5FeedError, InvalidSampleIDError, LayoutError, NotH5FeedFileError, ReadError

__all__ = ["COMMANDS", "VerifyReport", "describe", "verify"]

EXIT_OK, EXIT_FAILED = 0, 1
# Above this many classes the text output shows the first ones only.
_MAX_CLASSES_SHOWN = 20


# -- info ----------------------------------------------------------------------


def _dataset_info(dset: h5py.Dataset) -> dict[str, Any]:
    is_str = h5py.check_string_dtype(dset.dtype) is not None
    return {
        "shape": [int(s) for s in dset.shape],
        "dtype": "utf-8 string" if is_str else str(dset.dtype),
        "layout": "virtual" if dset.is_virtual else "chunked" if dset.chunks is not None else "contiguous",
        "chunks": None if dset.chunks is None else [int(c) for c in dset.chunks],
        "compression": L.compression_of(dset),
        "checksum": bool(dset.fletcher32),
        "stored_bytes": int(dset.id.get_storage_size()),
    }


def _class_counts(f: h5py.File, n_classes: int, splits: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Class counts over all rows and per split, reading ``y`` in blocks."""
    y = f[L.Y]
    n = y.shape[0]
    counts = {"all": np.zeros(n_classes, dtype=np.int64)}
    counts.update({name: np.zeros(n_classes, dtype=np.int64) for name in splits})
    step = 1 << 20
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = y[start:stop]
        L.check_labels(f"{f.filename}:/{L.Y}", block, n_classes, start)
        counts["all"] += np.bincount(block, minlength=n_classes)[:n_classes]
        for name, rows in splits.items():
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi > lo:
                counts[name] += np.bincount(block[rows[lo:hi] - start], minlength=n_classes)[:n_classes]
    return {name: c.tolist() for name, c in counts.items()}


def describe(path: str | os.PathLike[str], *, allow_virtual: bool = False) -> dict[str, Any]:
    """Everything ``h5feed info`` shows, as a JSON-ready dict.

    Keys: ``path``, ``format``, ``rows``, ``file_bytes``, ``datasets``
    (name -> shape, dtype, layout, chunks, compression, checksum,
    stored_bytes; metadata columns as ``meta/<column>``), ``metadata``
    (the metadata column names), ``n_classes``, ``class_names``, ``splits`` (name -> rows),
    ``parts`` (a grown file's parts, relative to its folder, and the bytes
    they hold: ``[[name, bytes], ...]``; None for any other file),
    ``split_files`` (likewise a grown file's split files; None for any other file)
    and, when ``y`` holds class indices, ``class_counts`` (``"all"`` and each
    split -> one count per class).

    Raises:
        FormatError: the file is not a valid h5feed file (the subclass says
            why; ``DamagedFileError`` when HDF5 cannot read its structure).
        ReadError: the labels or a split cannot be read.
    """
    with open_h5(path) as f:
        layout = L.validate(f, allow_virtual=allow_virtual)
        datasets = {}
        for name in (L.IDS, *layout.columns, *(L.meta_path(m) for m in layout.metadata)):
            with touching(f.filename, f"/{name}"):
                datasets[name] = _dataset_info(f[name])
        split_rows = {name: L.read_split(f, name) for name in layout.splits}
        info: dict[str, Any] = {
            "path": os.path.abspath(os.fspath(path)),
            "format": L.FORMAT_VERSION,
            "rows": layout.n_rows,
            "file_bytes": os.path.getsize(path),
            "datasets": datasets,
            "n_classes": layout.n_classes,
            "class_names": None if layout.class_names is None else list(layout.class_names),
            "splits": {name: int(rows.size) for name, rows in split_rows.items()},
            "metadata": list(layout.metadata),
            "parts": None,
            "split_files": None,
        }
        if "part_records" in layout.completion:  # a grown file (h5feed append)
            base = os.path.dirname(os.path.abspath(os.fspath(path)))
            info["parts"] = [[name, os.path.getsize(os.path.join(base, name))] for name in layout.completion["parts"]]
            info["split_files"] = [[name, os.path.getsize(os.path.join(base, name))]
                                   for name in L.grown_split_files(layout.completion)]
        if layout.n_classes is not None:
            with touching(f.filename, f"/{L.Y}", ReadError):
                info["class_counts"] = _class_counts(f, layout.n_classes, split_rows)
    return info


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def format_info(info: dict[str, Any]) -> str:
    """The text form of :func:`describe`'s dict."""
    lines = [f"{info['path']}: h5feed format {info['format']}, {info['rows']} rows, {_human_bytes(info['file_bytes'])}"]
    lines.append("datasets:")
    table = []
    for name, d in info["datasets"].items():
        storage = d["layout"] + (f" {tuple(d['chunks'])}" if d["chunks"] else "")
        filters = ", ".join(x for x in (d["compression"], "fletcher32" if d["checksum"] else None) if x) or "no filters"
        table.append((name, str(tuple(d["shape"])), d["dtype"], storage, filters, _human_bytes(d["stored_bytes"])))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    names = info["class_names"]
    if info["n_classes"] is not None:
        shown = f": {', '.join(names[:_MAX_CLASSES_SHOWN])}" + (", ..." if len(names) > _MAX_CLASSES_SHOWN else "") if names else ""
        lines.append(f"classes: {info['n_classes']}{shown}")
    elif L.Y in info["datasets"]:
        lines.append("targets: y (no n_classes: numeric targets)")
    else:
        lines.append("targets: none (unlabelled)")
    counts = info.get("class_counts", {})
    if info["splits"]:
        lines.append("splits:")
        width = max(len(s) for s in info["splits"])
        for name, rows in info["splits"].items():
            lines.append(f"  {name.ljust(width)}  {rows} rows" + _counts_text(counts.get(name), names))
    else:
        lines.append("splits: none")
    if info.get("metadata"):
        lines.append(f"metadata: {', '.join(info['metadata'])} (h5feed.read_metadata)")
    if info.get("parts"):
        files = info.get("split_files") or []
        total = sum(size for _, size in info["parts"] + files)
        folder = os.path.dirname(info["parts"][0][0])
        also = f" and {len(files)} split file{'s' if len(files) != 1 else ''}" if files else ""
        lines.append(
            f"grown: {len(info['parts'])} parts{also} in {folder}/, {_human_bytes(total)} "
            "(h5feed compact makes one file)"
        )
    if "all" in counts:
        lines.append(f"class counts (all rows):{_counts_text(counts['all'], names, prefix='')}")
    return "\n".join(lines)


def _counts_text(counts: list[int] | None, names: list[str] | None, prefix: str = "   classes") -> str:
    if counts is None:
        return ""
    labels = names if names else [str(i) for i in range(len(counts))]
    parts = [f"{label}={c}" for label, c in zip(labels, counts)][:_MAX_CLASSES_SHOWN]
    more = " ..." if len(counts) > _MAX_CLASSES_SHOWN else ""
    return f"{prefix} " + " ".join(parts) + more


# -- verify --------------------------------------------------------------------


@dataclass
class VerifyReport:
    """What :func:`verify` found.

    Attributes:
        path: the file.
        problems: one message per problem found (empty when sound).
        checked: dataset path -> rows read and hashed, for datasets that
            matched their stored SHA-256.
    """

    path: str
    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def sound(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sound": self.sound, "problems": self.problems, "checked": self.checked}


def _check_dataset(dset: h5py.Dataset, name: str, stored: str | None, report: VerifyReport,
                   tick: Callable[[int], None], on_rows: Callable[[int, Any], None] | None = None,
                   *, vouched: bool = False) -> bool:
    """Hash ``dset`` against its recorded digest; True when every row was read.

    ``on_rows(start, rows)`` sees each block read, for the row checks.
    ``vouched``: a grown file's virtual dataset, which its record does not
    hash (its parts' records do, and each part is verified on its own).
    """
    bad: list[str] = []
    reason = "checksum failed or data damaged" if dset.fletcher32 else "data damaged"

    def unreadable(start: int, stop: int, exc: BaseException) -> None:
        # Narrow the failure down to the chunks that do not read.
        damaged = damaged_chunks(dset, start, stop) or [(start, stop - 1, first_line(exc))]
        for first, last, error in damaged:
            bad.append(f"{name}: rows {first}..{last} unreadable ({reason}): {error}")

    digest = _record.dataset_sha256(dset, on_block=tick, on_unreadable=unreadable, on_rows=on_rows)
    if bad:
        report.problems.extend(bad)
    elif stored is None:
        if not vouched:
            report.problems.append(f"{name}: not in the completion record; cannot tell whether it changed")
    elif digest != stored:
        report.problems.append(
            f"{name}: its SHA-256 differs from the completion record (the data changed after it was "
            f"written): recorded {stored[:16]}..., read {digest[:16]}..."
        )
    else:
        report.checked[name] = int(dset.shape[0])
    return not bad


class _RowChecks:
    """The checks that opening a file leaves to verify (NOTE [ Opening reads
    metadata only ] in ``layout.py``), fed the blocks verify reads anyway.
    Each problem is a "layout: ..." message with the error's text."""

    def __init__(self, f: h5py.File, layout: L.Layout) -> None:
        self.f = f
        self.layout = layout
        self.problems: list[str] = []
        self._ids: list[_ids.Encoded] = []
        self._ids_valid = True
        self._labels_bad = False

    def ids(self, start: int, rows: Any) -> None:
        """A block of ``/ids`` (str): valid, and kept encoded for :meth:`unique`."""
        if not self._ids_valid:
            return
        try:
            self._ids.append(_ids.encode(rows.tolist(), f"{self.f.filename}:/{L.IDS}"))
        except InvalidSampleIDError as exc:
            self._ids_valid = False
            self.problems.append(f"layout: {exc} (in rows {start}..{start + len(rows) - 1})")

    def labels(self, start: int, rows: Any) -> None:
        """A block of ``/y``: class indices in range (the first bad one is reported)."""
        if self._labels_bad:
            return
        try:
            L.check_labels(f"{self.f.filename}:/{L.Y}", rows, self.layout.n_classes, start)  # type: ignore[arg-type]
        except LayoutError as exc:
            self._labels_bad = True
            self.problems.append(f"layout: {exc}")

    def splits(self) -> None:
        """Every split sorted and in range."""
        for name in self.layout.splits:
            try:
                L.read_split(self.f, name)
            except (FormatError, OSError) as exc:
                self.problems.append(f"layout: {exc}")

    def unique(self, read_whole: bool) -> None:
        """IDs unique; the ID index, when there is one, consistent with them.

        ``read_whole``: every block of ``/ids`` was read (an unreadable one
        is reported already).
        """
        if not read_whole or not self._ids_valid:
            return
        ids = _ids.Encoded.concat(self._ids)
        self._ids = []
        # A sound index proves the IDs unique (strictly increasing, and each
        # entry the ID of its row); without one, they are sorted here.
        if L.IDS_INDEX in self.f and self._index_sound(ids):
            return
        order, repeats = _ids.sort(ids)
        if repeats.size:
            shown = [ids.item(int(order[i])) for i in repeats[:5]]
            self.problems.append(
                f"layout: {self.f.filename}:/{L.IDS}: sample IDs must be unique; {repeats.size} repeat, "
                f"e.g. {shown!r} (rows {int(order[repeats[0] - 1])} and {int(order[repeats[0]])})"
            )

    def _index_sound(self, ids: _ids.Encoded) -> bool:
        where = f"{self.f.filename}:/{L.IDS_INDEX}"
        try:
            # Checked whether or not the completion record lists it.
            index = _ids.sorted_in_file(self.f, {"sha256": dict.fromkeys(_ids.INDEX_NAMES)})
            if index is None:
                raise LayoutError(f"{where}: expected a group of the datasets rows, ends and bytes")
            n = ids.size
            every = np.arange(n, dtype=np.int64)
            rows = np.asarray(index.rows(every), dtype=np.int64)
            if not np.array_equal(np.sort(rows), every):
                raise LayoutError(f"{where}/rows: is not a permutation of the rows 0..{n - 1}")
            starts, ends = index.span(every)
            if n and ((ends - starts).min() < 0 or int(ends[-1]) != index.data.size):
                raise LayoutError(f"{where}/ends: does not cut {where}/bytes into {n} IDs")
            sorted_ids = _ids.Encoded(index.data, starts, ends)
            differ = np.flatnonzero(
                _ids.compare(index.data, starts, ends, ids.data, ids.starts[rows], ids.ends[rows])
            )
            if differ.size:
                at = int(differ[0])
                raise LayoutError(
                    f"{where}: entry {at} is {sorted_ids.item(at)!r}, but row {int(rows[at])} of "
                    f"/{L.IDS} holds {ids.item(int(rows[at]))!r} ({differ.size} entries differ)"
                )
            steps = _ids.compare(index.data, starts[:-1], ends[:-1], index.data, starts[1:], ends[1:])
            wrong = np.flatnonzero(steps >= 0)
            if wrong.size:
                at = int(wrong[0])
                a, b = sorted_ids.item(at), sorted_ids.item(at + 1)
                if steps[at] == 0:
                    raise LayoutError(
                        f"{self.f.filename}:/{L.IDS}: sample IDs must be unique; {a!r} is at rows "
                        f"{int(rows[at])} and {int(rows[at + 1])}"
                    )
                raise LayoutError(f"{where}: entries {at} and {at + 1} ({a!r}, {b!r}) are out of order")
        except (FormatError, OSError) as exc:
            self.problems.append(f"layout: {exc}")
            return False
        return True


def verify(path: str | os.PathLike[str], *, quiet: bool = True, allow_virtual: bool = False) -> VerifyReport:
    """Validate the layout and read every row once; see the module docstring.

    Never raises for a damaged file: every problem becomes a message in the
    report (``report.sound`` is False); problems of the layout ("layout:
    ...") come first.

    Raises:
        NotH5FeedFileError: ``path`` does not exist or is a folder.
    """
    report = VerifyReport(os.fspath(path))
    if not os.path.isfile(report.path):  # nothing to verify: an error, not damage
        raise NotH5FeedFileError(
            f"{report.path}: " + ("is a folder, expected an h5feed file" if os.path.isdir(report.path) else "no such file")
        )
    try:
        f = open_h5(path)
    except H5FeedError as exc:
        report.problems.append(f"layout: {exc}")
        return report
    with f:
        try:
            layout = L.validate(f, allow_virtual=allow_virtual)
        except H5FeedError as exc:  # damage included (NOTE [ Damaged files ])
            report.problems.append(f"layout: {exc}")
            return report
        checks = _RowChecks(f, layout)
        watch: dict[str, Callable[[int, Any], None]] = {L.IDS: checks.ids}
        if layout.n_classes is not None:
            watch[L.Y] = checks.labels
        digests = dict(layout.completion.get("sha256", {}))
        # A grown file's rows are its parts', which are verified below.
        grown = "part_records" in layout.completion
        names = [L.IDS, *([] if grown else layout.columns), *(f"{L.SPLITS}/{s}" for s in layout.splits)]
        names += [L.meta_path(m) for m in layout.metadata]
        names += [recorded for recorded in digests if recorded not in names]
        dsets: dict[str, h5py.Dataset] = {}
        for name in names:
            try:
                with touching(f.filename, f"/{name}"):
                    dset = f.get(name)
                    if isinstance(dset, h5py.Dataset) and dset.shape:
                        dsets[name] = dset
                    else:
                        report.problems.append(f"{name}: in the completion record but missing from the file")
            except H5FeedError as exc:
                report.problems.append(f"{name}: {exc}")
        total = sum(int(dset.shape[0]) for dset in dsets.values())
        ids_read = False
        with Progress(total, f"verifying {os.fspath(path)}", enabled=not quiet) as bar:
            for name, dset in dsets.items():
                try:
                    # What the chunk-by-chunk reading does not name as a
                    # damaged chunk still becomes a problem, not a traceback.
                    with touching(f.filename, f"/{name}"):
                        whole = _check_dataset(dset, name, digests.get(name), report, bar.update, watch.get(name),
                                               vouched=grown and dset.is_virtual)
                    ids_read = ids_read or (name == L.IDS and whole)
                except H5FeedError as exc:
                    report.problems.append(f"{name}: {exc}")
        checks.splits()
        checks.unique(ids_read)
        report.problems[:0] = checks.problems
        if grown:
            _verify_parts(f, layout, report, quiet=quiet)
    return report


def _verify_parts(f: h5py.File, layout: L.Layout, report: VerifyReport, *, quiet: bool) -> None:
    """A grown file's rows: each part verified as a file of its own, and the
    IDs of the part's rows here matched with the part's (NOTE [ Grown
    files ] in ``grow.py``)."""
    base = os.path.dirname(os.path.abspath(report.path))
    spans = {p.path: (p.start, p.stop) for p in layout.column(L.X).sources or ()}
    for name in layout.completion["parts"]:
        path = os.path.abspath(os.path.join(base, name))
        sub = verify(path, quiet=quiet)
        report.problems.extend(f"{name}: {problem}" for problem in sub.problems)
        for dset, rows in sub.checked.items():
            if dset in layout.columns:
                report.checked[dset] = report.checked.get(dset, 0) + rows
        if path not in spans or not sub.sound:
            continue
        start, stop = spans[path]
        hasher = hashlib.sha256()
        for at in range(start, stop, _ids.SCAN_ROWS):
            block = _ids.read_block(f[L.IDS], at, min(stop, at + _ids.SCAN_ROWS))
            _record.hash_ids(hasher, block.data, block.starts, block.ends)
        with open_h5(path) as g:
            recorded = _record.read_record(g)["sha256"].get(L.IDS)
        if recorded != hasher.hexdigest():
            report.problems.append(f"{L.IDS}: rows {start}..{stop - 1} are not the IDs of its part {name}")
    for name in L.grown_split_files(layout.completion):
        _verify_split_file(os.path.join(base, name), name, report)


def _verify_split_file(path: str, name: str, report: VerifyReport) -> None:
    """A grown file's split file: each split in it against its own record
    (the grown file's record vouches for that record, checked on open)."""
    sub = VerifyReport(path)
    problems = sub.problems
    try:
        with open_h5(path) as g:
            digests = _record.read_record(g)["sha256"]
            group = g.get(L.SPLITS)
            names = sorted({*digests, *(f"{L.SPLITS}/{s}" for s in (group if isinstance(group, h5py.Group) else ()))})
            for dataset in names:
                with touching(path, f"/{dataset}"):
                    dset = g.get(dataset)
                    if not isinstance(dset, h5py.Dataset):
                        problems.append(f"{dataset}: in the completion record but missing from the file")
                        continue
                    _check_dataset(dset, dataset, digests.get(dataset), sub, lambda _: None)
    except H5FeedError as exc:
        problems.append(str(exc))
    report.problems.extend(f"{name}: {problem}" for problem in problems)


# -- the commands ----------------------------------------------------------------


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="an h5feed file")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    _allow_virtual_arg(p)


def _info_run(args: argparse.Namespace) -> int:
    info = describe(args.file, allow_virtual=args.allow_virtual)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return EXIT_OK


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="an h5feed file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _allow_virtual_arg(p)


def _allow_virtual_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-virtual", action="store_true",
                   help="accept a file of virtual datasets made by `h5feed merge` (its parts beside it)")


def _verify_run(args: argparse.Namespace) -> int:
    report = verify(args.file, quiet=args.quiet, allow_virtual=args.allow_virtual)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for name, rows in report.checked.items():
            print(f"ok      {name} ({rows} rows, SHA-256 matches)")
        for problem in report.problems:
            print(f"FAILED  {problem}")
        verdict = "sound" if report.sound else f"DAMAGED ({len(report.problems)} problem(s))"
        print(f"{report.path}: {verdict}")
    return EXIT_OK if report.sound else EXIT_FAILED


COMMANDS = [
    ("info", "describe an h5feed file: rows, datasets, storage, splits, class counts", _info_args, _info_run),
    ("verify", "validate an h5feed file and read every row once; exit 1 if damaged", _verify_args, _verify_run),
]
