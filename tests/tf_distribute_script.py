"""Run by test_tf_data.py in a fresh interpreter: split the CPU into two
logical devices, train under tf.distribute.MirroredStrategy from
h5feed.tf_dataset, and record which rows each replica received.

Usage: python tf_distribute_script.py FILE
Prints one JSON line: {"replicas": 2, "epochs": [[rows], [rows]], "loss": [...],
"per_replica_nonempty": bool}.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def main() -> None:
    path = sys.argv[1]
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import keras

    import h5feed

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ds = h5feed.tf_dataset(path, "train", batch_size=8, seed=3)

    # What each replica receives, over two epochs of the distributed dataset.
    dist = strategy.experimental_distribute_dataset(ds)
    epochs, nonempty = [], True
    for _ in range(2):
        rows = []
        for X, _Y in dist:
            parts = strategy.experimental_local_results(X)
            nonempty &= all(int(p.shape[0]) > 0 for p in parts)
            for p in parts:
                rows.extend(p.numpy().reshape(len(p), -1)[:, 0].astype(int).tolist())
        epochs.append(rows)

    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((4, 3)), keras.layers.Flatten(), keras.layers.Dense(5, activation="softmax")]
        )
        model.compile("sgd", "categorical_crossentropy")
    history = model.fit(ds, epochs=2, verbose=0, shuffle=False)  # h5feed shuffles

    # The README's multi-worker recipe: one h5feed shard per input pipeline.
    def make_dataset(ctx):
        return h5feed.tf_dataset(
            path, "train", seed=3, drop_remainder=True,
            batch_size=ctx.get_per_replica_batch_size(8),
            shard=(ctx.input_pipeline_id, ctx.num_input_pipelines),
        )

    from_function = strategy.distribute_datasets_from_function(make_dataset)
    fn_rows = []
    for X, _Y in from_function:
        for p in strategy.experimental_local_results(X):
            fn_rows.extend(p.numpy()[:, 0, 0].astype(int).tolist())
    history_fn = model.fit(from_function, epochs=1, verbose=0, shuffle=False, steps_per_epoch=len(fn_rows) // 8)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "epochs": epochs,
        "loss": [float(v) for v in history.history["loss"] + history_fn.history["loss"]],
        "from_function_rows": fn_rows,
        "per_replica_nonempty": bool(nonempty),
    }))


if __name__ == "__main__":
    main()
