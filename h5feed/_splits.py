"""Pure planning of splits: rows (and their groups and classes) -> rows per split.

:func:`plan_splits` takes what it needs as arrays and returns a
:class:`SplitPlan`; it imports numpy only and touches no file
(:mod:`h5feed.splits` reads the file and writes the plan).

The rules:

- Without groups every row is its own group, and the rows are shuffled and
  cut at the fractions (per class with ``stratify``: each class is cut
  alone, so every split holds each class at the fractions, to a row).
- With groups, each group goes whole to one split. The groups are shuffled
  (by the seed), then taken largest first, and each goes to the split where
  it brings the counts closest to their targets: the split that minimises
  the squared distance between the counts held and ``fraction * total``,
  where the counts are the rows (or, with ``stratify``, the rows of each
  class). Without ``stratify`` that is the split with the largest deficit
  of rows. Largest first leaves the small groups to even out the rest.
- The same inputs and seed give the same plan.
- Where whole groups cannot meet a target -- a split with no rows, a class
  whose share in a split is more than :data:`STRATIFY_TOLERANCE` away from
  its share of all rows -- the plan says so in ``notes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["STRATIFY_TOLERANCE", "SplitPlan", "check_fractions", "plan_splits"]

# The largest difference, as a share of a split's rows, between a class's
# share in a split and in the whole file that stratify accepts silently.
STRATIFY_TOLERANCE = 0.05
# Fractions must add up to 1 within this.
_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SplitPlan:
    """Rows per split, and what the plan could not achieve.

    Attributes:
        rows: split name -> its rows, sorted (int64), in the order of the
            fractions given.
        groups: split name -> how many groups it holds.
        class_counts: split name -> rows per class (None without labels).
        notes: one sentence per target missed (a split left empty, a class
            share beyond the tolerance).
    """

    rows: dict[str, np.ndarray]
    groups: dict[str, int]
    class_counts: dict[str, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """``fractions`` as ``{name: float}``: names valid split names, each
    fraction in (0, 1], all adding up to 1.

    Raises:
        ValueError: otherwise, echoing what was given.

    Example:
        >>> check_fractions({"train": 0.8, "test": 0.2})
        {'train': 0.8, 'test': 0.2}
    """
    if not isinstance(fractions, Mapping) or not fractions:
        raise ValueError(f"fractions must be a non-empty {{split: fraction}} mapping. Received: {fractions!r}")
    out: dict[str, float] = {}
    for name, value in fractions.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"split names must be non-empty text without '/'. Received: {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0 < value <= 1:
            raise ValueError(f"fraction of split {name!r} must be a number in (0, 1]. Received: {value!r}")
        out[name] = float(value)
    total = sum(out.values())
    if abs(total - 1) > _SUM_TOLERANCE:
        raise ValueError(f"fractions must add up to 1. Received: {fractions!r} (sum {total:g})")
    return out


def _cut(n: int, fractions: np.ndarray) -> np.ndarray:
    """Counts per split that add up to ``n``, closest to ``n * fractions``
    (largest remainders).

    Example:
        >>> _cut(10, np.array([0.7, 0.15, 0.15])).tolist()
        [7, 2, 1]
    """
    exact = n * fractions
    counts = np.floor(exact).astype(np.int64)
    short = n - int(counts.sum())
    if short:
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def plan_splits(
    n_rows: int,
    fractions: Mapping[str, float],
    *,
    groups: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    n_classes: int | None = None,
    stratify: bool = False,
    seed: int = 0,
) -> SplitPlan:
    """Plan splits of ``n_rows`` rows (rules in the module docstring).

    Args:
        n_rows: the number of rows.
        fractions: ``{split: fraction}``, adding up to 1.
        groups: one key per row (any values ``np.unique`` sorts); rows with
            equal keys go to the same split. None: every row alone.
        labels: class indices per row (for class counts and ``stratify``).
        n_classes: the number of classes (default: the largest label + 1).
        stratify: balance each split's classes too (needs ``labels``).
        seed: the seed of the shuffle.

    Returns:
        The :class:`SplitPlan`.

    Example:
        >>> plan = plan_splits(6, {"a": 0.5, "b": 0.5}, groups=np.array([1, 1, 2, 2, 3, 3]))
        >>> sorted(len(r) for r in plan.rows.values())
        [2, 4]
    """
    fr = check_fractions(fractions)
    names = list(fr)
    share = np.array([fr[n] for n in names])
    if stratify and labels is None:
        raise ValueError("stratify needs class labels (a file whose y holds class indices)")
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        n_classes = int(n_classes if n_classes is not None else (labels.max() + 1 if labels.size else 1))
    rng = np.random.default_rng(seed)
    if groups is None:
        owner = _cut_rows(n_rows, share, labels if stratify else None, n_classes, rng)
        group_of = np.arange(n_rows)
    else:
        keys, group_of = np.unique(np.asarray(groups), return_inverse=True)
        group_of = group_of.reshape(-1)
        owner = _assign_groups(group_of, len(keys), share, labels if stratify else None, n_classes, rng)[group_of]
    rows = {name: np.flatnonzero(owner == k).astype(np.int64) for k, name in enumerate(names)}
    n_groups = {name: int(np.unique(group_of[r]).size) for name, r in rows.items()}
    counts = None
    if labels is not None:
        counts = {name: np.bincount(labels[r], minlength=n_classes)[:n_classes] for name, r in rows.items()}
    return SplitPlan(rows, n_groups, counts, _notes(rows, counts, labels, n_classes, stratify, groups is not None))


def _cut_rows(
    n: int, share: np.ndarray, labels: np.ndarray | None, n_classes: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Split index per row, rows alone: shuffled and cut (per class when
    ``labels`` is given)."""
    owner = np.empty(n, dtype=np.int64)
    order = rng.permutation(n)
    if labels is None:
        owner[order] = np.repeat(np.arange(share.size), _cut(n, share))
        return owner
    for c in range(int(n_classes or 0)):
        members = order[labels[order] == c]
        owner[members] = np.repeat(np.arange(share.size), _cut(members.size, share))
    return owner


def _assign_groups(
    group_of: np.ndarray,
    n_groups: int,
    share: np.ndarray,
    labels: np.ndarray | None,
    n_classes: int | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Split index per group: shuffled, largest first, each to the split
    where it brings the counts closest to their targets (module docstring)."""
    if labels is None:
        counts = np.bincount(group_of, minlength=n_groups).astype(np.float64)[:, None]
    else:
        counts = np.zeros((n_groups, int(n_classes or 1)), dtype=np.float64)
        np.add.at(counts, (group_of, labels), 1)
    target = share[:, None] * counts.sum(axis=0)[None, :]
    held = np.zeros_like(target)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts.sum(axis=1)[order], kind="stable")]
    owner = np.empty(n_groups, dtype=np.int64)
    for g in order.tolist():
        c = counts[g]
        # The change of sum((held - target)**2) when the group joins each split.
        cost = 2 * (held - target) @ c
        k = int(np.argmin(cost))
        held[k] += c
        owner[g] = k
    return owner


def _notes(
    rows: dict[str, np.ndarray],
    counts: dict[str, np.ndarray] | None,
    labels: np.ndarray | None,
    n_classes: int | None,
    stratify: bool,
    grouped: bool,
) -> list[str]:
    notes = []
    why = "the groups are too few or too large to do better" if grouped else "there are too few rows"
    for name, r in rows.items():
        if r.size == 0:
            notes.append(f"split {name!r} is empty: {why}")
    if stratify and counts is not None and labels is not None and labels.size:
        whole = np.bincount(labels, minlength=n_classes)[:n_classes] / labels.size
        for name, c in counts.items():
            if not c.sum():
                continue
            mine = c / c.sum()
            for k in np.flatnonzero(np.abs(mine - whole) > STRATIFY_TOLERANCE + 1e-12).tolist():
                notes.append(
                    f"split {name!r}: class {k} is {mine[k]:.1%} of its rows but {whole[k]:.1%} of all rows "
                    f"(more than {STRATIFY_TOLERANCE:.0%} apart): {why}"
                )
    return notes
