"""``h5feed info`` and ``h5feed verify``: describe a file, and prove it sound.

:func:`describe` reads the layout and the labels (for class counts), never
the samples. :func:`verify` validates the layout and then reads every row of
every dataset once, chunk by chunk, comparing each dataset with the SHA-256
of the completion record; a chunk that cannot be read (a failed Fletcher32
checksum, a damaged compressed block) is reported with its rows, and the
check goes on with the next chunk, so one run lists every damaged place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from . import layout as L
from ._files import open_h5
from ._progress import Progress
from .errors import FormatError, NotH5FeedFileError

__all__ = ["COMMANDS", "VerifyReport", "describe", "verify"]

EXIT_OK, EXIT_FAILED = 0, 1
# Datasets are read in blocks of about this many bytes, whole chunks each.
_BLOCK_BYTES = 16 * 1024 * 1024
# Above this many classes the text output shows the first ones only.
_MAX_CLASSES_SHOWN = 20


# -- info ----------------------------------------------------------------------


def _dataset_info(dset: h5py.Dataset) -> dict[str, Any]:
    is_str = h5py.check_string_dtype(dset.dtype) is not None
    return {
        "shape": [int(s) for s in dset.shape],
        "dtype": "utf-8 string" if is_str else str(dset.dtype),
        "layout": "chunked" if dset.chunks is not None else "contiguous",
        "chunks": None if dset.chunks is None else [int(c) for c in dset.chunks],
        "compression": dset.compression,
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
        counts["all"] += np.bincount(block, minlength=n_classes)[:n_classes]
        for name, rows in splits.items():
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi > lo:
                counts[name] += np.bincount(block[rows[lo:hi] - start], minlength=n_classes)[:n_classes]
    return {name: c.tolist() for name, c in counts.items()}


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything ``h5feed info`` shows, as a JSON-ready dict.

    Keys: ``path``, ``format``, ``rows``, ``file_bytes``, ``datasets``
    (name -> shape, dtype, layout, chunks, compression, checksum,
    stored_bytes), ``n_classes``, ``class_names``, ``splits`` (name -> rows)
    and, when ``y`` holds class indices, ``class_counts`` (``"all"`` and each
    split -> one count per class).

    Raises:
        FormatError: the file is not a valid h5feed file (the subclass says
            why).
    """
    with open_h5(path) as f:
        layout = L.validate(f)
        datasets = {L.IDS: _dataset_info(f[L.IDS])}
        datasets.update({name: _dataset_info(f[name]) for name in layout.columns})
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
        }
        if layout.n_classes is not None:
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


def _blocks(dset: h5py.Dataset) -> Iterator[tuple[int, int]]:
    n = dset.shape[0] if dset.shape else 0
    row_bytes = max(1, int(np.prod(dset.shape[1:], dtype=np.int64)) * dset.dtype.itemsize)
    chunk = dset.chunks[0] if dset.chunks is not None else 1
    step = max(chunk, (max(1, _BLOCK_BYTES // row_bytes) // chunk) * chunk)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _read(dset: h5py.Dataset, start: int, stop: int) -> Any:
    if h5py.check_string_dtype(dset.dtype) is not None:
        return dset.asstr()[start:stop]
    return dset[start:stop]


def _check_dataset(dset: h5py.Dataset, name: str, stored: str | None, report: VerifyReport,
                   tick: Callable[[int], None]) -> None:
    hasher = hashlib.sha256()
    bad: list[str] = []
    chunk = dset.chunks[0] if dset.chunks is not None else None
    for start, stop in _blocks(dset):
        try:
            L.hash_rows(hasher, _read(dset, start, stop))
        except OSError as exc:
            # Narrow the failure down to the chunks that do not read.
            step = chunk or (stop - start)
            for lo in range(start, stop, step):
                hi = min(stop, lo + step)
                try:
                    _read(dset, lo, hi)
                except OSError as inner:
                    reason = "checksum failed or data damaged" if dset.fletcher32 else "data damaged"
                    bad.append(f"{name}: rows {lo}..{hi - 1} unreadable ({reason}): {_first_line(inner or exc)}")
        tick(stop - start)
    if bad:
        report.problems.extend(bad)
        return
    digest = hasher.hexdigest()
    if stored is None:
        report.problems.append(f"{name}: not in the completion record; cannot tell whether it changed")
    elif digest != stored:
        report.problems.append(
            f"{name}: its SHA-256 differs from the completion record (the data changed after it was "
            f"written): recorded {stored[:16]}..., read {digest[:16]}..."
        )
    else:
        report.checked[name] = int(dset.shape[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def verify(path: str | os.PathLike[str], *, quiet: bool = True) -> VerifyReport:
    """Validate the layout and read every row once; see the module docstring.

    Never raises for a damaged file: every problem becomes a message in the
    report (``report.sound`` is False).

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
    except FormatError as exc:
        report.problems.append(f"layout: {exc}")
        return report
    with f:
        try:
            layout = L.validate(f)
        except (FormatError, OSError) as exc:
            report.problems.append(f"layout: {exc}")
            return report
        digests = dict(layout.completion.get("sha256", {}))
        names = [L.IDS, *layout.columns, *(f"{L.SPLITS}/{s}" for s in layout.splits)]
        for recorded in digests:
            if recorded not in names:
                if recorded in f:
                    names.append(recorded)
                else:
                    report.problems.append(f"{recorded}: in the completion record but missing from the file")
        total = sum(int(f[n].shape[0]) for n in names)
        with Progress(total, f"verifying {os.fspath(path)}", enabled=not quiet) as bar:
            for name in names:
                _check_dataset(f[name], name, digests.get(name), report, bar.update)
    return report


# -- the commands ----------------------------------------------------------------


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="an h5feed file")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def _info_run(args: argparse.Namespace) -> int:
    info = describe(args.file)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return EXIT_OK


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="an h5feed file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _verify_run(args: argparse.Namespace) -> int:
    report = verify(args.file, quiet=args.quiet)
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
