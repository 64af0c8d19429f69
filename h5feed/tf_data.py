"""``tf.data`` input pipelines over an h5feed file.

:func:`tf_dataset` (and :meth:`H5Sequence.to_tf_dataset
<h5feed.sequence.H5Sequence.to_tf_dataset>`) give a ``tf.data.Dataset`` of the
very batches an :class:`~h5feed.sequence.H5Sequence` gives: the same rows in
the same order for the same seed and epoch, read by the same reader with the
same plans. This module sits on top of the sequence and uses only its public
API; the dataset itself is built by :mod:`h5feed._tf` (NOTE [ Epochs of a
tf.data dataset ] there).

Importing this module imports TensorFlow.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import _tf
from ._tf import tf

if TYPE_CHECKING:
    from .sequence import H5Sequence

__all__ = ["dataset_from_sequence", "element_spec", "tf_dataset"]

_AUTOTUNE = -1  # tf.data.AUTOTUNE, without needing TensorFlow in signatures
_NOT_FOR_TF_DATA = ("workers", "use_multiprocessing", "max_queue_size")


def element_spec(seq: H5Sequence) -> Any:
    """The ``element_spec`` of ``seq``'s batches.

    The batch dimension is None (the last batch may be short). Without a
    ``transform`` it comes from the file's layout; with one the shapes and
    dtypes are whatever it returns, so they are taken from one batch read
    through it (:meth:`H5Sequence.example_batch
    <h5feed.sequence.H5Sequence.example_batch>`).

    Returns:
        ``(x_spec,)`` or ``(x_spec, y_spec)``, each a ``tf.TensorSpec`` or a
        tuple or dict of them, mirroring ``seq[i]``.
    """
    return _tf.spec_like(seq.example_batch())


def dataset_from_sequence(
    seq: H5Sequence, *, first_epoch: int | None = None, prefetch: int | None = _AUTOTUNE
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of ``seq``'s batches, one epoch per iteration.

    The same as ``seq.to_tf_dataset(first_epoch=..., prefetch=...)``
    (:meth:`H5Sequence.to_tf_dataset <h5feed.sequence.H5Sequence.to_tf_dataset>`).

    Args:
        seq: the sequence whose rows, order, columns, shard and transform the
            dataset takes. It is not changed.
        first_epoch: the epoch the first iteration reads, whole (default:
            where ``seq`` stands: its epoch, from the batch a loaded state
            names).
        prefetch: batches to read ahead in the background; ``-1``
            (``tf.data.AUTOTUNE``) lets tf.data decide, 0 or None turns it off.

    Returns:
        A dataset whose elements are ``seq[i]`` for ``i`` in
        ``range(len(seq))``, as tensors with :func:`element_spec`.
    """
    return seq.to_tf_dataset(first_epoch=first_epoch, prefetch=prefetch)


def tf_dataset(
    path: str | os.PathLike[str],
    split: str | None = None,
    *,
    first_epoch: int | None = None,
    prefetch: int | None = _AUTOTUNE,
    state: dict[str, Any] | None = None,
    **options: Any,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of batches from one h5feed file.

    Takes the same arguments as :class:`~h5feed.sequence.H5Sequence` (``ids``,
    ``batch_size``, ``shuffle``, ``seed``, ``one_hot``, ``x``, ``y``,
    ``drop_remainder``, ``transform``, ``block_rows``, ``block_window``,
    ``shard``, ``allow_virtual``, ``readahead``, ``cache_bytes``,
    ``decode_threads``, ``sample_weight``) and gives the same batches in the
    same order for the same seed and epoch.

    Args:
        path: the h5feed file.
        split: a split name, or None for all rows.
        first_epoch: the epoch the first iteration reads (default 0); each
            further iteration (each ``model.fit`` epoch) reads the next.
        prefetch: batches read ahead (``-1``: tf.data.AUTOTUNE; 0: none).
        state: a saved position (:meth:`H5Sequence.state_dict
            <h5feed.sequence.H5Sequence.state_dict>` of a sequence with the
            same file and options): the first iteration reads the rest of
            the state's epoch, from the batch after those it counts as
            served; the next iterations are the following epochs, whole.
            The dataset's cardinality is then unknown (its first iteration
            is shorter).
        **options: H5Sequence options.

    Raises:
        TypeError: a Keras worker option (``workers``, ...), which tf.data
            does not use, or an unknown option.
        ValueError: both ``first_epoch`` and ``state``.
        StateMismatchError: ``state`` was saved for another file,
            selection or option set.

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
    if state is not None and first_epoch is not None:
        raise ValueError("pass first_epoch or state, not both: a state names its epoch")
    from .sequence import H5Sequence

    seq = H5Sequence(path, split, **options)
    if state is None:
        return seq.to_tf_dataset(first_epoch=first_epoch or 0, prefetch=prefetch)
    seq.load_state_dict(state)
    return seq.to_tf_dataset(prefetch=prefetch)
