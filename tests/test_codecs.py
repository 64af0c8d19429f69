"""Chunk filters decoded and encoded outside HDF5 (h5feed/_codecs.py): the
same bytes as HDF5 for every filter h5feed reads, HDF5's Fletcher32, the
header checks of untrusted Zstd and Blosc chunks, and the writer's Zstd and
LZ4 compression and its compressed chunks written as they are."""

from __future__ import annotations

import os
import zlib

import h5py
import hdf5plugin
import numpy as np
import pytest

import h5feed
from h5feed import _codecs
from h5feed.errors import UntrustedFileError
from h5feed.inspection import describe, verify

BLOSC = hdf5plugin.Blosc

PIPELINES = {
    "gzip": dict(compression="gzip"),
    "gzip9-shuffle": dict(compression="gzip", compression_opts=9, shuffle=True),
    "shuffle": dict(shuffle=True),
    "lzf": dict(compression="lzf"),
    "lzf-shuffle": dict(compression="lzf", shuffle=True),
    "fletcher32": dict(fletcher32=True),
    "gzip-shuffle-fletcher32": dict(compression="gzip", shuffle=True, fletcher32=True),
    "lzf-fletcher32": dict(compression="lzf", fletcher32=True),
    "zstd-shuffle": dict(**hdf5plugin.Zstd(), shuffle=True),
    "zstd-shuffle-fletcher32": dict(**hdf5plugin.Zstd(clevel=9), shuffle=True, fletcher32=True),
    "blosc-lz4": dict(BLOSC(cname="lz4", shuffle=BLOSC.SHUFFLE)),
    "blosc-zstd-bitshuffle": dict(BLOSC(cname="zstd", shuffle=BLOSC.BITSHUFFLE)),
    "blosc-blosclz-noshuffle-fletcher32": dict(**BLOSC(cname="blosclz", shuffle=BLOSC.NOSHUFFLE), fletcher32=True),
    "plain-chunks": {},
    "scaleoffset": dict(scaleoffset=0),  # not decoded here: HDF5 reads it
}
NOT_DECODED = {"scaleoffset"}
DTYPES = ["u1", "<i2", ">i4", "<f4", "<f8", "?"]


def _data(dtype: str, n: int = 53, seed: int = 0) -> np.ndarray:
    """Compressible rows (a ramp plus noise) of shape (n, 3, 5); odd byte
    counts per chunk for one-byte types."""
    rng = np.random.default_rng(seed)
    ramp = np.arange(n * 15).reshape(n, 3, 5) % 97
    noise = rng.integers(0, 4, (n, 3, 5))
    return (ramp + noise).astype(dtype) if dtype != "?" else (ramp + noise) % 3 == 0


def _write(path, data, options, chunk_rows=7):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=(chunk_rows, *data.shape[1:]), **options)


def _chunks_of(path):
    """(pipeline, [(filter mask, stored bytes, rows)]) of every chunk of /x."""
    with h5py.File(path) as f:
        d = f["x"]
        rows = d.chunks[0]
        out = []
        for first in range(0, d.shape[0], rows):
            mask, raw = d.id.read_direct_chunk((first, 0, 0))
            out.append((mask, raw, d[first : first + rows]))
        return _codecs.pipeline_of(d), out


@pytest.mark.parametrize(
    "name, dtype",
    # HDF5's scale-offset filter takes no booleans.
    [(n, d) for n in sorted(PIPELINES) for d in DTYPES if not (n == "scaleoffset" and d == "?")],
)
def test_every_chunk_decodes_to_the_bytes_hdf5_reads(tmp_path, name, dtype):
    data = _data(dtype)
    path = tmp_path / "d.h5"
    _write(path, data, PIPELINES[name])
    pipeline, chunks = _chunks_of(path)
    assert pipeline.decodable == (name not in NOT_DECODED)
    if not pipeline.decodable:
        return
    for mask, raw, rows in chunks:
        decoded = pipeline.decode(raw, mask)
        assert decoded.shape == pipeline.chunk_shape and decoded.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(decoded[: len(rows)], rows)


@pytest.mark.parametrize("name", ["gzip-shuffle-fletcher32", "zstd-shuffle", "blosc-lz4"])
def test_decoding_holds_without_the_optional_accelerators(tmp_path, monkeypatch, name):
    # Without isal deflate falls back to zlib; without numcodecs, Blosc and
    # Zstd have no decoder here and go to HDF5.
    data = _data("<i2")
    path = tmp_path / "d.h5"
    _write(path, data, PIPELINES[name])
    monkeypatch.setattr(_codecs, "_inflate_module", lambda: zlib)
    monkeypatch.setattr(_codecs, "_numcodecs", lambda: None)
    pipeline, chunks = _chunks_of(path)
    assert pipeline.decodable == name.startswith("gzip")
    if pipeline.decodable:
        for mask, raw, rows in chunks:
            np.testing.assert_array_equal(pipeline.decode(raw, mask)[: len(rows)], rows)


@pytest.mark.parametrize("name", sorted(set(PIPELINES) - NOT_DECODED))
def test_encoded_chunks_read_back_through_hdf5(tmp_path, name):
    """What the writer stores with write_direct_chunk, HDF5 reads as the data."""
    data = _data("<i2", n=56)
    path = tmp_path / "d.h5"
    _write(path, np.zeros_like(data), PIPELINES[name])
    with h5py.File(path, "a") as f:
        d = f["x"]
        pipeline = _codecs.pipeline_of(d)
        assert pipeline.encodable
        for first in range(0, data.shape[0], 7):
            mask, stored = pipeline.encode(data[first : first + 7])
            d.id.write_direct_chunk((first, 0, 0), stored, filter_mask=mask)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["x"][()], data)


@pytest.mark.parametrize("dtype", ["<c16", [("a", "<f8"), ("b", ">i4"), ("c", "S13")]])
def test_shuffled_chunks_of_wide_items_decode_to_the_bytes_hdf5_reads(tmp_path, dtype):
    # Items of 16 bytes take a copy per byte plane; wider ones (25 here) one transposed copy.
    raw = np.random.default_rng(1).integers(0, 256, (53, 3) + (np.dtype(dtype).itemsize,), dtype=np.uint8)
    data = raw.view(np.dtype(dtype)).reshape(53, 3)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=(7, 3), compression="gzip", shuffle=True)
    with h5py.File(path) as f:
        d = f["x"]
        pipeline = _codecs.pipeline_of(d)
        assert pipeline.decodable
        for first in range(0, 53, 7):
            mask, stored = d.id.read_direct_chunk((first, 0))
            got = pipeline.decode(stored, mask)[: min(7, 53 - first)]
            assert got.tobytes() == d[first : first + 7].tobytes()


def test_lzf_that_does_not_shrink_is_stored_as_is_with_its_bit_in_the_mask(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (14, 64), dtype=np.uint8)
    path = tmp_path / "d.h5"
    _write(path, np.zeros_like(noise), {"compression": "lzf"})
    with h5py.File(path, "a") as f:
        pipeline = _codecs.pipeline_of(f["x"])
        mask, stored = pipeline.encode(noise[:7])
        assert mask == 1 and stored == noise[:7].tobytes()
        f["x"].id.write_direct_chunk((0, 0), stored, filter_mask=mask)
        assert np.array_equal(pipeline.decode(stored, mask), noise[:7])
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["x"][:7], noise[:7])


def _hdf5_fletcher32(tmp_path, payload: np.ndarray) -> int:
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", data=payload, chunks=(payload.size,), fletcher32=True)
        _, raw = d.id.read_direct_chunk((0,))
    return int.from_bytes(raw[-4:], "little")


@pytest.mark.parametrize("seed", range(12))
def test_fletcher32_is_hdf5s_for_any_length_and_content(tmp_path, seed):
    rng = np.random.default_rng(seed)
    size = int(rng.choice([1, 2, 3, 359 * 2 + 1, 720, 721, 70_000, 300_001]))
    kind = seed % 3  # random bytes, all 0xFF (every sum a multiple of 65535), all zeros
    payload = (
        rng.integers(0, 256, size, dtype=np.uint8) if kind == 0
        else np.full(size, 255 if kind == 1 else 0, dtype=np.uint8)
    )
    assert _codecs.fletcher32(payload) == _hdf5_fletcher32(tmp_path, payload)


def test_fletcher32_accepts_hdf5s_byte_swapped_sums_and_refuses_others(tmp_path):
    body = np.arange(40, dtype=np.uint8).tobytes()
    good = _codecs.fletcher32(body)
    swapped = (good & 0x00FF00FF) << 8 | (good >> 8) & 0x00FF00FF
    pipeline = _codecs.Pipeline((_codecs.Filter(3, ()),), np.dtype("u1"), (40,))
    for checksum in (good, swapped):
        assert bytes(pipeline.decode(body + checksum.to_bytes(4, "little"))) == body
    with pytest.raises(_codecs.ChunkError, match="Fletcher32"):
        pipeline.decode(body + (good ^ 1).to_bytes(4, "little"))


@pytest.mark.parametrize(
    "name, damage",
    [
        ("gzip", lambda raw: raw[: len(raw) // 2]),  # a stream cut short
        ("gzip", lambda raw: zlib.compress(zlib.decompress(raw) + b"more")),  # more than a chunk
        ("lzf", lambda raw: raw[:-3]),
        ("zstd-shuffle", lambda raw: raw[:-2]),
        ("blosc-lz4", lambda raw: raw[:-1]),
        ("gzip-shuffle-fletcher32", lambda raw: raw[:10] + bytes([raw[10] ^ 1]) + raw[11:]),
    ],
    ids=["gzip-cut", "gzip-longer", "lzf-cut", "zstd-cut", "blosc-cut", "checksum"],
)
def test_damaged_chunks_are_chunk_errors_never_other_exceptions(tmp_path, name, damage):
    data = _data("<f4")
    path = tmp_path / "d.h5"
    _write(path, data, PIPELINES[name])
    pipeline, chunks = _chunks_of(path)
    mask, raw, _ = chunks[1]
    with pytest.raises(_codecs.ChunkError):
        pipeline.decode(damage(raw), mask)


@pytest.mark.parametrize("module", ["zlib", "isal.isal_zlib"])
def test_deflate_through_either_module_reads_hdf5s_bytes_and_refuses_damage(tmp_path, monkeypatch, module):
    """_inflate takes a different call of each module (the one that releases
    the GIL): both give HDF5's bytes, and both refuse a stream cut short, a
    stream that holds more than a chunk, less than a chunk, and garbage."""
    inflate = __import__("importlib").import_module(module)  # isal: in the test extra
    monkeypatch.setattr(_codecs, "_inflate_module", lambda: inflate)
    data = _data("<f4")
    path = tmp_path / "d.h5"
    _write(path, data, PIPELINES["gzip9-shuffle"])
    pipeline, chunks = _chunks_of(path)
    for mask, raw, rows in chunks:
        np.testing.assert_array_equal(pipeline.decode(raw, mask)[: len(rows)], rows)
    mask, raw, _ = chunks[1]
    whole = zlib.decompress(raw)
    for damaged in (raw[: len(raw) // 2], zlib.compress(whole + b"more"), zlib.compress(whole[:-1]), b"\x00" * 64):
        with pytest.raises(_codecs.ChunkError, match="deflate"):
            pipeline.decode(damaged, mask)


def test_declared_sizes_are_read_from_zstd_and_blosc_headers():
    payload = np.arange(1000, dtype=np.uint16)
    zstd = bytes(__import__("numcodecs").Zstd().encode(payload))
    blosc = bytes(__import__("numcodecs").Blosc("lz4").encode(payload))
    assert _codecs.declared_size(_codecs.ZSTD, zstd) == 2000
    assert _codecs.declared_size(_codecs.BLOSC, blosc) == 2000
    assert _codecs.declared_size(_codecs.ZSTD, b"not a frame at all") is None
    assert _codecs.declared_size(_codecs.ZSTD, _zstd_claiming(2**40)) == 2**40


def _zstd_claiming(size: int) -> bytes:
    """A Zstd frame header that declares ``size`` bytes, then garbage."""
    return (0xFD2FB528).to_bytes(4, "little") + bytes([0xE0]) + size.to_bytes(8, "little") + b"\x01" * 40


def _blosc_claiming(raw: bytes, size: int) -> bytes:
    return raw[:4] + size.to_bytes(4, "little") + raw[8:]


def _h5feed_file(path, compression, n=120, **options):
    ids = [f"s{i}" for i in range(n)]
    x = _data("<f4", n=n)
    y = np.arange(n) % 3
    h5feed.write_arrays(path, ids, x, y, n_classes=3, compression=compression, chunk_rows=10, **options)
    return x, y


@pytest.mark.parametrize(
    "compression, lie",
    [("zstd", lambda raw: _zstd_claiming(2**30)), ("lz4", lambda raw: _blosc_claiming(raw, 2**30))],
)
def test_a_chunk_whose_header_declares_more_than_a_chunk_is_refused_at_open(tmp_path, compression, lie):
    # HDF5's own Zstd and Blosc filters allocate what the header declares.
    path = tmp_path / "hostile.h5"
    _h5feed_file(path, compression)
    with h5py.File(path, "a") as f:
        d = f["x"]
        mask, raw = d.id.read_direct_chunk((30, 0, 0))
        d.id.write_direct_chunk((30, 0, 0), lie(raw), filter_mask=mask)
    with pytest.raises(UntrustedFileError, match=r"chunk at \(30, 0, 0\) declares (1073741824 bytes|no size)"):
        h5feed.open_file(path)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "gzip"])
def test_honest_all_zero_data_compressed_very_well_is_accepted(tmp_path, compression):
    path = tmp_path / "zeros.h5"
    n = 5000
    h5feed.write_arrays(path, [f"s{i}" for i in range(n)], np.zeros((n, 512), "f4"), np.zeros(n, "i8"),
                        n_classes=2, compression=compression)
    layout = h5feed.open_file(path)
    assert layout.column("x").compression == compression
    assert not h5feed.Reader(layout).read("x", np.arange(0, n, 7)).any()


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
@pytest.mark.parametrize("threads", [1, 3])
def test_zstd_and_lz4_files_read_back_through_h5py_and_verify(tmp_path, compression, threads):
    path = tmp_path / "c.h5"
    x, y = _h5feed_file(path, compression, compress_threads=threads, checksum=True)
    with h5py.File(path) as f:  # any tool that loads hdf5plugin reads them
        np.testing.assert_array_equal(f["x"][()], x)
        np.testing.assert_array_equal(f["y"][()], y)
        codes = {f["x"].id.get_create_plist().get_filter(i)[0] for i in range(f["x"].id.get_create_plist().get_nfilters())}
    assert codes & set(_codecs.PLUGIN_FILTERS)
    assert describe(path)["datasets"]["x"]["compression"] is not None
    assert verify(path).sound
    layout = h5feed.open_file(path)
    assert layout.column("x").compression == compression
    rows = np.random.default_rng(0).permutation(120)[:50]
    np.testing.assert_array_equal(h5feed.Reader(layout).read("x", rows), x[rows])


def test_zstd_and_lz4_files_are_smaller_than_raw_and_lz4_shuffles_inside_blosc(tmp_path):
    x = np.tile(np.arange(4096, dtype="<u2"), (64, 1))
    ids = [f"s{i}" for i in range(64)]
    sizes = {}
    for compression in (None, "zstd", "lz4"):
        path = tmp_path / f"{compression}.h5"
        h5feed.write_arrays(path, ids, x, compression=compression)
        with h5py.File(path) as f:
            sizes[compression] = f["x"].id.get_storage_size()
            plist = f["x"].id.get_create_plist()
            filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
        if compression == "lz4":
            (code, _, values, _), = filters
            assert code == 32001 and values[5] == BLOSC.SHUFFLE and values[6] == 1  # lz4 inside, byte shuffle
        if compression == "zstd":
            assert [f[0] for f in filters] == [2, 32015]  # HDF5's shuffle, then Zstd
    assert sizes["zstd"] < sizes[None] / 3 and sizes["lz4"] < sizes[None] / 3


def test_zstd_without_hdf5plugin_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    real = _codecs._optional
    monkeypatch.setattr(_codecs, "_optional", lambda name: None if name == "hdf5plugin" else real(name))
    path = tmp_path / "z.h5"
    with pytest.raises(ImportError, match=r'pip install "h5feed\[codecs\]"'):
        h5feed.DatasetWriter(path, sample_shape=(3,), dtype="f4", compression="zstd")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [0, True, 1.5])
def test_compress_threads_must_be_a_positive_int(tmp_path, bad):
    with pytest.raises(ValueError, match=r"compress_threads must be an int >= 1\. Received"):
        h5feed.DatasetWriter(tmp_path / "a.h5", sample_shape=(3,), dtype="f4", compression="gzip", compress_threads=bad)


def test_unknown_compression_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"'gzip', 'lzf', 'zstd' or 'lz4'\. Received: 'brotli'"):
        h5feed.DatasetWriter(tmp_path / "a.h5", sample_shape=(3,), dtype="f4", compression="brotli")


@pytest.mark.parametrize("compression", ["gzip", "lzf", "zstd", "lz4", None])
@pytest.mark.parametrize("chunk_rows", [7, 64])
def test_streamed_rows_compressed_in_threads_are_the_rows_appended(tmp_path, monkeypatch, compression, chunk_rows):
    """Whole chunks go through write_direct_chunk, chunks cut by a block's
    ends through HDF5; either way every row reads back and the record holds.
    The wide extra sets the blocks (512 rows), which cut x's chunks of 7."""
    encoded = []
    real = _codecs.Pipeline.encode
    monkeypatch.setattr(_codecs.Pipeline, "encode", lambda self, chunk: encoded.append(1) or real(self, chunk))
    rng = np.random.default_rng(chunk_rows)
    n = 1500
    x = _data("<i2", n=n)
    wide = (np.arange(n, dtype="<u2")[:, None, None] + np.zeros((1, 64, 64), "<u2"))
    path = tmp_path / "s.h5"
    with h5feed.DatasetWriter(path, sample_shape=x.shape[1:], dtype=x.dtype, target_dtype=None, compression=compression,
                              checksum=True, chunk_rows=chunk_rows, compress_threads=3,
                              extras={"wide": ((64, 64), "<u2")}) as w:
        start = 0
        while start < n:
            stop = min(n, start + int(rng.integers(1, 300)))
            w.extend([f"s{i}" for i in range(start, stop)], x[start:stop], wide=wide[start:stop])
            start = stop
    assert encoded  # the threads compressed whole chunks
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["x"][()], x)
        np.testing.assert_array_equal(f["wide"][()], wide)
    assert verify(path).sound
