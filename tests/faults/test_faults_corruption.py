"""Point 9: a flipped byte in a checksummed file is an error naming the
dataset and the damaged chunk's rows, never wrong data."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import h5feed

from _harness import STATS, note_surfaced, run_case

HAVE_VERIFY = importlib.util.find_spec("h5feed.inspection") is not None

CHECKED = {
    "checksum": {"checksum": True, "chunk_rows": 25},
    "checksum-gzip": {"checksum": True, "compression": "gzip", "chunk_rows": 40},
    "checksum-lzf": {"checksum": True, "compression": "lzf", "chunk_rows": 64},
}
UNCHECKED = {
    "contiguous": {},
    "gzip": {"compression": "gzip", "chunk_rows": 40},
}


def _make(path, options, n=500):
    rng = np.random.default_rng(1)
    ids = [f"s{i}" for i in range(n)]
    x = rng.standard_normal((n, 24)).astype(np.float32)
    y = rng.integers(0, 4, n)
    h5feed.write_arrays(path, ids, x, y, n_classes=4, **options)
    return path


@pytest.mark.parametrize("layout", CHECKED)
def test_flipped_byte_with_checksum_names_dataset_and_chunk_rows(tmp_path, layout):
    path = _make(tmp_path / f"{layout}.h5", CHECKED[layout])
    result = run_case("corrupt_and_read", path=str(path), trials=12, seed=len(layout), columns=["x", "y"], timeout=120)
    value = result["value"]
    outcomes = value["outcomes"]
    STATS["corruptions"] += sum(outcomes.values())
    STATS["corruptions_silent"] += outcomes["silent"]
    note_surfaced(f"corrupt_and_read({layout})", value["worst_s"], count=outcomes["error"])
    assert outcomes["silent"] == 0, value["details"]
    assert outcomes["misnamed"] == 0, value["details"]
    assert outcomes["error"] == 12


@pytest.mark.parametrize("layout", UNCHECKED)
def test_without_checksum_flips_can_read_back_silently_wrong(tmp_path, layout):
    # Not a guarantee but the reason --checksum exists: counted for the figures.
    path = _make(tmp_path / f"{layout}.h5", UNCHECKED[layout])
    result = run_case("corrupt_and_read", path=str(path), trials=8, seed=3, columns=["x"], timeout=120)
    outcomes = result["value"]["outcomes"]
    STATS["corruptions_unchecked"] += sum(outcomes.values())
    STATS["corruptions_unchecked_silent"] += outcomes["silent"]
    assert outcomes["misnamed"] == 0, result["value"]["details"]
    if layout == "contiguous":
        assert outcomes["silent"] + outcomes["harmless"] == 8  # nothing can notice


def test_read_error_names_the_exact_rows_of_a_damaged_chunk(tmp_path):
    path = _make(tmp_path / "c.h5", {"checksum": True, "chunk_rows": 25})
    (first, offset, size), = [c for c in run_case("chunk_table", path=str(path), name="x")["value"] if c[0] == 175]
    run_case("flip_byte", path=str(path), offset=offset + size // 2, mask=0x10)
    # A batch that spans chunks 6..8 (rows 150..224): only chunk 7 is named.
    result = run_case("read_rows", path=str(path), name="x", rows=list(range(150, 225)))
    assert result.raised("ReadError") and result.raised("OSError")
    message = result["message"]
    assert f"{path}:/x: rows 175..199 (chunk 7) failed its Fletcher32 checksum" in message
    assert "rows 150" not in message and "rows 200" not in message
    # Rows in the sound chunks around it still read.
    ok = run_case("read_rows", path=str(path), name="x", rows=list(range(150, 175)) + list(range(200, 225)))
    assert ok.error is None


@pytest.mark.skipif(not HAVE_VERIFY, reason="h5feed verify is not on this branch yet")
def test_verify_reports_every_damaged_chunk_and_exits_1(tmp_path):
    path = _make(tmp_path / "v.h5", {"checksum": True, "chunk_rows": 25})
    table = {c[0]: c for c in run_case("chunk_table", path=str(path), name="x")["value"]}
    for first in (0, 250, 475):
        _, offset, size = table[first]
        run_case("flip_byte", path=str(path), offset=offset + 3, mask=0xFF)
    result = run_case("verify_cli", path=str(path))["value"]
    assert result["rc"] == 1
    for rows in ("0..24", "250..274", "475..499"):
        assert f"x: rows {rows}" in result["stdout"], result["stdout"]
    assert "ok      y" in result["stdout"]  # the sound dataset's SHA-256 matches


@pytest.mark.skipif(not HAVE_VERIFY, reason="h5feed verify is not on this branch yet")
def test_verify_compares_the_stored_sha256_without_checksums(tmp_path):
    path = _make(tmp_path / "v.h5", {})
    import h5py

    with h5py.File(path, "r") as f:
        offset = f["x"].id.get_offset()
    run_case("flip_byte", path=str(path), offset=offset + 1000, mask=0x01)
    result = run_case("verify_cli", path=str(path))["value"]
    assert result["rc"] == 1
    assert "x: its SHA-256 differs" in result["stdout"], result["stdout"]
