"""``h5feed convert h5`` / ``from_h5``: HDF5 files as other tools write them.

Each source is made the way its tool makes it (h5py scripts with nested
groups, Keras-era X/y files with one-hot labels and per-split arrays,
MATLAB v7.3 files with their 512-byte header and transposed arrays,
hdf5plugin-compressed files), converted, and read back row by row through
the sample IDs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

import h5feed
import h5feed.inspection
from h5feed import errors
from h5feed.cli import main
from h5feed.convert import from_h5

from convert_helpers import leftovers

N = 60


def _x(n=N, shape=(5, 4), dtype=np.float32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(dtype)
    x.reshape(n, -1)[:, 0] = np.arange(n)  # each row names itself
    return x


def _by_id(path, *, allow_virtual=False):
    """``{ID: (x row, y row or None)}`` of an h5feed file, read with h5py."""
    h5feed.open_file(path, allow_virtual=allow_virtual)  # a valid h5feed file
    with h5py.File(path) as f:
        ids = f["ids"].asstr()[()].tolist()
        x = f["x"][()]
        y = f["y"][()] if "y" in f else [None] * len(ids)
    return {sid: (x[i], y[i]) for i, sid in enumerate(ids)}


def _folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return out


# -- sources as tools write them ------------------------------------------------


def test_keras_hdf5matrix_file_round_trips_row_by_row(tmp_path):
    # keras.utils.HDF5Matrix read files like this: X and y at the root.
    x = np.random.default_rng(1).integers(0, 255, (N, 28, 28), dtype=np.uint8)
    y = np.arange(N) % 10
    with h5py.File(tmp_path / "mnist.h5", "w") as f:
        f["X"] = x
        f["y"] = y
    result = from_h5(tmp_path / "mnist.h5", tmp_path / "out.h5", x="X", y="y")
    assert result.rows == N and result.path == str(tmp_path / "out.h5")
    layout = h5feed.open_file(result.path)
    assert layout.n_classes == 10 and layout.column("x").dtype == np.uint8
    assert layout.column("x").offset is not None  # contiguous: memory-mapped when read
    rows = _by_id(result.path)
    assert list(rows) == [str(i) for i in range(N)]  # IDs: the row numbers
    for i in range(N):
        np.testing.assert_array_equal(rows[str(i)][0], x[i])
        assert rows[str(i)][1] == y[i]


def test_nexus_tree_chunked_gzip_with_onehot_labels_and_class_names(tmp_path):
    x = _x(shape=(6, 5))
    labels = np.arange(N) % 3
    onehot = np.eye(3, dtype=np.float32)[labels]  # keras.utils.to_categorical
    with h5py.File(tmp_path / "scan.nxs", "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.create_dataset("data", data=x, chunks=(8, 6, 5), compression="gzip", shuffle=True)
        labels_dset = entry.create_dataset("sample/labels", data=onehot, chunks=(16, 3), compression="lzf")
        labels_dset.attrs["class_names"] = np.array(["cat", "dog", "owl"], dtype=h5py.string_dtype())
        entry.create_dataset("sample/names", data=[f"scan-{i:03d}" for i in range(N)], dtype=h5py.string_dtype())
    path = from_h5(tmp_path / "scan.nxs", tmp_path / "o.h5", x="/entry/data/data", y="entry/sample/labels",
                   ids="/entry/sample/names").path
    layout = h5feed.open_file(path)
    assert layout.n_classes == 3 and layout.class_names == ("cat", "dog", "owl")
    assert layout.column("y").dtype == np.int64 and layout.column("y").shape == (N,)
    rows = _by_id(path)
    for i in range(N):
        got_x, got_y = rows[f"scan-{i:03d}"]
        np.testing.assert_array_equal(got_x, x[i])
        assert got_y == labels[i]


def test_per_split_arrays_become_one_file_with_splits(tmp_path):
    # The common Keras-era layout (CIFAR-10's y is (N, 1)).
    x_train, x_test = _x(40, (3, 3, 2)), _x(20, (3, 3, 2), seed=1)
    y_train, y_test = (np.arange(40) % 4)[:, None], (np.arange(20) % 4)[:, None]
    with h5py.File(tmp_path / "cifar.h5", "w") as f:
        f["X_train"], f["y_train"], f["X_test"], f["y_test"] = x_train, y_train, x_test, y_test
    path = from_h5(tmp_path / "cifar.h5", tmp_path / "o.h5", x={"train": "X_train", "test": "X_test"},
                   y={"train": "y_train", "test": "y_test"}).path
    layout = h5feed.open_file(path)
    assert dict(layout.splits) == {"train": 40, "test": 20} and layout.n_classes == 4
    rows = _by_id(path)
    for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        for i in range(len(xs)):
            np.testing.assert_array_equal(rows[f"{split}/{i}"][0], xs[i])
            assert rows[f"{split}/{i}"][1] == ys[i, 0]
    with h5py.File(path) as f:
        ids = f["ids"].asstr()[()]
        assert list(ids[f["splits/test"][()]]) == [f"test/{i}" for i in range(20)]


def test_per_split_ids_must_be_unique_across_splits(tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["X_a"], f["X_b"] = _x(5), _x(4)
        f["i_a"], f["i_b"] = np.arange(5), np.arange(10, 14)
    from_h5(tmp_path / "s.h5", tmp_path / "ok.h5", x={"a": "X_a", "b": "X_b"}, ids={"a": "i_a", "b": "i_b"})
    assert set(_by_id(tmp_path / "ok.h5")) == {"0", "1", "2", "3", "4", "10", "11", "12", "13"}
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f["i_b"][2] = 3
    with pytest.raises(errors.SourceError, match=r"s\.h5:/i_b row 2: sample IDs must be unique; '3' is also at .*s\.h5:/i_a row 3"):
        from_h5(tmp_path / "s.h5", tmp_path / "bad.h5", x={"a": "X_a", "b": "X_b"}, ids={"a": "i_a", "b": "i_b"})
    assert not (tmp_path / "bad.h5").exists()


def _write_matlab(path, **arrays):
    """A MATLAB v7.3 file: HDF5 behind a 512-byte header, arrays transposed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in arrays.items():
            f[name] = np.ascontiguousarray(value.T)
            f[name].attrs["MATLAB_class"] = np.bytes_("double" if value.dtype == np.float64 else "single")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def test_matlab_v73_transposed_arrays_with_sample_axis(tmp_path):
    images = _x(N, (4, 3))  # MATLAB: N x 4 x 3
    features = np.random.default_rng(2).standard_normal((N, 7))  # MATLAB: N x 7 (double)
    labels = (np.arange(N) % 5).astype(np.float64)[:, None]  # MATLAB: N x 1 double
    _write_matlab(tmp_path / "data.mat", images=images, features=features, labels=labels)
    with h5py.File(tmp_path / "data.mat") as f:
        assert f["images"].shape == (3, 4, N) and f["labels"].shape == (1, N)

    path = from_h5(tmp_path / "data.mat", tmp_path / "img.h5", x="images", y="labels", sample_axis=-1,
                   label_type="index").path
    assert h5feed.open_file(path).n_classes == 5
    rows = _by_id(path)
    for i in range(N):
        # The other axes keep HDF5's order: each sample is MATLAB's transposed.
        np.testing.assert_array_equal(rows[str(i)][0], images[i].T)
        assert rows[str(i)][1] == i % 5

    path = from_h5(tmp_path / "data.mat", tmp_path / "feat.h5", x="features", y="labels", sample_axis=1).path
    rows = _by_id(path)
    assert h5feed.open_file(path).n_classes is None  # MATLAB's doubles: targets unless label_type="index"
    for i in range(N):
        np.testing.assert_array_equal(rows[str(i)][0], features[i])
        np.testing.assert_array_equal(rows[str(i)][1], labels[i])


@pytest.mark.parametrize("kind", ["int64", "uint32", "vlen-str", "fixed-bytes"])
def test_integer_and_string_ids(tmp_path, kind):
    values = {
        "int64": np.arange(N, dtype=np.int64) * 7 - 100,
        "uint32": np.arange(N, dtype=np.uint32) + 4_000_000_000,
        "vlen-str": np.array([f"sämple-{i}" for i in range(N)], dtype=object),
        "fixed-bytes": np.array([f"s{i}".encode() for i in range(N)], dtype="S4"),
    }[kind]
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["x"] = _x()
        f.create_dataset("ids", data=values, dtype=h5py.string_dtype() if kind == "vlen-str" else values.dtype)
    path = from_h5(tmp_path / "s.h5", tmp_path / "o.h5", x="x", ids="ids").path
    want = [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]
    rows = _by_id(path)
    assert list(rows) == want
    for i, sid in enumerate(want):
        assert rows[sid][0].flat[0] == i


@pytest.mark.parametrize("storage", ["contiguous", "chunked", "gzip", "lzf", "szip", "checksum", "big-endian"])
def test_storage_h5py_reads(tmp_path, storage):
    kwargs = {
        "contiguous": {}, "chunked": {"chunks": (7, 5, 4)}, "gzip": {"compression": "gzip", "compression_opts": 9},
        "lzf": {"compression": "lzf"}, "szip": {"compression": "szip"}, "checksum": {"fletcher32": True},
        "big-endian": {},
    }[storage]
    if storage == "szip" and not h5py.h5z.filter_avail(h5py.h5z.FILTER_SZIP):
        pytest.skip("this h5py's HDF5 has no szip")
    x = _x().astype(">f8" if storage == "big-endian" else np.float32)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("x", data=x, **kwargs)
        f.create_dataset("y", data=np.linspace(0, 1, N), **{**kwargs, **({"chunks": (7,)} if "chunks" in kwargs else {})})
    path = from_h5(tmp_path / "s.h5", tmp_path / "o.h5", x="x", y="y").path
    rows = _by_id(path)
    for i in range(N):
        np.testing.assert_array_equal(rows[str(i)][0], x[i])
    assert h5feed.open_file(path).column("x").dtype == np.dtype(x.dtype.newbyteorder("="))


PLUGINS = ["Blosc", "Zstd", "LZ4", "Bitshuffle"]


@pytest.mark.parametrize("codec", PLUGINS)
def test_hdf5plugin_filters(tmp_path, codec):
    hdf5plugin = pytest.importorskip("hdf5plugin", reason="the codecs extra: pip install 'h5feed[codecs]'")
    x = _x(shape=(16, 16))
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("data", data=x, chunks=(10, 16, 16), **getattr(hdf5plugin, codec)())
    rows = _by_id(from_h5(tmp_path / "s.h5", tmp_path / "o.h5", x="data").path)
    for i in range(N):
        np.testing.assert_array_equal(rows[str(i)][0], x[i])


UNAVAILABLE = r"""
import sys
sys.modules["hdf5plugin"] = None  # as if the codecs extra were not installed
from h5feed.cli import main
sys.exit(main(sys.argv[1:], _isolated=False))  # the writing child would import hdf5plugin again
"""


def test_an_unavailable_filter_names_itself_and_the_extra(tmp_path):
    hdf5plugin = pytest.importorskip("hdf5plugin", reason="needed to write the source")
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("data", data=_x(), chunks=(10, 5, 4), **hdf5plugin.Zstd())
    out = _folder(tmp_path)
    env = dict(os.environ, HDF5_PLUGIN_PATH=str(tmp_path / "no-plugins"))
    proc = subprocess.run([sys.executable, "-c", UNAVAILABLE, "convert", "h5", str(tmp_path / "s.h5"), "--x", "data",
                           "-o", str(out / "o.h5"), "-q"], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)  # not the checkout, whose h5feed/ lacks h5feed.convert
    assert proc.returncode == 1, proc.stderr
    assert "s.h5:/data (x): is compressed with the HDF5 filter 'Zstd' (filter ID 32015)" in proc.stderr
    assert 'pip install "h5feed[codecs]"' in proc.stderr
    assert leftovers(out) == []


def test_shuffle_shard_and_partition(tmp_path):
    x, y = _x(), np.arange(N) % 3
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(9, 5, 4), compression="gzip")
        f["y"] = y
    part = {"train": [str(i) for i in range(0, N, 2)], "validation": [str(i) for i in range(1, N, 2)]}
    path = from_h5(tmp_path / "s.h5", tmp_path / "sh.h5", x="x", y="y", shuffle_rows=True, seed=4,
                   partition=part, compression="lzf").path
    with h5py.File(path) as f:
        ids = f["ids"].asstr()[()].tolist()
        order = np.random.default_rng(4).permutation(N)
        assert ids == [str(i) for i in order]
        np.testing.assert_array_equal(f["x"][()], x[order])
        assert sorted(ids[r] for r in f["splits/validation"][()]) == sorted(part["validation"])
    shards = [from_h5(tmp_path / "s.h5", tmp_path / f"p{k}.h5", x="x", y="y", shard=(k, 3)).path for k in range(3)]
    seen = {}
    for p in shards:
        seen.update(_by_id(p))
    assert sorted(seen, key=int) == [str(i) for i in range(N)]
    for sid, (row, label) in seen.items():
        np.testing.assert_array_equal(row, x[int(sid)])
        assert label == y[int(sid)]


def test_per_split_arrays_in_shards_keep_their_splits(tmp_path):
    x_train, x_test = _x(25), _x(11, seed=1)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["X_train"], f["X_test"] = x_train, x_test
    splits = {}
    for k in range(2):
        path = from_h5(tmp_path / "s.h5", tmp_path / f"p{k}.h5", x={"train": "X_train", "test": "X_test"},
                       shard=(k, 2), shuffle_rows=True).path
        with h5py.File(path) as f:
            ids = f["ids"].asstr()[()]
            for name in ("train", "test"):
                rows = f[f"splits/{name}"][()]
                splits.setdefault(name, []).extend(ids[rows].tolist())
                for sid, row in zip(ids[rows], f["x"][()][rows]):
                    source = x_train if name == "train" else x_test
                    assert sid.startswith(f"{name}/")
                    np.testing.assert_array_equal(row, source[int(sid.split("/")[1])])
    assert sorted(splits["train"]) == sorted(f"train/{i}" for i in range(25))
    assert sorted(splits["test"]) == sorted(f"test/{i}" for i in range(11))


def test_cli_converts_per_split_arrays_and_prints_the_result(tmp_path, capsys):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["X_train"], f["X_test"] = _x(30), _x(10, seed=1)
        f["y_train"], f["y_test"] = np.eye(3)[np.arange(30) % 3], np.eye(3)[np.arange(10) % 3]
    out = _folder(tmp_path) / "o.h5"
    argv = ["convert", "h5", str(tmp_path / "s.h5"), "--x", "train=X_train", "--x", "test=X_test",
            "--y", "train=y_train", "--y", "test=/y_test", "--class-names", "a,b,c", "-o", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == f"wrote {out} (40 rows)"
    assert "40/40 rows" in captured.err
    layout = h5feed.open_file(out)
    assert dict(layout.splits) == {"train": 30, "test": 10} and layout.class_names == ("a", "b", "c")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--x", "train=X", "--x", "X"], "give one PATH, or SPLIT=PATH for every split"),
        (["--x", "X", "--x", "Y"], "names one dataset, or one per split"),
        (["--x", "a=X", "--y", "y"], "x names one dataset per split, so y must too"),
        (["--x", "X", "--class-names", "a,b"], "need labels"),
        (["--x", "X", "--link", "--shuffle-rows"], r"shuffle_rows \(--shuffle-rows\) cannot apply"),
        (["--x", "a=X", "--x", "b=X", "--link"], "per-split arrays are joined by copying"),
        (["--x", "a=X", "--partition", "p.json"], "partition cannot be combined"),
    ],
    ids=["mixed-splits", "two-paths", "y-not-per-split", "names-without-y", "link-shuffle", "link-per-split",
         "partition-per-split"],
)
def test_cli_bad_usage_exits_2(tmp_path, capsys, argv, message):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["X"] = _x()
    out = _folder(tmp_path)
    assert main(["convert", "h5", str(tmp_path / "s.h5"), *argv, "-o", str(out / "o.h5")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("h5feed convert h5: error: ") and re.search(message, last), last
    assert leftovers(out) == []


# -- link instead of copy ---------------------------------------------------------


@pytest.fixture
def linkable(tmp_path):
    x = _x(shape=(30, 20))
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("entry/data/data", data=x)
        f.create_dataset("entry/data/chunked", data=x, chunks=(7, 30, 20), compression="gzip")
        f["entry/labels"] = np.eye(4, dtype=np.float32)[np.arange(N) % 4]
    return tmp_path / "big.h5", x


def test_link_stores_ids_labels_splits_and_refers_to_x(linkable):
    src, x = linkable
    out = src.parent / "linked.h5"
    part = {"train": [str(i) for i in range(45)], "test": [str(i) for i in range(45, N)]}
    from_h5(src, out, x="entry/data/data", y="entry/labels", link=True, partition=part)
    with h5py.File(out) as f:
        assert f["x"].is_virtual and not f["ids"].is_virtual and not f["y"].is_virtual
        assert [(s.file_name, s.dset_name) for s in f["x"].virtual_sources()] == [("big.h5", "/entry/data/data")]
        assert json.loads(f.attrs["h5feed_complete"])["parts"] == ["big.h5"]
    assert out.stat().st_size < x.nbytes / 5
    with pytest.raises(errors.UntrustedFileError, match="allow_virtual=True"):
        h5feed.open_file(out)
    layout = h5feed.open_file(out, allow_virtual=True)
    assert layout.n_classes == 4 and dict(layout.splits) == {"train": 45, "test": 15}
    rows = _by_id(out, allow_virtual=True)
    for i in range(N):
        np.testing.assert_array_equal(rows[str(i)][0], x[i])
        assert rows[str(i)][1] == i % 4
    assert h5feed.inspection.verify(out, allow_virtual=True).sound


@pytest.mark.parametrize("dataset, mapped", [("entry/data/data", True), ("entry/data/chunked", False)],
                         ids=["contiguous", "chunked-gzip"])
def test_sequence_reads_linked_rows_from_the_source(linkable, dataset, mapped):
    H5Sequence = pytest.importorskip("h5feed.sequence", reason="H5Sequence needs Keras").H5Sequence
    src, x = linkable
    out = src.parent / f"linked-{mapped}.h5"
    from_h5(src, out, x=dataset, y="entry/labels", link=True)
    seq = H5Sequence(out, batch_size=8, seed=2, allow_virtual=True, one_hot=False)
    with seq:
        got = np.concatenate([seq[i][0] for i in range(len(seq))])
        # Read straight from the source: memory-mapped where it is contiguous.
        parts = seq._reader._parts
        assert list(parts) == [str(src)]
        assert bool(parts[str(src)]._maps) is mapped
    rows = got[:, 0, 0].astype(int)
    assert sorted(rows.tolist()) == list(range(N))
    np.testing.assert_array_equal(got, x[rows])


def test_verify_notices_a_source_changed_after_linking(linkable, capsys):
    src, _ = linkable
    out = src.parent / "linked.h5"
    from_h5(src, out, x="/entry/data/data", y="entry/labels", link=True)
    with h5py.File(src, "r+") as f:
        f["entry/data/data"][7, 1, 1] = 1234.0
    report = h5feed.inspection.verify(out, allow_virtual=True)
    assert [p.split(":")[0] for p in report.problems] == ["x"]
    assert "differs from the completion record" in report.problems[0]
    assert main(["verify", str(out), "--allow-virtual", "-q"]) == 1


def test_cli_link(linkable, capsys):
    src, _ = linkable
    out = src.parent / "cli.h5"
    assert main(["convert", "h5", str(src), "--x", "/entry/data/data", "--link", "-o", str(out), "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "--allow-virtual" in lines[-2] and lines[-1] == f"wrote {out} ({N} rows)"
    assert main(["info", str(out), "--allow-virtual"]) == 0
    assert "virtual" in capsys.readouterr().out


def _unknown_plugin_filter():
    """An hdf5plugin filter that h5feed's readers do not accept, or None."""
    hdf5plugin = pytest.importorskip("hdf5plugin", reason="needed to write the source")
    from h5feed.layout import KNOWN_FILTERS

    for name, make in [("SZ3", lambda: hdf5plugin.SZ3(absolute=1e-3)), ("Sperr", lambda: hdf5plugin.Sperr()),
                       ("BZip2", lambda: hdf5plugin.BZip2()), ("Blosc2", lambda: hdf5plugin.Blosc2())]:
        options = make()
        if options["compression"] not in KNOWN_FILTERS:
            return name, options
    return None


def test_link_refuses_what_it_cannot_refer_to(linkable, tmp_path):
    src, x = linkable
    with h5py.File(src, "a") as f:
        f["matlab"] = np.ascontiguousarray(np.moveaxis(x, 0, -1))
        f["virtual"] = h5py.ExternalLink("big.h5", "/entry/data/data")  # an external link to itself
    other = tmp_path / "elsewhere"
    other.mkdir()
    cases = [
        (dict(out=other / "o.h5", x="entry/data/data"), r"must lie in the output's folder .*elsewhere"),
        (dict(x="matlab", sample_axis=-1), r"its samples lie along axis 2; a linked x must have them on the first axis"),
    ]
    found = _unknown_plugin_filter()
    if found is not None:
        with h5py.File(src, "a") as f:
            f.create_dataset("lossy", data=x, chunks=(10, 30, 20), **found[1])
        cases.append((dict(x="lossy"), r"uses HDF5 filter \d+, which h5feed does not read.*convert instead"))
    for kwargs, message in cases:
        out = kwargs.pop("out", src.parent / "refused.h5")
        with pytest.raises(errors.SourceError, match=message):
            from_h5(src, out, link=True, **kwargs)
        assert not out.exists()
    with pytest.raises(ValueError, match="compression.*cannot apply"):
        from_h5(src, src.parent / "refused.h5", x="entry/data/data", link=True, compression="gzip")
    # ... and without --link each converts.
    from_h5(src, other / "copy.h5", x="matlab", sample_axis=-1)


# -- every bad input: one message, exit 1, no output --------------------------------


def _source(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            if isinstance(value, dict):
                f.create_dataset(name, **value)
            else:
                f[name] = value
    return path


def _bad_sources(tmp_path):
    """(id, source file, from_h5 keyword arguments, message) for each bad input."""
    x = _x()
    cases = []

    def add(case_id, kwargs, message, **datasets):
        path = _source(tmp_path / f"{case_id}.h5", **datasets)
        cases.append((case_id, path, kwargs, message))

    add("missing-path", dict(x="/entry/data"), r"missing-path\.h5:/entry/data \(x\): no such dataset in the file "
        r"\(no '/entry'\)\. The file holds:\n  /data/x  Dataset \{60, 5, 4\} float32\n  /y +Dataset \{60\} int64",
        **{"data/x": x, "y": np.zeros(N, np.int64)})
    add("group", dict(x="data"), r"group\.h5:/data \(x\): is a group, expected a dataset\. The group holds:\n  /data/x",
        **{"data/x": x})
    add("y-rows", dict(x="x", y="y"), r"y-rows\.h5: /y \(y\) has 59 rows but /x \(x\) has 60; expected one label per sample",
        x=x, y=np.zeros(N - 1, np.int64))
    add("ids-rows", dict(x="x", ids="ids"), r"/ids \(ids\) has 61 rows but /x \(x\) has 60; expected one ID per sample",
        x=x, ids=np.arange(N + 1))
    add("string-x", dict(x="x"), r"string-x\.h5:/x \(x\): expected numeric samples .* Received: dtype string",
        x={"data": [f"s{i}" for i in range(N)], "dtype": h5py.string_dtype()})
    add("compound-x", dict(x="x"), r"compound-x\.h5:/x \(x\): expected numeric samples .* Received: dtype compound",
        x=np.zeros(N, dtype=[("a", "f4"), ("b", "i4")]))
    add("object-x", dict(x="x"), r"object-x\.h5:/x \(x\): expected numeric samples .* Received: dtype object",
        x={"shape": (N,), "dtype": h5py.ref_dtype})
    not_onehot = np.eye(3)[np.arange(N) % 3]
    not_onehot[13] = [1.0, 1.0, 0.0]
    add("not-onehot", dict(x="x", y="y", label_type="onehot"),
        r"not-onehot\.h5:/y row 13: expected a one-hot row \(one 1, the rest 0\)\. Received: \[1\.0, 1\.0, 0\.0\]",
        x=x, y=not_onehot)
    add("nan-label", dict(x="x", y="y", label_type="index"),
        r"nan-label\.h5:/y row 4: expected a class index \(an integer >= 0\)\. Received: nan \(NaN",
        x=x, y=np.where(np.arange(N) == 4, np.nan, 1.0))
    add("negative-label", dict(x="x", y="y"),
        r"negative-label\.h5:/y row 9: expected a class index \(an integer >= 0\)\. Received: -1 \(negative",
        x=x, y=np.where(np.arange(N) == 9, -1, 2))
    add("label-out-of-range", dict(x="x", y="y", class_names=["a", "b"]),
        r"label-out-of-range\.h5:/y row 2: expected a class index in \[0, 2\)\. Received: 2",
        x=x, y=np.arange(N) % 3)
    dupes = [f"u{i}" for i in range(N)]
    dupes[7] = "u1"
    add("duplicate-ids", dict(x="x", ids="ids"),
        r"duplicate-ids\.h5:/ids row 7: sample IDs must be unique; 'u1' is also at .*:/ids row 1 \(1 repeated",
        x=x, ids={"data": dupes, "dtype": h5py.string_dtype()})
    add("empty-id", dict(x="x", ids="ids"), r"empty-id\.h5:/ids row 3: expected a non-empty sample ID",
        x=x, ids={"data": [f"s{i}" if i != 3 else "" for i in range(N)], "dtype": h5py.string_dtype()})
    add("float-ids", dict(x="x", ids="ids"), r"float-ids\.h5:/ids: expected one sample ID per row, a string or an integer",
        x=x, ids=np.linspace(0, 1, N))
    add("empty-x", dict(x="x"), r"empty-x\.h5:/x \(x\): has no rows \(an empty source\)", x=np.zeros((0, 3), np.float32))
    add("scalar-x", dict(x="x"), r"scalar-x\.h5:/x \(x\): expected an array with one row per sample\. Received: a scalar",
        x=np.float32(1))
    add("sample-axis", dict(x="x", sample_axis=3),
        r"sample-axis\.h5:/x \(x\): expected sample_axis in \[-3, 3\) for a dataset of shape \(60, 5, 4\)\. Received: 3",
        x=x)
    add("value-with-names", dict(x="x", y="y", class_names=["a"]), r"class_names and n_classes need class labels",
        x=x, y=np.linspace(0, 1, N))
    return cases


def _bad_case_ids():
    return ["missing-path", "group", "y-rows", "ids-rows", "string-x", "compound-x", "object-x", "not-onehot",
            "nan-label", "negative-label", "label-out-of-range", "duplicate-ids", "empty-id", "float-ids", "empty-x",
            "scalar-x", "sample-axis", "value-with-names"]


@pytest.mark.parametrize("case_id", _bad_case_ids())
def test_bad_sources_are_named_and_leave_no_output(tmp_path, case_id):
    cases = {c[0]: c for c in _bad_sources(tmp_path)}
    _, path, kwargs, message = cases[case_id]
    out = _folder(tmp_path)
    before = path.read_bytes()
    with pytest.raises(errors.SourceError, match=message):
        from_h5(path, out / "o.h5", **kwargs)
    assert leftovers(out) == []
    assert path.read_bytes() == before  # the source is only read


def test_bad_sources_exit_1_on_the_command_line(tmp_path, capsys):
    for case_id, path, kwargs, message in _bad_sources(tmp_path):
        argv = ["convert", "h5", str(path), "--x", kwargs["x"], "-q", "-o", str(_folder(tmp_path) / "o.h5")]
        for key, flag in (("y", "--y"), ("ids", "--ids"), ("label_type", "--label-type"), ("sample_axis", "--sample-axis")):
            if key in kwargs:
                argv += [flag, str(kwargs[key])]
        if "class_names" in kwargs:
            argv += ["--class-names", ",".join(kwargs["class_names"])]
        assert main(argv) == 1, case_id
        err = capsys.readouterr().err
        assert err.startswith("h5feed convert: error: ") and str(path) in err, (case_id, err)
        assert leftovers(_folder(tmp_path)) == [], case_id


def test_not_hdf5_and_missing_sources(tmp_path):
    out = _folder(tmp_path)
    (tmp_path / "notes.txt").write_text("not HDF5\n" * 20)
    (tmp_path / "old.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    cases = [
        (tmp_path / "notes.txt", r"notes\.txt: not an HDF5 file .*Expected an HDF5 file"),
        (tmp_path / "old.mat", r"old\.mat: not an HDF5 file .*MATLAB \.mat file is HDF5 only when saved with -v7\.3"),
        (tmp_path / "nope.h5", r"nope\.h5: no such file"),
        (tmp_path, r"is a folder"),
    ]
    for src, message in cases:
        with pytest.raises(errors.SourceError, match=message):
            from_h5(src, out / "o.h5", x="x")
    assert leftovers(out) == []


@pytest.mark.parametrize("transposed", [False, True], ids=["rows-first", "matlab-transposed"])
def test_a_damaged_source_chunk_names_its_rows_and_leaves_no_output(tmp_path, transposed):
    """Rows read straight into the writer's buffer (sample axis 0) and rows
    read as arrays (another axis) fail alike: the source, the dataset, the
    rows, and nothing written."""
    x = _x(n=40)
    data = x.T if transposed else x
    src = tmp_path / "damaged.h5"
    with h5py.File(src, "w") as f:
        d = f.create_group("entry").create_dataset(
            "data", data=data, chunks=data.shape[:-1] + (10,) if transposed else (10, 5, 4), fletcher32=True)
        chunk = d.id.get_chunk_info(2)  # rows 20..29
    with open(src, "r+b") as fh:
        fh.seek(chunk.byte_offset + 8)
        fh.write(b"\xff\x00\xff\x00")
    before = src.read_bytes()
    out = _folder(tmp_path)
    kwargs = {"sample_axis": 2} if transposed else {}
    with pytest.raises(errors.ReadError, match=r"damaged\.h5:/entry/data: rows \d+\.\.\d+ cannot be read") as info:
        from_h5(src, out / "o.h5", x="entry/data", **kwargs)
    first, last = map(int, re.search(r"rows (\d+)\.\.(\d+)", str(info.value)).groups())
    assert first <= 20 and last >= 29
    assert leftovers(out) == []
    assert src.read_bytes() == before


def test_virtual_and_external_sources_are_refused_unless_allowed(tmp_path):
    x = _x()
    _source(tmp_path / "other.h5", x=x)
    vlayout = h5py.VirtualLayout(shape=x.shape, dtype=x.dtype)
    vlayout[:] = h5py.VirtualSource("other.h5", "x", shape=x.shape)
    raw = tmp_path / "raw.bin"
    x.tofile(raw)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_virtual_dataset("vds", vlayout)
        f["ext"] = h5py.ExternalLink("other.h5", "/x")
        f.create_dataset("extstore", shape=x.shape, dtype=x.dtype, external=[(str(raw), 0, x.nbytes)])
        f.create_group("grp")["inner"] = h5py.ExternalLink("other.h5", "/x")
    out = _folder(tmp_path)
    cases = [
        ("vds", r"s\.h5:/vds \(x\): is a virtual dataset: its data lives in other files \('other\.h5'\)"),
        ("ext", r"s\.h5:/ext \(x\): /ext is an external link to 'other\.h5':'/x', another file"),
        ("grp/inner", r"/grp/inner is an external link to 'other\.h5'"),
        ("extstore", r"s\.h5:/extstore \(x\): stores its data in external files"),
    ]
    for path, message in cases:
        with pytest.raises(errors.SourceError, match=message + r".*--allow-virtual"):
            from_h5(tmp_path / "s.h5", out / "o.h5", x=path)
        assert leftovers(out) == []
        result = from_h5(tmp_path / "s.h5", tmp_path / f"{path.replace('/', '-')}.h5", x=path, allow_virtual=True)
        rows = _by_id(result.path)
        np.testing.assert_array_equal(rows["7"][0], x[7])
    # A virtual source whose file is gone would read as zeros: refused even when allowed.
    os.remove(tmp_path / "other.h5")
    with pytest.raises(errors.SourceError, match=r"its virtual source 'other\.h5' is missing"):
        from_h5(tmp_path / "s.h5", out / "gone.h5", x="vds", allow_virtual=True)


def test_api_argument_errors(tmp_path):
    _source(tmp_path / "s.h5", x=_x())
    out = tmp_path / "o.h5"
    with pytest.raises(ValueError, match="label_type must be one of"):
        from_h5(tmp_path / "s.h5", out, x="x", y="x", label_type="one-hot")
    with pytest.raises(TypeError, match="sample_axis must be an int"):
        from_h5(tmp_path / "s.h5", out, x="x", sample_axis=True)
    with pytest.raises(TypeError, match="class_names must be a list of names"):
        from_h5(tmp_path / "s.h5", out, x="x", y="x", class_names="a,b")
    with pytest.raises(ValueError, match="y must name the same splits as x"):
        from_h5(tmp_path / "s.h5", out, x={"a": "x"}, y={"b": "x"})
    with pytest.raises(errors.SourceError, match="is the source"):
        from_h5(tmp_path / "s.h5", tmp_path / "s.h5", x="x", overwrite=True)
    assert not out.exists()


@pytest.mark.slow
def test_the_conversion_benchmark_has_the_hdf5_rows(tmp_path):
    from h5feed.benchmarks.convert_bench import format_rows, run_convert_bench

    rows = run_convert_bench(str(tmp_path), n_files=40, shape=(8, 8), n_images=0, repeats=1)
    by_name = {r["name"]: r for r in rows}
    baseline, ours = by_name["HDF5 file: h5py block copy (baseline)"], by_name["HDF5 file: from_h5"]
    assert baseline["samples_per_s"] > 0 and ours["samples_per_s"] > 0 and ours["target"] == 0.5
    assert by_name["HDF5 file: h5py block copy + fsync"]["target"] is None
    assert by_name["HDF5 file: SHA-256 of the same x rows"]["samples_per_s"] > 0
    memory = by_name["HDF5 file: peak memory added by converting"]
    assert memory["peak_mib_over_start"] >= 0 and memory["dataset_mib"] > 0
    assert "HDF5 file: from_h5" in format_rows(rows)
