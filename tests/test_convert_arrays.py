"""The array-pair converter: X.npy (and Y.npy), read block by block."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import errors
from h5feed.convert import from_arrays
from h5feed.convert.arrays import NpyRows, map_npy

from convert_helpers import leftovers, read_by_ids
from readback import read_back


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4, 2)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    np.save(tmp_path / "X.npy", x)
    np.save(tmp_path / "Y.npy", y)
    ids = [f"s-{i:03d}" for i in range(50)]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    return tmp_path, x, y, ids


def test_round_trip_by_id(pair):
    folder, x, y, ids = pair
    result = from_arrays(folder / "X.npy", folder / "Y.npy", folder / "o.h5", ids=folder / "ids.txt",
                         partition={"train": ids[:40], "validation": ids[40:]})
    layout = h5feed.open_file(result.path)
    assert layout.n_classes == 3 and dict(layout.splits) == {"train": 40, "validation": 10}
    pick = [ids[i] for i in (49, 3, 17)]
    X, Y = read_by_ids(result.path, pick)
    np.testing.assert_array_equal(X, x[[49, 3, 17]])
    np.testing.assert_array_equal(Y, y[[49, 3, 17]])
    back = read_back(result.path)
    assert back["ids"] == ids and back["splits"] == {"train": ids[:40], "validation": ids[40:]}
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["y"], y)


def test_inputs_are_read_by_rows_not_loaded(pair):
    folder, x, _, _ = pair
    rows = map_npy(folder / "X.npy", "X")
    assert isinstance(rows, NpyRows) and len(rows) == 50 and rows.shape == x.shape
    np.testing.assert_array_equal(rows[3:17], x[3:17])
    picked = np.array([0, 1, 2, 9, 30, 31, 49])
    np.testing.assert_array_equal(rows[picked], x[picked])
    np.testing.assert_array_equal(rows[45:60], x[45:])
    rows.close()


def test_big_endian_and_fortran_order_arrays(tmp_path):
    x = np.arange(24, dtype=">f8").reshape(6, 4)
    np.save(tmp_path / "be.npy", x)
    np.save(tmp_path / "f.npy", np.asfortranarray(x.astype("<i4")))
    for name in ("be.npy", "f.npy"):
        path = from_arrays(tmp_path / name, None, tmp_path / f"{name}.h5").path
        X = read_by_ids(path, ["5", "0"], labels=False)
        np.testing.assert_array_equal(X, x[[5, 0]])
        back = read_back(path)
        assert back["ids"] == [str(i) for i in range(6)] and "y" not in back
        np.testing.assert_array_equal(back["x"], x)


def test_float_and_2d_targets_and_default_ids(pair):
    folder, x, _, _ = pair
    targets = np.linspace(0, 1, 100, dtype=np.float64).reshape(50, 2)
    np.save(folder / "T.npy", targets)
    path = from_arrays(folder / "X.npy", folder / "T.npy", folder / "o.h5").path
    layout = h5feed.open_file(path)
    assert layout.n_classes is None and layout.column("y").shape == (50, 2)
    X, Y = read_by_ids(path, ["7"])
    np.testing.assert_array_equal(Y[0], targets[7])
    np.testing.assert_array_equal(X[0], x[7])
    back = read_back(path)
    assert back["ids"] == [str(i) for i in range(50)]
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["y"], targets)


@pytest.mark.parametrize("seed", [0, 9])
def test_shuffle_rows_keeps_rows_whole(pair, seed):
    folder, x, y, ids = pair
    path = from_arrays(folder / "X.npy", folder / "Y.npy", folder / "o.h5", ids=ids, shuffle_rows=True,
                       seed=seed, chunk_rows=7).path
    with h5py.File(path) as f:
        got_ids, gx, gy = list(f["ids"].asstr()[()]), f["x"][()], f["y"][()]
        assert f["x"].chunks[0] == 7
    order = np.random.default_rng(seed).permutation(50)
    assert got_ids == [ids[i] for i in order]
    np.testing.assert_array_equal(gx, x[order])
    np.testing.assert_array_equal(gy, y[order])


def test_unlabelled_and_in_memory_arrays(tmp_path):
    x = np.arange(12, dtype=np.int32).reshape(6, 2)
    path = from_arrays(x, None, tmp_path / "u.h5").path
    layout = h5feed.open_file(path)
    assert not layout.has_y and layout.column("x").dtype == np.int32
    back = read_back(path)
    assert back["ids"] == [str(i) for i in range(6)] and "y" not in back
    np.testing.assert_array_equal(back["x"], x)


BAD = [
    ("y-rows", lambda f: np.save(f / "Y.npy", np.zeros(49, np.int64)), {}, r"Y\.npy: has 49 rows, but X has 50"),
    ("object-x", lambda f: np.save(f / "X.npy", np.array([None] * 50, dtype=object), allow_pickle=True), {},
     r"X\.npy \(X\): holds an object \(pickled\) array"),
    ("truncated-x", lambda f: (f / "X.npy").write_bytes((f / "X.npy").read_bytes()[:300]), {}, r"X\.npy \(X\): truncated"),
    ("negative-label", lambda f: np.save(f / "Y.npy", np.full(50, -2)), {}, r"Y\.npy: row 0: class index -2 is outside"),
    ("label-out-of-range", lambda f: None, {"n_classes": 2}, r"Y\.npy: row \d+: class index 2 is outside \[0, 2\)"),
    ("few-ids", lambda f: (f / "ids.txt").write_text("a\nb\n"), {}, r"ids\.txt: 2 IDs for 50 rows of X"),
    ("duplicate-ids", lambda f: (f / "ids.txt").write_text("a\n" * 50), {}, r"ids\.txt: 49 duplicate sample ID\(s\), e\.g\. 'a'"),
    ("empty-id-line", lambda f: (f / "ids.txt").write_text("a\n\n" + "x\n" * 48), {}, r"ids\.txt: line 2: empty sample ID"),
    ("empty-x", lambda f: np.save(f / "X.npy", np.zeros((0, 3), np.float32)), {}, r"X\.npy: has no rows \(an empty source\)"),
    ("missing-x", lambda f: (f / "X.npy").unlink(), {}, r"X\.npy: no such file"),
]


@pytest.mark.parametrize("kind, damage, options, message", BAD, ids=[b[0] for b in BAD])
def test_bad_arrays_are_named_and_leave_no_output(pair, kind, damage, options, message):
    folder, _, _, _ = pair
    damage(folder)
    out = folder / "out"
    out.mkdir()
    with pytest.raises(errors.SourceError, match=message):
        from_arrays(folder / "X.npy", folder / "Y.npy", out / "o.h5", ids=folder / "ids.txt", **options)
    assert leftovers(out) == []


def test_default_ids_are_the_row_numbers(pair):
    # Made a block at a time as the writer takes them (never a list of all).
    folder, x, y, _ = pair
    result = from_arrays(folder / "X.npy", folder / "Y.npy", folder / "d.h5", shuffle_rows=True, seed=2,
                         partition={"train": [str(i) for i in range(40)], "validation": ["40", "49"]})
    X, _ = read_by_ids(result.path, ["49", "0", "40"])
    np.testing.assert_array_equal(X, x[[49, 0, 40]])
    with h5py.File(result.path) as f:
        assert sorted(f["ids"].asstr()[()].tolist(), key=int) == [str(i) for i in range(50)]
    for bad in ("07", "50", "-1", "٣"):  # not the decimal of a row
        with pytest.raises(errors.SourceError, match="have no sample"):
            from_arrays(folder / "X.npy", folder / "Y.npy", folder / "e.h5", partition={"train": [bad]})
