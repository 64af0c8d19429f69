"""Real model.fit runs with worker processes under each start method."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "fit_worker_script.py")


def _fit(path, method, workers, multiprocessing, epochs=2):
    proc = subprocess.run(
        [sys.executable, SCRIPT, str(path), method, str(workers), "1" if multiprocessing else "0", str(epochs)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["epochs"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, workers, multiprocessing",
    [
        ("fork", 2, True),
        ("spawn", 2, True),
        ("forkserver", 2, True),
        ("fork", 2, False),
    ],
    ids=["fork-processes", "spawn-processes", "forkserver-processes", "threads"],
)
def test_fit_with_workers_sees_every_train_row_once_per_epoch(small_file, method, workers, multiprocessing):
    epochs = _fit(small_file, method, workers, multiprocessing)
    assert len(epochs) == 2
    for rows in epochs:
        np.testing.assert_array_equal(np.sort(rows), np.arange(70))
    assert epochs[0] != epochs[1]  # reshuffled between epochs
