"""Run by test_backends.py in a fresh interpreter (the Keras backend is fixed
when keras is first imported): train from an H5Sequence under KERAS_BACKEND,
with worker processes, recording the rows the model saw.

Usage: KERAS_BACKEND=jax python backend_fit_script.py FILE WORKERS MULTIPROCESSING
Prints one JSON line: {"backend": ..., "epochs": [[rows], ...], "loss": [...]}.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
    path, workers, multi = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    # spawn: jax and torch are multithreaded, and fork after they start is unsafe.
    multiprocessing.set_start_method("spawn", force=True)
    import keras

    from h5feed import H5Sequence

    seen: list[list[int]] = []

    class Record(keras.layers.Layer):
        """Notes x[:, 0, 0] (the row number) of every batch trained on."""

        def call(self, inputs):
            if seen:  # not while Keras builds the model symbolically
                rows = keras.ops.convert_to_numpy(inputs)
                seen[-1].extend(rows.reshape(len(rows), -1)[:, 0].astype(int).tolist())
            return inputs

    class NewEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append([])

    seq = H5Sequence(path, "train", batch_size=8, seed=7, workers=workers, use_multiprocessing=multi)
    model = keras.Sequential([
        keras.Input((4, 3)),
        Record(),
        keras.layers.Flatten(),
        keras.layers.Dense(5, activation="softmax"),
    ])
    model.compile("sgd", "categorical_crossentropy", run_eagerly=True)
    history = model.fit(seq, epochs=2, verbose=0, callbacks=[NewEpoch()])
    print(json.dumps({
        "backend": keras.backend.backend(),
        "epochs": seen,
        "loss": [float(v) for v in history.history["loss"]],
        "tensorflow_imported": "tensorflow" in sys.modules,
    }))


if __name__ == "__main__":
    main()
