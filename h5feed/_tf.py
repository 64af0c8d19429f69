"""Building a ``tf.data.Dataset`` that reads one epoch per iteration.

The layer under :meth:`H5Sequence.to_tf_dataset <h5feed.sequence.H5Sequence.to_tf_dataset>`
and :mod:`h5feed.tf_data`: it knows TensorFlow and nothing of the sequence.
It takes each epoch's batches from a factory and the element spec from an
example batch. Importing this module imports TensorFlow.

NOTE [ Epochs of a tf.data dataset ]
A ``tf.data.Dataset`` has no ``on_epoch_end``; Keras (and a custom loop)
starts a new iterator for every epoch instead. The dataset built here counts
its iterators: iterator ``k`` reads epoch ``first_epoch + k``, whose batches
the factory makes independently of any other epoch's (the sequence's factory
reads each from a copy with its own file handle), so two live iterators never
disturb each other or the sequence they came from. A dataset may start in
the middle of an epoch (a resumed position): its first iterator then reads
from ``first_batch`` on, the later ones whole epochs, and since its
iterations differ in length, its cardinality is left unknown.
See the design note ``docs/design/tf-data.md``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

try:
    import tensorflow as tf
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "h5feed.tf_dataset and H5Sequence.to_tf_dataset need TensorFlow: pip install tensorflow"
    ) from exc

__all__ = ["epochs_dataset", "spec_like"]


def spec_like(batch: Any) -> Any:
    """The ``element_spec`` of batches shaped like ``batch``.

    The same structure, each array a ``tf.TensorSpec`` of its dtype and of
    its shape with the batch dimension None (the last batch may be short).
    """
    return tf.nest.map_structure(
        lambda a: tf.TensorSpec((None, *np.shape(a)[1:]), tf.as_dtype(np.asarray(a).dtype)), batch
    )


def epochs_dataset(
    batches_of: Callable[[int, int], Iterator[Any]],
    *,
    element_spec: Any,
    n_batches: int,
    first_epoch: int,
    sharded: bool,
    prefetch: int | None,
    first_batch: int = 0,
) -> tf.data.Dataset:
    """A dataset whose ``k``-th iteration yields ``batches_of(first_epoch + k, start)``.

    Args:
        batches_of: ``(epoch, start)`` -> the batches of the epoch from batch
            ``start`` of its order on; called once per iteration, from a
            tf.data thread, when its first batch is asked for.
        element_spec: the batches' spec (:func:`spec_like`).
        n_batches: batches per epoch (the dataset's cardinality, when the
            first iteration is whole).
        first_epoch: the epoch of the first iteration.
        first_batch: where the first iteration starts in its epoch (0:
            whole); the later ones start at 0.
        sharded: the batches are already one shard's, so ``tf.distribute``
            must not shard the dataset again.
        prefetch: batches read ahead (``-1``: ``tf.data.AUTOTUNE``; 0 or None:
            none).
    """
    epochs = _EpochCounter(first_epoch)

    def batches() -> Iterator[Any]:
        epoch = epochs.next()
        yield from batches_of(epoch, first_batch if epoch == first_epoch else 0)

    ds = tf.data.Dataset.from_generator(batches, output_signature=element_spec)
    if not first_batch:
        # Saying how many batches an epoch has lets Keras size its progress
        # bar and epochs instead of running into the end of the data.
        ds = ds.apply(tf.data.experimental.assert_cardinality(n_batches))
    if sharded:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
    if prefetch:
        ds = ds.prefetch(int(prefetch))
    return ds


class _EpochCounter:
    """Hands out epoch numbers, one per iterator, thread-safely."""

    def __init__(self, first: int) -> None:
        self._counter = itertools.count(first)
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            return next(self._counter)
