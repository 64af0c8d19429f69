"""Sample IDs in bulk: encoded, sorted, looked up, written; never a Python object per row.

The one implementation of "which rows hold these IDs" and of "are these IDs
unique": the writer (duplicates, splits given by ID, the sorted index),
``_select`` (``ids=``), merge (uniqueness across parts) and ``verify`` (the
index against ``/ids``) all call it.

NOTE [ IDs at scale ]
IDs are held as :class:`Encoded`: their UTF-8 bytes in one ``uint8`` array
(``data``) with an ``int64`` start and end per ID, so a million IDs cost
about their bytes plus 16 bytes each, and every operation is a few numpy
calls over all of them. Bytes compare as big-endian 64-bit words
(:func:`words`), eight bytes per numpy operation; an ID that has ended
reads as zero bytes, which sort before any byte of a longer ID (IDs hold no
NUL), so word order is the order of the UTF-8 bytes, which is also the
order of the code points.

- Sorting (:func:`argsort`) strips the prefix every ID shares (``sample-``),
  sorts by the next word and refines only the runs that tie, a word further
  each time; IDs such as ``sample-<n>`` sort in one pass.
- Looking up k IDs among N sorted ones (:class:`Sorted`,
  :meth:`Sorted.find`) is a binary search run for all k at once: about
  ``log2(N)`` rounds of numpy calls over k elements, O(k log N) work. When k
  is a good part of N, every sorted ID is read once and each search starts
  from the run of IDs that share its first word (``numpy.searchsorted``).
- Repeats within one block (the writer's ``extend``) are found by sorting a
  64-bit fingerprint of each ID (:func:`any_repeat`); repeats among all IDs,
  by the sort itself (:func:`sort`).
- In a file, the sorted index ``/ids_index`` (``docs/format.md``) is
  memory-mapped, so a lookup touches only the pages it probes, and every
  row it finds is read back from ``/ids`` and compared (one point
  selection), so a damaged index cannot select a wrong row silently. A file
  without the index is scanned in blocks of ``/ids`` (O(N) time, memory of
  one block).
- The writer writes ``/ids`` from the encoded bytes directly: HDF5 takes
  variable-length strings as an array of C string pointers, which numpy
  computes from the NUL-terminated bytes in one call (:func:`write_strings`).
See the design note ``docs/design/scale.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ._damage import touching
from ._files import open_h5
from ._heap import check_dataset
from ._plan import _mix
from .errors import InvalidSampleIDError, LayoutError, ReadError, UnknownIDError
from ._record import read_record
from .layout import IDS, IDS_INDEX, PART_IDS, X, _contiguous_offset, mapped_rows

__all__ = [
    "INDEX_NAMES",
    "SCAN_ROWS",
    "Encoded",
    "Sorted",
    "any_repeat",
    "argsort",
    "blocks",
    "compare",
    "encode",
    "encode_bytes",
    "find_rows",
    "fingerprints",
    "locate",
    "map_dataset",
    "part_bounds",
    "read_block",
    "read_points",
    "sort",
    "sorted_in_file",
    "words",
    "write_index",
    "write_strings",
]

# /ids is read back in blocks of this many rows where it must be scanned.
SCAN_ROWS = 1 << 20
# The sorted bytes are gathered and written in blocks of this many IDs.
_WRITE_IDS = 1 << 18
_ALL = 0xFFFFFFFFFFFFFFFF
# A lookup of k IDs among N reads every sorted ID to seed its search once
# k * log2(N) exceeds this many times N (Sorted.find).
_MERGE_FACTOR = 2


@dataclass(frozen=True)
class Encoded:
    """Many IDs as UTF-8 bytes: ID ``i`` is ``data[starts[i]:ends[i]]``.

    Attributes:
        data: the bytes (uint8). Made by :func:`encode`, each ID is followed
            by a NUL, as HDF5 wants C strings.
        starts: where each ID starts in ``data`` (int64).
        ends: where each ID ends (int64, exclusive).
    """

    data: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @property
    def size(self) -> int:
        return int(self.starts.size)

    def __len__(self) -> int:
        return self.size

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    def item(self, i: int) -> str:
        """ID ``i`` as a str (for messages)."""
        raw = self.data[int(self.starts[i]) : int(self.ends[i])].tobytes()
        return raw.decode("utf-8", "replace")

    def items(self, positions: Iterable[int]) -> list[str]:
        return [self.item(int(i)) for i in positions]

    @staticmethod
    def concat(parts: Sequence[Encoded]) -> Encoded:
        """The IDs of ``parts`` one after the other, in one array."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return Encoded(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
        shift = np.cumsum([0] + [p.data.size for p in parts[:-1]])
        return Encoded(
            np.concatenate([p.data for p in parts]),
            np.concatenate([p.starts + s for p, s in zip(parts, shift)]),
            np.concatenate([p.ends + s for p, s in zip(parts, shift)]),
        )


def _split(data: bytes) -> Encoded:
    """The IDs ``data`` holds, each followed by a NUL."""
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 0).astype(np.int64)
    starts = np.empty(ends.size, dtype=np.int64)
    if ends.size:
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return Encoded(raw, starts, ends)


def encode(ids: Sequence[Any], where: str) -> Encoded:
    """Check and encode sample IDs (str, not empty, no NUL, valid UTF-8).

    Raises:
        InvalidSampleIDError: an ID that is not a str, is empty, holds a
            NUL or cannot be encoded; the message names it and ``where``.

    Example:
        >>> e = encode(["a", "bé"], "f.h5")
        >>> e.lengths.tolist(), e.item(1)
        ([1, 3], 'bé')
    """
    ids = ids if isinstance(ids, (list, tuple)) else list(ids)
    try:
        joined = "\x00".join(ids)
    except TypeError:
        bad = next(s for s in ids if not isinstance(s, str))
        raise InvalidSampleIDError(
            f"{where}: sample IDs must be str. Received: {bad!r} ({type(bad).__name__})"
        ) from None
    try:
        data = (joined + "\x00").encode("utf-8") if ids else b""
    except UnicodeEncodeError:
        bad = next(s for s in ids if not _encodes(s))
        raise InvalidSampleIDError(
            f"{where}: invalid sample ID {bad!r}: not valid Unicode text (it cannot be encoded as UTF-8)"
        ) from None
    enc = _split(data)
    # A NUL inside an ID makes one separator too many; an empty ID has no bytes.
    if enc.size != len(ids) or (enc.ends == enc.starts).any():
        bad = next(s for s in ids if not s or "\x00" in s)
        raise InvalidSampleIDError(f"{where}: invalid sample ID {bad!r}: empty or holds NUL")
    return enc


def _encodes(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_bytes(items: Sequence[bytes]) -> Encoded:
    """IDs read from a file (bytes, as h5py returns them) as :class:`Encoded`."""
    items = items if isinstance(items, list) else list(items)
    return _split(b"\x00".join(items) + b"\x00" if items else b"")


# -- comparing ---------------------------------------------------------------


def words(data: np.ndarray, offsets: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The 8 bytes at ``offsets`` as big-endian uint64, bytes at or past ``ends`` zero.

    One gather through a view of ``data`` whose elements overlap (a stride
    of one byte), so this costs one numpy call per step, not per byte.

    Example:
        >>> d = np.frombuffer(b"abcdefghij", np.uint8)
        >>> [hex(w) for w in words(d, np.array([0, 8, 2]), np.array([10, 10, 3]))]
        ['0x6162636465666768', '0x696a000000000000', '0x6300000000000000']
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    size = int(data.size)
    if size < 8:
        data = np.concatenate([np.asarray(data, dtype=np.uint8), np.zeros(8, np.uint8)])
        size = data.size
    # Gathered as opaque 8-byte items (numpy's fastest gather for unaligned
    # data), then read as big-endian integers.
    view = np.ndarray(shape=(size - 7,), dtype="V8", buffer=data, strides=(1,))
    at = np.minimum(offsets, size - 8)
    out = view[at].view(">u8").astype(np.uint64)
    lead = offsets - at  # bytes read before the offset, near the end of data
    if (lead > 0).any():
        out <<= (np.minimum(lead, 7) * 8).astype(np.uint64)
    # Bytes at or past the end become zero: keep the top `keep` bytes. NumPy
    # shifts a uint64 by 64 or more to zero, so an ended ID reads as 0.
    keep = np.minimum(np.maximum(np.asarray(ends, dtype=np.int64) - offsets, 0), 8)
    out &= np.uint64(_ALL) << ((8 - keep) * 8).astype(np.uint64)
    return out


def compare(
    data_a: np.ndarray, starts_a: np.ndarray, ends_a: np.ndarray,
    data_b: np.ndarray, starts_b: np.ndarray, ends_b: np.ndarray,
) -> np.ndarray:
    """-1, 0 or 1 for each pair of IDs a[i] <, ==, > b[i] (UTF-8 byte order).

    Example:
        >>> a, b = encode(["a", "ab", "b", "ab"], "x"), encode(["ab", "ab", "a", "abc"], "x")
        >>> compare(a.data, a.starts, a.ends, b.data, b.starts, b.ends).tolist()
        [-1, 0, 1, -1]
    """
    n = int(np.size(starts_a))
    out = np.zeros(n, dtype=np.int8)
    todo = np.arange(n)
    sa, ea = np.asarray(starts_a, np.int64), np.asarray(ends_a, np.int64)
    sb, eb = np.asarray(starts_b, np.int64), np.asarray(ends_b, np.int64)
    step = 0
    while todo.size:
        wa = words(data_a, sa[todo] + step, ea[todo])
        wb = words(data_b, sb[todo] + step, eb[todo])
        out[todo[wa < wb]] = -1
        out[todo[wa > wb]] = 1
        # Equal so far: go on while either ID has bytes left.
        more = (wa == wb) & ((ea[todo] > sa[todo] + step + 8) | (eb[todo] > sb[todo] + step + 8))
        todo = todo[more]
        step += 8
    return out


def _common_prefix(enc: Encoded) -> int:
    """Bytes at the start that every ID shares (at most the shortest length)."""
    if enc.size < 2:
        return 0
    shortest = int(enc.lengths.min())
    prefix = 0
    while prefix < shortest:
        w = words(enc.data, enc.starts + prefix, enc.ends)
        differ = int(np.bitwise_or.reduce(w ^ w[0]))
        if differ:
            return min(shortest, prefix + (64 - differ.bit_length()) // 8)
        prefix += 8
    return shortest


def argsort(enc: Encoded) -> np.ndarray:
    """The positions of ``enc``'s IDs in UTF-8 byte order; equal IDs in their
    original order (stable).

    Example:
        >>> argsort(encode(["b", "ab", "a", "ab"], "x")).tolist()
        [2, 1, 3, 0]
    """
    return sort(enc)[0]


def sort(enc: Encoded) -> tuple[np.ndarray, np.ndarray]:
    """:func:`argsort`, and the sorted positions ``i`` whose ID equals the one at ``i - 1``.

    Sorts by the first word after the common prefix, then refines only the
    classes of IDs still tied, a word at a time (NOTE [ IDs at scale ]); a
    class whose IDs have all ended holds equal IDs.

    Example:
        >>> order, repeats = sort(encode(["b", "ab", "a", "ab"], "x"))
        >>> order.tolist(), repeats.tolist()
        ([2, 1, 3, 0], [2])
    """
    n = enc.size
    if n < 2:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    step = _common_prefix(enc)
    key = words(enc.data, enc.starts + step, enc.ends)
    order = np.argsort(key, kind="stable").astype(np.int64)
    key = key[order]
    # new[i]: sorted position i differs from i - 1 in the bytes compared so far.
    new = np.ones(n, dtype=bool)
    new[1:] = key[1:] != key[:-1]
    del key
    repeated = np.zeros(n, dtype=bool)
    while True:
        inner = np.flatnonzero(~new)
        if not inner.size:
            break
        mark = np.zeros(n, dtype=bool)
        mark[inner] = True
        mark[inner - 1] = True
        pos = np.flatnonzero(mark)
        cls = np.cumsum(new)[pos]
        members = order[pos]
        # A class whose IDs all end here holds equal IDs: it is done.
        goes_on = enc.ends[members] > enc.starts[members] + step + 8
        first = np.concatenate(([True], cls[1:] != cls[:-1]))
        starts = np.flatnonzero(first)
        keep = np.repeat(np.maximum.reduceat(goes_on, starts), np.diff(np.append(starts, pos.size)))
        repeated[pos[~keep & ~first]] = True
        new[pos[~keep]] = True
        pos, cls, members = pos[keep], cls[keep], members[keep]
        if not pos.size:
            break
        step += 8
        nxt = words(enc.data, enc.starts[members] + step, enc.ends[members])
        perm = np.lexsort((nxt, cls))  # stable: ties keep the order found so far
        order[pos] = members[perm]
        nxt, cls = nxt[perm], cls[perm]
        new[pos[1:]] = (cls[1:] != cls[:-1]) | (nxt[1:] != nxt[:-1])
    return order, np.flatnonzero(repeated)


def fingerprints(enc: Encoded) -> np.ndarray:
    """A 64-bit hash of each ID (its words and length, mixed): equal IDs have
    equal fingerprints, and different IDs almost never do."""
    out = _mix(enc.lengths.astype(np.uint64))
    todo = np.arange(enc.size)
    step = 0
    while todo.size:
        w = words(enc.data, enc.starts[todo] + step, enc.ends[todo])
        out[todo] = _mix(out[todo] ^ w)
        todo = todo[enc.ends[todo] > enc.starts[todo] + step + 8]
        step += 8
    return out


def any_repeat(enc: Encoded) -> bool:
    """Whether an ID appears twice: one sort of fingerprints, and a full
    sort only when two fingerprints agree.

    Example:
        >>> any_repeat(encode(["a", "b"], "x")), any_repeat(encode(["a", "b", "a"], "x"))
        (False, True)
    """
    if enc.size < 2:
        return False
    prints = np.sort(fingerprints(enc))
    if not (prints[1:] == prints[:-1]).any():
        return False
    return bool(sort(enc)[1].size)


# -- sorted IDs and lookups ------------------------------------------------------


class Sorted:
    """IDs in UTF-8 byte order, with the row of each: what a lookup searches.

    Built from an :class:`Encoded` and its :func:`argsort` (the writer), or
    over a file's ``/ids_index`` (:func:`sorted_in_file`), memory-mapped.

    Args:
        data: the bytes the IDs lie in.
        n: the number of IDs.
        span: ``span(i) -> (starts, ends)`` in ``data`` of sorted positions ``i``.
        rows: ``rows(i)``: the row of each sorted position ``i``.
    """

    def __init__(self, data: np.ndarray, n: int, span: Any, rows: Any) -> None:
        self.data = data
        self.n = int(n)
        self.span = span
        self.rows = rows

    @classmethod
    def of(cls, enc: Encoded, order: np.ndarray) -> Sorted:
        return cls(enc.data, enc.size, lambda i: (enc.starts[order[i]], enc.ends[order[i]]), lambda i: order[i])

    def find(self, queries: Encoded) -> np.ndarray:
        """The sorted position of each query, -1 where absent.

        One binary search for all queries at once: O(k log N) work, touching
        only the sorted IDs it probes. When the queries are so many that
        reading every sorted ID costs less, each query's search starts from
        the run of sorted IDs that share its first word, found with
        ``numpy.searchsorted`` (:meth:`_bounds`); most runs hold one ID.

        Example:
            >>> ids = encode(["c", "a", "b"], "x")
            >>> s = Sorted.of(ids, argsort(ids))
            >>> s.find(encode(["b", "zz", "c"], "x")).tolist()
            [1, -1, 2]
        """
        k = queries.size
        found = np.full(k, -1, dtype=np.int64)
        if not self.n or not k:
            return found
        if k * self.n.bit_length() > _MERGE_FACTOR * self.n:
            lo, hi = self._bounds(queries)
        else:
            lo, hi = np.zeros(k, dtype=np.int64), np.full(k, self.n, dtype=np.int64)
        todo = np.flatnonzero(lo < hi)
        while todo.size:
            mid = (lo[todo] + hi[todo]) // 2
            starts, ends = self.span(mid)
            c = compare(queries.data, queries.starts[todo], queries.ends[todo], self.data, starts, ends)
            found[todo[c == 0]] = mid[c == 0]
            hi[todo[c < 0]] = mid[c < 0]
            lo[todo[c > 0]] = mid[c > 0] + 1
            todo = todo[(c != 0) & (lo[todo] < hi[todo])]
        return found

    def _bounds(self, queries: Encoded) -> tuple[np.ndarray, np.ndarray]:
        """For each query, the run ``[lo, hi)`` of sorted IDs whose first word
        (after the prefix they all share) equals its own; empty when absent.

        Reads every sorted ID once (O(N)); the words of sorted IDs that share a
        prefix are sorted too, so ``numpy.searchsorted`` finds the runs.
        """
        n = self.n
        starts, ends = self.span(np.arange(n, dtype=np.int64))
        first = self.data[int(starts[0]) : int(ends[0])].tobytes()
        last = self.data[int(starts[-1]) : int(ends[-1])].tobytes()
        p = len(os.path.commonprefix([first, last]))  # sorted: every ID shares it
        keys = words(self.data, starts + p, ends)
        del starts, ends
        mine = np.frombuffer(first[:p], dtype=np.uint8)
        has_prefix = queries.lengths >= p
        if p:
            ok = np.flatnonzero(has_prefix)
            same = compare(queries.data, queries.starts[ok], queries.starts[ok] + p,
                           mine, np.zeros(ok.size, np.int64), np.full(ok.size, p, np.int64))
            has_prefix[ok[same != 0]] = False
        qkeys = words(queries.data, queries.starts + p, queries.ends)
        # Sorted needles: numpy's search then starts where the last one ended.
        order = np.argsort(qkeys)
        lo = np.empty(queries.size, dtype=np.int64)
        hi = np.empty(queries.size, dtype=np.int64)
        lo[order] = np.searchsorted(keys, qkeys[order], side="left")
        hi[order] = np.searchsorted(keys, qkeys[order], side="right")
        hi[~has_prefix] = lo[~has_prefix]
        return lo, hi


def _queries(wanted: Sequence[Any]) -> tuple[Encoded, np.ndarray]:
    """The wanted IDs that could be in a file, encoded, and their positions.

    Anything that is not a non-empty str without NUL can be in no file.
    """
    try:
        return encode(wanted, "ids"), np.arange(len(wanted), dtype=np.int64)
    except InvalidSampleIDError:
        ok = [i for i, s in enumerate(wanted) if isinstance(s, str) and s and "\x00" not in s and _encodes(s)]
        return encode([wanted[i] for i in ok], "ids"), np.asarray(ok, dtype=np.int64)


def _unknown(path: str, wanted: Sequence[Any], missing: np.ndarray) -> UnknownIDError:
    shown = [wanted[int(i)] for i in missing[:5]]
    return UnknownIDError(
        f"{path}: {missing.size} of the requested IDs are not in the file, e.g. {shown!r}"
    )


def find_rows(f: h5py.File, wanted: Sequence[Any], completion: Any) -> np.ndarray:
    """The rows of ``wanted`` IDs in ``f``, in the order given (repeats allowed).

    Through the sorted index when the file has one that its completion record
    lists (O(k log N); a grown file: each part's, :func:`locate`), else by
    scanning ``/ids`` in blocks (NOTE [ IDs at scale ]).

    Raises:
        TypeError: ``wanted`` is one str.
        UnknownIDError: some IDs are not in the file (the count and the
            first five named).
        LayoutError: the index is damaged, or ``/ids`` repeats a wanted ID.
        ReadError: a damaged chunk of ``/ids``.
    """
    if isinstance(wanted, str):
        raise TypeError(f"ids must be a list of sample IDs, not one string. Received: {wanted!r}")
    wanted = wanted if isinstance(wanted, (list, tuple)) else list(wanted)
    path = os.fspath(f.filename)
    queries, where = _queries(wanted)
    found = np.full(len(wanted), -1, dtype=np.int64)
    found[where] = locate(f, queries, completion)
    missing = np.flatnonzero(found < 0)
    if missing.size:
        raise _unknown(path, wanted, missing)
    return found


def locate(f: h5py.File, queries: Encoded, completion: Any) -> np.ndarray:
    """The row of each of ``queries`` in the file ``f``, -1 where absent.

    Through the file's sorted index when its completion record vouches for
    one, each row found read back and compared; else by a scan. A grown file
    has no index of its own: each part's is searched, and the rows before
    the part added (NOTE [ Grown files ] in ``grow.py``): O(parts x k log N),
    skipping the parts whose bounds (:func:`part_bounds`) hold no query.
    """
    if "part_records" not in completion:
        index = sorted_in_file(f, completion)
        if index is None:
            return _scan(f, queries)
        pos = index.find(queries)
        hit = pos >= 0
        rows = np.full(queries.size, -1, dtype=np.int64)
        rows[hit] = index.rows(pos[hit])
        _confirm(f, queries, rows)
        return rows
    folder = os.path.dirname(os.path.abspath(f.filename))
    rows = np.full(queries.size, -1, dtype=np.int64)
    todo = np.arange(queries.size, dtype=np.int64)
    bounds = part_bounds(f, completion)
    starts = _part_starts(f)
    for i, name in enumerate(completion["parts"]):
        mine = todo if bounds is None else todo[_within(queries, todo, bounds, i)]
        if not mine.size:
            continue
        with open_h5(os.path.join(folder, name)) as g:
            found = locate(g, Encoded(queries.data, queries.starts[mine], queries.ends[mine]), read_record(g))
        hit = found >= 0
        rows[mine[hit]] = found[hit] + starts[i]
        todo = np.setdiff1d(todo, mine[hit], assume_unique=True)
        if not todo.size:
            break
    return rows


def _part_starts(f: h5py.File) -> list[int]:
    """The first row of each part of a grown file, from the mappings of its
    ``x`` (validation checked they follow ``parts``, each whole)."""
    return sorted(mapped_rows(vmap)[0] for vmap in f[X].virtual_sources())


def _within(queries: Encoded, todo: np.ndarray, bounds: tuple[Encoded, Encoded], i: int) -> np.ndarray:
    """Which of ``queries[todo]`` lie within part ``i``'s bounds."""
    first, last = bounds
    k = todo.size
    lo = compare(queries.data, queries.starts[todo], queries.ends[todo],
                 first.data, np.full(k, first.starts[i]), np.full(k, first.ends[i]))
    hi = compare(queries.data, queries.starts[todo], queries.ends[todo],
                 last.data, np.full(k, last.starts[i]), np.full(k, last.ends[i]))
    return (lo >= 0) & (hi <= 0)


def part_bounds(f: h5py.File, completion: Any) -> tuple[Encoded, Encoded] | None:
    """A grown file's smallest and largest ID of each part (``/part_ids``),
    when its completion record vouches for them; else None.

    Raises:
        LayoutError: not one string per part.
    """
    names = (f"{PART_IDS}/first", f"{PART_IDS}/last")
    recorded = completion.get("sha256", {})
    if not all(name in recorded for name in names) or not isinstance(f.get(PART_IDS), h5py.Group):
        return None
    out = []
    for name in names:
        dset = f.get(name)
        n = len(completion["parts"])
        if not isinstance(dset, h5py.Dataset) or dset.shape != (n,) or h5py.check_string_dtype(dset.dtype) is None:
            raise LayoutError(
                f"{f.filename}:/{name}: expected {n} strings, one per part. Received: "
                f"{'nothing' if dset is None else (dset.shape, dset.dtype)!r}"
            )
        out.append(read_block(dset, 0, n))
    return out[0], out[1]


def _confirm(f: h5py.File, queries: Encoded, rows: np.ndarray) -> None:
    """Read the found rows of ``/ids`` back: each must hold the ID that led to it."""
    hit = np.flatnonzero(rows >= 0)
    if not hit.size:
        return
    uniq, inverse = _unique(rows[hit])
    n = f[IDS].shape[0]
    if int(uniq[0]) < 0 or int(uniq[-1]) >= n:
        raise LayoutError(
            f"{f.filename}:/ids_index/rows: row {int(uniq[-1])!r} is outside [0, {n}): the index is "
            f"damaged; `h5feed verify {f.filename}` checks it"
        )
    stored = encode_bytes(read_points(f[IDS], uniq).tolist())
    c = compare(queries.data, queries.starts[hit], queries.ends[hit],
                stored.data, stored.starts[inverse], stored.ends[inverse])
    bad = np.flatnonzero(c != 0)
    if bad.size:
        i = int(bad[0])
        raise LayoutError(
            f"{f.filename}:/ids_index: the index is damaged: it finds sample ID {queries.item(int(hit[i]))!r} "
            f"at row {int(rows[hit[i]])}, which holds {stored.item(int(inverse[i]))!r}; "
            f"`h5feed verify {f.filename}` checks the index"
        )


def _unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``numpy.unique(values, return_inverse=True)``, by one sort (numpy's
    hash-based unique is slow on millions of values)."""
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    first = np.ones(ranked.size, dtype=bool)
    first[1:] = ranked[1:] != ranked[:-1]
    inverse = np.empty(values.size, dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ranked[first], inverse


def read_points(dset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``dset[rows]`` for sorted, distinct ``rows``, as one HDF5 point selection.

    h5py's own fancy indexing selects a hyperslab per row, which grows
    quadratically with the number of rows.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty(rows.size, dtype=dset.dtype)
    if not rows.size:
        return out
    with touching(dset.file.filename, dset.name, ReadError, dset=dset, rows=(int(rows[0]), int(rows[-1]) + 1)):
        check_dataset(dset.file, dset, rows)  # NOTE [ Global heap ] (h5feed/_heap.py)
        fspace = dset.id.get_space()
        fspace.select_elements(rows.reshape(-1, 1))
        mspace = h5py.h5s.create_simple((rows.size,))
        dset.id.read(mspace, fspace, out, mtype=h5py.h5t.py_create(out.dtype))
    return out


def _read_slice(dset: h5py.Dataset, start: int, stop: int) -> list[Any]:
    """Rows ``start..stop-1`` of a string dataset, as bytes, the heap checked
    first; damage is an h5feed error naming the file, the dataset and rows."""
    with touching(dset.file.filename, dset.name, ReadError, dset=dset, rows=(start, stop)):
        check_dataset(dset.file, dset, (start, stop))  # NOTE [ Global heap ] (h5feed/_heap.py)
        return dset[start:stop].tolist()


def read_block(dset: h5py.Dataset, start: int, stop: int) -> Encoded:
    """Rows ``start..stop-1`` of ``/ids``, encoded (their Python objects dropped)."""
    return encode_bytes(_read_slice(dset, start, stop))


def blocks(dset: h5py.Dataset, rows: int = SCAN_ROWS) -> Iterator[tuple[int, Encoded]]:
    """``(first row, IDs)`` of ``/ids`` read in blocks of ``rows``."""
    n = int(dset.shape[0])
    for start in range(0, n, rows):
        yield start, read_block(dset, start, min(n, start + rows))


def _scan(f: h5py.File, queries: Encoded) -> np.ndarray:
    """Rows of ``queries`` found by reading ``/ids`` a block at a time."""
    want: dict[bytes, list[int]] = {}
    for i in range(queries.size):
        want.setdefault(queries.data[queries.starts[i] : queries.ends[i]].tobytes(), []).append(i)
    rows = np.full(queries.size, -1, dtype=np.int64)
    dset = f[IDS]
    n = int(dset.shape[0])
    for start in range(0, n, SCAN_ROWS):
        stop = min(n, start + SCAN_ROWS)
        block = _read_slice(dset, start, stop)
        for offset in [i for i, sid in enumerate(block) if sid in want]:
            for q in want[block[offset]]:
                if rows[q] >= 0:
                    raise LayoutError(
                        f"{f.filename}:/ids: sample ID {queries.item(q)!r} is at rows {int(rows[q])} and "
                        f"{start + offset}; sample IDs must be unique"
                    )
                rows[q] = start + offset
    return rows


# -- the index in a file -------------------------------------------------------------


INDEX = IDS_INDEX
INDEX_NAMES = (f"{INDEX}/rows", f"{INDEX}/ends", f"{INDEX}/bytes")
_INDEX_DTYPES = {"rows": np.dtype("int64"), "ends": np.dtype("int64"), "bytes": np.dtype("uint8")}


def _mapped(f: h5py.File, dset: h5py.Dataset) -> np.ndarray:
    """``dset`` as an array: memory-mapped when stored contiguous, else read."""
    offset = _contiguous_offset(dset) if dset.shape and dset.shape[0] else None
    if offset is not None and dset.dtype.isnative:
        return map_dataset(os.fspath(f.filename), dset.name, offset, dset.dtype, int(dset.shape[0]))
    with touching(f.filename, dset.name, ReadError, dset=dset, rows=(0, int(dset.shape[0]))):
        return dset[()]


def map_dataset(path: str, name: str, offset: int, dtype: Any, count: int) -> np.ndarray:
    """``count`` items of ``dtype`` at ``offset`` of ``path``, memory-mapped, read-only.

    Raises:
        ReadError: the file ends before them (truncated).
    """
    dtype = np.dtype(dtype)
    end = offset + count * dtype.itemsize
    size = os.path.getsize(path)
    if end > size:
        raise ReadError(f"{path}:{name}: the file is {size} bytes, but the dataset's data ends at byte {end}: truncated")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def sorted_in_file(f: h5py.File, completion: Any) -> Sorted | None:
    """The file's sorted ID index, memory-mapped; None when it has none (or
    its completion record does not list it, so nothing vouches for it).

    Raises:
        LayoutError: an index of the wrong shape or type; when searched, ends
            that do not cut its bytes (a damaged index).
        DamagedFileError: HDF5 cannot read the group's structure.
        ReadError: its data cannot be read back.
    """
    with touching(f.filename, f"/{INDEX}"):
        return _sorted_in_file(f, completion)


def _sorted_in_file(f: h5py.File, completion: Any) -> Sorted | None:
    group = f.get(INDEX)
    recorded = completion.get("sha256", {}) if hasattr(completion, "get") else {}
    if not isinstance(group, h5py.Group) or not all(name in recorded for name in INDEX_NAMES):
        return None
    n = int(f[IDS].shape[0])
    dsets = {}
    for name, dtype in _INDEX_DTYPES.items():
        dset = group.get(name)
        if not isinstance(dset, h5py.Dataset) or dset.ndim != 1 or dset.dtype != dtype:
            raise LayoutError(
                f"{f.filename}:/{INDEX}/{name}: expected a 1-D dataset of {dtype}. Received: "
                f"{'nothing' if dset is None else (dset.shape, dset.dtype)!r}"
            )
        dsets[name] = dset
    if dsets["rows"].shape[0] != n or dsets["ends"].shape[0] != n:
        raise LayoutError(
            f"{f.filename}:/{INDEX}: expected {n} rows and ends, one per ID. Received: "
            f"{dsets['rows'].shape[0]} and {dsets['ends'].shape[0]}"
        )
    rows = _mapped(f, dsets["rows"])
    ends = _mapped(f, dsets["ends"])
    data = _mapped(f, dsets["bytes"]) if dsets["bytes"].shape[0] else np.zeros(0, np.uint8)

    size = int(data.size)
    where = f"{f.filename}:/{INDEX}/ends"

    def span(i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stop = np.asarray(ends[i], dtype=np.int64)
        start = np.where(i > 0, ends[np.maximum(i - 1, 0)], 0)
        # A damaged index must not send a search outside its bytes.
        bad = np.flatnonzero((start < 0) | (stop < start) | (stop > size))
        if bad.size:
            at = int(np.asarray(i).reshape(-1)[bad[0]])
            raise LayoutError(
                f"{where}: entry {at} ends at {int(stop.reshape(-1)[bad[0]])}, outside the {size} bytes of "
                f"the sorted IDs or before the entry it follows: the index is damaged; "
                f"`h5feed verify {f.filename}` checks it"
            )
        return start, stop

    return Sorted(data, n, span, lambda i: rows[i])


def write_index(f: h5py.File, enc: Encoded, order: np.ndarray, hashers: dict[str, Any]) -> None:
    """Write ``/ids_index`` of the IDs ``enc`` sorted as ``order``, contiguous.

    ``hashers``: one ``hashlib`` object per dataset name
    (:data:`INDEX_NAMES`), fed the rows as they are written, for the
    completion record.
    """
    from ._record import hash_rows

    n = enc.size
    lengths = enc.lengths[order]
    ends = np.cumsum(lengths, dtype=np.int64)
    total = int(ends[-1]) if n else 0
    group = f.create_group(INDEX)
    rows_d = group.create_dataset("rows", shape=(n,), dtype=np.int64)
    ends_d = group.create_dataset("ends", shape=(n,), dtype=np.int64)
    bytes_d = group.create_dataset("bytes", shape=(total,), dtype=np.uint8)
    if n:
        rows_d.write_direct(np.ascontiguousarray(order, dtype=np.int64))
        ends_d.write_direct(ends)
    hash_rows(hashers[INDEX_NAMES[0]], np.asarray(order, dtype=np.int64))
    hash_rows(hashers[INDEX_NAMES[1]], ends)
    same = n and bool((lengths == lengths[0]).all()) and bool((np.diff(enc.starts) == lengths[0] + 1).all())
    for first in range(0, n, _WRITE_IDS):
        part = order[first : first + _WRITE_IDS]
        out_start = int(ends[first - 1]) if first else 0
        if same:
            # Equal lengths, one NUL apart: the IDs are rows of a 2-D view.
            width = int(lengths[0])
            grid = np.lib.stride_tricks.as_strided(
                enc.data[int(enc.starts[0]) :], shape=(n, width), strides=(width + 1, 1), writeable=False
            )
            chunk = grid[part].reshape(-1)
        else:
            lens = lengths[first : first + _WRITE_IDS]
            within = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
            chunk = enc.data[np.repeat(enc.starts[part], lens) + within]
        if chunk.size:
            bytes_d.write_direct(np.ascontiguousarray(chunk), dest_sel=np.s_[out_start : out_start + chunk.size])
        hash_rows(hashers[INDEX_NAMES[2]], chunk)


def write_strings(dset: h5py.Dataset, start: int, enc: Encoded) -> None:
    """Write ``enc``'s IDs as rows ``start..`` of a variable-length UTF-8 dataset.

    ``enc`` must hold each ID followed by a NUL (as :func:`encode` makes it).
    HDF5 takes variable-length strings as an array of ``char *``; the
    pointers into ``enc.data`` are computed in one numpy call, so no Python
    object is made per ID (NOTE [ IDs at scale ]).
    """
    k = enc.size
    if not k:
        return
    data = np.ascontiguousarray(enc.data)
    if int(enc.ends.max()) >= data.size or data[enc.ends].any():  # pragma: no cover - an internal misuse
        raise ValueError("write_strings needs NUL-terminated IDs")
    pointers = (data.ctypes.data + enc.starts).astype(np.uintp)
    mtype = h5py.h5t.C_S1.copy()
    mtype.set_size(h5py.h5t.VARIABLE)
    mtype.set_cset(h5py.h5t.CSET_UTF8)
    fspace = dset.id.get_space()
    fspace.select_hyperslab((start,), (k,))
    mspace = h5py.h5s.create_simple((k,))
    dset.id.write(mspace, fspace, pointers, mtype=mtype)
    del data  # kept alive until HDF5 has copied the strings
