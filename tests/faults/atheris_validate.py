"""Coverage-guided fuzzing of opening, validating and reading h5feed files (atheris).

Not part of the test suite, and nothing in it depends on atheris. Needs
``pip install atheris``. Usage, from the repository root::

    python tests/faults/atheris_validate.py [-max_total_time=600] [-timeout=20] [-rss_limit_mb=4096] [CORPUS]

libFuzzer mutates the seed files (the sample file of ``_fuzz.py`` in small
versions of the contiguous, compressed and checksummed layouts) and keeps
the inputs that reach new branches of h5feed's Python code -- ``validate``,
the global heap check, the reader, ``verify`` -- which atheris instruments;
HDF5's own C code is not instrumented, so its branches do not guide the
search. Each input is written to a file and opened with ``open_file``, read
through the reader, and verified. An exception that is not an h5feed error
is a finding: libFuzzer stops and saves the input as ``crash-*``; so does
a hang (``timeout-*``) or a crash of the process.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["h5feed"]):
    import h5feed
    from h5feed._parts import make_reader
    from h5feed.inspection import verify

import numpy as np

WORK = Path(tempfile.mkdtemp(prefix="h5feed-atheris-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
TARGET = WORK / "input.h5"


def seeds(folder: Path) -> None:
    """Small sound files to start from: 24 rows, so that inputs stay small."""
    rng = np.random.default_rng(19)
    n = 24
    ids = [f"sample-{i:04d}" for i in range(n)]
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = rng.integers(0, 3, n)
    splits = {"train": range(0, n, 2), "validation": range(1, n, 2)}
    for name, options in {
        "contiguous": {},
        "compressed": {"compression": "gzip", "chunk_rows": 6},
        "checksummed": {"compression": "gzip", "checksum": True, "chunk_rows": 6},
    }.items():
        h5feed.write_arrays(folder / f"{name}.h5", ids, x, y, splits=splits, n_classes=3, class_names=["a", "b", "c"],
                            **options)


def test_one_input(data: bytes) -> None:
    TARGET.write_bytes(data)
    try:
        layout = h5feed.open_file(TARGET)
        with make_reader(layout) as reader:
            rows = np.arange(layout.n_rows)[::-1]
            for name in layout.columns:
                reader.read(name, rows)
            reader.read_ids(rows)
    except h5feed.H5FeedError:
        pass
    verify(TARGET)  # never raises for a damaged file


def main() -> None:
    args = list(sys.argv)
    corpus = [a for a in args[1:] if not a.startswith("-")]
    if not corpus:
        folder = WORK / "corpus"
        folder.mkdir()
        seeds(folder)
        args.append(str(folder))
    if not any(a.startswith("-max_len") for a in args):
        args.append("-max_len=200000")
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
