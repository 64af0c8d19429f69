"""Points 1, 3, 4-7 through the real ``h5feed convert`` command.

Every case runs the command in its own process (``h5feed convert`` itself
writes in a further child: NOTE [ Isolated writing ]) and checks the exit
status, the message, and that nothing was left in the output folder.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from _harness import STATS, run_case

def _have_converters() -> bool:
    try:
        import h5feed.convert.npy  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_converters(), reason="the converters (issue 3) are not on this branch yet")


def _npy_source(folder, ids, labels=None, shape=(4, 3)):
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for sid in ids:
        np.save(data / f"{sid}.npy", rng.random(shape).astype(np.float32))
    labels = {sid: i % 3 for i, sid in enumerate(ids)} if labels is None else labels
    (folder / "labels.json").write_text(json.dumps(labels))
    out = folder / "out"
    out.mkdir(exist_ok=True)
    return data, folder / "labels.json", out


def _convert(argv, **kw):
    result = run_case("cli", argv=["convert", *map(str, argv)], timeout=90, **kw)
    return result["value"]


def _assert_failed_cleanly(answer, out, *words):
    assert answer["rc"] == 1, answer
    for word in words:
        assert word in answer["stderr"], answer["stderr"]
    assert list(out.iterdir()) == [], "the failed conversion left files behind"


# -- point 4 ---------------------------------------------------------------------


def test_missing_output_folder_fails_before_reading_any_input(tmp_path):
    data, labels, out = _npy_source(tmp_path, ["a", "b"])
    (data / "a.npy").write_bytes(b"not an npy file")  # reading it would be the error
    answer = _convert(["npy", data, "--labels", labels, "-o", tmp_path / "missing" / "d.h5", "--quiet"])
    assert answer["rc"] == 1
    assert "does not exist" in answer["stderr"] and "missing" in answer["stderr"], answer["stderr"]
    assert "a.npy" not in answer["stderr"]
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder")
def test_read_only_output_folder_fails_before_reading_any_input(tmp_path):
    data, labels, out = _npy_source(tmp_path, ["a", "b"])
    (data / "a.npy").write_bytes(b"not an npy file")
    out.chmod(0o500)
    try:
        answer = _convert(["npy", data, "--labels", labels, "-o", out / "d.h5", "--quiet"])
    finally:
        out.chmod(0o700)
    _assert_failed_cleanly(answer, out, "not writable")
    assert "a.npy" not in answer["stderr"]


# -- point 5 ---------------------------------------------------------------------

BAD_IDS = {
    "empty": "",
    "dot": ".",
    "dotdot-segment": "x/../y",
    "absolute": "/etc/passwd",
    "separator": "a/b",
    "nul": "a\x00b",
    "newline": "a\nb",
    "escape": "a\x1bb",
}


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=list(BAD_IDS))
def test_unsafe_sample_id_is_refused_before_any_file_is_opened(tmp_path, bad):
    ids = ["a", "b"]
    data, _, out = _npy_source(tmp_path, ids)
    (data / "a.npy").write_bytes(b"garbage")  # opening it first would be another error
    (tmp_path / "labels.json").write_text(json.dumps({"a": 0, "b": 1, bad: 2}))
    answer = _convert(["npy", data, "--labels", tmp_path / "labels.json", "-o", out / "d.h5", "--quiet"])
    _assert_failed_cleanly(answer, out, f"invalid sample ID {bad!r}")


def test_sample_id_through_a_symlink_out_of_the_data_folder_is_refused(tmp_path):
    data, _, out = _npy_source(tmp_path, ["a", "b"])
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros((4, 3), np.float32))
    os.symlink(secret, data / "c.npy")
    (tmp_path / "labels.json").write_text(json.dumps({"a": 0, "b": 1, "c": 2}))
    answer = _convert(["npy", data, "--labels", tmp_path / "labels.json", "-o", out / "d.h5", "--quiet"])
    _assert_failed_cleanly(answer, out, "invalid sample ID 'c'")


# -- point 6 ---------------------------------------------------------------------


def test_duplicate_ids_are_counted_and_named_in_one_message(tmp_path):
    data, _, out = _npy_source(tmp_path, [f"s{i}" for i in range(10)])
    rows = [f"s{i},{i % 3}" for i in range(10)] + ["s1,0", "s2,1", "s2,2", "s7,0"]
    (tmp_path / "labels.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    answer = _convert(["npy", data, "--labels", tmp_path / "labels.csv", "-o", out / "d.h5", "--quiet"])
    _assert_failed_cleanly(answer, out, "s1", "s2", "s7", "duplicate")


@pytest.mark.parametrize("problem", ["labels-without-files", "files-without-labels", "unknown-split-id",
                                     "overlapping-splits", "empty-source"])
def test_set_mismatches_are_counted_and_named_and_nothing_is_written(tmp_path, problem):
    ids = [f"s{i}" for i in range(12)]
    data, labels, out = _npy_source(tmp_path, ids)
    extra = []
    if problem == "labels-without-files":
        for sid in ("s3", "s5", "s8"):
            (data / f"{sid}.npy").unlink()
        words = ["3", "s3", "s5"]
    elif problem == "files-without-labels":
        for sid in ("t1", "t2"):
            np.save(data / f"{sid}.npy", np.zeros((4, 3), np.float32))
        words = ["2", "t1"]
    elif problem == "unknown-split-id":
        (tmp_path / "p.json").write_text(json.dumps({"train": ids[:8] + ["ghost1", "ghost2"], "test": ids[8:]}))
        extra = ["--partition", tmp_path / "p.json"]
        words = ["2", "ghost1"]
    elif problem == "overlapping-splits":
        (tmp_path / "p.json").write_text(json.dumps({"train": ids[:8], "test": ids[6:]}))
        extra = ["--partition", tmp_path / "p.json"]
        words = ["2", "s6", "s7"]
    else:
        for p in data.iterdir():
            p.unlink()
        (tmp_path / "labels.json").write_text("{}")
        words = ["empty"]
    answer = _convert(["npy", data, "--labels", labels, "-o", out / "d.h5", "--quiet", *extra])
    assert answer["rc"] == 1, answer
    text = answer["stderr"].lower()
    for word in words:
        assert word.lower() in text, answer["stderr"]
    assert list(out.iterdir()) == []


# -- point 7 ---------------------------------------------------------------------


class _RunsCode:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _write_npy_header(path, header: bytes, version=(1, 0), payload=b""):
    import struct

    magic = b"\x93NUMPY" + bytes(version)
    size = struct.pack("<H", len(header)) if version[0] == 1 else struct.pack("<I", len(header))
    path.write_bytes(magic + size + header + payload)


NPY_BAD = ["pickled-object-array", "pickle-that-runs-code", "impossible-shape", "huge-header", "negative-shape"]


@pytest.mark.parametrize("kind", NPY_BAD)
def test_hostile_npy_is_refused_without_unpickling_or_large_allocation(tmp_path, kind):
    ids = ["a", "b", "c"]
    data, labels, out = _npy_source(tmp_path, ids)
    marker = tmp_path / "code-ran"
    bad = data / "b.npy"
    if kind == "pickled-object-array":
        np.save(bad, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "pickle-that-runs-code":
        np.save(bad, np.array([_RunsCode(str(marker))], dtype=object), allow_pickle=True)
    elif kind == "impossible-shape":
        _write_npy_header(bad, b"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }".ljust(118) + b"\n")
    elif kind == "huge-header":
        _write_npy_header(bad, b"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }" + b" " * 2_000_000 + b"\n", version=(2, 0))
    else:
        _write_npy_header(bad, b"{'descr': '<f4', 'fortran_order': False, 'shape': (-4, 3), }".ljust(118) + b"\n")
    answer = run_case("cli", argv=["convert", "npy", str(data), "--labels", str(labels), "-o", str(out / "d.h5"), "--quiet"],
                      _memory_limit=3 * 1024**3, timeout=90)["value"]
    _assert_failed_cleanly(answer, out, "b.npy")
    assert not marker.exists(), "unpickling ran code from the .npy"


# -- points 1 and 3 through the command --------------------------------------------


def test_convert_on_a_full_disk_fails_cleanly_and_the_command_survives(tmp_path):
    ids = [f"s{i}" for i in range(3000)]
    data, labels, out = _npy_source(tmp_path, ids, shape=(64,))
    result = run_case("cli_disk_full", argv=["convert", "npy", str(data), "--labels", str(labels),
                                               "-o", str(out / "d.h5"), "--quiet", "--compression", "gzip",
                                               "--checksum"], limit=200_000, timeout=120)
    answer = result["value"]  # the harness checked the command's process exited cleanly
    assert answer["rc"] == 1, answer
    assert "disk full" in answer["stderr"] and "rows had been written" in answer["stderr"], answer["stderr"]
    assert list(out.iterdir()) == []


# The command writes 3000 rows in one block: x is write#1, y write#2.
CLI_POINTS = [("write#1", 0), ("write#2:after", 1), ("attr", 1), ("close:after", 0), ("link", 0),
              ("replace:after", 1), ("fsync#2", 1)]


@pytest.mark.slow
@pytest.mark.parametrize("point, version", CLI_POINTS, ids=[p for p, _ in CLI_POINTS])
@pytest.mark.parametrize("signame", ["KILL", "INT"])
def test_convert_command_killed_at_a_point_loses_nothing(tmp_path, point, version, signame):
    from _killing import kill_cli_once

    outcome = kill_cli_once(tmp_path, version=version, signame=signame, point=point, checksum=point.startswith("write"))
    STATS["kill_points"] += 1
    STATS["kill_lost"] += bool(outcome.lost)
    assert outcome.returncode != 0, outcome
    assert outcome.ok, outcome


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_convert_command_killed_at_a_random_moment_loses_nothing(tmp_path, seed):
    from _killing import kill_cli_once

    rng = np.random.default_rng(100 + seed)
    # Slowed to at least a second of writing (50 blocks, 20 ms after each),
    # the kill lands mid-write, timed from the temporary file's creation.
    outcome = kill_cli_once(tmp_path, version=seed % 2, signame=("KILL", "INT")[seed // 2],
                            delay=float(rng.uniform(0.0, 0.5)), checksum=True, slow=0.02)
    STATS["kill_points"] += 1
    STATS["kill_lost"] += bool(outcome.lost)
    assert not outcome.completed, f"{outcome.case}: the write finished before the kill"
    assert outcome.ok, outcome
