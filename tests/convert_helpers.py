"""Helpers shared by the converter tests: sources in tmp_path, reading back by ID."""

from __future__ import annotations

import json
import os

import numpy as np

TUTORIAL_PARTITION = {"train": ["id-1", "id-2", "id-3"], "validation": ["id-4"]}
TUTORIAL_LABELS = {"id-1": 0, "id-2": 1, "id-3": 2, "id-4": 1}


def make_npy_folder(root, labels, *, shape=(4, 3), dtype="float32", partition=None, seed=0):
    """Write root/data/<ID>.npy for each labelled ID, plus labels.json and
    (when given) partition.json. Returns (data_dir, labels_path,
    partition_path, samples) where samples maps ID -> array."""
    rng = np.random.default_rng(seed)
    data = os.path.join(root, "data")
    os.makedirs(data, exist_ok=True)
    samples = {}
    for sid in labels:
        arr = rng.standard_normal(shape).astype(dtype)
        np.save(os.path.join(data, sid + ".npy"), arr)
        samples[sid] = arr
    labels_path = os.path.join(root, "labels.json")
    with open(labels_path, "w") as fh:
        json.dump(labels, fh)
    partition_path = None
    if partition is not None:
        partition_path = os.path.join(root, "partition.json")
        with open(partition_path, "w") as fh:
            json.dump(partition, fh)
    return data, labels_path, partition_path, samples


def read_by_ids(path, ids, *, labels=True):
    """X (and Y as class indices or targets) of ``ids``, in that order,
    through H5Sequence, the way training reads them."""
    from h5feed.sequence import H5Sequence

    kwargs = {} if labels else {"y": None}
    seq = H5Sequence(str(path), ids=list(ids), batch_size=len(ids), shuffle=False,
                     one_hot=False if labels else None, **kwargs)
    with seq:
        batch = seq[0]
    return batch if labels else (batch[0] if isinstance(batch, tuple) else batch)


def leftovers(folder):
    """Everything in ``folder`` (hidden temporaries included)."""
    return sorted(os.listdir(folder))
