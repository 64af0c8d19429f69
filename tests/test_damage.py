"""The one mechanism that names damage (h5feed/_damage.py) and the global heap
check (h5feed/_heap.py), in-process; damaged files are opened in child
processes by tests/faults/test_faults_damaged.py and test_faults_fuzz.py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import _heap, errors
from h5feed._damage import HDF5_FAILURES, touching

# What h5py raised for damaged files in the fuzz campaign (issue 19).
RAISED_BY_H5PY = [
    OSError("Can't synchronously read data (ran off end of input buffer while decoding)"),
    RuntimeError("Unable to get group info (addr overflow, addr = 800, size = 272, eoa = 31536)"),
    KeyError("Unable to synchronously open object (dataspace dim 0 size of 503316630 is greater than maxdim)"),
    TypeError("Unknown string encoding"),
    UnicodeDecodeError("utf-8", b"\xc0", 0, 1, "invalid start byte"),
    ValueError("Invalid dataset identifier"),
    MemoryError(),
]


@pytest.mark.parametrize("raw", RAISED_BY_H5PY, ids=lambda e: type(e).__name__)
def test_touching_names_the_file_and_object_and_chains_the_original(raw):
    with pytest.raises(errors.DamagedFileError) as info:
        with touching("data.h5", "/splits/train"):
            raise raw
    assert str(info.value).startswith("data.h5:/splits/train: damaged: HDF5 cannot read it (")
    assert type(raw).__name__ in str(info.value)
    assert info.value.__cause__ is raw
    assert isinstance(info.value, errors.FormatError) and isinstance(info.value, ValueError)
    assert not isinstance(info.value, OSError)


def test_touching_raises_read_error_for_data_and_names_the_rows():
    with pytest.raises(errors.ReadError, match=r"^data\.h5:/x: cannot be read \(RuntimeError: wrong B-tree") as info:
        with touching("data.h5", "/x", errors.ReadError):
            raise RuntimeError("wrong B-tree signature")
    assert isinstance(info.value, OSError) and not isinstance(info.value, ValueError)


def test_touching_lets_h5feed_errors_and_bugs_through():
    split = errors.UnknownSplitError("data.h5: no split 'test'")
    with pytest.raises(errors.UnknownSplitError) as info:
        with touching("data.h5", "/splits"):
            raise split
    assert info.value is split
    with pytest.raises(AttributeError):  # a bug in h5feed is not damage
        with touching("data.h5", "/x"):
            raise AttributeError("'NoneType' object has no attribute 'shape'")
    with pytest.raises(KeyboardInterrupt):
        with touching("data.h5", "/x"):
            raise KeyboardInterrupt
    assert AttributeError not in HDF5_FAILURES


def test_a_damaged_chunk_read_through_touching_names_its_rows(tmp_path):
    path = tmp_path / "c.h5"
    h5feed.write_arrays(path, [f"s{i}" for i in range(100)], np.arange(400, dtype=np.float32).reshape(100, 4),
                        checksum=True, chunk_rows=10)
    with h5py.File(path) as f:
        info = f["x"].id.get_chunk_info(3)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 5)
        fh.write(b"\xff\xfe")
    with h5py.File(path) as f:
        dset = f["x"]
        with pytest.raises(errors.ReadError, match=r"/x: rows 30\.\.39 \(chunk 3\) failed its Fletcher32") as err:
            with touching(str(path), "/x", errors.ReadError, dset=dset) as guard:
                guard.rows = (20, 50)
                dset[20:50]
        assert isinstance(err.value.__cause__, OSError)


# -- the global heap (NOTE [ Global heap ] in h5feed/_heap.py) ----------------------


def _file_with_ids(path, n, chunked):
    ids = [f"sample-{i:06d}" for i in range(n)]
    x = np.zeros((n, 2), np.float32)
    if chunked:
        with h5feed.DatasetWriter(path, sample_shape=(2,), dtype="float32", class_names=["a", "b"], chunk_rows=7) as w:
            w.extend(ids, x, np.arange(n) % 2)
    else:
        h5feed.write_arrays(path, ids, x, np.arange(n) % 2, class_names=["a", "b"])
    return ids


def _record_checked(monkeypatch):
    seen: list[int] = []
    real = _heap.check_collections

    def record(file, obj, addresses, checked):
        addresses = list(addresses)
        seen.extend(addresses)
        return real(file, obj, addresses, checked)

    monkeypatch.setattr(_heap, "check_collections", record)
    return seen


@pytest.mark.parametrize("chunked", [False, True], ids=["contiguous", "chunked"])
def test_the_heap_check_reads_the_collections_of_what_hdf5_reads_next(tmp_path, monkeypatch, chunked):
    # Not vacuous: the descriptors are found, and each names a collection.
    path = tmp_path / "f.h5"
    ids = _file_with_ids(path, 3000, chunked)  # IDs in several collections
    seen = _record_checked(monkeypatch)
    raw = path.read_bytes()
    with h5py.File(path, "r") as f:
        for name in ("h5feed_complete", "class_names"):
            seen.clear()
            _heap.check_attribute(f, name)
            assert seen and all(raw[a : a + 4] == b"GCOL" for a in seen), (name, seen)
        seen.clear()
        _heap.check_attribute(f, "h5feed_format")  # an integer: nothing in the heap
        assert seen == []
        _heap.check_dataset(f, f["ids"])
        every = set(seen)
        assert len(every) > 1 and all(raw[a : a + 4] == b"GCOL" for a in every)
        seen.clear()
        _heap.check_dataset(f, f["ids"], np.array([2999, 5]))
        assert 1 <= len(set(seen)) <= 2 and set(seen) <= every
    assert h5feed.open_file(path).n_rows == len(ids)


def test_a_collection_that_would_make_hdf5_loop_is_refused(tmp_path):
    path = tmp_path / "f.h5"
    _file_with_ids(path, 3000, chunked=False)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"sample-002500") - 16  # the header of that ID's heap object
    raw[at : at + 16] = bytes(16)  # index 0, size 0: HDF5 would never get past it
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f:
        _heap.check_attribute(f, "h5feed_complete")  # another collection: fine
        _heap.check_dataset(f, f["ids"], (0, 100))  # ... and so are the first IDs
        with pytest.raises(errors.DamagedFileError, match=r"f\.h5:/ids: damaged: the global heap collection at byte \d+ "
                                                          r"that holds its strings lists an empty free-space object"):
            _heap.check_dataset(f, f["ids"])


def test_a_collection_whose_objects_overrun_it_is_refused(tmp_path):
    path = tmp_path / "f.h5"
    _file_with_ids(path, 50, chunked=False)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"sample-000010") - 8  # that object's size
    raw[at : at + 8] = (1 << 40).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f, pytest.raises(errors.DamagedFileError, match="beyond its end"):
        _heap.check_dataset(f, f["ids"])


def test_lookup3_is_hdf5s_metadata_checksum(tmp_path):
    # Files of the latest format end each object header with lookup3 of it.
    path = tmp_path / "v2.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("x", data=np.arange(10))
        f.attrs["a"] = "a string"
        for i in range(5):
            f.create_dataset(f"d{i}", data=np.arange(i + 1))
    raw = path.read_bytes()
    headers = 0
    at = raw.find(b"OHDR")
    while at >= 0:
        flags = raw[at + 5]
        p = at + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 3)
        end = p + width + int.from_bytes(raw[p : p + width], "little")
        assert _heap.lookup3(raw[at:end]) == int.from_bytes(raw[end : end + 4], "little")
        headers += 1
        at = raw.find(b"OHDR", at + 1)
    assert headers >= 7
    assert _heap.lookup3(b"") == 0xDEADBEEF


def test_the_mappings_of_a_sound_merged_file_pass_their_checksum(tmp_path, monkeypatch):
    from h5feed.merge import merge_files

    parts = []
    for k in range(2):
        parts.append(tmp_path / f"part-{k}.h5")
        h5feed.write_arrays(parts[-1], [f"p{k}-{i}" for i in range(5)], np.zeros((5, 3), np.float32), np.arange(5) % 2)
    merged = merge_files(parts, tmp_path / "all.h5")
    checked = []
    real = _heap.lookup3
    monkeypatch.setattr(_heap, "lookup3", lambda data, initval=0: checked.append(len(data)) or real(data, initval))
    with h5py.File(merged, "r") as f:
        for name in ("x", "y"):
            _heap.check_virtual_layout(f, f, name)
        _heap.check_virtual_layout(f, f, "ids")  # not virtual: nothing to check
    assert len(checked) == 2 and min(checked) > 20  # one block of mappings each for x and y
    assert h5feed.open_file(merged, allow_virtual=True).n_rows == 10


def test_an_attribute_whose_name_lost_its_terminator_is_still_checked(tmp_path):
    # Found by tests/faults/atheris_validate.py: HDF5 takes an attribute's
    # name up to its stored length, whatever the terminator byte holds; the
    # check must find the attribute the same way, or it lets HDF5 loop on the
    # record's collection.
    path = tmp_path / "f.h5"
    _file_with_ids(path, 50, chunked=False)
    raw = bytearray(path.read_bytes())
    name = raw.find(b"h5feed_complete\0")
    raw[name + len("h5feed_complete")] = 0xFD
    record = raw.find(b'{"') - 16  # the header of the record's heap object
    raw[record : record + 16] = bytes(16)
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f:
        assert "h5feed_complete" in f.attrs  # HDF5 still finds it by name
        with pytest.raises(errors.DamagedFileError, match=r"attribute 'h5feed_complete'.*empty free-space object"):
            _heap.check_attribute(f, "h5feed_complete")
