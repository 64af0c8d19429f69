"""Sample weights end to end: (X, Y, W) batches, and fit weighs them as Keras does in memory."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

import h5feed

from augmentations import noisy
from conftest import make_arrays

H5Sequence = pytest.importorskip("h5feed.sequence").H5Sequence

N = 60


@pytest.fixture(scope="module")
def weighted(tmp_path_factory):
    ids, x, y = make_arrays(N, shape=(4,), seed=5)
    w = np.random.default_rng(5).uniform(0, 2, N).astype(np.float32)
    w[::7] = 0  # some rows not trained on at all
    path = h5feed.write_arrays(tmp_path_factory.mktemp("weights") / "w.h5", ids, x, y, n_classes=5,
                               splits={"train": range(48)}, extras={"w": w})
    return path, x, y, w


def _check(batch, x, y, w):
    X, Y, W = batch
    rows = X[:, 0].astype(int)
    np.testing.assert_array_equal(X, x[rows])
    np.testing.assert_array_equal(Y.argmax(1), y[rows])
    np.testing.assert_array_equal(W, w[rows])
    return rows


@pytest.mark.parametrize("workers, multi", [(0, False), (2, False), (2, True)], ids=["in-process", "threads", "processes"])
def test_batches_are_x_y_w_with_each_rows_weight(weighted, workers, multi):
    path, x, y, w = weighted
    seq = H5Sequence(path, "train", batch_size=8, seed=2, sample_weight="w", workers=workers, use_multiprocessing=multi)
    seq._mp_context = mp.get_context("fork")
    try:
        rows = np.concatenate([_check(seq[i], x, y, w) for i in range(len(seq))])
    finally:
        seq.close()
    np.testing.assert_array_equal(np.sort(rows), np.arange(48))
    assert [a.dtype for a in seq.example_batch()] == [np.float32, np.float32, np.float32]
    assert seq.example_batch()[2].shape == (0,)


def test_a_transform_sees_x_and_y_and_the_weights_follow_their_rows(weighted):
    path, x, y, w = weighted
    seq = H5Sequence(path, batch_size=16, seed=2, sample_weight="w", transform=noisy)
    X, _, W = seq[0]
    np.testing.assert_array_equal(W, w[X[:, 0].astype(int)])


def test_tf_dataset_and_torch_give_the_weights_too(weighted):
    path, x, y, w = weighted
    pytest.importorskip("tensorflow")
    ds = h5feed.tf_dataset(path, "train", batch_size=8, seed=2, sample_weight="w")
    assert len(ds.element_spec) == 3
    for X, Y, W in ds:
        _check((X.numpy(), Y.numpy(), W.numpy()), x, y, w)
    pytest.importorskip("torch", reason="h5feed.torch needs PyTorch")
    from h5feed.torch import H5Dataset, collate

    tds = H5Dataset(path, sample_weight="w", one_hot=True)
    xs, ys, ws = tds[3]
    assert float(ws) == w[3]
    X, Y, W = collate(tds.__getitems__([5, 2, 9]))
    _check((X.numpy(), Y.numpy(), W.numpy()), x, y, w)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"sample_weight": "nope"}, h5feed.LayoutError, "'nope'"),
        ({"sample_weight": "w", "y": None}, ValueError, "needs targets"),
        ({"sample_weight": ["w"]}, TypeError, "sample_weight must be"),
    ],
    ids=["unknown", "no-targets", "not-a-name"],
)
def test_bad_sample_weight_options_are_named(weighted, kwargs, error, match):
    with pytest.raises(error, match=match):
        H5Sequence(weighted[0], **kwargs)


@pytest.mark.slow
def test_a_weighted_fit_equals_an_in_memory_fit_with_the_same_weights(weighted):
    keras = pytest.importorskip("keras")
    path, x, y, w = weighted

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="softmax")])
        m.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy", weighted_metrics=["accuracy"])
        return m

    from_file = model()
    history = from_file.fit(H5Sequence(path, "train", batch_size=8, shuffle=False, sample_weight="w"),
                            epochs=3, verbose=0, shuffle=False)
    in_memory = model()
    expected = in_memory.fit(x[:48], np.eye(5, dtype=np.float32)[y[:48]], sample_weight=w[:48], batch_size=8,
                             epochs=3, verbose=0, shuffle=False)
    for a, b in zip(from_file.get_weights(), in_memory.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)
    unweighted = model()
    unweighted.fit(H5Sequence(path, "train", batch_size=8, shuffle=False), epochs=3, verbose=0, shuffle=False)
    assert not np.allclose(unweighted.get_weights()[0], from_file.get_weights()[0])
