"""h5feed convert --shard i/n on separate processes, then h5feed merge: the
same dataset as one conversion."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import h5feed
from h5feed.cli import main
from h5feed.convert import from_arrays, from_csv, from_npy_dir
from h5feed.inspection import verify

from convert_helpers import make_npy_folder

N = 23


@pytest.fixture(scope="module")
def npy_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard-src")
    labels = {f"id-{i}": i % 3 for i in range(N)}
    partition = {"train": [f"id-{i}" for i in range(0, N, 2)], "validation": [f"id-{i}" for i in range(1, N, 2)]}
    data, labels_path, partition_path, samples = make_npy_folder(str(root), labels, partition=partition)
    return data, labels_path, partition_path, samples, partition


def _by_id(path, *, allow_virtual=False):
    with h5py.File(path) as f:
        ids = f["ids"].asstr()[()].tolist()
        x, y = f["x"][()], f["y"][()]
        splits = {name: sorted(ids[r] for r in f["splits"][name][()]) for name in f["splits"]}
    h5feed.open_file(path, allow_virtual=allow_virtual)  # a valid h5feed file
    return {sid: (x[i], y[i]) for i, sid in enumerate(ids)}, splits


@pytest.mark.slow
def test_shards_converted_by_separate_processes_merge_into_the_whole(npy_source, tmp_path):
    data, labels, partition, samples, _ = npy_source
    whole = tmp_path / "whole.h5"
    assert main(["convert", "npy", data, "--labels", labels, "--partition", partition, "-o", str(whole), "-q"]) == 0
    parts = [tmp_path / f"part-{k}.h5" for k in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "h5feed", "convert", "npy", data, "--labels", labels, "--partition", partition,
             "--shard", f"{k}/3", "-o", str(part), "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=tmp_path,  # not the checkout's root, whose h5feed/ lacks h5feed.convert
        )
        for k, part in enumerate(parts)
    ]
    outs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err
    sizes = [h5feed.open_file(p).n_rows for p in parts]
    assert sizes == [8, 8, 7]
    # Each part is one run of the sorted IDs.
    first_ids = sorted(samples)
    for k, p in enumerate(parts):
        with h5py.File(p) as f:
            got = sorted(f["ids"].asstr()[()].tolist())
        lo = sum(sizes[:k])
        assert got == first_ids[lo : lo + sizes[k]]

    merged = tmp_path / "all.h5"
    assert main(["merge", *map(str, parts), "-o", str(merged), "-q"]) == 0
    want_rows, want_splits = _by_id(whole)
    got_rows, got_splits = _by_id(merged, allow_virtual=True)
    assert set(got_rows) == set(want_rows) and got_splits == want_splits
    for sid, (x, y) in want_rows.items():
        np.testing.assert_array_equal(got_rows[sid][0], x)
        assert got_rows[sid][1] == y
    report = verify(merged, allow_virtual=True)
    assert report.sound, report.problems
    assert main(["verify", str(merged), "-q"]) == 1  # virtual needs the opt-in
    assert main(["verify", str(merged), "-q", "--allow-virtual"]) == 0


def test_shards_of_each_converter_partition_the_source(tmp_path, npy_source):
    data, labels, partition, samples, _ = npy_source
    seen = []
    for k in range(4):
        out = tmp_path / f"npy-{k}.h5"
        from_npy_dir(data, labels, out, partition=partition, shard=(k, 4), shuffle_rows=True, seed=1)
        rows, splits = _by_id(out)
        assert set(splits["train"]) | set(splits["validation"]) == set(rows)  # the part's own members
        seen += list(rows)
    assert sorted(seen) == sorted(samples)

    x = np.arange(20, dtype=np.float32)[:, None]
    np.save(tmp_path / "X.npy", x)
    np.save(tmp_path / "Y.npy", np.arange(20) % 2)
    got = []
    for k in range(3):
        out = tmp_path / f"arr-{k}.h5"
        from_arrays(tmp_path / "X.npy", tmp_path / "Y.npy", out, shard=(k, 3))
        with h5py.File(out) as f:
            ids = f["ids"].asstr()[()].tolist()
            np.testing.assert_array_equal(f["x"][:, 0], [float(i) for i in ids])  # rows keep their own data
        got += ids
    assert sorted(got) == sorted(str(i) for i in range(20))

    table = tmp_path / "t.csv"
    table.write_text("id,f,kind\n" + "".join(f"r{i},{i},{'ab'[i % 2]}\n" for i in range(9)))
    got = []
    for k in range(2):
        for shuffle in (False, True):
            out = tmp_path / f"csv-{k}-{shuffle}.h5"
            from_csv(table, out, label_column="kind", id_column="id", shard=(k, 2), shuffle_rows=shuffle)
            with h5py.File(out) as f:
                ids = f["ids"].asstr()[()].tolist()
                np.testing.assert_array_equal(f["x"][:, 0], [float(i[1:]) for i in ids])
            if not shuffle:
                got += ids
    assert sorted(got) == sorted(f"r{i}" for i in range(9))


def test_an_empty_shard_and_bad_shard_usage_are_errors(tmp_path, capsys):
    np.save(tmp_path / "X.npy", np.zeros((2, 1), np.float32))
    assert main(["convert", "arrays", str(tmp_path / "X.npy"), "--no-labels", "--shard", "2/3",
                 "-o", str(tmp_path / "a.h5"), "-q"]) == 1
    assert "shard 2/3 holds no samples" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "a.h5")
    for bad in ("3/3", "1", "a/b", "-1/2"):
        assert main(["convert", "arrays", str(tmp_path / "X.npy"), "--no-labels", "--shard", bad,
                     "-o", str(tmp_path / "a.h5")]) == 2
        assert "I/N" in capsys.readouterr().err
    with pytest.raises(ValueError, match="shard"):
        from_arrays(tmp_path / "X.npy", None, tmp_path / "a.h5", shard=(1, 1))
