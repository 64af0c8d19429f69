"""The ``scale`` section of ``h5feed bench``: does opening cost grow with the rows?

Two files of the same small rows (4 float32, a class label, IDs
``sample-<n>``, a random 80% ``train`` split) are built side by side, one of
:data:`SIZES` rows each (100,000 and 10,000,000; ``--quick``: 2,000 and
200,000). Every measurement runs in a fresh Python process, once per file,
the best of :data:`REPEATS` runs, so the two files are compared like with
like, and each is checked against the targets of issue 20 (:data:`TARGETS`):

- ``open_file`` and ``H5Sequence(path, "train")`` plus its first batch take at
  most twice as long on the big file as on the small one, plus 0.2 s;
- the peak RSS of that process grows by at most 8 bytes per selected row plus
  50 MiB over the small file's;
- ``H5Sequence(path, ids=...)`` with 1,000 IDs of the big file takes at most
  0.5 s (through the sorted ID index; the same lookup on a copy without the
  index, as older files are, is shown beside it);
- with ``workers=2, use_multiprocessing=True`` each worker process's RSS is
  within 100 MiB of a worker's on the small file.

Writing the big file is timed too (``DatasetWriter.extend`` in blocks, the
IDs made a block at a time), against writing as many bytes to a plain file
on the same disk, and kept beside the file for later runs that reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["REPEATS", "SIZES", "TARGETS", "build_scale_file", "scale_rows"]

SIZES = (100_000, 10_000_000)
QUICK_SIZES = (2_000, 200_000)
REPEATS = 3
N_IDS = 1_000  # IDs asked for by ids=
BLOCK = 1 << 18  # rows per extend() while building
TRAIN_FRACTION = 0.8
_VERSION = 1


@dataclass(frozen=True)
class Target:
    """One target of issue 20: ``what`` measured, and its limit in words."""

    name: str
    limit: str


TARGETS = {
    "open": Target("open_file", "big <= 2x small + 0.2 s"),
    "split": Target('H5Sequence(path, "train") + first batch', "big <= 2x small + 0.2 s"),
    "rss": Target('peak RSS, H5Sequence(path, "train")', "big <= small + 8 B per selected row + 50 MiB"),
    "ids": Target(f"ids= with {N_IDS:,} IDs, big file", "<= 0.5 s"),
    "workers": Target("worker RSS, workers=2 processes", "big <= small + 100 MiB"),
}


def _progress(msg: str, quiet: bool) -> None:
    from .bench import _progress as progress

    progress(msg, quiet)


def _ids(start: int, stop: int) -> list[str]:
    return [f"sample-{i}" for i in range(start, stop)]


def _plain_write_seconds(folder: str, nbytes: int) -> float:
    """Writing ``nbytes`` to a new plain file in ``folder``, synced: the disk's part."""
    path = os.path.join(folder, "plain-write.tmp")
    block = np.random.default_rng(0).integers(0, 255, 16 << 20, dtype=np.uint8).tobytes()
    start = time.perf_counter()
    try:
        with open(path, "wb") as fh:
            left = nbytes
            while left > 0:
                left -= fh.write(block[: min(left, len(block))])
            fh.flush()
            os.fsync(fh.fileno())
        return time.perf_counter() - start
    finally:
        os.remove(path)


def build_scale_file(folder: str, n: int, *, quiet: bool) -> tuple[str, dict[str, Any]]:
    """The benchmark file of ``n`` rows in ``folder`` (reused when built), and
    what writing it took (``seconds``, ``bytes``, ``plain_seconds``)."""
    import h5feed

    path = os.path.join(folder, f"scale-{n}.h5")
    marker = path + ".json"
    want = {"n": n, "version": _VERSION}
    try:
        with open(marker) as fh:
            meta = json.load(fh)
        if {k: meta.get(k) for k in want} == want and os.path.exists(path):
            _progress(f"reusing {path}", quiet)
            return path, meta
    except (OSError, ValueError):
        pass
    _progress(f"writing {n:,} rows to {path}", quiet)
    rng = np.random.default_rng(n)
    train = np.flatnonzero(rng.random(n) < TRAIN_FRACTION)
    made = 0.0  # the IDs' own making: the benchmark's cost, not the writer's
    start = time.perf_counter()
    with h5feed.DatasetWriter(
        path, sample_shape=(4,), dtype="float32", n_classes=10, expected_rows=n, overwrite=True
    ) as writer:
        for first in range(0, n, BLOCK):
            last = min(n, first + BLOCK)
            t = time.perf_counter()
            ids = _ids(first, last)
            x = rng.random((last - first, 4), dtype=np.float32)
            y = rng.integers(0, 10, last - first)
            made += time.perf_counter() - t
            writer.extend(ids, x, y)
        writer.add_split("train", train)
    seconds = time.perf_counter() - start - made
    nbytes = os.path.getsize(path)
    meta = dict(want, seconds=seconds, bytes=nbytes, train=int(train.size),
                plain_seconds=_plain_write_seconds(folder, nbytes))
    with open(marker, "w") as fh:
        json.dump(meta, fh)
    return path, meta


def _without_index(path: str) -> str:
    """A copy of ``path`` without the sorted ID index, as files written before it are."""
    import h5py

    copy = path.replace(".h5", "-noindex.h5")
    if os.path.exists(copy):
        return copy
    shutil.copyfile(path, copy + ".tmp")
    with h5py.File(copy + ".tmp", "r+") as f:
        record = json.loads(f.attrs["h5feed_complete"])
        for name in list(record["sha256"]):
            if name.startswith("ids_index/"):
                del record["sha256"][name]
        del f["ids_index"]
        f.attrs["h5feed_complete"] = json.dumps(record, sort_keys=True)
    os.replace(copy + ".tmp", copy)
    return copy


_CHILD = r"""
import glob, json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
mode, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

def status(pid="self"):
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out

def children():
    pids = []
    for name in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(name) as fh:
            pids += [int(p) for p in fh.read().split()]
    with open("/proc/self/cmdline", "rb") as fh:
        mine = fh.read()
    workers = []  # forked workers run this command line; helpers of multiprocessing do not
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read() == mine:
                    workers.append(pid)
        except OSError:
            continue
    return workers

import numpy as np
import h5feed
if mode != "open":
    from h5feed import H5Sequence  # Keras and TensorFlow load before the clock starts
wanted = None
if mode == "ids":
    wanted = [f"sample-{i}" for i in np.random.default_rng(1).choice(n, int(sys.argv[4]), replace=False)]
before = status()
start = time.perf_counter()
out = {}
if mode == "open":
    h5feed.open_file(path)
elif mode == "split":
    seq = H5Sequence(path, "train", batch_size=32, seed=0)
    seq[0]
    out["selected"] = len(seq.rows)
elif mode == "ids":
    seq = H5Sequence(path, ids=wanted, batch_size=32, shuffle=False)
    seq[0]
elif mode == "workers":
    seq = H5Sequence(path, "train", batch_size=32, seed=0, workers=2, use_multiprocessing=True)
    for i in range(min(64, len(seq))):
        seq[i]
    out["workers"] = [status(pid) for pid in children()]
    seq.close()
out["seconds"] = time.perf_counter() - start
out["before"] = before
out["after"] = status()
print(json.dumps(out))
"""


def _measure(mode: str, path: str, n: int, *extra: str, repeats: int = REPEATS) -> dict[str, Any]:
    """The best of ``repeats`` fresh processes: least time, least peak RSS."""
    from .bench import _fresh_process

    runs = [_fresh_process(_CHILD, mode, path, str(n), *extra, what=f"scale {mode} measurement") for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    best = dict(best, peak=min(r["after"]["VmHWM"] for r in runs), seconds=best["seconds"],
                anon=min(r["after"]["RssAnon"] for r in runs), file=min(r["after"]["RssFile"] for r in runs))
    if mode == "workers":
        for key, field in (("worker_rss", "VmRSS"), ("worker_anon", "RssAnon"), ("worker_file", "RssFile")):
            best[key] = min(max(w[field] for w in r["workers"]) for r in runs if r["workers"])
        best["n_workers"] = max(len(r["workers"]) for r in runs)
    return best


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def scale_rows(folder: str, *, quick: bool, quiet: bool) -> list[Any]:
    """Build the two files under ``folder`` and measure; one :class:`~.bench.Row` each."""
    from .bench import Row

    small_n, big_n = QUICK_SIZES if quick else SIZES
    repeats = 1 if quick else REPEATS
    os.makedirs(folder, exist_ok=True)
    small, small_meta = build_scale_file(folder, small_n, quiet=quiet)
    big, big_meta = build_scale_file(folder, big_n, quiet=quiet)
    rows: list[Row] = []

    def add(key: str | None, name: str, ok: bool | None, note: str, **extra: Any) -> None:
        verdict = "" if ok is None else ("pass" if ok else "FAIL")
        if key is not None:
            name = TARGETS[key].name
            note = f"{note} (target {TARGETS[key].limit}): {verdict}"
        rows.append(Row("scale", f"{small_n:,} vs {big_n:,} rows", name, 0.0, extra.get("seconds", 0.0), 0,
                        note=note, extra=dict(extra, target=key, ok=ok)))
        _progress(f"scale {name}: {rows[-1].note}", quiet)

    for mode, key in (("open", "open"), ("split", "split")):
        a, b = _measure(mode, small, small_n, repeats=repeats), _measure(mode, big, big_n, repeats=repeats)
        limit = 2 * a["seconds"] + 0.2
        add(key, "", b["seconds"] <= limit, f"{a['seconds']:.3f} s small, {b['seconds']:.3f} s big",
            small_seconds=a["seconds"], seconds=b["seconds"], limit_seconds=limit)
        if mode == "split":
            growth = b["peak"] - a["peak"]
            allowed = 8 * b["selected"] + 50 * 2**20
            add("rss", "", growth <= allowed,
                f"+{_mib(growth)} for {b['selected']:,} selected rows ({_mib(a['peak'])} -> {_mib(b['peak'])}; "
                f"allowed +{_mib(allowed)}; after it, anonymous +{_mib(b['anon'] - a['anon'])}, "
                f"file pages mapped +{_mib(b['file'] - a['file'])})",
                small_peak=a["peak"], peak=b["peak"], growth=growth, allowed=allowed, selected=b["selected"],
                anon_growth=b["anon"] - a["anon"], file_growth=b["file"] - a["file"])
    for label, path in (("", big), (", no ID index", _without_index(big))):
        r = _measure("ids", path, big_n, str(N_IDS), repeats=repeats)
        if label:
            add(None, f"ids= with {N_IDS:,} IDs, big file{label}", None, f"{r['seconds']:.3f} s",
                seconds=r["seconds"])
        else:
            add("ids", "", r["seconds"] <= 0.5, f"{r['seconds']:.3f} s", seconds=r["seconds"])
    a, b = _measure("workers", small, small_n, repeats=repeats), _measure("workers", big, big_n, repeats=repeats)
    growth = b["worker_rss"] - a["worker_rss"]
    add("workers", "", growth <= 100 * 2**20,
        f"{b['n_workers']} workers, {_mib(a['worker_rss'])} -> {_mib(b['worker_rss'])} each "
        f"(anonymous {_mib(a['worker_anon'])} -> {_mib(b['worker_anon'])}, file pages mapped "
        f"{_mib(a['worker_file'])} -> {_mib(b['worker_file'])}; parent peak {_mib(b['peak'])})",
        small_rss=a["worker_rss"], rss=b["worker_rss"], growth=growth,
        anon_growth=b["worker_anon"] - a["worker_anon"], file_growth=b["worker_file"] - a["worker_file"])
    w = big_meta
    add(None, f"writing {big_n:,} rows", None,
        f"{w['seconds']:.1f} s for {_mib(w['bytes'])} (DatasetWriter.extend); the same bytes written to a "
        f"plain file: {w['plain_seconds']:.1f} s",
        seconds=w["seconds"], bytes=w["bytes"], plain_seconds=w["plain_seconds"])
    return rows
