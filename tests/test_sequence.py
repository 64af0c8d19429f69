"""H5Sequence invariants, as properties over seeds and sizes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import h5feed
from h5feed import errors

from conftest import make_arrays

H5Sequence = pytest.importorskip("h5feed.sequence").H5Sequence


def _rows_of_epoch(seq):
    """The rows each batch really returned, via x[:, 0] == row."""
    out = []
    for i in range(len(seq)):
        X = seq[i][0]
        out.append(X.reshape(len(X), -1)[:, 0].astype(np.int64))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


@pytest.fixture(scope="module")
def sized_files(tmp_path_factory):
    files = {}
    for n in (1, 31, 32, 33, 100, 257):
        ids, x, y = make_arrays(n, seed=n)
        path = tmp_path_factory.mktemp("seq") / f"n{n}.h5"
        h5feed.write_arrays(path, ids, x, y, splits={"half": range(0, n, 2)}, n_classes=5)
        files[n] = path
    return files


@pytest.mark.parametrize("n", [1, 31, 32, 33, 100, 257])
@pytest.mark.parametrize("batch_size", [1, 7, 32])
@pytest.mark.parametrize("shuffle", [True, False, "block"])
def test_every_row_exactly_once_per_epoch(sized_files, n, batch_size, shuffle):
    seq = H5Sequence(sized_files[n], batch_size=batch_size, shuffle=shuffle, seed=n, block_rows=4)
    for _ in range(3):
        seen = _rows_of_epoch(seq)
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
        assert len(seq) == -(-n // batch_size)
        seq.on_epoch_end()


@pytest.mark.parametrize("n", [31, 100, 257])
def test_split_rows_exactly_once_and_only_them(sized_files, n):
    seq = H5Sequence(sized_files[n], "half", batch_size=8, seed=1)
    np.testing.assert_array_equal(np.sort(_rows_of_epoch(seq)), np.arange(0, n, 2))


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_same_seed_same_epochs_new_order_each_epoch(sized_files, seed):
    a = H5Sequence(sized_files[257], batch_size=16, seed=seed)
    b = H5Sequence(sized_files[257], batch_size=16, seed=seed)
    orders = []
    for _ in range(3):
        ra, rb = _rows_of_epoch(a), _rows_of_epoch(b)
        np.testing.assert_array_equal(ra, rb)
        orders.append(ra)
        a.on_epoch_end()
        b.on_epoch_end()
    assert not np.array_equal(orders[0], orders[1])
    c = H5Sequence(sized_files[257], batch_size=16, seed=seed + 1)
    assert not np.array_equal(_rows_of_epoch(c), orders[0])


def test_set_epoch_reproduces_an_epoch(sized_files):
    seq = H5Sequence(sized_files[100], batch_size=10, seed=3)
    seq.on_epoch_end()
    seq.on_epoch_end()
    third = _rows_of_epoch(seq)
    fresh = H5Sequence(sized_files[100], batch_size=10, seed=3)
    fresh.set_epoch(2)
    np.testing.assert_array_equal(_rows_of_epoch(fresh), third)


def test_last_batch_is_short_or_dropped(sized_files):
    seq = H5Sequence(sized_files[33], batch_size=32, shuffle=False)
    assert len(seq) == 2 and len(seq[1][0]) == 1
    dropped = H5Sequence(sized_files[33], batch_size=32, shuffle=False, drop_remainder=True)
    assert len(dropped) == 1
    with pytest.raises(IndexError):
        dropped[1]
    with pytest.raises(IndexError):
        seq[len(seq)]


def test_batches_keep_the_file_dtype_and_one_hot_labels(small_file, arrays):
    ids, x, y = arrays
    seq = H5Sequence(small_file, "train", batch_size=16, shuffle=False)
    X, Y = seq[0]
    assert X.dtype == np.float32 and X.shape == (16, 4, 3)
    assert Y.dtype == np.float32 and Y.shape == (16, 5)
    np.testing.assert_array_equal(Y.argmax(1), y[:16])
    np.testing.assert_array_equal(Y.sum(1), 1)
    sparse = H5Sequence(small_file, "train", batch_size=16, shuffle=False, one_hot=False)[0][1]
    np.testing.assert_array_equal(sparse, y[:16])


def test_ids_select_rows_in_the_order_given(small_file, arrays):
    ids, x, y = arrays
    wanted = ["id-42", "id-3", "id-99", "id-0", "id-3"]
    seq = H5Sequence(small_file, ids=wanted, batch_size=2, shuffle=False)
    got = np.concatenate([seq[i][0] for i in range(len(seq))])
    np.testing.assert_array_equal(got, x[[42, 3, 99, 0, 3]])


def test_unknown_split_and_unknown_ids_are_named(small_file):
    with pytest.raises(errors.UnknownSplitError, match="'test'.*\\['train', 'validation'\\]"):
        H5Sequence(small_file, "test")
    with pytest.raises(KeyError):
        H5Sequence(small_file, "test")
    with pytest.raises(errors.UnknownIDError, match="'nope'"):
        H5Sequence(small_file, ids=["id-1", "nope"])


def test_multi_input_dict_and_lists(tmp_path, arrays):
    ids, x, y = arrays
    path = h5feed.write_arrays(
        tmp_path / "m.h5", ids, x, y, n_classes=5, extras={"aux": np.arange(100.0)[:, None] * 2}
    )
    seq = H5Sequence(path, x={"image": "x", "meta": "aux"}, y=["y", "aux"], batch_size=10, shuffle=False)
    X, Y = seq[3]
    assert set(X) == {"image", "meta"}
    np.testing.assert_array_equal(X["image"], x[30:40])
    np.testing.assert_array_equal(X["meta"][:, 0], np.arange(30, 40) * 2.0)
    assert isinstance(Y, tuple) and len(Y) == 2
    np.testing.assert_array_equal(Y[0], y[30:40])  # a list of targets is not one-hot
    with pytest.raises(errors.LayoutError, match="'nope'"):
        H5Sequence(path, x={"image": "nope"})


def test_unknown_keyword_is_an_error(small_file):
    with pytest.raises(TypeError, match="shufle"):
        H5Sequence(small_file, shufle=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"shuffle": "yes"}, "shuffle"),
        ({"seed": 1.5}, "seed"),
        ({"one_hot": "no"}, "one_hot"),
    ],
)
def test_bad_options_are_named(small_file, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        H5Sequence(small_file, **kwargs)


def test_pickle_round_trip_keeps_order_and_drops_handles(small_file):
    seq = H5Sequence(small_file, "train", batch_size=8, seed=5)
    seq.on_epoch_end()
    first = seq[2]
    clone = pickle.loads(pickle.dumps(seq))
    assert clone._reader._file is None and not clone._reader._maps
    assert clone.epoch == 1
    np.testing.assert_array_equal(clone[2][0], first[0])
    np.testing.assert_array_equal(clone[2][1], first[1])
    assert len(pickle.dumps(seq)) < 20_000  # paths and arrays, not data


def test_transform_runs_on_each_batch(small_file):
    seq = H5Sequence(small_file, batch_size=8, shuffle=False, transform=_double_x)
    plain = H5Sequence(small_file, batch_size=8, shuffle=False)
    np.testing.assert_array_equal(seq[1][0], plain[1][0] * 2)


def _double_x(X, Y):
    return X * 2, Y


def test_context_manager_closes_and_reopens(small_file):
    with H5Sequence(small_file, batch_size=8) as seq:
        seq[0]
    assert seq._reader._file is None and not seq._reader._maps
    seq[0]  # reopens lazily


def test_inputs_only_when_the_file_has_no_labels(tmp_path):
    path = tmp_path / "u.h5"
    with h5feed.DatasetWriter(path, sample_shape=(2,), dtype="float32", target_dtype=None) as w:
        w.extend(["a", "b", "c"], np.zeros((3, 2), np.float32))
    batch = H5Sequence(path, batch_size=2, shuffle=False)[0]
    assert isinstance(batch, tuple) and len(batch) == 1


@pytest.mark.parametrize("seed", range(5))
def test_requests_in_any_order_get_the_seeds_batches_in_request_order(sized_files, seed):
    """Keras's fit(shuffle=True) asks for batches in an unseeded random order;
    the batches must still reach the model in the seed's order, each row once."""
    expected = _rows_of_epoch(H5Sequence(sized_files[257], batch_size=16, seed=seed))
    seq = H5Sequence(sized_files[257], batch_size=16, seed=seed)
    requests = np.random.default_rng(seed + 100).permutation(len(seq))
    seen = [seq[int(i)][0].reshape(-1, 12)[:, 0].astype(np.int64) for i in requests]
    np.testing.assert_array_equal(np.concatenate(seen), expected)
    # Asking again for an index gives the same batch within the epoch.
    again = seq[int(requests[3])][0].reshape(-1, 12)[:, 0]
    np.testing.assert_array_equal(again, seen[3])
    np.testing.assert_array_equal(seq.batch_rows(int(requests[3])), seen[3])


def test_unshuffled_sequence_serves_index_i_as_batch_i(sized_files):
    seq = H5Sequence(sized_files[100], batch_size=10, shuffle=False)
    np.testing.assert_array_equal(seq[7][0].reshape(-1, 12)[:, 0], np.arange(70, 80))


@pytest.mark.parametrize("seed", range(3))
def test_thread_workers_serve_the_seeds_order_whatever_the_request_order(sized_files, seed):
    expected = _rows_of_epoch(H5Sequence(sized_files[257], batch_size=8, seed=seed))
    seq = H5Sequence(sized_files[257], batch_size=8, seed=seed, workers=4)
    assert (seq.thread_workers, seq.workers, seq.use_multiprocessing) == (4, 1, False)
    requests = np.random.default_rng(seed).permutation(len(seq))
    seen = [seq[int(i)][0].reshape(-1, 12)[:, 0].astype(np.int64) for i in requests]
    np.testing.assert_array_equal(np.concatenate(seen), expected)
    seq.on_epoch_end()  # stops the threads; the next epoch starts afresh
    assert seq._threads is None
    np.testing.assert_array_equal(np.sort(_rows_of_epoch(seq)), np.arange(257))
    seq.close()


def test_an_error_in_a_thread_worker_keeps_its_type_and_names_the_ids(small_file):
    seq = H5Sequence(small_file, batch_size=8, shuffle=False, workers=2, transform=_refuse_batch_3)
    seq[0]
    with pytest.raises(ArithmeticError, match=r"refused.*'id-24'"):
        for i in range(1, len(seq)):
            seq[i]
    seq.close()


def _refuse_batch_3(X, Y):
    if X.reshape(len(X), -1)[0, 0] == 24:
        raise ArithmeticError("refused")
    return X, Y


def test_a_copy_at_an_epoch_reads_that_epoch_and_leaves_the_sequence_alone(small_file):
    seq = h5feed.H5Sequence(small_file, "train", batch_size=10, seed=4, workers=2)
    seq.set_epoch(1)
    first = [seq[i] for i in range(len(seq))]
    copy = seq.copy_at_epoch(3)
    assert (copy.epoch, seq.epoch) == (3, 1)
    assert copy.thread_workers == 0 and copy.process_workers == 0  # reads in this process
    assert copy._maker.reader is not seq._maker.reader and copy._ahead is not seq._ahead
    got = [copy[i] for i in range(len(copy))]
    copy.close()
    # The sequence is where it was, and reads on with its own handle.
    for i, (X, Y) in enumerate(first):
        np.testing.assert_array_equal(seq[i][0], X)
        np.testing.assert_array_equal(seq[i][1], Y)
    seq.set_epoch(3)
    for i, (X, Y) in enumerate(got):
        np.testing.assert_array_equal(seq[i][0], X)
        np.testing.assert_array_equal(seq[i][1], Y)
    seq.close()
    with pytest.raises(ValueError, match="epoch"):
        seq.copy_at_epoch(-1)


def _flatten_to_float16(X, Y):
    return X.reshape(len(X), -1).astype(np.float16), Y


def test_an_example_batch_has_the_structure_and_dtypes_of_every_batch(tmp_path, arrays):
    ids, x, y = arrays
    path = h5feed.write_arrays(
        tmp_path / "m.h5", ids, x, y, n_classes=5, extras={"aux": np.arange(100, dtype=np.int16)[:, None]}
    )
    cases = [
        ({}, 0),
        ({"x": {"img": "x", "meta": "aux"}, "y": "y", "one_hot": False}, 0),
        ({"x": ["x", "aux"], "y": None}, 0),
        ({"transform": _flatten_to_float16}, 32),  # read through the transform: batch 0
    ]
    for options, rows in cases:
        seq = h5feed.H5Sequence(path, batch_size=32, seed=1, **options)
        example, batch = seq.example_batch(), seq[1]
        flat_example, flat_batch = _leaves(example), _leaves(batch)
        assert [type(a) for a in flat_example] == [type(b) for b in flat_batch]
        for a, b in zip(flat_example, flat_batch):
            assert a.dtype == b.dtype and a.shape == (rows, *b.shape[1:])
        assert seq.epoch == 0
        seq.close()


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    if isinstance(tree, tuple):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [tree]


@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("bad", [5, -1, 2**31 - 1])
def test_a_class_index_out_of_range_fails_its_batch_naming_the_row(tmp_path, one_hot, bad):
    # The labels are checked per batch, not when the file opens: the batch
    # that holds the bad label fails with a LayoutError naming its row; the
    # others read as usual.
    ids, x, y = make_arrays(40, seed=4)
    path = tmp_path / "labels.h5"
    h5feed.write_arrays(path, ids, x, y.astype(np.int32), n_classes=5)
    import h5py

    with h5py.File(path, "r+") as f:  # damage one label after the file was written
        f["y"][17] = bad
    seq = H5Sequence(path, batch_size=8, shuffle=False, one_hot=one_hot)
    for i in range(len(seq)):
        if i == 17 // 8:
            with pytest.raises(errors.LayoutError, match=rf"/y: class index {bad} at row 17 is outside \[0, 5\)"):
                seq[i]
        else:
            Y = seq[i][1]
            assert (Y.shape == (8, 5)) if one_hot else (Y.shape == (8,))
