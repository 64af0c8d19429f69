"""Reading back what a writer or converter wrote, for the tests of both.

A test that writes a file asserts what the file holds, not only that the
write ended: :func:`read_back` returns every ID, every per-row dataset and
every split (as the IDs it holds), read with h5py rather than h5feed's own
reader, after checking that h5feed opens the file and ``verify`` finds it
sound (its data matches its completion record).
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

import h5feed
from h5feed.inspection import verify


def read_back(path: str | os.PathLike[str], *, allow_virtual: bool = False) -> dict[str, Any]:
    """``{"ids": [...], "x": array, "y": array (when labelled), <extras>,
    "splits": {name: [IDs]}, "layout": Layout}`` of an h5feed file."""
    layout = h5feed.open_file(path, allow_virtual=allow_virtual)
    report = verify(path, allow_virtual=allow_virtual)
    assert report.sound, report.problems
    with h5py.File(path, "r") as f:
        ids = f["ids"].asstr()[()].tolist()
        out: dict[str, Any] = {name: f[name][()] for name in layout.columns}
        out["splits"] = {name: [ids[r] for r in f["splits"][name][()]] for name in layout.splits}
    out["ids"] = ids
    out["layout"] = layout
    return out


def rows_by_id(path: str | os.PathLike[str], name: str = "x") -> dict[str, np.ndarray]:
    """``{ID: row}`` of dataset ``name``: for files whose row order is not the source's."""
    back = read_back(path)
    return dict(zip(back["ids"], back[name]))
