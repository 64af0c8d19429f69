"""A writer to be killed: run by the kill-point harness in its own process.

Usage: python writer_script.py TARGET VERSION MODE [POINT SIGNAL]

Writes version VERSION (0 or 1; see :func:`expected`) of a small dataset to
TARGET: version 0 with ``overwrite=False`` (the rename is ``os.link``),
version 1 with ``overwrite=True`` (``os.replace``) over version 0. MODE is ``arrays`` (``write_arrays``,
contiguous), ``stream`` (``DatasetWriter.extend`` in small blocks, gzip and
checksums: the slow, chunked path) or ``isolated`` (``stream`` through
``run_isolated``, as the ``h5feed`` command writes). With ``H5FEED_TEST_PAUSE``
set, the stream pauses that many seconds after each block of 50 rows (a
slow source). It prints ``READY`` once imported, so the harness can time random kills from there,
and ``WRITTEN`` when the write returned.
With ``H5FEED_TEST_SLOW_WRITES`` set (by ``_hooks/sitecustomize.py``, in any
process of a command), each block goes to HDF5 in small pieces and that many
seconds pass after each (:func:`slow_writes`), so that a timed kill lands
mid-write.

With POINT and SIGNAL the script sends itself SIGNAL (``KILL`` or ``INT``) at
a deterministic point of the write: ``NAME[#K][:after]`` = just before (or
just after) the K-th call (default 1st) of NAME, one of

    create   the temporary file is created      (h5feed.writer.create_h5)
    write    a block of rows goes to HDF5        (h5py Dataset.write_direct)
    ids      a block of IDs goes to HDF5         (h5feed._ids.write_strings)
    attr     the completion record is set        (AttributeManager.__setitem__)
    flush    the file is flushed                 (h5py File.flush)
    close    the file is closed                  (h5py File.close)
    fsync    data or folder fsync                (os.fsync)
    link     the no-clobber rename               (os.link)
    replace  the replacing rename                (os.replace)
    unlink   the temporary name is removed       (os.unlink)
    flushed  after a block of rows, HDF5 is flushed (then the signal)

Just before it sends the signal, the hook prints ``KILL_POINT_MARK`` with
the point and its pid to stderr, so the harness can tell a kill that landed
where it was aimed from a writer that failed before reaching it
(``_killing.aim_problems``).

Exit status: 0 when the write completed, 130 after KeyboardInterrupt, 1 on
any other error (printed to stderr).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

ROWS = {0: 3000, 1: 2200}
FEATURES = 64


def expected(version: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The IDs, x and y of version ``version`` of the dataset."""
    n = ROWS[version]
    ids = [f"v{version}-{i:06d}" for i in range(n)]
    x = ((np.arange(n * FEATURES, dtype=np.int64).reshape(n, FEATURES) * (version + 3)) % 1009).astype(np.float32)
    y = (np.arange(n) + version) % 7
    return ids, x, y


def _small_blocks() -> None:
    import h5feed.writer

    # Many small flushes, so that "mid-write" has many moments.
    h5feed.writer._BLOCK_BYTES = 32 * 1024


def write(target: str, version: int, mode: str) -> str:
    import h5feed
    from h5feed.writer import run_isolated

    _small_blocks()
    overwrite = version > 0  # version 0 goes through os.link, 1 through os.replace
    ids, x, y = expected(version)
    if mode == "arrays":
        return h5feed.write_arrays(target, ids, x, y, splits={"train": range(0, len(ids), 2)}, n_classes=7, overwrite=overwrite)
    if mode == "stream":
        return stream(target, version)
    if mode == "isolated":
        return run_isolated(target, stream, target, version)
    raise SystemExit(f"unknown mode {mode!r}")


def stream(target: str, version: int) -> str:
    import h5feed

    _small_blocks()
    ids, x, y = expected(version)
    with h5feed.DatasetWriter(
        target, sample_shape=(FEATURES,), dtype="float32", n_classes=7,
        compression="gzip", checksum=True, chunk_rows=100, overwrite=version > 0,
    ) as w:
        pause = float(os.environ.get("H5FEED_TEST_PAUSE", "0"))
        for start in range(0, len(ids), 50):
            w.extend(ids[start : start + 50], x[start : start + 50], y[start : start + 50])
            if pause:
                time.sleep(pause)  # a slow source, so that a signal lands mid-write
        w.add_split("train", ids[::2])
    return w.path


def slow_writes(pause: float) -> None:
    """Write in small blocks, pausing ``pause`` seconds after each."""
    import h5py

    _small_blocks()
    real = h5py.Dataset.write_direct

    def slowly(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        time.sleep(pause)
        return result

    h5py.Dataset.write_direct = slowly


SIGNALS = {"KILL": signal.SIGKILL, "INT": signal.SIGINT}
KILL_POINT_MARK = "h5feed-test: kill point reached:"


def _fire(point: str, sig: int) -> None:
    """Say so on stderr, then send ``sig`` to this process."""
    print(f"{KILL_POINT_MARK} {point} pid {os.getpid()}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), sig)


def install_hook(point: str, sig: int, once: str | None = None) -> None:
    """Arrange for ``sig`` at ``point`` (see the module docstring).

    With ``once`` (a file name), only the first process to create that file
    fires: the hook may be installed in several processes of one command.
    """
    import h5py

    import h5feed._ids as ids_module
    import h5feed.writer as writer_module

    after = point.endswith(":after")
    name = point.split(":")[0]
    name, _, nth = name.partition("#")
    nth_call = int(nth or 1)
    calls = {"n": 0}

    def claim() -> bool:
        if once is None:
            return True
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def wrap(owner: object, attr: str, matches=lambda *a, **k: True) -> None:
        real = getattr(owner, attr)

        def hooked(*args, **kwargs):
            if not matches(*args, **kwargs):
                return real(*args, **kwargs)
            calls["n"] += 1
            fire = calls["n"] == nth_call and claim()
            if fire and not after:
                _fire(point, sig)
            result = real(*args, **kwargs)
            if fire and after:
                _fire(point, sig)
            return result

        setattr(owner, attr, hooked)

    tmp = lambda p, *a, **k: str(p).endswith(".h5feed-tmp")  # noqa: E731
    targets = {
        "create": (writer_module, "create_h5", lambda *a, **k: True),
        "write": (h5py.Dataset, "write_direct", lambda *a, **k: True),
        "ids": (ids_module, "write_strings", lambda dset, *a, **k: dset.name == "/ids"),
        "attr": (h5py.AttributeManager, "__setitem__", lambda self, key, *a, **k: key == "h5feed_complete"),
        "flush": (h5py.File, "flush", lambda *a, **k: True),
        "close": (h5py.File, "close", lambda *a, **k: True),
        "fsync": (os, "fsync", lambda *a, **k: True),
        "link": (os, "link", lambda *a, **k: True),
        "replace": (os, "replace", lambda *a, **k: True),
        "unlink": (os, "unlink", tmp),
    }
    if name == "flushed":
        # A writer that flushed HDF5 after some blocks (as a long conversion
        # might, for progress) and died: the rows so far are on disk and
        # the file opens cleanly, but the completion record is missing.
        real_flush = writer_module.DatasetWriter._flush

        def flushed(self):
            real_flush(self)
            calls["n"] += 1
            if calls["n"] == nth_call and claim():
                self._file.flush()
                _fire(point, sig)

        writer_module.DatasetWriter._flush = flushed
        return
    owner, attr, matches = targets[name]
    wrap(owner, attr, matches)


def main(argv: list[str]) -> int:
    target, version, mode = argv[0], int(argv[1]), argv[2]
    if len(argv) > 3:
        point, signame = argv[3], argv[4]
        sig = {"KILL": signal.SIGKILL, "INT": signal.SIGINT}[signame]
        if mode == "isolated":
            # The hook must fire in the child that writes: pass it on.
            os.environ["H5FEED_TEST_CHILD_KILL_POINT"] = f"{point} {signame}"
        else:
            install_hook(point, sig)
    import h5feed.writer  # noqa: F401 - READY means the next instruction is the write's

    print("READY", flush=True)
    try:
        write(target, version, mode)
        # A timed signal that comes after this finds the write done; it may
        # land while Python exits, after its handler of SIGINT is gone.
        print("WRITTEN", flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


# In the isolated child (spawned, so this module is imported afresh there as
# the pickled function's home), install the hook passed on by the parent.
if __name__ != "__main__" and os.environ.get("H5FEED_TEST_CHILD_KILL_POINT"):
    _point, _sig = os.environ.pop("H5FEED_TEST_CHILD_KILL_POINT").split()
    install_hook(_point, {"KILL": signal.SIGKILL, "INT": signal.SIGINT}[_sig])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
