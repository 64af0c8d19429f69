"""``h5feed convert npy|images|csv|arrays|h5 ...``: the thin shell front.

Argument parsing only; :mod:`h5feed.convert` does the work. ``h5feed.cli``
picks up :data:`COMMANDS`. The last line on stdout is the output path and the
row count; progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from h5feed._shared import COMPRESSIONS, EXIT_FAILED, EXIT_OK, EXIT_USAGE, int_at_least, shard_arg

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


def _common(p: argparse.ArgumentParser) -> None:
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("-o", "--output", metavar="OUT.h5", help="the h5feed file to write")
    dest.add_argument("--append-to", metavar="DATA.h5",
                      help="add the samples to this growing dataset instead (created if missing), "
                           "as `h5feed append` does")
    g = p.add_argument_group("storage and run options")
    g.add_argument("--compression", choices=["none", *COMPRESSIONS], default="none",
                   help="compress the samples (chunked storage; default none); zstd and lz4 need "
                        'hdf5plugin: pip install "h5feed[codecs]"')
    g.add_argument("--chunk-rows", type=int_at_least(1), metavar="N",
                   help="rows per chunk; given, x is stored chunked instead of contiguous")
    g.add_argument("--shuffle-rows", action="store_true",
                   help="store rows in a random order (seeded by --seed), so contiguous reads are well mixed")
    g.add_argument("--seed", type=int_at_least(0), default=0, help="seed for --shuffle-rows and splits (default 0)")
    g.add_argument("--workers", type=int_at_least(1), default=1, metavar="N",
                   help="decode sources in N processes, and compress in N threads; one writer (default 1)")
    g.add_argument("--checksum", action="store_true",
                   help="store Fletcher32 checksums so that reads and `h5feed verify` detect corruption")
    g.add_argument("--overwrite", action="store_true", help="replace OUT.h5 if it exists (only once complete)")
    g.add_argument("--shard", type=shard_arg, metavar="I/N",
                   help="convert only part I (from 0) of N of the source, split by sorted sample ID; "
                        "join the parts with `h5feed merge`. 'auto' takes I and N from a Slurm array job "
                        "(SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT)")
    g.add_argument("--metadata", metavar="META.csv",
                   help="per-sample metadata stored under meta/: a CSV with an id column and any other "
                        "columns (numbers or text), one row per sample of the source")
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
        metadata=args.metadata,
        append_to=args.append_to,
    )


def _partition_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--partition", metavar="PARTITION",
                   help="splits: a JSON object {split: [IDs]} or a CSV with header id,split")


def _weights_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--weights", metavar="WEIGHTS",
                   help=f"per-sample weights (finite numbers >= 0), written as the dataset w for "
                        f"H5Sequence(..., sample_weight='w'): {what}")


# -- one front per format ------------------------------------------------------


def _npy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder with one <ID>.npy per sample")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", metavar="LABELS",
                        help="a JSON object {ID: class index} or a CSV with header id,label")
    labels.add_argument("--no-labels", action="store_true", help="unlabelled samples: every *.npy in DATA_DIR")
    _partition_arg(p)
    _weights_arg(p, "a JSON object {ID: weight} or a CSV with header id,weight")
    p.add_argument("--classes", type=int_at_least(1), metavar="N",
                   help="number of classes (default: largest label + 1)")
    _common(p)


def _npy_run(args: argparse.Namespace) -> Any:
    from .npy import from_npy_dir

    if args.no_labels and args.classes is not None:
        return _usage(args, "--classes needs --labels")
    return from_npy_dir(args.data_dir, args.labels, args.output, partition=args.partition,
                        no_labels=args.no_labels, n_classes=args.classes, weights=args.weights,
                        **_options(args))


def _images_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="folder of class subfolders: DIR/<class>/<image>")
    p.add_argument("--size", type=_size, required=True, metavar="HxW", help="resize every image to HEIGHTxWIDTH")
    p.add_argument("--color", choices=["rgb", "grayscale", "rgba"], default="rgb", help="colour mode (default rgb)")
    p.add_argument("--validation-split", type=_fraction, metavar="F",
                   help="write train/validation splits, drawing fraction F for validation with --seed")
    _weights_arg(p, "a JSON object {ID: weight} or a CSV with header id,weight, where an image's ID "
                    "is its path below DIR (cat/001.jpg)")
    _common(p)


def _images_run(args: argparse.Namespace) -> Any:
    from .images import from_image_dir

    return from_image_dir(args.folder, args.output, size=args.size, color=args.color,
                          validation_split=args.validation_split, weights=args.weights, **_options(args))


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
    _weights_arg(p, "the name of the column that holds them (it is then not a feature)")
    _common(p)


def _csv_run(args: argparse.Namespace) -> Any:
    from .csv import from_csv

    return from_csv(args.table, args.output, label_column=args.label_column, id_column=args.id_column,
                    feature_columns=args.feature_columns, label_type=args.label_type,
                    partition=args.partition, weight_column=args.weights, **_options(args))


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
    _weights_arg(p, "W.npy with one weight per row of X, or a JSON object {ID: weight} or a CSV "
                    "with header id,weight")
    _common(p)


def _arrays_run(args: argparse.Namespace) -> Any:
    from .arrays import from_arrays

    if (args.y is None) != args.no_labels:
        return _usage(args, "give Y.npy, or --no-labels for unlabelled samples (not both)")
    if args.no_labels and (args.classes is not None or args.label_type != "auto"):
        return _usage(args, "--classes and --label-type need Y.npy")
    return from_arrays(args.x, args.y, args.output, ids=args.ids, label_type=args.label_type,
                       n_classes=args.classes, partition=args.partition, weights=args.weights,
                       **_options(args))


def _h5_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SRC.h5", help="an HDF5 file (.h5, .hdf5, .nxs, MATLAB v7.3 .mat); only read")
    p.add_argument("--x", action="append", required=True, metavar="PATH",
                   help="the samples' dataset, at any depth (/entry/data/data); repeat as SPLIT=PATH "
                        "(--x train=X_train --x test=X_test) for a file with one array per split")
    p.add_argument("--y", action="append", metavar="PATH",
                   help="the labels' dataset (SPLIT=PATH per split, like --x); omit for unlabelled samples")
    p.add_argument("--ids", action="append", metavar="PATH",
                   help="a dataset of sample IDs, strings or integers (SPLIT=PATH per split); "
                        "default: the row numbers")
    p.add_argument("--sample-axis", type=int, default=0, metavar="K",
                   help="the axis that holds the samples (default 0; MATLAB v7.3 files: -1)")
    p.add_argument("--label-type", choices=["auto", "index", "onehot", "value"], default="auto",
                   help="y holds class indices, one-hot rows or numeric targets (default: 1-D integers are "
                        "classes, all-one-hot rows are classes, anything else targets)")
    p.add_argument("--class-names", type=_columns, metavar="A,B,...",
                   help="the class names (default: a class_names attribute of y)")
    p.add_argument("--classes", type=int_at_least(1), metavar="N",
                   help="number of classes (default: from the class names or the labels)")
    p.add_argument("--link", action="store_true",
                   help="store IDs, labels and splits, and refer to the source's x as a virtual dataset "
                        "(the source must lie in OUT.h5's folder; read with --allow-virtual)")
    p.add_argument("--allow-virtual", action="store_true",
                   help="read source datasets that are virtual or stored in external files")
    _partition_arg(p)
    _common(p)


def _split_paths(values: list[str] | None, flag: str) -> str | dict[str, str] | None:
    """One ``--x PATH``, or ``--x SPLIT=PATH`` repeated: a split name has no '/'
    (so a path with '=' is given with its leading '/')."""
    if not values:
        return None
    per_split = ["=" in v and "/" not in v.split("=", 1)[0] for v in values]
    if not any(per_split):
        if len(values) > 1:
            raise ValueError(f"{flag} names one dataset, or one per split as SPLIT=PATH. Received: {values!r}")
        return values[0]
    if not all(per_split):
        raise ValueError(f"{flag}: give one PATH, or SPLIT=PATH for every split. Received: {values!r}")
    paths: dict[str, str] = {}
    for value in values:
        name, path = value.split("=", 1)
        if not name or name in paths:
            raise ValueError(f"{flag}: each split once, as SPLIT=PATH. Received: {values!r}")
        paths[name] = path
    return paths


def _h5_run(args: argparse.Namespace) -> Any:
    from .h5 import check_arguments, from_h5

    try:
        given = dict(x=_split_paths(args.x, "--x"), y=_split_paths(args.y, "--y"),
                     ids=_split_paths(args.ids, "--ids"), sample_axis=args.sample_axis,
                     label_type=args.label_type, class_names=args.class_names, n_classes=args.classes,
                     partition=args.partition, link=args.link, allow_virtual=args.allow_virtual)
        check_arguments(**given, **_options(args))
    except (ValueError, TypeError) as exc:
        return _usage(args, str(exc))
    result = from_h5(args.source, args.output, **given, **_options(args))
    if args.link:
        print(f"x refers to the source's dataset; keep {args.source} beside the output "
              "and read it with --allow-virtual (allow_virtual=True)")
    return result


_FORMATS = [
    ("npy", "a folder of <ID>.npy samples (the tutorial's layout)", _npy_args, _npy_run),
    ("images", "DIR/<class>/<image> folders (png, jpg, bmp, gif)", _images_args, _images_run),
    ("csv", "a CSV table, one sample per row", _csv_args, _csv_run),
    ("arrays", "one X.npy (and Y.npy) array pair, read block by block", _arrays_args, _arrays_run),
    ("h5", "datasets of any HDF5 file (X/y pairs, NeXus trees, per-split arrays, MATLAB v7.3)",
     _h5_args, _h5_run),
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
    # h5feed.cli.main has checked the output (naming --overwrite).
    if args.append_to is not None and args.overwrite:
        return _usage(args, "--overwrite replaces OUT.h5; --append-to adds to DATA.h5: give one of the two")
    try:
        result = args._convert(args)
    except ImportError as exc:  # an optional dependency (Pillow) is missing
        print(f"h5feed convert {args.format}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(result, int):
        return result
    if args.append_to is not None:
        print(f"appended {result.rows} rows to {result.path}")
    else:
        print(f"wrote {result.path} ({result.rows} rows)")
    return EXIT_OK


COMMANDS = [
    ("convert", "convert npy folders, image folders, CSV tables, array pairs or HDF5 files into one h5feed file",
     _convert_args, _convert_run),
]
