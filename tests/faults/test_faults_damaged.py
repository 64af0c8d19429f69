"""Damaged files: each kind of structural damage is an h5feed error naming the
file and the HDF5 object, with HDF5's error chained, never a raw exception, a
hang, a crash or a traceback from ``h5feed info`` / ``h5feed verify``.

Each case damages one known place of a sound file (the sample file of the
fuzz campaign, ``_fuzz.write_base``) and opens, reads and verifies it in a
child process with a timeout (``_harness.run_case``), so that a hang fails
the test instead of CI. ``test_faults_fuzz.py`` damages files at random.
"""

from __future__ import annotations

import shutil

import pytest

from _fuzz import write_base
from _harness import run_case


def _at(raw: bytes, marker: bytes, shift: int = 0) -> int:
    at = raw.find(marker)
    assert at >= 0, f"{marker!r} is not in the sample file: the test needs updating"
    return at + shift


def _first_chunk_key_of_x(raw: bytes, path) -> int:
    """Where the chunk index (a version 1 B-tree) keeps the stored size of x's first chunk."""
    import h5py

    with h5py.File(path, "r") as f:
        first = f["x"].id.get_chunk_info_by_coord((0, 0))
    node = 0
    while (node := raw.find(b"TREE", node + 1)) > 0:
        # "TREE", type 1 (chunks), level, entries (2), two siblings (8 each);
        # then key 0: size (4), filter mask (4), three offsets (8 each); child.
        if raw[node + 4] == 1 and int.from_bytes(raw[node + 56 : node + 64], "little") == first.byte_offset:
            return node + 24
    raise AssertionError("x's chunk index is not where the test looks for it: the test needs updating")


def _descriptor_of_row_5(raw: bytes, path) -> int:
    """Where the IDs' raw storage keeps row 5's string descriptor (length first)."""
    import h5py

    with h5py.File(path, "r") as f:
        return int(f["ids"].id.get_offset()) + 5 * 16


def _stored_size_of_ids(raw: bytes, path) -> int:
    """Where the IDs' layout message keeps their storage's size (after its address)."""
    import h5py

    with h5py.File(path, "r") as f:
        dset = f["ids"]
        address, size = int(dset.id.get_offset()), int(dset.id.get_storage_size())
    return _at(raw, address.to_bytes(8, "little") + size.to_bytes(8, "little"), 8)


# name -> (the layout damaged; where: a marker and a shift, or a function of
# the file's bytes and path; the new bytes; the object the error must name;
# the type of the chained HDF5 error or None; the error class)
DAMAGE = {
    # A sample ID whose bytes are not UTF-8 (h5py's UnicodeDecodeError).
    "id-not-utf8": ("contiguous", (b"sample-0007", 0), b"\xc0", ":/ids", "UnicodeDecodeError", "H5FeedError"),
    # The root group's B-tree, symbol table node and local heap (h5py's
    # RuntimeError: "wrong B-tree signature", "Link iteration failed").
    "root-btree": ("contiguous", (b"TREE", 0), b"TRE\0", ":/ (the root group)", "RuntimeError", "DamagedFileError"),
    "root-symbol-table": ("checksummed", (b"SNOD", 0), b"SNO\0", ":/ (the root group)", "RuntimeError",
                          "DamagedFileError"),
    "root-local-heap": ("contiguous", (b"HEAP", 0), b"HEA\0", ":/ (the root group)", "RuntimeError", "DamagedFileError"),
    # The global heap object that holds the completion record, its header
    # zeroed: HDF5 would loop forever parsing the collection
    # (NOTE [ Global heap ] in h5feed/_heap.py).
    "record-heap-loops": ("checksummed", (b'{"rows"', -16), bytes(16), ":/ (attribute 'h5feed_complete')", None,
                          "DamagedFileError"),
    # The completion record's type: the variable-length kind nibble set to
    # 0xa, neither string nor sequence; HDF5 then converts it as if writing
    # to the file, and crashes (found by tests/faults/atheris_validate.py).
    "record-type-neither-string-nor-sequence": ("contiguous", (b"h5feed_complete\x00", 17), b"\xfa",
                                                ":/ (attribute 'h5feed_complete')", None, "DamagedFileError"),
    # Row 5's ID claiming 3.5 GiB: HDF5 would allocate that before it finds
    # the string (h5feed/_heap.py: _check_lengths).
    "id-claims-gigabytes": ("contiguous", _descriptor_of_row_5, b"\x00\x00\x00\xe0", ":/ids", None,
                            "DamagedFileError"),
    # The IDs' storage declared 128 bytes for 200 descriptors: HDF5 would
    # read the rest from beyond it, strings of any claimed length (found by
    # atheris: gigabytes allocated).
    "ids-storage-short": ("contiguous", _stored_size_of_ids, (128).to_bytes(8, "little"), ":/ids", None,
                          "DamagedFileError"),
    # x's first chunk given 0 stored bytes: HDF5's Fletcher32 filter would
    # read before its buffer and crash the process (layout._check_filtered_chunks).
    "checksummed-chunk-size-zero": ("checksummed", _first_chunk_key_of_x, bytes(4), ":/x", None, "DamagedFileError"),
    # A merged file's mappings of x, a selection's count overwritten: HDF5
    # would overrun memory decoding it, before it checks their checksum
    # (NOTE [ Virtual dataset mappings ] in h5feed/_heap.py).
    "virtual-mapping-overrun": ("merged", (b"part-0.h5\x00x\x00", 44), b"\xff\xff\xff\x7f", ":/x", None,
                                "DamagedFileError"),
}
LAYOUTS = sorted({d[0] for d in DAMAGE.values()})
MEMORY_CAP = 1536 * 1024 * 1024


@pytest.fixture(scope="module")
def sound(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sound")
    return {layout: write_base(folder / layout, layout) for layout in LAYOUTS}


def _damaged(sound, tmp_path, damage):
    layout, where, new, *_ = DAMAGE[damage]
    folder = tmp_path / damage
    shutil.copytree(sound[layout].parent, folder)  # a merged file's parts come along
    path = folder / sound[layout].name
    raw = bytearray(path.read_bytes())
    at = where(bytes(raw), path) if callable(where) else _at(bytes(raw), *where)
    raw[at : at + len(new)] = new
    path.write_bytes(bytes(raw))
    return path, layout == "merged"


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_is_an_h5feed_error_naming_the_file_and_object(sound, tmp_path, damage):
    path, merged = _damaged(sound, tmp_path, damage)
    *_, obj, cause, kind = DAMAGE[damage]
    # Under a 1.5 GiB address-space cap: an allocation of what damage claims fails fast.
    result = run_case("read_everything", path=str(path), allow_virtual=merged, timeout=60, _memory_limit=MEMORY_CAP)
    assert result.raised(kind), result
    assert result.raised("FormatError") or result.raised("ReadError"), result
    assert f"{path}{obj}" in result["message"], result["message"]
    assert result["cause_type"] == cause, result  # HDF5's own error, chained


@pytest.mark.parametrize("damage", DAMAGE)
def test_info_and_verify_report_damage_without_a_traceback(sound, tmp_path, damage):
    path, merged = _damaged(sound, tmp_path, damage)
    *_, obj, _, _ = DAMAGE[damage]
    virtual = ["--allow-virtual"] if merged else []
    verify = run_case("cli", argv=["verify", "--quiet", *virtual, str(path)], timeout=60)["value"]
    assert verify["rc"] == 1, verify
    assert f"{path}: DAMAGED" in verify["stdout"], verify
    assert "FAILED" in verify["stdout"] and obj.lstrip(":") in verify["stdout"], verify
    assert "Traceback" not in verify["stderr"], verify["stderr"]
    info = run_case("cli", argv=["info", *virtual, str(path)], timeout=60)["value"]
    assert "Traceback" not in info["stderr"], info["stderr"]
    if damage in ("id-not-utf8", "id-claims-gigabytes"):
        # info never reads the IDs, and opening reads their storage's
        # metadata only: damage in a string is met where the string is read.
        return
    assert info["rc"] == 1 and info["stdout"] == "", info
    assert info["stderr"].startswith(f"h5feed info: error: {path}{obj}"), info["stderr"]
