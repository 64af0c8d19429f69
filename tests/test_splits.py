"""Splits that respect groups: the pure planner on random group structures,
and ``make_splits`` / ``h5feed split`` replacing a file's splits in place,
atomically (kill tests at every write of the commit), without touching the
samples."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import h5feed
from h5feed._inplace import journal_path
from h5feed._splits import STRATIFY_TOLERANCE, check_fractions, plan_splits
from h5feed.cli import main
from h5feed.errors import UnknownColumnError, WriterError
from h5feed.inspection import verify

FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}


def _random_groups(rng, n_groups, biggest):
    sizes = rng.integers(1, biggest + 1, n_groups)
    groups = np.repeat(rng.permutation(n_groups) * 7 + 3, sizes)  # arbitrary keys
    return groups[rng.permutation(groups.size)]


def _check_partition(plan, groups, n):
    owner = np.full(n, -1)
    for k, rows in enumerate(plan.rows.values()):
        assert np.all(np.diff(rows) > 0), "rows sorted, each once"
        assert np.all(owner[rows] == -1), "a row in two splits"
        owner[rows] = k
    assert np.all(owner >= 0), "a row in no split"
    for key in np.unique(groups):
        assert np.unique(owner[groups == key]).size == 1, f"group {key} on two sides"
    return owner


# -- the planner, property style ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_groups_never_straddle_and_fractions_are_met_as_whole_groups_allow(seed):
    rng = np.random.default_rng(seed)
    groups = _random_groups(rng, int(rng.integers(1, 120)), int(rng.integers(1, 30)))
    n = groups.size
    k = int(rng.integers(1, 5))
    raw = rng.random(k) + 0.05
    fractions = {f"s{i}": float(v) for i, v in enumerate(raw / raw.sum())}
    fractions[f"s{k - 1}"] = 1 - sum(list(fractions.values())[:-1])
    plan = plan_splits(n, fractions, groups=groups, seed=seed)
    _check_partition(plan, groups, n)
    biggest = np.bincount(np.unique(groups, return_inverse=True)[1]).max()
    for name, rows in plan.rows.items():
        # Each group goes to a split still short of its target, so no split
        # overshoots by a whole group; the shortfalls add up to the overshoots.
        assert rows.size - fractions[name] * n < biggest
        assert fractions[name] * n - rows.size <= (k - 1) * biggest
    assert plan.rows.keys() == fractions.keys()
    again = plan_splits(n, fractions, groups=groups, seed=seed)
    assert all(np.array_equal(plan.rows[s], again.rows[s]) for s in fractions), "same seed, same splits"


@pytest.mark.parametrize("seed", range(20))
def test_stratified_groups_keep_class_shares_within_the_bound_when_groups_are_small(seed):
    rng = np.random.default_rng(100 + seed)
    groups = _random_groups(rng, 400, 4)
    labels = rng.choice(3, groups.size, p=[0.6, 0.3, 0.1])
    plan = plan_splits(groups.size, FRACTIONS, groups=groups, labels=labels, stratify=True, seed=seed)
    _check_partition(plan, groups, groups.size)
    whole = np.bincount(labels, minlength=3) / labels.size
    for name, counts in plan.class_counts.items():
        assert np.abs(counts / counts.sum() - whole).max() <= STRATIFY_TOLERANCE, name
        assert abs(counts.sum() / groups.size - FRACTIONS[name]) < 0.02
    assert plan.notes == []


def test_stratify_says_which_split_and_class_whole_groups_cannot_balance():
    groups = np.repeat([0, 1, 2], [50, 30, 20])
    labels = np.repeat([0, 1, 1], [50, 30, 20])  # group 0 is all class 0
    plan = plan_splits(100, {"train": 0.5, "test": 0.5}, groups=groups, labels=labels, stratify=True)
    assert any(n.startswith("split 'train': class 0 is") and "too few or too large" in n for n in plan.notes)


def test_without_groups_rows_are_cut_exactly_and_stratified_per_class():
    labels = np.repeat([0, 1], [80, 20])
    plan = plan_splits(100, FRACTIONS, labels=labels, stratify=True, seed=1)
    assert {k: v.tolist() for k, v in plan.class_counts.items()} == {
        "train": [56, 14], "validation": [12, 3], "test": [12, 3]}
    assert plan_splits(10, FRACTIONS).groups == {"train": 7, "validation": 2, "test": 1}
    assert not np.array_equal(plan_splits(100, FRACTIONS, seed=1).rows["test"],
                              plan_splits(100, FRACTIONS, seed=2).rows["test"])


@pytest.mark.parametrize("fractions, match", [
    ({"a": 0.5, "b": 0.4}, "must add up to 1"),
    ({"a": 1.0, "b": 0.0}, r"fraction of split 'b' must be a number in \(0, 1\]"),
    ({"a/b": 1.0}, "split names must be"),
    ({}, "non-empty"),
], ids=["sum", "zero", "slash", "empty"])
def test_bad_fractions_are_refused(fractions, match):
    with pytest.raises(ValueError, match=match):
        check_fractions(fractions)


# -- make_splits on a file -----------------------------------------------------------------


def _file(path, n=300, row=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"id-{i}" for i in range(n)]
    h5feed.write_arrays(
        path, ids, rng.random((n, row), dtype=np.float32), rng.integers(0, 3, n), n_classes=3,
        splits={"old": np.arange(n // 2)},
        metadata={"id": ids, "patient": [f"p{i % 37}" for i in range(n)]},
    )
    return path


def _splits(path):
    with h5py.File(path) as f:
        return {name: f["splits"][name][()].tolist() for name in f["splits"]}


def test_make_splits_replaces_the_splits_and_keeps_groups_and_record_sound(tmp_path):
    path = _file(tmp_path / "d.h5")
    with h5py.File(path) as f:
        before = json.loads(f.attrs["h5feed_complete"])["sha256"]
    report = h5feed.make_splits(path, FRACTIONS, group_by="patient", stratify=True, seed=4)
    layout = h5feed.open_file(path)
    assert set(layout.splits) == set(FRACTIONS) and sum(layout.splits.values()) == 300
    assert report.rows == dict(layout.splits) and sum(report.groups.values()) == 37
    patients = h5feed.read_metadata(path)["patient"]
    sides = {p: {s for s, rows in _splits(path).items() if p in patients[rows]} for p in set(patients)}
    assert all(len(s) == 1 for s in sides.values())
    assert verify(path).sound
    with h5py.File(path) as f:
        after = json.loads(f.attrs["h5feed_complete"])["sha256"]
    assert {k: v for k, v in after.items() if not k.startswith("splits/")} == {
        k: v for k, v in before.items() if not k.startswith("splits/")}
    assert "splits/old" not in after
    report2 = h5feed.make_splits(path, FRACTIONS, group_by="patient", stratify=True, seed=4)
    assert report2 == report


def test_make_splits_changes_bytes_for_the_splits_only_not_the_samples(tmp_path):
    changed = []
    for row in (8, 8192):  # 300 rows of 32 bytes and of 32 KiB
        path = _file(tmp_path / f"d{row}.h5", row=row)
        old = path.read_bytes()
        h5feed.make_splits(path, FRACTIONS, seed=1)
        new = path.read_bytes()
        common = min(len(old), len(new))
        diff = np.frombuffer(old[:common], np.uint8) != np.frombuffer(new[:common], np.uint8)
        changed.append(int(diff.sum()) + abs(len(new) - len(old)))
    assert changed[1] <= changed[0] + 4096 < 64 * 1024


def test_make_splits_errors(tmp_path):
    path = _file(tmp_path / "d.h5")
    with pytest.raises(UnknownColumnError, match=r"no metadata column 'subject'; the file has \['patient'\]"):
        h5feed.make_splits(path, FRACTIONS, group_by="subject")
    plain = tmp_path / "plain.h5"
    h5feed.write_arrays(plain, ["a", "b"], np.zeros((2, 1)), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="stratify needs class labels"):
        h5feed.make_splits(plain, {"all": 1.0}, stratify=True)
    with h5py.File(path):  # another handle holds HDF5's lock
        with pytest.raises(WriterError, match="is open in another process"):
            h5feed.make_splits(path, FRACTIONS)
    assert _splits(path).keys() == {"old"}


def test_make_splits_warns_what_groups_cannot_meet(tmp_path):
    path = tmp_path / "two.h5"
    ids = [f"id-{i}" for i in range(10)]
    h5feed.write_arrays(path, ids, np.zeros((10, 1)), metadata={"id": ids, "site": ["A"] * 9 + ["B"]})
    with pytest.warns(UserWarning, match="split 'test' is empty"):
        h5feed.make_splits(path, {"train": 0.5, "validation": 0.25, "test": 0.25}, group_by="site")


def test_cli_split_prints_rows_groups_and_class_counts(tmp_path, capsys):
    path = _file(tmp_path / "d.h5")
    assert main(["split", str(path), "--fractions", "train=0.8,test=0.2", "--group-by", "patient",
                 "--stratify", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["split", "rows", "share", "asked", "groups", "classes"]
    assert lines[1].startswith("train") and "0=" in lines[1] and lines[2].startswith("test")
    assert "replaced the splits of" in out
    assert main(["split", str(path), "--fractions", "train=0.8,test=0.3"]) == 2
    assert "must add up to 1" in capsys.readouterr().err


# -- atomicity: killed at every write of the commit --------------------------------------

# The child counts the calls that change something on disk and kills itself
# (SIGKILL, no clean-up) just before call number K.
_CHILD = textwrap.dedent("""
    import os, signal, sys
    import h5feed
    path, kill_at = sys.argv[1], int(sys.argv[2])
    calls = [0]
    def counted(fn):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return call
    for name in ("write", "pwrite", "fsync", "replace", "unlink", "ftruncate"):
        setattr(os, name, counted(getattr(os, name)))
    h5feed.make_splits(path, {"train": 0.5, "test": 0.5}, group_by="patient", seed=7)
    print(calls[0])
""")


@pytest.mark.slow
def test_a_split_killed_at_any_write_leaves_the_old_or_the_new_splits(tmp_path):
    original = _file(tmp_path / "original.h5", n=200)
    old = _splits(original)
    done = tmp_path / "done.h5"
    shutil.copy(original, done)
    run = subprocess.run([sys.executable, "-c", _CHILD, str(done), "0"], capture_output=True, text=True, check=True)
    n_calls = int(run.stdout.split()[-1])
    new = _splits(done)
    assert n_calls >= 8 and new != old
    children = []
    for k in range(1, n_calls + 1):
        copy = tmp_path / f"kill-{k}.h5"
        shutil.copy(original, copy)
        children.append((k, copy, subprocess.Popen([sys.executable, "-c", _CHILD, str(copy), str(k)],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    seen = set()
    for k, copy, child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, (k, err.decode())
        report = verify(copy)  # opening rolls an interrupted edit back
        assert report.sound, (k, report.problems)
        assert not os.path.exists(journal_path(copy))
        splits = _splits(copy)
        assert splits in (old, new), k
        seen.add("new" if splits == new else "old")
    assert seen == {"old", "new"}, "kills before and after the commit point"
