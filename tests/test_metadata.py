"""Per-sample metadata (meta/<column>): read from a CSV or a dict, stored in
row order through every converter, shuffle and shard, kept by merge, hashed
by the completion record, shown by info, read back and selected by."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import h5feed
from h5feed._meta import load_table
from h5feed.cli import main
from h5feed.convert import from_arrays, from_npy_dir
from h5feed.errors import LayoutError, SourceError, UnknownColumnError, WriterInputError
from h5feed.inspection import describe, verify
from h5feed.merge import merge_files

from convert_helpers import make_npy_folder

N = 12
IDS = [f"s{i}" for i in range(N)]


def _write_csv(path, header, rows):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def meta_csv(tmp_path):
    """site (text), patient (int), dose (float with one empty cell), code (zero-padded digits)."""
    rows = [(sid, "AB"[i % 2], i // 3, "" if i == 5 else i / 2, f"{i:03d}") for i, sid in enumerate(IDS)]
    return _write_csv(tmp_path / "meta.csv", "id,site,patient,dose,code", rows[::-1])


@pytest.fixture
def arrays_source(tmp_path):
    x = np.arange(N * 2, dtype=np.float32).reshape(N, 2)
    np.save(tmp_path / "X.npy", x)
    np.save(tmp_path / "Y.npy", np.arange(N) % 3)
    return tmp_path / "X.npy", tmp_path / "Y.npy"


def _expected(sid):
    i = int(sid[1:])
    return {"site": "AB"[i % 2], "patient": i // 3, "dose": np.nan if i == 5 else i / 2, "code": i}


def _check_rows(path, *, allow_virtual=False):
    """Every row's metadata is its own sample's."""
    meta = h5feed.read_metadata(path, allow_virtual=allow_virtual)
    with h5py.File(path) as f:
        ids = f["ids"].asstr()[()].tolist()
    for row, sid in enumerate(ids):
        for column, value in _expected(sid).items():
            np.testing.assert_equal(meta[column][row], value, err_msg=f"{column} of {sid}")
    return meta


# -- the table -------------------------------------------------------------------


def test_csv_columns_become_int64_float64_or_text(meta_csv):
    table = load_table(meta_csv)
    kinds = {name: values.dtype.kind for name, values in table.columns.items()}
    assert kinds == {"site": "O", "patient": "i", "dose": "f", "code": "i"}
    assert table.columns["dose"].dtype == np.float64 and np.isnan(table.columns["dose"][list(table.ids).index("s5")])


@pytest.mark.parametrize(
    "header, rows, match",
    [
        ("site", [("A",)], "expected a CSV header with an 'id' column"),
        ("id,site", [("s0", "A"), ("s0", "B")], r"1 ID\(s\) have more than one metadata row: 's0'"),
        ("id,site,site", [("s0", "A", "B")], r"column\(s\) \['site'\] more than once"),
        ("id,a/b", [("s0", "A")], "metadata column names must be"),
        ("id,site", [("s0", "A", "extra")], r"line 2: expected 2 values"),
        ("id,site", [("", "A")], "sample IDs must be non-empty text"),
    ],
    ids=["no-id-column", "repeated-id", "repeated-column", "slash-in-name", "long-row", "empty-id"],
)
def test_bad_metadata_tables_are_refused_by_name(tmp_path, header, rows, match):
    path = _write_csv(tmp_path / "m.csv", header, rows)
    with pytest.raises(SourceError, match=match):
        load_table(path, error=SourceError)


def test_huge_integers_stay_exact_as_text(tmp_path):
    table = load_table(_write_csv(tmp_path / "m.csv", "id,barcode", [("a", "123456789012345678901234")]))
    assert table.columns["barcode"].tolist() == ["123456789012345678901234"]


# -- converters and the writer ---------------------------------------------------------


def test_metadata_follows_rows_through_shuffle_and_is_hashed_shown_and_verified(tmp_path, arrays_source, meta_csv):
    x, y = arrays_source
    out = tmp_path / "out.h5"
    from_arrays(x, y, out, ids=IDS, metadata=meta_csv, shuffle_rows=True, seed=3)
    with h5py.File(out) as f:
        assert f["ids"].asstr()[()].tolist() != IDS  # really shuffled
        record = json.loads(f.attrs["h5feed_complete"])
    assert {f"meta/{c}" for c in ("site", "patient", "dose", "code")} <= set(record["sha256"])
    meta = _check_rows(out)
    assert meta["site"].dtype.kind == "U" and meta["patient"].dtype == np.int64
    report = verify(out)
    assert report.sound and report.checked["meta/site"] == N
    info = describe(out)
    assert info["metadata"] == ["code", "dose", "patient", "site"]
    assert info["datasets"]["meta/site"]["dtype"] == "utf-8 string"


def test_a_changed_metadata_value_fails_verify(tmp_path, arrays_source, meta_csv):
    out = tmp_path / "out.h5"
    from_arrays(*arrays_source, out, ids=IDS, metadata=meta_csv)
    with h5py.File(out, "r+") as f:
        f["meta/patient"][0] = 99
    assert any(p.startswith("meta/patient: its SHA-256 differs") for p in verify(out).problems)


def test_missing_and_extra_ids_are_errors_naming_them(tmp_path, arrays_source):
    few = _write_csv(tmp_path / "few.csv", "id,site", [(s, "A") for s in IDS[:-3]])
    with pytest.raises(SourceError, match=r"3 sample\(s\) of .* have no metadata row: 's9', 's10', 's11'"):
        from_arrays(*arrays_source, tmp_path / "a.h5", ids=IDS, metadata=few)
    many = _write_csv(tmp_path / "many.csv", "id,site", [(s, "A") for s in IDS + [f"x{i}" for i in range(7)]])
    with pytest.raises(SourceError, match=r"7 metadata ID\(s\) are no sample of .*'x0', .*\(7 in all\)"):
        from_arrays(*arrays_source, tmp_path / "a.h5", ids=IDS, metadata=many)
    assert not (tmp_path / "a.h5").exists()


def test_writer_metadata_must_cover_the_rows(tmp_path):
    with pytest.raises(WriterInputError, match=r"1 sample\(s\) of this file have no metadata row: 'c'"):
        h5feed.write_arrays(tmp_path / "w.h5", ["a", "b", "c"], np.zeros((3, 1)), metadata={"id": ["a", "b"], "k": [1, 2]})
    assert not (tmp_path / "w.h5").exists()


def test_shards_keep_their_own_rows_and_merge_keeps_metadata(tmp_path, meta_csv):
    labels = {sid: i % 3 for i, sid in enumerate(IDS)}
    data, labels_path, _, _ = make_npy_folder(str(tmp_path / "src"), labels)
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"part-{k}.h5")
        from_npy_dir(data, labels_path, parts[-1], metadata=meta_csv, shard=(k, 3))
        _check_rows(parts[-1])
    for copy in (False, True):
        merged = tmp_path / f"all-{copy}.h5"
        merge_files(parts, merged, copy=copy)
        meta = _check_rows(merged, allow_virtual=not copy)
        assert len(meta["site"]) == N
        assert verify(merged, allow_virtual=not copy).sound


def test_merge_refuses_parts_with_other_metadata_columns(tmp_path):
    h5feed.write_arrays(tmp_path / "a.h5", ["a"], np.zeros((1, 1)), metadata={"id": ["a"], "site": ["X"]})
    h5feed.write_arrays(tmp_path / "b.h5", ["b"], np.zeros((1, 1)), metadata={"id": ["b"], "plate": [1]})
    with pytest.raises(LayoutError, match=r"metadata columns \['plate'\].*parts must have the same columns"):
        merge_files([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "all.h5", copy=True)


def test_a_metadata_column_of_the_wrong_length_is_a_layout_error(tmp_path):
    path = tmp_path / "m.h5"
    h5feed.write_arrays(path, ["a", "b"], np.zeros((2, 1)))
    with h5py.File(path, "r+") as f:
        f.create_dataset("meta/site", data=np.array([1, 2, 3]))
    with pytest.raises(LayoutError, match=r"meta/site: expected a metadata column of 2 numbers or strings"):
        h5feed.open_file(path)


# -- reading and selecting -------------------------------------------------------------


def test_select_ids_matches_values_and_lists_in_row_order(tmp_path, arrays_source, meta_csv):
    out = tmp_path / "out.h5"
    from_arrays(*arrays_source, out, ids=IDS, metadata=meta_csv)
    assert h5feed.select_ids(out, site="B") == [s for s in IDS if int(s[1:]) % 2]
    assert h5feed.select_ids(out, site=["A", "B"], patient=[0, 3]) == ["s0", "s1", "s2", "s9", "s10", "s11"]
    assert h5feed.select_ids(out, site="A", patient=1) == ["s4"]
    assert h5feed.select_ids(out, site="C") == []
    with pytest.raises(UnknownColumnError, match=r"no metadata column 'subject'; the file has \['code', 'dose', 'patient', 'site'\]"):
        h5feed.select_ids(out, subject="x")
    with pytest.raises(ValueError, match="metadata column 'patient' holds numbers. Received: 'one'"):
        h5feed.select_ids(out, patient="one")


def test_cli_convert_with_metadata_and_info(tmp_path, arrays_source, meta_csv, capsys):
    x, y = arrays_source
    out = tmp_path / "cli.h5"
    (tmp_path / "ids.txt").write_text("\n".join(IDS) + "\n")
    assert main(["convert", "arrays", str(x), str(y), "--ids", str(tmp_path / "ids.txt"), "-o", str(out),
                 "--metadata", str(meta_csv), "-q"]) == 0
    assert main(["info", str(out)]) == 0
    assert "metadata: code, dose, patient, site" in capsys.readouterr().out
