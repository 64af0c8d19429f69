"""``h5feed demo``: the tutorial's workflow, end to end, on synthetic data.

1. Make a folder in the tutorial's layout: ``data/<ID>.npy`` per sample plus
   its ``partition`` and ``labels`` dicts (saved as JSON).
2. Convert it into one h5feed file.
3. Train a small Keras model for an epoch from an ``H5Sequence`` and report
   the samples per second.

The demo is the ``h5feed demo`` command: like the command line, it sits on
top of the converters (``h5feed.convert``, imported when it runs); the rest
of the core package never imports them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger("h5feed")

__all__ = ["DemoResult", "make_tutorial_folder", "run_demo"]


def make_tutorial_folder(
    folder: str, *, n_samples: int, sample_shape: tuple[int, ...], n_classes: int, seed: int = 0
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Write ``folder/data/<ID>.npy`` samples plus partition and labels JSON.

    The IDs follow the tutorial (``id-1``, ``id-2``, ...); 80% go to
    ``train`` and the rest to ``validation``. Each class gets its own mean so
    that a model can learn something.

    Returns:
        ``(partition, labels)`` as the tutorial builds them.
    """
    rng = np.random.default_rng(seed)
    data = os.path.join(folder, "data")
    os.makedirs(data, exist_ok=True)
    ids = [f"id-{i + 1}" for i in range(n_samples)]
    labels = {sid: int(rng.integers(n_classes)) for sid in ids}
    for sid in ids:
        sample = rng.standard_normal(sample_shape, dtype=np.float32) + labels[sid] / n_classes
        np.save(os.path.join(data, sid + ".npy"), sample)
    n_train = max(1, int(n_samples * 0.8))
    partition = {"train": ids[:n_train], "validation": ids[n_train:]}
    with open(os.path.join(folder, "partition.json"), "w") as fh:
        json.dump(partition, fh)
    with open(os.path.join(folder, "labels.json"), "w") as fh:
        json.dump(labels, fh)
    return partition, labels


@dataclass(frozen=True)
class DemoResult:
    path: str
    rows: int
    train_rows: int
    seconds: float

    @property
    def samples_per_second(self) -> float:
        return self.train_rows / self.seconds if self.seconds > 0 else float("inf")


def run_demo(
    out: str | None = None,
    *,
    n_samples: int = 4096,
    sample_shape: tuple[int, ...] = (16, 16, 16, 1),
    n_classes: int = 10,
    batch_size: int = 32,
    epochs: int = 1,
    workers: int = 1,
    use_multiprocessing: bool = False,
    seed: int = 0,
    verbose: int = 0,
    overwrite: bool = False,
) -> DemoResult:
    """Run the demo; return where the file went and the training rate."""
    if out is None:
        out = os.path.join(tempfile.mkdtemp(prefix="h5feed-demo-"), "demo.h5")
    source = tempfile.mkdtemp(prefix="h5feed-demo-source-")
    try:
        make_tutorial_folder(source, n_samples=n_samples, sample_shape=sample_shape, n_classes=n_classes, seed=seed)
        path = _convert(source, out, overwrite=overwrite)
    finally:
        shutil.rmtree(source, ignore_errors=True)

    from .sequence import H5Sequence
    from ._keras import keras

    kwargs: dict[str, Any] = dict(workers=workers, use_multiprocessing=use_multiprocessing)
    train = H5Sequence(path, "train", batch_size=batch_size, seed=seed, **kwargs)
    val = H5Sequence(path, "validation", batch_size=batch_size, shuffle=False)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=sample_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(n_classes, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    # Build and trace once outside the timing so the rate measures feeding
    # and training, not TensorFlow's start-up.
    model.train_on_batch(*train[0])
    start = time.perf_counter()
    model.fit(train, validation_data=val, epochs=epochs, verbose=verbose)
    seconds = time.perf_counter() - start
    rows = train.layout.n_rows
    return DemoResult(path=path, rows=rows, train_rows=len(train.rows) * epochs, seconds=seconds)


def _convert(source: str, out: str, *, overwrite: bool) -> str:
    """Tutorial folder -> one h5feed file, through the npy converter."""
    from h5feed.convert import from_npy_dir

    return from_npy_dir(
        os.path.join(source, "data"),
        os.path.join(source, "labels.json"),
        out,
        partition=os.path.join(source, "partition.json"),
        overwrite=overwrite,
        quiet=True,
    ).path
