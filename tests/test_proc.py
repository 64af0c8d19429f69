"""``_proc.this_pid``: the process id the per-batch path checks to notice a fork."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from h5feed._proc import this_pid


def _report(queue) -> None:
    queue.put((this_pid(), os.getpid()))


def test_this_pid_is_os_getpid_here():
    assert this_pid() == os.getpid()


# Python 3.12+ warns about forking a process that runs threads (TensorFlow's,
# when other tests imported it); this child only writes to a pipe and exits.
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_of_os_fork_sees_its_own_id():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's exit
        try:
            os.write(write, f"{this_pid()} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    seen, real = map(int, os.read(read, 100).split())
    os.close(read)
    os.waitpid(pid, 0)
    assert seen == real == pid != os.getpid()


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.parametrize("method", [m for m in ("fork", "spawn", "forkserver") if m in mp.get_all_start_methods()])
def test_multiprocessing_children_see_their_own_id(method):
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    proc = ctx.Process(target=_report, args=(queue,))
    proc.start()
    seen, real = queue.get(timeout=60)
    proc.join(60)
    assert seen == real == proc.pid != os.getpid()
