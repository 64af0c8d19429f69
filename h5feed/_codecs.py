"""HDF5 chunk filters, decoded and encoded outside the HDF5 library.

h5py holds one global lock for every HDF5 call, so a chunk that HDF5
decompresses holds up every other thread of the process. This module turns a
chunk's stored bytes (``read_direct_chunk``, or the file at the chunk's
address) into its data, and back, with codecs that release the GIL, so that
several threads decode at once (NOTE [ Decoding chunks ] in ``_chunks.py``).

A dataset's filter pipeline is described by a :class:`Pipeline`, read once
from its creation properties. The pipelines decoded here are the ones h5feed
writes, in HDF5's order: an optional byte shuffle, at most one compressor
(deflate, LZF, Zstd or Blosc) and an optional Fletcher32 checksum. Any other
pipeline (szip, scale-offset, n-bit, two compressors, another order) is
decoded by HDF5 itself. Which library decodes what:

- deflate: ``isal.isal_zlib`` where installed (the same zlib stream, several
  times faster), else the standard library's ``zlib``; both release the GIL;
- LZF: the ``lzf_decompress`` that h5py itself links (and exports), called
  through ``ctypes``, which releases the GIL; the PyPI LZF bindings hold it;
- Zstd and Blosc (``hdf5plugin``'s filters 32015 and 32001): ``numcodecs``;
- shuffle: numpy, a copy per byte plane (:func:`_transpose_bytes`);
- Fletcher32: :func:`fletcher32`, HDF5's algorithm in numpy (numcodecs'
  version holds the GIL and lacks HDF5's allowance for byte-swapped sums).

Every decoder writes at most the chunk's size: a stream that would inflate
beyond it, or a header that declares another size, is a :class:`ChunkError`,
never a large allocation. The same header check runs over every chunk of a
Zstd or Blosc dataset when a file is validated (:func:`oversized_chunks`),
because HDF5's own filters for them allocate whatever the header declares.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "COMPRESSIONS",
    "ChunkError",
    "Filter",
    "PLUGIN_FILTERS",
    "Pipeline",
    "compression_name",
    "dataset_options",
    "declared_size",
    "fletcher32",
    "is_plugin",
    "load_plugins",
    "oversized_chunks",
    "pipeline_of",
]

# HDF5 filter identifiers.
DEFLATE, SHUFFLE, FLETCHER32, SZIP, NBIT, SCALEOFFSET = 1, 2, 3, 4, 5, 6
LZF = 32000
BLOSC = 32001
ZSTD = 32015
# Filters of hdf5plugin that h5feed writes (compression="lz4" is Blosc with
# LZ4 inside, compression="zstd" the Zstd filter) and reads.
PLUGIN_FILTERS = {BLOSC: "blosc", ZSTD: "zstd"}
_COMPRESSORS = frozenset({DEFLATE, LZF, BLOSC, ZSTD})

# The compression names the writer and the converters accept (None: none).
COMPRESSIONS = ("gzip", "lzf", "zstd", "lz4")
GZIP_LEVEL = 4
ZSTD_LEVEL = 3
LZ4_LEVEL = 5  # Blosc's clevel: how hard LZ4 looks for matches
# Blosc's codes for its inner compressors (cd_values[6] of filter 32001).
_BLOSC_CODECS = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}
_CODECS_EXTRA = 'pip install "h5feed[codecs]"'


class ChunkError(Exception):
    """A chunk's stored bytes do not decode to its data (damaged, or not what
    its header says). The reader then lets HDF5 try, which names the damage."""


# -- optional libraries ---------------------------------------------------------


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@functools.lru_cache(maxsize=None)
def _numcodecs() -> Any:
    return _optional("numcodecs")


@functools.lru_cache(maxsize=None)
def _inflate_module() -> Any:
    isal = _optional("isal.isal_zlib")
    return isal if isal is not None else zlib


@functools.lru_cache(maxsize=None)
def _lzf() -> tuple[Any, Any] | None:
    """h5py's own ``(lzf_decompress, lzf_compress)`` through ctypes, or None.

    h5py compiles liblzf into ``h5py.h5z`` for its LZF filter and exports its
    functions; ctypes drops the GIL for the call. Where a build does not
    export them, LZF chunks are left to HDF5.
    """
    try:
        import h5py.h5z

        lib = ctypes.CDLL(h5py.h5z.__file__)
        decompress, compress = lib.lzf_decompress, lib.lzf_compress
    except (ImportError, OSError, AttributeError):
        return None
    for fn in (decompress, compress):
        fn.restype = ctypes.c_uint
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_uint]
    return decompress, compress


_PLUGINS_LOADED: bool | None = None


def load_plugins() -> bool:
    """Register hdf5plugin's filters with HDF5 (by importing it); False when
    it is not installed. Once per process; a forked child inherits it."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED is None:
        _PLUGINS_LOADED = _optional("hdf5plugin") is not None
    return _PLUGINS_LOADED


def _hdf5plugin() -> Any:
    module = _optional("hdf5plugin")
    if module is None:
        raise ImportError(
            f"compression='zstd' and 'lz4' write hdf5plugin's filters, and hdf5plugin is not "
            f"installed: {_CODECS_EXTRA}"
        )
    return module


def dataset_options(compression: str, itemsize: int) -> dict[str, Any]:
    """``h5py.create_dataset`` keyword arguments for one of :data:`COMPRESSIONS`.

    Byte shuffling goes before every compressor where items are wider than a
    byte: it groups the bytes of equal significance, which the compressors
    then find as runs (for LZ4, Blosc shuffles inside its own filter).

    Raises:
        ImportError: ``"zstd"`` or ``"lz4"`` without hdf5plugin.
    """
    shuffle = itemsize > 1
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": shuffle}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": shuffle}
    if compression == "zstd":
        return {**_hdf5plugin().Zstd(clevel=ZSTD_LEVEL), "shuffle": shuffle}
    if compression == "lz4":
        plugin = _hdf5plugin()
        mode = plugin.Blosc.SHUFFLE if shuffle else plugin.Blosc.NOSHUFFLE
        return dict(plugin.Blosc(cname="lz4", clevel=LZ4_LEVEL, shuffle=mode))
    raise ValueError(f"compression must be one of {COMPRESSIONS!r}. Received: {compression!r}")


# -- pipelines -----------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """One filter of a dataset's pipeline, as HDF5 stores it."""

    code: int
    cd_values: tuple[int, ...]


@dataclass(frozen=True)
class Pipeline:
    """How a dataset's chunks are stored: its filters in HDF5's order (the
    order they were applied when writing), the stored dtype and chunk shape.

    Attributes:
        filters: the pipeline, first applied first.
        dtype: the stored dtype.
        chunk_shape: the shape of one chunk.
    """

    filters: tuple[Filter, ...]
    dtype: np.dtype
    chunk_shape: tuple[int, ...]

    @functools.cached_property
    def chunk_nbytes(self) -> int:
        return math.prod(self.chunk_shape) * self.dtype.itemsize

    @functools.cached_property
    def decodable(self) -> bool:
        """Whether :meth:`decode` handles it (else HDF5 must decode)."""
        return self._supported(decode=True)

    @functools.cached_property
    def encodable(self) -> bool:
        """Whether :meth:`encode` handles it (for direct chunk writes)."""
        return self._supported(decode=False)

    def _supported(self, *, decode: bool) -> bool:
        # Shuffle, then at most one compressor, then Fletcher32: each
        # decoded stage then has the chunk's size.
        codes = [f.code for f in self.filters]
        if self.chunk_nbytes == 0:
            return False
        if codes and codes[-1] == FLETCHER32:
            codes = codes[:-1]
        if codes and codes[0] == SHUFFLE:
            codes = codes[1:]
        if len(codes) > 1 or (codes and codes[0] not in _COMPRESSORS):
            return False
        if LZF in codes and _lzf() is None:
            return False
        if (BLOSC in codes or ZSTD in codes) and _numcodecs() is None:
            return False
        if BLOSC in codes:
            f = self.filters[[x.code for x in self.filters].index(BLOSC)]
            if len(f.cd_values) < 7 or f.cd_values[6] not in _BLOSC_CODECS:
                return False
            if not decode and f.cd_values[2] not in (1, 2, 4, 8):
                return False
        return True

    def decode(self, raw: bytes | memoryview, mask: int = 0, out: np.ndarray | None = None) -> np.ndarray:
        """The chunk stored as ``raw`` (``mask``: HDF5's bits of filters
        skipped for this chunk), as an array of :attr:`chunk_shape`.

        ``out``, when given, is a C-contiguous array of :attr:`chunk_shape`
        and :attr:`dtype` that the last stage decodes into (no copy after).

        Raises:
            ChunkError: a failed checksum, or bytes that do not decode to
                exactly one chunk.
        """
        size = self.chunk_nbytes
        target = None if out is None else out.reshape(-1).view(np.uint8)
        steps = [i for i in range(len(self.filters) - 1, -1, -1) if not mask >> i & 1]
        buf: Any = raw
        for n, i in enumerate(steps):
            f = self.filters[i]
            last = target if n == len(steps) - 1 else None
            if f.code == FLETCHER32:
                buf = _check_fletcher32(buf)
            elif f.code == SHUFFLE:
                buf = _unshuffle(buf, f.cd_values[0] if f.cd_values else self.dtype.itemsize, last)
            else:
                buf = _DECODERS[f.code](buf, size, last)
        if len(buf) != size:
            raise ChunkError(f"decodes to {len(buf)} bytes; a chunk holds {size}")
        if target is None:
            return np.frombuffer(buf, dtype=self.dtype).reshape(self.chunk_shape)
        if buf is not target:
            target[...] = np.frombuffer(buf, dtype=np.uint8)
        return out  # type: ignore[return-value]

    def encode(self, chunk: np.ndarray) -> tuple[int, bytes]:
        """``(filter mask, stored bytes)`` of one whole chunk, as HDF5 would
        store it (for ``write_direct_chunk``); ``chunk`` in the stored dtype."""
        buf: Any = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
        mask = 0
        for i, f in enumerate(self.filters):
            if f.code == FLETCHER32:
                buf = bytes(buf) + fletcher32(buf).to_bytes(4, "little")
            elif f.code == SHUFFLE:
                buf = _shuffle(buf, f.cd_values[0] if f.cd_values else self.dtype.itemsize)
            else:
                out = _ENCODERS[f.code](buf, f)
                if out is None:  # does not shrink: HDF5 skips an optional filter so
                    mask |= 1 << i
                else:
                    buf = out
        return mask, bytes(buf)


def pipeline_of(dset: Any) -> Pipeline:
    """The :class:`Pipeline` of an open, chunked h5py dataset."""
    plist = dset.id.get_create_plist()
    filters = []
    for i in range(plist.get_nfilters()):
        code, _flags, values, _name = plist.get_filter(i)
        filters.append(Filter(int(code), tuple(int(v) for v in values)))
    return Pipeline(tuple(filters), np.dtype(dset.dtype), tuple(int(c) for c in dset.chunks))


def is_plugin(compression: str | None) -> bool:
    """Whether a compression (as :func:`compression_name` names it) needs
    hdf5plugin's filters for HDF5 to read it.

    Example:
        >>> is_plugin("gzip"), is_plugin("lz4"), is_plugin(None)
        (False, True, False)
    """
    return compression is not None and compression not in ("gzip", "lzf", "szip")


def compression_name(codes: Iterable[int], cd_values: dict[int, tuple[int, ...]] | None = None) -> str | None:
    """A compression's name as h5feed calls it, from a pipeline's filter codes.

    Example:
        >>> compression_name([2, 1]), compression_name([32015, 3]), compression_name([2])
        ('gzip', 'zstd', None)
        >>> compression_name([32001], {32001: (2, 2, 2, 0, 5, 1, 1)})
        'lz4'
    """
    names = {DEFLATE: "gzip", LZF: "lzf", SZIP: "szip", ZSTD: "zstd"}
    for code in codes:
        if code in names:
            return names[code]
        if code == BLOSC:
            values = (cd_values or {}).get(BLOSC, ())
            inner = _BLOSC_CODECS.get(values[6]) if len(values) > 6 else None
            return "lz4" if inner == "lz4" else f"blosc-{inner or 'unknown'}"
    return None


# -- decoders: (stored bytes, chunk bytes) -> bytes-like ---------------------------


def _inflate(raw: Any, size: int, out: np.ndarray | None = None) -> bytes:
    # Each module's call that inflates a chunk without the GIL, so that the
    # decoding threads do not wait on each other:
    # - zlib: decompress() with an output buffer of one chunk inflates it in
    #   one go and returns that buffer as it is. Its decompressobj grows the
    #   output from 32 KiB instead, taking the GIL back and copying at each
    #   step.
    # - isal: the other way round; its one-shot decompress holds the GIL.
    # A stream that holds more than a chunk is refused. zlib inflates it
    # whole first; HDF5, which then reads the chunk (NOTE [ Decoding chunks ]
    # in _chunks.py), would do the same.
    module = _inflate_module()
    try:
        if module is zlib:
            data = zlib.decompress(raw, 15, size)
            eof = True  # an incomplete stream raised
        else:
            stream = module.decompressobj()
            data = stream.decompress(raw, size + 1)
            eof = stream.eof
    except Exception as exc:  # zlib.error, isal's IsalError
        raise ChunkError(f"deflate: {exc}") from None
    if len(data) != size or not eof:
        raise ChunkError(f"deflate stream holds {'more' if len(data) > size else 'less'} than a chunk")
    return data


def _lzf_decode(raw: Any, size: int, out: np.ndarray | None = None) -> np.ndarray:
    decompress = _lzf()[0]  # type: ignore[index]
    src = np.frombuffer(raw, dtype=np.uint8)
    out = np.empty(size, dtype=np.uint8) if out is None else out
    if src.size == 0 or decompress(src.ctypes.data, src.size, out.ctypes.data, size) != size:
        raise ChunkError("LZF data is damaged or does not hold one chunk")
    return out


def declared_size(code: int, raw: bytes | memoryview) -> int | None:
    """The uncompressed size a Blosc or Zstd chunk's header declares; None
    when the header is missing, damaged or does not say.

    Example:
        >>> declared_size(32015, bytes.fromhex("28b52ffd2064") + bytes(100))
        100
    """
    head = bytes(raw[:18])
    if code == BLOSC:
        if len(head) < 16:
            return None
        return int.from_bytes(head[4:8], "little")
    if code == ZSTD:
        if len(head) < 5 or int.from_bytes(head[:4], "little") != 0xFD2FB528:
            return None
        desc = head[4]
        fcs_flag, single = desc >> 6, desc >> 5 & 1
        pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[desc & 3]
        width = (1 if single else 0, 2, 4, 8)[fcs_flag]
        if width == 0 or len(head) < pos + width:
            return None
        value = int.from_bytes(head[pos : pos + width], "little")
        return value + 256 if width == 2 else value
    raise ValueError(f"no header to read for filter {code!r}")


def _zstd_decode(raw: Any, size: int, out: np.ndarray | None = None) -> np.ndarray:
    declared = declared_size(ZSTD, raw)
    if declared != size:
        raise ChunkError(f"Zstd frame declares {declared!r} bytes; a chunk holds {size}")
    out = np.empty(size, dtype=np.uint8) if out is None else out
    try:
        _numcodecs().Zstd().decode(raw, out=out)
    except Exception as exc:  # numcodecs raises RuntimeError for a damaged frame
        raise ChunkError(f"Zstd: {exc}") from None
    return out


def _blosc_decode(raw: Any, size: int, out: np.ndarray | None = None) -> np.ndarray:
    # Blosc trusts its header's sizes: check them against the chunk and
    # the stored bytes before it reads or writes anything.
    head = bytes(raw[:16])
    if len(head) < 16:
        raise ChunkError("Blosc chunk shorter than its header")
    nbytes, cbytes = int.from_bytes(head[4:8], "little"), int.from_bytes(head[12:16], "little")
    if nbytes != size or cbytes != len(raw):
        raise ChunkError(f"Blosc header declares {nbytes} bytes in {cbytes}; a chunk holds {size} in {len(raw)}")
    out = np.empty(size, dtype=np.uint8) if out is None else out
    try:
        _numcodecs().Blosc().decode(raw, out=out)
    except Exception as exc:
        raise ChunkError(f"Blosc: {exc}") from None
    return out


_DECODERS = {DEFLATE: _inflate, LZF: _lzf_decode, ZSTD: _zstd_decode, BLOSC: _blosc_decode}


# -- shuffle --------------------------------------------------------------------


def _unshuffle(buf: Any, itemsize: int, out: np.ndarray | None = None) -> Any:
    """HDF5's unshuffle: byte ``j`` of every item from plane ``j``; a tail
    shorter than an item stays as it is. Into ``out`` when given (and sized)."""
    if itemsize <= 1:
        return buf
    src = np.frombuffer(buf, dtype=np.uint8)
    n = src.size // itemsize
    out = np.empty(src.size, dtype=np.uint8) if out is None or out.size != src.size else out
    body = n * itemsize
    _transpose_bytes(src[:body].reshape(itemsize, n), out[:body].reshape(n, itemsize).T)
    out[body:] = src[body:]
    return out


def _shuffle(buf: Any, itemsize: int) -> Any:
    """HDF5's shuffle (the inverse of :func:`_unshuffle`)."""
    if itemsize <= 1:
        return buf
    src = np.frombuffer(buf, dtype=np.uint8)
    n = src.size // itemsize
    out = np.empty(src.size, dtype=np.uint8)
    body = n * itemsize
    _transpose_bytes(src[:body].reshape(n, itemsize).T, out[:body].reshape(itemsize, n))
    out[body:] = src[body:]
    return out


def _transpose_bytes(planes: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = planes`` for two ``(itemsize, n)`` byte views, one of them
    strided: one numpy copy per plane, which releases the GIL.

    Written here rather than taken from numcodecs: its ``Shuffle`` holds the
    GIL while it runs, so the decoding threads waited on each other for about
    half of a gzip chunk's time (NOTE [ Decoding chunks ] in ``_chunks.py``);
    a copy per plane is also faster than one transposed copy of the whole.
    """
    if planes.shape[0] > 16:  # wide items (compound types): one transposed copy
        out[...] = planes
        return
    for j in range(planes.shape[0]):
        out[j] = planes[j]


# -- Fletcher32 ------------------------------------------------------------------

# Words summed per numpy pass: their weighted sum stays below 2**48.
_SLICE = 1 << 16
_WEIGHTS = np.arange(_SLICE, dtype=np.uint32)


def _fold(total: int) -> int:
    # HDF5 keeps each sum in [1, 65535] once it is not 0, by folding the
    # carries back in: the same as the value mod 65535, with 65535 for 0.
    return 0 if total == 0 else (total - 1) % 65535 + 1


def fletcher32(data: Any) -> int:
    """HDF5's Fletcher32 checksum of ``data`` (``H5_checksum_fletcher32``).

    Big-endian 16-bit words (an odd last byte is the high byte of a last
    word); ``sum1`` adds the words, ``sum2`` adds ``sum1`` after each word,
    both folded mod 65535. Computed with numpy, a slice at a time, as
    ``sum2 = n * sum(w) - sum(i * w[i])`` in exact integers.

    Example:
        >>> hex(fletcher32(b"abcde"))
        '0x4ff029c7'
    """
    src = np.frombuffer(data, dtype=np.uint8)
    if src.size % 2:
        src = np.concatenate((src, np.zeros(1, dtype=np.uint8)))
    words = src.view(">u2")
    n = int(words.size)
    sum1 = weighted = 0
    for start in range(0, n, _SLICE):
        w = words[start : start + _SLICE].astype(np.uint32)
        part = int(w.sum(dtype=np.uint64))
        sum1 += part
        weighted += start * part + int(np.multiply(w, _WEIGHTS[: w.size]).sum(dtype=np.uint64))
    return _fold(n * sum1 - weighted) << 16 | _fold(sum1)


def _check_fletcher32(buf: Any) -> Any:
    view = memoryview(buf).cast("B")
    if len(view) < 4:
        raise ChunkError("Fletcher32: the chunk is shorter than its checksum")
    body = view[:-4]
    stored = int.from_bytes(view[-4:], "little")
    computed = fletcher32(body)
    # HDF5 also accepts each 16-bit half byte-swapped: the sums of HDF5
    # before 1.6.3 on little-endian machines.
    swapped = (computed & 0x00FF00FF) << 8 | (computed >> 8) & 0x00FF00FF
    if stored != computed and stored != swapped:
        raise ChunkError("data error detected by Fletcher32 checksum")
    return body


# -- encoders: (bytes, filter) -> stored bytes, or None to skip ----------------------


def _deflate(buf: Any, f: Filter) -> bytes:
    return zlib.compress(buf, f.cd_values[0] if f.cd_values else 6)


def _lzf_encode(buf: Any, f: Filter) -> bytes | None:
    compress = _lzf()[1]  # type: ignore[index]
    src = np.frombuffer(buf, dtype=np.uint8)
    out = np.empty(src.size, dtype=np.uint8)
    # As h5py's filter: no room for output as large as the input.
    n = compress(src.ctypes.data, src.size, out.ctypes.data, src.size) if src.size else 0
    return out[:n].tobytes() if n else None


def _zstd_encode(buf: Any, f: Filter) -> bytes:
    level = f.cd_values[0] if f.cd_values else ZSTD_LEVEL
    return bytes(_numcodecs().Zstd(level=level).encode(np.frombuffer(buf, dtype=np.uint8)))


def _blosc_encode(buf: Any, f: Filter) -> bytes:
    typesize, clevel, shuffle, inner = f.cd_values[2], f.cd_values[4], f.cd_values[5], f.cd_values[6]
    items = np.frombuffer(buf, dtype=np.uint8)
    if items.size % typesize == 0:
        items = items.view(f"u{typesize}")
    codec = _numcodecs().Blosc(cname=_BLOSC_CODECS[inner], clevel=clevel, shuffle=shuffle)
    return bytes(codec.encode(items))


_ENCODERS = {DEFLATE: _deflate, LZF: _lzf_encode, ZSTD: _zstd_encode, BLOSC: _blosc_encode}


# -- the header check of untrusted files -------------------------------------------


def oversized_chunks(path: str, pipeline: Pipeline, chunks: Iterable[tuple[int, int, int, tuple[int, ...]]]) -> list[tuple[tuple[int, ...], int | None]]:
    """Zstd and Blosc chunks whose headers declare more than a chunk.

    HDF5's filters for them allocate whatever a chunk's header declares
    before decompressing, so a file must not reach them with a header that
    lies. Reads the first bytes of each chunk.

    Args:
        path: the file.
        pipeline: the dataset's pipeline.
        chunks: ``(file offset, stored size, filter mask, chunk offset)`` of
            each chunk.

    Returns:
        ``(chunk offset, declared size)`` of each chunk whose header is
        missing or declares more than the chunk's size.
    """
    codes = [f.code for f in pipeline.filters]
    at = next((i for i, c in enumerate(codes) if c in PLUGIN_FILTERS), None)
    if at is None:
        return []
    # Only the last compressor's header lies at the chunk's start.
    later = [c for c in codes[at + 1 :] if c != FLETCHER32]
    bad: list[tuple[tuple[int, ...], int | None]] = []
    limit = pipeline.chunk_nbytes
    with open(path, "rb", buffering=0) as fh:
        for offset, size, mask, where in chunks:
            if mask >> at & 1:
                continue
            if later:
                bad.append((where, None))
                continue
            fh.seek(offset)
            declared = declared_size(codes[at], fh.read(min(size, 18)))
            if declared is None or declared > limit:
                bad.append((where, declared))
    return bad
