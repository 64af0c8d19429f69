"""``--weights``: every converter writes per-sample weights as the dataset ``w``."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from h5feed import errors
from h5feed.cli import main
from h5feed.convert import from_arrays, from_csv, from_npy_dir

from convert_helpers import TUTORIAL_LABELS, leftovers, make_npy_folder


def _weights_by_id(path):
    with h5py.File(path) as f:
        assert f["w"].dtype == np.float32 and f["w"].shape == (len(f["ids"]),)
        return dict(zip(f["ids"].asstr()[()].tolist(), f["w"][()].tolist()))


WEIGHTS = {"id-1": 0.5, "id-2": 2.0, "id-3": 0.0, "id-4": 1.25}


@pytest.mark.parametrize("form", ["json", "csv", "dict"])
def test_npy_weights_by_id_from_json_csv_or_a_dict(tmp_path, form):
    data, labels, _, _ = make_npy_folder(str(tmp_path), TUTORIAL_LABELS)
    if form == "json":
        source = tmp_path / "w.json"
        source.write_text(json.dumps(WEIGHTS))
    elif form == "csv":
        source = tmp_path / "w.csv"
        source.write_text("id,weight\n" + "".join(f"{k},{v}\n" for k, v in WEIGHTS.items()))
    else:
        source = WEIGHTS
    result = from_npy_dir(data, labels, tmp_path / "d.h5", weights=source, shuffle_rows=True, seed=1)
    assert _weights_by_id(result.path) == WEIGHTS


def test_the_command_line_takes_weights_for_every_format(tmp_path):
    data, labels, _, _ = make_npy_folder(str(tmp_path), TUTORIAL_LABELS)
    (tmp_path / "w.json").write_text(json.dumps(WEIGHTS))
    assert main(["convert", "npy", data, "--labels", labels, "--weights", str(tmp_path / "w.json"),
                 "-o", str(tmp_path / "npy.h5"), "-q"]) == 0
    assert _weights_by_id(tmp_path / "npy.h5") == WEIGHTS
    (tmp_path / "t.csv").write_text("id,a,wt,b,label\n" + "".join(f"s{i},{i},{i / 4},{-i},{i % 2}\n" for i in range(5)))
    assert main(["convert", "csv", str(tmp_path / "t.csv"), "--label-column", "label", "--id-column", "id",
                 "--weights", "wt", "-o", str(tmp_path / "csv.h5"), "-q"]) == 0
    assert _weights_by_id(tmp_path / "csv.h5") == {f"s{i}": i / 4 for i in range(5)}
    with h5py.File(tmp_path / "csv.h5") as f:
        assert f["x"].shape == (5, 2)  # the weight column is not a feature
    np.save(tmp_path / "x.npy", np.arange(12, dtype=np.float32).reshape(6, 2))
    np.save(tmp_path / "y.npy", np.arange(6) % 3)
    np.save(tmp_path / "w.npy", np.linspace(0, 1, 6))
    assert main(["convert", "arrays", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                 "--weights", str(tmp_path / "w.npy"), "--shuffle-rows", "-o", str(tmp_path / "a.h5"), "-q"]) == 0
    assert _weights_by_id(tmp_path / "a.h5") == {str(i): pytest.approx(i / 5) for i in range(6)}


def test_image_weights_name_images_by_their_path_below_the_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from h5feed.convert import from_image_dir

    for name in ("cat", "dog"):
        os.makedirs(tmp_path / "img" / name)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "img" / name / "0.png")
    result = from_image_dir(tmp_path / "img", tmp_path / "i.h5", size=(4, 4), weights={"cat/0.png": 1.0, "dog/0.png": 3.0})
    assert _weights_by_id(result.path) == {"cat/0.png": 1.0, "dog/0.png": 3.0}


@pytest.mark.parametrize(
    "weights, match",
    [
        ({"id-1": 1, "id-2": 1, "id-3": 1}, r"1 sample\(s\) of .* have no weight, e.g. 'id-4'"),
        (dict(WEIGHTS, **{"id-9": 1.0}), r"1 weighted ID\(s\) have no sample .* 'id-9'"),
        (dict(WEIGHTS, **{"id-2": -1}), r"sample 'id-2': expected a sample weight, a finite number >= 0. Received: -1"),
        (dict(WEIGHTS, **{"id-2": float("nan")}), "Received: nan"),
        (dict(WEIGHTS, **{"id-2": "heavy"}), "Received: 'heavy'"),
        (dict(WEIGHTS, **{"id-2": True}), "Received: True"),
        ({}, "holds no weights"),
    ],
    ids=["missing", "unknown-id", "negative", "nan", "text", "bool", "empty"],
)
def test_bad_weights_are_refused_naming_the_sample_and_nothing_is_written(tmp_path, weights, match):
    data, labels, _, _ = make_npy_folder(str(tmp_path), TUTORIAL_LABELS)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(errors.SourceError, match=match):
        from_npy_dir(data, labels, out / "d.h5", weights=weights)
    assert leftovers(out) == []


def test_bad_weight_files_and_columns_are_named(tmp_path):
    data, labels, _, _ = make_npy_folder(str(tmp_path), TUTORIAL_LABELS)
    (tmp_path / "w.csv").write_text("id,w\nid-1,1\n")
    with pytest.raises(errors.SourceError, match="expected a CSV with the header 'id,weight'"):
        from_npy_dir(data, labels, tmp_path / "d.h5", weights=tmp_path / "w.csv")
    (tmp_path / "t.csv").write_text("a,wt,label\n1,0.5,0\n2,x,1\n")
    with pytest.raises(errors.SourceError, match=r"t.csv, line 3, column 'wt': expected a sample weight.*'x'"):
        from_csv(tmp_path / "t.csv", tmp_path / "c.h5", label_column="label", weight_column="wt")
    with pytest.raises(errors.SourceError, match="cannot be both a feature and the label, ID or weight"):
        from_csv(tmp_path / "t.csv", tmp_path / "c.h5", label_column="label", weight_column="wt",
                 feature_columns=["a", "wt"])
    with pytest.raises(errors.SourceError, match="no weight column 'nope'"):
        from_csv(tmp_path / "t.csv", tmp_path / "c.h5", label_column="label", weight_column="nope")
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "w.npy", np.ones(3))
    with pytest.raises(errors.SourceError, match=r"w.npy: expected one weight per row of X, shape \(4,\)"):
        from_arrays(tmp_path / "x.npy", None, tmp_path / "a.h5", weights=tmp_path / "w.npy")
    np.save(tmp_path / "w.npy", np.array([1, 2, np.inf, 0]))
    with pytest.raises(errors.SourceError, match=r"row 2 \(sample '2'\).*Received: inf"):
        from_arrays(tmp_path / "x.npy", None, tmp_path / "a.h5", weights=tmp_path / "w.npy")
