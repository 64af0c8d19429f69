"""The damaged-file fuzz campaign's fast, deterministic slice (issue 19).

Mutants ``0..SLICE-1`` of the sample file in each storage layout (seed 0, so
every run tries the same ones: random bytes, runs, zeroed blocks and
truncations, half of them aimed at the HDF5 metadata; see ``_fuzz.py``),
each opened, read and verified in a child process with a deadline. Every
damaged file must end in an h5feed error naming the file, or read back; no
raw exception, hang, crash, or traceback from ``h5feed info``/``verify``;
``verify`` never calls a file sound that did not read back whole; and with
``checksum=True`` no mutant reads back silently wrong.

``python tests/faults/measure.py --fuzz 2000`` runs the large campaign.
Select this slice with ``pytest -m fuzz``.
"""

from __future__ import annotations

import pytest

from _fuzz import LAYOUTS, run_layout
from _harness import STATS

pytestmark = pytest.mark.fuzz

SLICE = 60


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_damaged_file_fails_with_a_named_h5feed_error_or_reads_back(tmp_path, layout):
    tally = run_layout(tmp_path, layout, list(range(SLICE)), seed=0, timeout=60)
    STATS["fuzz_mutants"] += tally.mutants
    STATS["fuzz_failures"] += len(tally.failures())
    assert tally.mutants == SLICE
    failures = "\n".join(f"{e['outcome']} {e.get('problems', '')}: {e['what']}: {e['detail']}" for e in tally.failures())
    assert not failures, failures
    # The slice exercises both ends: files refused, and files that read.
    assert tally.outcomes["refused"] + tally.outcomes["read_error"] >= SLICE // 3, tally.outcomes
    assert tally.verify["DAMAGED"] >= tally.outcomes["refused"], tally.verify
