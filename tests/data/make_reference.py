"""How the reference files of format version 1 in this folder were made.

Do not run this to "update" them: the files are the reference that every
future h5feed must still open, verify and read identically
(``tests/test_format.py``, which holds the expected values as literals).
A new format version gets new reference files beside these.

Usage: python tests/data/make_reference.py OUTPUT_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import h5feed

N = 12


def arrays():
    """The data of both files: exact binary fractions, non-ASCII text."""
    ids = [f"ref-{i:02d}-\u00e9" for i in range(N)]  # 'é' is two bytes of UTF-8
    x = (np.arange(N * 6, dtype=np.float32).reshape(N, 2, 3) - 20) / 8
    y = np.arange(N) % 3
    weight = np.linspace(0.5, 6.0, N)
    splits = {"train": list(range(0, N, 2)) + [N - 1], "validation": list(range(1, N - 1, 2))}
    return ids, x, y, weight, splits


def main(folder: str) -> None:
    ids, x, y, weight, splits = arrays()
    names = ["cat", "d\u00f6g", "\U0001f41f"]  # one, two and four bytes of UTF-8
    out = Path(folder)
    h5feed.write_arrays(out / "format-v1.h5", ids, x, y, splits=splits, class_names=names,
                        extras={"weight": weight})
    h5feed.write_arrays(out / "format-v1-gzip-checksum.h5", ids, x, y, splits=splits, class_names=names,
                        extras={"weight": weight}, compression="gzip", checksum=True, chunk_rows=5)


if __name__ == "__main__":
    main(sys.argv[1])
