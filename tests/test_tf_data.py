"""tf.data adapter: the Sequence's invariants, element_spec, model.fit, MirroredStrategy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import h5feed

from conftest import make_arrays

tf = pytest.importorskip("tensorflow", reason="the tf.data adapter needs TensorFlow")
from h5feed.sequence import H5Sequence  # noqa: E402
from h5feed.tf_data import dataset_from_sequence, tf_dataset  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "tf_distribute_script.py")


def _epoch(ds):
    """All batches of one iteration, as numpy: list of (X, Y) tuples."""
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds]


def _rows(batches):
    return np.concatenate([b[0].reshape(len(b[0]), -1)[:, 0] for b in batches]).astype(np.int64)


@pytest.fixture(scope="module")
def sized_files(tmp_path_factory):
    files = {}
    for n in (1, 33, 100):
        ids, x, y = make_arrays(n, seed=n)
        path = tmp_path_factory.mktemp("tfd") / f"n{n}.h5"
        h5feed.write_arrays(path, ids, x, y, n_classes=5)
        files[n] = path
    return files


@pytest.mark.parametrize("n", [1, 33, 100])
@pytest.mark.parametrize("shuffle", [True, False, "block"])
def test_every_row_once_per_epoch_and_same_batches_as_the_sequence(sized_files, n, shuffle):
    kw = dict(batch_size=8, shuffle=shuffle, seed=n, block_rows=4)
    ds = tf_dataset(sized_files[n], **kw)
    seq = H5Sequence(sized_files[n], **kw)
    orders = []
    for _ in range(3):  # each iteration is the next epoch
        got = _epoch(ds)
        assert len(got) == len(seq)
        for i, (X, Y) in enumerate(got):
            want = seq[i]
            np.testing.assert_array_equal(X, want[0])
            np.testing.assert_array_equal(Y, want[1])
        rows = _rows(got)
        np.testing.assert_array_equal(np.sort(rows), np.arange(n))
        orders.append(rows)
        seq.on_epoch_end()
    if shuffle and n > 8:
        assert not np.array_equal(orders[0], orders[1])


def test_same_bytes_as_a_plain_read_in_every_layout(any_layout_file):
    ds = tf_dataset(any_layout_file, "train", batch_size=16, seed=1, one_hot=False)
    batches = _epoch(ds)
    rows = _rows(batches)
    with h5py.File(any_layout_file) as f:
        x, y = f["x"][()], f["y"][()]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x[rows])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y[rows])


def test_first_epoch_and_the_sequence_are_left_alone(small_file):
    seq = H5Sequence(small_file, "train", batch_size=10, seed=4)
    seq.set_epoch(2)
    ds = seq.to_tf_dataset()
    first = _rows(_epoch(ds))
    assert seq.epoch == 2
    np.testing.assert_array_equal(first, seq.epoch_rows())
    seq.on_epoch_end()
    np.testing.assert_array_equal(_rows(_epoch(ds)), seq.epoch_rows())  # iteration 2 is epoch 3
    again = dataset_from_sequence(seq, first_epoch=2)
    np.testing.assert_array_equal(_rows(_epoch(again)), first)


def test_element_spec_comes_from_the_layout(tmp_path, arrays):
    ids, x, y = arrays
    path = h5feed.write_arrays(
        tmp_path / "m.h5", ids, x, y, n_classes=5, extras={"aux": np.arange(100, dtype=np.int16)[:, None]}
    )
    spec = tf_dataset(path, batch_size=4).element_spec
    assert spec == (tf.TensorSpec((None, 4, 3), tf.float32), tf.TensorSpec((None, 5), tf.float32))
    spec = tf_dataset(path, x={"img": "x", "meta": "aux"}, y="y", one_hot=False).element_spec
    assert spec == (
        {"img": tf.TensorSpec((None, 4, 3), tf.float32), "meta": tf.TensorSpec((None, 1), tf.int16)},
        tf.TensorSpec((None,), tf.int64),
    )
    spec = tf_dataset(path, x=["x", "aux"], y=None).element_spec
    assert spec == ((tf.TensorSpec((None, 4, 3), tf.float32), tf.TensorSpec((None, 1), tf.int16)),)
    ds = tf_dataset(path, x=["x", "aux"], y=None, batch_size=30, shuffle=False)
    (X,) = next(iter(ds))
    np.testing.assert_array_equal(X[1].numpy()[:, 0], np.arange(30))


def _flatten_to_float16(X, Y):
    return X.reshape(len(X), -1).astype(np.float16), Y


def test_element_spec_follows_a_transform(small_file):
    ds = tf_dataset(small_file, "train", batch_size=8, transform=_flatten_to_float16)
    assert ds.element_spec[0] == tf.TensorSpec((None, 12), tf.float16)
    X, _ = next(iter(ds))
    assert X.shape[1:] == (12,)


def test_shards_partition_every_epoch(sized_files):
    for drop in (False, True):
        epochs = []
        for k in range(3):
            ds = tf_dataset(sized_files[100], batch_size=7, seed=9, shard=(k, 3), drop_remainder=drop)
            epochs.append([_rows(_epoch(ds)) for _ in range(2)])
        for e in range(2):
            rows = np.concatenate([epochs[k][e] for k in range(3)])
            assert len(rows) == len(set(rows.tolist()))
            if drop:
                assert all(len(epochs[k][e]) == 28 for k in range(3))  # 33 rows each, floor to batches of 7
            else:
                np.testing.assert_array_equal(np.sort(rows), np.arange(100))


def test_keras_worker_options_are_refused(small_file):
    with pytest.raises(TypeError, match="workers"):
        tf_dataset(small_file, workers=2)
    with pytest.raises(TypeError, match="shufle"):
        tf_dataset(small_file, shufle=False)
    with pytest.raises(ValueError, match="first_epoch"):
        tf_dataset(small_file, first_epoch=-1)


@pytest.mark.slow
def test_model_fit_trains_from_a_tf_dataset(small_file):
    import keras

    keras.utils.set_random_seed(0)
    ds = tf_dataset(small_file, "train", batch_size=10, seed=0)
    model = keras.Sequential([keras.Input((4, 3)), keras.layers.Flatten(), keras.layers.Dense(5, activation="softmax")])
    model.compile("adam", "categorical_crossentropy")
    history = model.fit(ds, epochs=3, verbose=0, shuffle=False, validation_data=tf_dataset(small_file, "validation", shuffle=False))
    assert len(history.history["loss"]) == 3 and np.isfinite(history.history["val_loss"]).all()


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_sees_every_row_once(small_file):
    # Logical devices must be configured before TensorFlow initialises, so
    # this runs in a fresh interpreter.
    proc = subprocess.run(
        [sys.executable, SCRIPT, str(small_file)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    for rows in result["epochs"]:
        assert sorted(rows) == list(range(70))
    assert result["epochs"][0] != result["epochs"][1]
    assert result["per_replica_nonempty"]
    # distribute_datasets_from_function: per-replica batches of 4, the
    # trailing short batches dropped: 68 of the 70 rows, each once.
    assert len(result["from_function_rows"]) == 68 == len(set(result["from_function_rows"]))
    assert all(np.isfinite(result["loss"]))


def _imports(module) -> set[str]:
    """The modules (and names) ``module`` imports anywhere in it."""
    import ast
    import inspect

    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
            found |= {alias.name for alias in node.names}
    return found


def test_dependencies_point_one_way_from_tf_data_to_the_sequence():
    import ast
    import inspect

    import h5feed._tf
    import h5feed.sequence
    import h5feed.tf_data

    # The sequence never imports tf_data (it builds datasets through _tf).
    assert not any("tf_data" in name for name in _imports(h5feed.sequence))
    # _tf knows nothing of the sequence or the adapters.
    assert not any(part in name for name in _imports(h5feed._tf) for part in ("sequence", "tf_data", "_batch"))
    # tf_data uses the sequence's public API only: no private attribute of
    # anything but its own helper module.
    private = {
        node.attr
        for node in ast.walk(ast.parse(inspect.getsource(h5feed.tf_data)))
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    }
    assert private == set()
