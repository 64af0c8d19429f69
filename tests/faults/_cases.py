"""Fault cases, each run in a fresh interpreter by ``_harness.run_case``.

A case takes JSON-able keyword arguments and returns a JSON-able dict; an
exception it raises is reported as ``error_type``/``error_mro``/``message``
(and ``cause_type``, the type of its ``__cause__``) with ``seconds``, the
time from the start of the case to the error.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

import numpy as np


# Modules a case imports before its clock starts (default: h5feed).
PRELOAD = {"sequence_batches": ["h5feed", "h5feed.sequence"]}


def main(func: str) -> None:
    kwargs = json.loads(sys.stdin.read() or "{}")
    limit = kwargs.pop("_memory_limit", None)
    if limit:
        # A hostile file must be refused before any large allocation: cap
        # this process's address space so that one fails loudly.
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (int(limit), resource.RLIM_INFINITY))
    import importlib

    for module in PRELOAD.get(func, ["h5feed"]):
        # Imports are not part of the time a fault takes to surface.
        importlib.import_module(module)
    start = time.perf_counter()
    try:
        value = globals()[func](**kwargs)
        answer: dict[str, Any] = {"value": value, "seconds": time.perf_counter() - start}
    except BaseException as exc:  # noqa: BLE001 - the answer is the point
        answer = {
            "error_type": type(exc).__name__,
            "error_mro": [c.__name__ for c in type(exc).__mro__],
            "cause_type": None if exc.__cause__ is None else type(exc.__cause__).__name__,
            "message": str(exc),
            "seconds": time.perf_counter() - start,
            "traceback": traceback.format_exc()[-3000:],
        }
    print("RESULT " + json.dumps(answer, default=repr), flush=True)


# -- reading ------------------------------------------------------------------


def open_file(path: str, **options: Any) -> dict[str, Any]:
    """Validate ``path``; the layout's size on success."""
    import h5feed

    info = h5feed.open_file(path, **options) if options else h5feed.open_file(path)
    return {"rows": info.n_rows, "columns": sorted(info.columns)}


def read_all(path: str, batch: int = 16, seed: int = 0, use_mmap: bool = True, **options: Any) -> dict[str, Any]:
    """Open ``path`` and read every row of every column in shuffled batches.

    Returns each column's data as nested lists so the parent can compare it
    with what was written.
    """
    import h5feed
    from h5feed.reader import Reader

    info = h5feed.open_file(path, **options) if options else h5feed.open_file(path)
    reader = Reader(info, use_mmap=use_mmap)
    order = np.random.default_rng(seed).permutation(info.n_rows)
    out: dict[str, Any] = {}
    for name, col in info.columns.items():
        data = np.empty(col.shape, dtype=col.dtype)
        for start in range(0, info.n_rows, batch):
            rows = order[start : start + batch]
            data[rows] = reader.read(name, rows)
        out[name] = data.tolist()
    reader.close()
    return out


def read_everything(path: str, allow_virtual: bool = False) -> dict[str, Any]:
    """Open ``path``, read every row of every column, every ID and every split,
    as training would (the reader, the rows of each split)."""
    import h5feed
    from h5feed._parts import make_reader
    from h5feed._select import select_rows

    info = h5feed.open_file(path, allow_virtual=allow_virtual)
    with make_reader(info) as reader:
        rows = np.arange(info.n_rows)
        sums = {name: float(np.sum(reader.read(name, rows), dtype=np.float64)) for name in info.columns}
        ids = reader.read_ids(rows)
    splits = {name: int(select_rows(path, name, None, allow_virtual=allow_virtual)[1].size) for name in info.splits}
    return {"sums": sums, "ids": len(ids), "splits": splits}


def read_rows(path: str, name: str, rows: list[int]) -> list[Any]:
    """Rows ``rows`` of ``name`` through the reader."""
    import h5feed
    from h5feed.reader import Reader

    reader = Reader(h5feed.open_file(path))
    return reader.read(name, np.asarray(rows)).tolist()


def sequence_batches(path: str, split: str | None = None, batch_size: int = 16) -> int:
    """Every batch of an H5Sequence over ``path`` (imports Keras)."""
    from h5feed import H5Sequence

    seq = H5Sequence(path, split, batch_size=batch_size, seed=0)
    n = 0
    for i in range(len(seq)):
        n += len(seq[i][0])
    return n


# -- file locking -------------------------------------------------------------


def locking_fallback(path: str, errno_value: int, opens: int = 3, where: str = "errno") -> dict[str, Any]:
    """Open ``path`` ``opens`` times while the filesystem "refuses locks".

    h5py.File raises the lock error whenever it is asked to lock (the
    default), as HDF5 does on NFS or Lustre, and works with locking=False.
    """
    import warnings

    import h5py

    import h5feed
    from h5feed import _files
    from h5feed.reader import Reader

    real = h5py.File
    calls: list[Any] = []

    def refusing(name: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("locking"))
        if kwargs.get("locking", None) is not False:
            text = os.strerror(errno_value)
            if where == "errno":
                raise OSError(errno_value, f"Unable to open file (unable to lock file, {text})")
            # As HDF5 words it, with the errno only in the text:
            raise OSError(
                f"Unable to synchronously open file (unable to lock file, errno = {errno_value}, "
                f"error message = '{text}')"
            )
        return real(name, mode, *args, **kwargs)

    h5py.File = refusing  # type: ignore[misc]
    _files.h5py.File = refusing  # the same module object, but be explicit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = 0
        for _ in range(opens):
            info = h5feed.open_file(path)
            reader = Reader(info)
            rows += len(reader.read("x", np.arange(info.n_rows)))
            reader.close()
    return {
        "rows": rows,
        "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
        "locking_args": calls,
    }


def write_refusing_locks(target: str, errno_value: int) -> dict[str, Any]:
    """Write a file while the filesystem refuses locks."""
    import warnings

    import h5py

    import h5feed

    real = h5py.File

    def refusing(name: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("locking", None) is not False:
            if mode != "r":
                open(name, "a").close()  # HDF5 creates the file before it locks
            raise OSError(
                f"Unable to create file (unable to lock file, errno = {errno_value}, "
                f"error message = '{os.strerror(errno_value)}')"
            )
        return real(name, mode, *args, **kwargs)

    h5py.File = refusing  # type: ignore[misc]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h5feed.write_arrays(target, ["a", "b"], np.zeros((2, 3), np.float32))
        info = h5feed.open_file(target)
    return {"rows": info.n_rows, "warnings": [str(w.message) for w in caught]}


# -- disk full ----------------------------------------------------------------


def _limit_file_size(limit: int) -> None:
    import resource
    import signal

    # Without this, exceeding RLIMIT_FSIZE kills the process with SIGXFSZ
    # (Python ignores it already; say so rather than rely on it).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def disk_full(target: str, limit: int, rows: int, compression: str | None, isolated: bool, streaming: bool) -> dict[str, Any]:
    """Write ``rows`` rows to ``target`` with files capped at ``limit`` bytes.

    With ``isolated`` the HDF5 writing runs through ``run_isolated``, as the
    ``h5feed`` command does; the case then goes on living in this process
    (it must not crash at exit: the harness checks the exit status).
    """
    import gc

    from h5feed.writer import DatasetWriter, run_isolated, write_arrays

    _limit_file_size(limit)
    ids = [f"s{i:06d}" for i in range(rows)]
    x = np.random.default_rng(0).random((rows, 256)).astype(np.float32)
    y = np.arange(rows) % 10
    if streaming:
        fn, args, kwargs = _stream_write, (target, ids, x, y, compression), {}
    else:
        fn, args, kwargs = write_arrays, (target, ids, x, y), {"n_classes": 10, "compression": compression, "overwrite": True}
    try:
        if isolated:
            run_isolated(target, fn, *args, **kwargs)
        else:
            fn(*args, **kwargs)
    finally:
        gc.collect()
    return {"wrote": True}


def _stream_write(target: str, ids: list[str], x: np.ndarray, y: np.ndarray, compression: str | None) -> str:
    from h5feed.writer import DatasetWriter

    with DatasetWriter(
        target, sample_shape=x.shape[1:], dtype=x.dtype, n_classes=10,
        compression=compression, overwrite=True, checksum=True,
    ) as w:
        for start in range(0, len(ids), 100):
            w.extend(ids[start : start + 100], x[start : start + 100], y[start : start + 100])
    return w.path


def _crash_while_writing(target: str) -> None:
    import ctypes

    from h5feed.writer import DatasetWriter

    w = DatasetWriter(target, sample_shape=(3,), dtype="float32", target_dtype=None)
    w.extend(["a", "b"], np.zeros((2, 3), np.float32))
    w._flush()
    ctypes.string_at(0)  # a segfault, as HDF5 can have after a full disk


def isolated_crash(target: str) -> None:
    from h5feed.writer import run_isolated

    run_isolated(target, _crash_while_writing, target)


def _write_three(target: str) -> str:
    import h5feed

    return h5feed.write_arrays(target, ["a", "b", "c"], np.zeros((3, 2), np.float32))


def _write_duplicate(target: str) -> str:
    import h5feed

    return h5feed.write_arrays(target + ".2", ["a", "a"], np.zeros((2, 2), np.float32))


def isolated_roundtrip(target: str) -> dict[str, Any]:
    import h5feed
    from h5feed.writer import run_isolated

    path = run_isolated(target, _write_three, target)
    try:
        run_isolated(target, _write_duplicate, target)
        error = None
    except h5feed.H5FeedError as exc:
        error = [type(exc).__name__, str(exc).split(": ", 1)[1]]
    return {"path": path, "rows": h5feed.open_file(path).n_rows, "error": error}


# -- corruption ---------------------------------------------------------------


def chunk_table(path: str, name: str) -> list[tuple[int, int, int]]:
    """``(first_row, byte_offset, stored_size)`` of every stored chunk of ``name``."""
    import h5py

    with h5py.File(path, "r") as f:
        dset = f[name]
        out = []
        for i in range(dset.id.get_num_chunks()):
            info = dset.id.get_chunk_info(i)
            out.append((int(info.chunk_offset[0]), int(info.byte_offset), int(info.size)))
    return sorted(out)


def flip_byte(path: str, offset: int, mask: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([old ^ mask]))


def corrupt_and_read(path: str, trials: int, seed: int, columns: list[str]) -> dict[str, Any]:
    """Flip one byte in a random data chunk of a copy of ``path``, read every row back.

    Per trial the outcome is ``error`` (a ReadError naming the dataset and
    exactly the damaged chunk's rows), ``misnamed`` (an error that names
    something else), ``silent`` (wrong data, no error) or ``harmless`` (the
    flip changed nothing read back).
    """
    import re
    import shutil

    import h5py

    import h5feed
    from h5feed.reader import Reader

    rng = np.random.default_rng(seed)
    with h5py.File(path, "r") as f:
        original = {name: f[name][()] for name in columns}
        chunk_rows = {name: f[name].chunks[0] if f[name].chunks else None for name in columns}
        n = f["x"].shape[0]
    tables = {name: chunk_table(path, name) for name in columns if chunk_rows[name]}
    outcomes: dict[str, int] = {"error": 0, "misnamed": 0, "silent": 0, "harmless": 0}
    worst = 0.0
    details = []
    copy = path + ".damaged"
    for trial in range(trials):
        shutil.copyfile(path, copy)
        name = columns[int(rng.integers(len(columns)))]
        if chunk_rows[name]:
            first, offset, size = tables[name][int(rng.integers(len(tables[name])))]
            where = offset + int(rng.integers(size))
            rows = (first, min(n, first + chunk_rows[name]) - 1)
        else:  # contiguous: any byte of the data
            with h5py.File(path, "r") as f:
                offset = f[name].id.get_offset()
                size = f[name].id.get_storage_size()
            where = offset + int(rng.integers(size))
            rows = None
        flip_byte(copy, where, int(rng.integers(1, 256)))
        start = time.perf_counter()
        try:
            info = h5feed.open_file(copy)
            reader = Reader(info)
            order = rng.permutation(n)
            got = np.empty_like(original[name])
            for s in range(0, n, 32):
                idx = order[s : s + 32]
                got[idx] = reader.read(name, idx)
            reader.close()
        except h5feed.H5FeedError as exc:
            worst = max(worst, time.perf_counter() - start)
            text = str(exc)
            named = f"{copy}:/{name}" in text and (
                rows is None or re.search(rf"\brows {rows[0]}\.\.{rows[1]}\b", text) is not None
            )
            outcomes["error" if named else "misnamed"] += 1
            if not named:
                details.append({"trial": trial, "name": name, "rows": rows, "message": text})
            continue
        if np.array_equal(got, original[name]):
            outcomes["harmless"] += 1
        else:
            outcomes["silent"] += 1
            details.append({"trial": trial, "name": name, "rows": rows, "silent": True})
    os.unlink(copy)
    return {"outcomes": outcomes, "worst_s": worst, "details": details[:5]}


def verify_cli(path: str) -> dict[str, Any]:
    """``h5feed verify PATH``: exit status and output."""
    import contextlib
    import io

    from h5feed.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(["verify", "--quiet", path])
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


# -- the command line -----------------------------------------------------------


def cli(argv: list[str]) -> dict[str, Any]:
    """``h5feed ARGV`` through ``main``: exit status, stdout and stderr."""
    import contextlib
    import io

    from h5feed.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def cli_disk_full(argv: list[str], limit: int) -> dict[str, Any]:
    """``h5feed ARGV`` with files capped at ``limit`` bytes (a full disk)."""
    _limit_file_size(limit)
    return cli(argv)
