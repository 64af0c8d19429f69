"""The pure index planning (h5feed._plan), as properties over seeded input."""

from __future__ import annotations

import numpy as np
import pytest

from h5feed import _plan


def _apply(plan: _plan.ReadPlan, data: np.ndarray) -> np.ndarray:
    """Carry a plan out on an in-memory array, the way the reader does."""
    spans = [data[a:b] for a, b in zip(plan.starts.tolist(), plan.stops.tolist())]
    buf = np.concatenate(spans) if spans else data[:0]
    if plan.take is not None:
        buf = buf[plan.take]
    if plan.inverse is not None:
        buf = buf[plan.inverse]
    return buf


def _min_runs(rows: np.ndarray) -> int:
    u = np.unique(rows)
    return int(1 + np.count_nonzero(np.diff(u) != 1)) if u.size else 0


@pytest.mark.parametrize("seed", range(25))
def test_plan_restores_requested_order_with_minimal_runs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 500))
    k = int(rng.integers(1, 64))
    rows = rng.integers(0, n, k) if seed % 3 == 0 else rng.permutation(n)[:k]
    data = np.arange(n) * 10
    plan = _plan.plan_reads(rows)
    np.testing.assert_array_equal(_apply(plan, data), data[rows])
    assert plan.n_spans == _min_runs(rows)
    # Every distinct row is read exactly once.
    assert plan.span_rows == np.unique(rows).size
    assert np.all(plan.starts[1:] > plan.stops[:-1])


@pytest.mark.parametrize("seed", range(25))
def test_chunked_plan_touches_each_chunk_in_one_span(seed):
    rng = np.random.default_rng(seed)
    n, chunk = int(rng.integers(1, 400)), int(rng.integers(1, 40))
    rows = rng.permutation(n)[: int(rng.integers(1, 50))]
    data = np.arange(n)
    plan = _plan.plan_reads(rows, chunk_rows=chunk)
    np.testing.assert_array_equal(_apply(plan, data), data[rows])
    # No chunk is covered by two spans: a chunk is decompressed once.
    chunks_per_span = [set(range(a // chunk, (b - 1) // chunk + 1)) for a, b in zip(plan.starts, plan.stops)]
    seen: set[int] = set()
    for chunks in chunks_per_span:
        assert not (chunks & seen)
        seen |= chunks
    assert seen == set((np.unique(rows) // chunk).tolist())


def test_consecutive_rows_are_one_span_and_need_no_reordering():
    plan = _plan.plan_reads(np.arange(40, 72))
    assert (plan.n_spans, plan.take, plan.inverse) == (1, None, None)
    assert (int(plan.starts[0]), int(plan.stops[0])) == (40, 72)


def test_empty_request_plans_nothing():
    plan = _plan.plan_reads(np.array([], dtype=np.int64))
    assert plan.n_spans == 0 and plan.span_rows == 0


@pytest.mark.parametrize("shuffle", [False, True, "block"])
@pytest.mark.parametrize("n", [0, 1, 7, 64, 1000])
def test_epoch_order_is_a_permutation_and_depends_only_on_seed_and_epoch(shuffle, n):
    for epoch in range(3):
        a = _plan.epoch_order(n, shuffle=shuffle, seed=11, epoch=epoch, block=8, window=3)
        b = _plan.epoch_order(n, shuffle=shuffle, seed=11, epoch=epoch, block=8, window=3)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.sort(a), np.arange(n))


def test_shuffled_epochs_differ_between_epochs_and_seeds():
    a = _plan.epoch_order(1000, shuffle=True, seed=1, epoch=0)
    assert not np.array_equal(a, _plan.epoch_order(1000, shuffle=True, seed=1, epoch=1))
    assert not np.array_equal(a, _plan.epoch_order(1000, shuffle=True, seed=2, epoch=0))


@pytest.mark.parametrize("seed", range(10))
def test_block_shuffle_batches_draw_from_few_blocks(seed):
    block, window, batch = 16, 4, 32
    order = _plan.block_permutation(4096, block=block, window=window, seed=seed, epoch=0)
    for start in range(0, order.size, batch):
        blocks = np.unique(order[start : start + batch] // block)
        # A batch can straddle two windows, so at most 2 * window blocks.
        assert blocks.size <= 2 * window
    assert not np.array_equal(order, np.arange(order.size))


@pytest.mark.parametrize("n", [0, 1, 9, 10, 11, 1001])
@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_shards_partition_the_epoch(n, count, drop_remainder):
    parts = [_plan.shard_bounds(n, k, count, drop_remainder=drop_remainder) for k in range(count)]
    sizes = [b - a for a, b in parts]
    assert max(sizes) - min(sizes) <= (0 if drop_remainder else 1)
    covered = np.concatenate([np.arange(a, b) for a, b in parts])
    assert np.unique(covered).size == covered.size  # no position twice
    assert covered.size == (n - n % count if drop_remainder else n)


def _random_epoch_options(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "n": int(rng.integers(0, 700)),
        "shuffle": [False, True, "block"][seed % 3],
        "seed": int(rng.integers(0, 2**31)),
        "epoch": int(rng.integers(0, 50)),
        "block": int(rng.integers(1, 40)),
        "window": int(rng.integers(1, 10)),
    }


@pytest.mark.parametrize("seed", range(30))
def test_epoch_positions_shards_visit_every_position_exactly_once(seed):
    options = _random_epoch_options(seed)
    n = options["n"]
    count = 1 + seed % 5
    parts = [_plan.epoch_positions(**options, shard=(k, count)) for k in range(count)]
    whole = _plan.epoch_positions(**options)
    # The shards are consecutive parts of the one unsharded order...
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    # ... which visits every position exactly once.
    np.testing.assert_array_equal(np.sort(whole), np.arange(n))
    assert all(p.dtype == np.int64 for p in parts)
    assert [p.size for p in parts] == [_plan.epoch_size(n, shard=(k, count)) for k in range(count)]
    assert whole.size == _plan.epoch_size(n)


@pytest.mark.parametrize("seed", range(30))
def test_epoch_positions_with_drop_remainder_give_disjoint_equal_shards(seed):
    options = _random_epoch_options(seed)
    n = options["n"]
    count = 1 + seed % 5
    parts = [_plan.epoch_positions(**options, shard=(k, count), drop_remainder=True) for k in range(count)]
    assert {p.size for p in parts} == {n // count}
    assert all(p.size == _plan.epoch_size(n, shard=(k, count), drop_remainder=True) for k, p in enumerate(parts))
    seen = np.concatenate(parts)
    assert np.unique(seen).size == seen.size  # disjoint
    # Without a shard there is nothing to equalise: the batching drops.
    np.testing.assert_array_equal(
        _plan.epoch_positions(**options, drop_remainder=True), _plan.epoch_positions(**options)
    )


@pytest.mark.parametrize("seed", range(30))
def test_epoch_positions_depend_only_on_their_arguments(seed):
    options = _random_epoch_options(seed)
    shard = (seed % 3, 3)
    a = _plan.epoch_positions(**options, shard=shard)
    np.testing.assert_array_equal(a, _plan.epoch_positions(**options, shard=shard))  # same seed, same order
    if options["shuffle"] and options["n"] >= 100:
        for change in ({"seed": options["seed"] + 1}, {"epoch": options["epoch"] + 1}):
            b = _plan.epoch_positions(**{**options, **change}, shard=shard)
            assert not np.array_equal(a, b)


@pytest.mark.parametrize("bad", [(0, 0), (2, 2), (-1, 3)])
def test_bad_shard_is_an_error_naming_it(bad):
    with pytest.raises(ValueError, match=r"shard"):
        _plan.shard_bounds(10, *bad, drop_remainder=False)


def test_num_batches_ceil_and_floor():
    assert _plan.num_batches(65, 32, drop_remainder=False) == 3
    assert _plan.num_batches(65, 32, drop_remainder=True) == 2
    assert _plan.num_batches(64, 32, drop_remainder=False) == 2


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shard_of_keys_parts_cover_the_listing_once_whatever_its_order(seed, count):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40))
    keys = [f"id-{k}" for k in rng.permutation(1000)[:n]]
    parts = [_plan.shard_of_keys(keys, k, count) for k in range(count)]
    both = np.concatenate(parts)
    assert sorted(both.tolist()) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # Another listing order of the same keys gives the same parts (as IDs).
    shuffled = [keys[i] for i in rng.permutation(n)]
    for k in range(count):
        assert sorted(keys[i] for i in parts[k]) == sorted(shuffled[i] for i in _plan.shard_of_keys(shuffled, k, count))
    for part in parts:  # each part is one run of the sorted keys
        if part.size:
            ordered = sorted(keys)
            lo = ordered.index(min(keys[i] for i in part))
            assert sorted(keys[i] for i in part) == ordered[lo : lo + part.size]


@pytest.mark.parametrize("seed", range(20))
def test_advice_ranges_cover_exactly_the_pages_of_the_rows(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    row_nbytes = int(rng.choice([1, 7, 784, 4096, 5000, 131072]))
    first_byte = int(rng.integers(0, 10_000))
    page = int(rng.choice([512, 4096]))
    rows = rng.integers(0, n, int(rng.integers(1, 60)))
    starts, lengths = _plan.advice_ranges(rows, row_nbytes=row_nbytes, first_byte=first_byte, page=page)
    assert np.all(starts % page == 0) and np.all(lengths % page == 0) and np.all(lengths > 0)
    ends = starts + lengths
    assert np.all(starts[1:] > ends[:-1])  # ascending, and touching ranges merged
    wanted = set()
    for r in np.unique(rows):
        lo = first_byte + int(r) * row_nbytes
        wanted.update(range(lo // page, (lo + row_nbytes - 1) // page + 1))
    got = set()
    for s, e in zip(starts.tolist(), ends.tolist()):
        got.update(range(s // page, e // page))
    # Every page of a requested row, and (merging only ranges that touch)
    # no page outside the span of the rows' pages.
    assert wanted <= got
    assert got <= set(range(min(wanted), max(wanted) + 1))
    assert len(starts) <= np.unique(rows).size


@pytest.mark.parametrize("seed", range(20))
def test_advice_ranges_cut_to_most_cover_the_same_pages(seed):
    # One advice call reads at most a device-dependent amount: the cut
    # pieces must cover exactly the pages the uncut ranges cover.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    row_nbytes = int(rng.choice([7, 784, 4096, 5000, 131072]))
    first_byte = int(rng.integers(0, 10_000))
    page = 4096
    most = page * int(rng.choice([1, 2, 3, 32]))
    rows = rng.integers(0, n, int(rng.integers(1, 120)))
    whole = _plan.advice_ranges(rows, row_nbytes=row_nbytes, first_byte=first_byte, page=page)
    starts, lengths = _plan.advice_ranges(rows, row_nbytes=row_nbytes, first_byte=first_byte, page=page, most=most)

    def pages(starts, lengths):
        return [p for s, n in zip(starts.tolist(), lengths.tolist()) for p in range(s // page, (s + n) // page)]

    assert pages(starts, lengths) == pages(*whole)  # same pages, ascending, none twice
    assert np.all(lengths > 0) and np.all(lengths <= most) and np.all(starts % page == 0)
    assert len(starts) == int(np.sum(-(-whole[1] // most)))  # no more pieces than needed


@pytest.mark.parametrize("seed", range(20))
def test_span_advice_ranges_are_the_advice_ranges_of_the_spans_rows(seed):
    rng = np.random.default_rng(seed)
    bounds = np.sort(rng.choice(2000, 2 * int(rng.integers(1, 12)), replace=False))
    starts, stops = bounds[0::2], bounds[1::2]
    stops[rng.random(stops.size) < 0.2] = starts[0]  # some empty (or reversed) spans, dropped
    rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)] + [np.zeros(0, np.int64)])
    where = {"row_nbytes": int(rng.choice([8, 784, 5000])), "first_byte": int(rng.integers(0, 10_000))}
    for most in (None, 8192):
        got = _plan.span_advice_ranges(starts, stops, **where, most=most)
        want = _plan.advice_ranges(rows, **where, most=most)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_advice_ranges_of_nothing_is_empty_and_bad_sizes_are_errors():
    starts, lengths = _plan.advice_ranges(np.array([], dtype=np.int64), row_nbytes=8, first_byte=0)
    assert starts.size == 0 and lengths.size == 0
    with pytest.raises(ValueError, match="row_nbytes"):
        _plan.advice_ranges(np.array([1]), row_nbytes=0, first_byte=0)
    with pytest.raises(ValueError, match="most must be a positive multiple of page"):
        _plan.advice_ranges(np.array([1]), row_nbytes=8, first_byte=0, most=5000)
    with pytest.raises(ValueError, match="row_nbytes"):
        _plan.span_advice_ranges(np.array([0]), np.array([1]), row_nbytes=0, first_byte=0)
