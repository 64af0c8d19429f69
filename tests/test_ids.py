"""IDs in bulk (h5feed._ids): encoding, byte order, lookups, as properties over seeds."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from h5feed import _ids, _record, errors

# Characters of 1 to 4 UTF-8 bytes, and a digit, so that sorting by code
# point and by byte agree only if the bytes are compared as unsigned.
ALPHABET = ["a", "b", "0", "9", "-", "é", "ÿ", "€", "𝄞"]


def _random_ids(seed: int, n: int | None = None, unique: bool = False) -> list[str]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 80)) if n is None else n
    prefix = ["", "sample-", "a-common-prefix-longer-than-a-word-"][seed % 3]
    letters = ALPHABET[: int(rng.integers(1, len(ALPHABET) + 1))]
    ids = [prefix + "".join(rng.choice(letters, int(rng.integers(1, 20)))) for _ in range(n)]
    return list(dict.fromkeys(ids)) if unique else ids


@pytest.mark.parametrize("seed", range(40))
def test_sort_is_the_order_of_the_utf8_bytes_and_stable_and_names_every_repeat(seed):
    ids = _random_ids(seed)
    order, repeats = _ids.sort(_ids.encode(ids, "test"))
    expected = sorted(range(len(ids)), key=lambda i: (ids[i].encode("utf-8"), i))
    assert order.tolist() == expected
    # UTF-8 byte order is code point order, which is Python's str order.
    assert [ids[i] for i in order] == sorted(ids)
    assert repeats.tolist() == [i for i in range(1, len(ids)) if ids[expected[i]] == ids[expected[i - 1]]]


@pytest.mark.parametrize("seed", range(30))
def test_find_gives_each_known_id_its_row_and_minus_one_to_the_rest(seed):
    ids = _random_ids(seed, unique=True)
    enc = _ids.encode(ids, "test")
    order = _ids.argsort(enc)
    index = _ids.Sorted.of(enc, order)
    rng = np.random.default_rng(seed)
    queries = [ids[i] for i in rng.integers(0, len(ids), 10)] if ids else []
    queries += ["never-" + str(seed), "zzz"]
    found = index.find(_ids.encode(queries, "q"))
    if ids:  # the search seeded from the first words, as for many queries
        q = _ids.encode(queries, "q")
        lo, hi = index._bounds(q)
        for i in range(q.size):
            assert found[i] == -1 or lo[i] <= found[i] < hi[i]
            assert found[i] >= 0 or lo[i] == hi[i] or queries[i] not in ids
    for query, pos in zip(queries, found.tolist()):
        if query in ids:
            assert ids[int(index.rows(np.array([pos]))[0])] == query
        else:
            assert pos == -1


def test_many_queries_seed_the_search_and_find_the_same():
    ids = [f"s{i}" for i in range(3000)]
    enc = _ids.encode(ids, "t")
    index = _ids.Sorted.of(enc, _ids.argsort(enc))
    queries = _ids.encode([f"s{i}" for i in range(0, 6000, 2)], "q")  # many: merged
    rows = np.where((pos := index.find(queries)) >= 0, index.rows(np.maximum(pos, 0)), -1)
    np.testing.assert_array_equal(rows, [i if i < 3000 else -1 for i in range(0, 6000, 2)])


@pytest.mark.parametrize(
    "bad, match",
    [([7], r"must be str\. Received: 7 \(int\)"), ([""], "invalid sample ID ''"), (["a\x00b"], "invalid sample ID 'a\\\\x00b'"),
     (["\ud800"], "cannot be encoded as UTF-8")],
    ids=["not-str", "empty", "nul", "lone-surrogate"],
)
def test_encode_refuses_an_id_that_cannot_be_stored_naming_it(bad, match):
    with pytest.raises(errors.InvalidSampleIDError, match=match):
        _ids.encode(["ok", *bad], "f.h5")
    _ids.encode(["ok", "fine"], "f.h5")  # the valid twin


@pytest.mark.parametrize("seed", range(20))
def test_hashing_encoded_ids_equals_the_record_hash_of_the_strings(seed):
    ids = _random_ids(seed)
    enc = _ids.encode(ids, "t")
    a, b, c = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    _record.hash_rows(a, ids)
    _record.hash_ids(b, enc.data, enc.starts, enc.ends)
    order = _ids.argsort(enc)  # IDs scattered in the bytes: the general path
    _record.hash_ids(c, enc.data, enc.starts[order], enc.ends[order])
    d = hashlib.sha256()
    _record.hash_rows(d, [ids[i] for i in order])
    assert a.hexdigest() == b.hexdigest() and c.hexdigest() == d.hexdigest()


@pytest.mark.parametrize("seed", range(10))
def test_any_repeat_agrees_with_a_set(seed):
    ids = _random_ids(seed)
    assert _ids.any_repeat(_ids.encode(ids, "t")) == (len(set(ids)) != len(ids))


def test_compare_orders_prefixes_first_and_bytes_unsigned():
    a = _ids.encode(["ab", "abcdefgh", "abcdefgh", "ÿ", "a"], "t")
    b = _ids.encode(["abc", "abcdefghi", "abcdefgh", "z", "a"], "t")
    assert _ids.compare(a.data, a.starts, a.ends, b.data, b.starts, b.ends).tolist() == [-1, -1, 0, 1, 0]
