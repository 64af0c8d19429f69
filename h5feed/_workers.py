"""h5feed's own worker processes, which hand batches back through shared memory.

NOTE [ Own workers ]
:class:`BatchPool` runs ``workers`` processes over one shared-memory segment
cut into ``slots`` fixed-size slots. A worker makes a batch straight into a
slot and sends back only where its arrays lie; the parent lends the batch out
as arrays over the slot (no copy), and the slot is used again once every one
of those arrays is gone. At most half the slots are lent at a time; past
that, batches are copied out, so prefetching never stops while the caller
holds batches. A batch that outgrows its slot comes back pickled, and the
next epoch's pool has slots big enough. Prefetching follows the order batches
are asked for; after repeated misses it stops for the epoch. A new epoch
(:meth:`BatchPool.restart`) keeps the processes and their mappings of the file.
Failures never hang and never lose their type: a dead worker raises
:class:`~h5feed.errors.WorkerError` naming the worker, its pid, how it ended
and its batch; a worker's exception is re-raised with its type kept and the
worker's traceback as its cause; either way the pool closes itself first.
The segment's name is unlinked once every worker has mapped it, so nothing is
left in ``/dev/shm`` however the processes end. Workers ignore SIGINT and
exit when their parent is gone. A task carries its batch's place (seed,
epoch, place in the order, shard), from which a transform's ``rng`` comes;
a worker seeds numpy's and Python's global generators from it whenever the
epoch changes (NOTE [ Random streams ] in ``_streams.py``).
See the design note ``docs/design/own-workers.md``.

Parent and workers exchange the messages defined below (small frozen
dataclasses), never bare tuples: :class:`_Task` and :class:`_Stop` from the
parent; :class:`_Ready`, then one reply per task (:class:`_InSlot`,
:class:`_Pickled` or :class:`_Failed`) from a worker.
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
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, ClassVar, NamedTuple

import numpy as np

from ._proc import pid_alive
from ._streams import BatchPlace, seed_globals
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


# -- messages between the parent and a worker ----------------------------------


class _Wire:
    """Base of the messages: pickles as its class and its field values.

    Messages cross the pipe for every batch; a frozen slotted dataclass would
    otherwise pickle a state dict and set it field by field on arrival.
    """

    __slots__ = ()
    __match_args__: ClassVar[tuple[str, ...]]  # the dataclass's fields, in order

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return (type(self), tuple([getattr(self, name) for name in self.__match_args__]))


@dataclass(frozen=True, slots=True)
class _Task(_Wire):
    """Parent -> worker: make the batch of ``rows`` into ``slot``."""

    ticket: int  # this task's number, never reused; the reply names it
    slot: int
    rows: np.ndarray
    index: int  # the batch, for error messages
    place: BatchPlace | None = None  # where the batch sits: its random streams


@dataclass(frozen=True, slots=True)
class _Stop(_Wire):
    """Parent -> worker: finish and exit."""


@dataclass(frozen=True, slots=True)
class _Ready(_Wire):
    """Worker -> parent, first: the segment is mapped."""

    worker: int
    pid: int


@dataclass(frozen=True, slots=True)
class _Reply(_Wire):
    """Worker -> parent: what became of task ``ticket`` (one of the subclasses)."""

    ticket: int
    slot: int
    worker: int
    # (seconds, major page faults) of reading the rows, before any transform:
    # the parent reads ahead for the workers when they needed the disk.
    read: tuple[float, int | None]


@dataclass(frozen=True, slots=True)
class _ArrayAt(_Wire):
    """Where one array of a batch lies in its slot."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # bytes from the slot's start


@dataclass(frozen=True, slots=True)
class _InSlot(_Reply):
    """The batch is in its slot: its structure, each array an :class:`_ArrayAt`."""

    layout: Any


@dataclass(frozen=True, slots=True)
class _Pickled(_Reply):
    """The batch did not fit its slot (``needed`` bytes): here it is, pickled."""

    batch: Any
    needed: int


@dataclass(frozen=True, slots=True)
class _PackedError(_Wire):
    """An exception, pickled where it can be, else its type's name and message."""

    pickled: bytes | None
    type_name: str
    message: str


@dataclass(frozen=True, slots=True)
class _Failed(_Reply):
    """Making the batch raised: the exception and the worker's traceback."""

    error: _PackedError
    traceback: str


# -- a batch in a slot ----------------------------------------------------------


class _SlotAlloc:
    """Hands out arrays inside one slot, for a batch to be read straight into."""

    def __init__(self, buf: memoryview, base: int, size: int) -> None:
        self.buf, self.base, self.size = buf, base, size
        self.pos = [0]
        self.placed: dict[int, tuple[np.ndarray, _ArrayAt]] = {}  # id(array) -> (array, where)

    def __call__(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        start = -(-self.pos[0] // _ALIGN) * _ALIGN
        end = start + count * dtype.itemsize
        if end > self.size:
            raise _TooBig(end)
        self.pos[0] = end
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.base + start).reshape(shape)
        self.placed[id(arr)] = (arr, _ArrayAt(arr.dtype, arr.shape, start))
        return arr

    def release(self) -> None:
        self.placed.clear()


def _encode(obj: Any, buf: memoryview, base: int, size: int, pos: list[int], placed: dict | None = None) -> Any:
    """Copy the arrays of ``obj`` into ``buf[base:base+size]``; return its layout.

    The layout is ``obj`` with each array replaced by its :class:`_ArrayAt`
    (tuples, lists and dicts rebuilt; other values kept). Arrays in
    ``placed`` (made by :class:`_SlotAlloc`) are already there.
    """
    if isinstance(obj, np.ndarray):
        if placed and id(obj) in placed and placed[id(obj)][0] is obj:
            return placed[id(obj)][1]
        if obj.dtype.hasobject:
            return obj
        start = -(-pos[0] // _ALIGN) * _ALIGN
        end = start + obj.nbytes
        if end > size:
            raise _TooBig(end)
        pos[0] = end
        if obj.nbytes:
            dest = np.frombuffer(buf, dtype=obj.dtype, count=obj.size, offset=base + start).reshape(obj.shape)
            np.copyto(dest, obj, casting="no")
            del dest
        return _ArrayAt(obj.dtype, obj.shape, start)
    if isinstance(obj, tuple):
        return tuple([_encode(v, buf, base, size, pos, placed) for v in obj])
    if isinstance(obj, list):
        return [_encode(v, buf, base, size, pos, placed) for v in obj]
    if isinstance(obj, dict):
        return {k: _encode(v, buf, base, size, pos, placed) for k, v in obj.items()}
    return obj


def _needed_bytes(obj: Any) -> int:
    if isinstance(obj, np.ndarray):
        return obj.nbytes + _ALIGN
    if isinstance(obj, (tuple, list)):
        return sum(_needed_bytes(v) for v in obj)
    if isinstance(obj, dict):
        return sum(_needed_bytes(v) for v in obj.values())
    return 0


def _decode(layout: Any, array: Callable[[_ArrayAt], np.ndarray]) -> Any:
    """The batch ``layout`` describes; ``array(at)`` makes its arrays."""
    if isinstance(layout, _ArrayAt):
        return array(layout)
    if isinstance(layout, tuple):
        return tuple([_decode(v, array) for v in layout])
    if isinstance(layout, list):
        return [_decode(v, array) for v in layout]
    if isinstance(layout, dict):
        return {k: _decode(v, array) for k, v in layout.items()}
    return layout


def _copy_from(buf: Any, base: int, at: _ArrayAt) -> np.ndarray:
    out = np.empty(at.shape, dtype=at.dtype)
    if out.nbytes:
        src = np.frombuffer(buf, dtype=at.dtype, count=out.size, offset=base + at.offset).reshape(at.shape)
        np.copyto(out, src)
        del src
    return out


def _view_in(slot: np.ndarray, at: _ArrayAt) -> np.ndarray:
    dtype = np.dtype(at.dtype)
    count = int(np.prod(at.shape, dtype=np.int64))
    return slot[at.offset:at.offset + count * dtype.itemsize].view(dtype).reshape(at.shape)


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


def _pack_exception(exc: BaseException) -> _PackedError:
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return _PackedError(data, name, "")
    except Exception:
        return _PackedError(None, name, str(exc))


def _unpack_exception(packed: _PackedError) -> BaseException:
    if packed.pickled is not None:
        try:
            return pickle.loads(packed.pickled)
        except Exception as exc:  # a class the parent cannot import
            return WorkerError(f"a worker raised an exception the parent cannot unpickle: {exc}")
    return WorkerError(f"{packed.type_name}: {packed.message}")


# -- the worker process ---------------------------------------------------------


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _keep_freed_memory() -> bool:
    """Let this worker process reuse the memory of one batch for the next (glibc).

    By default glibc serves a large allocation from a fresh mapping, and
    gives a freed heap top back to the system once it passes twice the
    largest such allocation; either way the next batch touches new pages,
    one page fault per page. A transform that keeps a few batch-sized
    temporaries alive at once would pay that on every batch. The worker is
    h5feed's own process, so its allocator is h5feed's to tune; the training
    process's is left alone.

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


def _make_in_slot(maker: Any, task: _Task, buf: memoryview, slot_bytes: int, worker_id: int) -> _Reply:
    """Make the batch of ``task`` into its slot; the reply that says how it went."""
    base = task.slot * slot_bytes
    alloc = _SlotAlloc(buf, base, slot_bytes)
    read: list[tuple[float, int | None]] = [(0.0, None)]  # maker.make's on_read reports
    batch = None
    try:
        if getattr(maker, "transform", None) is None:
            # Read straight into the slot: one copy, not two.
            try:
                batch = maker.make(task.rows, task.index, alloc, on_read=read.append, place=task.place)
            except _TooBig:
                alloc = _SlotAlloc(buf, base, slot_bytes)
        if batch is None:
            batch = maker.make(task.rows, task.index, on_read=read.append, place=task.place)
        try:
            layout = _encode(batch, buf, base, slot_bytes, alloc.pos, alloc.placed)
            return _InSlot(task.ticket, task.slot, worker_id, read[-1], layout)
        except _TooBig:
            return _Pickled(task.ticket, task.slot, worker_id, read[-1], batch, _needed_bytes(batch))
    except BaseException as exc:  # sent back; the parent re-raises
        return _Failed(task.ticket, task.slot, worker_id, read[-1], _pack_exception(exc), traceback.format_exc())
    finally:
        alloc.release()


def _worker_main(
    conn: multiprocessing.connection.Connection,
    maker: Any,
    shm_name: str,
    slot_bytes: int,
    worker_id: int,
    parent_pid: int,
) -> None:
    """Serve :class:`_Task` messages until told to stop (:class:`_Stop`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _keep_freed_memory()
    shm = shared_memory.SharedMemory(name=shm_name)
    buf = shm.buf
    seeded: tuple[int, int] | None = None  # (seed, epoch) of the global generators
    try:
        conn.send(_Ready(worker_id, os.getpid()))
        while True:
            if not conn.poll(_IDLE_POLL_S):
                if not pid_alive(parent_pid):
                    return
                continue
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if not isinstance(msg, _Task):
                return  # _Stop
            place = msg.place
            if place is not None and (place.seed, place.epoch) != seeded:
                seeded = (place.seed, place.epoch)
                seed_globals(place.seed, place.epoch, worker_id)
            reply = _make_in_slot(maker, msg, buf, slot_bytes, worker_id)
            try:
                conn.send(reply)
            except (BrokenPipeError, EOFError, OSError):
                return
            del reply
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


class _InFlight(NamedTuple):
    """A task sent and not answered yet (parent side)."""

    slot: int
    worker: int
    key: int | None  # the batch of the order followed; None: an order given up


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
            conn.send(_Stop())
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
            on_read=None, place=None) -> batch`` and ``close()``
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
        self._inflight: dict[int, _InFlight] = {}  # by ticket
        self._tasks: dict[int, int] = {}  # key -> ticket, of the order followed
        self._ready: dict[int, _Reply] = {}  # by key
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
                ready = self._recv(wid, waiting_for=None)
                if not isinstance(ready, _Ready):  # pragma: no cover - protocol error
                    raise WorkerError(f"h5feed worker {wid} sent {type(ready).__name__} before _Ready")
                self.pids.append(ready.pid)
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

    def get(
        self,
        key: int,
        n: int,
        rows_of: Callable[[int], np.ndarray],
        index: int,
        place_of: Callable[[int], BatchPlace | None] | None = None,
    ) -> Any | None:
        """Batch ``key`` if it was prefetched, else None; then prefetch onwards.

        Args:
            key: which batch (0..n-1) in the pool's order.
            n: the number of batches in the order.
            rows_of: the rows of batch ``k``.
            index: the batch index the caller asked for (for messages).
            place_of: where batch ``k`` sits (its random streams); None: nowhere.

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
                        self._fill(n, rows_of, place_of)
                    return None
                self._misses = 0
                while key not in self._ready:
                    self._wait(key)
                reply = self._ready.pop(key)
                self.last_read = reply.read
                slot = reply.slot
                lend = isinstance(reply, _InSlot) and len(self._lent) < self._max_lent
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
                self._fill(n, rows_of, place_of)
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
        epoch would cost more than that: a fresh process maps the file's
        pages again, one fault at a time.

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
            self._free.append(reply.slot)
        self._ready.clear()
        for ticket in self._tasks.values():
            self._inflight[ticket] = self._inflight[ticket]._replace(key=None)
        self._tasks.clear()

    def _miss(self, key: int) -> None:
        self._misses += 1
        # Whatever is in flight is for an order the caller does not follow.
        self._drop_order()
        self._next = key + 1
        if self._misses >= _MAX_MISSES and self._prefetch:
            self._prefetch = False
            logger.info("batches are asked for in an order the workers cannot follow; reading in-process")

    def _fill(
        self, n: int, rows_of: Callable[[int], np.ndarray], place_of: Callable[[int], BatchPlace | None] | None
    ) -> None:
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
            self._submit(key, rows_of(key), None if place_of is None else place_of(key))

    def _submit(self, key: int, rows: np.ndarray, place: BatchPlace | None) -> None:
        slot = self._free.pop()
        wid = min(range(len(self._pending)), key=self._pending.__getitem__)
        ticket = self._tickets
        self._tickets += 1
        try:
            self._state.conns[wid].send(_Task(ticket, slot, rows, key, place))
        except OSError:  # the worker is gone (EPIPE)
            self._free.append(slot)
            self._dead(wid, None)
        self._pending[wid] += 1
        self._inflight[ticket] = _InFlight(slot, wid, key)
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

    def _recv(self, wid: int, waiting_for: int | None) -> Any:
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
        doing = [t.key for t in self._inflight.values() if t.worker == wid and t.key is not None]
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

    def _handle(self, reply: _Reply) -> None:
        task = self._inflight.pop(reply.ticket)
        self._pending[task.worker] -= 1
        if isinstance(reply, _Pickled):
            self.max_needed = max(self.max_needed, reply.needed)
        if task.key is None:  # for an order given up
            self._free.append(reply.slot)
            return
        del self._tasks[task.key]
        self._ready[task.key] = reply

    def _unpack(self, reply: _Reply, lend: bool) -> Any:
        if isinstance(reply, _InSlot):
            shm = self._state.shm
            if shm is None:  # pragma: no cover - get() checks closed first
                raise WorkerError(f"the worker pool for {self.description} is closed")
            base = reply.slot * self.slot_bytes
            if not lend:
                buf = shm.buf if self._mapping is None else self._mapping
                return _decode(reply.layout, functools.partial(_copy_from, buf, base))
            # The slot as an array over the mapping itself: numpy makes every
            # view of it refer to it (a view's base collapses only through
            # arrays that view other arrays), so it lives as long as the
            # batch's arrays do, and the slot returns when it goes.
            whole = np.frombuffer(self._mapping, dtype=np.uint8, count=self.slot_bytes, offset=base)
            weakref.finalize(whole, self._returned.append, reply.slot)
            return _decode(reply.layout, functools.partial(_view_in, whole))
        if isinstance(reply, _Pickled):
            return reply.batch
        if not isinstance(reply, _Failed):  # pragma: no cover - protocol error
            raise WorkerError(f"h5feed worker {reply.worker} sent an unknown reply {type(reply).__name__}")
        exc = _unpack_exception(reply.error)
        from ._batch import with_context

        wid = reply.worker
        pid = self.pids[wid] if wid < len(self.pids) else "?"
        new = with_context(exc, f"in h5feed worker {wid} (pid {pid})")
        new.__cause__ = _RemoteTraceback(reply.traceback)
        raise new
