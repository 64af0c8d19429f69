"""The ``grow`` section of ``h5feed bench``: datasets that grow (``h5feed append``).

Two measurements, each against its reference in the same run:

- **The cost of an append.** 1,000 new rows (the ``small`` shape's rows,
  28x28 uint8) appended to a grown dataset of :data:`BASES` rows: 1,000 and
  100,000 (``--quick``: 1,000 and 20,000). Each base is made by one
  conversion and one append; then :data:`REPEATS` appends of new files are
  timed on each, taking turns, and the best counts. Target: the big base's
  append takes at most 1.5x the small one's plus 0.05 s ("about the same
  time"). The bytes an append writes (the new part and the new index) are
  shown against the new file's size.
- **Many parts.** A dataset of :data:`MANY_PARTS` parts of 100 rows (a
  year of nightly appends; ``--quick``: 30), against the 2-part one above:
  ``open_file`` and one more append, each in a fresh process (what
  validation remembers of each part is per process). Shown, no target.
- **Reading a grown dataset.** Each shape's benchmark file, cut into
  :data:`PIECES` consecutive files and grown by appending them one by one
  (10 appends), against the same rows in the one file: a shuffled
  ``H5Sequence`` epoch with a warm cache (target: at least 80%), and a cold
  one with read-ahead, both files evicted before each epoch.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import numpy as np

__all__ = ["BASES", "PIECES", "REPEATS", "append_cost_rows", "grown_read_rows"]

BASES = (1_000, 100_000)
QUICK_BASES = (1_000, 20_000)
NEW_ROWS = 1_000
REPEATS = 5
PIECES = 11  # the first piece, then 10 appends
MANY_PARTS = 365
QUICK_MANY_PARTS = 30
# Times one open or one append in a fresh process (bench._fresh_process).
_CHILD = r"""
import json, sys, time
mode, data, new = sys.argv[1:4]
import h5feed
start = time.perf_counter()
h5feed.open_file(data) if mode == "open" else h5feed.append(data, new)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""
_SAMPLE = (28, 28, 1)


def _progress(msg: str, quiet: bool) -> None:
    from .bench import _progress as progress

    progress(msg, quiet)


def _piece(path: str, start: int, stop: int, seed: int) -> str:
    """A standalone file of rows ``start..stop-1`` (IDs ``r<row>``), with a
    train split of about 80% and one metadata column, as a day's file has."""
    from h5feed import write_arrays

    rng = np.random.default_rng(seed)
    n = stop - start
    ids = [f"r{i}" for i in range(start, stop)]
    x = rng.integers(0, 255, (n, *_SAMPLE), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    train = [sid for sid, keep in zip(ids, rng.random(n) < 0.8) if keep]
    write_arrays(path, ids, x, y, {"train": train}, n_classes=10,
                 metadata={"id": ids, "site": [f"site{i % 7}" for i in range(start, stop)]})
    return path


def _written_bytes(data: str, before: set[str]) -> int:
    """What the last append wrote: the parts it added and the new index."""
    folder = data + ".parts"
    new = [os.path.join(folder, n) for n in os.listdir(folder) if n not in before]
    return os.path.getsize(data) + sum(os.path.getsize(p) for p in new)


def append_cost_rows(folder: str, *, quick: bool, quiet: bool) -> list[Any]:
    """Appending :data:`NEW_ROWS` rows to a small and a big grown dataset."""
    from h5feed import append

    from .bench import Row

    bases = QUICK_BASES if quick else BASES
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    datas = {}
    for n in bases:
        data = os.path.join(folder, f"base-{n}.h5")
        _progress(f"grow: building a grown dataset of {n:,} rows", quiet)
        _piece(data, 0, n, seed=n)
        append(data, _piece(os.path.join(folder, f"first-{n}.h5"), n, n + NEW_ROWS, seed=1))
        datas[n] = (data, n + NEW_ROWS)
    seconds: dict[int, list[float]] = {n: [] for n in bases}
    written: dict[int, list[int]] = {n: [] for n in bases}
    new_bytes = []
    for k in range(REPEATS):
        for n in bases:  # taking turns, so that a slow spell hits both
            data, at = datas[n]
            new = _piece(os.path.join(folder, f"new-{n}-{k}.h5"), at, at + NEW_ROWS, seed=100 + k)
            new_bytes.append(os.path.getsize(new))
            before = set(os.listdir(data + ".parts"))
            start = time.perf_counter()
            append(data, new)
            seconds[n].append(time.perf_counter() - start)
            written[n].append(_written_bytes(data, before))
            os.remove(new)
            datas[n] = (data, at + NEW_ROWS)
    small_n, big_n = bases
    small, big = min(seconds[small_n]), min(seconds[big_n])
    limit = 1.5 * small + 0.05
    ok = big <= limit
    new_size = float(np.median(new_bytes))
    rows = [
        Row("grow", f"append {NEW_ROWS:,} rows", f"to {small_n:,} rows vs to {big_n:,} rows", 0.0, big, 0,
            vs_baseline=big / small,
            note=f"{small:.3f} s vs {big:.3f} s ({big / small:.2f}x; target big <= 1.5x small + 0.05 s) "
                 + ("ok" if ok else "MISSED"),
            extra=dict(small_seconds=small, big_seconds=big, limit_seconds=limit, ok=ok, repeats=REPEATS)),
    ]
    for n in bases:
        w = float(np.median(written[n]))
        rows.append(Row("grow", f"append {NEW_ROWS:,} rows", f"bytes written, to {n:,} rows", 0.0, 0.0, 0,
                        note=f"{w / 2**20:.2f} MiB, {w / new_size:.2f}x the new file ({new_size / 2**20:.2f} MiB)",
                        extra=dict(written_bytes=w, new_file_bytes=new_size)))
    rows += _many_parts_rows(folder, datas[small_n], MANY_PARTS if not quick else QUICK_MANY_PARTS, quiet)
    for row in rows:
        _progress(f"grow {row.name}: {row.note}", quiet)
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def _many_parts_rows(folder: str, few: tuple[str, int], n_parts: int, quiet: bool) -> list[Any]:
    """``open_file`` and an append in a fresh process: ``n_parts`` parts of
    100 rows against ``few`` (the small grown dataset, 2 + REPEATS parts)."""
    from h5feed import append

    from .bench import Row, _fresh_process

    _progress(f"grow: building a grown dataset of {n_parts} parts", quiet)
    many = os.path.join(folder, f"many-{n_parts}.h5")
    _piece(many, 0, 100, seed=7)
    pieces = [_piece(os.path.join(folder, f"part-{k}.h5"), 100 * k, 100 * (k + 1), seed=k) for k in range(1, n_parts)]
    append(many, *pieces)
    for p in pieces:
        os.remove(p)
    cases = {"few": few, "many": (many, 100 * n_parts)}
    seconds: dict[tuple[str, str], float] = {}
    for mode in ("open", "append"):
        for name, (data, at) in cases.items():
            new = _piece(os.path.join(folder, f"extra-{name}.h5"), at + 10**6, at + 10**6 + NEW_ROWS, seed=99)
            seconds[mode, name] = _fresh_process(_CHILD, mode, data, new, what=f"grow {mode} of {name} parts")["seconds"]
            os.remove(new)
    n_few = len(os.listdir(few[0] + ".parts")) - 1  # before the last append
    rows = []
    for mode, what in (("open", "open_file"), ("append", f"append {NEW_ROWS:,} rows")):
        big, small = seconds[mode, "many"], seconds[mode, "few"]
        rows.append(Row("grow", f"{n_parts} parts", f"{what}, fresh process", 0.0, big, 0, vs_baseline=big / small,
                        note=f"{big:.3f} s vs {small:.3f} s with {n_few} parts",
                        extra=dict(parts=n_parts, seconds=big, few_parts=n_few, few_seconds=small)))
    return rows


def _grown_copy(data: Any, folder: str, quiet: bool) -> str:
    """``data``'s rows as a dataset grown by :data:`PIECES` - 1 appends."""
    from h5feed import append, write_arrays

    path = os.path.join(folder, f"grown-{data.shape.name}-{data.shape.n}.h5")
    if os.path.exists(path):
        shutil.rmtree(path + ".parts", ignore_errors=True)
        os.remove(path)
    _progress(f"grow: appending {data.shape.name} in {PIECES} pieces", quiet)
    bounds = np.linspace(0, data.shape.n, PIECES + 1).astype(int)
    for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        piece = os.path.join(folder, f"piece-{data.shape.name}-{k}.h5")
        write_arrays(piece, data.ids[lo:hi], data.x[lo:hi], data.y[lo:hi], n_classes=data.shape.n_classes,
                     overwrite=True)
        if k == 0:
            os.replace(piece, path)
        else:
            append(path, piece)
            os.remove(piece)
    return path


def grown_read_rows(data: Any, *, max_seconds: float, quiet: bool, rounds: int = 3) -> list[Any]:
    """Shuffled epochs over a grown copy of ``data`` against ``data.h5``."""
    from h5feed import H5Sequence

    from .bench import BATCH, Row, _best_in_rounds, _seq_epoch, _warm, evict

    grown = _grown_copy(data, data.folder, quiet)
    parts = [os.path.join(grown + ".parts", n) for n in sorted(os.listdir(grown + ".parts"))]

    def epoch(path: str, files: list[str], cold: bool) -> Any:
        def run() -> tuple[int, float]:
            if cold:
                for f in files:
                    evict(f)
            else:
                for f in files:
                    _warm(f)
            seq = H5Sequence(path, batch_size=BATCH, seed=2, shuffle=True)
            try:
                return _seq_epoch(seq, None if cold else max_seconds)
            finally:
                seq.close()

        return run

    one = [data.h5]
    cases = [
        ("one file, warm cache", epoch(data.h5, one, False)),
        (f"grown by {PIECES - 1} appends, warm cache", epoch(grown, [grown, *parts], False)),
    ]
    if hasattr(os, "posix_fadvise"):
        cases += [
            ("one file, cold cache", epoch(data.h5, one, True)),
            (f"grown by {PIECES - 1} appends, cold cache", epoch(grown, [grown, *parts], True)),
        ]
    best = _best_in_rounds(cases, rounds)
    rows = []
    for name, _ in cases:
        samples, seconds = best[name]
        rows.append(Row("grow", data.shape.name, f"H5Sequence shuffle=True, {name}", samples / seconds, seconds,
                        samples, note=f"best of {rounds}"))
    for ref, grown_row in ((rows[0], rows[1]), *(((rows[2], rows[3]),) if len(rows) > 2 else ())):
        grown_row.vs_limit = grown_row.samples_per_s / ref.samples_per_s
        ref.vs_limit = 1.0
    target = rows[1].vs_limit or 0.0
    rows[1].extra = dict(target=0.8, ok=target >= 0.8)
    rows[1].note = f"best of {rounds}; target >= 80% of one file: " + ("ok" if target >= 0.8 else "MISSED")
    for row in rows:
        _progress(f"grow {data.shape.name} {row.name}: {row.samples_per_s:,.0f} samples/s", quiet)
    _warm(data.h5)
    return rows
