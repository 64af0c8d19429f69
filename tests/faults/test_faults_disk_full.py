"""Point 3: a full disk is an error that says so; nothing is left behind, and
the process that asked for the write does not crash.

The disk is "full" through RLIMIT_FSIZE, set in the child that writes. The
writing goes through ``run_isolated`` (as the ``h5feed`` command does),
because HDF5 can segfault at exit after ENOSPC/EFBIG (NOTE [ Isolated
writing ] in h5feed/writer.py); the harness checks that the calling process
exits cleanly.
"""

from __future__ import annotations

import pytest

from _harness import leftovers, run_case


@pytest.mark.parametrize(
    "compression, streaming, limit, rows",
    [
        (None, False, 400_000, 4000),  # contiguous, fails in the first blocks
        (None, False, 2_500_000, 4000),  # fails part-way
        ("gzip", True, 300_000, 4000),  # chunked, checksummed: the case that segfaults in-process
        ("lzf", False, 600_000, 4000),
        ("gzip", False, 150_000, 600),  # every chunk fits HDF5's cache: fails at the final flush
    ],
    ids=["contiguous-early", "contiguous-late", "gzip-stream", "lzf", "at-flush"],
)
def test_disk_full_is_a_clear_error_and_leaves_nothing(tmp_path, compression, streaming, limit, rows):
    target = tmp_path / "out.h5"
    result = run_case(
        "disk_full", target=str(target), limit=limit, rows=rows,
        compression=compression, isolated=True, streaming=streaming,
    )
    assert result.raised("DiskFullError"), result
    assert result.raised("OSError")  # DiskFullError is also an OSError
    message = result["message"]
    assert str(target) in message
    assert "disk full" in message
    assert "rows had been written" in message  # how far it got
    assert "bytes on disk" in message
    assert not target.exists()
    assert leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_disk_full_leaves_an_existing_target_byte_identical(tmp_path):
    import numpy as np

    import h5feed

    target = tmp_path / "out.h5"
    h5feed.write_arrays(target, ["a", "b"], np.zeros((2, 3), np.float32))
    before = target.read_bytes()
    result = run_case(
        "disk_full", target=str(target), limit=1_000_000, rows=4000,
        compression="gzip", isolated=True, streaming=False,
    )
    assert result.raised("DiskFullError"), result
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_isolated_writer_that_crashes_is_reported_and_cleaned_up(tmp_path):
    target = tmp_path / "out.h5"
    result = run_case("isolated_crash", target=str(target))
    assert result.raised("WriterError"), result
    assert "SIGSEGV" in result["message"] and "crash inside HDF5" in result["message"]
    assert str(target) in result["message"]
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_isolated_writer_returns_and_keeps_exception_types(tmp_path):
    result = run_case("isolated_roundtrip", target=str(tmp_path / "out.h5"))
    assert result["value"] == {"path": str(tmp_path / "out.h5"), "rows": 3, "error": ["SampleError", "duplicate sample ID 'a' within one extend() call"]}


@pytest.mark.parametrize("to", ["parent", "group"], ids=["sigint-to-parent", "sigint-to-process-group"])
def test_ctrl_c_stops_an_isolated_writer_and_leaves_nothing(tmp_path, to):
    import os
    import signal
    import subprocess
    import time

    from _harness import PYTHON, child_env
    from _killing import SCRIPT

    target = tmp_path / "data.h5"
    # The isolated stream write takes about a second; interrupt it half-way,
    # as a Ctrl-C at a terminal does (the whole group) or kill -INT does.
    proc = subprocess.Popen([PYTHON, SCRIPT, str(target), "0", "isolated"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(H5FEED_TEST_PAUSE="0.02"),
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "READY"
    # Aim at mid-write: once the writing child's temporary file exists (60
    # blocks of 50 rows, a pause after each).
    deadline = time.monotonic() + 30
    while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leftovers(tmp_path), f"the write never started: {proc.poll()}"
    time.sleep(0.2)
    if to == "parent":
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr, stderr  # the interrupt, not an error, ended it
    assert leftovers(tmp_path) == []
    assert not target.exists()
