"""Checking the arguments users pass: one implementation for the API and the CLI.

Every public function and class of h5feed (the sequence, the adapters, the
writer, the converters) and every command-line option that takes a count, a
flag or a shard goes through these helpers, so the same mistake gets the same
message everywhere. Following h5py and PyTorch, a ``bool`` is not an int, and
numpy integers are ints.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["check_bool", "check_int", "check_shard", "int_at_least", "shard_arg", "shard_from_environment"]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int,
    none_ok: bool = False,
    error: type[Exception] = ValueError,
) -> Any:
    """``value`` as a plain int, or ``error`` naming ``name``.

    Args:
        value: what the caller passed.
        name: the argument's name, for the message.
        minimum: the smallest value allowed.
        none_ok: also accept None (returned as None).
        error: the exception class for a value that is not an int (a value
            below ``minimum`` is always a :class:`ValueError`).

    Example:
        >>> check_int(np.int64(3), "batch_size", minimum=1)
        3
        >>> check_int(True, "batch_size", minimum=1)
        Traceback (most recent call last):
        ValueError: batch_size must be an int >= 1. Received: True
    """
    if value is None and none_ok:
        return None
    if not _is_int(value) or value < minimum:
        kind = error if not _is_int(value) else ValueError
        raise kind(f"{name} must be an int >= {minimum}{' or None' if none_ok else ''}. Received: {value!r}")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a plain bool, or a :class:`TypeError` naming ``name``.

    Example:
        >>> check_bool(np.True_, "shuffle")
        True
        >>> check_bool(1, "shuffle")
        Traceback (most recent call last):
        TypeError: shuffle must be a bool. Received: 1
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool. Received: {value!r}")
    return bool(value)


def check_shard(shard: Any) -> tuple[int, int] | None:
    """``(index, count)`` with ``0 <= index < count``, or None.

    ``"auto"`` is the part of a Slurm array job (:func:`shard_from_environment`).

    Example:
        >>> check_shard((1, 4))
        (1, 4)
        >>> check_shard((4, 4))
        Traceback (most recent call last):
        ValueError: shard must satisfy 0 <= index < count. Received: (4, 4)
    """
    if shard is None:
        return None
    if isinstance(shard, str) and shard == "auto":
        return shard_from_environment()
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (index, count). Received: {shard!r}") from None
    if not (_is_int(index) and _is_int(count)):
        raise ValueError(f"shard must be (index, count) of ints. Received: {shard!r}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must satisfy 0 <= index < count. Received: {shard!r}")
    return int(index), int(count)


# The job array variables a Slurm array task sees (sbatch --array=MIN-MAX[:STEP]).
_SLURM_ID, _SLURM_COUNT = "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"
_SLURM_MIN, _SLURM_STEP = "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"


def shard_from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(index, count)`` of this task of a Slurm array job: ``shard="auto"``.

    The part is ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) //
    SLURM_ARRAY_TASK_STEP`` of ``SLURM_ARRAY_TASK_COUNT`` (MIN 0 and STEP 1
    when unset), so ``--array=1-8`` and ``--array=0-14:2`` work as
    ``--array=0-7`` does; an array of scattered IDs (``--array=1,5,9``)
    does not number its tasks from 0 and is refused.

    Raises:
        ValueError: not in a Slurm array task (the variables unset), or
            values that do not make a part ``0 <= index < count``.

    Example:
        >>> shard_from_environment({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8",
        ...                         "SLURM_ARRAY_TASK_MIN": "1"})
        (2, 8)
    """
    env = os.environ if environ is None else environ
    missing = [name for name in (_SLURM_ID, _SLURM_COUNT) if not env.get(name)]
    if missing:
        raise ValueError(
            f"shard='auto' (--shard auto) reads the part from a Slurm array job, but {' and '.join(missing)} "
            "is not set; run it as a task of `sbatch --array=0-N`, or give the part as I/N"
        )
    try:
        task, count = int(env[_SLURM_ID]), int(env[_SLURM_COUNT])
        first, step = int(env.get(_SLURM_MIN) or 0), int(env.get(_SLURM_STEP) or 1)
    except ValueError:
        shown = {k: env.get(k) for k in (_SLURM_ID, _SLURM_COUNT, _SLURM_MIN, _SLURM_STEP) if k in env}
        raise ValueError(f"shard='auto': the Slurm array variables are not integers. Received: {shown!r}") from None
    index, off = divmod(task - first, max(step, 1))
    if count < 1 or off or not 0 <= index < count:
        raise ValueError(
            f"shard='auto': task {task} of an array of {count} (first {first}, step {step}) is not part "
            f"0..{count - 1}; use --array=MIN-MAX[:STEP], not a list of task IDs"
        )
    return index, count


# -- argparse types: the same rules on the command line --------------------------


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers ``>= minimum``.

    Example:
        >>> int_at_least(1)("8")
        8
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}. Received: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}. Received: {text!r}")
        return value

    return parse


def shard_arg(text: str) -> tuple[int, int]:
    """An argparse ``type`` for ``I/N``: part ``I`` (from 0) of ``N``, or
    ``auto`` (:func:`shard_from_environment`).

    Example:
        >>> shard_arg("2/8")
        (2, 8)
    """
    if text == "auto":
        try:
            return shard_from_environment()
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N like 0/8 (part I of N, from 0). Received: {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N. Received: {text!r}")
    return index, count
