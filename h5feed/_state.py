"""Saved positions: the state dicts of the sequence and the PyTorch sampler.

Pure (json, hashlib, no I/O); tested on its own (tests/test_state.py).

NOTE [ Resume states ]
An epoch's order is a pure function of ``(seed, epoch)`` and the options
(:mod:`h5feed._plan`), and a batch's random stream of its place
(:mod:`h5feed._streams`), so where a reader stands is two numbers: the epoch,
and how many batches of that epoch's order were already served. A state is
those two numbers, the seed, and a *fingerprint* of everything else that
decides which rows a batch holds: the file (a digest of its completion
record, which changes whenever any dataset does, and not when the file moves),
the selection (the split's name, or a digest of the rows that ``ids`` chose)
and the options (batch size, shuffling, shard, columns). It is a small dict
of JSON values, so it can be saved anywhere (Keras's backup folder, a torch
checkpoint). Loading compares the fingerprint key by key and refuses a state
saved for another file, selection or option set, naming every key that
differs, rather than resume somewhere else without a word.
See the design note ``docs/design/resume.md``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import StateMismatchError

__all__ = ["STATE_VERSION", "file_digest", "jsonable", "make_state", "read_state", "rows_digest", "selection_name"]

STATE_VERSION = 1
_KEYS = ("h5feed_state", "kind", "epoch", "batch", "seed", "fingerprint")


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, numpy scalars plain).

    Example:
        >>> jsonable({"x": ("a", "b"), "shard": (0, 2), "n": np.int64(3)})
        {'x': ['a', 'b'], 'shard': [0, 2], 'n': 3}
    """
    return json.loads(json.dumps(value, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serializable: {value!r}")


def file_digest(completion: Mapping[str, Any]) -> str:
    """The file's part of a fingerprint: a digest of its completion record.

    The record holds the row count and a SHA-256 of every dataset, so the
    digest changes with any change of the data and not with the file's path.
    """
    text = json.dumps(jsonable(dict(completion)), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def rows_digest(rows: np.ndarray) -> str:
    """A digest of selected row numbers (for a selection by ``ids``).

    Example:
        >>> rows_digest(np.array([3, 1])) == rows_digest([3, 1]), rows_digest([1, 3]) == rows_digest([3, 1])
        (True, False)
    """
    data = np.ascontiguousarray(np.asarray(rows, dtype="<i8")).tobytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def selection_name(split: str | None, ids: Any, rows: np.ndarray | None) -> str:
    """The selection's part of a fingerprint: the split, all rows, or a digest of the rows ``ids`` chose.

    ``rows`` is read only for ``ids`` (None otherwise: a split or all rows
    need no array of their rows).

    Example:
        >>> selection_name("train", None, np.arange(3)), selection_name(None, None, np.arange(3))
        ("split 'train'", 'all rows')
    """
    if split is not None:
        return f"split {split!r}"
    return "all rows" if ids is None else f"ids {rows_digest(rows)}"


def make_state(kind: str, *, epoch: int, batch: int, seed: int, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """A state: ``batch`` batches of ``epoch`` were served; JSON values only.

    Example:
        >>> s = make_state("H5Sequence", epoch=2, batch=5, seed=0, fingerprint={"batch_size": 8})
        >>> s["epoch"], s["batch"], json.loads(json.dumps(s)) == s
        (2, 5, True)
    """
    return {
        "h5feed_state": STATE_VERSION,
        "kind": kind,
        "epoch": int(epoch),
        "batch": int(batch),
        "seed": int(seed),
        "fingerprint": jsonable(dict(fingerprint)),
    }


def read_state(
    state: Any,
    kind: str,
    *,
    fingerprint: Mapping[str, Any],
    seed: int | None,
    n_batches: int,
    where: str,
) -> tuple[int, int, int]:
    """Check a saved ``state`` against the reader that loads it.

    Args:
        state: what :func:`make_state` made (possibly through JSON).
        kind: the class of the loading reader (``"H5Sequence"``, ...).
        fingerprint: the loading reader's fingerprint.
        seed: its seed, or None when it has none of its own (it takes the
            state's).
        n_batches: batches in one of its epochs.
        where: names the reader in messages.

    Returns:
        ``(epoch, batch, seed)``.

    Raises:
        StateMismatchError: not a state, another kind's, from a newer h5feed,
            or saved for another file, selection, option set or seed (every
            key that differs is named).

    Example:
        >>> fp = {"batch_size": 8, "shuffle": True}
        >>> read_state(make_state("H5Sequence", epoch=1, batch=3, seed=5, fingerprint=fp), "H5Sequence",
        ...            fingerprint=fp, seed=5, n_batches=10, where="seq")
        (1, 3, 5)
        >>> read_state(make_state("H5Sequence", epoch=1, batch=3, seed=5, fingerprint=fp), "H5Sequence",
        ...            fingerprint=dict(fp, batch_size=16), seed=5, n_batches=10, where="seq")
        Traceback (most recent call last):
        ...
        h5feed.errors.StateMismatchError: seq: the state was saved for another sequence: batch_size: expected 16 (this one). Received: 8 (the state's)
    """
    if not isinstance(state, Mapping) or "h5feed_state" not in state:
        raise StateMismatchError(f"{where}: expected a state from state_dict(). Received: {_short(state)}")
    if state["h5feed_state"] != STATE_VERSION:
        raise StateMismatchError(
            f"{where}: the state has version {state['h5feed_state']!r}; this h5feed reads version {STATE_VERSION}"
        )
    missing = [key for key in _KEYS if key not in state]
    if missing:
        raise StateMismatchError(f"{where}: the state lacks {missing!r}. Received: {_short(state)}")
    if state["kind"] != kind:
        raise StateMismatchError(f"{where}: expected a state of a {kind}. Received: one of a {state['kind']!r}")
    theirs = state["fingerprint"]
    if not isinstance(theirs, Mapping):
        raise StateMismatchError(f"{where}: the state's fingerprint is not a dict. Received: {_short(theirs)}")
    ours = jsonable(dict(fingerprint))
    diffs = [
        f"{key}: expected {ours.get(key)!r} (this one). Received: {theirs.get(key)!r} (the state's)"
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key)
    ]
    if seed is not None and state["seed"] != seed:
        diffs.append(f"seed: expected {seed!r} (this one). Received: {state['seed']!r} (the state's)")
    if diffs:
        noun = "sequence" if kind == "H5Sequence" else kind
        raise StateMismatchError(f"{where}: the state was saved for another {noun}: {'; '.join(diffs)}")
    epoch, batch, saved_seed = state["epoch"], state["batch"], state["seed"]
    for name, value, high in (("epoch", epoch, None), ("batch", batch, n_batches), ("seed", saved_seed, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (high is not None and value > high):
            bound = f"an int in [0, {high}]" if high is not None else "an int >= 0"
            raise StateMismatchError(f"{where}: the state's {name} must be {bound}. Received: {value!r}")
    return epoch, batch, saved_seed


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
