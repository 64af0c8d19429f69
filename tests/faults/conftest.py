"""The fault tests: their helpers import as top-level modules; SIGINT reaches the children."""

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
