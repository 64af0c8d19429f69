"""h5feed's own worker processes, which hand batches back through shared memory.

NOTE [ Own workers ]
Keras's ``OrderedEnqueuer`` pickles every batch its worker processes make and
sends it through a pipe, and builds a new pool every epoch; for a 4 MiB batch
the pickling costs more than reading it (the issue measured 0.2x of one
process). :class:`BatchPool` instead starts ``workers`` processes that each
attach one shared-memory segment cut into ``slots`` fixed-size slots. The
parent sends a worker ``(ticket, slot, rows, index)``; the worker makes the
batch (read, one-hot, transform) and writes its arrays straight into the
slot, then sends back only a small description (dtypes, shapes, offsets). The parent hands
the batch out as arrays that view the slot (no copy: copying a 4 MiB batch
out took the parent 570 us, twice what reading it in-process takes), and the
slot is used again only once every one of those arrays is gone: they all
refer to one array over the slot, whose finalizer returns it to the pool.
TensorFlow may keep an array's memory without a copy in its prefetch buffer
long after ``__getitem__`` returned, but it then keeps a reference to the
array too. At most half the slots are lent at a time; past that, batches
are copied out and their slots freed at once, so prefetching never stops
for want of slots while the caller holds batches. The lent arrays view a
mapping of the parent's own, never closed explicitly: a batch held after
the pool closed stays valid, and the memory goes with the last one.

A batch that does not fit its slot (a transform that makes it larger) comes
back pickled through the pipe instead, correct but slower; the pool records
the size it needed, and the next epoch starts a new pool with big enough slots.

Prefetching follows the order batches are asked for: after batch ``k`` the
pool keeps batches ``k+1, k+2, ...`` in flight, one slot each. A request for a
batch that is not in flight returns None (the caller reads it in-process) and
restarts prefetching after it; after repeated misses prefetching stops for
the epoch, so an unpredictable order costs no wasted work. A new epoch
(:meth:`BatchPool.restart`) keeps the processes: a process maps the file's
pages one fault at a time, and a new one each epoch read "volume" at less
than half the rate of one whose mapping was already made.

Failures never hang and never lose their type:

- a worker that dies (killed, crashed) is seen at once through its process
  sentinel, and the parent raises :class:`~h5feed.errors.WorkerError` naming
  the worker, its pid, how it ended and the batch it was making;
- an exception in a worker (a damaged chunk, a failing transform) is sent
  back and re-raised in the parent with its type kept, the worker named, and
  the worker's traceback as its cause.

Either way the pool closes itself before raising. :meth:`BatchPool.close`
(called by ``H5Sequence`` on ``close()``, on garbage collection and at
interpreter exit) stops and joins the processes. The segment's name is
unlinked as soon as every worker has mapped it, so nothing is left in
``/dev/shm`` however the processes end, even killed (the memory goes with
the last mapping); the name starts with ``h5feed_`` so tests can prove it.
Workers ignore SIGINT (the parent owns shutdown) and exit by themselves when
the parent process disappears.
"""

from __future__ import annotations

import collections
import functools
import logging
import mmap
import multiprocessing
import multiprocessing.connection
import os
import pickle
import secrets
import signal
import threading
import traceback
import weakref
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from ._proc import pid_alive
from .errors import WorkerError

__all__ = ["BatchPool", "SHM_PREFIX"]

logger = logging.getLogger("h5feed")

SHM_PREFIX = "h5feed_"
_ALIGN = 64
# A worker with nothing to do checks this often whether its parent is gone.
_IDLE_POLL_S = 1.0
# How long close() waits for a worker to finish its batch before terminating it.
_JOIN_TIMEOUT_S = 2.0
# Misses (requests for batches not in flight) in a row after which a pool
# stops prefetching: the request order is not one it can follow.
_MAX_MISSES = 3


class _TooBig(Exception):
    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


# -- the wire format of a batch in a slot ------------------------------------


class _SlotAlloc:
    """Hands out arrays inside one slot, for a batch to be read straight into."""

    def __init__(self, buf: memoryview, base: int, size: int) -> None:
        self.buf, self.base, self.size = buf, base, size
        self.pos = [0]
        self.placed: dict[int, tuple[np.ndarray, int]] = {}  # id(array) -> (array, offset)

    def __call__(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        start = -(-self.pos[0] // _ALIGN) * _ALIGN
        end = start + count * dtype.itemsize
        if end > self.size:
            raise _TooBig(end)
        self.pos[0] = end
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.base + start).reshape(shape)
        self.placed[id(arr)] = (arr, start)
        return arr

    def release(self) -> None:
        self.placed.clear()


def _encode(obj: Any, buf: memoryview, base: int, size: int, pos: list[int], placed: dict | None = None) -> Any:
    """Copy the arrays of ``obj`` into ``buf[base:base+size]``; return its skeleton.

    Arrays in ``placed`` (made by :class:`_SlotAlloc`) are already there.
    """
    if placed and isinstance(obj, np.ndarray) and id(obj) in placed and placed[id(obj)][0] is obj:
        return ("a", obj.dtype, obj.shape, placed[id(obj)][1])
    if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
        start = -(-pos[0] // _ALIGN) * _ALIGN
        end = start + obj.nbytes
        if end > size:
            raise _TooBig(end)
        pos[0] = end
        if obj.nbytes:
            dest = np.frombuffer(buf, dtype=obj.dtype, count=obj.size, offset=base + start).reshape(obj.shape)
            np.copyto(dest, obj, casting="no")
            del dest
        return ("a", obj.dtype, obj.shape, start)
    if isinstance(obj, tuple):
        return ("t", [_encode(v, buf, base, size, pos, placed) for v in obj])
    if isinstance(obj, list):
        return ("l", [_encode(v, buf, base, size, pos, placed) for v in obj])
    if isinstance(obj, dict):
        return ("d", [(k, _encode(v, buf, base, size, pos, placed)) for k, v in obj.items()])
    return ("v", obj)


def _needed_bytes(obj: Any) -> int:
    if isinstance(obj, np.ndarray):
        return obj.nbytes + _ALIGN
    if isinstance(obj, (tuple, list)):
        return sum(_needed_bytes(v) for v in obj)
    if isinstance(obj, dict):
        return sum(_needed_bytes(v) for v in obj.values())
    return 0


def _decode(skel: Any, array: Callable[[np.dtype, tuple[int, ...], int], np.ndarray]) -> Any:
    """The batch ``skel`` describes; ``array(dtype, shape, start)`` makes its arrays."""
    kind = skel[0]
    if kind == "a":
        _, dtype, shape, start = skel
        return array(dtype, shape, start)
    if kind == "t":
        return tuple(_decode(s, array) for s in skel[1])
    if kind == "l":
        return [_decode(s, array) for s in skel[1]]
    if kind == "d":
        return {k: _decode(s, array) for k, s in skel[1]}
    return skel[1]


def _copy_from(buf: Any, base: int, dtype: np.dtype, shape: tuple[int, ...], start: int) -> np.ndarray:
    out = np.empty(shape, dtype=dtype)
    if out.nbytes:
        src = np.frombuffer(buf, dtype=dtype, count=out.size, offset=base + start).reshape(shape)
        np.copyto(out, src)
        del src
    return out


def _view_in(slot: np.ndarray, dtype: np.dtype, shape: tuple[int, ...], start: int) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    return slot[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


def _own_mapping(shm: shared_memory.SharedMemory, size: int) -> mmap.mmap | None:
    """The segment mapped once more, for batches lent out of it (NOTE [ Own workers ]).

    Never closed explicitly: it stays mapped while a lent batch refers to
    it, and goes with the last one. None where the segment has no file
    descriptor to map (not POSIX): batches are then copied out.
    """
    fd = getattr(shm, "_fd", -1)
    if not isinstance(fd, int) or fd < 0:
        return None
    try:
        return mmap.mmap(fd, size)
    except (OSError, ValueError):  # pragma: no cover - the segment was just made
        return None


def _pack_exception(exc: BaseException) -> tuple[str, Any]:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return ("pickle", data)
    except Exception:
        return ("text", (type(exc).__module__, type(exc).__qualname__, str(exc)))


def _unpack_exception(packed: tuple[str, Any]) -> BaseException:
    kind, payload = packed
    if kind == "pickle":
        try:
            return pickle.loads(payload)
        except Exception as exc:  # a class the parent cannot import
            return WorkerError(f"a worker raised an exception the parent cannot unpickle: {exc}")
    module, qualname, message = payload
    return WorkerError(f"{module}.{qualname}: {message}")


# -- the worker process ---------------------------------------------------------


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _keep_freed_memory() -> bool:
    """Let this worker process reuse the memory of one batch for the next (glibc).

    By default glibc serves a large allocation from a fresh mapping, and
    gives a freed heap top back to the system once it passes twice the
    largest such allocation; either way the next batch touches new pages, one
    page fault per 4 KiB (several microseconds each on this project's
    virtual machines). A transform that keeps a few 4 MiB temporaries alive
    at once hit that on every batch: with these settings a worker made
    batches of "volume" with the benchmark's transform about twice as fast.
    The worker is h5feed's own process, so its allocator is h5feed's to
    tune; the training process's is left alone.

    Returns:
        Whether the settings took (False where there is no ``mallopt``).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, ImportError):  # not glibc (macOS has no mallopt)
        return False
    # Allocations below 32 MiB (glibc's largest setting) from the heap, and
    # up to 256 MiB of freed heap kept for reuse.
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20))


def _worker_main(
    conn: multiprocessing.connection.Connection,
    maker: Any,
    shm_name: str,
    slot_bytes: int,
    worker_id: int,
    parent_pid: int,
) -> None:
    """Serve ``(ticket, slot, rows, index)`` tasks until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _keep_freed_memory()
    shm = shared_memory.SharedMemory(name=shm_name)
    buf = shm.buf
    try:
        conn.send(("ready", worker_id, os.getpid()))
        while True:
            if not conn.poll(_IDLE_POLL_S):
                if not pid_alive(parent_pid):
                    return
                continue
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            ticket, slot, rows, index = msg
            base = slot * slot_bytes
            alloc = _SlotAlloc(buf, base, slot_bytes)
            # (seconds, major faults) of reading the rows, before any
            # transform: the parent reads ahead for the workers when they
            # needed the disk.
            read: list[tuple[float, int | None]] = [(0.0, None)]
            try:
                batch = None
                if getattr(maker, "transform", None) is None:
                    # Read straight into the slot: one copy, not two.
                    try:
                        batch = maker.make(rows, index, alloc, on_read=read.append)
                    except _TooBig:
                        alloc = _SlotAlloc(buf, base, slot_bytes)
                if batch is None:
                    batch = maker.make(rows, index, on_read=read.append)
                try:
                    skel = _encode(batch, buf, base, slot_bytes, alloc.pos, alloc.placed)
                    reply: tuple[Any, ...] = ("ok", ticket, slot, skel, read[-1])
                except _TooBig:
                    reply = ("pickled", ticket, slot, batch, _needed_bytes(batch), read[-1])
            except BaseException as exc:  # sent back; the parent re-raises
                reply = ("err", ticket, slot, _pack_exception(exc), traceback.format_exc(), read[-1])
            alloc.release()
            del batch
            try:
                conn.send(reply)
            except (BrokenPipeError, EOFError, OSError):
                return
    finally:
        try:
            maker.close()
        except Exception:
            pass
        del buf
        try:
            shm.close()
        except BufferError:
            pass


# -- the parent side ------------------------------------------------------------------


class _State:
    """What must be cleaned up; shared by the pool and its finalizer."""

    def __init__(self) -> None:
        self.procs: list[Any] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.shm: shared_memory.SharedMemory | None = None
        self.unlinked = False
        self.closed = False


def _shutdown(state: _State) -> None:
    if state.closed:
        return
    state.closed = True
    for conn in state.conns:
        try:
            conn.send(None)
        except (OSError, ValueError):
            pass
    for proc in state.procs:
        proc.join(_JOIN_TIMEOUT_S)
        if proc.is_alive():
            proc.terminate()
            proc.join(_JOIN_TIMEOUT_S)
        if proc.is_alive():  # pragma: no cover - SIGTERM ignored
            proc.kill()
            proc.join()
        try:
            proc.close()
        except ValueError:
            pass
    for conn in state.conns:
        try:
            conn.close()
        except OSError:
            pass
    if state.shm is not None:
        try:
            state.shm.close()
        except BufferError:  # pragma: no cover - a view escaped; still unlink
            pass
        _unlink(state)
        state.shm = None


def _unlink(state: _State) -> None:
    """Remove the segment's name (once); the memory lives on in its mappings."""
    if state.shm is not None and not state.unlinked:
        state.unlinked = True
        try:
            state.shm.unlink()
        except FileNotFoundError:
            pass


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class BatchPool:
    """``workers`` processes making batches into shared-memory slots.

    Args:
        maker: a picklable object with ``make(rows, index, alloc=None,
            on_read=None) -> batch`` and ``close()``
            (:class:`~h5feed._batch.BatchMaker`).
        workers: number of processes.
        slots: batches in flight at most (one shared-memory slot each).
        slot_bytes: bytes per slot.
        context: a ``multiprocessing`` context; default the current start method.
        description: names the data in error messages (the file).

    Raises:
        WorkerError: a worker died while starting.
    """

    def __init__(
        self,
        maker: Any,
        *,
        workers: int,
        slots: int,
        slot_bytes: int,
        context: Any = None,
        description: str = "",
    ) -> None:
        if workers < 1 or slots < 1:
            raise ValueError(f"workers and slots must be >= 1. Received: {workers!r}, {slots!r}")
        ctx = context or multiprocessing.get_context()
        self.description = description
        self.slot_bytes = -(-max(slot_bytes, _ALIGN) // _ALIGN) * _ALIGN
        self.n_slots = slots
        self.max_needed = 0  # the largest batch that did not fit a slot
        # (seconds, major faults) of the worker's read of the last batch get() returned.
        self.last_read: tuple[float, int | None] = (0.0, None)
        self._lock = threading.Lock()
        self._state = _State()
        self._finalizer = weakref.finalize(self, _shutdown, self._state)
        state = self._state
        name = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
        state.shm = shared_memory.SharedMemory(name=name, create=True, size=self.slot_bytes * slots)
        self._mapping = _own_mapping(state.shm, self.slot_bytes * slots)
        self._free = list(range(slots))
        # Slots whose batch was handed out as views of it (NOTE [ Own
        # workers ]): at most half the slots, so that prefetching goes on
        # while the caller (or TensorFlow's prefetch buffer) holds batches.
        self._lent: set[int] = set()
        self._max_lent = slots // 2 if self._mapping is not None else 0
        # Lent slots whose batch is gone, appended by its finalizer in
        # whatever thread dropped it (deque.append is atomic).
        self._returned: collections.deque[int] = collections.deque()
        # Each task sent is a ticket, never reused: a batch of an order given
        # up (a jump, a new epoch) may still be in flight under the same key.
        self._tickets = 0
        self._inflight: dict[int, tuple[int, int, int | None]] = {}  # ticket -> (slot, worker, key; None: dropped)
        self._tasks: dict[int, int] = {}  # key -> ticket, of the order followed
        self._ready: dict[int, tuple[Any, ...]] = {}  # key -> reply
        self._pending = [0] * workers
        self._next = 0
        self._misses = 0
        self._prefetch = True
        self.pids: list[int] = []
        try:
            for wid in range(workers):
                parent_end, child_end = ctx.Pipe(duplex=True)
                proc = ctx.Process(
                    target=_worker_main,
                    args=(child_end, maker, name, self.slot_bytes, wid, os.getpid()),
                    name=f"h5feed-worker-{wid}",
                    daemon=True,
                )
                proc.start()
                child_end.close()
                state.procs.append(proc)
                state.conns.append(parent_end)
            # Wait until every worker attached the segment, so that a close()
            # right after start never unlinks it under a starting worker.
            for wid in range(workers):
                reply = self._recv(wid, waiting_for=None)
                if reply[0] != "ready":  # pragma: no cover - protocol error
                    raise WorkerError(f"h5feed worker {wid} sent {reply[0]!r} before 'ready'")
                self.pids.append(reply[2])
            # Every process has it mapped: the name is no longer needed, and
            # without it nothing is left in /dev/shm whatever ends the
            # processes (the memory goes with the last mapping).
            _unlink(state)
        except BaseException:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def shm_name(self) -> str | None:
        return None if self._state.shm is None else self._state.shm.name

    def close(self) -> None:
        """Stop and join the workers and unlink the shared memory. Safe twice.

        Waits (a while) for a :meth:`get` running in another thread, then
        shuts down regardless; that ``get`` then fails with WorkerError.
        """
        locked = self._lock.acquire(timeout=2 * _JOIN_TIMEOUT_S)
        try:
            self._finalizer()
        finally:
            if locked:
                self._lock.release()

    # -- prefetching ------------------------------------------------------------

    def get(self, key: int, n: int, rows_of: Callable[[int], np.ndarray], index: int) -> Any | None:
        """Batch ``key`` if it was prefetched, else None; then prefetch onwards.

        Args:
            key: which batch (0..n-1) in the pool's order.
            n: the number of batches in the order.
            rows_of: the rows of batch ``k``.
            index: the batch index the caller asked for (for messages).

        Raises:
            WorkerError: a worker died.
            Exception: a worker's exception, re-raised with its type kept.
        """
        with self._lock:
            if self.closed:
                raise WorkerError(f"the worker pool reading {self.description} was closed")
            try:
                if key not in self._tasks and key not in self._ready:
                    if key >= self._next:
                        # A jump forward (or the first request): follow it.
                        # A batch behind the stream (asked again, or skipped
                        # earlier) is read by the caller, leaving the stream.
                        self._miss(key)
                        self._fill(n, rows_of)
                    return None
                self._misses = 0
                while key not in self._ready:
                    self._wait(key)
                reply = self._ready.pop(key)
                # (..., (seconds, major faults), worker id): _worker_main, _handle.
                self.last_read = reply[-2]
                slot = reply[2]
                lend = reply[0] == "ok" and len(self._lent) < self._max_lent
                try:
                    batch = self._unpack(reply, lend)
                except BaseException:
                    self._free.append(slot)
                    raise
                if lend:
                    self._lent.add(slot)
                else:
                    self._free.append(slot)
                self._next = max(self._next, key + 1)
                self._fill(n, rows_of)
                return batch
            except BaseException:
                # Not close(): this thread holds the lock close() waits for.
                self._finalizer()
                raise

    def restart(self) -> None:
        """A new epoch: follow a new order from its batch 0, with the same processes.

        What is ready or in flight was for the old order: dropped, once the
        batches the workers are making have arrived (a few batches' time),
        so that every slot is free for the new order. New processes each
        epoch would cost more than that: a process maps the file's pages
        one fault at a time, and a fresh one read an epoch of "volume" at
        40,000 samples/s against 105,000 once its mapping was made.

        Raises:
            WorkerError: a worker died meanwhile, or the pool was closed (it
                closes itself before raising).
        """
        with self._lock:
            if self.closed:
                raise WorkerError(f"the worker pool reading {self.description} was closed")
            try:
                self._drop_order()
                # Their slots are needed from the first batch on; each worker
                # finishes what it was sent.
                while self._inflight:
                    self._wait(None)
            except BaseException:
                self._finalizer()
                raise
            self._next = 0
            self._misses = 0
            self._prefetch = True

    def _drop_order(self) -> None:
        """Give up the batches ready or in flight for the order followed so far."""
        for reply in self._ready.values():
            self._free.append(reply[2])
        self._ready.clear()
        for ticket in self._tasks.values():
            slot, wid, _ = self._inflight[ticket]
            self._inflight[ticket] = (slot, wid, None)
        self._tasks.clear()

    def _miss(self, key: int) -> None:
        self._misses += 1
        # Whatever is in flight is for an order the caller does not follow.
        self._drop_order()
        self._next = key + 1
        if self._misses >= _MAX_MISSES and self._prefetch:
            self._prefetch = False
            logger.info("batches are asked for in an order the workers cannot follow; reading in-process")

    def _fill(self, n: int, rows_of: Callable[[int], np.ndarray]) -> None:
        while self._returned:
            slot = self._returned.popleft()
            self._lent.discard(slot)
            self._free.append(slot)
        if not self._prefetch:
            return
        while self._free and self._next < n:
            key = self._next
            self._next += 1
            if key in self._tasks or key in self._ready:
                continue
            self._submit(key, rows_of(key))

    def _submit(self, key: int, rows: np.ndarray) -> None:
        slot = self._free.pop()
        wid = min(range(len(self._pending)), key=self._pending.__getitem__)
        ticket = self._tickets
        self._tickets += 1
        try:
            self._state.conns[wid].send((ticket, slot, rows, key))
        except OSError:  # the worker is gone (EPIPE)
            self._free.append(slot)
            self._dead(wid, None)
        self._pending[wid] += 1
        self._inflight[ticket] = (slot, wid, key)
        self._tasks[key] = ticket

    def _wait(self, key: int) -> None:
        """Wait for any reply; raise if a worker died."""
        state = self._state
        conns = state.conns
        sentinels = [p.sentinel for p in state.procs]
        ready = multiprocessing.connection.wait(conns + sentinels, timeout=_IDLE_POLL_S * 5)
        for obj in ready:
            if obj in sentinels:
                continue
            wid = conns.index(obj)  # type: ignore[arg-type]
            while obj.poll():  # type: ignore[union-attr]
                self._handle(self._recv(wid, waiting_for=key))
        for obj in ready:
            if obj in sentinels:
                wid = sentinels.index(obj)
                if conns[wid].poll():  # its last words first
                    continue
                self._dead(wid, key)

    def _recv(self, wid: int, waiting_for: int | None) -> tuple[Any, ...]:
        conn = self._state.conns[wid]
        proc = self._state.procs[wid]
        while True:
            try:
                if conn.poll(_IDLE_POLL_S):
                    return conn.recv()
            except (EOFError, OSError):
                self._dead(wid, waiting_for)
            if not proc.is_alive():
                if conn.poll(0):
                    continue
                self._dead(wid, waiting_for)

    def _dead(self, wid: int, key: int | None) -> None:
        proc = self._state.procs[wid]
        proc.join(0.5)
        pid = self.pids[wid] if wid < len(self.pids) else proc.pid
        doing = [k for _, w, k in self._inflight.values() if w == wid and k is not None]
        if key is not None and key in doing:
            what = f" while making batch {key}"
        elif doing:
            what = f" while making batch {doing[0]}"
        elif not self.pids or wid >= len(self.pids):
            what = " while starting (its own error, if any, is on stderr)"
        else:
            what = ""
        raise WorkerError(
            f"h5feed worker {wid} (pid {pid}) reading {self.description} {_how_it_ended(proc.exitcode)}{what}"
        )

    def _handle(self, reply: tuple[Any, ...]) -> None:
        kind, ticket, slot = reply[0], reply[1], reply[2]
        _, wid, key = self._inflight.pop(ticket)
        self._pending[wid] -= 1
        if kind == "pickled":
            self.max_needed = max(self.max_needed, int(reply[4]))
        if key is None:  # for an order given up
            self._free.append(slot)
            return
        del self._tasks[key]
        self._ready[key] = reply + (wid,)

    def _unpack(self, reply: tuple[Any, ...], lend: bool) -> Any:
        kind = reply[0]
        wid = reply[-1]
        if kind == "ok":
            shm = self._state.shm
            if shm is None:  # pragma: no cover - get() checks closed first
                raise WorkerError(f"the worker pool for {self.description} is closed")
            base = reply[2] * self.slot_bytes
            if not lend:
                buf = shm.buf if self._mapping is None else self._mapping
                return _decode(reply[3], functools.partial(_copy_from, buf, base))
            # The slot as an array over the mapping itself: numpy makes every
            # view of it refer to it (a view's base collapses only through
            # arrays that view other arrays), so it lives as long as the
            # batch's arrays do, and the slot returns when it goes.
            whole = np.frombuffer(self._mapping, dtype=np.uint8, count=self.slot_bytes, offset=base)
            weakref.finalize(whole, self._returned.append, reply[2])
            return _decode(reply[3], functools.partial(_view_in, whole))
        if kind == "pickled":
            return reply[3]
        exc = _unpack_exception(reply[3])
        from ._batch import with_context

        pid = self.pids[wid] if wid < len(self.pids) else "?"
        new = with_context(exc, f"in h5feed worker {wid} (pid {pid})")
        new.__cause__ = _RemoteTraceback(reply[4])
        raise new
