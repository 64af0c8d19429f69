"""model.fit with h5feed.BackupAndRestore, for each worker mode: killed here, resumed by the test.

Usage: python resume_script.py FILE FOLDER MODE [MODE ...]

MODE is ``in-process``, ``threads`` or ``processes`` (2 h5feed workers of
that kind). :func:`train` trains a small model on the ``train`` split for
:data:`EPOCHS` epochs; an ``fn(X, Y, rng)`` transform adds noise to
``x[:, 1]``. With a backup folder it backs up every :data:`SAVE_FREQ`
batches. The model notes every batch it trains on as one line of a log: the
rows (``x[:, 0]``) and the noisy ``x[:, 1]``, written unbuffered, so that the
lines survive a SIGKILL; a line ``backup`` follows each backup.

Run as a script, it trains the modes one after another, each in a thread of
its own that stops for good :data:`LOST` batches after the third backup (in
the middle of epoch 1), then prints ``KILL ME`` and waits for the SIGKILL
that ends them all at once, their worker threads and processes with batches
in flight. The test then calls :func:`train` again in its own process, as a
user re-runs a crashed job.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import h5feed  # noqa: E402

MODES = {"in-process": (0, False), "threads": (2, False), "processes": (2, True)}
EPOCHS, BATCH, SAVE_FREQ, KILL_AFTER_BACKUP, LOST = 2, 8, 5, 3, 3


def noisy(X, Y, rng):
    """The transform under test: noise from the batch's own random stream."""
    X = X.copy()
    X[:, 1] += rng.standard_normal(len(X)).astype(X.dtype)
    return X, Y


class Record(keras.layers.Layer):
    """Writes the rows and noisy values of each batch the model trains on to a log."""

    def __init__(self, fd: int, **kwargs):
        super().__init__(**kwargs)
        self.fd = fd

    def _write(self, X):
        os.write(self.fd, (json.dumps([X[:, 0].astype(int).tolist(), X[:, 1].tolist()]) + "\n").encode())
        return np.int64(0)

    def call(self, inputs):
        if not isinstance(inputs, keras.KerasTensor):
            # Stateful, so kept in the compiled step and run once per batch.
            tf.numpy_function(self._write, [inputs], tf.int64, stateful=True)
        return inputs

    def compute_output_shape(self, shape):
        return shape


class MarkBackups(keras.callbacks.Callback):
    """Notes each new backup in the log; with ``kill``, stops for good LOST batches after the third."""

    def __init__(self, fd: int, state: str, kill: threading.Event | None):
        super().__init__()
        self.fd, self.state, self.kill = fd, state, kill
        self.seen = None
        self.backups = 0
        self.after: int | None = None

    def _check(self):
        try:
            st = os.stat(self.state)
            now = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            now = None
        if now is not None and now != self.seen:
            self.seen = now
            self.backups += 1
            os.write(self.fd, b"backup\n")
            if self.backups == KILL_AFTER_BACKUP:
                self.after = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.after is not None:
            self.after += 1
            if self.after == LOST and self.kill is not None:
                self.kill.set()
                threading.Event().wait()  # stopped for good: the kill ends it
        self._check()

    def on_epoch_end(self, epoch, logs=None):
        self._check()


def train(path: str, folder: str, mode: str, log: str, *, backup: bool, kill: threading.Event | None = None):
    """Fit a fresh model (the same initial weights every time); its final weights."""
    workers, multi = MODES[mode]
    os.makedirs(os.path.join(folder, mode), exist_ok=True)
    fd = os.open(os.path.join(folder, mode, log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    seq = h5feed.H5Sequence(path, "train", batch_size=BATCH, seed=11, transform=noisy,
                            workers=workers, use_multiprocessing=multi)
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((3,)), Record(fd), keras.layers.Dense(8), keras.layers.Dropout(0.25),
                              keras.layers.Dense(5, activation="softmax")])
    model.compile("adam", "categorical_crossentropy")
    callbacks = []
    if backup:
        backup_dir = os.path.join(folder, mode, "backup")
        callbacks = [h5feed.BackupAndRestore(backup_dir, save_freq=SAVE_FREQ),
                     MarkBackups(fd, os.path.join(backup_dir, "h5feed_state.json"), kill)]
    try:
        model.fit(seq, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    finally:
        seq.close()
        os.close(fd)
    return model.get_weights()


def main() -> None:
    path, folder, *modes = sys.argv[1:]
    multiprocessing.set_start_method("fork", force=True)
    for mode in modes:
        kill = threading.Event()
        threading.Thread(target=train, args=(path, folder, mode, "run.log"),
                         kwargs={"backup": True, "kill": kill}, daemon=True).start()
        if not kill.wait(120):
            print(f"{mode}: the fit never reached its kill point", flush=True)
            os._exit(1)
    print("KILL ME", flush=True)
    time.sleep(600)
    os._exit(1)


if __name__ == "__main__":
    main()
