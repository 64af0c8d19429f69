"""``h5feed convert npy|images|csv|arrays ...``: the thin shell front.

Argument parsing only; :mod:`h5feed.convert` does the work. ``h5feed.cli``
picks up :data:`COMMANDS`. The last line on stdout is the output path and the
row count; progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from h5feed.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, int_at_least

__all__ = ["COMMANDS"]

def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 224x224. Received: {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive HEIGHTxWIDTH. Received: {text!r}")
    return h, w


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1. Received: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1. Received: {text!r}")
    return value


def _columns(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names. Received: {text!r}")
    return names


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N like 0/8 (part I of N, from 0). Received: {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N. Received: {text!r}")
    return index, count


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="OUT.h5", help="the h5feed file to write")
    g = p.add_argument_group("storage and run options")
    g.add_argument("--compression", choices=["none", "gzip", "lzf"], default="none",
                   help="compress the samples (chunked storage; default none)")
    g.add_argument("--chunk-rows", type=int_at_least(1), metavar="N",
                   help="rows per chunk; given, x is stored chunked instead of contiguous")
    g.add_argument("--shuffle-rows", action="store_true",
                   help="store rows in a random order (seeded by --seed), so contiguous reads are well mixed")
    g.add_argument("--seed", type=int_at_least(0), default=0, help="seed for --shuffle-rows and splits (default 0)")
    g.add_argument("--workers", type=int_at_least(1), default=1, metavar="N",
                   help="decode sources in N processes; one writer (default 1)")
    g.add_argument("--checksum", action="store_true",
                   help="store Fletcher32 checksums so that reads and `h5feed verify` detect corruption")
    g.add_argument("--overwrite", action="store_true", help="replace OUT.h5 if it exists (only once complete)")
    g.add_argument("--shard", type=_shard, metavar="I/N",
                   help="convert only part I (from 0) of N of the source, split by sorted sample ID; "
                        "join the parts with `h5feed merge`")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        compression=None if args.compression == "none" else args.compression,
        chunk_rows=args.chunk_rows,
        shuffle_rows=args.shuffle_rows,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        checksum=args.checksum,
        quiet=args.quiet,
        shard=args.shard,
    )


def _partition_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--partition", metavar="PARTITION",
                   help="splits: a JSON object {split: [IDs]} or a CSV with header id,split")


# -- one front per format ------------------------------------------------------


def _npy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder with one <ID>.npy per sample")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", metavar="LABELS",
                        help="a JSON object {ID: class index} or a CSV with header id,label")
    labels.add_argument("--no-labels", action="store_true", help="unlabelled samples: every *.npy in DATA_DIR")
    _partition_arg(p)
    p.add_argument("--classes", type=int_at_least(1), metavar="N",
                   help="number of classes (default: largest label + 1)")
    _common(p)


def _npy_run(args: argparse.Namespace) -> Any:
    from .npy import from_npy_dir

    if args.no_labels and args.classes is not None:
        return _usage(args, "--classes needs --labels")
    return from_npy_dir(args.data_dir, args.labels, args.output, partition=args.partition,
                        no_labels=args.no_labels, n_classes=args.classes, **_options(args))


def _images_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="folder of class subfolders: DIR/<class>/<image>")
    p.add_argument("--size", type=_size, required=True, metavar="HxW", help="resize every image to HEIGHTxWIDTH")
    p.add_argument("--color", choices=["rgb", "grayscale", "rgba"], default="rgb", help="colour mode (default rgb)")
    p.add_argument("--validation-split", type=_fraction, metavar="F",
                   help="write train/validation splits, drawing fraction F for validation with --seed")
    _common(p)


def _images_run(args: argparse.Namespace) -> Any:
    from .images import from_image_dir

    return from_image_dir(args.folder, args.output, size=args.size, color=args.color,
                          validation_split=args.validation_split, **_options(args))


def _csv_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", metavar="TABLE.csv", help="a CSV table with a header row, one sample per row")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--label-column", metavar="C", help="the column holding the labels")
    labels.add_argument("--no-labels", action="store_true", help="unlabelled rows")
    p.add_argument("--id-column", metavar="C", help="the column holding unique sample IDs (default: row numbers)")
    p.add_argument("--feature-columns", type=_columns, metavar="A,B,...",
                   help="the columns that make up x (default: all others)")
    p.add_argument("--label-type", choices=["auto", "index", "name", "value"], default="auto",
                   help="labels are class indices, class names or numeric targets (default: guess)")
    _partition_arg(p)
    _common(p)


def _csv_run(args: argparse.Namespace) -> Any:
    from .csv import from_csv

    return from_csv(args.table, args.output, label_column=args.label_column, id_column=args.id_column,
                    feature_columns=args.feature_columns, label_type=args.label_type,
                    partition=args.partition, **_options(args))


def _arrays_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("x", metavar="X.npy", help="samples, shape (N, ...); read block by block, never loaded whole")
    p.add_argument("y", metavar="Y.npy", nargs="?", help="targets with N rows (omit with --no-labels)")
    p.add_argument("--no-labels", action="store_true", help="unlabelled samples (no Y.npy)")
    p.add_argument("--ids", metavar="IDS.txt", help="one sample ID per line (default: row numbers)")
    p.add_argument("--label-type", choices=["auto", "index", "value"], default="auto",
                   help="Y holds class indices or numeric targets (default: 1-D integers are classes)")
    p.add_argument("--classes", type=int_at_least(1), metavar="N",
                   help="number of classes (default: largest label + 1)")
    _partition_arg(p)
    _common(p)


def _arrays_run(args: argparse.Namespace) -> Any:
    from .arrays import from_arrays

    if (args.y is None) != args.no_labels:
        return _usage(args, "give Y.npy, or --no-labels for unlabelled samples (not both)")
    if args.no_labels and (args.classes is not None or args.label_type != "auto"):
        return _usage(args, "--classes and --label-type need Y.npy")
    return from_arrays(args.x, args.y, args.output, ids=args.ids, label_type=args.label_type,
                       n_classes=args.classes, partition=args.partition, **_options(args))


_FORMATS = [
    ("npy", "a folder of <ID>.npy samples (the tutorial's layout)", _npy_args, _npy_run),
    ("images", "DIR/<class>/<image> folders (png, jpg, bmp, gif)", _images_args, _images_run),
    ("csv", "a CSV table, one sample per row", _csv_args, _csv_run),
    ("arrays", "one X.npy (and Y.npy) array pair, read block by block", _arrays_args, _arrays_run),
]


def _usage(args: argparse.Namespace, message: str) -> int:
    parser: argparse.ArgumentParser = args._convert_parser
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _convert_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="format", metavar="FORMAT")
    sub.required = True
    for name, help_text, add_args, run in _FORMATS:
        sp = sub.add_parser(name, help=help_text, description=f"Convert {help_text} into one h5feed file.")
        add_args(sp)
        sp.set_defaults(_convert=run, _convert_parser=sp)


def _convert_run(args: argparse.Namespace) -> int:
    if os.path.lexists(args.output) and not os.path.isdir(args.output) and not args.overwrite:
        # Checked here too so that the message names the flag, not the keyword.
        print(f"h5feed convert {args.format}: error: {args.output}: already exists; "
              "pass --overwrite to replace it", file=sys.stderr)
        return EXIT_FAILED
    try:
        result = args._convert(args)
    except ImportError as exc:  # an optional dependency (Pillow) is missing
        print(f"h5feed convert {args.format}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(result, int):
        return result
    print(f"wrote {result.path} ({result.rows} rows)")
    return EXIT_OK


COMMANDS = [
    ("convert", "convert npy folders, image folders, CSV tables or array pairs into one h5feed file",
     _convert_args, _convert_run),
]
