"""Conversion streams: its peak memory does not grow with the dataset.

Each conversion runs in a fresh process that reports its resident memory
before converting and its high-water mark after; what the conversion added
must stay far below the dataset's size (a converter that stacked all
samples would add at least the whole dataset).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import json, resource, sys


def status(key):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    from h5feed.convert import from_arrays, from_h5, from_npy_dir

    kind, source, labels, out = sys.argv[1:5]
    before = status("VmRSS")
    if kind == "npy":
        result = from_npy_dir(source, labels, out)
    elif kind.startswith("h5"):
        result = from_h5(source, out, x="/entry/data/data", y="/entry/labels")
    else:
        result = from_arrays(source, labels, out)
    print(json.dumps({"before_kib": before, "peak_kib": status("VmHWM"), "rows": result.rows}))
"""

ROWS = 384
SHAPE = (128, 128, 8)  # 512 KiB of float32 per sample, 192 MiB in all


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npy", "arrays", "h5", "h5-gzip"])
def test_peak_memory_added_is_a_small_fraction_of_the_dataset(tmp_path, kind):
    sample = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    if kind == "h5-gzip":  # a pattern: gzip takes seconds over random floats; it still decodes to 192 MiB
        sample = (np.arange(sample.size) % 251).astype(np.float32).reshape(SHAPE)
    if kind == "npy":
        source = tmp_path / "data"
        source.mkdir()
        labels = {f"id-{i}": i % 3 for i in range(ROWS)}
        for i, sid in enumerate(labels):
            sample.flat[0] = i
            np.save(source / f"{sid}.npy", sample)
        labels_path = tmp_path / "labels.json"
        labels_path.write_text(json.dumps(labels))
    elif kind.startswith("h5"):
        source = labels_path = tmp_path / "source.h5"
        import h5py

        with h5py.File(source, "w") as f:
            options = {"chunks": (4, *SHAPE), "compression": "gzip", "compression_opts": 1} if kind == "h5-gzip" else {}
            x = f.create_dataset("entry/data/data", shape=(ROWS, *SHAPE), dtype=np.float32, **options)
            for i in range(ROWS):
                sample.flat[0] = i
                x[i] = sample
            f["entry/labels"] = np.arange(ROWS) % 3
    else:
        source = tmp_path / "X.npy"
        x = np.lib.format.open_memmap(source, mode="w+", dtype=np.float32, shape=(ROWS, *SHAPE))
        for i in range(ROWS):
            x[i] = sample
        x.flush()
        del x
        labels_path = tmp_path / "Y.npy"
        np.save(labels_path, np.arange(ROWS) % 3)
    script = tmp_path / "measure.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), kind, str(source), str(labels_path), str(tmp_path / "o.h5")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rows"] == ROWS
    dataset_kib = ROWS * sample.nbytes // 1024
    added_kib = report["peak_kib"] - report["before_kib"]
    print(f"{kind}: converting {dataset_kib // 1024} MiB added {added_kib // 1024} MiB")
    assert added_kib < dataset_kib / 3, (
        f"converting {dataset_kib // 1024} MiB added {added_kib // 1024} MiB of resident memory"
    )
    assert os.path.getsize(tmp_path / "o.h5") > ROWS * sample.nbytes
    import h5py

    with h5py.File(tmp_path / "o.h5") as f:  # what was written, row by row (a sample of rows)
        ids = f["ids"].asstr()[()].tolist()
        for row in (0, 1, ROWS // 2, ROWS - 1):
            got = f["x"][row]
            if kind == "npy":
                sample.flat[0] = int(ids[row].split("-")[1])
            elif kind.startswith("h5"):  # row i of the source starts with i; its ID is "i"
                sample.flat[0] = int(ids[row])
            np.testing.assert_array_equal(got, sample)
            assert f["y"][row] == (int(ids[row].split("-")[1]) if kind == "npy" else int(ids[row])) % 3
