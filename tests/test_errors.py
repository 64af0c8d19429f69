"""The exception hierarchy: one base class, and the builtins each error is
(and is not), so that a caller's ``except ValueError`` catches bad input and
never an I/O failure or a dead worker."""

from __future__ import annotations

import errno
import pickle

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import errors
from h5feed.reader import Reader

# class -> (builtins it is, builtins it is not)
HIERARCHY = {
    errors.FormatError: ((ValueError,), (OSError, KeyError, RuntimeError)),
    errors.NotH5FeedFileError: ((ValueError, OSError), (KeyError, RuntimeError)),
    errors.DamagedFileError: ((ValueError, errors.FormatError), (OSError, KeyError, RuntimeError)),
    errors.UnsupportedFormatVersionError: ((ValueError,), (OSError, KeyError, RuntimeError)),
    errors.LayoutError: ((ValueError,), (OSError, KeyError, RuntimeError)),
    errors.IncompleteFileError: ((ValueError,), (OSError, KeyError, RuntimeError)),
    errors.UntrustedFileError: ((ValueError,), (OSError, KeyError, RuntimeError)),
    errors.UnknownSplitError: ((KeyError, ValueError), (OSError, RuntimeError)),
    errors.UnknownIDError: ((KeyError, ValueError), (OSError, RuntimeError)),
    errors.UnknownColumnError: ((KeyError, ValueError), (OSError, RuntimeError)),
    errors.InvalidSampleIDError: ((ValueError,), (OSError, KeyError, RuntimeError)),
    errors.SampleError: ((ValueError,), (OSError, KeyError, RuntimeError)),
    errors.SourceError: ((ValueError,), (OSError, KeyError, RuntimeError)),
    errors.StateMismatchError: ((ValueError,), (OSError, KeyError, RuntimeError)),
    errors.WriterError: ((), (ValueError, OSError, KeyError, RuntimeError)),
    errors.WriterInputError: ((ValueError,), (OSError, KeyError, RuntimeError)),
    errors.OutputExistsError: ((ValueError, FileExistsError), (KeyError, RuntimeError)),
    errors.DiskFullError: ((OSError,), (ValueError, KeyError, RuntimeError)),
    errors.ReadError: ((OSError,), (ValueError, KeyError, RuntimeError)),
    errors.WorkerError: ((RuntimeError,), (ValueError, OSError, KeyError)),
}


def test_the_table_lists_every_error_class():
    assert {cls.__name__ for cls in HIERARCHY} | {"H5FeedError"} == set(errors.__all__)


@pytest.mark.parametrize("cls", HIERARCHY, ids=lambda cls: cls.__name__)
def test_every_error_is_an_h5feed_error_and_the_builtins_that_match_its_meaning(cls):
    is_, is_not = HIERARCHY[cls]
    assert issubclass(cls, errors.H5FeedError)
    for builtin in is_:
        assert issubclass(cls, builtin), f"{cls.__name__} should be a {builtin.__name__}"
    for builtin in is_not:
        assert not issubclass(cls, builtin), f"{cls.__name__} should not be a {builtin.__name__}"


def test_the_base_class_is_no_builtin_but_exception():
    assert errors.H5FeedError.__bases__ == (Exception,)


@pytest.mark.parametrize("cls", HIERARCHY, ids=lambda cls: cls.__name__)
def test_errors_print_their_message_and_survive_pickling(cls):
    error = cls("out.h5: something 'x' went wrong")
    assert str(error) == "out.h5: something 'x' went wrong"  # KeyError would repr() it
    again = pickle.loads(pickle.dumps(error))  # errors of a writing child come back pickled
    assert type(again) is cls and str(again) == str(error)


def test_the_writers_subclasses_are_writer_errors():
    assert issubclass(errors.WriterInputError, errors.WriterError)
    assert issubclass(errors.OutputExistsError, errors.WriterInputError)
    assert issubclass(errors.DiskFullError, errors.WriterError)
    assert not issubclass(errors.DiskFullError, errors.WriterInputError)


# -- real errors, caught as a user would catch them ---------------------------


def _caught_by_value_error(fn):
    """'ValueError' when ``except ValueError`` catches what ``fn`` raises,
    else the name of the H5FeedError that got past it."""
    try:
        try:
            fn()
        except ValueError:
            return "ValueError"
    except errors.H5FeedError as exc:
        return type(exc).__name__
    raise AssertionError("nothing was raised")


def test_existing_output_is_bad_input_and_a_file_exists_error(small_file):
    assert _caught_by_value_error(lambda: h5feed.DatasetWriter(small_file, sample_shape=(3,), dtype="float32")) == "ValueError"
    with pytest.raises(FileExistsError, match="already exists"):
        h5feed.DatasetWriter(small_file, sample_shape=(3,), dtype="float32")


def test_overlapping_splits_are_bad_input(tmp_path):
    def write():
        h5feed.write_arrays(tmp_path / "o.h5", ["a", "b"], np.zeros((2, 3)), splits={"train": ["a", "b"], "validation": ["b"]})

    assert _caught_by_value_error(write) == "ValueError"


def test_a_full_disk_is_not_caught_by_except_value_error(tmp_path, monkeypatch):
    # The writer's own error path: the HDF5 write of a block fails with ENOSPC.
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.Dataset, "write_direct", no_space)
    target = tmp_path / "full.h5"

    def write():
        h5feed.write_arrays(target, ["a", "b"], np.zeros((2, 3), np.float32))

    assert _caught_by_value_error(write) == "DiskFullError"
    with pytest.raises(OSError, match="disk full"):
        write()
    assert list(tmp_path.iterdir()) == []


def _write_past_file_size_limit(target: str, limit: int) -> str:
    """Runs in the writing child of run_isolated: a real EFBIG from the kernel."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    rows = 2000
    x = np.random.default_rng(0).random((rows, 256)).astype(np.float32)
    return h5feed.write_arrays(target, [f"s{i}" for i in range(rows)], x)


@pytest.mark.slow
def test_a_real_full_disk_is_an_os_error_and_not_a_value_error(tmp_path):
    from h5feed.writer import run_isolated

    target = str(tmp_path / "big.h5")
    kind = _caught_by_value_error(lambda: run_isolated(target, _write_past_file_size_limit, target, 300_000))
    assert kind == "DiskFullError"
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_chunk_is_an_os_error_and_not_a_value_error(tmp_path):
    path = tmp_path / "k.h5"
    x = np.arange(400, dtype=np.float32).reshape(100, 4)
    h5feed.write_arrays(path, [f"s{i}" for i in range(100)], x, checksum=True, chunk_rows=10)
    with h5py.File(path) as f:
        info = f["x"].id.get_chunk_info(3)
    with open(path, "r+b") as fh:  # flip one byte inside chunk 3 (rows 30..39)
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))

    with Reader(h5feed.open_file(path)) as reader:
        assert _caught_by_value_error(lambda: reader.read("x", np.arange(25, 45))) == "ReadError"
        with pytest.raises(OSError, match=r"rows 30\.\.39"):
            reader.read("x", np.arange(25, 45))
