"""Run by test_backends.py in a fresh interpreter: the README's
keras.distribution recipe on JAX, with the CPU split into two devices.

Usage: python jax_data_parallel_script.py FILE
Prints one JSON line: {"devices": 2, "loss": [...], "mesh": "..."}.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"


def main() -> None:
    import jax
    import keras

    from h5feed import H5Sequence

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    # One process per host; each reads its own shard (a single process here).
    seq = H5Sequence(
        sys.argv[1], "train", batch_size=8, seed=7, drop_remainder=True,
        shard=(jax.process_index(), jax.process_count()),
    )
    model = keras.Sequential(
        [keras.Input((4, 3)), keras.layers.Flatten(), keras.layers.Dense(5, activation="softmax")]
    )
    model.compile("sgd", "categorical_crossentropy")
    history = model.fit(seq, epochs=2, verbose=0)
    print(json.dumps({
        "devices": len(jax.devices()),
        "loss": [float(v) for v in history.history["loss"]],
        "mesh": str(model.layers[-1].kernel.value.sharding),
    }))


if __name__ == "__main__":
    main()
