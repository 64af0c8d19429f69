"""Point 11: on filesystems that refuse locks, reading (and writing) goes on
without them, with one warning per process."""

from __future__ import annotations

import errno

import numpy as np
import pytest

import h5feed

from _harness import run_case

NO_LOCK_ERRNOS = {"ENOLCK-37": errno.ENOLCK, "ENOSYS-38": errno.ENOSYS, "ENOTSUPP-524": 524}


@pytest.fixture
def sound_file(tmp_path):
    path = tmp_path / "d.h5"
    h5feed.write_arrays(path, ["a", "b", "c"], np.arange(6, dtype=np.float32).reshape(3, 2))
    return path


@pytest.mark.parametrize("where", ["errno", "message"], ids=["errno-attribute", "errno-in-hdf5-message"])
@pytest.mark.parametrize("errno_value", NO_LOCK_ERRNOS.values(), ids=list(NO_LOCK_ERRNOS))
def test_lock_refusal_retries_without_locking_and_warns_once(sound_file, errno_value, where):
    result = run_case("locking_fallback", path=str(sound_file), errno_value=errno_value, opens=3, where=where)
    assert result.error is None, result
    value = result["value"]
    assert value["rows"] == 9  # three opens, every row read each time
    assert len(value["warnings"]) == 1, value["warnings"]
    assert "HDF5_USE_FILE_LOCKING=FALSE" in value["warnings"][0]
    assert str(sound_file) in value["warnings"][0]
    assert False in value["locking_args"]  # really retried with locking=False


def test_other_open_errors_are_not_mistaken_for_lock_refusals(sound_file):
    # EACCES mentions no lock: no retry, the usual error naming the path.
    result = run_case("locking_fallback", path=str(sound_file), errno_value=errno.EACCES, opens=1, where="errno")
    assert result.raised("NotH5FeedFileError"), result
    assert str(sound_file) in result["message"]


def test_writer_creates_its_file_without_locks_where_refused(tmp_path):
    result = run_case("write_refusing_locks", target=str(tmp_path / "w.h5"), errno_value=errno.ENOSYS)
    assert result.error is None, result
    assert result["value"]["rows"] == 2
    assert len(result["value"]["warnings"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["w.h5"]
