"""The ``h5feed`` command: ``demo``, ``convert``, ``merge``, ``info``, ``verify``, ``bench``.

``main(argv) -> int`` is the whole CLI, so tests call it directly. Results go
to stdout, errors and progress to stderr. Exit status: 0 success, 1 a failed
operation (bad input, damaged file), 2 bad usage, 130 interrupted (Ctrl-C),
141 stdout closed early (a pipe into ``head``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from ._args import int_at_least
from ._publish import check_output
from .errors import H5FeedError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

# Each subcommand registers (name, add_arguments, run) here; run(args) -> int.
Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 16,16,16,1. Received: {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive dimensions. Received: {text!r}")
    return dims


_positive = int_at_least(1)


# -- demo ---------------------------------------------------------------------


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="where to write the HDF5 file (default: a new temporary folder)")
    p.add_argument("--samples", type=_positive, default=4096, help="number of samples (default 4096)")
    p.add_argument("--shape", type=_shape, default=(16, 16, 16, 1), help="sample shape (default 16,16,16,1)")
    p.add_argument("--classes", type=_positive, default=10, help="number of classes (default 10)")
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--epochs", type=_positive, default=1)
    p.add_argument("--workers", type=_positive, default=1)
    p.add_argument("--processes", action="store_true", help="use worker processes (use_multiprocessing=True)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def _demo_run(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(
        args.output,
        n_samples=args.samples,
        sample_shape=args.shape,
        n_classes=args.classes,
        batch_size=args.batch_size,
        epochs=args.epochs,
        workers=args.workers,
        use_multiprocessing=args.processes,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(f"wrote {result.path} ({result.rows} rows)")
    print(
        f"trained {args.epochs} epoch(s) from H5Sequence: {result.train_rows} samples in "
        f"{result.seconds:.2f} s ({result.samples_per_second:,.0f} samples/s)"
    )
    return EXIT_OK


COMMANDS: list[Command] = [
    ("demo", "make a tutorial-style dataset, convert it, train a model for an epoch", _demo_args, _demo_run),
]


# The modules that add commands, and the commands each adds.
_OPTIONAL = {
    "h5feed.inspection": ("info", "verify"),
    "h5feed.convert.cli": ("convert",),
    "h5feed.benchmarks.cli": ("bench",),
    "h5feed.merge": ("merge",),
    "h5feed.grow": ("append", "compact"),
    "h5feed.splits": ("split",),
}


def _register_optional() -> None:
    """Commands that live in other modules add themselves here.

    A module that fails to import still gets its commands, which then say
    why they cannot run: the usual cause is running from a source checkout
    that was not installed, where ``h5feed.convert`` and
    ``h5feed.benchmarks`` (mapped from ``converters/`` and ``benchmarks/``
    by setup.cfg) do not exist.
    """
    known = {c[0] for c in COMMANDS}
    for module_name, names in _OPTIONAL.items():
        try:
            module = __import__(module_name, fromlist=["COMMANDS"])
            commands = list(getattr(module, "COMMANDS", []))
        except ImportError as exc:
            commands = [_unavailable(name, module_name, exc) for name in names]
        for command in commands:
            if command[0] not in known:
                known.add(command[0])
                COMMANDS.append(command)


def _unavailable(name: str, module_name: str, exc: ImportError) -> Command:
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        print(
            f"h5feed {name}: error: cannot import {module_name} ({exc}); install h5feed "
            "with pip (pip install -e . in a source checkout) and run it from there",
            file=sys.stderr,
        )
        return EXIT_FAILED

    return (name, f"(unavailable: {module_name} does not import)", add_args, run)


def build_parser() -> argparse.ArgumentParser:
    _register_optional()
    parser = argparse.ArgumentParser(
        prog="h5feed",
        description="Train Keras models on data larger than memory, from one HDF5 file.",
    )
    parser.add_argument("--version", action="version", version=f"h5feed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what h5feed does to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


# Commands whose HDF5 writing runs in a child process, so that a crash of
# HDF5 (as after a full disk) cannot take the command down with it
# (h5feed.writer.run_isolated). Each has an ``output`` argument.
ISOLATED_COMMANDS = frozenset({"convert"})


class _Forward:
    """A text stream of the writing child that shows up in the parent's stream."""

    def __init__(self, conn: Any, name: str, tty: bool) -> None:
        self.conn, self.name, self.tty = conn, name, tty

    def write(self, text: str) -> int:
        if text:
            self.conn.send((self.name, text))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def _main_in_child(argv: list[str], conn: Any, ttys: tuple[bool, bool]) -> int:
    """The whole command again, in the writing child (see :func:`main`).

    Its stdout and stderr go through ``conn`` to the parent's ``sys.stdout``
    and ``sys.stderr`` as they are written (progress stays live, and callers
    that capture the parent's streams see everything).
    """
    sys.stdout = _Forward(conn, "out", ttys[0])  # type: ignore[assignment]
    sys.stderr = _Forward(conn, "err", ttys[1])  # type: ignore[assignment]
    try:
        return main(argv, _isolated=False)
    finally:
        conn.close()


def _run_isolated_command(output: str, argv: list[str]) -> int:
    import multiprocessing
    import threading

    from .writer import run_isolated

    receiver, sender = multiprocessing.get_context("spawn").Pipe(duplex=False)
    streams = {"out": sys.stdout, "err": sys.stderr}

    def pump() -> None:
        while True:
            try:
                name, text = receiver.recv()
            except (EOFError, OSError):
                return
            streams[name].write(text)
            streams[name].flush()

    ttys = tuple(bool(getattr(st, "isatty", lambda: False)()) for st in (sys.stdout, sys.stderr))
    thread = threading.Thread(target=pump, name="h5feed-child-output", daemon=True)
    thread.start()
    try:
        return int(run_isolated(output, _main_in_child, argv, sender, ttys))
    finally:
        sender.close()  # the child holds its own copy; EOF once it is gone
        thread.join(5)
        receiver.close()


def main(argv: Sequence[str] | None = None, *, _isolated: bool = True) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    # TensorFlow's C++ start-up chatter would bury our output; a user who
    # wants it sets TF_CPP_MIN_LOG_LEVEL themselves.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="h5feed: %(message)s",
        stream=sys.stderr,
    )
    try:
        output = getattr(args, "output", None)
        if output is not None and hasattr(args, "overwrite"):
            # An output that cannot be written fails here, before any input
            # is read, with a message that names the flag.
            check_output(output, overwrite=args.overwrite, how="--overwrite")
        written = output if output is not None else getattr(args, "append_to", None)
        if _isolated and args.command in ISOLATED_COMMANDS and written is not None:
            # Arguments are checked above, in this process; the child parses
            # them again and runs the command, printing its own results.
            return _run_isolated_command(written, argv)
        return int(args._run(args))
    except H5FeedError as exc:
        print(f"h5feed {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # Whoever read stdout has gone (`h5feed info FILE | head -1`): stop
        # quietly, as a tool killed by SIGPIPE would.
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        print(f"h5feed {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"h5feed {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of
    what could not be written does not fail again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # stdout is no real file
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
