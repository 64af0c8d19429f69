"""shard=(index, count) with real separate processes: together the shards
read every row exactly once per epoch, each its own equal part."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import h5feed

from conftest import make_arrays

SCRIPT = os.path.join(os.path.dirname(__file__), "shard_worker_script.py")
N = 101  # not a multiple of the shard count


@pytest.fixture(scope="module")
def shard_file(tmp_path_factory):
    ids, x, y = make_arrays(N, seed=3)
    path = tmp_path_factory.mktemp("shard") / "d.h5"
    h5feed.write_arrays(path, ids, x, y, n_classes=5)
    return path


def _run_all(args_per_process):
    """Start every process at once (they are independent workers), then wait."""
    procs = [
        subprocess.Popen([sys.executable, SCRIPT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in args_per_process
    ]
    outs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) if out.strip() else None for out, _ in outs]


@pytest.mark.slow
def test_sequence_shards_in_separate_processes_cover_each_epoch_once(shard_file):
    count = 3
    results = _run_all([("sequence", shard_file, k, count) for k in range(count)])
    for drop in ("keep", "drop"):
        for epoch in range(2):
            parts = [r[drop][epoch] for r in results]
            rows = sum(parts, [])
            assert len(rows) == len(set(rows))  # no row in two shards
            if drop == "drop":
                # 33 rows per shard, then batches of 8 with the short one dropped
                assert [len(p) for p in parts] == [32, 32, 32]
            else:
                assert sorted(rows) == list(range(N))
                assert [len(p) for p in parts] == [34, 34, 33]
        assert results[0][drop][0] != results[0][drop][1]  # a new permutation each epoch


@pytest.mark.slow
def test_pytorch_ddp_ranks_split_each_epoch(shard_file, tmp_path):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("the DDP recipe needs PyTorch: pip install 'h5feed[torch]'")
    world = 2
    rendezvous = tmp_path / "rendezvous"
    results = _run_all([("ddp", shard_file, rank, world, rendezvous) for rank in range(world)])
    result = results[0]
    for per_rank in result["epochs"]:
        rows = sum(per_rank, [])
        assert [len(r) for r in per_rank] == [48, 48]  # 50 rows each, whole batches of 8
        assert len(rows) == len(set(rows))
    assert result["epochs"][0] != result["epochs"][1]
    assert np.isfinite(result["loss"]).all()


def test_shards_need_a_shared_seed(shard_file):
    H5Sequence = pytest.importorskip("h5feed.sequence", reason="H5Sequence needs Keras").H5Sequence
    with pytest.raises(ValueError, match="explicit seed"):
        H5Sequence(shard_file, shard=(0, 2))
    assert len(H5Sequence(shard_file, shard=(0, 2), shuffle=False, batch_size=10)) == 6
