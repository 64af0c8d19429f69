"""h5feed.torch: the Sequence's invariants through DataLoader, workers under fork and spawn."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest

import h5feed

from conftest import make_arrays

torch = pytest.importorskip("torch", reason="h5feed.torch needs PyTorch (pip install 'h5feed[torch]')")
from torch.utils.data import DataLoader, default_collate  # noqa: E402

from h5feed.reader import Reader  # noqa: E402
from h5feed.torch import BlockBatchSampler, H5Dataset, collate  # noqa: E402


def _loader(ds, sampler, **kw):
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, **kw)


def _rows(batches):
    return np.concatenate([X.numpy().reshape(len(X), -1)[:, 0] for X, _ in batches]).astype(np.int64)


@pytest.fixture(scope="module")
def sized_files(tmp_path_factory):
    files = {}
    for n in (1, 33, 100):
        ids, x, y = make_arrays(n, seed=n)
        path = tmp_path_factory.mktemp("torch") / f"n{n}.h5"
        h5feed.write_arrays(path, ids, x, y, n_classes=5, splits={"half": range(0, n, 2)})
        files[n] = path
    return files


@pytest.mark.parametrize("n", [1, 33, 100])
@pytest.mark.parametrize("shuffle", [True, False, "block"])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_every_row_once_per_epoch_new_order_each_epoch(sized_files, n, shuffle, batch_size):
    ds = H5Dataset(sized_files[n])
    loader = _loader(ds, BlockBatchSampler(ds, batch_size, shuffle=shuffle, seed=n, block_rows=4))
    orders = []
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == len(loader) == -(-n // batch_size)
        rows = _rows(batches)
        np.testing.assert_array_equal(np.sort(rows), np.arange(n))
        orders.append(rows)
    if shuffle and n > 8:
        assert not np.array_equal(orders[0], orders[1])


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_same_seed_same_epochs_other_seed_other_order(sized_files, seed):
    ds = H5Dataset(sized_files[100])
    a = _loader(ds, BlockBatchSampler(ds, 16, seed=seed))
    b = _loader(ds, BlockBatchSampler(ds, 16, seed=seed))
    first = [_rows(list(a)) for _ in range(2)]
    np.testing.assert_array_equal(first[0], _rows(list(b)))
    np.testing.assert_array_equal(first[1], _rows(list(b)))
    other = _loader(ds, BlockBatchSampler(ds, 16, seed=seed + 1))
    assert not np.array_equal(_rows(list(other)), first[0])


@pytest.mark.parametrize("shuffle", [True, False, "block"])
def test_same_batches_as_the_sequence_for_the_same_seed_and_epoch(sized_files, shuffle):
    sequence = pytest.importorskip("h5feed.sequence", reason="comparing with H5Sequence needs Keras")
    seq = sequence.H5Sequence(sized_files[100], "half", batch_size=8, shuffle=shuffle, seed=5, block_rows=4, one_hot=False)
    ds = H5Dataset(sized_files[100], "half")
    sampler = BlockBatchSampler(ds, 8, shuffle=shuffle, seed=5, block_rows=4)
    for epoch in (0, 1, 4):
        seq.set_epoch(epoch)
        sampler.set_epoch(epoch)
        batches = list(_loader(ds, sampler))
        assert len(batches) == len(seq)
        for i, (X, Y) in enumerate(batches):
            np.testing.assert_array_equal(X.numpy(), seq[i][0])
            np.testing.assert_array_equal(Y.numpy(), seq[i][1])


def test_same_bytes_as_a_plain_read_in_every_layout(any_layout_file):
    ds = H5Dataset(any_layout_file, "train")
    with h5py.File(any_layout_file) as f:
        x, y = f["x"][()], f["y"][()]
    indices = np.random.default_rng(0).permutation(len(ds))[:40].tolist() + [3, 3]
    X, Y = collate(ds.__getitems__(indices))
    assert X.dtype == torch.float32 and Y.dtype == torch.int64
    np.testing.assert_array_equal(X.numpy(), x[indices])
    np.testing.assert_array_equal(Y.numpy(), y[indices])
    Xd, Yd = default_collate(ds.__getitems__(indices))  # the stock collate agrees
    assert torch.equal(Xd, X) and torch.equal(Yd, Y)
    x0, y0 = ds[7]
    np.testing.assert_array_equal(x0, x[7])
    assert int(y0) == y[7]


def test_a_batch_is_one_read_per_dataset(small_file, monkeypatch):
    calls = []
    real = Reader.read

    def recording(self, name, rows, out=None):
        calls.append((name, np.asarray(rows).copy()))
        return real(self, name, rows, out)

    monkeypatch.setattr(Reader, "read", recording)
    ds = H5Dataset(small_file)
    ds.__getitems__([5, 1, 9, 2])
    assert [c[0] for c in calls] == ["x", "y"]
    np.testing.assert_array_equal(calls[0][1], [5, 1, 9, 2])


def test_ids_one_hot_dict_inputs_and_inputs_only(tmp_path, arrays):
    ids, x, y = arrays
    path = h5feed.write_arrays(tmp_path / "m.h5", ids, x, y, n_classes=5, extras={"aux": np.arange(100.0)[:, None]})
    ds = H5Dataset(path, ids=["id-9", "id-2"], one_hot=True)
    X, Y = collate(ds.__getitems__([0, 1]))
    np.testing.assert_array_equal(X.numpy(), x[[9, 2]])
    assert Y.shape == (2, 5) and Y.dtype == torch.float32
    np.testing.assert_array_equal(Y.numpy().argmax(1), y[[9, 2]])
    ds = H5Dataset(path, x={"img": "x", "meta": "aux"}, y=None)
    X = collate(ds.__getitems__([4, 0]))
    assert set(X) == {"img", "meta"}
    np.testing.assert_array_equal(X["meta"].numpy()[:, 0], [4.0, 0.0])
    np.testing.assert_array_equal(ds[4]["meta"], [4.0])


def test_shards_partition_each_epoch_like_distributed_sampler(sized_files):
    ds = H5Dataset(sized_files[100])
    for drop_last in (False, True):
        samplers = [BlockBatchSampler(ds, 7, seed=2, shard=(k, 3), drop_last=drop_last) for k in range(3)]
        for _epoch in range(2):  # each pass over the samplers is the next epoch
            parts = [_rows(list(_loader(ds, s))) for s in samplers]
            rows = np.concatenate(parts)
            assert len(set(rows.tolist())) == rows.size
            if drop_last:
                assert [len(p) for p in parts] == [28, 28, 28]
            else:
                np.testing.assert_array_equal(np.sort(rows), np.arange(100))
    # The dataset's shard is the sampler's default.
    sharded = H5Dataset(sized_files[100], shard=(1, 3))
    assert BlockBatchSampler(sharded, 7, seed=2).shard == (1, 3)


def _stateful_loader(ds, num_workers):
    """Makes StatefulDataLoaders over a BlockBatchSampler, as a (restarted) job builds them."""
    stateful = pytest.importorskip(
        "torchdata.stateful_dataloader", reason="resuming a DataLoader needs torchdata: pip install torchdata"
    )

    def loader():
        sampler = BlockBatchSampler(ds, 8, seed=3)
        return stateful.StatefulDataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)

    return loader


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.13
@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateful_dataloader_resumed_mid_epoch_1_serves_the_rest_of_epoch_1(sized_files, num_workers):
    ds = H5Dataset(sized_files[100])
    loader = _stateful_loader(ds, num_workers)

    interrupted = loader()
    list(interrupted)  # epoch 0
    batches = iter(interrupted)
    before = _rows([next(batches) for _ in range(5)])  # then 5 of epoch 1's 13 batches
    state = interrupted.state_dict()
    del batches
    resumed = loader()  # as a restarted job builds it
    resumed.load_state_dict(state)
    after = _rows(list(resumed))
    epoch_1 = BlockBatchSampler(ds, 8, seed=3).epoch_indices(1)
    np.testing.assert_array_equal(before, epoch_1[:40])
    np.testing.assert_array_equal(np.sort(np.concatenate([before, after])), np.arange(100))  # each row once
    np.testing.assert_array_equal(after, epoch_1[40:])


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.13
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("saved", ["after-the-last-batch", "after-the-epoch"])
def test_stateful_dataloader_saved_at_an_epoch_end_resumes_with_the_next_epoch_whole(sized_files, num_workers, saved):
    # A state saved after an epoch's last batch (before or after the loader
    # noticed the end) resumes with nothing left of that epoch, then the
    # next one whole: never an empty or a repeated epoch.
    ds = H5Dataset(sized_files[33])
    loader = _stateful_loader(ds, num_workers)

    interrupted = loader()
    batches = iter(interrupted)
    for _ in range(5):
        next(batches)  # all of epoch 0
    if saved == "after-the-epoch":
        assert next(batches, None) is None
    state = interrupted.state_dict()
    del batches
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed) if saved == "after-the-last-batch" else []
    following = _rows(list(resumed))
    assert rest == []
    np.testing.assert_array_equal(following, BlockBatchSampler(ds, 8, seed=3).epoch_indices(1))


def test_importing_h5feed_torch_imports_no_tensorflow():
    code = "import sys, h5feed.torch; print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[]"]


def test_dataset_and_sampler_pickle_without_handles(small_file):
    ds = H5Dataset(small_file, "train")
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._maker.reader._file is None and not clone._maker.reader._maps
    np.testing.assert_array_equal(clone[5][0], ds[5][0])
    assert len(pickle.dumps(ds)) < 20_000


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"one_hot": "yes"}, TypeError, "one_hot"),
        ({"x": 3}, TypeError, "x must"),
        ({"x": "nope"}, h5feed.LayoutError, "'nope'"),
        ({"shard": (3, 3)}, ValueError, "shard"),
        ({"split": "test"}, h5feed.UnknownSplitError, "'test'"),
    ],
    ids=["one_hot-not-bool", "x-not-a-name", "unknown-dataset", "shard-out-of-range", "unknown-split"],
)
def test_bad_dataset_options_are_named(small_file, kwargs, error, match):
    with pytest.raises(error, match=match):
        H5Dataset(small_file, **kwargs)


def test_bad_indices_and_sampler_options_are_named(small_file):
    ds = H5Dataset(small_file)
    with pytest.raises(IndexError, match="100"):
        ds.__getitems__([0, 100])
    with pytest.raises(ValueError, match="batch_size"):
        BlockBatchSampler(ds, 0)
    with pytest.raises(ValueError, match="shuffle"):
        BlockBatchSampler(ds, 4, shuffle="yes")
    with pytest.raises(TypeError, match="data_source"):
        BlockBatchSampler("data.h5", 4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers_see_every_row_once_per_epoch(small_file, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available on this platform")
    ds = H5Dataset(small_file, "train")
    ds[0]  # a handle opened in the parent must not leak into the workers
    sampler = BlockBatchSampler(ds, 8, seed=11, shuffle="block", block_rows=4)
    loader = _loader(ds, sampler, num_workers=2, multiprocessing_context=method, persistent_workers=False)
    seen = [_rows(list(loader)) for _ in range(2)]
    for rows in seen:
        np.testing.assert_array_equal(np.sort(rows), np.arange(70))
    assert not np.array_equal(seen[0], seen[1])
    sampler.set_epoch(0)
    np.testing.assert_array_equal(_rows(list(_loader(ds, sampler))), seen[0])  # same as in-process
