"""Append NEW to DATA, killing this process with SIGKILL at one point.

Usage: python append_kill_script.py DATA NEW POINT

POINT is ``none`` or ``module:function:when`` with ``when`` ``before`` or ``after``: the
process kills itself on the first call of that function, before it runs or
after it returns (tests/test_append.py).
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys

import h5feed.grow


def _kill_at(module_name: str, name: str, when: str) -> None:
    module = importlib.import_module(module_name)
    real = getattr(module, name)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        if when == "before":
            print(f"KILL {module_name}:{name}:{when}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        print(f"KILL {module_name}:{name}:{when}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(module, name, wrapper)


if __name__ == "__main__":
    data, new, point = sys.argv[1:4]
    if point != "none":
        _kill_at(*point.split(":"))
    h5feed.grow.append(data, new)
    print("finished", flush=True)
