"""The fault suite's figures, printed at the end of every run that used it.

A plugin loaded by ``tests/conftest.py`` rather than hooks of
``tests/faults/conftest.py``: under pytest-xdist (``pytest -n auto``) the
controller, which prints the summary, loads no conftest below ``tests/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
from _harness import STATS, add_stats  # noqa: E402


# Under pytest-xdist (`pytest -n auto`) each worker process counts its own
# cases: each hands its figures to the controller, which adds them up.
def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["h5feed_fault_stats"] = dict(STATS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # noqa: ARG001 - a pytest-xdist hook, in the controller
    add_stats(getattr(node, "workeroutput", {}).get("h5feed_fault_stats", {}))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if not any(STATS[k] for k in ("faults", "kill_points", "corruptions", "fuzz_mutants")):
        return
    tr = terminalreporter
    tr.section("h5feed fault figures")
    tr.write_line(
        f"kill points tried: {STATS['kill_points']}, that lost data: {STATS['kill_lost']}"
    )
    tr.write_line(
        f"corruptions read with checksums: {STATS['corruptions']}, read back silently wrong: "
        f"{STATS['corruptions_silent']}"
    )
    if STATS["corruptions_unchecked"]:
        tr.write_line(
            f"(without checksums: {STATS['corruptions_unchecked']} corruptions, "
            f"{STATS['corruptions_unchecked_silent']} read back silently wrong)"
        )
    if STATS["fuzz_mutants"]:
        tr.write_line(
            f"damaged files fuzzed: {STATS['fuzz_mutants']}, that missed a target (raw exception, hang, "
            f"crash, traceback, silently wrong with checksums): {STATS['fuzz_failures']}"
        )
    tr.write_line(
        f"faults surfaced as errors: {STATS['faults']}, the slowest after "
        f"{STATS['max_surface_s']:.2f} s ({STATS['max_surface_case'][:120]})"
    )
