"""The npy-folder converter: the tutorial's layout into one file."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import errors
from h5feed.convert import from_npy_dir
from h5feed.convert._common import ordered_map

from convert_helpers import TUTORIAL_LABELS, TUTORIAL_PARTITION, leftovers, make_npy_folder, read_by_ids
from readback import read_back


def _assert_holds(path, samples, labels, splits=None):
    """The file holds exactly these samples and labels (and splits), by ID."""
    back = read_back(path)
    assert sorted(back["ids"]) == sorted(samples)
    for row, sid in enumerate(back["ids"]):
        np.testing.assert_array_equal(back["x"][row], samples[sid])
        if labels is not None:
            assert back["y"][row] == labels[sid]
    if labels is None:
        assert "y" not in back
    if splits is not None:
        assert {k: sorted(v) for k, v in back["splits"].items()} == {k: sorted(v) for k, v in splits.items()}
    return back


@pytest.fixture
def tutorial(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "out").mkdir()
    data, labels, partition, samples = make_npy_folder(
        str(src), TUTORIAL_LABELS, shape=(32, 32, 32, 1), partition=TUTORIAL_PARTITION
    )
    return data, labels, partition, samples, tmp_path / "out"


def test_tutorial_example_round_trips_by_id(tutorial):
    data, labels, partition, samples, out = tutorial
    result = from_npy_dir(data, labels, out / "data.h5", partition=partition)
    assert result.rows == 4 and result.path == str(out / "data.h5")
    layout = h5feed.open_file(result.path)
    assert layout.n_classes == 3 and dict(layout.splits) == {"train": 3, "validation": 1}
    assert layout.column("x").layout == "contiguous"  # row count known up front
    ids = ["id-4", "id-2", "id-1", "id-3"]
    X, Y = read_by_ids(result.path, ids)
    for i, sid in enumerate(ids):
        np.testing.assert_array_equal(X[i], samples[sid])
        assert Y[i] == TUTORIAL_LABELS[sid]
    assert X.dtype == np.float32
    with h5py.File(result.path) as f:
        assert [f["ids"].asstr()[r] for r in f["splits/train"][()]] == ["id-1", "id-2", "id-3"]
        assert [f["ids"].asstr()[r] for r in f["splits/validation"][()]] == ["id-4"]


@pytest.mark.slow
def test_tutorial_example_converts_and_trains_for_an_epoch(tutorial):
    from h5feed._keras import keras
    from h5feed.sequence import H5Sequence

    data, labels, partition, _, out = tutorial
    path = from_npy_dir(data, labels, out / "data.h5", partition=partition).path
    # The tutorial's parameters: dim (32, 32, 32), 1 channel, 3 classes here.
    training_generator = H5Sequence(path, "train", batch_size=2, seed=0)
    validation_generator = H5Sequence(path, "validation", batch_size=2, shuffle=False)
    model = keras.Sequential([keras.Input(shape=(32, 32, 32, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    history = model.fit(training_generator, validation_data=validation_generator, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])


def test_python_dicts_work_like_files(tutorial):
    data, _, _, samples, out = tutorial
    result = from_npy_dir(data, TUTORIAL_LABELS, out / "d.h5", partition=TUTORIAL_PARTITION)
    X, Y = read_by_ids(result.path, ["id-3"])
    np.testing.assert_array_equal(X[0], samples["id-3"])
    _assert_holds(result.path, samples, TUTORIAL_LABELS, TUTORIAL_PARTITION)


def test_csv_labels_and_partition(tmp_path):
    labels = {f"s{i}": i % 3 for i in range(10)}
    data, _, _, samples = make_npy_folder(str(tmp_path), labels)
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    (tmp_path / "part.csv").write_text("id,split\n" + "".join(f"s{i},{'train' if i < 7 else 'test'}\n" for i in range(10)))
    result = from_npy_dir(data, tmp_path / "labels.csv", tmp_path / "o.h5", partition=tmp_path / "part.csv")
    layout = h5feed.open_file(result.path)
    assert dict(layout.splits) == {"train": 7, "test": 3}
    X, Y = read_by_ids(result.path, list(labels))
    np.testing.assert_array_equal(Y, list(labels.values()))
    np.testing.assert_array_equal(X, np.stack([samples[k] for k in labels]))
    _assert_holds(result.path, samples, labels,
                  {"train": [f"s{i}" for i in range(7)], "test": [f"s{i}" for i in range(7, 10)]})


def test_no_labels_takes_every_file_in_natural_order(tmp_path):
    labels = {f"id-{i}": 0 for i in (1, 2, 10, 11, 3)}
    data, _, _, samples = make_npy_folder(str(tmp_path), labels, dtype="int16")
    result = from_npy_dir(data, None, tmp_path / "u.h5", no_labels=True)
    layout = h5feed.open_file(result.path)
    assert not layout.has_y and layout.n_classes is None
    with h5py.File(result.path) as f:
        assert list(f["ids"].asstr()[()]) == ["id-1", "id-2", "id-3", "id-10", "id-11"]
        assert f["x"].dtype == np.int16
    X = read_by_ids(result.path, ["id-10"], labels=False)
    np.testing.assert_array_equal(X[0], samples["id-10"])
    _assert_holds(result.path, samples, None)


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_shuffle_rows_stores_a_seeded_permutation_keeping_ids_and_labels_together(tmp_path, seed):
    labels = {f"id-{i}": i % 4 for i in range(50)}
    data, path_l, _, samples = make_npy_folder(str(tmp_path), labels, shape=(3,))
    result = from_npy_dir(data, path_l, tmp_path / "s.h5", shuffle_rows=True, seed=seed)
    with h5py.File(result.path) as f:
        ids = list(f["ids"].asstr()[()])
        x, y = f["x"][()], f["y"][()]
    expected = [list(labels)[i] for i in np.random.default_rng(seed).permutation(50)]
    assert ids == expected
    for row, sid in enumerate(ids):
        np.testing.assert_array_equal(x[row], samples[sid])
        assert y[row] == labels[sid]


@pytest.mark.slow
def test_two_workers_write_the_same_file_as_one(tmp_path):
    labels = {f"id-{i}": i % 5 for i in range(300)}
    data, path_l, _, samples = make_npy_folder(str(tmp_path), labels, shape=(64, 64))
    one = from_npy_dir(data, path_l, tmp_path / "one.h5")
    two = from_npy_dir(data, path_l, tmp_path / "two.h5", workers=2)
    assert h5feed.open_file(one.path).completion["sha256"] == h5feed.open_file(two.path).completion["sha256"]
    _assert_holds(two.path, samples, labels)


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["gzip", "lz4"])
def test_two_workers_compress_chunks_in_threads_into_the_same_rows(tmp_path, monkeypatch, compression):
    from h5feed import _codecs
    from h5feed.inspection import verify

    encoded = []
    real = _codecs.Pipeline.encode
    monkeypatch.setattr(_codecs.Pipeline, "encode", lambda self, chunk: encoded.append(1) or real(self, chunk))
    labels = {f"id-{i}": i % 5 for i in range(300)}
    data, path_l, _, _ = make_npy_folder(str(tmp_path), labels, shape=(64, 64))
    one = from_npy_dir(data, path_l, tmp_path / "one.h5", compression=compression)
    assert not encoded  # one worker: HDF5 compresses
    two = from_npy_dir(data, path_l, tmp_path / "two.h5", workers=2, compression=compression)
    assert encoded  # the writer's threads compressed whole chunks
    assert h5feed.open_file(one.path).completion["sha256"] == h5feed.open_file(two.path).completion["sha256"]
    assert verify(two.path).sound


def _pid(_: object) -> int:
    return os.getpid()


@pytest.mark.slow
def test_ordered_map_really_uses_other_processes_and_keeps_order():
    assert list(ordered_map(abs, range(-20, 0), workers=2)) == list(range(20, 0, -1))
    pids = set(ordered_map(_pid, range(40), workers=2))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


@pytest.mark.parametrize(
    "options, check",
    [
        ({"compression": "gzip"}, lambda c: c.compression == "gzip"),
        ({"compression": "lzf"}, lambda c: c.compression == "lzf"),
        ({"compression": "zstd"}, lambda c: c.compression == "zstd"),
        ({"compression": "lz4"}, lambda c: c.compression == "lz4"),
        ({"checksum": True}, lambda c: c.fletcher32),
        ({"chunk_rows": 3}, lambda c: c.chunks is not None and c.chunks[0] == 3),
    ],
    ids=["gzip", "lzf", "zstd", "lz4", "checksum", "chunk-rows"],
)
def test_storage_options_reach_the_file(tmp_path, options, check):
    labels = {f"id-{i}": i % 2 for i in range(10)}
    data, path_l, _, samples = make_npy_folder(str(tmp_path), labels)
    result = from_npy_dir(data, path_l, tmp_path / "o.h5", **options)
    assert check(h5feed.open_file(result.path).column("x"))
    X, _ = read_by_ids(result.path, ["id-9"])
    np.testing.assert_array_equal(X[0], samples["id-9"])
    _assert_holds(result.path, samples, labels)


def test_fortran_order_and_big_endian_samples_are_read_right(tmp_path):
    labels = {"a": 0, "b": 1}
    data, path_l, _, _ = make_npy_folder(str(tmp_path), labels, shape=(3, 4))
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(os.path.join(data, "a.npy"), np.asfortranarray(a))
    np.save(os.path.join(data, "b.npy"), (a + 1).astype(">f4"))
    X, _ = read_by_ids(from_npy_dir(data, path_l, tmp_path / "o.h5").path, ["a", "b"])
    np.testing.assert_array_equal(X[0], a)
    np.testing.assert_array_equal(X[1], a + 1)


def test_progress_callback_and_bar(tmp_path, capsys):
    labels = {f"id-{i}": 0 for i in range(5)}
    data, path_l, _, samples = make_npy_folder(str(tmp_path), labels)
    seen = []
    from_npy_dir(data, path_l, tmp_path / "o.h5", quiet=False, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5, 5)
    _assert_holds(tmp_path / "o.h5", samples, labels)
    err = capsys.readouterr().err
    assert "5/5 rows" in err and "rows/s" in err
    assert len(err.strip().splitlines()) == 1  # a short job off a terminal: its final line, once


# -- bad input: one clear message, exit with nothing left behind ------------------


def _write_npy_raw(path, header: dict, data: bytes = b"", version=(1, 0)):
    """A .npy file with a hand-made header (to forge bad ones)."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header) if version == (1, 0) else np.lib.format.write_array_header_2_0(fh, header)
        fh.write(data)


def _bad(kind, data, labels_path, partition_path):
    """Damage the tutorial source in one way; return from_npy_dir kwargs."""
    kw = {"labels": labels_path, "partition": partition_path}
    d = str(data)
    if kind == "shape":
        np.save(os.path.join(d, "id-3.npy"), np.zeros((32, 32, 32), np.float32))
    elif kind == "dtype":
        np.save(os.path.join(d, "id-3.npy"), np.zeros((32, 32, 32, 1), np.float64))
    elif kind == "truncated":
        path = os.path.join(d, "id-3.npy")
        with open(path, "rb") as fh:
            raw = fh.read()
        with open(path, "wb") as fh:
            fh.write(raw[: len(raw) // 2])
    elif kind == "not-npy":
        with open(os.path.join(d, "id-3.npy"), "wb") as fh:
            fh.write(b"hello, not numpy")
    elif kind == "empty-file":
        open(os.path.join(d, "id-3.npy"), "wb").close()
    elif kind == "object":
        np.save(os.path.join(d, "id-3.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "absurd-shape":
        _write_npy_raw(os.path.join(d, "id-3.npy"),
                       {"descr": "<f4", "fortran_order": False, "shape": (10**9, 10**9)}, b"\0" * 64)
    elif kind == "huge-header":
        with open(os.path.join(d, "id-3.npy"), "wb") as fh:
            fh.write(b"\x93NUMPY\x02\x00" + (10**6).to_bytes(4, "little") + b" " * 100)
    elif kind == "file-without-label":
        np.save(os.path.join(d, "stray.npy"), np.zeros((32, 32, 32, 1), np.float32))
    elif kind == "label-without-file":
        os.remove(os.path.join(d, "id-3.npy"))
    elif kind == "partition-id-without-file":
        kw["partition"] = {"train": ["id-1", "id-99"], "validation": ["id-4"]}
    elif kind == "overlapping-splits":
        kw["partition"] = {"train": ["id-1", "id-2", "id-4"], "validation": ["id-4", "id-2"]}
    elif kind == "non-integer-label":
        kw["labels"] = {**TUTORIAL_LABELS, "id-2": 1.5}
    elif kind == "bool-label":
        kw["labels"] = {**TUTORIAL_LABELS, "id-2": True}
    elif kind == "label-out-of-range":
        kw["labels"] = {**TUTORIAL_LABELS, "id-2": 7}
        kw["n_classes"] = 3
    elif kind == "negative-label":
        kw["labels"] = {**TUTORIAL_LABELS, "id-2": -1}
    elif kind == "duplicate-id":
        with open(labels_path) as fh:
            text = fh.read().replace('"id-4": 1', '"id-4": 1, "id-1": 2')
        with open(labels_path, "w") as fh:
            fh.write(text)
    elif kind == "empty-source":
        for name in os.listdir(d):
            os.remove(os.path.join(d, name))
        kw = {"labels": None, "no_labels": True}
    elif kind == "empty-labels":
        kw["labels"] = {}
    elif kind == "labels-not-json-object":
        with open(labels_path, "w") as fh:
            fh.write("[1, 2]")
    elif kind == "missing-folder":
        kw["data_dir"] = os.path.join(d, "nope")
    return kw


BAD_INPUTS = [
    ("shape", errors.SourceError, r"id-3\.npy \(sample 'id-3'\): expected shape \(32, 32, 32, 1\) and dtype float32 like the first sample 'id-1'\. Received: shape \(32, 32, 32\)"),
    ("dtype", errors.SourceError, r"sample 'id-3'.*Received: shape \(32, 32, 32, 1\), dtype float64"),
    ("truncated", errors.SourceError, r"id-3\.npy \(sample 'id-3'\): truncated"),
    ("not-npy", errors.SourceError, r"id-3\.npy \(sample 'id-3'\): not a \.npy file"),
    ("empty-file", errors.SourceError, r"id-3\.npy \(sample 'id-3'\): not a \.npy file"),
    ("object", errors.SourceError, r"sample 'id-3'\): holds an object \(pickled\) array; h5feed never loads pickles"),
    ("absurd-shape", errors.SourceError, r"sample 'id-3'\): truncated: the header declares shape \(1000000000, 1000000000\)"),
    ("huge-header", errors.SourceError, r"sample 'id-3'\): unreadable \.npy header"),
    ("file-without-label", errors.SourceError, r"1 file\(s\) have no label in .*labels\.json, e\.g\. 'stray\.npy'"),
    ("label-without-file", errors.SourceError, r"labels\.json: 1 labelled ID\(s\) have no file in .*data, e\.g\. 'id-3\.npy'"),
    ("partition-id-without-file", errors.SourceError, r"partition: 1 partition ID\(s\) have no sample in .*data, e\.g\. 'id-99'"),
    ("overlapping-splits", errors.SourceError, r"partition: 2 ID\(s\) are in more than one split, e\.g\. 'id-4', 'id-2'"),
    ("non-integer-label", errors.SourceError, r"labels: sample 'id-2': expected an integer class index as its label\. Received: 1\.5"),
    ("bool-label", errors.SourceError, r"sample 'id-2': expected an integer class index as its label\. Received: True"),
    ("label-out-of-range", errors.SourceError, r"sample 'id-2': class index 7 is outside \[0, 3\)"),
    ("negative-label", errors.SourceError, r"sample 'id-2': class index -1 is outside \[0, 3\)"),
    ("duplicate-id", errors.SourceError, r"labels\.json: 1 duplicate labelled ID\(s\), e\.g\. 'id-1'"),
    ("empty-source", errors.SourceError, r"data: no \.npy files \(an empty source\)"),
    ("empty-labels", errors.SourceError, r"labels: holds no labels \(an empty source\)"),
    ("labels-not-json-object", errors.SourceError, r"labels\.json: expected a JSON object \{ID: label\}"),
    ("missing-folder", errors.SourceError, r"nope: no such folder"),
]


def _snapshot(folder):
    from pathlib import Path

    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


@pytest.mark.parametrize("kind, error, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_named_and_leaves_no_output(tutorial, kind, error, message):
    data, labels, partition, _, out = tutorial
    kw = _bad(kind, data, labels, partition)
    data_dir = kw.pop("data_dir", data)
    before = _snapshot(data)
    with pytest.raises(error, match=message):
        from_npy_dir(data_dir, out=out / "data.h5", **kw)
    assert leftovers(out) == []
    assert _snapshot(data) == before  # sources are only ever read


def test_unreadable_file_is_named(tutorial, monkeypatch):
    data, labels, partition, _, out = tutorial
    real_open = open

    def refuse(file, *args, **kwargs):  # chmod 0 does not stop root
        if str(file).endswith("id-2.npy"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(errors.SourceError, match=r"id-2\.npy \(sample 'id-2'\): cannot read: Permission denied"):
        from_npy_dir(data, labels, out / "data.h5")
    assert leftovers(out) == []


@pytest.mark.parametrize(
    "sample_id, why",
    [
        ("../secret", "holds a path separator"),
        ("a/b", "holds a path separator"),
        ("a\\b", "holds a path separator"),
        ("/etc/passwd", "holds a path separator"),
        ("..", "names a folder"),
        (".", "names a folder"),
        ("", "it is empty"),
        ("bad\x00id", "control character"),
        ("tab\tid", "control character"),
    ],
    ids=["dotdot", "slash", "backslash", "absolute", "parent", "current", "empty", "nul", "tab"],
)
def test_ids_that_would_leave_data_dir_are_refused_before_any_file_is_opened(tmp_path, monkeypatch, sample_id, why):
    data, path_l, _, _ = make_npy_folder(str(tmp_path), {"ok": 0})
    opened = []
    real_open = open

    def spy(file, *args, **kwargs):
        if str(file).endswith(".npy"):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(errors.InvalidSampleIDError, match=rf"invalid sample ID {_re(repr(sample_id))}: .*{why}"):
        from_npy_dir(data, {"ok": 0, sample_id: 1}, tmp_path / "o.h5")
    with pytest.raises(errors.InvalidSampleIDError, match=r"partition: invalid sample ID"):
        from_npy_dir(data, {"ok": 0}, tmp_path / "o.h5", partition={"train": ["ok", sample_id]})
    assert opened == []
    assert not (tmp_path / "o.h5").exists()


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_labels_and_no_labels_are_exclusive(tutorial):
    data, labels, _, _, out = tutorial
    with pytest.raises(ValueError, match="labels are required"):
        from_npy_dir(data, None, out / "o.h5")
    with pytest.raises(ValueError, match="not both"):
        from_npy_dir(data, labels, out / "o.h5", no_labels=True)
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        from_npy_dir(data, labels, out / "o.h5", workers=0)
    assert leftovers(out) == []


def test_existing_output_is_kept_unless_overwrite(tutorial):
    data, labels, _, samples, out = tutorial
    (out / "data.h5").write_bytes(b"precious")
    with pytest.raises(errors.WriterError, match="already exists"):
        from_npy_dir(data, labels, out / "data.h5")
    assert (out / "data.h5").read_bytes() == b"precious"
    from_npy_dir(data, labels, out / "data.h5", overwrite=True)
    assert h5feed.open_file(out / "data.h5").n_rows == 4
    _assert_holds(out / "data.h5", samples, TUTORIAL_LABELS)


def test_json_partition_in_a_file_and_split_order(tutorial):
    data, labels, partition, samples, out = tutorial
    with open(partition, "w") as fh:
        json.dump({"validation": ["id-4"], "train": ["id-3", "id-1"]}, fh)
    result = from_npy_dir(data, labels, out / "d.h5", partition=partition)
    assert dict(h5feed.open_file(result.path).splits) == {"train": 2, "validation": 1}
    _assert_holds(result.path, samples, TUTORIAL_LABELS, {"train": ["id-1", "id-3"], "validation": ["id-4"]})


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_bad_sample_deep_in_the_folder_stops_the_conversion_cleanly(tmp_path, workers):
    labels = {f"id-{i}": i % 3 for i in range(100)}
    data, path_l, _, _ = make_npy_folder(str(tmp_path), labels, shape=(32, 32, 32, 1))  # 32 rows a block
    np.save(os.path.join(data, "id-70.npy"), np.zeros((32, 32, 32, 2), np.float32))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(errors.SourceError, match=r"id-70\.npy \(sample 'id-70'\): expected shape"):
        from_npy_dir(data, path_l, out / "o.h5", workers=workers)
    assert leftovers(out) == []


def test_a_symlink_out_of_data_dir_is_an_invalid_id_before_any_file_is_opened(tmp_path, monkeypatch):
    data, path_l, _, _ = make_npy_folder(str(tmp_path), {"a": 0, "b": 1})
    outside = tmp_path / "secret.npy"
    np.save(outside, np.zeros((4, 3), np.float32))
    os.remove(os.path.join(data, "b.npy"))
    os.symlink(outside, os.path.join(data, "b.npy"))
    os.symlink(os.path.join(data, "a.npy"), os.path.join(data, "c.npy"))  # a link inside is fine
    opened = []
    real_open = open

    def spy(file, *args, **kwargs):
        if str(file).endswith(".npy"):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(errors.InvalidSampleIDError, match=r"invalid sample ID 'b': 'b\.npy' is a symbolic link to .*secret\.npy', outside the data folder"):
        from_npy_dir(data, None, tmp_path / "o.h5", no_labels=True)
    assert opened == [] and not (tmp_path / "o.h5").exists()
    monkeypatch.undo()
    os.remove(os.path.join(data, "b.npy"))
    assert from_npy_dir(data, None, tmp_path / "o.h5", no_labels=True).rows == 2
    a = np.load(os.path.join(data, "a.npy"))
    _assert_holds(tmp_path / "o.h5", {"a": a, "c": a}, None)  # c: the link inside, read through


@pytest.mark.parametrize("problem", ["missing-folder", "exists"])
def test_an_unwritable_output_fails_before_any_input_is_read(tmp_path, monkeypatch, problem):
    out = tmp_path / "nope" / "o.h5" if problem == "missing-folder" else tmp_path / "o.h5"
    if problem == "exists":
        out.write_bytes(b"keep")
    read = []
    real_open = open

    def spy(file, *args, **kwargs):
        read.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(errors.WriterError, match="does not exist" if problem == "missing-folder" else "already exists"):
        from_npy_dir(tmp_path / "no-such-data", tmp_path / "no-such-labels.json", out)
    assert read == []
