"""Variable-length strings: checking HDF5's global heap before HDF5 reads it.

NOTE [ Global heap ]
HDF5 keeps variable-length data -- h5feed's sample IDs, the completion record
and the class names -- in *global heap collections*: blocks that start with
``GCOL`` and hold a list of objects, each with a 16-byte header giving its
index and size. HDF5's parser of that list (``H5HG__cache_heap_deserialize``,
through at least HDF5 1.14.6) advances by each object's size and never
checks it: a collection whose list reads an object of index 0 and size 0 --
a zeroed block does exactly that -- makes it loop forever, holding h5py's
lock, so that no timeout in the process can end it. Collections carry no
checksum, even in files written with the latest format.

So before HDF5 reads a variable-length string, h5feed finds the collections
that hold it and walks their object lists itself (:func:`check_collections`):
a list whose objects do not tile the collection exactly, as every collection
HDF5 writes does, is refused with :class:`~h5feed.errors.DamagedFileError`.
So is a string whose descriptor claims more bytes than the whole file: HDF5
allocates the claimed length before it looks for the string.
Finding the collections needs the strings' 16-byte descriptors (length,
collection address, index), which HDF5 only hands out as the strings:

- for a dataset (the IDs), they are its raw storage, read from the file
  directly (:func:`check_dataset`), for the rows about to be read;
- for an attribute (the completion record, the class names), they sit in
  its attribute message in the object header, which :func:`check_attribute`
  reads (object header versions 1 and 2, attributes stored in the header).

Storage this cannot read without HDF5 (compressed or compact IDs,
attributes in dense storage) is left unchecked: no file h5feed writes has
it. Costs: one read of the header or of 16 bytes per string, and one read of
each collection, which HDF5 reads next anyway.

NOTE [ Virtual dataset mappings ]
The mappings of a virtual dataset (a merged file's ``x``, ``y``) are one
global heap object, ending with a checksum. HDF5 decodes the source and
virtual selections in it *before* it checks that checksum, and a damaged
selection overruns memory in ``H5S__hyper_deserialize``: the process
crashes as soon as the dataset is opened. So before validation opens a
member of a group, :func:`check_virtual_layout` reads its layout message
from the object header; for a virtual dataset it finds the mappings' heap
object and checks the checksum (Bob Jenkins' lookup3, :func:`lookup3`, as
HDF5 computes it) first.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from typing import Any

import h5py
import numpy as np

from .errors import DamagedFileError

__all__ = ["check_attribute", "check_collections", "check_dataset", "check_storage", "check_virtual_layout", "lookup3"]

_GCOL = b"GCOL"
_OBJ_HEADER = 16  # index (2), reference count (2), reserved (4), size (8)
# A collection is read whole by HDF5 before it is parsed; a size beyond this
# is refused by HDF5 itself (it cannot allocate it) or is not h5feed's.
_MAX_COLLECTION = 1 << 30
_MAX_HEADER_CHUNKS = 256  # continuation blocks followed in one object header
_LAYOUT, _ATTRIBUTE, _CONTINUATION = 0x0008, 0x000C, 0x0010
_VIRTUAL = 3  # the layout class of a virtual dataset (layout message version 4)
_VLEN_CLASS = 9


class _File:
    """Positioned reads of a file, and the sizes of its addresses."""

    def __init__(self, f: Any) -> None:
        self.path = f.filename
        plist = f.id.get_create_plist()
        self.sizeof_addr, self.sizeof_size = plist.get_sizes()
        self.base = int(plist.get_userblock())
        self.fh = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self.size = os.fstat(self.fh.fileno()).st_size

    def read(self, addr: int, n: int) -> bytes:
        if addr < 0 or n <= 0 or addr >= self.size:
            return b""
        return os.pread(self.fh.fileno(), min(n, self.size - addr), addr)

    def uint(self, raw: bytes, at: int, n: int) -> int:
        return int.from_bytes(raw[at : at + n], "little")

    def close(self) -> None:
        self.fh.close()


def _refused(path: str, obj: str, addr: int, why: str) -> DamagedFileError:
    return DamagedFileError(
        f"{path}:{obj}: damaged: the global heap collection at byte {addr} that holds its strings "
        f"{why}; HDF5 would loop forever reading it (NOTE [ Global heap ] in h5feed/_heap.py)"
    )


def check_collections(file: _File, obj: str, addresses: Iterable[int], checked: set[int]) -> None:
    """Walk the object list of each collection at ``addresses`` (file-relative).

    Raises:
        DamagedFileError: a collection whose objects do not tile it exactly
            (an object of size 0 among them: HDF5 would never get past it).
    """
    for addr in sorted(set(addresses) - checked):
        checked.add(addr)
        at = file.base + addr
        head = file.read(at, 16)
        if len(head) < 16 or head[:4] != _GCOL or head[4] != 1:
            continue  # HDF5 refuses it itself: a clear error, no loop
        size = file.uint(head, 8, file.sizeof_size)
        if size < 16 or size > _MAX_COLLECTION:
            continue  # HDF5 cannot read it: an error, no loop
        chunk = file.read(at, size)
        if len(chunk) < size:
            continue  # past the end of the file: HDF5's read fails
        if file.sizeof_size == 8 and _tiles(chunk):
            continue
        # The slow walk, HDF5's loop step by step: the judge, and the message.
        p = 16
        while p < size:
            if p + _OBJ_HEADER > size:
                break  # a tail too small for an object: free space
            index = int.from_bytes(chunk[p : p + 2], "little")
            length = int.from_bytes(chunk[p + 8 : p + 8 + file.sizeof_size], "little")
            need = _OBJ_HEADER + ((length + 7) & ~7) if index else length
            if need == 0:
                raise _refused(file.path, obj, addr, f"lists an empty free-space object at byte {at + p}")
            if p + need > size:
                raise _refused(
                    file.path, obj, addr, f"lists object {index} of {length} bytes beyond its end ({size} bytes)"
                )
            p += need


def _heap_object(file: _File, obj: str, addr: int, index: int) -> bytes | None:
    """The data of object ``index`` of the collection at ``addr``; None if not there."""
    check_collections(file, obj, [addr], set())
    at = file.base + addr
    head = file.read(at, 16)
    if len(head) < 16 or head[:4] != _GCOL:
        return None
    size = file.uint(head, 8, file.sizeof_size)
    chunk = file.read(at, min(size, _MAX_COLLECTION))
    p = 16
    while p + _OBJ_HEADER <= len(chunk):
        found = int.from_bytes(chunk[p : p + 2], "little")
        length = int.from_bytes(chunk[p + 8 : p + 8 + file.sizeof_size], "little")
        if found == index and found:
            return chunk[p + _OBJ_HEADER : p + _OBJ_HEADER + length]
        p += _OBJ_HEADER + ((length + 7) & ~7) if found else length
        if not found:
            break
    return None


def lookup3(data: bytes, initval: int = 0) -> int:
    """HDF5's metadata checksum (``H5_checksum_lookup3``: Bob Jenkins' lookup3
    ``hashlittle``).

    Example:
        >>> hex(lookup3(b""))
        '0xdeadbeef'
    """
    mask = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & mask

    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & mask
    if length == 0:
        return c
    # The tail, zero-padded to 12 bytes, adds what lookup3's byte-wise switch adds.
    words = np.frombuffer(data + bytes(-length % 12), dtype="<u4").tolist()
    last = len(words) - 3
    for i in range(0, last, 3):
        a, b, c = (a + words[i]) & mask, (b + words[i + 1]) & mask, (c + words[i + 2]) & mask
        a = (a - c) & mask; a ^= rot(c, 4); c = (c + b) & mask  # noqa: E702 - lookup3's mix, line for line
        b = (b - a) & mask; b ^= rot(a, 6); a = (a + c) & mask  # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 8); b = (b + a) & mask  # noqa: E702
        a = (a - c) & mask; a ^= rot(c, 16); c = (c + b) & mask  # noqa: E702
        b = (b - a) & mask; b ^= rot(a, 19); a = (a + c) & mask  # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 4); b = (b + a) & mask  # noqa: E702
    a, b, c = (a + words[last]) & mask, (b + words[last + 1]) & mask, (c + words[last + 2]) & mask
    c ^= b; c = (c - rot(b, 14)) & mask  # noqa: E702 - lookup3's final
    a ^= c; a = (a - rot(c, 11)) & mask  # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & mask  # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & mask  # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & mask  # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & mask  # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & mask  # noqa: E702
    return c


def _edited(f: Any) -> bool:
    """Whether HDF5 reads ``f`` through a Python file object: only a file that
    h5feed edits in place (``h5feed/_inplace.py``), whose bytes are the
    file's patched by the edit. It was checked when it was opened by its path
    before the edit, and what the edit writes is h5feed's own, so the checks
    here, which read the file by its path, are skipped for it."""
    return getattr(f, "driver", None) == "fileobj"


def check_virtual_layout(f: Any, group: Any, name: str) -> None:
    """Before ``group[name]`` is opened: if it is a virtual dataset, check the
    checksum of its mappings (NOTE [ Virtual dataset mappings ]).

    Raises:
        DamagedFileError: the mappings fail their checksum.
    """
    import h5py

    if _edited(f):
        return
    info = group.id.links.get_info(name.encode("utf-8"))
    if info.type != h5py.h5l.TYPE_HARD:
        return
    obj = group.name.rstrip("/") + "/" + name
    file = _File(f)
    try:
        for kind, body in _messages(file, int(info.u)):
            if kind != _LAYOUT or len(body) < 2:
                continue
            if body[0] < 4 or body[1] != _VIRTUAL:
                return
            o = file.sizeof_addr
            if len(body) < 2 + o + 4:
                return  # HDF5 refuses a message this short
            block = _heap_object(file, obj, file.uint(body, 2, o), file.uint(body, 2 + o, 4))
            if block is None:
                return  # HDF5 refuses a heap object that is not there
            if len(block) < 4 or lookup3(block[:-4]) != int.from_bytes(block[-4:], "little"):
                raise DamagedFileError(
                    f"{file.path}:{obj}: damaged: the mappings of this virtual dataset fail their checksum; "
                    "HDF5 would decode them regardless (NOTE [ Virtual dataset mappings ] in h5feed/_heap.py)"
                )
            return
    finally:
        file.close()


def _tiles(chunk: bytes) -> bool:
    """Whether the objects of a collection tile it exactly (8-byte lengths).

    The same walk as HDF5's, with the arithmetic done for every 8-byte-aligned
    position at once in numpy (the next header from each), then followed
    from the first object by pointer doubling (``nxt = nxt[nxt]``: after
    ``r`` rounds each position points ``2**r`` steps ahead), a few numpy
    gathers however many objects the collection holds. The walk stops at the
    end, or at a position whose next step is invalid (an object of size 0,
    one past the end, an unaligned next header); both are fixed points.
    False means "walk it slowly and see".
    """
    size = len(chunk)
    if size % 8 or size < 32:
        return False
    n = size // 8
    words = np.frombuffer(chunk, dtype="<u8")
    end, stuck = n, n + 1
    # The header at word i (2 <= i < n - 1): its index, and its length
    # clipped to the collection (a longer one runs past the end either way).
    length = np.minimum(words[3:n], size).astype(np.int64)
    need = np.where(words[2 : n - 1] & 0xFFFF != 0, (length + 23) & ~7, length)  # 16 + length, 8-aligned
    after = np.arange(16, 8 * (n - 1), 8, dtype=np.int64) + need
    ok = (need > 0) & (after <= size) & (after & 7 == 0)
    nxt = np.full(n + 2, stuck, dtype=np.int32 if n < 2**30 else np.int64)
    nxt[2 : n - 1] = np.where(ok, after >> 3, stuck)
    nxt[n - 1] = end  # a tail too small for a header is free space
    nxt[end] = end
    # Every valid step moves forward, so 2**rounds >= n steps reach a fixed point.
    for _ in range(n.bit_length()):
        if nxt[2] >= end:
            break
        nxt = nxt[nxt]
    return int(nxt[2]) == end


# -- datasets ---------------------------------------------------------------------


def _descriptor_dtype(sizeof_addr: int) -> np.dtype:
    return np.dtype([("length", "<u4"), ("addr", f"<u{sizeof_addr}"), ("index", "<u4")])


def check_dataset(f: Any, dset: Any, rows: Any = None) -> None:
    """Check the collections that hold ``rows`` of a string dataset.

    Args:
        f: the open h5py file.
        dset: the dataset (of variable-length strings; others pass).
        rows: ``(start, stop)``, an array of rows, or None for all.

    Raises:
        DamagedFileError: see :func:`check_collections`.
    """
    if dset.dtype.kind != "O" or not dset.shape or _edited(f):
        return
    n = int(dset.shape[0])
    if rows is None or isinstance(rows, tuple):
        start, stop = (0, n) if rows is None else (max(0, int(rows[0])), min(n, int(rows[1])))
        runs = [(start, stop)] if start < stop else []
    else:
        wanted = np.unique(np.asarray(rows, dtype=np.int64))
        wanted = wanted[(wanted >= 0) & (wanted < n)]
        cuts = np.flatnonzero(np.diff(wanted) != 1) + 1
        runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(wanted, cuts) if r.size]
    if not runs:
        return
    if dset.is_virtual:
        _check_sources(f, dset, runs)
        return
    file = _File(f)
    try:
        dtype = _descriptor_dtype(file.sizeof_addr)
        spans = _storage_spans(file, dset, runs, dtype.itemsize)
        if spans is None:
            return  # compressed, compact or virtual: not readable without HDF5
        addrs = []
        for offset, count, first in spans:
            raw = file.read(offset, count * dtype.itemsize)
            desc = np.frombuffer(raw[: len(raw) - len(raw) % dtype.itemsize], dtype=dtype)
            _check_lengths(file, dset.name, desc, "row {}", first)
            addrs.append(np.unique(desc["addr"][desc["length"] > 0]))
        check_collections(file, dset.name, np.unique(np.concatenate(addrs)).tolist() if addrs else [], set())
    finally:
        file.close()


def _check_sources(f: Any, dset: Any, runs: list[tuple[int, int]]) -> None:
    """A virtual string dataset (a grown file's ``/ids``, NOTE [ Grown files ]
    in ``grow.py``): check each run of rows in the source file that holds it,
    so that its heap is checked as a stored dataset's would be. The sources
    were checked by validation (relative, inside the file's folder)."""
    # Late: _files and layout import _damage, which imports this module.
    from ._files import open_h5
    from .layout import mapped_rows

    folder = os.path.dirname(os.path.abspath(f.filename))
    for vmap in dset.virtual_sources():
        lo, hi, source_lo, _, _ = mapped_rows(vmap)
        shift = source_lo - lo
        mine = [(max(a, lo) + shift, min(b, hi + 1) + shift) for a, b in runs if a <= hi and b > lo]
        if mine:
            with open_h5(os.path.join(folder, vmap.file_name)) as g:
                src = g[vmap.dset_name]
                for a, b in mine:
                    check_dataset(g, src, (a, b))


def check_storage(f: Any, dset: Any) -> None:
    """Refuse a string dataset whose storage is not one descriptor per row,
    from its metadata alone (the layout message, or the chunk index).

    Opening a file makes this check and not :func:`check_dataset`'s, which
    reads the descriptors of the rows about to be read (NOTE [ Opening reads
    metadata only ] in ``layout.py``).

    Raises:
        DamagedFileError: HDF5 would read descriptors from beyond the
            storage (strings of any claimed length).
    """
    if dset.dtype.kind != "O" or not dset.shape or dset.is_virtual:
        return
    itemsize = _descriptor_dtype(f.id.get_create_plist().get_sizes()[0]).itemsize
    path, n = f.filename, int(dset.shape[0])
    if dset.chunks is None:
        if dset.id.get_offset() is not None and int(dset.id.get_storage_size()) != n * itemsize:
            raise _short_storage(path, dset.name, int(dset.id.get_storage_size()), itemsize, n)
        return
    if dset.id.get_create_plist().get_nfilters() or len(dset.chunks) != 1:
        return
    rows = int(dset.chunks[0])
    bad: list[tuple[int, int]] = []

    def visit(info: Any) -> None:
        if info.byte_offset is not None and int(info.size) != rows * itemsize:
            bad.append((int(info.chunk_offset[0]), int(info.size)))

    if hasattr(dset.id, "chunk_iter"):
        dset.id.chunk_iter(visit)
    else:  # older h5py: slower, same answer
        for i in range(dset.id.get_num_chunks()):
            visit(dset.id.get_chunk_info(i))
    if bad:
        first, size = bad[0]
        raise _short_storage(path, dset.name, size, itemsize, rows, first)


def _short_storage(path: str, obj: str, stored: int, itemsize: int, count: int, chunk: int | None = None) -> DamagedFileError:
    where = "stores" if chunk is None else f"the chunk of rows {chunk}.. stores"
    return DamagedFileError(
        f"{path}:{obj}: damaged: {where} {stored} bytes for the {itemsize}-byte descriptors of {count} strings"
    )


def _check_lengths(file: _File, obj: str, desc: np.ndarray, what: str, first: int = 0) -> None:
    """Refuse a string whose descriptor claims more bytes than the whole file.

    HDF5 allocates a string's claimed length before it finds the heap object
    (a damaged descriptor can claim gigabytes, and the process then stalls or
    runs out of memory).
    """
    bad = np.flatnonzero(desc["length"] > file.size)
    if bad.size:
        raise DamagedFileError(
            f"{file.path}:{obj}: damaged: the string of {what.format(first + int(bad[0]))} claims "
            f"{int(desc['length'][bad[0]])} bytes, more than the whole file ({bad.size} such string(s))"
        )


def _storage_spans(file: _File, dset: Any, runs: list[tuple[int, int]],
                   itemsize: int) -> list[tuple[int, int, int]] | None:
    """``(file offset, descriptors, first row)`` holding the rows of ``runs``;
    None when they cannot be read without HDF5 (compact, filtered, virtual).

    Raises:
        DamagedFileError: the storage is not one descriptor per row: HDF5
            would read descriptors from beyond it (of any claimed length).
    """
    if dset.is_virtual:
        return None
    n = int(dset.shape[0])
    if dset.chunks is None:
        offset = dset.id.get_offset()
        if offset is None:
            return None  # compact, or nothing stored (then HDF5 reads no strings)
        stored = int(dset.id.get_storage_size())
        if stored != n * itemsize:
            raise _short_storage(file.path, dset.name, stored, itemsize, n)
        return [(int(offset) + start * itemsize, stop - start, start) for start, stop in runs]
    if dset.id.get_create_plist().get_nfilters() or len(dset.chunks) != 1:
        return None
    rows = int(dset.chunks[0])
    spans = []
    for start, stop in runs:
        for first in range((start // rows) * rows, stop, rows):
            info = dset.id.get_chunk_info_by_coord((first,))
            if info.byte_offset is None:
                continue  # not stored: nothing for HDF5 to read from the heap
            if int(info.size) != rows * itemsize:
                raise _short_storage(file.path, dset.name, int(info.size), itemsize, rows, first)
            lo, hi = max(start, first), min(stop, first + rows)
            spans.append((int(info.byte_offset) + (lo - first) * itemsize, hi - lo, lo))
    return spans


# -- attributes -------------------------------------------------------------------


def check_attribute(f: Any, name: str) -> None:
    """Check the root group's attribute ``name`` before HDF5 reads it: its
    type, and the collections that hold its strings.

    h5feed's attributes are integers and strings. An attribute whose type
    damage turned into a variable-length sequence or a reference makes HDF5
    convert it down a path that writes to the file, and crash, when it is
    read; it is refused unread.

    Raises:
        DamagedFileError: such a type; or see :func:`check_collections`.
    """
    import h5py

    if _edited(f):
        return
    kind = f.attrs.get_id(name).get_type()
    if isinstance(kind, h5py.h5t.TypeVlenID) or kind.get_class() == h5py.h5t.REFERENCE:
        raise DamagedFileError(
            f"{f.filename}:/ (attribute {name!r}): damaged: its type is a "
            f"{'variable-length sequence' if isinstance(kind, h5py.h5t.TypeVlenID) else 'reference'}, "
            "which h5feed never writes (its attributes are integers and strings); refusing to read it"
        )
    file = _File(f)
    try:
        header = _root_header(file)
        data = None if header is None else _attribute_data(file, header, name.encode("utf-8"))
        if data is None:
            return
        dtype = _descriptor_dtype(file.sizeof_addr)
        desc = np.frombuffer(data[: len(data) - len(data) % dtype.itemsize], dtype=dtype)
        obj = f"/ (attribute {name!r})"
        _check_lengths(file, obj, desc, "element {}")
        check_collections(file, obj, desc["addr"][desc["length"] > 0].tolist(), set())
    finally:
        file.close()


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _root_header(file: _File) -> int | None:
    """The address of the root group's object header, from the superblock.

    (Read here, not through ``H5Oget_info``, which also walks the root
    group's B-tree and heap: damage there should be named as such.)
    """
    raw = file.read(file.base, 8 + 16 + 6 * 8 + 8)
    if raw[:8] != _SIGNATURE or len(raw) < 12:
        return None
    version, o = raw[8], file.sizeof_addr
    if version in (0, 1):
        # ... group K values, flags (and, in version 1, 4 more bytes), four
        # addresses, then the root's symbol table entry: name offset, header.
        at = 24 + (4 if version == 1 else 0) + 4 * o + o
    elif version in (2, 3):
        at = 12 + 3 * o  # base, extension and end-of-file addresses, then the root
    else:
        return None
    return file.uint(raw, at, o) if len(raw) >= at + o else None


def _attribute_data(file: _File, header: int, name: bytes) -> bytes | None:
    """The stored data of attribute ``name`` when it is variable-length, read
    from the object header at ``header``; None when not found there."""
    for kind, body in _messages(file, header):
        if kind != _ATTRIBUTE or len(body) < 8:
            continue
        version = body[0]
        name_size, type_size, space_size = struct.unpack_from("<HHH", body, 2)
        if version == 1:
            pad = lambda n: (n + 7) & ~7  # noqa: E731 - version 1 pads each part to 8 bytes
            at = 8
        elif version in (2, 3):
            pad = lambda n: n  # noqa: E731
            at = 8 + (version == 3)
        else:
            continue
        # HDF5 takes the name as its first name_size - 1 bytes, up to a NUL
        # (the terminator itself may be damaged: it does not look at it).
        if body[at : at + max(name_size - 1, 0)].split(b"\0", 1)[0] != name:
            continue
        at += pad(name_size)
        if at >= len(body) or body[at] & 0x0F != _VLEN_CLASS:
            return None  # not variable-length: nothing in the heap
        at += pad(type_size) + pad(space_size)
        return body[at:]
    return None


def _messages(file: _File, header: int) -> Iterable[tuple[int, bytes]]:
    """``(type, body)`` of each message of the object header at ``header``
    (versions 1 and 2), following continuation blocks."""
    base = file.base
    first = file.read(base + header, 4)
    if first == b"OHDR":
        yield from _messages_v2(file, header)
        return
    head = file.read(base + header, 16)
    if len(head) < 16 or head[0] != 1:
        return
    blocks = [(header + 16, file.uint(head, 8, 4))]
    seen: set[int] = set()
    while blocks and len(seen) < _MAX_HEADER_CHUNKS:
        addr, length = blocks.pop(0)
        if addr in seen:
            continue
        seen.add(addr)
        raw = file.read(base + addr, length)
        p = 0
        while p + 8 <= len(raw):
            kind, size = struct.unpack_from("<HH", raw, p)
            body = raw[p + 8 : p + 8 + size]
            if kind == _CONTINUATION and len(body) >= file.sizeof_addr + file.sizeof_size:
                blocks.append((file.uint(body, 0, file.sizeof_addr),
                               file.uint(body, file.sizeof_addr, file.sizeof_size)))
            yield kind, body
            p += 8 + size


def _messages_v2(file: _File, header: int) -> Iterable[tuple[int, bytes]]:
    base = file.base
    head = file.read(base + header, 6 + 16 + 4 + 8)
    if len(head) < 7 or head[4] != 2:
        return
    flags = head[5]
    at = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
    width = 1 << (flags & 0x03)
    length = file.uint(head, at, width)
    blocks = [(header + at + width, length, False)]
    order = 2 if flags & 0x04 else 0
    seen: set[int] = set()
    while blocks and len(seen) < _MAX_HEADER_CHUNKS:
        addr, length, is_ochk = blocks.pop(0)
        if addr in seen:
            continue
        seen.add(addr)
        raw = file.read(base + addr, length)
        p = 4 if is_ochk else 0
        end = len(raw) - (4 if is_ochk else 0)  # an OCHK block ends with its checksum
        while p + 4 + order <= end:
            kind = raw[p]
            size = int.from_bytes(raw[p + 1 : p + 3], "little")
            body = raw[p + 4 + order : p + 4 + order + size]
            if kind == _CONTINUATION and len(body) >= file.sizeof_addr + file.sizeof_size:
                blocks.append((file.uint(body, 0, file.sizeof_addr),
                               file.uint(body, file.sizeof_addr, file.sizeof_size), True))
            yield kind, body
            p += 4 + order + size
