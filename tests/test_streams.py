"""Random streams (h5feed/_streams.py): one generator per batch place, workers' global seeds."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest

from h5feed._streams import BatchPlace, seed_globals, takes_rng


def _draw(place, n=64):
    return place.rng().standard_normal(n)


@pytest.mark.parametrize("seed", [0, 1, 2**40])
def test_a_place_always_gives_the_same_stream(seed):
    place = BatchPlace(seed, 3, 17, (1, 4))
    np.testing.assert_array_equal(_draw(place), _draw(BatchPlace(seed, 3, 17, (1, 4))))
    import pickle

    np.testing.assert_array_equal(_draw(pickle.loads(pickle.dumps(place))), _draw(place))


def test_no_shard_is_the_one_shard_of_one():
    np.testing.assert_array_equal(_draw(BatchPlace(5, 0, 0)), _draw(BatchPlace(5, 0, 0, (0, 1))))


def test_every_part_of_the_place_changes_the_stream_and_streams_look_independent():
    # Neighbouring places in every coordinate: no two streams share a
    # value, and their correlations are what independent normals give.
    places = [BatchPlace(s, e, b, sh) for s in (0, 1) for e in (0, 1) for b in range(6)
              for sh in (None, (1, 2))]
    draws = np.array([_draw(p, 2000) for p in places])
    firsts = {float(d[0]) for d in draws}
    assert len(firsts) == len(places)
    corr = np.corrcoef(draws)
    off = corr[~np.eye(len(places), dtype=bool)]
    assert np.abs(off).max() < 5 / np.sqrt(2000)  # 5 sigma for independent streams
    assert abs(draws.mean()) < 5 / np.sqrt(draws.size)


def test_the_shuffle_and_a_transform_never_share_a_stream():
    # The epoch order draws from default_rng([seed, epoch]).
    shuffle = np.random.default_rng([5, 2]).standard_normal(64)
    for batch in range(8):
        assert not np.array_equal(_draw(BatchPlace(5, 2, batch)), shuffle)


def test_worker_globals_differ_by_worker_and_epoch_and_repeat_for_the_same():
    state = np.random.get_state(), random.getstate()
    try:
        drawn = {}
        for worker in range(3):
            for epoch in range(3):
                seed_globals(11, epoch, worker)
                drawn[worker, epoch] = (np.random.random(), random.random())
        assert len(set(drawn.values())) == 9
        seed_globals(11, 1, 2)
        assert (np.random.random(), random.random()) == drawn[2, 1]
    finally:
        np.random.set_state(state[0])
        random.setstate(state[1])


def _two(X, Y):
    return X, Y


def _three(X, Y, rng):
    return X, Y


class _Callable:
    def __call__(self, X, Y, rng=None):
        return X, Y


@pytest.mark.parametrize(
    "fn, expected",
    [
        (_two, False),
        (_three, True),
        (lambda X, Y, rng=None: (X, Y), True),
        (_Callable(), True),
        (functools.partial(_three, 1), False),
        (lambda *args: args[:2], False),
        (lambda X, Y, rng, extra: (X, Y), False),
        (functools.wraps(_three)(lambda *a, **k: _three(*a, **k)), True),
        (len, False),
    ],
    ids=["two", "three", "default-rng", "callable-object", "partial", "star-args", "four-required", "wrapped",
         "builtin"],
)
def test_a_transform_gets_an_rng_when_it_names_a_third_parameter(fn, expected):
    assert takes_rng(fn) is expected
