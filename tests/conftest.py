"""Shared fixtures: small h5feed files made in tmp_path; and, from
framework_skips.py, the rule that fails a CI run which skips a test for want
of torch, torchdata or jax."""

from __future__ import annotations

import os

# Keep TensorFlow quiet and on the CPU in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import pytest

import h5feed

pytest_plugins = ["framework_skips", "faults._figures"]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, hand tests to the workers one at a time.

    Its ``load`` scheduler otherwise gives each worker, up front, a chunk of
    a quarter of its share in collection order: with the slow tests sorted
    first (below), one worker would get nearly all of them and the other
    would run out of tests long before it. One at a time, each worker takes
    the next test when it is free: longest first, then balanced.
    """
    if getattr(config.option, "maxschedchunk", 0) is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:  # noqa: ARG001
    """Tests marked ``slow`` or ``fuzz`` first, the rest in their usual order.

    pytest-xdist hands tests to its workers in this order: with the long ones
    started first, the workers end together instead of one of them finishing
    a long test alone at the end of the run (longest first, as schedulers do).
    """
    items.sort(key=lambda item: not (item.get_closest_marker("slow") or item.get_closest_marker("fuzz")))


def make_arrays(n: int = 100, shape: tuple[int, ...] = (4, 3), n_classes: int = 5, seed: int = 0):
    """IDs, x, y where x[i] encodes its row (x[i].flat[0] == i)."""
    rng = np.random.default_rng(seed)
    ids = [f"id-{i}" for i in range(n)]
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    x.reshape(n, -1)[:, 0] = np.arange(n)
    y = rng.integers(0, n_classes, n)
    return ids, x, y


@pytest.fixture
def arrays():
    return make_arrays()


@pytest.fixture
def small_file(tmp_path, arrays):
    """100 rows, contiguous, splits train (0..69) and validation (70..99)."""
    ids, x, y = arrays
    path = tmp_path / "small.h5"
    h5feed.write_arrays(
        path, ids, x, y, splits={"train": range(70), "validation": ids[70:]}, n_classes=5
    )
    return path


@pytest.fixture(params=["contiguous", "chunked", "gzip", "lzf", "checksum", "zstd", "lz4"])
def any_layout_file(request, tmp_path, arrays):
    """The same data in each storage layout the writer can make."""
    ids, x, y = arrays
    path = tmp_path / f"{request.param}.h5"
    options = {
        "contiguous": {},
        "chunked": {"chunk_rows": 7},
        "gzip": {"compression": "gzip", "chunk_rows": 7},
        "lzf": {"compression": "lzf", "chunk_rows": 16},
        "checksum": {"checksum": True, "chunk_rows": 5},
        "zstd": {"compression": "zstd", "chunk_rows": 9},
        "lz4": {"compression": "lz4", "chunk_rows": 8, "checksum": True},
    }[request.param]
    if request.param == "chunked":
        # chunk_rows alone does not chunk a file whose row count is known;
        # write through the streaming writer instead.
        with h5feed.DatasetWriter(path, sample_shape=x.shape[1:], dtype=x.dtype, n_classes=5, chunk_rows=7) as w:
            w.extend(ids, x, y)
            w.add_split("train", range(70))
    else:
        h5feed.write_arrays(path, ids, x, y, splits={"train": range(70)}, n_classes=5, **options)
    return path
