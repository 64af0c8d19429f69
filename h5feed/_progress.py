"""A small progress bar for the command line: rows done, rate, time left.

It writes to stderr (stdout is for results). On a terminal it redraws one
line; elsewhere (a cluster job's log) it prints a plain line every few
seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Report progress of ``total`` units of work.

    Args:
        total: units expected (None when unknown).
        label: what is being done, printed first.
        unit: the unit's name ("rows", "files").
        stream: where to write (default stderr).
        enabled: False prints nothing (``--quiet``).
        interval: seconds between plain-line reports off a terminal.
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        *,
        unit: str = "rows",
        stream: TextIO | None = None,
        enabled: bool = True,
        interval: float = 5.0,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.1 if self.tty else interval
        self.done = 0
        self.start = time.monotonic()
        # The first line comes after one interval, so short work that ends
        # before it prints its final line only, once.
        self._last = self.start

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; redraw when due."""
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._draw(now, final=False)

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(1.0, self.done / self.total)
            width = 24
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta = _fmt_time(left) if left != float("inf") else "--:--"
            return (
                f"{self.label} [{bar}] {self.done}/{self.total} {self.unit} "
                f"{frac:4.0%} {rate:,.0f} {self.unit}/s, {eta} left"
            )
        return f"{self.label} {self.done} {self.unit} {rate:,.0f} {self.unit}/s, {_fmt_time(elapsed)} elapsed"

    def _draw(self, now: float, *, final: bool) -> None:
        line = self._line(now)
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state (once)."""
        if self.enabled and self._last >= 0:
            self._draw(time.monotonic(), final=True)
        self._last = -1.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif self.tty and self.enabled:
            self.stream.write("\n")
