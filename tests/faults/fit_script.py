"""model.fit from an H5Sequence in a fresh interpreter, with optional faults.

Usage: python fit_script.py FILE METHOD WORKERS MULTIPROCESSING EPOCHS FAULT [FIT_SHUFFLE]

FAULT is ``none``, ``raise:ROW`` or ``kill:ROW`` (see worker_faults.py).
With H5FEED_TEST_ORIGINAL_ERRORS set, fit runs inside h5feed.original_errors().
FIT_SHUFFLE (default 1) is passed to ``model.fit(shuffle=...)``: Keras then
shuffles the order in which it asks for batches, with Python's unseeded
``random``.
Prints one JSON line: ``{"epochs": [[rows seen in epoch 0], ...]}`` after a
clean fit, or ``{"error_type", "error_mro", "message", "after_kill_s"}`` when
fit raised.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    path, method, workers, multi, epochs, fault = sys.argv[1:7]
    fit_shuffle = (sys.argv[7] if len(sys.argv) > 7 else "1") == "1"
    multiprocessing.set_start_method(method, force=True)
    marker = os.path.join(tempfile.mkdtemp(), "killed")
    os.environ["H5FEED_TEST_FAULT"] = fault
    os.environ["H5FEED_TEST_MARKER"] = marker
    os.environ["H5FEED_TEST_PARENT"] = str(os.getpid())
    armed = os.path.join(os.path.dirname(marker), "armed")
    os.environ["H5FEED_TEST_ARMED"] = armed
    import keras

    from h5feed import H5Sequence
    from worker_faults import faulty

    seen: list[list[int]] = []

    class Record(keras.layers.Layer):
        def call(self, inputs):
            if seen and not isinstance(inputs, keras.KerasTensor):  # not while Keras builds the model
                rows = keras.ops.convert_to_numpy(inputs)
                seen[-1].extend(rows.reshape(len(rows), -1)[:, 0].astype(int).tolist())
            return inputs

    class NewEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append([])
            open(armed, "a").close()  # a kill fault may fire from now on

    seq = H5Sequence(
        path, "train", batch_size=8, seed=11, transform=None if fault == "none" else faulty,
        workers=int(workers), use_multiprocessing=multi == "1",
    )
    model = keras.Sequential([
        keras.Input(seq[0][0].shape[1:]),
        Record(),
        keras.layers.Flatten(),
        keras.layers.Dense(5, activation="softmax"),
    ])
    model.compile("sgd", "categorical_crossentropy", run_eagerly=True)
    import contextlib

    import h5feed

    wrap = h5feed.original_errors() if os.environ.get("H5FEED_TEST_ORIGINAL_ERRORS") else contextlib.nullcontext()
    try:
        with wrap:
            model.fit(seq, epochs=int(epochs), verbose=0, callbacks=[NewEpoch()], shuffle=fit_shuffle)
    except BaseException as exc:  # noqa: BLE001 - the answer is the point
        after = killed = None
        if os.path.exists(marker):
            with open(marker) as fh:
                when, killed = fh.read().split()
            after = time.time() - float(when)
        print(json.dumps({
            "error_type": type(exc).__name__,
            "error_mro": [c.__name__ for c in type(exc).__mro__],
            "message": str(exc),
            "after_kill_s": after,
            "killed_pid": None if killed is None else int(killed),
        }))
        sys.stdout.flush()
        os._exit(0)
    # The epochs the sequence itself defines, for comparison: Keras calls
    # on_epoch_end before the first epoch as well as after each.
    expected = []
    for epoch in range(1, int(epochs) + 1):
        seq.set_epoch(epoch)
        expected.append([int(r) for r in seq.epoch_rows()])
    print(json.dumps({"epochs": seen, "expected": expected}))


if __name__ == "__main__":
    main()
