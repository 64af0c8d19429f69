"""Point 10: hostile files are refused by validation at open, before any data
is read (the child that opens them runs under a 1.5 GiB address-space cap)."""

from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest

import h5feed

from _harness import run_case

N = 500
MEMORY_CAP = 1536 * 1024 * 1024


def _base(path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 24)).astype(np.float32)
    h5feed.write_arrays(path, [f"s{i}" for i in range(N)], x, rng.integers(0, 3, N),
                        splits={"train": range(400)}, n_classes=3)
    return x


def _other(tmp_path, x):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["x"] = x
        g["rows"] = np.arange(N)
    return other


def external_storage(f, tmp_path, x):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(x.tobytes())
    del f["x"]
    f.create_dataset("x", shape=x.shape, dtype=x.dtype, external=[(str(raw), 0, x.nbytes)])
    return "x", "external files"


def external_link_x(f, tmp_path, x):
    _other(tmp_path, x)
    del f["x"]
    f["x"] = h5py.ExternalLink("other.h5", "/x")
    return "x", "external link"


def external_link_split(f, tmp_path, x):
    _other(tmp_path, x)
    del f["splits/train"]
    f["splits/train"] = h5py.ExternalLink("other.h5", "/rows")
    return "splits/train", "external link"


def external_link_ids(f, tmp_path, x):
    other = _other(tmp_path, x)
    with h5py.File(other, "a") as g:
        g["ids"] = f["ids"][()]
    del f["ids"]
    f["ids"] = h5py.ExternalLink("other.h5", "/ids")
    return "ids", "external link"


def virtual_x(f, tmp_path, x):
    other = _other(tmp_path, x)
    layout = h5py.VirtualLayout(shape=x.shape, dtype=x.dtype)
    layout[:] = h5py.VirtualSource(str(other), "x", shape=x.shape)
    del f["x"]
    f.create_virtual_dataset("x", layout)
    return "x", "virtual dataset"


def unknown_filter(f, tmp_path, x):
    del f["x"]
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((50, 24))
    dcpl.set_filter(40000, h5py.h5z.FLAG_OPTIONAL, ())
    space = h5py.h5s.create_simple(x.shape)
    h5py.h5d.create(f.id, b"x", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)
    f["x"][...] = x  # the optional, unavailable filter is skipped on write
    return "x", "filter 40000"


def rows_2_40_x(f, tmp_path, x):
    del f["x"]
    f.create_dataset("x", shape=(2**40, 24), dtype="f4", chunks=(1024, 24), compression="gzip")
    return "x", "rows, beyond the cap"


def rows_2_40_ids(f, tmp_path, x):
    del f["ids"]
    f.create_dataset("ids", shape=(2**40,), dtype=h5py.string_dtype(), chunks=(4096,))
    return "ids", "rows, beyond the cap"


def compression_ratio(f, tmp_path, x):
    # Every chunk present, each 4 MB of data "compressed" into 100 bytes:
    # deflate manages at most about 1032:1, real data far less.
    del f["x"]
    d = f.create_dataset("x", shape=(N, 20_000), dtype="f4", chunks=(50, 20_000), compression="gzip")
    for row in range(0, N, 50):
        d.id.write_direct_chunk((row, 0), zlib.compress(b"\0" * 100)[:100], filter_mask=0)
    return "x", "compression ratio"


def rows_2_33_ids_unstored(f, tmp_path, x):
    # Below the row cap, but a 1 MB file cannot hold 2**33 IDs.
    del f["ids"]
    d = f.create_dataset("ids", shape=(2**33,), dtype=h5py.string_dtype(), chunks=(4096,))
    d[:4096] = [f"s{i}" for i in range(4096)]
    return "ids", "stores only 1"


def gigabyte_gzip_chunk(f, tmp_path, x):
    del f["x"]
    f.create_dataset("x", shape=(N, 2**28), dtype="f4", chunks=(1, 2**28), compression="gzip")
    return "x", "chunks of 1073741824 bytes"


def mostly_unstored(f, tmp_path, x):
    del f["x"]
    d = f.create_dataset("x", shape=(N, 100_000), dtype="f4", chunks=(1, 100_000), compression="gzip")
    d[0] = np.random.default_rng(0).random(100_000)
    return "x", "in 500 chunks but stores only 1"


def declared_but_empty(f, tmp_path, x):
    del f["x"]
    f.create_dataset("x", shape=(N, 24), dtype="f4")  # contiguous, never written
    return "x", "stores no data"


def zip_bomb_chunk(f, tmp_path, x):
    del f["x"]
    d = f.create_dataset("x", data=x, chunks=(10, 24), compression="gzip")
    bomb = zlib.compress(b"\0" * 50_000_000, 9)  # 960 bytes declared, 50 MB inside
    d.id.write_direct_chunk((0, 0), bomb, filter_mask=0)
    return "x", "refusing to decompress"


def absurd_class_count(f, tmp_path, x):
    f.attrs["n_classes"] = np.int64(2**40)
    return "", "declares 1099511627776 classes"


HOSTILE = [
    external_storage, external_link_x, external_link_split, external_link_ids, virtual_x,
    unknown_filter, rows_2_40_x, rows_2_40_ids, rows_2_33_ids_unstored, gigabyte_gzip_chunk,
    mostly_unstored, declared_but_empty, zip_bomb_chunk, compression_ratio, absurd_class_count,
]


@pytest.mark.parametrize("make", HOSTILE, ids=[m.__name__.replace("_", "-") for m in HOSTILE])
def test_hostile_file_is_refused_at_open(tmp_path, make):
    path = tmp_path / "hostile.h5"
    x = _base(path)
    with h5py.File(path, "a") as f:
        name, words = make(f, tmp_path, x)
    assert path.stat().st_size < 2_000_000  # a small file, whatever it declares
    for case in ("open_file", "read_all"):
        result = run_case(case, path=str(path), _memory_limit=MEMORY_CAP, timeout=30)
        assert result.raised("UntrustedFileError"), result
        assert result.raised("FormatError")
        assert (f"{path}:/{name}" if name else str(path)) in result["message"], result["message"]
        assert words in result["message"], result["message"]
        assert result["seconds"] < 5


def test_virtual_dataset_is_read_when_explicitly_allowed(tmp_path):
    path = tmp_path / "virtual.h5"
    x = _base(path)
    other = _other(tmp_path, x)
    with h5py.File(path, "a") as f:
        # A source named relative to the file, beside it: the only kind
        # h5feed follows (NOTE [ Trusting virtual datasets ] in layout.py).
        layout = h5py.VirtualLayout(shape=x.shape, dtype=x.dtype)
        layout[:] = h5py.VirtualSource(other.name, "x", shape=x.shape)
        del f["x"]
        f.create_virtual_dataset("x", layout)
    result = run_case("read_all", path=str(path), allow_virtual=True, _memory_limit=MEMORY_CAP)
    assert result.error is None, result
    np.testing.assert_array_equal(np.asarray(result["value"]["x"], dtype=np.float32), x)


def test_virtual_dataset_with_a_source_outside_its_folder_is_refused_even_when_allowed(tmp_path):
    path = tmp_path / "virtual.h5"
    x = _base(path)
    with h5py.File(path, "a") as f:
        virtual_x(f, tmp_path, x)  # an absolute source path
    result = run_case("read_all", path=str(path), allow_virtual=True, _memory_limit=MEMORY_CAP)
    assert result.raised("UntrustedFileError"), result
    assert "beside the merged file" in result["message"], result["message"]


def test_sound_file_passes_the_same_checks_under_the_memory_cap(tmp_path):
    for options in ({}, {"compression": "gzip", "checksum": True}, {"compression": "lzf"}):
        path = tmp_path / f"sound-{len(options)}.h5"
        rng = np.random.default_rng(0)
        x = np.zeros((N, 24), np.float32)  # compresses well, but like real data does
        x[:, 0] = rng.random(N)
        h5feed.write_arrays(path, [f"s{i}" for i in range(N)], x, overwrite=True, **options)
        result = run_case("read_all", path=str(path), _memory_limit=MEMORY_CAP)
        assert result.error is None, result
