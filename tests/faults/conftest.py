"""The fault suite's figures, printed at the end of every run that used it."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# A run started in the background by a shell without job control (`pytest &`
# in a script, nohup) inherits SIGINT ignored, and so would every command the
# kill tests start: their SIGINT cases would then test nothing and fail. A
# handler (unlike SIG_IGN) is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from _harness import STATS  # noqa: E402


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if not STATS["faults"] and not STATS["kill_points"] and not STATS["corruptions"]:
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
    tr.write_line(
        f"faults surfaced as errors: {STATS['faults']}, the slowest after "
        f"{STATS['max_surface_s']:.2f} s ({STATS['max_surface_case'][:120]})"
    )
