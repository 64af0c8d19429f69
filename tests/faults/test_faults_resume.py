"""Exact resume after SIGKILL: a real fit, and a StatefulDataLoader.

Each test kills a real training loop with SIGKILL in the middle of an epoch,
a few batches after a backup, with worker threads or processes holding
batches in flight, then resumes it as a re-run script would, and checks that
the batches trained before the backup followed by those trained after the
restart are exactly an uninterrupted run's: the same sample IDs, in the same
order, with the same random augmentation, none repeated and none skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

import h5feed

from _harness import FAULTS, PYTHON, child_env

N, TRAIN = 120, 96


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "d.h5"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 3)).astype(np.float32)
    x[:, 0] = np.arange(N)  # x[i, 0] names its row
    h5feed.write_arrays(path, [f"id-{i}" for i in range(N)], x, rng.integers(0, 5, N),
                        splits={"train": range(TRAIN)}, n_classes=5)
    return path


def _kill_at_its_word(args, timeout):
    """Run ``args`` until it prints ``KILL ME``, then SIGKILL it; its stdout."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(), cwd=str(FAULTS))
    deadline = time.monotonic() + timeout
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == "KILL ME":
                proc.send_signal(signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                break
    finally:
        if proc.poll() is None and not lines[-1:] == ["KILL ME\n"]:
            proc.kill()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"not killed at its kill point: {''.join(lines)}\n{stderr[-4000:]}"
    return lines


def _log(path):
    """The batches a log notes, and the number of them noted before its last ``backup`` line."""
    batches, before_backup = [], 0
    with open(path) as fh:
        for line in fh:
            if line.strip() == "backup":
                before_backup = len(batches)
            else:
                batches.append(json.loads(line))
    return batches, before_backup


@pytest.mark.slow
def test_fit_killed_mid_epoch_resumes_the_exact_batch_stream_in_every_worker_mode(data_file, tmp_path):
    import resume_script as rs

    modes = list(rs.MODES)
    # The three fits stop in one process, which the SIGKILL ends.
    _kill_at_its_word([PYTHON, str(FAULTS / "resume_script.py"), str(data_file), str(tmp_path), *modes], timeout=300)
    per_epoch = TRAIN // rs.BATCH
    # One uninterrupted run: it is the same in every worker mode.
    reference = rs.train(str(data_file), str(tmp_path), "in-process", "reference.log", backup=False)
    want, _ = _log(tmp_path / "in-process" / "reference.log")
    assert len(want) == rs.EPOCHS * per_epoch
    for epoch in range(rs.EPOCHS):  # each epoch sees every train row once
        rows = sorted(r for batch in want[per_epoch * epoch:per_epoch * (epoch + 1)] for r in batch[0])
        assert rows == list(range(TRAIN))
    for mode in modes:
        resumed = rs.train(str(data_file), str(tmp_path), mode, "resumed.log", backup=True)
        run, saved = _log(tmp_path / mode / "run.log")
        after, _ = _log(tmp_path / mode / "resumed.log")
        # Killed in epoch 1, LOST batches after a backup that was itself in
        # the middle of that epoch: those batches are trained again, no others.
        assert per_epoch < saved < 2 * per_epoch and len(run) == saved + rs.LOST, (mode, saved, len(run))
        assert run[:saved] + after == want, mode
        # The weights and the optimizer's state came back too: the same model.
        for a, b in zip(resumed, reference):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=mode)
        assert not (tmp_path / mode / "backup").exists()  # removed when fit ended


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.13
def test_stateful_dataloader_killed_mid_epoch_resumes_the_exact_batch_stream(data_file, tmp_path):
    pytest.importorskip("torch", reason="h5feed.torch needs PyTorch (pip install 'h5feed[torch]')")
    pytest.importorskip("torchdata.stateful_dataloader", reason="resuming a DataLoader needs torchdata")
    import loader_script as ls

    _kill_at_its_word([PYTHON, str(FAULTS / "loader_script.py"), str(data_file), str(tmp_path)], timeout=300)
    ls.train(str(data_file), str(tmp_path), "resumed.log", checkpoint=str(tmp_path / "checkpoint.pt"))
    ls.train(str(data_file), str(tmp_path), "reference.log", checkpoint=None)
    run, saved = _log(tmp_path / "run.log")
    after, _ = _log(tmp_path / "resumed.log")
    want, _ = _log(tmp_path / "reference.log")
    per_epoch = TRAIN // ls.BATCH
    assert len(want) == ls.EPOCHS * per_epoch
    assert per_epoch < saved < 2 * per_epoch and len(run) == saved + ls.LOST, (saved, len(run))
    assert run[:saved] + after == want
    for epoch in range(ls.EPOCHS):
        rows = sorted(r for batch in want[per_epoch * epoch:per_epoch * (epoch + 1)] for r in batch[0])
        assert rows == list(range(TRAIN))
