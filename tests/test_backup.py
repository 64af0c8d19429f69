"""h5feed.BackupAndRestore in one process: what it refuses, and its atomic backup.

The kill-and-resume tests, with worker threads and processes, are in
tests/faults/test_faults_resume.py.
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest

import h5feed
from h5feed import errors

from conftest import make_arrays

keras = pytest.importorskip("keras")
H5Sequence = pytest.importorskip("h5feed.sequence").H5Sequence

pytestmark = pytest.mark.slow  # trains models


class Interrupt(Exception):
    """Raised by a callback: a crash after some batches."""


class CrashAt(keras.callbacks.Callback):
    def __init__(self, batches: int):
        super().__init__()
        self.left = batches

    def on_train_batch_end(self, batch, logs=None):
        self.left -= 1
        if self.left == 0:
            raise Interrupt


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    ids, x, y = make_arrays(48, shape=(3,), seed=4)
    return h5feed.write_arrays(tmp_path_factory.mktemp("backup") / "d.h5", ids, x, y, n_classes=5)


def _model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8), keras.layers.Dropout(0.25),
                              keras.layers.Dense(5, activation="softmax")])
    model.compile("adam", "categorical_crossentropy")
    return model


def _crashed_run(data_file, backup_dir, batches=9, **options):
    """A fit (6 batches an epoch) that crashes after ``batches`` batches, backing up every 4."""
    seq = H5Sequence(data_file, batch_size=8, seed=1)
    with pytest.raises(Interrupt):
        _model().fit(seq, epochs=3, verbose=0,
                     callbacks=[h5feed.BackupAndRestore(backup_dir, save_freq=4, **options), CrashAt(batches)])
    return json.loads((backup_dir / "h5feed_state.json").read_text())


def test_a_backup_is_never_half_written_and_double_checkpoint_falls_back_to_the_one_before(data_file, tmp_path):
    folder = tmp_path / "b"
    record = _crashed_run(data_file, folder, double_checkpoint=True)
    # The backup after 8 batches: Keras epoch 1, the sequence 2 batches into
    # its epoch 2 (fit trains epochs 1, 2, ... of the sequence); the one
    # before, after 4 batches.
    assert (record["epoch"], record["sequence"]["epoch"], record["sequence"]["batch"]) == (1, 2, 2)
    previous = json.loads((folder / "h5feed_state.json.bkp").read_text())
    assert (previous["epoch"], previous["sequence"]["epoch"], previous["sequence"]["batch"]) == (0, 1, 4)
    assert sorted(os.listdir(folder)) == sorted(
        ["h5feed_state.json", "h5feed_state.json.bkp", record["weights"], previous["weights"]]
    )
    # A run killed while writing its next backup leaves a weights file no
    # record names, and a temporary record; and the last weights are damaged.
    (folder / "h5feed-0123456789abcdef.weights.h5").write_bytes(b"half a file")
    stale = folder / f".h5feed_state.json.{socket.gethostname()}.999999999.abcd.h5feed-tmp"
    stale.write_text("{")
    (folder / record["weights"]).write_bytes(b"not HDF5")
    seq = H5Sequence(data_file, batch_size=8, seed=1)
    backup = h5feed.BackupAndRestore(folder, save_freq=4, double_checkpoint=True, delete_checkpoint=False)
    _model().fit(seq, epochs=1, verbose=0, callbacks=[backup])  # epoch 0 from the previous backup on
    assert seq.epoch == 2  # it ended the sequence's epoch 1, resumed at its batch 4
    names = os.listdir(folder)
    assert "h5feed-0123456789abcdef.weights.h5" not in names and stale.name not in names


def test_what_it_cannot_resume_is_refused_before_training(data_file, tmp_path):
    seq = H5Sequence(data_file, batch_size=8, seed=1)
    model = _model()
    x, y = np.zeros((8, 3), np.float32), np.zeros((8, 5), np.float32)
    with pytest.raises(ValueError, match="expected model.fit\\(H5Sequence"):
        model.fit(x, y, verbose=0, callbacks=[h5feed.BackupAndRestore(tmp_path / "a")])
    other = H5Sequence(data_file, batch_size=8, seed=1)
    with pytest.raises(ValueError, match="must be the sequence fit trains on"):
        model.fit(seq, verbose=0, callbacks=[h5feed.BackupAndRestore(tmp_path / "a", sequence=other)])
    with pytest.raises(ValueError, match="steps_per_epoch=None or 6"):
        model.fit(seq, steps_per_epoch=3, verbose=0, callbacks=[h5feed.BackupAndRestore(tmp_path / "a")])
    # Keras's own callback's backup holds no position.
    keras_dir = tmp_path / "k"
    with pytest.raises(Interrupt):
        _model().fit(seq, epochs=2, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(keras_dir), CrashAt(7)])
    with pytest.raises(ValueError, match="holds a backup of keras.callbacks.BackupAndRestore"):
        _model().fit(seq, verbose=0, callbacks=[h5feed.BackupAndRestore(keras_dir)])
    # A backup of another sequence.
    _crashed_run(data_file, tmp_path / "b")
    with pytest.raises(errors.StateMismatchError, match="batch_size: expected 16"):
        _model().fit(H5Sequence(data_file, batch_size=16, seed=1), verbose=0,
                     callbacks=[h5feed.BackupAndRestore(tmp_path / "b")])
    for bad in (0, True, "batch", 2.5):
        with pytest.raises(ValueError, match="save_freq"):
            h5feed.BackupAndRestore(tmp_path / "c", save_freq=bad)
    with pytest.raises(TypeError, match="sequence must be an H5Sequence"):
        h5feed.BackupAndRestore(tmp_path / "c", sequence="data.h5")
