"""Run by test_fit.py in a fresh interpreter: model.fit from an H5Sequence
with worker processes started by METHOD, recording the rows the model saw.

Usage: python fit_worker_script.py FILE METHOD WORKERS MULTIPROCESSING EPOCHS
Prints one JSON line: {"epochs": [[rows seen in epoch 0], ...]}.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    path, method, workers, multi, epochs = sys.argv[1:6]
    multiprocessing.set_start_method(method, force=True)
    import keras
    import numpy as np

    from h5feed import H5Sequence

    seen: list[list[int]] = []

    class Record(keras.layers.Layer):
        """Notes x[:, 0] (the row number) of every batch the model trains on."""

        def call(self, inputs):
            if hasattr(inputs, "numpy"):
                seen[-1].extend(inputs.numpy().reshape(len(inputs), -1)[:, 0].astype(int).tolist())
            return inputs

    class NewEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append([])

    seq = H5Sequence(
        path, "train", batch_size=8, seed=7,
        workers=int(workers), use_multiprocessing=multi == "1",
    )
    model = keras.Sequential([
        keras.Input(seq[0][0].shape[1:]),
        Record(),
        keras.layers.Flatten(),
        keras.layers.Dense(5, activation="softmax"),
    ])
    model.compile("sgd", "categorical_crossentropy", run_eagerly=True)
    model.fit(seq, epochs=int(epochs), verbose=0, callbacks=[NewEpoch()])
    print(json.dumps({"epochs": seen, "pid": os.getpid()}))


if __name__ == "__main__":
    main()
