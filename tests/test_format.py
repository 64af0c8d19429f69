"""The on-disk format is pinned: files of format version 1, committed under
tests/data/, that every future h5feed must open, verify and read identically.

The files were written once by ``tests/data/make_reference.py`` (h5feed
0.2.0.dev) and are never rewritten: their bytes are pinned here too. One is
the writer's default (contiguous, memory-mapped when read); the other is
chunked, gzip-compressed and checksummed (read through HDF5). Everything
they must hold is written below as literals, not read from the files or
computed by h5feed: the IDs, rows, classes and splits, and the completion
record's SHA-256 of each dataset. A change of the format, of the completion
record's hashing, or of how h5feed reads either file fails here.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import _record
from h5feed import Reader
from h5feed.inspection import describe, verify

DATA = Path(__file__).resolve().parent / "data"
FILES = {
    "format-v1.h5": "601fe7ef39962fc2a6705a37e20579153c98c6b17e1e2b59ae5f9c2fae8b9b8b",
    "format-v1-gzip-checksum.h5": "154504e54ceeb04b8e7732b90ae85273d3e05633c0850706651c7e09a3d6738a",
}

# What both files hold.
N = 12
IDS = [f"ref-{i:02d}-\u00e9" for i in range(N)]
X = (np.arange(N * 6, dtype=np.float32).reshape(N, 2, 3) - 20) / 8  # exact binary fractions
Y = np.arange(N) % 3
WEIGHT = np.linspace(0.5, 6.0, N)
SPLITS = {"train": [0, 2, 4, 6, 8, 10, 11], "validation": [1, 3, 5, 7, 9]}
CLASS_NAMES = ("cat", "d\u00f6g", "\U0001f41f")
# The completion record's SHA-256 of each dataset: numeric rows as their
# little-endian bytes, strings as 8-byte little-endian length + UTF-8.
SHA256 = {
    "ids": "608b74f88d37e0b20a82bfdff4ae520ed9a216f4ff1703c77d28404aee7b23a3",
    "x": "914893118149e6de160f544ea71934c2975841938d7b1f8ba6d8bc5feadcce69",
    "y": "e169dc199ac099b0bc53ac8fc2d94bbfc7dd0a54088e8946e896bcae3f0ea47b",
    "weight": "1c02b536d5d09c6697abc5724a5193ecbed9c753ffad88d89b303896c2244d25",
    "splits/train": "a6bd765f808e96b796302f06b99f77598c103b52257418c9e96adc0c4b3ce9e6",
    "splits/validation": "c64643e27752cb748a3e5251755c75c620244e3140b06c4a1f2f7d17ba6e489d",
}


@pytest.fixture(params=sorted(FILES))
def reference(request):
    return DATA / request.param


def test_the_reference_files_are_the_committed_ones(reference):
    # Regenerating them would move the goalposts: their bytes are pinned.
    assert hashlib.sha256(reference.read_bytes()).hexdigest() == FILES[reference.name]


def test_the_completion_record_hashes_known_rows_to_known_digests():
    # Compared with literal hex digests, not with h5feed's own output.
    assert _record.digest_of(np.arange(6, dtype="<i4")) == (
        "cd9a54ed1f18bf97db08914e280ea7349e11ca2c4885a4d8052552ceba84208d"
    )
    assert _record.digest_of(np.array([1.5, -2.0], dtype=">f8")) == (  # big-endian rows hash as little-endian
        "bd179027e5d89aea8ed4f7d630cbcad3cc35d3fb375cc9ef7aae3675a7b167cc"
    )
    assert _record.digest_of(["a", "\u00e9"]) == "dbe152f80bbb24538dd5e55a5f57b37ec95331fbc7154a5907f5f396d915ed1d"
    # The rule, spelled out with hashlib alone.
    assert hashlib.sha256(struct.pack("<2d", 1.5, -2.0)).hexdigest() == (
        "bd179027e5d89aea8ed4f7d630cbcad3cc35d3fb375cc9ef7aae3675a7b167cc"
    )
    spelled = hashlib.sha256(b"".join(len(s.encode()).to_bytes(8, "little") + s.encode() for s in IDS))
    assert spelled.hexdigest() == SHA256["ids"]
    assert hashlib.sha256(X.astype("<f4").tobytes()).hexdigest() == SHA256["x"]
    assert hashlib.sha256(Y.astype("<i8").tobytes()).hexdigest() == SHA256["y"]
    assert hashlib.sha256(np.asarray(SPLITS["train"], "<i8").tobytes()).hexdigest() == SHA256["splits/train"]


def test_the_reference_file_opens_with_its_layout(reference):
    layout = h5feed.open_file(reference)
    assert layout.n_rows == N
    assert set(layout.columns) == {"x", "y", "weight"}
    assert layout.column("x").shape == (N, 2, 3) and layout.column("x").dtype == np.dtype("<f4")
    assert layout.column("y").dtype == np.dtype("<i8")
    assert layout.column("weight").dtype == np.dtype("<f8")
    assert dict(layout.splits) == {"train": 7, "validation": 5}
    assert layout.n_classes == 3 and layout.class_names == CLASS_NAMES
    assert layout.completion["rows"] == N and dict(layout.completion["sha256"]) == SHA256
    with h5py.File(reference, "r") as f:  # as any HDF5 tool sees it
        assert f.attrs["h5feed_format"] == 1
        assert json.loads(f.attrs["h5feed_complete"]) == {"rows": N, "sha256": SHA256}


@pytest.mark.parametrize("use_mmap", [True, False], ids=["mmap", "hdf5"])
def test_the_reference_file_reads_identically(reference, use_mmap):
    layout = h5feed.open_file(reference)
    order = np.array([11, 0, 5, 5, 3, 10, 1, 2, 4, 6, 7, 8, 9])  # any order, a repeat
    with Reader(layout, use_mmap=use_mmap) as reader:
        np.testing.assert_array_equal(reader.read("x", order), X[order])
        np.testing.assert_array_equal(reader.read("y", order), Y[order])
        np.testing.assert_array_equal(reader.read("weight", order), WEIGHT[order])
        assert reader.read_ids(order) == [IDS[i] for i in order]



def test_the_reference_file_trains_as_it_did(reference):
    # Through the Keras sequence, as training reads it: splits, IDs, one-hot labels.
    for name, rows in SPLITS.items():
        with h5feed.H5Sequence(reference, name, batch_size=N, shuffle=False) as seq:
            assert seq.epoch_rows().tolist() == rows
            x, y = seq[0]
            np.testing.assert_array_equal(x, X[rows])
            np.testing.assert_array_equal(y, np.eye(3, dtype=y.dtype)[Y[rows]])
    ids = ["ref-07-\u00e9", "ref-02-\u00e9"]
    with h5feed.H5Sequence(reference, ids=ids, batch_size=2, shuffle=False, x="weight", y=None) as seq:
        batch = seq[0]
        np.testing.assert_array_equal(batch[0] if isinstance(batch, tuple) else batch, WEIGHT[[7, 2]])


def test_the_reference_file_verifies_and_describes(reference):
    report = verify(reference)
    assert report.sound and report.problems == []
    assert report.checked == {"ids": N, "x": N, "y": N, "weight": N, "splits/train": 7, "splits/validation": 5}
    info = describe(reference)
    assert info["format"] == 1 and info["rows"] == N and info["splits"] == {"train": 7, "validation": 5}
    assert info["class_counts"] == {"all": [4, 4, 4], "train": [2, 2, 3], "validation": [2, 2, 1]}
