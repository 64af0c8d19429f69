"""``h5feed convert ...`` through main(argv): results on stdout, exit codes."""

from __future__ import annotations

import numpy as np
import pytest

import h5feed
from h5feed.cli import main

from convert_helpers import TUTORIAL_LABELS, TUTORIAL_PARTITION, leftovers, make_npy_folder
from readback import read_back

SAMPLES: dict = {}


@pytest.fixture
def tutorial(tmp_path):
    data, labels, partition, samples = make_npy_folder(str(tmp_path), TUTORIAL_LABELS, shape=(8, 8, 1),
                                                       partition=TUTORIAL_PARTITION)
    SAMPLES.clear()
    SAMPLES.update(samples)
    out = tmp_path / "out"
    out.mkdir()
    return data, labels, partition, out


def _assert_holds_the_tutorial(path, splits=None):
    back = read_back(path)
    assert sorted(back["ids"]) == sorted(TUTORIAL_LABELS)
    for row, sid in enumerate(back["ids"]):
        np.testing.assert_array_equal(back["x"][row], SAMPLES[sid])
        assert back["y"][row] == TUTORIAL_LABELS[sid]
    if splits is not None:
        assert back["splits"] == splits


def test_npy_last_stdout_line_is_the_path_and_row_count(tutorial, capsys):
    data, labels, partition, out = tutorial
    argv = ["convert", "npy", data, "--labels", labels, "--partition", partition, "-o", str(out / "d.h5")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == f"wrote {out / 'd.h5'} (4 rows)"
    assert "4/4 rows" in captured.err  # the progress bar goes to stderr
    assert dict(h5feed.open_file(out / "d.h5").splits) == {"train": 3, "validation": 1}
    _assert_holds_the_tutorial(out / "d.h5", TUTORIAL_PARTITION)


def test_options_reach_the_file_and_quiet_silences_progress(tutorial, capsys):
    data, labels, _, out = tutorial
    argv = ["convert", "npy", data, "--labels", labels, "-o", str(out / "d.h5"), "--compression", "gzip",
            "--checksum", "--chunk-rows", "2", "--shuffle-rows", "--seed", "3", "--workers", "1", "--quiet",
            "--classes", "5"]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
    layout = h5feed.open_file(out / "d.h5")
    x = layout.column("x")
    assert (x.compression, x.fletcher32, x.chunks[0], layout.n_classes) == ("gzip", True, 2, 5)
    _assert_holds_the_tutorial(out / "d.h5")


def test_existing_output_needs_overwrite(tutorial, capsys):
    data, labels, _, out = tutorial
    (out / "d.h5").write_bytes(b"keep")
    assert main(["convert", "npy", data, "--labels", labels, "-o", str(out / "d.h5")]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "d.h5").read_bytes() == b"keep"
    assert main(["convert", "npy", data, "--labels", labels, "-o", str(out / "d.h5"), "--overwrite", "-q"]) == 0
    _assert_holds_the_tutorial(out / "d.h5")


def test_bad_input_exits_1_naming_the_file_and_leaves_nothing(tutorial, capsys):
    data, labels, _, out = tutorial
    np.save(f"{data}/id-2.npy", np.zeros((8, 8), np.float32))
    assert main(["convert", "npy", data, "--labels", labels, "-o", str(out / "d.h5"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("h5feed convert: error: ") and "sample 'id-2'" in err and "expected shape (8, 8, 1)" in err
    assert leftovers(out) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert"], "required: FORMAT"),
        (["convert", "tiff", "x", "-o", "o.h5"], "invalid choice: 'tiff'"),
        (["convert", "npy", "DATA", "-o", "o.h5"], "one of the arguments --labels --no-labels is required"),
        (["convert", "npy", "DATA", "--labels", "l.json"], "one of the arguments -o/--output --append-to is required"),
        (["convert", "npy", "DATA", "--labels", "l.json", "--no-labels", "-o", "o.h5"], "not allowed with argument"),
        (["convert", "npy", "DATA", "--no-labels", "--classes", "3", "-o", "o.h5"], "--classes needs --labels"),
        (["convert", "npy", "DATA", "--no-labels", "-o", "o.h5", "--workers", "0"], "expected an integer >= 1"),
        (["convert", "npy", "DATA", "--no-labels", "-o", "o.h5", "--compression", "brotli"], "invalid choice: 'brotli'"),
        (["convert", "images", "DIR", "-o", "o.h5"], "required: --size"),
        (["convert", "images", "DIR", "-o", "o.h5", "--size", "big"], "expected HEIGHTxWIDTH"),
        (["convert", "images", "DIR", "-o", "o.h5", "--size", "4x4", "--validation-split", "1.5"], "between 0 and 1"),
        (["convert", "csv", "T.csv", "-o", "o.h5"], "one of the arguments --label-column --no-labels is required"),
        (["convert", "arrays", "X.npy", "-o", "o.h5"], "give Y.npy, or --no-labels"),
        (["convert", "arrays", "X.npy", "Y.npy", "--no-labels", "-o", "o.h5"], "give Y.npy, or --no-labels"),
    ],
)
def test_bad_usage_exits_2_with_the_usage_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: h5feed convert" in err and message in err
    assert leftovers(tmp_path) == []


def test_images_csv_and_arrays_from_the_shell(tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    (tmp_path / "img" / "a").mkdir(parents=True)
    (tmp_path / "img" / "b").mkdir()
    for i in range(4):
        pil.fromarray(np.full((5, 5, 3), i * 40, np.uint8)).save(tmp_path / "img" / "ab"[i % 2] / f"{i}.png")
    assert main(["convert", "images", str(tmp_path / "img"), "-o", str(tmp_path / "i.h5"), "--size", "4x3",
                 "--color", "grayscale", "--validation-split", "0.5", "-q"]) == 0
    layout = h5feed.open_file(tmp_path / "i.h5")
    assert layout.column("x").shape == (4, 4, 3, 1) and dict(layout.splits) == {"train": 2, "validation": 2}
    back = read_back(tmp_path / "i.h5")  # flat grey images: every pixel is its grey level
    assert sorted(back["ids"]) == ["a/0.png", "a/2.png", "b/1.png", "b/3.png"]
    for row, sid in enumerate(back["ids"]):
        level = int(sid[2]) * 40
        assert (back["x"][row] == level).all() and back["y"][row] == "ab".index(sid[0])
    assert sorted(back["splits"]["train"] + back["splits"]["validation"]) == sorted(back["ids"])

    (tmp_path / "t.csv").write_text("id,f1,f2,kind\nr1,1,2,cat\nr2,3,4,dog\n")
    assert main(["convert", "csv", str(tmp_path / "t.csv"), "--label-column", "kind", "--id-column", "id",
                 "-o", str(tmp_path / "c.h5"), "-q"]) == 0
    assert h5feed.open_file(tmp_path / "c.h5").class_names == ("cat", "dog")
    back = read_back(tmp_path / "c.h5")
    assert back["ids"] == ["r1", "r2"] and back["x"].tolist() == [[1, 2], [3, 4]] and back["y"].tolist() == [0, 1]

    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(tmp_path / "X.npy", x)
    np.save(tmp_path / "Y.npy", np.array([0, 1, 1]))
    assert main(["convert", "arrays", str(tmp_path / "X.npy"), str(tmp_path / "Y.npy"), "-o", str(tmp_path / "a.h5"), "-q"]) == 0
    assert main(["convert", "arrays", str(tmp_path / "X.npy"), "--no-labels", "-o", str(tmp_path / "u.h5"), "-q"]) == 0
    for name in ("a.h5", "u.h5"):
        back = read_back(tmp_path / name)
        assert back["ids"] == ["0", "1", "2"] and back["x"].tolist() == x.tolist()
        assert back["y"].tolist() == [0, 1, 1] if name == "a.h5" else "y" not in back
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" (")[1] for line in lines] == ["4 rows)", "2 rows)", "3 rows)", "3 rows)"]
