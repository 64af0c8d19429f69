"""The CSV converter: feature columns -> x (N, F) float32, a label column -> y."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import errors
from h5feed.convert import from_csv

from convert_helpers import leftovers, read_by_ids
from readback import read_back


def _table(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_round_trip_with_string_labels_as_class_names(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((30, 3)).astype(np.float32)
    species = rng.choice(["setosa", "virginica", "versicolor"], 30)
    rows = [(f"p{i}", *[repr(float(v)) for v in feats[i]], species[i]) for i in range(30)]
    table = _table(tmp_path / "iris.csv", ["id", "a", "b", "c", "species"], rows)
    result = from_csv(table, tmp_path / "t.h5", label_column="species", id_column="id")
    layout = h5feed.open_file(result.path)
    assert layout.class_names == ("setosa", "versicolor", "virginica")
    assert layout.column("x").shape == (30, 3) and layout.column("x").dtype == np.float32
    ids = [f"p{i}" for i in (29, 0, 11)]
    X, Y = read_by_ids(result.path, ids)
    for k, i in enumerate((29, 0, 11)):
        np.testing.assert_array_equal(X[k], feats[i])
        assert layout.class_names[Y[k]] == species[i]
    back = read_back(result.path)
    assert back["ids"] == [f"p{i}" for i in range(30)]
    np.testing.assert_array_equal(back["x"], feats)
    assert [layout.class_names[c] for c in back["y"]] == species.tolist()


def test_integer_labels_are_class_indices_and_floats_are_targets(tmp_path):
    ints = _table(tmp_path / "i.csv", ["x1", "x2", "label"], [(1, 2, 0), (3, 4, 2), (5, 6, 1)])
    layout = h5feed.open_file(from_csv(ints, tmp_path / "i.h5", label_column="label").path)
    assert layout.n_classes == 3 and layout.column("y").dtype == np.int64
    back = read_back(tmp_path / "i.h5")
    assert back["x"].tolist() == [[1, 2], [3, 4], [5, 6]] and back["y"].tolist() == [0, 2, 1]
    floats = _table(tmp_path / "f.csv", ["x1", "price"], [(1, 2.5), (3, -1), (5, 1e3)])
    path = from_csv(floats, tmp_path / "f.h5", label_column="price").path
    layout = h5feed.open_file(path)
    assert layout.n_classes is None and layout.column("y").dtype == np.float32
    X, Y = read_by_ids(path, ["1", "0"])  # row numbers as IDs
    np.testing.assert_array_equal(Y, [-1, 2.5])
    np.testing.assert_array_equal(X, [[3], [1]])
    back = read_back(path)
    assert back["ids"] == ["0", "1", "2"] and back["x"].tolist() == [[1], [3], [5]]
    assert back["y"].tolist() == [2.5, -1, 1e3]
    names = from_csv(ints, tmp_path / "n.h5", label_column="label", label_type="name").path
    assert h5feed.open_file(names).class_names == ("0", "1", "2")
    assert read_back(names)["y"].tolist() == [0, 2, 1]


def test_feature_columns_select_and_order_x(tmp_path):
    table = _table(tmp_path / "t.csv", ["a", "b", "c", "y"], [(1, 2, 3, 0), (4, 5, 6, 1)])
    path = from_csv(table, tmp_path / "t.h5", label_column="y", feature_columns=["c", "a"]).path
    X, _ = read_by_ids(path, ["0", "1"])
    np.testing.assert_array_equal(X, [[3, 1], [6, 4]])


@pytest.mark.parametrize("seed", [0, 5])
def test_shuffle_rows_and_partition_keep_rows_whole(tmp_path, seed):
    rows = [(f"r{i}", i, i * 10, i % 2) for i in range(40)]
    table = _table(tmp_path / "t.csv", ["id", "a", "b", "y"], rows)
    partition = {"train": [f"r{i}" for i in range(30)], "test": [f"r{i}" for i in range(30, 40)]}
    path = from_csv(table, tmp_path / "t.h5", label_column="y", id_column="id", shuffle_rows=True,
                    seed=seed, partition=partition).path
    with h5py.File(path) as f:
        ids, x, y = list(f["ids"].asstr()[()]), f["x"][()], f["y"][()]
        test_rows = f["splits/test"][()]
    assert ids == [f"r{i}" for i in np.random.default_rng(seed).permutation(40)]
    for row, sid in enumerate(ids):
        i = int(sid[1:])
        assert x[row].tolist() == [i, i * 10] and y[row] == i % 2
    assert sorted(ids[r] for r in test_rows) == sorted(partition["test"])
    assert leftovers(tmp_path) == ["t.csv", "t.h5"]  # the scratch copy is gone


def test_unlabelled_table(tmp_path):
    table = _table(tmp_path / "t.csv", ["a", "b"], [(1, 2), (3, 4)])
    path = from_csv(table, tmp_path / "t.h5", label_column=None).path
    assert not h5feed.open_file(path).has_y
    back = read_back(path)
    assert back["ids"] == ["0", "1"] and back["x"].tolist() == [[1, 2], [3, 4]] and "y" not in back


@pytest.mark.slow
def test_two_workers_write_the_same_file_as_one(tmp_path):
    rng = np.random.default_rng(1)
    rows = [(*rng.integers(0, 100, 8).tolist(), i % 3) for i in range(3000)]
    table = _table(tmp_path / "t.csv", [f"f{i}" for i in range(8)] + ["y"], rows)
    one = from_csv(table, tmp_path / "one.h5", label_column="y")
    two = from_csv(table, tmp_path / "two.h5", label_column="y", workers=2)
    assert h5feed.open_file(one.path).completion["sha256"] == h5feed.open_file(two.path).completion["sha256"]
    back = read_back(two.path)
    np.testing.assert_array_equal(back["x"], np.array([r[:8] for r in rows], np.float32))
    np.testing.assert_array_equal(back["y"], [r[8] for r in rows])


BAD = [
    ("bad-feature", ["id,a,y", "p1,1,0", "p2,abc,1"], {}, r"t\.csv, line 3, column 'a': expected a number\. Received: 'abc'"),
    ("empty-feature", ["id,a,y", "p1,,0"], {}, r"line 2, column 'a': expected a number\. Received: ''"),
    ("ragged", ["id,a,y", "p1,1,0", "p2,1"], {}, r"t\.csv, line 3: expected 3 values like the header\. Received: 2"),
    ("duplicate-id", ["id,a,y", "p1,1,0", "p1,2,1", "p2,3,0", "p2,4,1"], {}, r"2 duplicate sample ID\(s\) in column 'id', e\.g\. 'p1', 'p2'"),
    ("empty-id", ["id,a,y", ",1,0"], {}, r"line 2, column 'id': empty sample ID"),
    ("empty-label", ["id,a,y", "p1,1,"], {}, r"line 2, column 'y': empty label"),
    ("negative-index", ["id,a,y", "p1,1,-1"], {}, r"line 2, column 'y': class index -1 is negative"),
    ("non-integer-index", ["id,a,y", "p1,1,1.5"], {"label_type": "index"}, r"line 2, column 'y': expected an integer class index\. Received: '1\.5'"),
    ("no-label-column", ["id,a,b", "p1,1,0"], {}, r"t\.csv: no label column 'y'; the header has 'id', 'a', 'b'"),
    ("no-rows", ["id,a,y"], {}, r"no data rows \(an empty source\)"),
    ("empty-file", [], {}, r"empty file \(an empty source\)"),
    ("no-features", ["id,y", "p1,0"], {}, r"no feature columns"),
    ("partition-unknown-id", ["id,a,y", "p1,1,0"], {"partition": {"train": ["p1", "p9"]}}, r"1 partition ID\(s\) have no sample in .*t\.csv, e\.g\. 'p9'"),
]


@pytest.mark.parametrize("kind, lines, options, message", BAD, ids=[b[0] for b in BAD])
def test_bad_tables_are_named_and_leave_no_output(tmp_path, kind, lines, options, message):
    table = tmp_path / "t.csv"
    table.write_text("\n".join(lines) + ("\n" if lines else ""))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(errors.SourceError, match=message):
        from_csv(table, out / "t.h5", label_column="y", id_column="id", **options)
    assert leftovers(out) == []
