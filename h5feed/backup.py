"""``h5feed.BackupAndRestore``: Keras's backup callback, resuming the batch stream too.

Importing this module imports Keras; ``import h5feed`` alone does not.

NOTE [ Exact resume in fit ]
Keras's own ``BackupAndRestore`` saves the weights (with the optimizer's
state) and the epoch, and on restart begins that epoch again from its first
batch: a run killed mid-epoch trains the epoch's first batches twice. This
subclass saves, with every backup, the position of the ``H5Sequence`` that
``fit`` trains on, counted in batches *trained*, not served (the sequence,
its workers and tf.data read ahead of the model), and on restart puts the
sequence there (:meth:`H5Sequence.load_state_dict
<h5feed.sequence.H5Sequence.load_state_dict>`). The resumed epoch then has
only its remaining batches, so ``fit``'s first epoch after a restart runs
out of data early, which Keras handles as the end of the epoch (its "ran out
of data" warning is silenced for that epoch only); every later epoch is
whole.

A backup is atomic: the weights go to a new file, then one JSON file (the
commit point, written to a temporary name and renamed) names it, with the
Keras epoch and the sequence's state; older weight files are removed after.
A kill at any instant leaves either the old backup or the new one, never
weights of one with the position of another. The record also holds the
states of the model's seed generators (``keras.random.SeedGenerator``:
Dropout and the random layers), which Keras's weights files leave out, so
that a resumed model draws the random numbers the uninterrupted one would. A backup that falls on an
epoch's last batch is taken at the end of that epoch instead (after
validation), so that a restart never begins with an empty epoch.
See the design note ``docs/design/resume.md``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import warnings
from typing import Any

import numpy as np

from ._args import check_bool
from ._keras import keras
from ._publish import publish, remove_stale_temporaries, temporary_path
from .sequence import H5Sequence

__all__ = ["BackupAndRestore"]

logger = logging.getLogger("h5feed")

STATE_FILE = "h5feed_state.json"
_WEIGHTS_PREFIX = "h5feed-"
_WEIGHTS_SUFFIX = ".weights.h5"
_BACKUP_VERSION = 1
_KERAS_METADATA = "training_metadata.json"  # what keras.callbacks.BackupAndRestore writes
# What Keras warns when an epoch's data ends before its steps do: expected
# once, in the epoch a restart resumes (NOTE above).
_RAN_OUT = "Your input ran out of data"


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` that also resumes the ``H5Sequence``'s batches.

    A drop-in: the same arguments and the same use. With every backup it
    also saves, atomically and beside the weights, the position of the
    :class:`~h5feed.sequence.H5Sequence` that ``fit`` trains on; when the
    same script runs again after a crash, training resumes at the epoch and
    the batch of the last backup, so that the batches trained before the
    backup followed by those trained after the restart are exactly the
    batches of an uninterrupted run, none repeated, none skipped -- with 0
    workers, worker threads or worker processes. What stays inexact is
    Keras's own bookkeeping of the resumed epoch (its logged loss and
    metrics average only the batches after the restart; callbacks see its
    step numbers start at 0); see the guide's "Resuming after a crash".

    Args:
        backup_dir: the folder of the backup, as for Keras's callback; used
            by this run only. It holds ``h5feed_state.json`` and the weights
            file it names (``h5feed-<token>.weights.h5``).
        save_freq: ``"epoch"`` to back up at the end of every epoch, or an
            int ``n`` to back up every ``n`` batches.
        double_checkpoint: also keep the previous backup, to restore from
            when the last one's weights cannot be read.
        delete_checkpoint: remove ``backup_dir`` when ``fit`` ends.
        sequence: the sequence to back up and restore, which must be the
            one ``fit`` trains on (default: the ``H5Sequence`` passed to
            ``fit`` as ``x``, found when ``fit`` starts).

    Raises:
        ValueError: (when ``fit`` starts) the data is not an ``H5Sequence``,
            ``steps_per_epoch`` differs from ``len(seq)``, or
            ``backup_dir`` holds a backup of Keras's own callback (no
            sequence position to resume).
        StateMismatchError: (when ``fit`` starts) the backup was saved for
            another file, selection or option set.

    Example:
        >>> seq = h5feed.H5Sequence("data.h5", "train", batch_size=64, seed=0)  # doctest: +SKIP
        >>> backup = h5feed.BackupAndRestore("/scratch/run1/backup", save_freq=500)  # doctest: +SKIP
        >>> model.fit(seq, epochs=20, callbacks=[backup])  # doctest: +SKIP
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
        *,
        sequence: H5Sequence | None = None,
    ) -> None:
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or an int >= 1. Received: {save_freq!r}")
        if sequence is not None and not isinstance(sequence, H5Sequence):
            raise TypeError(f"sequence must be an H5Sequence or None. Received: {sequence!r}")
        # double_checkpoint is set here: only later Keras 3 releases take it,
        # and only this class reads it.
        delete_checkpoint = check_bool(delete_checkpoint, "delete_checkpoint")
        super().__init__(os.fspath(backup_dir), save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        self.double_checkpoint = check_bool(double_checkpoint, "double_checkpoint")
        self.sequence = sequence
        self._state_path = os.path.join(self.backup_dir, STATE_FILE)
        self._seq: H5Sequence | None = None  # the sequence of the fit running
        self._seq_epoch = 0  # its epoch in the Keras epoch running
        self._seq_first = 0  # the batch of that epoch the Keras epoch began at
        self._save_at_epoch_end = False
        self._quiet: warnings.catch_warnings | None = None
        # Values of the state no data feeds, after the resumed epoch's last step.
        self._before_phantom: list[tuple[Any, Any]] | None = None

    # -- finding the sequence ------------------------------------------------

    def _find_sequence(self) -> H5Sequence:
        """The sequence ``fit`` trains on: its ``x``, which ``sequence=`` must be when given.

        Keras hands a callback the model, not the data, so the ``x`` of the
        ``fit`` call that runs this callback is read from its frame.
        """
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is self.model:
                break
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            if self.sequence is not None:
                return self.sequence
            raise ValueError(
                "h5feed.BackupAndRestore could not find the fit call that runs it; "
                "pass the sequence trained on: BackupAndRestore(..., sequence=seq)"
            )
        x = frame.f_locals.get("x")
        if not isinstance(x, H5Sequence):
            raise ValueError(
                "h5feed.BackupAndRestore saves the position of an H5Sequence given to fit; "
                f"expected model.fit(H5Sequence(...), ...). Received: x of type {type(x).__name__} "
                "(use keras.callbacks.BackupAndRestore for other data)"
            )
        if self.sequence is not None and x is not self.sequence:
            raise ValueError(
                f"h5feed.BackupAndRestore(sequence=...) must be the sequence fit trains on. "
                f"Expected: {self.sequence!r}. Received: x={x!r}"
            )
        return x

    # -- restoring -------------------------------------------------------------

    def on_train_begin(self, logs: Any = None) -> None:
        seq = self._seq = self._find_sequence()
        steps = self.params.get("steps") if self.params else None
        if steps is not None and steps != len(seq):
            raise ValueError(
                f"h5feed.BackupAndRestore resumes where each fit epoch is one epoch of the sequence; "
                f"expected steps_per_epoch=None or {len(seq)} (len(seq)). Received: {steps!r}"
            )
        record = self._read_record(self._state_path)
        if record is None:
            if os.path.exists(os.path.join(self.backup_dir, _KERAS_METADATA)):
                raise ValueError(
                    f"{self.backup_dir}: holds a backup of keras.callbacks.BackupAndRestore, without the "
                    "sequence's position; resume it with that callback, or remove the folder"
                )
            self._remove_unnamed_weights()
            return
        try:
            self._restore(seq, record)
        except OSError:
            # The weights cannot be read (a damaged file): the previous
            # backup, when double_checkpoint kept one.
            previous = self._read_record(self._state_path + ".bkp")
            if previous is None:
                raise
            logger.warning("%s: the last backup's weights cannot be read; restoring the one before", self.backup_dir)
            self._restore(seq, previous)
        self._remove_unnamed_weights()

    def _restore(self, seq: H5Sequence, record: dict[str, Any]) -> None:
        model = self.model
        if not model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, your model must be built before you call `fit()`. "
                f"Model {model} is unbuilt. You can build it beforehand by calling it on a batch of data."
            )
        # The sequence first: a state of another sequence is refused before
        # anything changes.
        seq.load_state_dict(record["sequence"])
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(self.backup_dir, record["weights"]))
        self._set_random_state(record.get("random_state"))
        model._initial_epoch = record["epoch"]
        self._current_epoch = record["epoch"]
        logger.info(
            "restored %s: epoch %d, the sequence at batch %d of its epoch %d",
            self.backup_dir, record["epoch"], record["sequence"]["batch"], record["sequence"]["epoch"],
        )

    def _read_record(self, path: str) -> dict[str, Any] | None:
        try:
            with open(path, encoding="utf-8") as fh:
                record = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a backup record of h5feed.BackupAndRestore: {exc}") from exc
        if not isinstance(record, dict) or record.get("h5feed_backup") != _BACKUP_VERSION:
            raise ValueError(
                f"{path}: expected a backup record of version {_BACKUP_VERSION}. Received: "
                f"{record.get('h5feed_backup') if isinstance(record, dict) else record!r}"
            )
        return record

    # -- the epoch and batch running -----------------------------------------

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        # Keras's callback counts the epoch only at epoch ends, so a backup
        # in the first epoch after a restart would record epoch 0.
        self._current_epoch = epoch
        seq = self._seq
        if seq is None:  # fit's on_train_begin did not run (a bare callback call)
            return
        self._seq_epoch, self._seq_first = seq.epoch, seq._start
        self._save_at_epoch_end = False
        if self._seq_first and self._quiet is None:
            # The resumed epoch ends early by design (NOTE above).
            self._quiet = warnings.catch_warnings()
            self._quiet.__enter__()
            warnings.filterwarnings("ignore", message=_RAN_OUT, category=UserWarning)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        seq = self._seq
        if seq is not None and self._seq_first and self._seq_first + batch + 1 >= seq._n_batches:
            # The resumed epoch's last step: on the TensorFlow backend, the
            # step that then finds no data still runs the updates that no
            # data feeds (the optimizer's iteration count, the seed
            # generators' states), so they are put back at the epoch's end.
            self._before_phantom = [(v, keras.ops.convert_to_numpy(v)) for v in self._dataless_state()]
        if not self._should_save_on_batch(batch) or seq is None:
            return
        trained = min(self._seq_first + batch + 1, seq._n_batches)
        if trained >= seq._n_batches:
            # The epoch's last batch: back up once the epoch has ended.
            self._save_at_epoch_end = True
            return
        self._backup(self._current_epoch, seq.state_dict(epoch=self._seq_epoch, batch=trained))

    def _seed_states(self) -> list[Any]:
        """The state variables of the model's seed generators, in a fixed order."""
        return [v for v in self.model.non_trainable_variables if v.name == "seed_generator_state"]

    def _set_random_state(self, saved: Any) -> None:
        if saved is None:
            return
        states = self._seed_states()
        if len(saved) != len(states) or any(np.shape(v) != np.shape(s) for v, s in zip(states, saved)):
            logger.warning(
                "%s: the model has %d seed generators, the backup %d: their states are not restored",
                self.backup_dir, len(states), len(saved),
            )
            return
        for variable, value in zip(states, saved):
            variable.assign(np.asarray(value, dtype=keras.ops.convert_to_numpy(variable).dtype))

    def _dataless_state(self) -> list[Any]:
        """The variables a training step may update without data: the
        optimizer's iteration count and the model's non-trainable variables
        (seed generators' states; the others do not change without data)."""
        found = list(self.model.non_trainable_variables)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and getattr(optimizer, "iterations", None) is not None:
            found.append(optimizer.iterations)
        return found

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None
        if self._before_phantom is not None:
            for variable, value in self._before_phantom:
                variable.assign(value)
            self._before_phantom = None
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        if self._seq is not None and (self.save_freq == "epoch" or self._save_at_epoch_end):
            # The next Keras epoch trains the next epoch of the sequence, whole.
            self._backup(epoch + 1, self._seq.state_dict(epoch=self._seq_epoch + 1, batch=0))
        self._save_at_epoch_end = False

    def on_train_end(self, logs: Any = None) -> None:
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None
        self._seq = None
        super().on_train_end(logs)

    # -- saving ------------------------------------------------------------------

    def _backup(self, epoch: int, sequence_state: dict[str, Any]) -> None:
        """Save the weights and the position atomically (NOTE above)."""
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"{_WEIGHTS_PREFIX}{secrets.token_hex(8)}{_WEIGHTS_SUFFIX}"
        weights = os.path.join(self.backup_dir, name)
        self.model.save_weights(weights, overwrite=True)
        with open(weights, "rb") as fh:
            os.fsync(fh.fileno())
        if self.double_checkpoint:
            previous = self._read_record(self._state_path)
            if previous is not None:
                _write_json(self._state_path + ".bkp", previous)
        _write_json(
            self._state_path,
            {
                "h5feed_backup": _BACKUP_VERSION,
                "epoch": int(epoch),
                "weights": name,
                "sequence": sequence_state,
                "random_state": [keras.ops.convert_to_numpy(v).tolist() for v in self._seed_states()],
            },
        )
        self._remove_unnamed_weights()

    def _remove_unnamed_weights(self) -> None:
        """Remove weight files no record names (replaced, or saved by a run
        killed before its commit), and the temporary records of killed runs."""
        for path in (self._state_path, self._state_path + ".bkp"):
            remove_stale_temporaries(path)
        keep = set()
        for path in (self._state_path, self._state_path + ".bkp"):
            try:
                record = self._read_record(path)
            except ValueError:
                continue
            if record is not None:
                keep.add(record.get("weights"))
        try:
            names = os.listdir(self.backup_dir)
        except OSError:
            return
        for name in names:
            if name.startswith(_WEIGHTS_PREFIX) and name.endswith(_WEIGHTS_SUFFIX) and name not in keep:
                try:
                    os.unlink(os.path.join(self.backup_dir, name))
                except OSError:
                    pass


def _write_json(path: str, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` atomically: a synced temporary file, renamed."""
    tmp = temporary_path(path)  # removes what killed runs left

    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(value, fh)
        publish(tmp, path, overwrite=True)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
