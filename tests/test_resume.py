"""Saving and loading positions: H5Sequence, tf_dataset and BlockBatchSampler.

The property throughout: the batches served before ``state_dict()``
followed by those a fresh reader serves after ``load_state_dict()`` are the
batches of one uninterrupted run, none repeated and none skipped.
"""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest

import h5feed
from h5feed import errors

from conftest import make_arrays

H5Sequence = pytest.importorskip("h5feed.sequence").H5Sequence


def _rows(batch):
    X = batch[0]
    return X.reshape(len(X), -1)[:, 0].astype(np.int64).tolist()


def _epoch(seq, order=None):
    order = range(len(seq)) if order is None else order
    return [_rows(seq[i]) for i in order]


def _through_json(state):
    return json.loads(json.dumps(state))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    ids, x, y = make_arrays(103, seed=1)
    path = h5feed.write_arrays(folder / "a.h5", ids, x, y, n_classes=5, splits={"odd": range(1, 103, 2)})
    ids2, x2, y2 = make_arrays(103, seed=2)
    other = h5feed.write_arrays(folder / "b.h5", ids2, x2, y2, n_classes=5)
    return path, other


@pytest.mark.parametrize("shuffle", [True, False, "block"])
@pytest.mark.parametrize("case", range(4))
def test_a_loaded_state_continues_the_epoch_exactly_then_the_next_epochs(data, shuffle, case):
    rng = np.random.default_rng(case)
    path = data[0]
    options = dict(batch_size=int(rng.integers(1, 17)), shuffle=shuffle, seed=int(rng.integers(0, 100)),
                   block_rows=4, drop_remainder=bool(case % 2))
    epoch = int(rng.integers(0, 4))
    whole = H5Sequence(path, **options)
    whole.set_epoch(epoch)
    want = _epoch(whole)
    whole.on_epoch_end()
    want_next = _epoch(whole)

    first = H5Sequence(path, **options)
    first.set_epoch(epoch)
    served = int(rng.integers(0, len(first) + 1))
    # Keras asks in an order of its own; a shuffled sequence serves its own.
    order = rng.permutation(len(first))[:served] if shuffle else range(served)
    before = _epoch(first, order)
    state = _through_json(first.state_dict())
    assert state["epoch"] == epoch and state["batch"] == served

    resumed = H5Sequence(path, **options)
    resumed.load_state_dict(state)
    assert len(resumed) == len(whole) - served
    assert resumed.epoch_rows().tolist() == [r for b in want[served:] for r in b]
    after = _epoch(resumed, rng.permutation(len(resumed)) if shuffle else None)
    assert before + after == want  # shuffled: the k-th request gets the k-th batch
    resumed.on_epoch_end()
    assert len(resumed) == len(whole) and _epoch(resumed) == want_next


@pytest.mark.parametrize("workers, multi", [(2, False), (2, True)], ids=["threads", "processes"])
def test_a_resumed_sequence_with_workers_serves_the_rest_of_the_epoch(data, workers, multi):
    path = data[0]
    whole = H5Sequence(path, batch_size=8, seed=4)
    whole.set_epoch(3)
    want = _epoch(whole)
    seq = H5Sequence(path, batch_size=8, seed=4, workers=workers, use_multiprocessing=multi)
    if multi:
        seq._mp_context = mp.get_context("fork")
    try:
        seq.load_state_dict(whole.state_dict(epoch=3, batch=5))
        assert _epoch(seq) == want[5:]
        seq.on_epoch_end()
        whole.on_epoch_end()
        assert _epoch(seq) == _epoch(whole)
    finally:
        seq.close()


def test_a_state_is_small_json_and_names_the_file_selection_and_options(data):
    seq = H5Sequence(data[0], "odd", batch_size=8, seed=2, shuffle="block", block_rows=4)
    for i in range(3):
        seq[i]
    state = seq.state_dict()
    assert _through_json(state) == state and len(json.dumps(state)) < 1000
    assert (state["epoch"], state["batch"], state["seed"]) == (0, 3, 2)
    fp = state["fingerprint"]
    assert fp["selection"] == "split 'odd'" and fp["file"].startswith("sha256:") and fp["rows"] == 51
    assert (fp["batch_size"], fp["shuffle"], fp["block_rows"]) == (8, "block", 4)
    assert seq.state_dict(epoch=5)["batch"] == 0 and seq.state_dict(batch=7)["batch"] == 7
    with pytest.raises(ValueError, match="batch must be at most 7"):
        seq.state_dict(batch=8)


@pytest.mark.parametrize(
    "other, named",
    [
        (dict(path=1), "file: expected"),
        (dict(split="odd"), """selection: expected "split 'odd'" (this one). Received: 'all rows'"""),
        (dict(ids=[f"id-{i}" for i in range(50)]), "selection: expected 'ids sha256:"),
        (dict(batch_size=16), "batch_size: expected 16 (this one). Received: 8 (the state's)"),
        (dict(seed=9), "seed: expected 9 (this one). Received: 4 (the state's)"),
        (dict(shuffle=False), "shuffle: expected False"),
        (dict(shard=(0, 2)), "shard: expected [0, 2]"),
        (dict(one_hot=False), "one_hot: expected False"),
    ],
    ids=["file", "split", "ids", "batch_size", "seed", "shuffle", "shard", "one_hot"],
)
def test_a_state_of_another_file_selection_or_option_set_is_refused_naming_it(data, other, named):
    options = dict(path=0, split=None, batch_size=8, seed=4)
    options.update(other)
    kwargs = {k: v for k, v in options.items() if k not in ("path", "split")}
    state = H5Sequence(data[0], batch_size=8, seed=4).state_dict()
    seq = H5Sequence(data[options["path"]], options["split"], **kwargs)
    with pytest.raises(errors.StateMismatchError, match="the state was saved for another sequence") as info:
        seq.load_state_dict(state)
    assert named in str(info.value)
    assert seq.epoch == 0 and len(seq) == seq._n_batches  # left as it was


def test_a_sequence_without_a_seed_takes_the_saved_one(data):
    seq = H5Sequence(data[0], batch_size=10, seed=123)
    seq.set_epoch(2)
    want = _epoch(seq)
    fresh = H5Sequence(data[0], batch_size=10)  # a seed drawn at random
    fresh.load_state_dict(seq.state_dict(batch=4))
    assert fresh.seed == 123 and _epoch(fresh) == want[4:]


def test_sampler_states_are_not_sequence_states(data):
    pytest.importorskip("torch", reason="the sampler needs PyTorch (pip install torch)")
    import h5feed.torch as torch_mod
    ds = torch_mod.H5Dataset(data[0])
    state = torch_mod.BlockBatchSampler(ds, 8, seed=4).state_dict()
    with pytest.raises(errors.StateMismatchError, match="expected a state of a H5Sequence"):
        H5Sequence(data[0], batch_size=8, seed=4).load_state_dict(state)


def test_tf_dataset_from_a_state_reads_the_rest_of_the_epoch_then_whole_epochs(data):
    tf = pytest.importorskip("tensorflow")
    whole = H5Sequence(data[0], batch_size=8, seed=4)
    whole.set_epoch(2)
    want = _epoch(whole)
    whole.on_epoch_end()
    want_next = _epoch(whole)
    state = _through_json(H5Sequence(data[0], batch_size=8, seed=4).state_dict(epoch=2, batch=6))
    ds = h5feed.tf_dataset(data[0], batch_size=8, seed=4, state=state, prefetch=0)
    assert int(ds.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    assert [_rows((X.numpy(),)) for X, _ in ds] == want[6:]
    assert [_rows((X.numpy(),)) for X, _ in ds] == want_next
    with pytest.raises(ValueError, match="first_epoch or state"):
        h5feed.tf_dataset(data[0], batch_size=8, seed=4, state=state, first_epoch=2)
    with pytest.raises(errors.StateMismatchError, match="batch_size"):
        h5feed.tf_dataset(data[0], batch_size=4, seed=4, state=state)
    # A sequence's own dataset starts where the sequence stands.
    seq = H5Sequence(data[0], batch_size=8, seed=4)
    seq.load_state_dict(state)
    assert [_rows((X.numpy(),)) for X, _ in seq.to_tf_dataset(prefetch=0)] == want[6:]
    assert int(seq.to_tf_dataset(first_epoch=2).cardinality()) == len(want)


def test_a_sampler_continues_from_its_state_and_refuses_another_samplers(data):
    pytest.importorskip("torch", reason="the sampler needs PyTorch (pip install torch)")
    import h5feed.torch as torch_mod
    ds = torch_mod.H5Dataset(data[0], "odd")
    sampler = torch_mod.BlockBatchSampler(ds, 5, seed=8, shuffle="block", block_rows=4)
    sampler.set_epoch(3)
    want = [list(b) for b in sampler]
    want_next = [list(b) for b in sampler]
    first = torch_mod.BlockBatchSampler(ds, 5, seed=8, shuffle="block", block_rows=4)
    first.set_epoch(3)
    it = iter(first)
    before = [list(next(it)) for _ in range(4)]
    state = _through_json(first.state_dict())
    assert (state["epoch"], state["batch"]) == (3, 4) and len(json.dumps(state)) < 1000
    resumed = torch_mod.BlockBatchSampler(ds, 5, seed=8, shuffle="block", block_rows=4)
    resumed.load_state_dict(state)
    assert before + [list(b) for b in resumed] == want
    assert [list(b) for b in resumed] == want_next
    for other, named in [
        (torch_mod.BlockBatchSampler(ds, 6, seed=8, shuffle="block", block_rows=4), "batch_size"),
        (torch_mod.BlockBatchSampler(ds, 5, seed=9, shuffle="block", block_rows=4), "seed"),
        (torch_mod.BlockBatchSampler(torch_mod.H5Dataset(data[0]), 5, seed=8, shuffle="block", block_rows=4),
         "selection"),
        (torch_mod.BlockBatchSampler(torch_mod.H5Dataset(data[1], ids=[f"id-{i}" for i in range(1, 103, 2)]),
                                     5, seed=8, shuffle="block", block_rows=4), "file"),
    ]:
        with pytest.raises(errors.StateMismatchError, match=named):
            other.load_state_dict(state)
