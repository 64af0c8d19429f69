"""A training loop over a torchdata StatefulDataLoader with 2 workers: killed here, resumed by the test.

Usage: python loader_script.py FILE FOLDER

:func:`train` runs :data:`EPOCHS` epochs of an ``H5Dataset`` (``train``
split, an ``fn(X, Y, rng)`` transform adding noise to ``x[:, 1]``) through a
``StatefulDataLoader`` over a ``BlockBatchSampler``, as a user's loop would:
every :data:`SAVE_FREQ` batches it saves ``{"epoch", "loader"}`` atomically
(``torch.save`` to a temporary file, then ``os.replace``). Each batch is
noted as one line of a log (rows and noisy values, unbuffered), each save as
a line ``backup``. Run as a script, it stops for good :data:`LOST` batches
after the third save (in the middle of epoch 1), prints ``KILL ME`` and
waits for the SIGKILL; the test then calls :func:`train` again, which
resumes from the last save.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from h5feed.torch import BlockBatchSampler, H5Dataset, collate

EPOCHS, BATCH, SAVE_FREQ, KILL_AFTER_BACKUP, LOST = 2, 8, 5, 3, 3


def noisy(X, Y, rng):
    """The transform under test: noise from the batch's own random stream."""
    X = X.copy()
    X[:, 1] += rng.standard_normal(len(X)).astype(X.dtype)
    return X, Y


def train(path: str, folder: str, log: str, *, checkpoint: str | None, kill: bool = False) -> None:
    ds = H5Dataset(path, "train", transform=noisy)
    loader = StatefulDataLoader(ds, batch_sampler=BlockBatchSampler(ds, BATCH, seed=3), collate_fn=collate,
                                num_workers=2)
    first = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        saved = torch.load(checkpoint, weights_only=False)
        loader.load_state_dict(saved["loader"])
        first = saved["epoch"]
    fd = os.open(os.path.join(folder, log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    done = backups = 0
    after = None
    for epoch in range(first, EPOCHS):
        for X, _ in loader:
            os.write(fd, (json.dumps([X[:, 0].int().tolist(), X[:, 1].tolist()]) + "\n").encode())
            done += 1
            if after is not None:
                after += 1
                if after == LOST and kill:
                    print("KILL ME", flush=True)
                    time.sleep(600)
                    os._exit(1)
            if checkpoint is not None and done % SAVE_FREQ == 0:
                tmp = checkpoint + ".tmp"
                torch.save({"epoch": epoch, "loader": loader.state_dict()}, tmp)
                os.replace(tmp, checkpoint)
                os.write(fd, b"backup\n")
                backups += 1
                if backups == KILL_AFTER_BACKUP:
                    after = 0
    os.close(fd)


if __name__ == "__main__":
    data, out = sys.argv[1:3]
    train(data, out, "run.log", checkpoint=os.path.join(out, "checkpoint.pt"), kill=True)
    print("the loop ended before its kill point", flush=True)
    sys.exit(1)
