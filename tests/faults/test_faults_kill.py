"""Point 1 and 2 of the reliability issue: killed writers lose nothing.

Each case runs a real writer in its own process and kills it (SIGKILL or
SIGINT) at a deterministic point of the write -- mid-write, at the completion
record, at close, at fsync, around the rename -- or after a random delay;
``_killing.judge`` says what lost data means, and ``_killing.aim_problems``
that the kill landed where it was aimed: after the point was reached, by the
signal.
"""

from __future__ import annotations

import pytest

from _harness import STATS, run_case
from _killing import DETERMINISTIC_POINTS, kill_once

import writer_script


def _record(outcome):
    if not outcome.completed:
        STATS["kill_points"] += 1
        STATS["kill_lost"] += bool(outcome.lost)
    return outcome


@pytest.mark.slow
@pytest.mark.parametrize("point, version", DETERMINISTIC_POINTS, ids=[p for p, _ in DETERMINISTIC_POINTS])
@pytest.mark.parametrize("signame", ["KILL", "INT"])
def test_writer_killed_at_a_point_loses_nothing(tmp_path, point, version, signame):
    mode = "stream" if point.startswith(("write#20", "ids", "flush", "close")) else "arrays"
    outcome = _record(kill_once(tmp_path, mode=mode, version=version, signame=signame, point=point))
    assert not outcome.completed, f"{outcome.case}: the hook never fired"
    assert outcome.returncode != 0
    assert outcome.ok, outcome


@pytest.mark.slow
@pytest.mark.parametrize("point, version", [("write#3", 1), ("attr", 0), ("close:after", 0), ("replace:after", 1)])
@pytest.mark.parametrize("signame", ["KILL", "INT"])
def test_isolated_writer_killed_in_its_child_loses_nothing(tmp_path, point, version, signame):
    outcome = _record(kill_once(tmp_path, mode="isolated", version=version, signame=signame, point=point))
    assert not outcome.completed and outcome.returncode != 0
    assert outcome.ok, outcome


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_writer_killed_at_a_random_moment_loses_nothing(tmp_path, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    mode = ("arrays", "stream", "isolated")[seed % 3]
    signame = ("KILL", "INT")[seed % 2]
    delay = float(rng.uniform(0.0, 0.25 if mode != "isolated" else 0.9))
    outcome = _record(kill_once(tmp_path, mode=mode, version=int(rng.integers(0, 2)), signame=signame, delay=delay))
    assert outcome.ok, outcome


def test_flushed_leftover_of_a_killed_writer_is_refused_as_incomplete(tmp_path):
    # SIGKILL after HDF5 flushed some rows: the temporary file opens cleanly
    # in h5py with part of the rows, and h5feed must refuse it.
    outcome = _record(kill_once(tmp_path / "k", mode="stream", version=0, signame="KILL", point="flushed#5"))
    assert outcome.ok, outcome  # judge() ran the next writer, which removed the leftover
    # Again without the clean-up, and open the leftover in a child.
    import subprocess

    import h5py

    from _harness import PYTHON, child_env, leftovers
    from _killing import SCRIPT

    target = tmp_path / "again.h5"
    proc = subprocess.run([PYTHON, SCRIPT, str(target), "0", "stream", "flushed#5", "KILL"], capture_output=True,
                          text=True, env=child_env(), timeout=60)
    assert proc.returncode == -9 and f"{writer_script.KILL_POINT_MARK} flushed#5 pid " in proc.stderr
    (leftover,) = leftovers(tmp_path)
    with h5py.File(tmp_path / leftover, "r") as f:  # the fact this guards against
        assert 0 < f["x"].shape[0] < len(writer_script.expected(0)[0])
    result = run_case("open_file", path=str(tmp_path / leftover))
    assert result.raised("IncompleteFileError"), result
    assert result["message"].startswith("incomplete file: ")
    assert "no completion record" in result["message"]


@pytest.mark.parametrize("timed", [False, True], ids=["at-a-point", "at-a-moment"])
def test_a_writer_that_fails_before_the_kill_does_not_pass_as_killed(tmp_path, timed):
    # An ordinary early error (here: an unknown mode) writes nothing, so
    # nothing is lost; but no kill landed, and the harness must say so.
    if timed:
        outcome = kill_once(tmp_path, mode="no-such-mode", version=0, signame="KILL", delay=3.0)
    else:
        outcome = kill_once(tmp_path, mode="no-such-mode", version=0, signame="INT", point="write#1")
    assert outcome.returncode == 1 and not outcome.lost
    assert not outcome.ok and outcome.missed, outcome
    if not timed:
        assert "was not reached" in outcome.missed[0]
    assert any("not death by SIGKILL" in m or "not 130" in m for m in outcome.missed), outcome.missed


@pytest.mark.parametrize("damage", ["missing", "not-json", "wrong-rows"])
def test_file_with_a_bad_completion_record_is_refused(tmp_path, damage):
    import h5py

    import h5feed

    ids, x, y = writer_script.expected(1)
    path = tmp_path / "f.h5"
    h5feed.write_arrays(path, ids, x, y, n_classes=7)
    with h5py.File(path, "a") as f:
        if damage == "missing":
            del f.attrs["h5feed_complete"]
        elif damage == "not-json":
            f.attrs["h5feed_complete"] = "{rows: 3"
        else:
            f.attrs["h5feed_complete"] = '{"rows": 5, "sha256": {}}'
    result = run_case("open_file", path=str(path))
    assert result.raised("IncompleteFileError")
    assert result["message"].startswith("incomplete file: ") and str(path) in result["message"]
