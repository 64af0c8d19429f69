"""Resume states (h5feed/_state.py): small, JSON, and refused where they do not belong."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from h5feed import errors
from h5feed._state import file_digest, make_state, read_state, rows_digest

FINGERPRINT = {"file": "sha256:aa", "selection": "split 'train'", "batch_size": 8, "shuffle": True,
               "shard": (0, 2), "x": ("a", "b")}


def _read(state, **kw):
    options = dict(fingerprint=FINGERPRINT, seed=3, n_batches=10, where="seq")
    options.update(kw)
    return read_state(state, "H5Sequence", **options)


@pytest.mark.parametrize("epoch, batch", [(0, 0), (4, 7), (9, 10)])
def test_a_state_survives_json_and_reads_back(epoch, batch):
    state = make_state("H5Sequence", epoch=epoch, batch=batch, seed=3, fingerprint=FINGERPRINT)
    text = json.dumps(state)
    assert len(text) < 600
    assert _read(json.loads(text)) == (epoch, batch, 3)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"file": "sha256:bb"}, "file: expected 'sha256:aa' (this one). Received: 'sha256:bb'"),
        ({"selection": "all rows"}, "selection"),
        ({"batch_size": 16}, "batch_size: expected 8 (this one). Received: 16"),
        ({"shard": (1, 2)}, "shard: expected [0, 2]"),
        ({"x": "c", "shuffle": "block"}, "Received: 'block' (the state's); x: "),
    ],
    ids=["file", "selection", "batch_size", "shard", "two-keys"],
)
def test_a_state_of_another_file_selection_or_options_is_refused_naming_what_differs(change, named):
    state = make_state("H5Sequence", epoch=1, batch=2, seed=3, fingerprint=dict(FINGERPRINT, **change))
    with pytest.raises(errors.StateMismatchError, match=re.escape(named)) as info:
        _read(state)
    assert isinstance(info.value, ValueError) and "saved for another sequence" in str(info.value)


def test_a_state_with_another_seed_is_refused_unless_the_reader_has_none():
    state = make_state("H5Sequence", epoch=1, batch=2, seed=4, fingerprint=FINGERPRINT)
    with pytest.raises(errors.StateMismatchError, match="seed: expected 3"):
        _read(state)
    assert _read(state, seed=None) == (1, 2, 4)


@pytest.mark.parametrize(
    "state, match",
    [
        ("epoch 3", "expected a state from state_dict"),
        ({"h5feed_state": 2}, "version 2"),
        ({"h5feed_state": 1, "kind": "H5Sequence"}, "lacks"),
        ({**make_state("BlockBatchSampler", epoch=0, batch=0, seed=3, fingerprint=FINGERPRINT)}, "BlockBatchSampler"),
        ({**make_state("H5Sequence", epoch=0, batch=11, seed=3, fingerprint=FINGERPRINT)}, r"batch must be an int in \[0, 10\]"),
        ({**make_state("H5Sequence", epoch=0, batch=0, seed=3, fingerprint=FINGERPRINT), "epoch": -1}, "epoch"),
        ({**make_state("H5Sequence", epoch=0, batch=0, seed=3, fingerprint=FINGERPRINT), "batch": True}, "batch"),
    ],
    ids=["not-a-dict", "newer", "incomplete", "other-kind", "batch-past-the-end", "negative-epoch", "bool-batch"],
)
def test_what_is_not_a_state_of_this_kind_is_refused(state, match):
    with pytest.raises(errors.StateMismatchError, match=match):
        _read(state)


def test_digests_name_content_not_objects():
    assert file_digest({"rows": 3, "sha256": {"x": "1"}}) == file_digest({"sha256": {"x": "1"}, "rows": 3})
    assert file_digest({"rows": 3, "sha256": {"x": "1"}}) != file_digest({"rows": 3, "sha256": {"x": "2"}})
    assert rows_digest(np.array([1, 2], dtype=np.int32)) == rows_digest([1, 2]) != rows_digest([2, 1])
