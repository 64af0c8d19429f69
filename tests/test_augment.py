"""Random augmentation: ``transform(X, Y, rng)`` gives the same batches everywhere.

The same seed gives bit-identical transformed batches with 0 workers, worker
threads and worker processes (fork, spawn, forkserver), through
``to_tf_dataset()`` and through ``h5feed.torch``; different batches get
independent streams; worker processes seed the global generators per worker
and epoch.
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

import h5feed

from augmentations import global_noise, noisy
from conftest import make_arrays

H5Sequence = pytest.importorskip("h5feed.sequence").H5Sequence

N, BATCH = 64, 8  # 8 batches an epoch


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    ids, x, y = make_arrays(N, shape=(5,), seed=3)
    x[:, 1:] = 0  # so a batch's values past column 0 are its noise alone
    return h5feed.write_arrays(tmp_path_factory.mktemp("augment") / "d.h5", ids, x, y, n_classes=5)


def _batches(seq, epochs=(1, 2)):
    out = []
    try:
        for epoch in epochs:
            seq.set_epoch(epoch)
            out.append([seq[i] for i in range(len(seq))])
    finally:
        seq.close()
    return out


def _same(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        for (xa, ya), (xb, yb) in zip(ea, eb):
            np.testing.assert_array_equal(xa, xb)  # bit for bit
            np.testing.assert_array_equal(ya, yb)


@pytest.fixture(scope="module")
def in_process(data_file):
    return _batches(H5Sequence(data_file, batch_size=BATCH, seed=5, transform=noisy))


def test_the_same_place_gives_the_same_noise_and_every_batch_its_own(data_file, in_process):
    _same(in_process, _batches(H5Sequence(data_file, batch_size=BATCH, seed=5, transform=noisy)))
    noise = [x[:, 1:].ravel() for epoch in in_process for x, _ in epoch]
    assert len({n.tobytes() for n in noise}) == len(noise) == 16
    other = _batches(H5Sequence(data_file, batch_size=BATCH, seed=6, transform=noisy), epochs=(1,))
    assert not np.array_equal(other[0][0][0], in_process[0][0][0])


def test_worker_threads_give_the_same_batches(data_file, in_process):
    _same(in_process, _batches(H5Sequence(data_file, batch_size=BATCH, seed=5, transform=noisy, workers=3)))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_worker_processes_give_the_same_batches_under_every_start_method(data_file, in_process, method):
    seq = H5Sequence(data_file, batch_size=BATCH, seed=5, transform=noisy, workers=2, use_multiprocessing=True)
    seq._mp_context = mp.get_context(method)
    _same(in_process, _batches(seq))


def test_a_tf_dataset_gives_the_same_batches(data_file, in_process):
    pytest.importorskip("tensorflow")
    seq = H5Sequence(data_file, batch_size=BATCH, seed=5, transform=noisy)
    ds = seq.to_tf_dataset(first_epoch=1, prefetch=2)
    _same(in_process, [[(X.numpy(), Y.numpy()) for X, Y in ds] for _ in range(2)])


def test_h5feed_torch_gives_the_same_batches(data_file, in_process):
    pytest.importorskip("torch", reason="h5feed.torch needs PyTorch")
    from torch.utils.data import DataLoader

    from h5feed.torch import BlockBatchSampler, H5Dataset, collate

    ds = H5Dataset(data_file, transform=noisy, one_hot=True)
    sampler = BlockBatchSampler(ds, BATCH, seed=5)
    sampler.set_epoch(1)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    _same(in_process, [[(X.numpy(), Y.numpy()) for X, Y in loader] for _ in range(2)])
    with pytest.raises(ValueError, match="takes an rng"):
        ds.__getitems__([0, 1])  # a plain list of indices has no place


@pytest.mark.slow
def test_worker_processes_seed_numpys_global_generator_per_worker_and_epoch(data_file):
    # Without seeding, forked workers repeat one another's np.random draws.
    seq = H5Sequence(data_file, batch_size=4, shuffle=False, seed=5, transform=global_noise,
                     workers=2, use_multiprocessing=True)
    seq._mp_context = mp.get_context("fork")
    try:
        noise = [seq[i][0][:, 1:].tobytes() for i in range(len(seq))]
        seq.on_epoch_end()
        noise += [seq[i][0][:, 1:].tobytes() for i in range(len(seq))]
    finally:
        seq.close()
    assert len(set(noise)) == len(noise) == 32
