"""The image-folder converter: DIR/<class>/<image>, Keras's convention."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import errors
from h5feed.convert import from_image_dir

from convert_helpers import leftovers, read_by_ids
from readback import read_back

Image = pytest.importorskip("PIL.Image")

EXTENSIONS = ["png", "bmp", "gif", "jpg"]


def make_image_folder(root, classes=("cat", "dog", "eel"), per_class=4, size=(6, 5), seed=0):
    """root/<class>/<k>.<ext> images, lossless formats and one JPEG each;
    returns {ID: (uint8 RGB array, class index)} for the lossless ones."""
    rng = np.random.default_rng(seed)
    expected = {}
    for label, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(per_class):
            ext = EXTENSIONS[k % len(EXTENSIONS)]
            rel = f"{name}/{k}.{ext}"
            arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            if ext == "gif":  # palette images: use few colours so they survive
                arr = (arr // 128 * 255).astype(np.uint8)
            Image.fromarray(arr).save(os.path.join(root, rel))
            if ext != "jpg":
                expected[rel] = (arr, label)
    return expected


def test_round_trip_by_id_with_class_names(tmp_path):
    src = tmp_path / "images"
    expected = make_image_folder(str(src))
    (src / "README.txt").write_text("not an image, not in a class folder")
    (src / "cat" / "notes.txt").write_text("not an image")
    (src / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(src / ".ipynb_checkpoints" / "x.png")
    (src / "dog" / "._0.png").write_bytes(b"macOS resource fork, not an image")
    result = from_image_dir(src, tmp_path / "img.h5", size=(6, 5))
    layout = h5feed.open_file(result.path)
    assert result.rows == 12
    assert layout.class_names == ("cat", "dog", "eel") and layout.n_classes == 3
    assert layout.column("x").shape == (12, 6, 5, 3) and layout.column("x").dtype == np.uint8
    ids = sorted(expected)
    X, Y = read_by_ids(result.path, ids)
    for i, sid in enumerate(ids):
        np.testing.assert_array_equal(X[i], expected[sid][0])
        assert Y[i] == expected[sid][1]
    with h5py.File(result.path) as f:
        assert "cat/3.jpg" in set(f["ids"].asstr()[()])


def test_resize_grayscale_and_nested_folders(tmp_path):
    src = tmp_path / "images"
    (src / "a" / "deep" / "er").mkdir(parents=True)
    (src / "b").mkdir()
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(src / "a" / "deep" / "er" / "x.png")
    Image.fromarray(np.full((10, 10, 3), 10, np.uint8)).save(src / "b" / "y.PNG")
    result = from_image_dir(src, tmp_path / "g.h5", size=(8, 4), color="grayscale")
    X, Y = read_by_ids(result.path, ["a/deep/er/x.png", "b/y.PNG"])
    assert X.shape == (2, 8, 4, 1)
    assert np.all(X[0] == 200) and np.all(X[1] == 10)
    assert Y.tolist() == [0, 1]


def test_validation_split_is_seeded_and_covers_everything_once(tmp_path):
    src = tmp_path / "images"
    expected = make_image_folder(str(src), per_class=10)

    def split_of(name, seed, **options):
        path = from_image_dir(src, tmp_path / name, size=(6, 5), validation_split=0.2, seed=seed, **options).path
        back = read_back(path)
        assert len(back["ids"]) == 30
        for row, sid in enumerate(back["ids"]):  # whatever the split, the rows hold their images
            if sid in expected:
                np.testing.assert_array_equal(back["x"][row], expected[sid][0])
                assert back["y"][row] == expected[sid][1]
        split = {name: sorted(ids) for name, ids in back["splits"].items()}
        assert len(split["validation"]) == 6 and len(split["train"]) == 24
        assert sorted(split["train"] + split["validation"]) == sorted(back["ids"])  # each image once
        return split

    seed_0 = split_of("a.h5", 0)
    assert split_of("b.h5", 0, shuffle_rows=True) == seed_0  # the seed decides, not the row order
    assert split_of("c.h5", 0) == seed_0  # the same seed, the same split
    assert split_of("d.h5", 3) != seed_0  # another seed, another split


@pytest.mark.slow
def test_two_workers_write_the_same_file_as_one(tmp_path):
    src = tmp_path / "images"
    make_image_folder(str(src), per_class=40, size=(16, 16))
    one = from_image_dir(src, tmp_path / "one.h5", size=(8, 8))
    two = from_image_dir(src, tmp_path / "two.h5", size=(8, 8), workers=2)
    assert h5feed.open_file(one.path).completion["sha256"] == h5feed.open_file(two.path).completion["sha256"]
    a, b = read_back(one.path), read_back(two.path)
    assert a["ids"] == b["ids"] and len(a["ids"]) == 120
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["y"], b["y"])
    assert a["x"].shape == (120, 8, 8, 3)
    assert a["y"].tolist() == [("cat", "dog", "eel").index(sid.split("/")[0]) for sid in a["ids"]]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("corrupt", r"dog/1\.bmp \(sample 'dog/1\.bmp'\): cannot decode the image"),
        ("truncated", r"cat/0\.png \(sample 'cat/0\.png'\): cannot decode the image"),
        ("no-classes", r"no class subfolders"),
        ("no-images", r"no images"),
        ("missing", r"no such folder"),
    ],
)
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_bad_images_are_named_and_leave_no_output(tmp_path, damage, message, workers):
    src = tmp_path / "images"
    out = tmp_path / "out"
    out.mkdir()
    make_image_folder(str(src))
    if damage == "corrupt":
        (src / "dog" / "1.bmp").write_bytes(b"BM" + b"\x00" * 10)
    elif damage == "truncated":
        raw = (src / "cat" / "0.png").read_bytes()
        (src / "cat" / "0.png").write_bytes(raw[: len(raw) // 2])
    elif damage in ("no-classes", "no-images"):
        for root, dirs, files in os.walk(src, topdown=False):
            for name in files:
                os.remove(os.path.join(root, name))
            if damage == "no-classes":
                for name in dirs:
                    os.rmdir(os.path.join(root, name))
    elif damage == "missing":
        src = tmp_path / "nope"
    with pytest.raises(errors.SourceError, match=message):
        from_image_dir(src, out / "img.h5", size=(6, 5), workers=workers)
    assert leftovers(out) == []


def test_bad_options(tmp_path):
    src = tmp_path / "images"
    make_image_folder(str(src), per_class=1)
    with pytest.raises(ValueError, match="color must be one of"):
        from_image_dir(src, tmp_path / "o.h5", size=(4, 4), color="cmyk")
    with pytest.raises(ValueError, match="size must be"):
        from_image_dir(src, tmp_path / "o.h5", size=(0, 4))
    with pytest.raises(ValueError, match="validation_split must be a fraction"):
        from_image_dir(src, tmp_path / "o.h5", size=(4, 4), validation_split=1.5)
    with pytest.raises(errors.SourceError, match="leaves no validation images"):
        from_image_dir(src, tmp_path / "o.h5", size=(4, 4), validation_split=0.1)
    assert not (tmp_path / "o.h5").exists()
