"""h5feed append and compact: datasets that grow (NOTE [ Grown files ] in h5feed/grow.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import cli, errors
from h5feed.merge import merge_files
from h5feed.grow import append, compact
from h5feed.inspection import verify
from h5feed.writer import write_arrays

HERE = Path(__file__).parent
N_CLASSES = 5


def _rows(lo: int, hi: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    ids = [f"s{i:05d}" for i in range(lo, hi)]
    x = (np.arange(lo, hi, dtype=np.float32)[:, None] * np.array([1, -1, 0.5], np.float32))
    y = (np.arange(lo, hi) * 7 % N_CLASSES).astype(np.int64)
    return ids, x, y


def _split_of(i: int) -> str:
    return ("train", "validation", "test")[i * 13 % 3]


def _write(path: Path, lo: int, hi: int, *, metadata: bool = True, **options) -> Path:
    ids, x, y = _rows(lo, hi)
    splits: dict[str, list[str]] = {}
    for i, sid in zip(range(lo, hi), ids):
        splits.setdefault(_split_of(i), []).append(sid)
    meta = {"id": ids, "site": [f"site{i % 3}" for i in range(lo, hi)], "dose": [i / 4 for i in range(lo, hi)]}
    options.setdefault("n_classes", N_CLASSES)
    write_arrays(path, ids, x, y, splits, metadata=meta if metadata else None, **options)
    return path


def _content(path: Path) -> dict:
    """Everything a user reads from an h5feed file, row by row."""
    with h5py.File(path) as f:
        out = {
            "ids": [s.decode() for s in f["ids"][()]],
            "x": f["x"][()],
            "y": f["y"][()],
            "splits": {name: f["splits"][name][()].tolist() for name in f["splits"]},
        }
    out["meta"] = {k: v.tolist() for k, v in h5feed.read_metadata(path).items()}
    return out


def _listed(data: Path) -> list[str]:
    """The names of the parts and split files ``data``'s record lists."""
    with h5py.File(data) as f:
        record = json.loads(f.attrs["h5feed_complete"])
    return sorted(os.path.basename(p) for p in [*record["parts"], *record.get("split_files", [])])


def _same(a: dict, b: dict) -> None:
    assert a["ids"] == b["ids"]
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["y"], b["y"])
    assert a["splits"] == b["splits"]
    assert a["meta"] == b["meta"]


@pytest.mark.parametrize("seed", range(6))
def test_any_sequence_of_appends_equals_one_conversion(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(1, 6))), replace=False)).tolist()
    bounds = list(zip([0, *cuts], [*cuts, n]))
    pieces = [_write(tmp_path / f"piece{k}.h5", lo, hi) for k, (lo, hi) in enumerate(bounds)]
    data = tmp_path / "data.h5"
    if rng.random() < 0.5:
        os.replace(pieces.pop(0), data)  # grow a standalone file
    while pieces:  # one or several files per call
        k = int(rng.integers(1, len(pieces) + 1))
        append(data, *pieces[:k])
        pieces = pieces[k:]
    whole = _write(tmp_path / "whole.h5", 0, n)
    _same(_content(data), _content(whole))
    assert verify(data).sound
    # The same batches through the Sequence, with no allow_virtual flag.
    for split in ("train", "validation"):
        seq_a = h5feed.H5Sequence(data, split, batch_size=16, shuffle=False)
        seq_b = h5feed.H5Sequence(whole, split, batch_size=16, shuffle=False)
        assert len(seq_a) == len(seq_b)
        for i in range(len(seq_a)):
            (xa, ya), (xb, yb) = seq_a[i], seq_b[i]
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    compact(data)
    assert not (tmp_path / "data.h5.parts").exists()
    _same(_content(data), _content(whole))
    with h5py.File(data) as f:
        assert not f["x"].is_virtual
    assert verify(data).sound


def test_append_creates_a_missing_dataset(tmp_path):
    new = _write(tmp_path / "day1.h5", 0, 30)
    data = tmp_path / "data.h5"
    append(data, new)
    _same(_content(data), _content(new))
    assert new.exists()  # the input is copied, never moved or changed


def _snapshot(data: Path) -> dict:
    parts = data.parent / (data.name + ".parts")
    return {
        "data": data.read_bytes(),
        "parts": sorted(p.name for p in parts.iterdir()) if parts.exists() else None,
    }


def test_a_repeated_id_is_refused_by_name_and_nothing_changes(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 50)
    append(data, _write(tmp_path / "a.h5", 50, 60))
    before = _snapshot(data)
    clash = _write(tmp_path / "clash.h5", 58, 70)
    with pytest.raises(errors.LayoutError, match=r"'s00058' in .*data\.h5 \(row 58\) and .*clash\.h5 \(row 0\)"):
        append(data, _write(tmp_path / "b.h5", 60, 62), clash)
    assert _snapshot(data) == before
    # Among the new files themselves, each named with the row in it.
    with pytest.raises(errors.LayoutError, match=r"'s00061' in .*b\.h5 and .*c\.h5 \(row 0\)"):
        append(data, tmp_path / "b.h5", _write(tmp_path / "c.h5", 61, 64))
    assert _snapshot(data) == before


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        (dict(n_classes=N_CLASSES + 1), r"n_classes is 6, but .* has 5"),
        (dict(metadata=False), r"metadata columns \[\], but .* has \[.dose., .site.\]; they must have the same columns"),
    ],
)
def test_a_file_that_disagrees_is_refused_naming_the_difference(tmp_path, options, pattern):
    data = _write(tmp_path / "data.h5", 0, 20)
    before = _snapshot(data)
    metadata = options.pop("metadata", True)
    other = _write(tmp_path / "other.h5", 20, 30, metadata=metadata, **options)
    with pytest.raises(errors.LayoutError, match=pattern):
        append(data, other)
    assert _snapshot(data) == before


def test_a_sample_shape_mismatch_is_refused(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 20)
    ids = [f"t{i}" for i in range(5)]
    write_arrays(tmp_path / "other.h5", ids, np.zeros((5, 4), np.float32), np.zeros(5, np.int64), n_classes=N_CLASSES)
    with pytest.raises(errors.LayoutError, match=r"/x: rows of shape \(4,\) .* has \(3,\)"):
        append(data, tmp_path / "other.h5")


def test_old_rows_are_never_rewritten(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 200)
    append(data, _write(tmp_path / "a.h5", 200, 210))
    parts = tmp_path / "data.h5.parts"
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in parts.iterdir()}
    append(data, _write(tmp_path / "b.h5", 210, 220))
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in parts.iterdir()}
    assert {k: after[k] for k in first} == first  # the old parts and split files untouched
    assert sorted(set(after) - set(first)) == ["000002.h5", "000002.splits.h5"]
    assert after["000002.h5"][2] == (tmp_path / "b.h5").stat().st_size  # written: the new file's bytes


def test_the_first_append_links_the_standalone_file_instead_of_copying_it(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 100)
    inode = data.stat().st_ino
    append(data, _write(tmp_path / "a.h5", 100, 110))
    assert (tmp_path / "data.h5.parts" / "000000.h5").stat().st_ino == inode


def test_a_reader_of_the_old_version_keeps_its_rows(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 100)
    append(data, _write(tmp_path / "a.h5", 100, 120))
    seq = h5feed.H5Sequence(data, "train", batch_size=8, shuffle=True, seed=3)
    before = [seq[i][0].copy() for i in range(len(seq))]
    append(data, _write(tmp_path / "b.h5", 120, 200))
    seq.on_epoch_end()
    seq2 = h5feed.H5Sequence(data, "train", batch_size=8, shuffle=True, seed=3)
    assert len(seq2) > len(seq)
    again = np.concatenate([seq[i][0] for i in range(len(seq))])
    assert sorted(again[:, 0].tolist()) == sorted(np.concatenate(before)[:, 0].tolist())


def test_a_grown_file_opens_without_the_flag_but_a_merged_one_does_not(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 20)
    append(data, _write(tmp_path / "a.h5", 20, 30))
    assert len(h5feed.H5Sequence(data, "train", batch_size=4).rows) > 0
    merge_files([tmp_path / "a.h5"], tmp_path / "merged.h5")
    with pytest.raises(errors.UntrustedFileError, match="allow_virtual"):
        h5feed.H5Sequence(tmp_path / "merged.h5", "train")


def test_a_replaced_part_is_refused_on_open(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 20)
    append(data, _write(tmp_path / "a.h5", 20, 30))
    part = tmp_path / "data.h5.parts" / "000001.h5"
    _write(tmp_path / "impostor.h5", 20, 30, metadata=False)
    os.replace(tmp_path / "impostor.h5", part)
    with pytest.raises(errors.LayoutError, match=r"part 'data\.h5\.parts/000001\.h5' is not the file it was grown from"):
        h5feed.H5Sequence(data, "train")


def test_a_missing_part_is_refused_by_name(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 20)
    append(data, _write(tmp_path / "a.h5", 20, 30))
    (tmp_path / "data.h5.parts" / "000001.h5").unlink()
    with pytest.raises(errors.UntrustedFileError, match="000001.h5"):
        h5feed.H5Sequence(data, "train")


def test_verify_names_a_damaged_part(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 20)
    append(data, _write(tmp_path / "a.h5", 20, 30))
    part = tmp_path / "data.h5.parts" / "000001.h5"
    with h5py.File(part, "r+") as f:
        f["x"][3] = [9, 9, 9]  # changed after it was written
    report = verify(data)
    assert not report.sound
    assert any(p.startswith("data.h5.parts/000001.h5: x: its SHA-256 differs") for p in report.problems), report.problems


def test_a_split_file_changed_replaced_or_missing_is_refused_or_named(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 20)
    append(data, _write(tmp_path / "a.h5", 20, 30))
    split_file = tmp_path / "data.h5.parts" / "000000.splits.h5"
    assert _listed(data) == ["000000.h5", "000000.splits.h5", "000001.h5"]
    saved = split_file.read_bytes()
    # Changed in place, record and all: verify names the file and the split.
    with h5py.File(split_file, "r+") as f:
        f["splits/train"][0] += 1
    report = verify(data)
    assert any(p.startswith("data.h5.parts/000000.splits.h5: splits/train: its SHA-256 differs")
               for p in report.problems), report.problems
    # Replaced by another (a new record): refused on open.
    split_file.write_bytes(saved)
    with h5py.File(split_file, "r+") as f:
        rows = f["splits/train"][()]
        del f["splits/train"]
        f["splits/train"] = rows[:-1]
        f.attrs["h5feed_complete"] = f.attrs["h5feed_complete"].replace('"rows"', '"rows" ')
    with pytest.raises(errors.LayoutError, match=r"split file 'data\.h5\.parts/000000\.splits\.h5' is not the file"):
        h5feed.H5Sequence(data, "train")
    split_file.unlink()
    with pytest.raises(errors.UntrustedFileError, match=r"split file .*000000\.splits\.h5.* is missing"):
        h5feed.open_file(data)


def test_a_split_mapping_another_file_is_refused(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 20)
    append(data, _write(tmp_path / "a.h5", 20, 30))
    # Point train at a file of the parts folder that the record does not list as a split file.
    other = tmp_path / "data.h5.parts" / "000001.h5"
    with h5py.File(data, "r+") as f:
        n = f["splits/train"].shape[0]
        del f["splits/train"]
        layout = h5py.VirtualLayout(shape=(n,), dtype=np.int64)
        layout[:] = h5py.VirtualSource("data.h5.parts/000001.h5", "ids", shape=(n,))
        f.create_virtual_dataset("splits/train", layout)
    assert other.exists()
    with pytest.raises(errors.UntrustedFileError, match="splits/train"):
        h5feed.open_file(data)


def test_new_splits_then_an_append_keep_every_split_row(tmp_path):
    # h5feed split stores the splits in the index; the next append moves
    # them into its split file with the new rows', and drops the old files.
    from h5feed import make_splits

    data = _write(tmp_path / "data.h5", 0, 40)
    append(data, _write(tmp_path / "a.h5", 40, 60))
    make_splits(data, {"train": 0.5, "test": 0.5}, seed=3)
    with h5py.File(data) as f:
        stored = {name: f["splits"][name][()] for name in f["splits"]}
        assert not any(f["splits"][name].is_virtual for name in f["splits"])
    assert verify(data).sound
    append(data, _write(tmp_path / "b.h5", 60, 70))
    got = _content(data)
    for name, rows in stored.items():
        np.testing.assert_array_equal(got["splits"][name][: rows.size], rows)
    assert min(got["splits"]["train"][stored["train"].size:]) >= 60  # b's own train rows follow
    assert sorted(p.name for p in (tmp_path / "data.h5.parts").iterdir()) == _listed(data)
    assert "000000.splits.h5" not in _listed(data)
    assert verify(data).sound


def test_a_split_without_rows_keeps_its_name_through_appends(tmp_path):
    def write(path, lo, hi, holdout):
        ids, x, y = _rows(lo, hi)
        splits = {"train": ids[1:] if holdout else ids, "holdout": ids[:1] if holdout else []}
        write_arrays(path, ids, x, y, splits, n_classes=N_CLASSES)
        return path

    data = write(tmp_path / "data.h5", 0, 10, holdout=False)
    append(data, write(tmp_path / "a.h5", 10, 20, holdout=False))
    assert h5feed.open_file(data).splits == {"holdout": 0, "train": 20}
    append(data, write(tmp_path / "b.h5", 20, 30, holdout=True))
    append(data, write(tmp_path / "c.h5", 30, 40, holdout=False))
    got = _content(data)
    assert got["splits"] == {"holdout": [20], "train": [r for r in range(40) if r != 20]}
    assert verify(data).sound


def test_a_virtual_file_cannot_be_appended(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 20)
    merge_files([_write(tmp_path / "a.h5", 20, 30)], tmp_path / "merged.h5")
    with pytest.raises(errors.WriterInputError, match="holds virtual datasets"):
        append(data, tmp_path / "merged.h5")


def _append_in_child(data: Path, new: Path, point: str | None = None) -> subprocess.CompletedProcess:
    script = HERE / "append_kill_script.py"
    args = [sys.executable, str(script), str(data), str(new), point or "none"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


KILL_POINTS = [
    "h5feed.grow:_remove_unlisted:after",
    "h5feed.grow:_write_split_file:before",
    "h5feed.grow:_write_split_file:after",
    "h5feed.grow:_link_in:before",
    "h5feed.grow:_link_in:after",
    "h5feed.grow:_copy_in:after",
    "h5feed.grow:publish:before",
    "h5feed.grow:_stream_parts:after",
    "h5feed.grow:_write_index:before",
    "h5feed.layout:open_and_validate:after",  # the new index written, not yet renamed over DATA
    "h5feed.grow:_write_index:after",
]


@pytest.mark.slow
@pytest.mark.parametrize("grown", [False, True], ids=["standalone", "grown"])
@pytest.mark.parametrize("point", KILL_POINTS)
def test_an_append_killed_at_any_step_leaves_the_old_or_the_new_dataset(tmp_path, point, grown):
    data = _write(tmp_path / "data.h5", 0, 40)
    if grown:
        append(data, _write(tmp_path / "a.h5", 40, 50))
    old = _content(data)
    lo = 50 if grown else 40
    new = _write(tmp_path / "new.h5", lo, lo + 25)
    done = _append_in_child(data, new, point)
    if point.startswith("h5feed.grow:_link_in") and grown:
        assert done.returncode == 0  # a grown file links nothing: the point is never reached
    else:
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert f"KILL {point}" in done.stderr
    assert verify(data).sound
    got = _content(data)
    if len(got["ids"]) == len(old["ids"]):
        _same(got, old)
    else:
        _same(got, _content(_write(tmp_path / "whole.h5", 0, lo + 25)))
        return
    # The next append finishes the job and clears what the killed one left.
    append(data, new)
    _same(_content(data), _content(_write(tmp_path / "whole.h5", 0, lo + 25)))
    parts = sorted(p.name for p in (tmp_path / "data.h5.parts").iterdir())
    assert parts == _listed(data)


@pytest.mark.slow
def test_concurrent_appends_lose_no_rows(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 20)
    news = [_write(tmp_path / f"n{k}.h5", 20 + 30 * k, 50 + 30 * k) for k in range(4)]
    script = HERE / "append_kill_script.py"
    procs = [
        subprocess.Popen([sys.executable, str(script), str(data), str(p), "none"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in news
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    got = _content(data)
    assert sorted(got["ids"]) == [f"s{i:05d}" for i in range(140)]
    assert verify(data).sound


def test_cli_append_and_compact(tmp_path, capsys):
    data = _write(tmp_path / "data.h5", 0, 20)
    a, b = _write(tmp_path / "a.h5", 20, 30), _write(tmp_path / "b.h5", 30, 45)
    assert cli.main(["append", str(data), str(a), str(b), "-q"], _isolated=False) == 0
    assert "appended 25 rows from 2 file(s)" in capsys.readouterr().out
    assert cli.main(["verify", str(data), "-q"], _isolated=False) == 0
    capsys.readouterr()
    assert cli.main(["info", str(data)], _isolated=False) == 0
    assert "grown: 3 parts and 1 split file in data.h5.parts/" in capsys.readouterr().out
    assert cli.main(["append", str(data), str(a), "-q"], _isolated=False) == 1
    assert "'s00020' in" in capsys.readouterr().err
    assert cli.main(["compact", str(data), "-q"], _isolated=False) == 0
    assert "compacted" in capsys.readouterr().out
    assert not (tmp_path / "data.h5.parts").exists()
    assert cli.main(["info", str(data)], _isolated=False) == 0


# -- converters: --append-to / append_to= ---------------------------------------


def _npy_folder(folder: Path, lo: int, hi: int) -> tuple[dict, dict, dict]:
    """Samples lo..hi-1 as the tutorial's <ID>.npy files; their labels,
    partition and metadata, as a converter takes them."""
    folder.mkdir()
    ids, x, y = _rows(lo, hi)
    for sid, row in zip(ids, x):
        np.save(folder / f"{sid}.npy", row)
    partition: dict[str, list[str]] = {}
    for i, sid in zip(range(lo, hi), ids):
        partition.setdefault(_split_of(i), []).append(sid)
    meta = {"id": ids, "site": [f"site{i % 3}" for i in range(lo, hi)]}
    return dict(zip(ids, y.tolist())), partition, meta


@pytest.mark.parametrize("seed", range(3))
def test_converting_into_a_growing_dataset_equals_one_conversion(tmp_path, seed):
    from h5feed.convert import from_npy_dir

    rng = np.random.default_rng(seed)
    cuts = sorted(set(rng.integers(1, 60, size=rng.integers(1, 5)).tolist()))
    bounds = [0, *cuts, 60]
    data = tmp_path / "all.h5"
    for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        labels, partition, meta = _npy_folder(tmp_path / f"day{k}", lo, hi)
        result = from_npy_dir(tmp_path / f"day{k}", labels, append_to=data, partition=partition,
                              metadata=meta, n_classes=N_CLASSES, shuffle_rows=bool(k % 2), seed=k)
        assert result.path == str(data) and result.rows == hi - lo
    labels, partition, meta = _npy_folder(tmp_path / "whole", 0, 60)
    from_npy_dir(tmp_path / "whole", labels, tmp_path / "whole.h5", partition=partition, metadata=meta,
                 n_classes=N_CLASSES)
    got, whole = _content(data), _content(tmp_path / "whole.h5")
    # A shuffled day keeps its rows together, in its own order: compare by ID.
    assert sorted(got["ids"]) == whole["ids"]
    order = np.argsort(got["ids"])
    np.testing.assert_array_equal(got["x"][order], whole["x"])
    np.testing.assert_array_equal(got["y"][order], whole["y"])
    for name, rows in whole["splits"].items():
        assert sorted(got["ids"][r] for r in got["splits"][name]) == [whole["ids"][r] for r in rows]
    assert [got["meta"]["site"][i] for i in order] == whole["meta"]["site"]
    assert verify(data).sound
    assert sorted(p.name for p in (tmp_path / "all.h5.parts").iterdir()) == _listed(data)
    assert [n for n in _listed(data) if ".splits." not in n] == [f"{k:06d}.h5" for k in range(len(bounds) - 1)]


def test_a_conversion_that_repeats_an_id_names_its_source_and_changes_nothing(tmp_path):
    from h5feed.convert import from_npy_dir

    data = tmp_path / "all.h5"
    labels, _, _ = _npy_folder(tmp_path / "monday", 0, 10)
    from_npy_dir(tmp_path / "monday", labels, append_to=data, n_classes=N_CLASSES)
    before = _snapshot(data)
    labels, _, _ = _npy_folder(tmp_path / "again", 5, 12)
    with pytest.raises(errors.LayoutError, match=r"'s00005' in .*all\.h5 \(row 5\) and the samples of .*again \(row 0\)"):
        from_npy_dir(tmp_path / "again", labels, append_to=data, n_classes=N_CLASSES)
    assert _snapshot(data) == before
    assert sorted(os.listdir(tmp_path / "all.h5.parts")) == ["000000.h5"]


def test_what_a_killed_conversion_left_in_the_parts_folder_goes_with_the_next_append(tmp_path):
    from h5feed.convert import from_npy_dir

    data = tmp_path / "all.h5"
    labels, _, _ = _npy_folder(tmp_path / "monday", 0, 10)
    from_npy_dir(tmp_path / "monday", labels, append_to=data, n_classes=N_CLASSES)
    script = (
        "import os, signal, sys\n"
        "from h5feed.grow import incoming_path\n"
        "from h5feed.writer import write_arrays\n"
        "path = incoming_path(sys.argv[1])\n"
        "write_arrays(path, ['z'], [[0.0, 0.0, 0.0]], [0], n_classes=5)\n"
        "print(path, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(data)], capture_output=True, text=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = Path(done.stdout.strip())
    assert left.exists()
    labels, _, _ = _npy_folder(tmp_path / "tuesday", 10, 15)
    from_npy_dir(tmp_path / "tuesday", labels, append_to=data, n_classes=N_CLASSES)
    assert not left.exists()
    assert sorted(os.listdir(tmp_path / "all.h5.parts")) == ["000000.h5", "000001.h5"]


def test_cli_convert_append_to(tmp_path, capsys):
    labels, _, _ = _npy_folder(tmp_path / "monday", 0, 10)
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    data = tmp_path / "all.h5"
    argv = ["convert", "npy", str(tmp_path / "monday"), "--labels", str(tmp_path / "labels.json"), "-q"]
    assert cli.main([*argv, "--append-to", str(data)], _isolated=False) == 0
    assert f"appended 10 rows to {data}" in capsys.readouterr().out
    assert cli.main([*argv, "--append-to", str(data), "--overwrite"], _isolated=False) == 2
    assert "give one of the two" in capsys.readouterr().err
    assert cli.main([*argv, "--append-to", str(data), "-o", str(tmp_path / "x.h5")], _isolated=False) == 2
    assert "not allowed with" in capsys.readouterr().err
    assert cli.main([*argv, "--append-to", str(data)], _isolated=False) == 1
    assert "the samples of" in capsys.readouterr().err
    assert h5feed.open_file(data).n_rows == 10


@pytest.mark.parametrize("whole", [True, False], ids=["small-columns-whole", "no-column-whole"])
@pytest.mark.parametrize("compressed", [(), (2,)], ids=["mapped", "one-part-compressed"])
@pytest.mark.parametrize("row_shape", [(3,), (64, 80)], ids=["small-rows", "big-rows"])
def test_batches_of_a_grown_file_are_the_rows_of_one_file(tmp_path, monkeypatch, row_shape, compressed, whole):
    # The per-batch path gathers rows from all the parts' memory maps at
    # once (small rows in one numpy step, big ones copied one by one; into
    # any out, even one that is not one block), or groups them by part when
    # a part is not mapped, or gathers from a small column held whole; all
    # must give what one file gives, in any order.
    from h5feed import _parts
    from h5feed._parts import make_reader

    if not whole:
        monkeypatch.setattr(_parts, "WHOLE_BYTES", 0)

    rng = np.random.default_rng(7)
    n = 300
    ids = [f"s{i:05d}" for i in range(n)]
    x = rng.standard_normal((n, *row_shape)).astype(np.float32)
    y = rng.integers(0, N_CLASSES, n)
    write_arrays(tmp_path / "one.h5", ids, x, y, n_classes=N_CLASSES)
    bounds = [0, 40, 41, 150, 260, 300]
    data = tmp_path / "grown.h5"
    for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        piece = tmp_path / f"p{k}.h5"
        options = {"compression": "gzip"} if k in compressed else {}
        write_arrays(piece, ids[lo:hi], x[lo:hi], y[lo:hi], n_classes=N_CLASSES, **options)
        append(data, piece)
    reader = make_reader(h5feed.open_file(data))
    assert len(reader._parts) == len(bounds) - 1
    for rows in [rng.integers(0, n, 32), rng.permutation(n), np.arange(45, 140), np.array([], np.int64),
                 np.array([299, 0, 41, 40, 40]), np.arange(150, 260)]:
        rows = rows.astype(np.int64)
        np.testing.assert_array_equal(reader.take("x", rows), x[rows])
        np.testing.assert_array_equal(reader.take("y", rows), y[rows])
        out = np.empty((rows.size, *row_shape), np.float32)
        assert reader.take("x", rows, out) is out
        np.testing.assert_array_equal(out, x[rows])
        strided = np.empty((2 * rows.size, *row_shape), np.float32)[::2]
        assert reader.take("x", rows, strided) is strided
        np.testing.assert_array_equal(strided, x[rows])
    # All parts mapped: one view over them all; else part by part.
    if "x" not in reader._whole:
        assert (reader._spans["x"] is None) == bool(compressed)
    assert ("y" in reader._whole) == whole
    reader.close()


def test_what_an_append_writes_does_not_grow_with_the_old_rows(tmp_path):
    # The cost claim as a property: besides the new file, an append writes
    # an index and a split file whose sizes do not grow with the old rows:
    # not with their IDs, their metadata or their split rows.
    written = {}
    for n in (100, 5000):
        folder = tmp_path / str(n)
        folder.mkdir()
        data = _write(folder / "data.h5", 0, n)
        append(data, _write(folder / "a.h5", n, n + 10))
        before = set(os.listdir(folder / "data.h5.parts"))
        append(data, _write(folder / "b.h5", n + 10, n + 20))
        with h5py.File(data) as f:
            assert f["ids"].is_virtual and all(f["meta"][m].is_virtual for m in f["meta"])
            assert all(f["splits"][s].is_virtual for s in f["splits"])
            assert "ids_index" not in f
        new = set(os.listdir(folder / "data.h5.parts")) - before
        assert sorted(new) == ["000002.h5", "000002.splits.h5"]
        written[n] = data.stat().st_size + (folder / "data.h5.parts" / "000002.splits.h5").stat().st_size
    assert abs(written[5000] - written[100]) <= 256


def test_ids_are_found_through_each_parts_own_index(tmp_path, monkeypatch):
    from h5feed import _ids

    data = _write(tmp_path / "data.h5", 0, 30)
    append(data, _write(tmp_path / "a.h5", 30, 40), _write(tmp_path / "b.h5", 40, 55))

    def no_scan(*args):
        raise AssertionError("a grown file's IDs were scanned, not looked up")

    monkeypatch.setattr(_ids, "_scan", no_scan)
    wanted = ["s00054", "s00003", "s00031", "s00041", "s00003"]
    seq = h5feed.H5Sequence(data, ids=wanted, batch_size=5, shuffle=False)
    x, _ = seq[0]
    np.testing.assert_array_equal(x[:, 0], [54, 3, 31, 41, 3])
    with pytest.raises(errors.UnknownIDError, match=r"2 of the requested IDs are not in the file, e\.g\. \['s00055', 'nope'\]"):
        h5feed.H5Sequence(data, ids=["s00001", "s00055", "nope"])


def test_a_grown_file_whose_ids_map_the_parts_out_of_order_is_refused(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 20)
    append(data, _write(tmp_path / "a.h5", 20, 30))
    with h5py.File(data, "r+") as f:
        del f["ids"]
        layout = h5py.VirtualLayout((30,), dtype=h5py.string_dtype("utf-8"))
        layout[0:10] = h5py.VirtualSource("data.h5.parts/000001.h5", "ids", shape=(10,))
        layout[10:30] = h5py.VirtualSource("data.h5.parts/000000.h5", "ids", shape=(20,))
        f.create_virtual_dataset("ids", layout)
    with pytest.raises(errors.UntrustedFileError, match=r"/ids: must map its parts' own /ids, each whole, in the order"):
        h5feed.open_file(data)


def test_a_damaged_heap_in_a_part_is_named_when_ids_are_read_through_the_grown_file(tmp_path):
    from h5feed import _heap

    ids = [f"sample-{i:06d}" for i in range(3000)]
    first = h5feed.write_arrays(tmp_path / "data.h5", ids, np.zeros((3000, 2), np.float32))
    append(first, h5feed.write_arrays(tmp_path / "a.h5", ["late-1"], np.zeros((1, 2), np.float32)))
    part = tmp_path / "data.h5.parts" / "000000.h5"
    raw = bytearray(part.read_bytes())
    at = raw.find(b"sample-002500") - 16  # that ID's heap object header
    raw[at : at + 16] = bytes(16)  # HDF5 would loop forever on it
    os.unlink(part)  # a hard link of data.h5's first version: damage the part alone
    part.write_bytes(bytes(raw))
    with h5py.File(tmp_path / "data.h5") as f:
        _heap.check_dataset(f, f["ids"], (0, 100))  # rows in sound collections pass
        with pytest.raises(errors.DamagedFileError, match=r"000000\.h5:/ids: damaged: the global heap collection"):
            _heap.check_dataset(f, f["ids"], (2400, 2600))


def test_a_part_changed_after_an_open_is_checked_again_on_the_next(tmp_path):
    # Opening remembers what it checked of each part, by the part's identity
    # (inode, size, times): a change in place must not be missed.
    data = _write(tmp_path / "data.h5", 0, 20)
    append(data, _write(tmp_path / "a.h5", 20, 30))
    h5feed.open_file(data)
    with h5py.File(tmp_path / "data.h5.parts" / "000001.h5", "r+") as g:
        del g["x"]
        g.create_group("x")
    with pytest.raises(errors.UntrustedFileError, match=r"000001\.h5' has no plain dataset 'x'"):
        h5feed.open_file(data)


def test_a_lookup_opens_only_the_parts_whose_bounds_hold_its_ids(tmp_path, monkeypatch):
    from h5feed import _ids

    data = _write(tmp_path / "data.h5", 0, 30)
    append(data, _write(tmp_path / "a.h5", 30, 40), _write(tmp_path / "b.h5", 40, 55))
    opened = []
    real = _ids.open_h5

    def spy(path, *args, **kwargs):
        opened.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(_ids, "open_h5", spy)
    with h5py.File(data) as f:
        rows = _ids.locate(f, _ids.encode(["s00045", "s00031"], "ids"), h5feed.open_file(data).completion)
    assert rows.tolist() == [45, 31]
    assert sorted(opened) == ["000001.h5", "000002.h5"]  # not the first part, whose IDs end at s00029


@pytest.mark.parametrize("seed", range(3))
def test_lookups_find_every_id_whatever_the_parts_bounds(tmp_path, seed):
    # IDs in random order across parts, so that the parts' bounds overlap.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    names = np.array([f"{rng.integers(0, 10**6):06d}-{i}" for i in range(n)])
    cuts = np.sort(rng.choice(np.arange(1, n), size=3, replace=False))
    files = []
    for k, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, n])):
        ids = names[lo:hi].tolist()
        files.append(write_arrays(tmp_path / f"p{k}.h5", ids, np.arange(lo, hi, dtype=np.float32)[:, None]))
    data = tmp_path / "data.h5"
    append(data, *files)
    wanted = rng.permutation(n)[: n // 2]
    seq = h5feed.H5Sequence(data, ids=names[wanted].tolist(), batch_size=len(wanted), shuffle=False)
    x, *_ = seq[0]
    np.testing.assert_array_equal(x[:, 0], wanted)
    clash = write_arrays(tmp_path / "clash.h5", [str(names[int(wanted[0])])], np.zeros((1, 1), np.float32))
    with pytest.raises(errors.LayoutError, match=f"'{names[int(wanted[0])]}' in .*data\\.h5 \\(row {int(wanted[0])}\\)"):
        append(data, clash)


def test_a_grown_file_without_part_bounds_is_searched_part_by_part_and_gets_them_back(tmp_path):
    data = _write(tmp_path / "data.h5", 0, 30)
    append(data, _write(tmp_path / "a.h5", 30, 40), _write(tmp_path / "b.h5", 40, 55))
    with h5py.File(data, "r+") as f:
        del f["part_ids"]  # as a grown file written without them
    seq = h5feed.H5Sequence(data, ids=["s00054", "s00003", "s00031"], batch_size=3, shuffle=False)
    np.testing.assert_array_equal(seq[0][0][:, 0], [54, 3, 31])
    with pytest.raises(errors.LayoutError, match=r"'s00033' in .*data\.h5 \(row 33\)"):
        append(data, _write(tmp_path / "clash.h5", 33, 34))
    append(data, _write(tmp_path / "c.h5", 55, 60))
    with h5py.File(data) as f:
        assert [s.decode() for s in f["part_ids/first"][()]] == ["s00000", "s00030", "s00040", "s00055"]
        assert [s.decode() for s in f["part_ids/last"][()]] == ["s00029", "s00039", "s00054", "s00059"]


def test_a_virtual_merge_of_a_grown_file_says_to_compact_or_copy(tmp_path):
    from h5feed.merge import merge_files

    data = _write(tmp_path / "data.h5", 0, 20)
    append(data, _write(tmp_path / "a.h5", 20, 30))
    other = _write(tmp_path / "other.h5", 30, 40)
    with pytest.raises(errors.UntrustedFileError, match=r"data\.h5'?:/x is itself a virtual dataset .*h5feed compact"):
        merge_files([data, other], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()
    merge_files([data, other], tmp_path / "copy.h5", copy=True)
    assert h5feed.open_file(tmp_path / "copy.h5").n_rows == 40
