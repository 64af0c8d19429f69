"""``h5feed bench``: registered into h5feed's CLI through ``COMMANDS``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["COMMANDS"]

_SECTIONS = ("raw", "cold", "compressed", "codecs", "grow", "fit", "workers", "memory", "scale")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="build the datasets here and keep them (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="a few thousand rows per shape (for tests and development)")
    p.add_argument(
        "--shape", action="append", choices=("small", "volume", "frames"),
        help="run only this shape (repeatable; default all three; frames runs the codecs section only)",
    )
    p.add_argument(
        "--only", action="append", choices=_SECTIONS,
        help="run only this section (repeatable; default all)",
    )
    p.add_argument("--skip", action="append", choices=_SECTIONS, default=[], help="skip this section (repeatable)")
    p.add_argument(
        "--memory-gib", type=float, action="append", default=[],
        help="also measure RssAnon on a volume-shaped file of this many GiB (repeatable)",
    )
    p.add_argument("--max-seconds", type=float, help="cap on each warm measurement (default 20, 3 with --quick)")
    p.add_argument("--convert", action="store_true", help="also run the conversion benchmark, when installed")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--save", metavar="FILE", help="also write the result as JSON to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _run(args: argparse.Namespace) -> int:
    from .bench import format_table, run_bench

    sections = [s for s in (args.only or _SECTIONS) if s not in args.skip]
    result = run_bench(
        args.dir,
        shapes=args.shape or ("small", "volume", "frames"),
        quick=args.quick,
        sections=sections,
        memory_gib=args.memory_gib,
        max_seconds=args.max_seconds,
        quiet=args.quiet,
    )
    convert_rows = _convert_rows(args) if args.convert else None
    if convert_rows is not None:
        result["convert"] = convert_rows
    if args.save:
        with open(args.save, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(format_table(result))
        if convert_rows:
            print()
            print(_format_convert(convert_rows))
    return 0


def _convert_rows(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The conversion helper's benchmark, when installed (benchmarks/convert_bench.py)."""
    import tempfile

    try:
        from .convert_bench import run_convert_bench
    except ImportError:
        print("h5feed bench: the conversion benchmark is not installed; skipping --convert", file=sys.stderr)
        return None
    # The tutorial's own sample shape (128 KiB of float32 per file).
    shape = (32, 32, 32, 1)
    n_files = 200 if args.quick else 2_000
    if args.dir:
        return list(run_convert_bench(args.dir, n_files=n_files, shape=shape, quiet=args.quiet, repeats=5))
    with tempfile.TemporaryDirectory(prefix="h5feed-bench-convert-") as tmp:
        return list(run_convert_bench(tmp, n_files=n_files, shape=shape, quiet=args.quiet, repeats=5))


def _format_convert(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "convert: no rows"
    width = 44
    lines = [f"{'convert':<{width}} {'samples/s':>12} {'ratio':>12} {'target':>14}"]
    for row in rows:
        if row.get("peak_mib_over_start") is not None:
            lines.append(
                f"  {row['name']:<{width - 2}} +{row['peak_mib_over_start']:,.0f} MiB for "
                f"{row['dataset_mib']:,.0f} MiB of samples (peak RSS {row['peak_mib']:,.0f} MiB)"
            )
            continue
        rate = row.get("samples_per_s")
        ratio, target = row.get("ratio"), row.get("target")
        lines.append(
            f"  {row['name']:<{width - 2}} {'' if rate is None else format(rate, ',.0f'):>12} "
            f"{'' if ratio is None else format(ratio, '.2f') + 'x':>12} "
            f"{'' if target is None else '>= ' + format(target, '.2f') + 'x':>14}"
            + ("" if row.get("ok", True) else "  (misses its target)")
        )
    return "\n".join(lines)


COMMANDS = [
    ("bench", "measure samples/s of the tutorial's generator, h5py and h5feed side by side", _args, _run),
]
