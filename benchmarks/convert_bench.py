"""Conversion speed, side by side in one run.

- ``.npy`` folder: a plain ``np.load`` loop over every file (the least any
  converter must do) against :func:`h5feed.convert.from_npy_dir`, which
  must run at least at half that rate. Both run on a warm page cache, in
  alternation, best of ``repeats``.
- Image folder: :func:`h5feed.convert.from_image_dir` with one worker and
  with two, 256x256 JPEGs resized to 64x64; two must be faster.
- HDF5 file: a plain h5py loop copying a contiguous source's rows block by
  block into a new dataset (the least any conversion must do) against
  :func:`h5feed.convert.from_h5` on the same file, which must run at least
  at half that rate; warm page cache, in alternation, best of ``repeats``.
  A third row, the same loop followed by an ``fsync`` as the writer does
  before publishing, shows how much of the difference is the disk; a
  fourth, SHA-256 over the same bytes (the completion record's digest,
  which from_h5 computes beside the copy in a thread of its own), how much
  CPU the conversion needs that the copy does not. With two cores the copy,
  the hash and the kernel's writeback share them, and the CPU seconds of
  the rows say so.
- Memory: the peak RSS of a conversion in a fresh process, above that
  process's RSS before converting, against the dataset's size (for the
  ``.npy`` folder and for the HDF5 file, optionally a bigger one:
  ``h5_memory_gib``).

Run alone::

    python -m h5feed.benchmarks.convert_bench [--files N] [--shape 32,32,32,1] [--images N] [--h5-memory-gib G]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "make_h5_source",
    "make_image_folder",
    "make_npy_folder",
    "measure_conversion_rss",
    "measure_h5_conversion_rss",
    "run_convert_bench",
]

# Where make_h5_source puts the samples and labels (a NeXus-style tree).
H5_X, H5_Y = "/entry/data/data", "/entry/labels"
# Rows are copied in blocks of about this many bytes (the converter's own size).
_COPY_BLOCK_BYTES = 4 * 1024 * 1024


def make_npy_folder(folder: str, n_files: int, shape: tuple[int, ...], *, n_classes: int = 10, seed: int = 0) -> tuple[str, str]:
    """``folder/data/id-<k>.npy`` float32 samples and ``folder/labels.json``."""
    rng = np.random.default_rng(seed)
    data = os.path.join(folder, "data")
    os.makedirs(data, exist_ok=True)
    labels = {}
    sample = rng.standard_normal(shape).astype(np.float32)
    for k in range(n_files):
        sid = f"id-{k + 1}"
        sample.flat[0] = k  # distinct files without drawing n_files arrays
        np.save(os.path.join(data, sid + ".npy"), sample)
        labels[sid] = int(k % n_classes)
    labels_path = os.path.join(folder, "labels.json")
    with open(labels_path, "w") as fh:
        json.dump(labels, fh)
    return data, labels_path


def make_h5_source(path: str, n_rows: int, shape: tuple[int, ...], *, n_classes: int = 10, seed: int = 0) -> str:
    """``path`` with float32 samples at ``/entry/data/data`` (contiguous) and
    class indices at ``/entry/labels``, written in blocks."""
    import h5py

    rng = np.random.default_rng(seed)
    row = int(np.prod(shape)) * 4
    step = max(1, _COPY_BLOCK_BYTES // row)
    block = rng.standard_normal((min(step, n_rows), *shape)).astype(np.float32)
    with h5py.File(path, "w") as f:
        x = f.create_dataset(H5_X, shape=(n_rows, *shape), dtype=np.float32)
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            block.reshape(len(block), -1)[: stop - start, 0] = np.arange(start, stop)
            x[start:stop] = block[: stop - start]
        f[H5_Y] = np.arange(n_rows) % n_classes
    return path


def _h5py_copy(src: str, dst: str, *, sync: bool = False) -> None:
    """The baseline: copy x and y block by block into new datasets, plain h5py;
    with ``sync``, then wait until the copy is on disk, as h5feed's writer does."""
    import h5py

    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for name in (H5_X, H5_Y):
            s = f[name]
            d = g.create_dataset(name.rsplit("/", 1)[-1], shape=s.shape, dtype=s.dtype)
            step = max(1, _COPY_BLOCK_BYTES // max(1, int(np.prod(s.shape[1:])) * s.dtype.itemsize))
            for start in range(0, s.shape[0], step):
                d[start : start + step] = s[start : start + step]
    if sync:
        with open(dst, "rb") as fh:
            os.fsync(fh.fileno())


def make_image_folder(folder: str, n_images: int, *, size: int = 128, n_classes: int = 4, seed: int = 0) -> str:
    """``folder/<class>/<k>.jpg`` photos-like JPEGs (smooth gradients plus noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for k in range(n_images):
        cls = os.path.join(folder, f"class-{k % n_classes}")
        os.makedirs(cls, exist_ok=True)
        base = np.stack([(xx * (k % 7 + 1)) % 256, (yy * 3) % 256, ((xx + yy) * 2) % 256], axis=-1)
        noisy = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(os.path.join(cls, f"{k}.jpg"), quality=90)
    return folder


def _read_all(data: str) -> None:
    for name in os.listdir(data):
        with open(os.path.join(data, name), "rb") as fh:
            while fh.read(1 << 20):
                pass


def _load_loop(data: str, ids: list[str]) -> None:
    for sid in ids:
        np.load(os.path.join(data, sid + ".npy"))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _best(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _cpu(fn: Callable[[], Any]) -> float:
    """CPU seconds (user + system, all threads) this process spent in ``fn``."""
    before = os.times()
    fn()
    after = os.times()
    return (after.user - before.user) + (after.system - before.system)


_RSS_SCRIPT = r"""
import json, resource, sys


def status(key):
    # Linux: the current RSS (VmRSS) and its high-water mark (VmHWM), in KiB.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    from h5feed.convert import from_h5, from_npy_dir

    before = status("VmRSS")
    if sys.argv[1] == "h5":
        result = from_h5(sys.argv[2], sys.argv[3], x=sys.argv[4], y=sys.argv[5], overwrite=True)
    else:
        result = from_npy_dir(sys.argv[2], sys.argv[3], sys.argv[4], overwrite=True, workers=int(sys.argv[5]))
    print(json.dumps({"before_kib": before, "peak_kib": status("VmHWM"), "rows": result.rows}))
"""


def _measure_rss(args: list[str]) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "rss.py")
        with open(script, "w") as fh:
            fh.write(_RSS_SCRIPT)
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the measured conversion failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_conversion_rss(data: str, labels: str, out: str, *, workers: int = 1) -> dict[str, int]:
    """Convert in a fresh process; its RSS before converting and its peak (KiB).

    ``before_kib`` is the process's resident memory once numpy, h5py and
    h5feed are imported; ``peak_kib`` its high-water mark after converting,
    so ``peak_kib - before_kib`` is what the conversion itself added (worker
    processes, with ``workers > 1``, are not counted).
    """
    return _measure_rss(["npy", data, labels, out, str(workers)])


def measure_h5_conversion_rss(src: str, out: str, *, x: str = H5_X, y: str = H5_Y) -> dict[str, int]:
    """As :func:`measure_conversion_rss`, for :func:`h5feed.convert.from_h5` of ``src``."""
    return _measure_rss(["h5", src, out, x, y])


def run_convert_bench(
    workdir: str | None = None,
    *,
    n_files: int = 2000,
    shape: tuple[int, ...] = (32, 32, 32, 1),
    quiet: bool = True,
    n_images: int = 1000,
    repeats: int = 3,
    h5_memory_gib: float | None = None,
) -> list[dict[str, Any]]:
    """Run the conversion benchmark; return one dict per row.

    Each row has ``name``, ``samples_per_s``, ``ratio`` (against the row it
    is compared with), ``target`` (what the ratio must reach, or None) and
    ``ok``; the npy rows also ``cpu_s``, the CPU seconds of one run. The memory row has ``peak_mib_over_start`` and
    ``dataset_mib`` instead of a rate.

    Args:
        workdir: where to make the sources and outputs (default: a new
            temporary folder, removed afterwards).
        n_files: number of ``.npy`` samples.
        shape: shape of one sample (float32).
        quiet: print nothing while running.
        n_images: number of JPEG images for the worker comparison (0 skips).
        repeats: timings per contender; the best counts.
        h5_memory_gib: measure the HDF5 conversion's memory on a source of
            this many GiB (default: the ``n_files`` rows of the speed rows).
    """
    from h5feed.convert import from_h5, from_image_dir, from_npy_dir

    own = workdir is None
    workdir = tempfile.mkdtemp(prefix="h5feed-convert-bench-") if own else workdir
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    rows: list[dict[str, Any]] = []
    try:
        npy_root = os.path.join(workdir, "npy")
        say(f"making {n_files} .npy files of shape {shape} ...")
        data, labels = make_npy_folder(npy_root, n_files, tuple(shape))
        ids = [f"id-{k + 1}" for k in range(n_files)]
        out = os.path.join(workdir, "npy.h5")
        _read_all(data)  # both contenders read from a warm page cache
        load_s, convert_s = float("inf"), float("inf")
        for _ in range(repeats):  # alternate, so drift hits both alike
            load_s = min(load_s, _best(lambda: _load_loop(data, ids), 1))
            _remove(out)  # removing the last output is not conversion work
            convert_s = min(convert_s, _best(lambda: from_npy_dir(data, labels, out), 1))
        # CPU time as well: on a machine shared with other work the wall
        # clock measures the share this process got as much as the code.
        load_cpu = _cpu(lambda: _load_loop(data, ids))
        _remove(out)
        convert_cpu = _cpu(lambda: from_npy_dir(data, labels, out))
        dataset_mib = n_files * int(np.prod(shape)) * 4 / 2**20
        rows.append(dict(name="npy folder: np.load loop (baseline)", samples_per_s=n_files / load_s,
                         ratio=1.0, target=None, ok=True, cpu_s=load_cpu))
        ratio = load_s / convert_s
        rows.append(dict(name="npy folder: from_npy_dir", samples_per_s=n_files / convert_s, ratio=ratio,
                         target=0.5, ok=ratio >= 0.5, cpu_s=convert_cpu))
        say(f"npy: np.load {n_files / load_s:,.0f}/s, convert {n_files / convert_s:,.0f}/s ({ratio:.2f}x)")

        rss = measure_conversion_rss(data, labels, out)
        added = (rss["peak_kib"] - rss["before_kib"]) / 1024
        rows.append(dict(name="npy folder: peak memory added by converting", samples_per_s=None,
                         ratio=added / dataset_mib if dataset_mib else None, target=None, ok=True,
                         peak_mib_over_start=added, dataset_mib=dataset_mib,
                         peak_mib=rss["peak_kib"] / 1024))
        say(f"npy: peak RSS +{added:.0f} MiB over start, for {dataset_mib:.0f} MiB of samples")
        shutil.rmtree(npy_root, ignore_errors=True)

        rows.extend(_h5_rows(workdir, n_files, tuple(shape), repeats, h5_memory_gib, say, from_h5))

        if n_images:
            img_root = os.path.join(workdir, "images")
            say(f"making {n_images} JPEG images ...")
            make_image_folder(img_root, n_images, size=256)
            img_out = os.path.join(workdir, "images.h5")
            times = {1: float("inf"), 2: float("inf")}
            for _ in range(repeats):
                for workers in (1, 2):
                    _remove(img_out)
                    times[workers] = min(times[workers], _best(
                        lambda: from_image_dir(img_root, img_out, size=(64, 64), workers=workers), 1))
            rows.append(dict(name="images: workers=1", samples_per_s=n_images / times[1], ratio=1.0,
                             target=None, ok=True))
            speedup = times[1] / times[2]
            rows.append(dict(name="images: workers=2", samples_per_s=n_images / times[2], ratio=speedup,
                             target=1.0, ok=speedup > 1.0))
            say(f"images: 1 worker {n_images / times[1]:,.0f}/s, 2 workers {n_images / times[2]:,.0f}/s ({speedup:.2f}x)")
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return rows


def _h5_rows(workdir: str, n_rows: int, shape: tuple[int, ...], repeats: int, memory_gib: float | None,
             say: Callable[..., None], from_h5: Callable[..., Any]) -> list[dict[str, Any]]:
    """The HDF5 rows: h5py block copy against from_h5, and from_h5's memory."""
    src = os.path.join(workdir, "source.h5")
    say(f"making an HDF5 source of {n_rows} rows of shape {shape} ...")
    make_h5_source(src, n_rows, shape)
    copy_out, out = os.path.join(workdir, "copy.h5"), os.path.join(workdir, "from_h5.h5")
    _read_all_file(src)
    copy_s, synced_s, convert_s = float("inf"), float("inf"), float("inf")
    for _ in range(repeats):  # alternate, so drift hits all alike
        _remove(copy_out)
        copy_s = min(copy_s, _best(lambda: _h5py_copy(src, copy_out), 1))
        _remove(copy_out)
        synced_s = min(synced_s, _best(lambda: _h5py_copy(src, copy_out, sync=True), 1))
        _remove(out)
        convert_s = min(convert_s, _best(lambda: from_h5(src, out, x=H5_X, y=H5_Y), 1))
    _remove(copy_out)
    copy_cpu = _cpu(lambda: _h5py_copy(src, copy_out))
    _remove(out)
    convert_cpu = _cpu(lambda: from_h5(src, out, x=H5_X, y=H5_Y))
    for path in (copy_out, out):
        _remove(path)
    ratio = copy_s / convert_s
    rows = [
        dict(name="HDF5 file: h5py block copy (baseline)", samples_per_s=n_rows / copy_s, ratio=1.0, target=None,
             ok=True, cpu_s=copy_cpu),
        dict(name="HDF5 file: from_h5", samples_per_s=n_rows / convert_s, ratio=ratio, target=0.5, ok=ratio >= 0.5,
             cpu_s=convert_cpu),
        # For reading the row above: the writer syncs its file before it
        # publishes it, the plain loop leaves it to the page cache.
        dict(name="HDF5 file: h5py block copy + fsync", samples_per_s=n_rows / synced_s,
             ratio=copy_s / synced_s, target=None, ok=True),
    ]
    hash_s = _sha256_seconds(src, H5_X, repeats)
    rows.append(dict(name="HDF5 file: SHA-256 of the same x rows", samples_per_s=n_rows / hash_s,
                     ratio=copy_s / hash_s, target=None, ok=True, cpu_s=hash_s))
    say(f"h5: h5py copy {n_rows / copy_s:,.0f}/s (+ fsync {n_rows / synced_s:,.0f}/s), "
        f"from_h5 {n_rows / convert_s:,.0f}/s ({ratio:.2f}x), SHA-256 alone {n_rows / hash_s:,.0f}/s")
    dataset_mib = n_rows * int(np.prod(shape)) * 4 / 2**20
    if memory_gib:
        n_big = max(1, int(memory_gib * 2**30 // (int(np.prod(shape)) * 4)))
        _remove(src)
        say(f"making an HDF5 source of {memory_gib:g} GiB ...")
        make_h5_source(src, n_big, shape)
        dataset_mib = n_big * int(np.prod(shape)) * 4 / 2**20
    rss = measure_h5_conversion_rss(src, out)
    added = (rss["peak_kib"] - rss["before_kib"]) / 1024
    rows.append(dict(name="HDF5 file: peak memory added by converting", samples_per_s=None,
                     ratio=added / dataset_mib if dataset_mib else None, target=None, ok=True,
                     peak_mib_over_start=added, dataset_mib=dataset_mib, peak_mib=rss["peak_kib"] / 1024))
    say(f"h5: peak RSS +{added:.0f} MiB over start, for {dataset_mib:.0f} MiB of samples")
    for path in (src, out):
        _remove(path)
    return rows


def _sha256_seconds(src: str, name: str, repeats: int) -> float:
    """Best time to SHA-256 dataset ``name``'s bytes, already in memory,
    in the writer's 4 MiB blocks."""
    import hashlib

    import h5py

    with h5py.File(src, "r") as f:
        data = np.ascontiguousarray(f[name][()]).reshape(-1).view(np.uint8)
    block = 4 << 20

    def run() -> None:
        h = hashlib.sha256()
        for start in range(0, data.size, block):
            h.update(data[start : start + block])

    return _best(run, repeats)


def _read_all_file(path: str) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 20):
            pass


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain table of the rows."""
    lines = []
    for r in rows:
        if r["samples_per_s"] is None:
            lines.append(f"{r['name']:<48} {r['peak_mib_over_start']:>8.0f} MiB for {r['dataset_mib']:.0f} MiB of "
                         f"samples (peak RSS {r['peak_mib']:.0f} MiB)")
            continue
        target = "" if r["target"] is None else f"  (target {'>=' if r['target'] == 0.5 else '>'} {r['target']}x: {'ok' if r['ok'] else 'MISSED'})"
        cpu = f"  [{r['cpu_s']:.2f} s CPU]" if r.get("cpu_s") is not None else ""
        lines.append(f"{r['name']:<48} {r['samples_per_s']:>10,.0f} samples/s  {r['ratio']:5.2f}x{target}{cpu}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m h5feed.benchmarks.convert_bench", description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000, help="number of .npy samples (default 2000)")
    p.add_argument("--shape", default="32,32,32,1", help="sample shape (default 32,32,32,1)")
    p.add_argument("--images", type=int, default=1000, help="number of 256x256 JPEG images (default 1000; 0 skips)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--h5-memory-gib", type=float, metavar="G",
                   help="measure the HDF5 conversion's memory on a source of G GiB (default: the --files rows)")
    p.add_argument("--workdir", help="where to write (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.replace("x", ",").split(",") if s)
    rows = run_convert_bench(args.workdir, n_files=args.files, shape=shape, quiet=args.json,
                             n_images=args.images, repeats=args.repeats, h5_memory_gib=args.h5_memory_gib)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
