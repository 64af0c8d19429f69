"""Process identity: whether a process is still alive (shared by the writer's
clean-up of dead writers' temporary files and the worker processes' watch on
their parent), and this process's id without a system call per batch."""

from __future__ import annotations

import os

__all__ = ["pid_alive", "this_pid"]

# os.getpid() is a system call, and the per-batch path asks for the id to
# notice a fork. The id is kept here instead and renewed in every child that
# os.fork() makes (multiprocessing's fork and forkserver children included);
# spawn children import afresh.
_pid = os.getpid()


def _renew_pid() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_pid)


def this_pid() -> int:
    """This process's id, as ``os.getpid()``, without a system call."""
    return _pid


def pid_alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (dead, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (dead, not yet reaped: common in containers whose init does
    # not reap orphans) still answers kill(pid, 0).
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return True
