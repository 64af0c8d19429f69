"""Point 8: truncated files are an error naming the path; no hang, no crash."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import h5feed

from _harness import run_case

SIZES = {
    "empty": lambda n: 0,
    "4-bytes": lambda n: 4,
    "100-bytes": lambda n: 100,
    "half": lambda n: n // 2,
    "one-byte-short": lambda n: n - 1,
}
LAYOUTS = {
    "contiguous": {},
    "gzip-checksum": {"compression": "gzip", "checksum": True, "chunk_rows": 16},
}


@pytest.fixture(scope="module")
def sound_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sound")
    rng = np.random.default_rng(0)
    n = 400
    ids = [f"s{i}" for i in range(n)]
    x = rng.random((n, 32)).astype(np.float32)
    y = rng.integers(0, 3, n)
    files = {}
    for name, options in LAYOUTS.items():
        files[name] = folder / f"{name}.h5"
        h5feed.write_arrays(files[name], ids, x, y, splits={"train": range(300)}, n_classes=3, **options)
    return files


@pytest.mark.parametrize("size", SIZES, ids=list(SIZES))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", ["open_file", "read_all"])
def test_truncated_file_is_an_error_naming_the_path(tmp_path, sound_files, layout, size, case):
    path = tmp_path / f"{layout}-{size}.h5"
    shutil.copyfile(sound_files[layout], path)
    full = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(SIZES[size](full))
    result = run_case(case, path=str(path), timeout=30)
    assert result.error is not None, f"a {size} file read without an error: {result}"
    assert result.raised("H5FeedError") and result.raised("OSError"), result
    assert str(path) in result["message"]


def test_truncated_file_is_an_error_from_the_sequence_too(tmp_path, sound_files):
    path = tmp_path / "half.h5"
    shutil.copyfile(sound_files["contiguous"], path)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    result = run_case("sequence_batches", path=str(path), timeout=60)
    assert result.raised("NotH5FeedFileError"), result
    assert str(path) in result["message"]
