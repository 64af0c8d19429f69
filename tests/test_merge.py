"""h5feed merge: parts made by separate processes, joined virtually or copied."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import h5feed
from h5feed import errors
from h5feed.cli import main
from h5feed.merge import merge_files
from h5feed._parts import PartsReader, make_reader
from h5feed.reader import Reader

# Writes part K of N: rows K*M .. K*M+M-1 of one dataset, x[i, 0] == global row.
PART_SCRIPT = r"""
import sys
import numpy as np
import h5feed
path, k, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = np.arange(k * m, k * m + m)
ids = [f"s-{r}" for r in rows] if len(sys.argv) < 5 else [f"s-{r % m}" for r in rows]
x = np.zeros((m, 3), np.float32)
x[:, 0] = rows
x[:, 1:] = np.random.default_rng(k).standard_normal((m, 2))
y = rows % 4
h5feed.write_arrays(path, ids, x, y, splits={"train": range(0, m - 2), "validation": range(m - 2, m)},
                    n_classes=4, extras={"w": (rows * 0.5)[:, None]})
"""

M = 10  # rows per part


def _make_parts(folder, n=3, dup=False):
    """Each part written by its own Python process, all at once."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"part-{k}.h5" for k in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PART_SCRIPT, str(p), str(k), str(M)] + (["dup"] if dup else []),
            stderr=subprocess.PIPE, text=True,
        )
        for k, p in enumerate(paths)
    ]
    errs = [proc.communicate(timeout=120)[1] for proc in procs]
    for proc, err in zip(procs, errs):
        assert proc.returncode == 0, err
    return paths


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return _make_parts(tmp_path_factory.mktemp("merge") / "parts")


def _record(path):
    with h5py.File(path) as f:
        return json.loads(f.attrs["h5feed_complete"])


def test_virtual_merge_is_a_normal_h5feed_file_over_the_parts(parts):
    out = parts[0].parent / "all.h5"
    merge_files(parts, out, overwrite=True)
    with h5py.File(out) as f:
        assert all(f[name].is_virtual for name in ("x", "y", "w"))
        assert not f["ids"].is_virtual
        assert out.stat().st_size < 100_000  # no data copied
    info = h5feed.open_file(out, allow_virtual=True)
    assert info.n_rows == 3 * M and info.n_classes == 4
    assert dict(info.splits) == {"train": 3 * (M - 2), "validation": 6}
    assert all(c.offset is None for c in info.columns.values())  # never memory-mapped
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["x"][:, 0], np.arange(3 * M))
        assert f["ids"].asstr()[M] == "s-10"
        np.testing.assert_array_equal(f["splits/validation"][()], [8, 9, 18, 19, 28, 29])
        np.testing.assert_array_equal(f["w"][:, 0], np.arange(3 * M) * 0.5)
    assert _record(out)["parts"] == ["part-0.h5", "part-1.h5", "part-2.h5"]


def test_virtual_files_are_refused_unless_allowed(parts):
    out = parts[0].parent / "all-refused.h5"
    merge_files(parts, out)
    with pytest.raises(errors.UntrustedFileError, match="allow_virtual=True"):
        h5feed.open_file(out)


def test_sequence_reads_every_merged_row_once_with_the_parts_bytes(parts):
    H5Sequence = pytest.importorskip("h5feed.sequence", reason="H5Sequence needs Keras").H5Sequence
    out = parts[0].parent / "all-seq.h5"
    merge_files(parts, out)
    seq = H5Sequence(out, "train", batch_size=4, seed=1, allow_virtual=True, one_hot=False)
    X = np.concatenate([seq[i][0] for i in range(len(seq))])
    rows = X[:, 0].astype(int)
    want = [r for r in range(3 * M) if r % M < M - 2]
    np.testing.assert_array_equal(np.sort(rows), want)
    parts_x = np.concatenate([h5py.File(p)["x"][()] for p in parts])
    np.testing.assert_array_equal(X, parts_x[rows])
    # Virtual rows are read from the parts, memory-mapped (NOTE [ Reading
    # virtual datasets ]); the merged file itself is never mapped.
    assert not seq._reader._base._maps
    assert all(r._maps for r in seq._reader._parts.values())


def test_copy_and_virtual_merges_have_the_same_completion_digests(parts, tmp_path):
    virtual = parts[0].parent / "all-v.h5"
    merge_files(parts, virtual)
    standalone = tmp_path / "elsewhere" / "all-c.h5"
    standalone.parent.mkdir()
    merge_files(parts, standalone, copy=True)
    assert _record(virtual)["sha256"] == _record(standalone)["sha256"]
    info = h5feed.open_file(standalone)  # no allow_virtual needed
    with h5py.File(standalone) as f:
        assert not f["x"].is_virtual
        np.testing.assert_array_equal(f["x"][:, 0], np.arange(3 * M))
        np.testing.assert_array_equal(f["splits/validation"][()], [8, 9, 18, 19, 28, 29])
    assert info.n_classes == 4 and set(info.columns) == {"x", "y", "w"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parts_reader_and_hdf5_read_the_same_virtual_bytes(parts, seed):
    out = parts[0].parent / "all-reader.h5"
    merge_files(parts, out, overwrite=True)
    layout = h5feed.open_file(out, allow_virtual=True)
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.integers(0, 3 * M, 25), [29, 0, 15, 15], rng.integers(M, 2 * M, 3)])
    plain = Reader(layout)  # through HDF5's virtual dataset
    parts_reader = make_reader(layout)
    assert isinstance(parts_reader, PartsReader)
    for name in ("x", "y", "w"):
        a, b = plain.read(name, rows), parts_reader.read(name, rows)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    np.testing.assert_array_equal(plain.read("x", rows)[:, 0], rows)
    np.testing.assert_array_equal(parts_reader.read("x", rows[3:4]), plain.read("x", rows[3:4]))  # one part
    assert parts_reader.read_ids([12, 3]) == ["s-12", "s-3"]
    assert not plain._maps  # HDF5 offers no offset for a virtual dataset
    clone = pickle.loads(pickle.dumps(parts_reader))
    np.testing.assert_array_equal(clone.read("x", rows), plain.read("x", rows))
    with pytest.raises(IndexError, match="30"):
        parts_reader.read("x", [30])
    for r in (plain, parts_reader, clone):
        r.close()


def test_merged_folder_can_move_but_a_missing_part_is_refused(parts, tmp_path):
    out = parts[0].parent / "all-move.h5"
    merge_files(parts, out)
    moved = tmp_path / "moved"
    shutil.copytree(parts[0].parent, moved)
    assert h5feed.open_file(moved / "all-move.h5", allow_virtual=True).n_rows == 3 * M
    os.remove(moved / "part-1.h5")
    with pytest.raises(errors.UntrustedFileError, match="part-1.h5.*missing"):
        h5feed.open_file(moved / "all-move.h5", allow_virtual=True)


def test_duplicate_ids_across_parts_name_the_ids_and_parts(tmp_path):
    paths = _make_parts(tmp_path / "dup", n=2, dup=True)
    out = tmp_path / "dup" / "all.h5"
    with pytest.raises(errors.LayoutError, match=r"unique across parts.*'s-1' in .*part-0.h5 and .*part-1.h5"):
        merge_files(paths, out)
    assert sorted(os.listdir(tmp_path / "dup")) == ["part-0.h5", "part-1.h5"]  # nothing left behind


def test_parts_that_disagree_are_refused(parts, tmp_path):
    other = tmp_path / "parts" / "odd.h5"
    other.parent.mkdir()
    h5feed.write_arrays(other, ["z-1"], np.zeros((1, 4), np.float32), [0], n_classes=4, extras={"w": [[0.0]]})
    shutil.copy(parts[0], tmp_path / "parts" / "part-0.h5")
    with pytest.raises(errors.LayoutError, match=r"odd.h5:/x: rows of shape \(4,\)"):
        merge_files([tmp_path / "parts" / "part-0.h5", other], tmp_path / "parts" / "all.h5")


def test_a_damaged_part_is_refused(parts, tmp_path):
    folder = tmp_path / "damaged"
    folder.mkdir()
    for p in parts:
        shutil.copy(p, folder / p.name)
    with h5py.File(folder / "part-1.h5", "r+") as f:
        f["x"][3, 1] = 123.0  # the data changes, the completion record does not
    with pytest.raises(errors.LayoutError, match="part-1.h5:/x: its data does not match"):
        merge_files(sorted(folder.iterdir()), folder / "all.h5")
    assert not (folder / "all.h5").exists()


def test_a_virtual_merge_needs_the_parts_beside_the_output(parts, tmp_path):
    with pytest.raises(errors.WriterError, match="outside it.*--copy"):
        merge_files(parts, tmp_path / "all.h5")


def _write_vds(path, source, name="x", n=3):
    layout = h5py.VirtualLayout(shape=(n, 3), dtype=np.float32)
    layout[:] = h5py.VirtualSource(source, name, shape=(n, 3))
    ids = [f"v{i}" for i in range(n)]
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
        f.create_virtual_dataset("x", layout)
        f.attrs["h5feed_format"] = 1
        f.attrs["h5feed_complete"] = json.dumps({"rows": n, "sha256": {}})


@pytest.mark.parametrize(
    "source, match",
    [("/etc/some.h5", "not a file inside"), ("../part-0.h5", "not a file inside"), ("p%%b.h5", "not a file inside"),
     ("nope.h5", "missing")],
    ids=["absolute", "parent-folder", "printf-pattern", "missing-source"],
)
def test_untrusted_virtual_sources_are_refused_even_when_allowed(tmp_path, source, match):
    path = tmp_path / "sub" / "v.h5"
    path.parent.mkdir()
    _write_vds(path, source)
    with pytest.raises(errors.UntrustedFileError, match=match):
        h5feed.open_file(path, allow_virtual=True)


def test_a_virtual_source_that_links_to_another_file_is_refused(tmp_path):
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["x"] = np.zeros((3, 3), np.float32)
    folder = tmp_path / "sub"
    folder.mkdir()
    with h5py.File(folder / "src.h5", "w") as f:
        f["data"] = h5py.ExternalLink(str(outside), "/x")
    path = folder / "v.h5"
    _write_vds(path, "src.h5", name="data")
    with pytest.raises(errors.UntrustedFileError, match="leads through an external link to .*outside.h5"):
        h5feed.open_file(path, allow_virtual=True)


def test_virtual_rows_without_a_source_are_refused(tmp_path):
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f["x"] = np.zeros((2, 3), np.float32)
    layout = h5py.VirtualLayout(shape=(3, 3), dtype=np.float32)
    layout[:2] = h5py.VirtualSource("src.h5", "x", shape=(2, 3))
    path = tmp_path / "gap.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=["a", "b", "c"], dtype=h5py.string_dtype())
        f.create_virtual_dataset("x", layout, fillvalue=0)
        f.attrs["h5feed_format"] = 1
        f.attrs["h5feed_complete"] = json.dumps({"rows": 3, "sha256": {}})
    with pytest.raises(errors.UntrustedFileError, match="rows 2..2 are not mapped"):
        h5feed.open_file(path, allow_virtual=True)


def test_cli_merge_reports_and_fails_cleanly(parts, capsys):
    out = parts[0].parent / "all-cli.h5"
    assert main(["merge", *map(str, parts), "-o", str(out), "-q"]) == 0
    assert f"merged 3 parts (30 rows) into {out}" in capsys.readouterr().out
    assert main(["merge", *map(str, parts), "-o", str(out), "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(parts[0]), str(parts[0]), "-o", str(out), "--overwrite", "-q"]) == 1
    assert "repeated" in capsys.readouterr().err
    assert main(["merge", "-o", str(out)]) == 2


@pytest.mark.slow
def test_torch_workers_read_a_virtual_merge_after_fork(parts):
    pytest.importorskip("torch", reason="h5feed.torch needs PyTorch (pip install 'h5feed[torch]')")
    from torch.utils.data import DataLoader

    from h5feed.torch import BlockBatchSampler, H5Dataset, collate

    out = parts[0].parent / "all-torch.h5"
    merge_files(parts, out, overwrite=True)
    ds = H5Dataset(out, "train", allow_virtual=True)
    ds[0]  # handles on the merged file and a part, opened in the parent
    loader = DataLoader(ds, batch_sampler=BlockBatchSampler(ds, 5, seed=3), collate_fn=collate,
                        num_workers=2, multiprocessing_context="fork")
    rows = np.concatenate([X[:, 0].numpy() for X, _ in loader]).astype(int)
    assert sorted(rows.tolist()) == [r for r in range(3 * M) if r % M < M - 2]


def test_virtual_ids_are_refused_even_when_allowed(tmp_path):
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f.create_dataset("ids", data=["a", "b"], dtype=h5py.string_dtype())
    layout = h5py.VirtualLayout(shape=(2,), dtype=h5py.string_dtype())
    layout[:] = h5py.VirtualSource("src.h5", "ids", shape=(2,))
    path = tmp_path / "vids.h5"
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("ids", layout)
        f["x"] = np.zeros((2, 3), np.float32)
        f.attrs["h5feed_format"] = 1
        f.attrs["h5feed_complete"] = json.dumps({"rows": 2, "sha256": {}})
    # (Refused by the storage check or, where that lets virtual IDs through, by the source check.)
    with pytest.raises(errors.UntrustedFileError, match=r"/ids: (must be stored in the file|is a virtual dataset)"):
        h5feed.open_file(path, allow_virtual=True)


@pytest.mark.parametrize("copy", [False, True], ids=["virtual", "copy"])
def test_merge_writes_on_a_filesystem_that_refuses_locks(parts, monkeypatch, copy):
    from h5feed import _files

    real = h5py.File

    def refusing(name, mode="r", *args, **kwargs):
        if mode != "r" and kwargs.get("locking", None) is not False:
            open(name, "a").close()  # HDF5 creates the file before it locks
            raise OSError("Unable to create file (unable to lock file, errno = 38, "
                          "error message = 'Function not implemented')")
        return real(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", refusing)
    monkeypatch.setattr(_files, "_warned_no_locking", False)
    out = parts[0].parent / f"all-nolock-{copy}.h5"
    with pytest.warns(RuntimeWarning, match="refuses file locks"):
        merge_files(parts, out, copy=copy)
    assert h5feed.open_file(out, allow_virtual=not copy).n_rows == 3 * M
    assert sorted(p.name for p in out.parent.iterdir() if p.name.endswith(".h5feed-tmp")) == []
