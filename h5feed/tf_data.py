"""``tf.data`` input pipelines over an h5feed file.

:func:`tf_dataset` (and :meth:`H5Sequence.to_tf_dataset`) give a
``tf.data.Dataset`` of the very batches an :class:`~h5feed.sequence.H5Sequence`
gives: the same rows in the same order for the same seed and epoch, read by
the same :class:`~h5feed.reader.Reader` with the same plans. Nothing is
planned here.

NOTE [ Epochs of a tf.data dataset ]
A ``tf.data.Dataset`` has no ``on_epoch_end``; Keras (and a custom loop)
starts a new iterator for every epoch instead. The dataset built here counts
its iterators: iterator ``k`` reads epoch ``first_epoch + k`` (by default the
sequence's current epoch), each from a private copy of the sequence with its
own file handle, so two live iterators never disturb each other or the
sequence they came from. ``model.fit(seq)`` calls ``on_epoch_end`` once before
training, so it trains on epochs 1, 2, ...; ``model.fit(seq.to_tf_dataset())``
on epochs 0, 1, ... -- pass ``first_epoch=1`` to match it exactly.

Importing this module imports TensorFlow.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    import tensorflow as tf
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("h5feed.tf_dataset needs TensorFlow: pip install tensorflow") from exc

if TYPE_CHECKING:
    from .sequence import H5Sequence

__all__ = ["dataset_from_sequence", "element_spec", "tf_dataset"]

_AUTOTUNE = -1  # tf.data.AUTOTUNE, without needing TensorFlow in signatures
_NOT_FOR_TF_DATA = ("workers", "use_multiprocessing", "max_queue_size")


def _column_spec(seq: H5Sequence, name: str) -> tf.TensorSpec:
    col = seq.layout.column(name)
    return tf.TensorSpec((None, *col.row_shape), tf.as_dtype(col.dtype.newbyteorder("=")), name=None)


def _spec_of(seq: H5Sequence, spec: Any) -> Any:
    if isinstance(spec, str):
        return _column_spec(seq, spec)
    if isinstance(spec, dict):
        return {key: _column_spec(seq, name) for key, name in spec.items()}
    return tuple(_column_spec(seq, name) for name in spec)


def _spec_of_batch(batch: Any) -> Any:
    return tf.nest.map_structure(
        lambda a: tf.TensorSpec((None, *np.shape(a)[1:]), tf.as_dtype(np.asarray(a).dtype)), batch
    )


def element_spec(seq: H5Sequence) -> Any:
    """The ``element_spec`` of ``seq``'s batches, from the file's layout.

    The batch dimension is None (the last batch may be short). With a
    ``transform`` the shapes and dtypes are whatever it returns, so they are
    taken from one batch read through it.

    Returns:
        ``(x_spec,)`` or ``(x_spec, y_spec)``, each a ``tf.TensorSpec`` or a
        tuple or dict of them, mirroring ``seq[i]``.
    """
    if seq.transform is not None:
        probe = seq._clone(seq.epoch)
        try:
            return _spec_of_batch(probe[0])
        finally:
            probe.close()
    x = _spec_of(seq, seq.x)
    if seq.y is None:
        return (x,)
    if seq.one_hot:
        return (x, tf.TensorSpec((None, seq.layout.n_classes), tf.float32))
    return (x, _spec_of(seq, seq.y))


def dataset_from_sequence(
    seq: H5Sequence, *, first_epoch: int | None = None, prefetch: int | None = _AUTOTUNE
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of ``seq``'s batches, one epoch per iteration.

    Args:
        seq: the sequence whose rows, order, columns, shard and transform the
            dataset takes. It is not changed.
        first_epoch: the epoch the first iteration reads (default:
            ``seq.epoch``); see NOTE [ Epochs of a tf.data dataset ].
        prefetch: batches to read ahead in the background; ``-1``
            (``tf.data.AUTOTUNE``) lets tf.data decide, 0 or None turns it off.

    Returns:
        A dataset whose elements are ``seq[i]`` for ``i`` in
        ``range(len(seq))``, as tensors with :func:`element_spec`.
    """
    if first_epoch is None:
        first_epoch = seq.epoch
    if isinstance(first_epoch, bool) or not isinstance(first_epoch, (int, np.integer)) or first_epoch < 0:
        raise ValueError(f"first_epoch must be an int >= 0. Received: {first_epoch!r}")
    if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < -1):
        raise ValueError(f"prefetch must be an int >= -1 or None. Received: {prefetch!r}")
    spec = element_spec(seq)
    epochs = _EpochCounter(int(first_epoch))

    def batches() -> Iterator[Any]:
        clone = seq._clone(epochs.next())
        try:
            for i in range(len(clone)):
                yield clone[i]
        finally:
            clone.close()

    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    # Every epoch has len(seq) batches; saying so lets Keras size its
    # progress bar and epochs instead of running into the end of the data.
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(seq)))
    if seq.shard is not None:
        # Already sharded by h5feed; tf.distribute must not shard it again.
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


def tf_dataset(
    path: str | os.PathLike[str],
    split: str | None = None,
    *,
    first_epoch: int = 0,
    prefetch: int | None = _AUTOTUNE,
    **options: Any,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of batches from one h5feed file.

    Takes the same arguments as :class:`~h5feed.sequence.H5Sequence` (``ids``,
    ``batch_size``, ``shuffle``, ``seed``, ``one_hot``, ``x``, ``y``,
    ``drop_remainder``, ``transform``, ``block_rows``, ``block_window``,
    ``shard``, ``allow_virtual``) and gives the same batches in the same
    order for the same seed and epoch.

    Args:
        path: the h5feed file.
        split: a split name, or None for all rows.
        first_epoch: the epoch the first iteration reads; each further
            iteration (each ``model.fit`` epoch) reads the next.
        prefetch: batches read ahead (``-1``: tf.data.AUTOTUNE; 0: none).
        **options: H5Sequence options.

    Raises:
        TypeError: a Keras worker option (``workers``, ...), which tf.data
            does not use, or an unknown option.

    Example:
        >>> ds = h5feed.tf_dataset("data.h5", "train", batch_size=64, seed=0)  # doctest: +SKIP
        >>> model.fit(ds, epochs=10)  # doctest: +SKIP
    """
    bad = sorted(set(options) & set(_NOT_FOR_TF_DATA))
    if bad:
        raise TypeError(
            f"tf_dataset() does not take {bad!r}: tf.data reads in its own threads "
            "(use prefetch=, or the H5Sequence for Keras workers)"
        )
    from .sequence import H5Sequence

    seq = H5Sequence(path, split, **options)
    return dataset_from_sequence(seq, first_epoch=first_epoch, prefetch=prefetch)
