"""``h5feed split``: replace a file's splits, by group and class if asked.

:func:`make_splits` reads what planning needs -- the row count, the labels,
the metadata column to group by -- plans the splits
(:func:`h5feed._splits.plan_splits`, pure) and replaces the file's
``splits/`` group in place, together with their digests in the completion
record. The samples are neither read nor rewritten, so the cost grows with
the number of rows, not with the bytes of the samples. The replacement is
atomic (a rollback journal, :mod:`h5feed._inplace`): killed at any moment,
the file holds the old splits or the new ones and passes ``h5feed verify``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _record
from . import layout as L
from ._args import check_bool, check_int, int_at_least
from ._damage import read_whole
from ._files import open_h5
from ._inplace import edit_in_place
from ._splits import check_fractions, plan_splits
from .metadata import _column

__all__ = ["COMMANDS", "SplitReport", "make_splits"]


@dataclass(frozen=True)
class SplitReport:
    """What :func:`make_splits` wrote.

    Attributes:
        path: the file.
        fractions: the fractions asked for, by split.
        rows: rows per split.
        groups: groups per split (rows, without ``group_by``).
        class_counts: rows per class per split, when ``y`` holds class
            indices; else None.
        class_names: the file's class names, if it has them.
        notes: the targets whole groups could not meet (also issued as
            warnings).
    """

    path: str
    fractions: dict[str, float]
    rows: dict[str, int]
    groups: dict[str, int]
    class_counts: dict[str, list[int]] | None = None
    class_names: tuple[str, ...] | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The report as the text table ``h5feed split`` prints."""
        total = max(1, sum(self.rows.values()))
        head = ["split", "rows", "share", "asked", "groups"]
        body = [[name, str(self.rows[name]), f"{self.rows[name] / total:.1%}", f"{self.fractions[name]:.1%}",
                 str(self.groups[name])] for name in self.rows]
        if self.class_counts is not None:
            labels = list(self.class_names) if self.class_names else [str(i) for i in range(len(next(iter(self.class_counts.values()))))]
            head.append("classes")
            for row, name in zip(body, self.rows):
                row.append(" ".join(f"{label}={c}" for label, c in zip(labels, self.class_counts[name])))
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [head, *body])


def make_splits(
    path: str | os.PathLike[str],
    fractions: Mapping[str, float],
    *,
    group_by: str | None = None,
    stratify: bool = False,
    seed: int = 0,
    allow_virtual: bool = False,
) -> SplitReport:
    """Replace the splits of an h5feed file, atomically, in place.

    Every split the file had is replaced by the new ones. Rows are shuffled
    by ``seed`` and cut at ``fractions``; with ``group_by`` every value of
    that metadata column lands in exactly one split (no subject on both
    sides), with the fractions met as closely as whole groups allow; with
    ``stratify`` each split's class shares are kept within 5 percentage
    points of the whole file's where the groups allow it. Whatever cannot
    be met is said in the report's ``notes`` and as a warning. The same
    file and arguments give the same splits.

    Args:
        path: an h5feed file (written, then edited in place).
        fractions: ``{split: fraction}``, adding up to 1, e.g.
            ``{"train": 0.7, "validation": 0.15, "test": 0.15}``.
        group_by: a metadata column (``meta/<column>``) whose values group
            rows that must stay together.
        stratify: balance the classes (``y`` must hold class indices).
        seed: the seed of the shuffle.
        allow_virtual: accept a file made by ``h5feed merge``.

    Returns:
        A :class:`SplitReport`.

    Raises:
        ValueError: bad fractions, or ``stratify`` without class labels.
        UnknownColumnError: ``group_by`` names no metadata column.
        FormatError: not a valid h5feed file.
        WriterError: the file is open in another process, or writing
            failed (the file keeps its old splits).

    Example:
        >>> make_splits("data.h5", {"train": 0.8, "test": 0.2}, group_by="patient", seed=1)  # doctest: +SKIP
    """
    path = os.path.abspath(os.fspath(path))
    fr = check_fractions(fractions)
    if group_by is not None and not isinstance(group_by, str):
        raise TypeError(f"group_by must be a metadata column name (str) or None. Received: {group_by!r}")
    stratify = check_bool(stratify, "stratify")
    seed = check_int(seed, "seed", minimum=0)
    allow_virtual = check_bool(allow_virtual, "allow_virtual")
    with open_h5(path) as f:
        layout = L.validate(f, allow_virtual=allow_virtual)
        groups = None if group_by is None else _column(f, layout, group_by)
        labels = None if layout.n_classes is None else np.asarray(read_whole(path, f[L.Y]), dtype=np.int64)
    if stratify and labels is None:
        raise ValueError(f"{path}: stratify needs class labels: y must hold class indices (n_classes set)")
    plan = plan_splits(layout.n_rows, fr, groups=groups, labels=labels, n_classes=layout.n_classes,
                       stratify=stratify, seed=seed)
    with edit_in_place(path) as f:
        if L.SPLITS in f:
            del f[L.SPLITS]
        group = f.create_group(L.SPLITS)
        digests = {}
        for name, rows in plan.rows.items():
            group.create_dataset(name, data=rows, dtype=np.int64)
            digests[f"{L.SPLITS}/{name}"] = _record.digest_of(rows)
        # A grown file's splits are now stored in it: its split files are
        # no longer listed (the next append removes them).
        _record.replace_digests(f, f"{L.SPLITS}/", digests, drop=("split_files", "split_records"))
    for note in plan.notes:
        warnings.warn(f"{path}: {note}", UserWarning, stacklevel=2)
    return SplitReport(
        path=path,
        fractions=fr,
        rows={name: int(r.size) for name, r in plan.rows.items()},
        groups=dict(plan.groups),
        class_counts=None if plan.class_counts is None else {k: v.tolist() for k, v in plan.class_counts.items()},
        class_names=layout.class_names,
        notes=list(plan.notes),
    )


# -- the command line -----------------------------------------------------------


def _fractions_arg(text: str) -> dict[str, float]:
    """``train=0.7,validation=0.15,test=0.15`` as a dict."""
    out: dict[str, float] = {}
    for item in text.split(","):
        name, eq, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not eq or not name.strip() or number is None or name.strip() in out:
            raise argparse.ArgumentTypeError(
                f"expected NAME=FRACTION,... like train=0.8,test=0.2. Received: {text!r}"
            )
        out[name.strip()] = number
    try:
        return check_fractions(out)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="DATA.h5", help="the h5feed file whose splits to replace (edited in place)")
    p.add_argument("--fractions", required=True, type=_fractions_arg, metavar="NAME=F,...",
                   help="the splits and their fractions, adding up to 1: train=0.7,validation=0.15,test=0.15")
    p.add_argument("--group-by", metavar="COLUMN",
                   help="a metadata column: rows with the same value land in the same split")
    p.add_argument("--stratify", action="store_true",
                   help="keep each split's class shares within 5 points of the whole file's")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the shuffle (default 0)")
    p.add_argument("--allow-virtual", action="store_true",
                   help="accept a file of virtual datasets made by `h5feed merge`")


def _split_run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the notes are printed below
        report = make_splits(args.file, args.fractions, group_by=args.group_by, stratify=args.stratify,
                             seed=args.seed, allow_virtual=args.allow_virtual)
    print(report.table())
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"replaced the splits of {report.path}")
    return 0


COMMANDS: list[Any] = [
    ("split", "replace a file's splits: by fractions, keeping groups together, stratified by class",
     _split_args, _split_run),
]
