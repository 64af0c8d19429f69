"""Running fault cases in their own interpreter, and the figures they add up to.

Every fault case runs in a fresh Python process with a timeout (see
:func:`run_case`), so a hang fails its test instead of blocking CI, and a
crash (a segfault inside HDF5, say) shows up as a negative exit status rather
than taking pytest down. :data:`STATS` collects the figures the reliability
issue asks for; ``tests/faults/_figures.py`` prints them at the end of a run
and ``tests/faults/measure.py`` re-measures them on a larger sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FAULTS = Path(__file__).resolve().parent
PYTHON = sys.executable

STATS: dict[str, Any] = {
    "kill_points": 0,  # writers killed at some point of their work
    "kill_lost": 0,  # ... after which data was lost or half-written
    "corruptions": 0,  # flipped bytes read back with checksum=True
    "corruptions_silent": 0,  # ... that read back as wrong data, no error
    "corruptions_unchecked": 0,  # flipped bytes in files without checksums
    "corruptions_unchecked_silent": 0,
    "faults": 0,  # every fault case that was expected to end in an error
    "max_surface_s": 0.0,  # the longest time a fault took to become an error
    "max_surface_case": "",
    "fuzz_mutants": 0,  # damaged files opened, read and verified (test_faults_fuzz.py)
    "fuzz_failures": 0,  # ... that missed a target (a raw exception, a hang, ...)
}


def add_stats(other: dict[str, Any]) -> None:
    """Add the figures ``other`` (another process's :data:`STATS`) to these."""
    for key, value in other.items():
        if key == "max_surface_s":
            if value > STATS["max_surface_s"]:
                STATS["max_surface_s"] = float(value)
                STATS["max_surface_case"] = other.get("max_surface_case", "")
        elif key != "max_surface_case":
            STATS[key] += value


def note_surfaced(case: str, seconds: float, count: int = 1) -> None:
    """Record that a fault became an error after ``seconds``."""
    STATS["faults"] += count
    if seconds > STATS["max_surface_s"]:
        STATS["max_surface_s"] = float(seconds)
        STATS["max_surface_case"] = case


# Children run outside the repository root: there ``import h5feed`` would
# find the checkout's h5feed/ folder, which lacks h5feed.convert (mapped from
# converters/ only by installing), instead of the installed package.
CHILD_CWD = str(FAULTS)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONFAULTHANDLER"] = "1"  # a crash in a child prints its stack
    env.update(extra)
    return env


class CaseResult(dict):
    """A case's JSON answer plus ``rc``, ``stderr`` and ``wall_s``."""

    @property
    def error(self) -> str | None:
        return self.get("error_type")

    def raised(self, name: str) -> bool:
        """Whether the case raised ``name`` or a subclass of it."""
        return name in self.get("error_mro", [])


def run_case(func: str, /, *, timeout: float = 60.0, env: dict[str, str] | None = None, **kwargs: Any) -> CaseResult:
    """Run ``_cases.<func>(**kwargs)`` in a fresh interpreter; return its answer.

    The child must answer within ``timeout`` seconds and exit cleanly (status
    0, no signal): a hang or a crash raises ``AssertionError`` naming the case.
    When the case raised, the answer holds ``error_type``, ``error_mro``,
    ``message`` and ``seconds`` (how long the fault took to surface), and the
    time is added to :data:`STATS`.
    """
    code = (
        "import sys; sys.path.insert(0, {!r}); import _cases; _cases.main({!r})".format(str(FAULTS), func)
    )
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [PYTHON, "-c", code],
            input=json.dumps(kwargs),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or child_env(),
            cwd=CHILD_CWD,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"fault case {func}({kwargs!r}) hung: no answer within {timeout} s\n{exc.stderr or ''}"
        ) from None
    wall = time.perf_counter() - start
    answer = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            answer = json.loads(line[len("RESULT "):])
            break
    if proc.returncode != 0 or answer is None:
        raise AssertionError(
            f"fault case {func}({kwargs!r}) crashed or gave no answer: exit status "
            f"{proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
        )
    result = CaseResult(answer)
    result["rc"] = proc.returncode
    result["stderr"] = proc.stderr
    result["wall_s"] = wall
    if result.error is not None:
        note_surfaced(f"{func}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})", result["seconds"])
    return result


def leftovers(folder: Path) -> list[str]:
    """Names in ``folder`` that look like h5feed temporary files."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".h5feed-tmp"))
