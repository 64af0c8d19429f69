"""Random streams: a generator per batch, and the global generators of workers.

Pure: numpy and the standard library only, no I/O; tested on its own
(tests/test_streams.py).

NOTE [ Random streams ]
Where a batch sits in training -- the shuffling seed, the epoch, the batch's
place ``k`` in the epoch's order, and the shard -- is all a transform's
randomness may depend on, so that a batch comes out the same whichever
process, thread or adapter makes it, and however a run is interrupted and
resumed. :class:`BatchPlace` holds those four values; its :meth:`rng
<BatchPlace.rng>` is a ``numpy.random.Generator`` (PCG64) seeded by
``SeedSequence(seed, spawn_key=(transforms, epoch, k, shard index, shard
count))``. ``SeedSequence`` hashes its whole input, so different places give
independent streams (numpy's guarantee for distinct spawn keys), and the
shuffle (seeded from ``[seed, epoch]`` in :mod:`h5feed._plan`) never shares
a stream with a transform. A transform that names a third parameter
(``fn(X, Y, rng)``) gets that generator; a two-parameter one is called as
before.

Worker processes also seed numpy's and Python's global generators, once per
epoch, from ``(seed, epoch, worker)`` (:func:`seed_globals`), as PyTorch's
``DataLoader`` does for its workers: an older transform that calls
``np.random`` then draws different numbers in each worker and each epoch
instead of the same numbers in every forked copy. Those draws still depend on
which worker makes which batch; only the ``rng`` argument is reproducible.
See the design note ``docs/design/resume.md``.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BatchPlace", "seed_globals", "takes_rng"]

# Spawn-key domains, so that the streams of transforms and of workers' global
# generators never coincide ("tran", "glob" in ASCII).
_TRANSFORMS = 0x7472616E
_GLOBALS = 0x676C6F62


@dataclass(frozen=True, slots=True)
class BatchPlace:
    """Where a batch sits: what its random stream is drawn from.

    Attributes:
        seed: the shuffling seed.
        epoch: the epoch (0-based).
        batch: the batch's place in the epoch's order (0-based), whatever
            index it was requested under.
        shard: ``(index, count)``, or None for the whole epoch (the same as
            ``(0, 1)``).
    """

    seed: int
    epoch: int
    batch: int
    shard: tuple[int, int] | None = None

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # Sent with every task to a worker process: its values, not a state dict.
        return (BatchPlace, (self.seed, self.epoch, self.batch, self.shard))

    def rng(self) -> np.random.Generator:
        """The batch's generator: the same place gives the same stream, anywhere.

        Example:
            >>> a = BatchPlace(7, 2, 5).rng().integers(0, 2**31, 3)
            >>> b = BatchPlace(7, 2, 5, (0, 1)).rng().integers(0, 2**31, 3)
            >>> c = BatchPlace(7, 2, 6).rng().integers(0, 2**31, 3)
            >>> bool((a == b).all()), bool((a == c).all())
            (True, False)
        """
        index, count = self.shard or (0, 1)
        seq = np.random.SeedSequence(self.seed, spawn_key=(_TRANSFORMS, self.epoch, self.batch, index, count))
        return np.random.Generator(np.random.PCG64(seq))


def seed_globals(seed: int, epoch: int, worker: int) -> None:
    """Seed numpy's and Python's global generators for ``worker`` in ``epoch``.

    Called in a worker process (never in the training process) before the
    first batch it makes in an epoch.
    """
    seq = np.random.SeedSequence(seed, spawn_key=(_GLOBALS, epoch, worker))
    np.random.seed(seq.generate_state(4))
    random.seed(int.from_bytes(seq.generate_state(2, np.uint64).tobytes(), "little"))


def takes_rng(fn: Callable[..., Any]) -> bool:
    """Whether a transform takes the batch's generator: a third positional parameter.

    ``fn(X, Y, rng)`` and ``fn(X, Y, rng=None)`` do; ``fn(X, Y)`` and
    ``fn(*args)`` do not (a wrapper made with ``functools.wraps`` is judged
    by what it wraps). A callable whose signature cannot be read is called
    with two arguments.

    Example:
        >>> takes_rng(lambda X, Y, rng: (X, Y)), takes_rng(lambda X, Y: (X, Y)), takes_rng(print)
        (True, False, False)
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    named = [
        p for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(named) < 3:
        return False
    try:
        sig.bind(None, None, None)
    except TypeError:
        return False
    return True
