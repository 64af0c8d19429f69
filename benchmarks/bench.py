"""The side-by-side benchmark: how fast each way of feeding a model reads.

:func:`run_bench` builds the datasets (the tutorial's one ``.npy`` per sample,
an h5feed file, an LZF-compressed chunked h5feed file and the same arrays in
memory) in a folder, then measures samples/s in ONE run so that the ratios
compare like with like on a shared, noisy machine:

- ``raw``: one shuffled epoch, batch 32, one process, warm page cache:
  the per-file baseline (the tutorial's generator), naive h5py (one
  ``dset[row]`` per sample), h5py fancy indexing (``dset[sorted_rows]``),
  ``H5Sequence`` with default settings, and the limit (numpy fancy indexing
  from an in-memory array).
- ``cold``: the page cache is emptied first (``POSIX_FADV_DONTNEED``); one
  sequential read of the file (advised ``POSIX_FADV_SEQUENTIAL``, as ``cat``
  reads) is the reference for a fully shuffled and a ``shuffle="block"``
  epoch, each with and without ``readahead``, and for large rows a shuffled
  epoch read by two worker processes; the same epochs from a warm
  cache show the ceiling.
- ``compressed``: LZF-compressed chunked file, full shuffle against
  ``shuffle="block"``.
- ``codecs`` (the "frames" shape only): the same frames stored contiguous
  and compressed with gzip, LZF, Zstd and LZ4 (Blosc): each file's size and
  write speed (one compressing thread, then two), and one epoch of each,
  block-shuffled and fully shuffled, read the default way (decoded outside
  HDF5 in threads, through the chunk cache), with one decoding thread, and
  the way h5feed 0.1 read them (``decode_threads=0``: HDF5 decodes); then
  the anonymous memory of a fresh process reading a fully shuffled epoch
  with a cache budget smaller than the file; and the targets as ratios.
- ``fit``: end-to-end ``model.fit`` (Flatten then Dense) from the per-file
  generator, ``H5Sequence`` and an in-memory ``PyDataset``; and, on the
  volume shape, ``H5Sequence`` with ``workers=2, use_multiprocessing=True``
  against ``workers=1``, with and without a CPU-heavy transform.
- ``memory``: the anonymous memory (RssAnon) of a fresh process reading an
  epoch through ``H5Sequence``, measured in a child process.
- ``grow``: appending 1,000 rows to a small and a big grown dataset, and
  shuffled epochs over a dataset grown by 10 appends against the same rows
  in one file (:mod:`h5feed.benchmarks.grow`).
- ``scale``: opening, selecting and worker memory on a file of 10 million
  small rows against one of 100,000, each checked against its target
  (:mod:`h5feed.benchmarks.scale`).

Every row is a dict (see :class:`Row`); :func:`format_table` prints them.
Speeds are never asserted by tests, only the table's structure.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["SHAPES", "Row", "Shape", "format_table", "machine_description", "run_bench"]

BATCH = 32


@dataclass(frozen=True)
class Shape:
    """A benchmark dataset: ``n`` samples of ``sample`` shape and ``dtype``."""

    name: str
    n: int
    sample: tuple[int, ...]
    dtype: str
    n_classes: int = 10

    @property
    def row_nbytes(self) -> int:
        return int(np.prod(self.sample)) * np.dtype(self.dtype).itemsize

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.sample)
        return f"{self.name}: {self.n:,} x {dims} {self.dtype} ({self.n * self.row_nbytes / 2**20:,.0f} MiB)"


SHAPES = {
    "small": Shape("small", 60_000, (28, 28, 1), "uint8"),
    "volume": Shape("volume", 8_192, (32, 32, 32, 1), "float32"),
    # Detector-like frames: Poisson noise around a smooth background, as
    # compressible as real ones (about 1.5x with LZF, 1.8x with gzip).
    "frames": Shape("frames", 8_192, (64, 64), "uint16"),
}
# --quick: the same shapes, few rows, for tests and development.
QUICK_ROWS = {"small": 3_000, "volume": 256, "frames": 1_024}
# The sections each shape runs (of those asked for).
SHAPE_SECTIONS = {"frames": {"codecs"}}


@dataclass
class Row:
    """One measurement of the table."""

    section: str
    shape: str
    name: str
    samples_per_s: float
    seconds: float
    samples: int
    vs_baseline: float | None = None
    vs_limit: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _progress(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"h5feed bench: {msg}", file=sys.stderr, flush=True)


# -- machine ----------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    """CPU, cores, memory, OS and library versions of this machine."""
    import h5py

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
    }


# -- datasets ---------------------------------------------------------------


@dataclass
class Data:
    shape: Shape
    folder: str
    h5: str
    lzf: str
    npy_dir: str
    ids: list[str]
    labels: dict[str, int]
    x: np.ndarray
    y: np.ndarray


def _make_arrays(shape: Shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse-ish samples (about 80% zeros, like MNIST), so LZF has work to do;
    for "frames", :func:`_make_frames`."""
    if shape.name == "frames":
        return _make_frames(shape, seed)
    rng = np.random.default_rng(seed)
    x = np.zeros((shape.n, *shape.sample), dtype=shape.dtype)
    flat = x.reshape(shape.n, -1)
    step = max(1, 65536 // max(1, shape.row_nbytes))
    for start in range(0, shape.n, step):
        stop = min(shape.n, start + step)
        block = rng.random((stop - start, flat.shape[1]), dtype=np.float32)
        keep = block < 0.2
        if np.dtype(shape.dtype).kind == "u":
            flat[start:stop] = np.where(keep, (block * 1275).astype(shape.dtype), 0)
        else:
            flat[start:stop] = np.where(keep, block * 5, 0)
    y = rng.integers(0, shape.n_classes, shape.n)
    return x, y


def _make_frames(shape: Shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Poisson counts around a smooth background that drifts slowly from
    frame to frame (about 1,500 counts a pixel)."""
    rng = np.random.default_rng(seed)
    height, width = shape.sample
    yy, xx = np.mgrid[0:height, 0:width]
    background = 1500.0 * (1 + 0.5 * np.sin(2.5 * xx / max(1, width - 1) + 1.0) * np.cos(1.7 * yy / max(1, height - 1)))
    x = np.empty((shape.n, height, width), dtype=shape.dtype)
    for start in range(0, shape.n, 256):
        stop = min(shape.n, start + 256)
        drift = 1 + 0.1 * np.sin(np.arange(start, stop) / 40.0)
        x[start:stop] = rng.poisson(background[None] * drift[:, None, None])
    return x, rng.integers(0, shape.n_classes, shape.n)


def build(shape: Shape, folder: str, *, quiet: bool) -> Data:
    """Write (or reuse) the benchmark's files for ``shape`` under ``folder``."""
    import h5feed

    folder = os.path.join(folder, shape.name)
    os.makedirs(folder, exist_ok=True)
    h5 = os.path.join(folder, f"{shape.name}.h5")
    lzf = os.path.join(folder, f"{shape.name}-lzf.h5")
    npy_dir = os.path.join(folder, "data")
    marker = os.path.join(folder, "built.json")
    ids = [f"id-{i + 1}" for i in range(shape.n)]
    x, y = _make_arrays(shape)
    labels = dict(zip(ids, y.tolist()))
    meta = {"n": shape.n, "sample": list(shape.sample), "dtype": shape.dtype, "version": 1}
    try:
        with open(marker) as fh:
            if json.load(fh) == meta:
                _progress(f"reusing {folder}", quiet)
                return Data(shape, folder, h5, lzf, npy_dir, ids, labels, x, y)
    except (OSError, ValueError):
        pass
    _progress(f"writing {shape.describe()} under {folder}", quiet)
    if os.path.exists(npy_dir):
        shutil.rmtree(npy_dir)
    os.makedirs(npy_dir)
    for sid, row in zip(ids, x):
        np.save(os.path.join(npy_dir, sid + ".npy"), row)
    h5feed.write_arrays(h5, ids, x, y, n_classes=shape.n_classes, overwrite=True)
    h5feed.write_arrays(lzf, ids, x, y, n_classes=shape.n_classes, compression="lzf", overwrite=True)
    with open(marker, "w") as fh:
        json.dump(meta, fh)
    return Data(shape, folder, h5, lzf, npy_dir, ids, labels, x, y)


# -- the ways of reading a batch --------------------------------------------


def _epoch_batches(n: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + BATCH] for i in range(0, n, BATCH)]


_EYES: dict[int, np.ndarray] = {}


def _one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """The fastest numpy one-hot (what H5Sequence does), for every row alike."""
    eye = _EYES.get(n_classes)
    if eye is None:
        eye = _EYES[n_classes] = np.eye(n_classes, dtype=np.float32)
    return eye[y]


class TutorialGenerator:
    """The tutorial's ``DataGenerator.__data_generation``, as published."""

    def __init__(self, data: Data) -> None:
        self.data = data
        self.dim = data.shape.sample

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from keras.utils import to_categorical

        ids = [self.data.ids[r] for r in rows]
        X = np.empty((len(ids), *self.dim))  # float64, as in the tutorial
        y = np.empty(len(ids), dtype=int)
        for i, sid in enumerate(ids):
            X[i,] = np.load(os.path.join(self.data.npy_dir, sid + ".npy"))
            y[i] = self.data.labels[sid]
        return X, to_categorical(y, num_classes=self.data.shape.n_classes)


def _timed(batches: Iterable[np.ndarray], read: Callable[[np.ndarray], Any], max_seconds: float) -> tuple[int, float]:
    """Read batches until done or ``max_seconds``; (samples, seconds)."""
    samples = 0
    start = time.perf_counter()
    for rows in batches:
        read(rows)
        samples += len(rows)
        if time.perf_counter() - start > max_seconds:
            break
    return samples, time.perf_counter() - start


def _seq_epoch(seq: Any, max_seconds: float | None = None) -> tuple[int, float]:
    samples = 0
    start = time.perf_counter()
    for i in range(len(seq)):
        batch = seq[i]
        samples += len(batch[0])
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return samples, time.perf_counter() - start


def _best(run: Callable[[int], tuple[int, float]], min_seconds: float = 1.0, most: int = 5) -> tuple[int, float, int]:
    """The fastest of repeated epochs ``run(epoch)``: (samples, seconds, epochs run).

    An epoch of a fast row lasts tens of milliseconds, well inside the noise
    of a shared machine, so fast rows are repeated (at least ``min_seconds``
    in all, at most ``most`` epochs) and the best epoch counts, as
    ``timeit`` does. Slow rows run once.
    """
    best: tuple[int, float] | None = None
    total = 0.0
    epochs = 0
    while epochs < most and (epochs == 0 or total < min_seconds):
        samples, seconds = run(epochs)
        epochs += 1
        total += seconds
        if best is None or samples / seconds > best[0] / best[1]:
            best = (samples, seconds)
    return best[0], best[1], epochs  # type: ignore[index]


def _best_in_rounds(
    cases: list[tuple[str, Callable[[], tuple[int, float]]]], rounds: int
) -> dict[str, tuple[int, float]]:
    """The best ``(samples, seconds)`` of each case over ``rounds`` rounds.

    The rounds go round all the cases, so that a slow spell of the machine
    (or of the disk, or of the host's cache on a virtual machine) does not
    land on one case only.
    """
    best: dict[str, tuple[int, float]] = {}
    for _ in range(rounds):
        for name, run in cases:
            gc.collect()
            samples, seconds = run()
            if name not in best or samples / seconds > best[name][0] / best[name][1]:
                best[name] = (samples, seconds)
    return best


def raw_rows(data: Data, *, max_seconds: float, quiet: bool) -> list[Row]:
    """The five ways of reading shuffled batches, warm cache, one process."""
    import h5py

    from h5feed import H5Sequence

    shape = data.shape
    rows: list[Row] = []
    least = min(1.0, max_seconds / 2)

    def add(name: str, read: Callable[[np.ndarray], Any]) -> None:
        samples, seconds, epochs = _best(
            lambda e: _timed(_epoch_batches(shape.n, seed=1 + e), read, max_seconds), min_seconds=least
        )
        rows.append(Row("raw", shape.name, name, samples / seconds, seconds, samples, note=f"best of {epochs}"))
        _progress(f"{shape.name} {name}: {samples / seconds:,.0f} samples/s", quiet)

    _warm(data.h5)
    _warm_dir(data.npy_dir, quiet)
    gen = TutorialGenerator(data)
    add("per-file .npy (tutorial)", gen.batch)

    with h5py.File(data.h5, "r") as f:
        dx, dy = f["x"], f["y"]

        def naive(r: np.ndarray) -> None:
            X = np.empty((len(r), *shape.sample), dtype=shape.dtype)
            Y = np.empty(len(r), dtype=dy.dtype)
            for i, row in enumerate(r.tolist()):
                X[i] = dx[row]
                Y[i] = dy[row]
            _one_hot(Y, shape.n_classes)

        add("naive h5py (dset[row])", naive)

        def fancy(r: np.ndarray) -> None:
            s = np.sort(r)
            _one_hot(dy[s], shape.n_classes)
            dx[s]

        add("h5py fancy (dset[sorted])", fancy)

    seq = H5Sequence(data.h5, batch_size=BATCH, seed=1)
    seq[0]  # open the file outside the timing, as fit's first batch would

    def seq_epoch(epoch: int) -> tuple[int, float]:
        seq.set_epoch(epoch)
        return _seq_epoch(seq, max_seconds)

    samples, seconds, epochs = _best(seq_epoch, min_seconds=least)
    rows.append(Row("raw", shape.name, "h5feed H5Sequence", samples / seconds, seconds, samples, note=f"best of {epochs}"))
    _progress(f"{shape.name} h5feed H5Sequence: {samples / seconds:,.0f} samples/s", quiet)
    seq.close()

    # A fresh copy, touched just before it is measured: an array made at
    # start-up and idle for minutes can gather far slower than the page
    # cache serves the same batches, which would make the limit no limit.
    x, y = data.x.copy(), data.y.copy()
    add("in-memory numpy (limit)", lambda r: (x[r], _one_hot(y[r], shape.n_classes)))
    del x, y

    base = rows[0].samples_per_s
    limit = rows[-1].samples_per_s
    for row in rows:
        row.vs_baseline = row.samples_per_s / base
        row.vs_limit = row.samples_per_s / limit
    return rows


# -- cold cache ---------------------------------------------------------------


def evict(path: str) -> None:
    """Drop ``path``'s clean pages from the page cache (Linux)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _warm(path: str) -> None:
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(16 << 20)
        while fh.readinto(buf):
            pass


def _warm_dir(folder: str, quiet: bool) -> None:
    for entry in os.scandir(folder):
        with open(entry.path, "rb") as fh:
            fh.read()


def _sequential_read_seconds(path: str) -> float:
    """One sequential read of ``path``, as fast as plain tools read it.

    Like ``cat`` (coreutils advises ``POSIX_FADV_SEQUENTIAL``), which lets
    the kernel read ahead in larger steps: an unadvised read can be much
    slower, a reference too easy to beat.
    """
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        buf = bytearray(16 << 20)
        while os.readv(fd, [buf]):
            pass
    finally:
        os.close(fd)
    return time.perf_counter() - start


PROCESSES = {"workers": 2, "use_multiprocessing": True}


def cold_rows(data: Data, *, quiet: bool, repeats: int = 3) -> list[Row]:
    """A cold sequential read of the file against cold shuffled epochs."""
    from h5feed import H5Sequence
    from h5feed._shared import MIN_ROW_BYTES

    shape = data.shape
    if not hasattr(os, "posix_fadvise"):
        return []
    rows: list[Row] = []

    def sequential() -> tuple[int, float]:
        return shape.n, _sequential_read_seconds(data.h5)

    def epoch(shuffle: bool | str, readahead: bool = True, **kwargs: Any) -> Callable[[], tuple[int, float]]:
        def run() -> tuple[int, float]:
            seq = H5Sequence(data.h5, batch_size=BATCH, seed=2, shuffle=shuffle, readahead=readahead, **kwargs)
            try:
                return _seq_epoch(seq)
            finally:
                seq.close()

        return run

    def cold(run: Callable[[], tuple[int, float]]) -> Callable[[], tuple[int, float]]:
        def evicted_first() -> tuple[int, float]:
            evict(data.h5)
            return run()

        return evicted_first

    # The sequential read leaves the file in the page cache, so the warm
    # cases follow it; each cold case evicts first.
    cases = [
        ("sequential read of the file", cold(sequential)),
        # The ceiling: a cold epoch cannot beat the same epoch from memory.
        # On "small" it lies near the sequential rate itself.
        ("H5Sequence shuffle=True, warm cache", epoch(True)),
        ('H5Sequence shuffle="block", warm cache', epoch("block")),
        ("H5Sequence shuffle=True", cold(epoch(True))),
        ('H5Sequence shuffle="block"', cold(epoch("block"))),
        # What the read-ahead (docs/design/read-ahead.md) is worth.
        ("H5Sequence shuffle=True readahead=False", cold(epoch(True, False))),
        ('H5Sequence shuffle="block" readahead=False', cold(epoch("block", False))),
    ]
    if shape.row_nbytes >= MIN_ROW_BYTES:
        # Worker processes read; this process advises for them (the page
        # cache is shared). Not on rows too small to be read ahead one by
        # one, whose whole cold epoch takes less than starting the processes.
        cases += [
            ("2 processes shuffle=True", cold(epoch(True, **PROCESSES))),
            ("2 processes shuffle=True readahead=False", cold(epoch(True, False, **PROCESSES))),
        ]
    # Best of `repeats`: one cold epoch of a small file lasts tens of
    # milliseconds, well inside the noise of a shared machine.
    best = _best_in_rounds(cases, repeats)
    for name, _ in cases:
        samples, seconds = best[name]
        rows.append(Row("cold", shape.name, name, samples / seconds, seconds, samples, note=f"best of {repeats}"))
    ref = rows[0].samples_per_s
    for row in rows:
        row.vs_limit = row.samples_per_s / ref
        _progress(f"{shape.name} cold {row.name}: {row.samples_per_s:,.0f} samples/s", quiet)
    _warm(data.h5)
    return rows


# -- compressed -----------------------------------------------------------------


def compressed_rows(data: Data, *, max_seconds: float, quiet: bool) -> list[Row]:
    """LZF-compressed, chunked: full shuffle against ``shuffle="block"``."""
    from h5feed import H5Sequence

    _warm(data.lzf)
    rows: list[Row] = []
    for name, shuffle in (("lzf H5Sequence shuffle=True", True), ('lzf H5Sequence shuffle="block"', "block")):
        seq = H5Sequence(data.lzf, batch_size=BATCH, seed=3, shuffle=shuffle)
        seq[0]
        samples, seconds = _seq_epoch(seq, max_seconds)
        seq.close()
        rows.append(Row("compressed", data.shape.name, name, samples / seconds, seconds, samples))
        _progress(f"{data.shape.name} {name}: {samples / seconds:,.0f} samples/s", quiet)
    rows[1].vs_baseline = rows[1].samples_per_s / rows[0].samples_per_s
    rows[1].note = "vs_baseline: block over full shuffle"
    return rows


# -- codecs ---------------------------------------------------------------------

CODECS = ("gzip", "lzf", "zstd", "lz4")


def _codec_files(data: Data, quiet: bool) -> dict[str, dict[str, Any]]:
    """Write the frames once per compression (and contiguous): ``{name: {path,
    bytes, write MB/s with 1 and 2 compressing threads}}``; best of two writes."""
    import h5feed

    out: dict[str, dict[str, Any]] = {}
    mib = data.x.nbytes / 2**20
    for codec in (None, *CODECS):
        name = codec or "contiguous"
        path = os.path.join(data.folder, f"{data.shape.name}-{name}.h5")
        speeds = {}
        for threads in (1, 2) if codec else (1,):
            best = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                h5feed.write_arrays(path, data.ids, data.x, data.y, n_classes=data.shape.n_classes,
                                    compression=codec, compress_threads=threads, overwrite=True)
                best = min(best, time.perf_counter() - start)
            speeds[threads] = mib / best
        import h5py

        with h5py.File(path) as f:
            stored = int(f["x"].id.get_storage_size())
            chunk_rows = f["x"].chunks[0] if f["x"].chunks else 0
        out[name] = {"path": path, "bytes": stored, "write_mb_s": speeds,
                     "chunk_bytes": chunk_rows * data.shape.row_nbytes}
        _progress(f"{data.shape.name} {name}: {stored / 2**20:,.1f} MiB, written at "
                  + ", ".join(f"{v:,.0f} MiB/s ({k} thread{'s' if k > 1 else ''})" for k, v in speeds.items()), quiet)
    return out


def _epoch_case(
    path: str, shuffle: bool | str, max_seconds: float, *, steady: bool = False, **options: Any
) -> Callable[[], tuple[int, float]]:
    """One epoch of a new sequence, timed whole (opening the file included).

    ``steady``: the epochs after an untimed first, as in training: the
    memory of the chunk cache is in place, and with a budget smaller than
    the file every epoch decodes every chunk (once, block-shuffled). An
    epoch of compressed frames lasts about a tenth of a second, so the best
    of several counts (:func:`_best`). Otherwise the first: the cache
    starts empty and takes its memory.
    """
    from h5feed import H5Sequence

    def run() -> tuple[int, float]:
        seq = H5Sequence(path, batch_size=BATCH, seed=11, shuffle=shuffle, readahead=False, **options)
        try:
            if steady:
                _seq_epoch(seq, max_seconds)
                cpus: dict[tuple[int, float], float] = {}

                def epoch(k: int) -> tuple[int, float]:
                    seq.set_epoch(1 + k)
                    cpu = time.process_time()
                    timed = _seq_epoch(seq, max_seconds)
                    cpus[timed] = time.process_time() - cpu
                    return timed

                samples, seconds, _ = _best(epoch)
                run.cpu = cpus[(samples, seconds)]  # type: ignore[attr-defined]
                return samples, seconds
            cpu = time.process_time()
            timed = _seq_epoch(seq, max_seconds)
            run.cpu = time.process_time() - cpu  # type: ignore[attr-defined]
            return timed
        finally:
            seq.close()

    return run


# The start of the scripts that measure memory in a fresh process.
_MEMORY_CHILD_START = r"""
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from h5feed import H5Sequence

def rss_anon():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0
"""

_CODEC_MEMORY_CHILD = _MEMORY_CHILD_START + r"""
path, batch, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seq = H5Sequence(path, batch_size=batch, seed=12, shuffle=True, cache_bytes=budget, readahead=False)
before = peak = rss_anon()
batch_bytes = 0
for i in range(len(seq)):
    X, Y = seq[i]
    batch_bytes = max(batch_bytes, X.nbytes + Y.nbytes)
    del X, Y
    peak = max(peak, rss_anon())
stats = seq._reader._cache.stats()  # the cache's own count, beside RssAnon
x = seq.layout.column("x")
print(json.dumps({"before": before, "peak": peak, "cache_peak": stats.peak_nbytes, "decoded": stats.decoded,
                  "chunk_bytes": x.chunk_rows * x.row_nbytes, "threads": seq._reader.decode_threads,
                  "batch_bytes": batch_bytes}))
"""


def _codec_memory_row(path: str, shape_name: str, budget: int, data_bytes: int, quiet: bool) -> Row:
    start = time.perf_counter()
    m = _fresh_process(_CODEC_MEMORY_CHILD, path, str(BATCH), str(budget), what="codec memory measurement")
    grown = m["peak"] - m["before"]
    # Beyond the budget: per decoding thread, a chunk being decoded (its
    # stored bytes, a stage between, the output) and two decoded ones not
    # yet copied (NOTE [ The chunk cache ]); and a few batches.
    allowance = 5 * m["threads"] * m["chunk_bytes"] + 4 * m["batch_bytes"]
    row = Row(
        "codecs", shape_name, f"RssAnon, full shuffle, cache_bytes={budget / 2**20:g} MiB",
        0.0, time.perf_counter() - start, 0,
        note=(f"grew {grown / 2**20:,.1f} MiB (cache peak {m['cache_peak'] / 2**20:,.1f} MiB) for "
              f"{data_bytes / 2**20:,.0f} MiB of frames; {m['decoded']} chunks decoded"),
        extra={**m, "budget": budget, "grown": grown, "allowance": allowance},
    )
    _progress(f"{shape_name} codec memory: {row.note}", quiet)
    return row


BLOCK, FULL = 'shuffle="block"', "shuffle=True"
STEADY, FIRST = "cache < file", "first epoch"
OLD = "decode_threads=0 (as 0.1)"


def codec_rows(data: Data, *, max_seconds: float, quiet: bool, rounds: int = 3) -> list[Row]:
    """The ``codecs`` section (see the module docstring) and its targets.

    Block-shuffled epochs are measured in the steady state of a file larger
    than the chunk cache (a budget of a quarter of the frames: every epoch
    decodes every chunk, into memory already in place; the best of several
    epochs in each round), against HDF5's own
    path (``decode_threads=0``, its chunk cache smaller than the file too);
    and, like full shuffles, as the first epoch of a new sequence whose
    cache holds the whole file (each chunk decoded once, the cache's memory
    taken on the way).
    """
    shape = data.shape
    files = _codec_files(data, quiet)
    # A quarter of the frames, or (few frames, with --quick) two windows of
    # block shuffling and a chunk: what the block-shuffled batches need.
    chunk_bytes = files["gzip"]["chunk_bytes"]
    quarter = max(data.x.nbytes // 4, (2 * 8 + 1) * chunk_bytes)
    old_cap = min(max_seconds, 3.0)  # HDF5's path on a full shuffle is slow: its rate over a few seconds
    contiguous = files["contiguous"]["path"]
    cases: list[tuple[str, Callable[[], tuple[int, float]]]] = [
        (f"contiguous {BLOCK}", _epoch_case(contiguous, "block", max_seconds, steady=True)),
        (f"contiguous {FULL}", _epoch_case(contiguous, True, max_seconds, steady=True)),
    ]
    for codec in CODECS:
        path = files[codec]["path"]
        cases += [
            (f"{codec} {BLOCK}, {STEADY}", _epoch_case(path, "block", max_seconds, steady=True, cache_bytes=quarter)),
            (f"{codec} {BLOCK}, {FIRST}", _epoch_case(path, "block", max_seconds)),
            (f"{codec} {FULL}, {FIRST}", _epoch_case(path, True, max_seconds)),
        ]
        if codec in ("gzip", "lzf"):
            cases += [
                (f"{codec} {BLOCK}, {STEADY}, {OLD}",
                 _epoch_case(path, "block", old_cap, steady=True, decode_threads=0)),
                (f"{codec} {FULL}, {FIRST}, {OLD}", _epoch_case(path, True, old_cap, decode_threads=0)),
            ]
    for threads in (1, 2):
        cases.append((f"gzip {BLOCK}, {STEADY}, decode_threads={threads}",
                      _epoch_case(files["gzip"]["path"], "block", max_seconds, steady=True,
                                  cache_bytes=quarter, decode_threads=threads)))
    for info in files.values():
        _warm(info["path"])
    # As _best_in_rounds, also noting the CPU time of the process (all its
    # threads) in each case's best epoch: the cores it got to use.
    best: dict[str, tuple[int, float, float]] = {}
    for _ in range(rounds):
        for name, run in cases:
            gc.collect()
            samples, seconds = run()
            cpu = getattr(run, "cpu", 0.0)
            if name not in best or samples / seconds > best[name][0] / best[name][1]:
                best[name] = (samples, seconds, cpu)
    rows: list[Row] = []
    rate: dict[str, float] = {}
    for name, _ in cases:
        samples, seconds, cpu = best[name]
        rate[name] = samples / seconds
        codec = name.split()[0]
        reference = rate[f"contiguous {BLOCK if BLOCK in name else FULL}"]
        rows.append(Row("codecs", shape.name, name, rate[name], seconds, samples, vs_limit=rate[name] / reference,
                        note=f"best of {rounds}, {cpu / seconds:.1f} cores busy", extra={"file_bytes": files[codec]["bytes"],
                                                         "write_mb_s": files[codec]["write_mb_s"],
                                                         "cpu_seconds": cpu}))
        _progress(f"{shape.name} {name}: {rate[name]:,.0f} samples/s", quiet)
    rows.append(_codec_memory_row(files["gzip"]["path"], shape.name, quarter, data.x.nbytes, quiet))
    memory = rows[-1].extra

    def target(name: str, value: float, goal: float) -> Row:
        return Row("targets", shape.name, name, 0.0, 0.0, 0, note=f"{value:,.2f} (target >= {goal:g})",
                   extra={"value": value, "target": goal, "ok": value >= goal})

    rows += [
        *(target(f"{c} block, {STEADY}: default / HDF5's path (0.1)",
                 rate[f"{c} {BLOCK}, {STEADY}"] / rate[f"{c} {BLOCK}, {STEADY}, {OLD}"], 3.0) for c in ("gzip", "lzf")),
        target(f"gzip block, {STEADY}: 2 decoding threads / 1",
               rate[f"gzip {BLOCK}, {STEADY}, decode_threads=2"] / rate[f"gzip {BLOCK}, {STEADY}, decode_threads=1"], 1.6),
        target(f"lz4 block, {STEADY}: of contiguous block", rate[f"lz4 {BLOCK}, {STEADY}"] / rate[f"contiguous {BLOCK}"], 0.15),
        target("lz4 file: times smaller than contiguous", files["contiguous"]["bytes"] / files["lz4"]["bytes"], 1.3),
        *(target(f"{c} full shuffle / block, {FIRST} (fits the cache)",
                 rate[f"{c} {FULL}, {FIRST}"] / rate[f"{c} {BLOCK}, {FIRST}"], 0.5) for c in CODECS),
        target("cache: budget / the most it held", memory["budget"] / max(1, memory["cache_peak"]), 1.0),
        target("RssAnon: (budget + in-flight allowance) / growth",
               (memory["budget"] + memory["allowance"]) / max(1, memory["grown"]), 1.0),
    ]
    return rows


# -- end-to-end fit ---------------------------------------------------------------


def heavy_transform(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A CPU-heavy, augmentation-like transform: elementwise trig (a few ms per volume batch)."""
    X = np.sin(X) * np.cos(X) + np.tanh(X)
    X = np.sqrt(np.abs(np.sin(X * 1.5)) + 1.0, dtype=np.float32)
    return X.astype(np.float32, copy=False), Y


def _make_model(shape: Shape) -> Any:
    import keras

    model = keras.Sequential(
        [keras.Input(shape.sample), keras.layers.Flatten(), keras.layers.Dense(shape.n_classes, activation="softmax")]
    )
    model.compile("sgd", "categorical_crossentropy")
    return model


def _fit_rate(dataset: Any, shape: Shape, *, max_steps: int | None = None) -> tuple[int, float]:
    """Train two epochs; time the second (the first builds and traces)."""
    import keras

    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times[-1] = time.perf_counter() - times[-1]

    model = _make_model(shape)
    if max_steps is None or max_steps >= len(dataset):
        # fit's defaults (shuffle=True, no steps_per_epoch), as a user runs it.
        model.fit(dataset, epochs=2, verbose=0, callbacks=[Clock()])
        samples = shape.n
    else:
        model.fit(dataset, epochs=2, verbose=0, callbacks=[Clock()], steps_per_epoch=max_steps)
        samples = max_steps * BATCH
    return samples, times[-1]


def _in_memory_dataset(data: Data, **kwargs: Any) -> Any:
    import keras

    class InMemory(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(**kwargs)
            self.order = np.random.default_rng(4).permutation(data.shape.n)

        def __len__(self) -> int:
            return -(-data.shape.n // BATCH)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            r = self.order[i * BATCH : (i + 1) * BATCH]
            return data.x[r], _one_hot(data.y[r], data.shape.n_classes)

        def on_epoch_end(self) -> None:
            self.order = np.random.default_rng(int(self.order[0])).permutation(data.shape.n)

    return InMemory()


def _per_file_dataset(data: Data, **kwargs: Any) -> Any:
    import keras

    gen = TutorialGenerator(data)

    class PerFile(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(**kwargs)
            self.order = np.random.default_rng(5).permutation(data.shape.n)

        def __len__(self) -> int:
            return -(-data.shape.n // BATCH)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            return gen.batch(self.order[i * BATCH : (i + 1) * BATCH])

    return PerFile()


def fit_rows(data: Data, *, quiet: bool, max_steps: int | None, rounds: int = 2) -> list[Row]:
    """End-to-end ``model.fit``: per-file, H5Sequence, in-memory.

    Best of ``rounds`` that go round the cases: one timed epoch of each
    swings widely between runs on a shared machine.
    """
    from h5feed import H5Sequence

    shape = data.shape
    rows: list[Row] = []
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("fit per-file .npy (tutorial)", lambda: _per_file_dataset(data)),
        ("fit H5Sequence", lambda: H5Sequence(data.h5, batch_size=BATCH, seed=6)),
        ("fit in-memory PyDataset", lambda: _in_memory_dataset(data)),
    ]
    best = _best_in_rounds(
        [(name, lambda make=make: _fit_rate(make(), shape, max_steps=max_steps)) for name, make in cases], rounds
    )
    for name, _ in cases:
        samples, seconds = best[name]
        note = f"best of {rounds}" if rounds > 1 else ""
        rows.append(Row("fit", shape.name, name, samples / seconds, seconds, samples, note=note))
        _progress(f"{shape.name} {name}: {samples / seconds:,.0f} samples/s", quiet)
    base, limit = rows[0].samples_per_s, rows[-1].samples_per_s
    for row in rows:
        row.vs_baseline = row.samples_per_s / base
        row.vs_limit = row.samples_per_s / limit
    return rows


TRANSFORMS = {"": None, " + transform": heavy_transform}


def _batches_rates(path: str, label: str, max_seconds: float, rounds: int = 5) -> list[tuple[int, int, float]]:
    """The batches alone, ``workers=1`` and ``workers=2``: ``(workers, samples, seconds)`` each.

    One consumer reads epochs in order. Both sequences stay open and take
    epochs in turn, so that a slow spell of the shared machine lands on
    both, not on one; the best epoch of each counts, as for the raw rows. The pool serves every epoch, as in
    ``fit``; idle, its workers wake once a second.
    """
    from h5feed import H5Sequence

    seqs = {}
    try:
        for workers in (1, 2):
            seqs[workers] = H5Sequence(
                path, batch_size=BATCH, seed=7, transform=TRANSFORMS[label],
                workers=workers, use_multiprocessing=workers > 1,
            )
        best: dict[int, tuple[int, float]] = {}
        spent = 0.0
        for e in range(rounds):
            for workers, seq in seqs.items():
                seq.set_epoch(e)
                if e == 0:
                    seq[0], seq[1]  # as Keras's TF backend peeks, once, before the pool starts
                samples, seconds = _seq_epoch(seq, max_seconds)
                spent += seconds
                if workers not in best or samples / seconds > best[workers][0] / best[workers][1]:
                    best[workers] = (samples, seconds)
            if e >= 2 and spent >= 4.0:  # three rounds at least; more while epochs are short
                break
    finally:
        for seq in seqs.values():
            seq.close()
    return [(workers, *best[workers]) for workers in seqs]


_BATCHES_CHILD = r"""
import importlib, json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
bench = importlib.import_module(sys.argv[1])
path, max_seconds = sys.argv[2], float(sys.argv[3])
bench._warm(path)  # warm cache, as for the raw rows
print(json.dumps([[label, *rate] for label in bench.TRANSFORMS
                  for rate in bench._batches_rates(path, label, max_seconds)]))
"""


def _batches_rates_fresh(path: str, max_seconds: float) -> list[tuple[str, int, int, float]]:
    """:func:`_batches_rates` for each case, in a fresh process that has trained nothing.

    After ``fit`` has run in a process, TensorFlow's threads slow the
    in-process reader there, which would flatter the ratio of two worker
    processes to one.
    """
    cases = _fresh_process(_BATCHES_CHILD, __name__, path, repr(max_seconds), what="workers measurement")
    return [tuple(case) for case in cases]


def _fresh_process(script: str, *args: str, what: str) -> Any:
    """Run ``script`` in a new Python process; the JSON it printed last.

    The child imports from this process's ``sys.path``, in its order (an
    installed h5feed, or a checkout), so that it measures the same code.
    """
    same_path = "import json, sys; sys.path[:] = json.loads(sys.argv.pop(1))\n"
    proc = subprocess.run(
        [sys.executable, "-c", same_path + script, json.dumps(sys.path), *args],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_rows(data: Data, *, quiet: bool, max_steps: int | None, rounds: int = 2) -> list[Row]:
    """``workers=2, use_multiprocessing=True`` against ``workers=1``.

    Twice: the batches alone, read in order by one consumer in a fresh
    process (what the workers themselves deliver), and end to end in
    ``fit``, where TensorFlow already makes batches in a prefetch thread
    beside training, so a second process only helps when a core is idle
    (best of ``rounds`` rounds that go round the four cases, as for the
    ``fit`` rows).
    """
    from h5feed import H5Sequence

    shape = data.shape
    rows: list[Row] = []
    max_seconds = 3.0 if max_steps is not None else 20.0
    rates = {(label, workers): (samples, seconds)
             for label, workers, samples, seconds in _batches_rates_fresh(data.h5, max_seconds)}

    def fit(label: str, workers: int) -> tuple[int, float]:
        seq = H5Sequence(
            data.h5, batch_size=BATCH, seed=7, transform=TRANSFORMS[label],
            workers=workers, use_multiprocessing=workers > 1,
        )
        try:
            return _fit_rate(seq, shape, max_steps=max_steps)
        finally:
            seq.close()

    cases = [
        (f"{label} {workers}", functools.partial(fit, label, workers)) for label in TRANSFORMS for workers in (1, 2)
    ]
    fits = _best_in_rounds(cases, rounds)
    for mode in ("batches", "fit"):
        for label in TRANSFORMS:
            pair = []
            for workers in (1, 2):
                samples, seconds = rates[label, workers] if mode == "batches" else fits[f"{label} {workers}"]
                name = f"{mode} H5Sequence workers={workers}{label}"
                note = f"best of {rounds}" if mode == "fit" and rounds > 1 else ""
                pair.append(Row("workers", shape.name, name, samples / seconds, seconds, samples, note=note))
                _progress(f"{shape.name} {name}: {samples / seconds:,.0f} samples/s", quiet)
            pair[1].vs_baseline = pair[1].samples_per_s / pair[0].samples_per_s
            pair[1].note = "; ".join(filter(None, [pair[1].note, "vs_baseline: over workers=1"]))
            rows.extend(pair)
    return rows


# -- memory -------------------------------------------------------------------------


_MEMORY_CHILD = _MEMORY_CHILD_START + r"""
path, batch = sys.argv[1], int(sys.argv[2])
seq = H5Sequence(path, batch_size=batch, seed=8)
before = rss_anon()
peak = before
batch_bytes = 0
for i in range(len(seq)):
    X, Y = seq[i]
    batch_bytes = max(batch_bytes, X.nbytes + Y.nbytes)
    if i % 16 == 0:
        peak = max(peak, rss_anon())
peak = max(peak, rss_anon())
print(json.dumps({"before": before, "peak": peak, "batch_bytes": batch_bytes, "file_bytes": os.path.getsize(path)}))
"""


def memory_row(path: str, shape_name: str, *, quiet: bool) -> Row:
    """Peak RssAnon of a fresh process reading one epoch of ``path``."""
    start = time.perf_counter()
    m = _fresh_process(_MEMORY_CHILD, path, str(BATCH), what="memory measurement")
    seconds = time.perf_counter() - start
    budget = 300 * 2**20 + 4 * m["batch_bytes"]
    row = Row(
        "memory", shape_name, f"RssAnon peak, {m['file_bytes'] / 2**30:.2f} GiB file",
        0.0, seconds, 0,
        note=f"{m['peak'] / 2**20:,.0f} MiB (budget {budget / 2**20:,.0f} MiB = 300 MiB + 4 batches)",
        extra={"rss_anon_peak": m["peak"], "rss_anon_before_epoch": m["before"], "budget": budget,
               "file_bytes": m["file_bytes"], "batch_bytes": m["batch_bytes"]},
    )
    _progress(f"{shape_name} memory: {row.note}", quiet)
    return row


def big_file(folder: str, gib: float, *, quiet: bool) -> str:
    """A volume-shaped contiguous file of about ``gib`` GiB, written in blocks."""
    import h5feed

    shape = SHAPES["volume"]
    n = int(gib * 2**30 // shape.row_nbytes)
    path = os.path.join(folder, f"volume-{gib:g}gib.h5")
    if os.path.exists(path):
        return path
    _progress(f"writing a {gib:g} GiB file ({n:,} rows) at {path}", quiet)
    with h5feed.DatasetWriter(path, sample_shape=shape.sample, dtype=shape.dtype, n_classes=10, expected_rows=n) as w:
        rng = np.random.default_rng(9)
        block = 256
        for start in range(0, n, block):
            k = min(block, n - start)
            w.extend([f"id-{i}" for i in range(start, start + k)],
                     rng.random((k, *shape.sample), dtype=np.float32), rng.integers(0, 10, k))
    return path


# -- the whole run ------------------------------------------------------------------


def run_bench(
    workdir: str | None = None,
    *,
    shapes: Iterable[str] = ("small", "volume", "frames"),
    quick: bool = False,
    sections: Iterable[str] = ("raw", "cold", "compressed", "codecs", "grow", "fit", "workers", "memory", "scale"),
    memory_gib: Iterable[float] = (),
    max_seconds: float | None = None,
    quiet: bool = False,
    keep: bool = False,
) -> dict[str, Any]:
    """Build the datasets and measure; return ``{"machine": ..., "rows": [...]}``.

    Args:
        workdir: where to build the datasets (reused when already built);
            None for a temporary folder removed afterwards.
        shapes: which of :data:`SHAPES` to run.
        quick: a few thousand rows per shape instead of the full sizes.
        sections: which measurements to run.
        memory_gib: also measure memory on volume files of these sizes (GiB).
        max_seconds: cap on each warm measurement (the rate is taken over
            what was read); default 20 s, 3 s with ``quick``.
        quiet: no progress on stderr.
        keep: keep a temporary ``workdir``.
    """
    sections = set(sections)
    shapes = list(shapes)
    cap = max_seconds if max_seconds is not None else (3.0 if quick else 20.0)
    tmp = workdir is None
    folder = tempfile.mkdtemp(prefix="h5feed-bench-") if tmp else os.path.abspath(workdir)  # type: ignore[arg-type]
    os.makedirs(folder, exist_ok=True)
    out: dict[str, Any] = {"machine": machine_description(), "quick": quick, "folder": folder, "rows": [], "shapes": {}}
    try:
        datas: dict[str, Data] = {}
        steps = 40 if quick else None
        # Reading rows first, training rows last: once TensorFlow has run a
        # model in this process, big numpy copies here ran several times
        # slower (every reading row alike), which would blur the table.
        # The per-shape datasets, unless only the scale section runs (it
        # builds files of its own).
        for name in shapes if sections - {"scale"} else ():
            shape = SHAPES[name]
            if quick:
                shape = Shape(shape.name, QUICK_ROWS[name], shape.sample, shape.dtype, shape.n_classes)
            out["shapes"][name] = shape.describe()
            data = datas[name] = build(shape, os.path.join(folder, "quick" if quick else "full"), quiet=quiet)
            rows: list[Row] = []
            if name in SHAPE_SECTIONS:
                if "codecs" in sections:
                    rows += codec_rows(data, max_seconds=cap, quiet=quiet, rounds=1 if quick else 3)
                out["rows"].extend(asdict(r) for r in rows)
                continue
            if "raw" in sections:
                rows += raw_rows(data, max_seconds=cap, quiet=quiet)
            if "cold" in sections:
                rows += cold_rows(data, quiet=quiet, repeats=1 if quick else 5)
            if "compressed" in sections:
                rows += compressed_rows(data, max_seconds=cap, quiet=quiet)
            if "grow" in sections:
                from .grow import grown_read_rows

                rows += grown_read_rows(data, max_seconds=cap, quiet=quiet, rounds=1 if quick else 3)
            if "memory" in sections and name == "volume":
                rows.append(memory_row(data.h5, name, quiet=quiet))
            out["rows"].extend(asdict(r) for r in rows)
        if "grow" in sections:
            from .grow import append_cost_rows

            grow_folder = os.path.join(folder, "quick" if quick else "full", "grow")
            out["rows"].extend(asdict(r) for r in append_cost_rows(grow_folder, quick=quick, quiet=quiet))
        if "memory" in sections:
            for gib in memory_gib:
                path = big_file(folder, gib, quiet=quiet)
                out["rows"].append(asdict(memory_row(path, "volume", quiet=quiet)))
        for name, data in datas.items():
            if name in SHAPE_SECTIONS:
                continue
            rows = []
            # The fit rows are on "small"; when only "volume" runs, it gets them.
            if "fit" in sections and (name == "small" or "small" not in shapes):
                rows += fit_rows(data, quiet=quiet, max_steps=steps, rounds=1 if quick else 2)
            if "workers" in sections and name == "volume":
                rows += worker_rows(data, quiet=quiet, max_steps=steps, rounds=1 if quick else 2)
            out["rows"].extend(asdict(r) for r in rows)
        datas.clear()
        gc.collect()
        if "scale" in sections:
            from .scale import scale_rows

            scale_folder = os.path.join(folder, "quick" if quick else "full", "scale")
            out["rows"].extend(asdict(r) for r in scale_rows(scale_folder, quick=quick, quiet=quiet))
    finally:
        if tmp and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return out


# -- printing -------------------------------------------------------------------------


def _fmt_ratio(value: float | None, pct: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:.0%}" if pct else f"{value:,.1f}x"


def format_table(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run_bench` result."""
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, {m['os']}; "
        f"Python {m['python']}, numpy {m['numpy']}, h5py {m['h5py']}, HDF5 {m['hdf5']}",
    ]
    for desc in result["shapes"].values():
        lines.append(f"shape {desc}")
    headers = {
        "raw": ("samples/s", "x per-file", "of limit"),
        "cold": ("samples/s", "", "of sequential"),
        "compressed": ("samples/s", "x full", ""),
        "fit": ("samples/s", "x per-file", "of in-memory"),
        "workers": ("samples/s", "x workers=1", ""),
        "memory": ("", "", ""),
        "codecs": ("samples/s", "", "of contiguous"),
        "targets": ("", "", ""),
        "scale": ("", "", ""),
        "grow": ("samples/s", "", "of one file"),
    }
    current = None
    width = 44
    for r in result["rows"]:
        key = (r["section"], r["shape"])
        # The codecs section's names are long.
        wide = 64 if r["section"] in ("codecs", "targets") else width
        if key != current:
            current = key
            h = headers[r["section"]]
            lines.append("")
            lines.append(f"{r['section'] + ' / ' + r['shape']:<{wide}} {h[0]:>12} {h[1]:>12} {h[2]:>14}")
        if r["section"] in ("memory", "targets", "scale") or (r["section"] in ("codecs", "grow") and not r["samples"]):
            mark = "" if r["section"] != "targets" else ("  ok" if r["extra"]["ok"] else "  MISSED")
            lines.append(f"  {r['name']:<{wide - 2}} {r['note']}{mark}")
            continue
        lines.append(
            f"  {r['name']:<{wide - 2}} {r['samples_per_s']:>12,.0f} "
            f"{_fmt_ratio(r['vs_baseline']):>12} {_fmt_ratio(r['vs_limit'], pct=True):>14}"
            + (f"  {r['note']}" if r["section"] in ("codecs", "grow") else "")
        )
    lines += _format_tradeoffs(result["rows"], width)
    return "\n".join(lines)


def _format_tradeoffs(rows: list[dict[str, Any]], width: int) -> list[str]:
    """Size, write speed and read speed of each file of the codecs section."""
    by = {r["name"]: r for r in rows if r["section"] == "codecs" and r["samples"]}
    if f"contiguous {BLOCK}" not in by:
        return []
    raw = by[f"contiguous {BLOCK}"]["extra"]["file_bytes"]
    lines = ["", f"{'trade-offs':<14} {'MiB':>6} {'smaller':>8} {'write MiB/s, 1/2 threads':>25} "
                 f"{'block, ' + STEADY:>20} {'full, ' + FIRST:>18}"]
    for name in ("contiguous", *CODECS):
        block = by.get(f"{name} {BLOCK}, {STEADY}", by.get(f"{name} {BLOCK}"))
        full = by.get(f"{name} {FULL}, {FIRST}", by.get(f"{name} {FULL}"))
        if block is None or full is None:
            continue
        size, speeds = block["extra"]["file_bytes"], block["extra"]["write_mb_s"]
        written = " / ".join(f"{v:,.0f}" for v in speeds.values())
        lines.append(
            f"  {name:<12} {size / 2**20:>6,.1f} {raw / size:>7.2f}x {written:>25} "
            f"{block['samples_per_s']:>20,.0f} {full['samples_per_s']:>18,.0f}"
        )
    return lines
