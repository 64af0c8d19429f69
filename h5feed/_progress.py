"""Progress for the command line and notebooks: units done, rate, time left.

It writes to stderr (stdout is for results). On a terminal, and in a
notebook, it is a ``tqdm`` bar (``tqdm.auto``: a widget in a notebook, a
redrawn line in a terminal). Elsewhere -- a cluster job's log, a pipe -- it
prints a plain line every few seconds instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress"]


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (whose stderr is no terminal)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too odd to ask: no widget
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class Progress:
    """Report progress of ``total`` units of work.

    Args:
        total: units expected (None when unknown).
        label: what is being done, printed first.
        unit: the unit's name ("rows", "files").
        stream: where to write (default stderr).
        enabled: False prints nothing (``--quiet``).
        interval: seconds between plain lines when ``stream`` is not a
            terminal.

    Example:
        >>> import io
        >>> log = io.StringIO()
        >>> with Progress(3, "reading", stream=log) as bar:
        ...     bar.update(3)
        >>> log.getvalue().startswith("reading [########################] 3/3 rows 100%")
        True
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
        self.tty = enabled and (
            (hasattr(self.stream, "isatty") and self.stream.isatty()) or (stream is None and _in_notebook())
        )
        self.interval = interval
        self.done = 0
        self.start = time.monotonic()
        # The first plain line comes after one interval, so short work that
        # ends before it prints its final line only, once.
        self._last = self.start
        self._bar: Any = None
        if self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=label, unit=f" {unit}", file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; redraw when due."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._write_line(now)

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

    def _write_line(self, now: float) -> None:
        self.stream.write(self._line(now) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Show the final state (once)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._last >= 0:
            self._write_line(time.monotonic())
        self._last = -1.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        if self._bar is not None:  # leave the bar where it stopped
            self._bar.close()
            self._bar = None
        self._last = -1.0
