"""``h5feed bench --quick``: the table's structure (never its speeds)."""

from __future__ import annotations

import json

import pytest

from h5feed.cli import main

RAW = [
    "per-file .npy (tutorial)",
    "naive h5py (dset[row])",
    "h5py fancy (dset[sorted])",
    "h5feed H5Sequence",
    "in-memory numpy (limit)",
]


# The sections in two runs, so that the test's two halves can run side by side;
# the codecs section has a test of its own (the last one here).
APART = ["--only", "workers", "--only", "scale"]
TOGETHER = ["--skip", "workers", "--skip", "scale", "--skip", "codecs"]


def _quick(tmp_path, capsys, sections: list[str]) -> list[dict]:
    assert main(["bench", "--quick", "--dir", str(tmp_path), "--json", "-q", "--max-seconds", "0.2", *sections]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["quick"] is True and result["machine"]["cores"] >= 1
    return result["rows"]


@pytest.mark.slow
def test_bench_quick_prints_every_row_with_ratios(tmp_path, capsys):
    rows = _quick(tmp_path, capsys, TOGETHER)
    by = {(r["section"], r["shape"], r["name"]): r for r in rows}
    for shape in ("small", "volume"):
        for name in RAW:
            row = by[("raw", shape, name)]
            assert row["samples_per_s"] > 0 and row["samples"] > 0
            assert row["vs_baseline"] > 0 and row["vs_limit"] > 0
        assert by[("raw", shape, RAW[0])]["vs_baseline"] == pytest.approx(1.0)
        assert by[("raw", shape, RAW[-1])]["vs_limit"] == pytest.approx(1.0)
        for name in ("sequential read of the file", "H5Sequence shuffle=True", 'H5Sequence shuffle="block"',
                     "H5Sequence shuffle=True, warm cache"):
            assert by[("cold", shape, name)]["vs_limit"] > 0
        assert by[("compressed", shape, 'lzf H5Sequence shuffle="block"')]["vs_baseline"] > 0
    for name in ("fit per-file .npy (tutorial)", "fit H5Sequence", "fit in-memory PyDataset"):
        assert by[("fit", "small", name)]["vs_limit"] > 0
    for shape in ("small", "volume"):
        for name in ("one file, warm cache", "grown by 10 appends, warm cache", "one file, cold cache",
                     "grown by 10 appends, cold cache"):
            assert by[("grow", shape, f"H5Sequence shuffle=True, {name}")]["vs_limit"] > 0
        assert by[("grow", shape, "H5Sequence shuffle=True, grown by 10 appends, warm cache")]["extra"]["ok"] in (
            True, False)
    cost = {r["name"]: r for r in rows if r["section"] == "grow" and r["shape"] == "append 1,000 rows"}
    assert cost["to 1,000 rows vs to 20,000 rows"]["vs_baseline"] > 0
    assert cost["to 1,000 rows vs to 20,000 rows"]["extra"]["ok"] in (True, False)
    assert cost["bytes written, to 20,000 rows"]["extra"]["written_bytes"] > 0
    many = {r["name"]: r for r in rows if r["section"] == "grow" and r["shape"] == "30 parts"}
    for name in ("open_file, fresh process", "append 1,000 rows, fresh process"):
        assert many[name]["extra"]["seconds"] > 0 and many[name]["extra"]["few_seconds"] > 0
    memory = [r for r in rows if r["section"] == "memory"]
    assert memory and memory[0]["extra"]["rss_anon_peak"] > 0 and memory[0]["extra"]["budget"] > 0
    assert not any(r["section"] in ("workers", "scale", "codecs") for r in rows)

    # The human table, from the datasets built above (reused, not rebuilt).
    assert main(["bench", "--quick", "--dir", str(tmp_path), "-q", "--only", "raw", "--shape", "small",
                 "--max-seconds", "0.2"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("machine: ")
    for name in RAW:
        assert name in table
    assert "x per-file" in table and "of limit" in table and "100%" in table


@pytest.mark.slow
def test_bench_quick_workers_and_scale_rows(tmp_path, capsys):
    rows = _quick(tmp_path, capsys, APART)
    by = {(r["section"], r["shape"], r["name"]): r for r in rows}
    for mode in ("batches", "fit"):  # the batches measured in a fresh process
        for name in (f"{mode} H5Sequence workers=2", f"{mode} H5Sequence workers=2 + transform"):
            assert by[("workers", "volume", name)]["vs_baseline"] > 0
    # Every target of the scale section, with its verdict, and what it measured.
    scale = {r["extra"]["target"]: r for r in rows if r["section"] == "scale"}
    assert {"open", "split", "rss", "ids", "workers"} <= set(scale)
    for key in ("open", "split", "rss", "ids", "workers"):
        assert scale[key]["extra"]["ok"] in (True, False) and scale[key]["note"].endswith(("pass", "FAIL"))
    assert scale["split"]["extra"]["small_seconds"] > 0 and scale["rss"]["extra"]["selected"] > 0
    assert scale["workers"]["extra"]["rss"] > 0 and scale[None]["extra"]["bytes"] > 0  # the write
    assert {r["section"] for r in rows} == {"workers", "scale"}


def test_bench_rejects_unknown_section(capsys):
    assert main(["bench", "--only", "everything"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_codecs_section_measures_each_compression_and_every_target(tmp_path, capsys):
    assert main(["bench", "--quick", "--shape", "frames", "--only", "codecs", "--dir", str(tmp_path), "--json",
                 "-q", "--max-seconds", "0.3"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    codecs = {r["name"]: r for r in rows if r["section"] == "codecs" and r["samples"]}
    for codec in ("gzip", "lzf", "zstd", "lz4"):
        for case in ('shuffle="block", cache < file', 'shuffle="block", first epoch', "shuffle=True, first epoch"):
            row = codecs[f"{codec} {case}"]
            assert row["samples_per_s"] > 0 and row["vs_limit"] > 0 and row["extra"]["cpu_seconds"] >= 0
        assert 0 < codecs[f'{codec} shuffle="block", cache < file']["extra"]["file_bytes"] < 8 << 20
    for codec in ("gzip", "lzf"):
        assert codecs[f'{codec} shuffle="block", cache < file, decode_threads=0 (as 0.1)']["samples_per_s"] > 0
    memory = [r for r in rows if r["section"] == "codecs" and not r["samples"]]
    assert memory and memory[0]["extra"]["peak"] > 0 and memory[0]["extra"]["cache_peak"] <= memory[0]["extra"]["budget"]
    targets = [r for r in rows if r["section"] == "targets"]
    assert len(targets) == 11 and all(r["extra"]["value"] > 0 for r in targets)
    assert {r["section"] for r in rows} == {"codecs", "targets"}
