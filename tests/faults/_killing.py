"""The kill-point harness: kill a writer, then check that nothing was lost.

:func:`kill_once` runs ``writer_script.py`` in its own process and kills it,
either at a deterministic point of the write (a hook inside the script) or
after a random delay; :func:`judge` then decides whether data was lost:

- the target must be absent (no earlier version), byte-identical to the
  earlier version, or a complete new version (valid, with exactly the rows
  written and matching SHA-256s) -- never anything else;
- a SIGINT leaves no temporary file; after a SIGKILL any temporary file
  left is either refused at open (incomplete) or whole, and the next writer
  to the same target removes it;
- the killed command exits non-zero.

A kill must also have landed where it was aimed (:func:`aim_problems`):
after the kill point was reached (the hook's mark on stderr, or READY for a
timed kill), and by the signal -- death by SIGKILL, or the KeyboardInterrupt
exit status 130 -- so that a writer that fails early with an ordinary error
cannot pass as "killed, nothing lost".
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

import h5feed
from h5feed import _record, errors

from _harness import CHILD_CWD, FAULTS, PYTHON, child_env, leftovers

sys.path.insert(0, str(FAULTS))
import writer_script  # noqa: E402

SCRIPT = str(FAULTS / "writer_script.py")

# (point, version): version 0 renames with os.link (no earlier file),
# version 1 with os.replace over version 0.
DETERMINISTIC_POINTS = [
    ("create:after", 0),
    ("write#1", 0),
    ("write#7", 1),
    ("write#20:after", 0),
    ("ids#3", 1),
    ("attr", 0),
    ("attr:after", 1),
    ("flush", 0),
    ("flush:after", 1),
    ("close", 1),
    ("close:after", 0),
    ("fsync", 0),
    ("fsync:after", 1),
    ("link", 0),
    ("link:after", 0),
    ("unlink", 0),
    ("replace", 1),
    ("replace:after", 1),
    ("fsync#2", 1),  # the folder's fsync after the rename
]


@dataclasses.dataclass
class Outcome:
    """What one kill left behind."""

    case: str
    returncode: int
    completed: bool  # the write finished before the kill landed
    lost: list[str]  # empty when nothing was lost
    seconds: float
    missed: list[str] = dataclasses.field(default_factory=list)  # why the kill was not where aimed

    @property
    def ok(self) -> bool:
        """Nothing was lost, and the kill landed where it was aimed."""
        return not self.lost and not self.missed

    def __str__(self) -> str:
        return f"{self.case}: exit status {self.returncode}; lost: {self.lost}; missed its aim: {self.missed}"


def aim_problems(*, signame: str, rc: int, stderr: str, point: str | None, in_child: bool,
                 ready: bool = True) -> list[str]:
    """Why a kill did not land where it was aimed (empty when it did).

    Args:
        signame: ``KILL`` or ``INT``.
        rc: the exit status of the command that was killed (or whose
            writing child was).
        stderr: its standard error.
        point: the deterministic kill point, or None for a timed kill.
        in_child: the hook fired in the writing child of ``run_isolated``,
            whose death the command reports as an error.
        ready: a timed kill was sent after the writer said READY.
    """
    problems = []
    tail = stderr.strip()[-400:]
    marks = re.findall(rf"^{re.escape(writer_script.KILL_POINT_MARK)} (\S+) pid (\d+)$", stderr, re.M)
    if point is not None and [m[0] for m in marks] != [point]:
        problems.append(f"the kill point {point!r} was not reached once (marks {marks!r}); stderr: {tail}")
    if point is None and not ready:
        problems.append(f"the writer died before it was ready; stderr: {tail}")
    if signame == "KILL" and in_child:
        pid = marks[0][1] if marks else r"\d+"
        if rc != 1 or not re.search(rf"\(pid {pid}\) was killed by SIGKILL", stderr):
            problems.append(f"exit status {rc}, not the report of a writing child killed by SIGKILL; stderr: {tail}")
    elif signame == "KILL":
        if rc != -signal.SIGKILL:
            problems.append(f"exit status {rc}, not death by SIGKILL; stderr: {tail}")
    elif rc != 130 or "interrupted" not in stderr:
        problems.append(f"exit status {rc}, not 130 after KeyboardInterrupt; stderr: {tail}")
    return problems


def write_version(target: Path, version: int) -> bytes:
    """Write ``version`` of the data to ``target`` in this process."""
    ids, x, y = writer_script.expected(version)
    h5feed.write_arrays(target, ids, x, y, splits={"train": range(0, len(ids), 2)}, n_classes=7, overwrite=True)
    return target.read_bytes()


def whole_version(path: Path) -> int | None:
    """The version ``path`` holds when it is a complete, correct file; else None.

    Raises:
        h5feed.FormatError: the file is refused at open (incomplete, damaged).
    """
    info = h5feed.open_file(path)
    with h5py.File(path, "r") as f:
        ids = f["ids"].asstr()[()].tolist()
        version = 0 if ids and ids[0].startswith("v0-") else 1
        want_ids, want_x, want_y = writer_script.expected(version)
        if ids != want_ids or info.n_rows != len(want_ids):
            return None
        if not (np.array_equal(f["x"][()], want_x) and np.array_equal(f["y"][()], want_y)):
            return None
        if "splits" in f and not np.array_equal(f["splits/train"][()], np.arange(0, len(ids), 2)):
            return None
        for name, digest in info.completion["sha256"].items():
            if _record.dataset_sha256(f[name]) != digest:
                return None
    return version


def kill_once(
    folder: Path,
    *,
    mode: str,
    version: int,
    signame: str,
    point: str | None = None,
    delay: float | None = None,
    timeout: float = 60.0,
) -> Outcome:
    """Write ``version`` to ``folder/data.h5`` and kill the writer; judge it."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "data.h5"
    for stale in folder.iterdir():
        stale.unlink()
    previous = write_version(target, 0) if version == 1 else None
    case = f"{mode} v{version} {signame} at {point or f'{delay:.3f}s'}"
    args = [PYTHON, SCRIPT, str(target), str(version), mode]
    if point is not None:
        args += [point, signame]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=CHILD_CWD)
    ready = True
    try:
        if delay is not None:
            assert proc.stdout is not None
            ready = proc.stdout.readline().strip() == "READY"  # imports done, the write starts now
            time.sleep(delay)
            sig = {"KILL": signal.SIGKILL, "INT": signal.SIGINT}[signame]
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Outcome(case, -1, False, [f"the writer hung for {timeout} s after the signal"], timeout)
    seconds = time.perf_counter() - start
    rc = proc.returncode
    # A timed signal may come after the write is done (a fast writer), even
    # while Python exits: the write completed.
    completed = rc == 0 or (delay is not None and "WRITTEN" in stdout)
    lost = judge(folder, target, previous, version, signame, rc, completed, stderr)
    missed = [] if completed and point is None else aim_problems(
        signame=signame, rc=rc, stderr=stderr, point=point, in_child=mode == "isolated" and point is not None,
        ready=ready)
    return Outcome(case, rc, completed, lost, seconds, missed)


def judge(folder: Path, target: Path, previous: bytes | None, version: int, signame: str,
          rc: int, completed: bool, stderr: str) -> list[str]:
    lost: list[str] = []
    if not completed and rc == 0:
        lost.append("the killed command exited 0")
    # An isolated writer's child may outlive a killed parent for a moment
    # (the kernel tells it to stop); let it finish before judging.
    deadline = time.monotonic() + 15
    while _writers_alive(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    if target.exists():
        data = target.read_bytes()
        if previous is not None and data == previous:
            pass
        else:
            try:
                got = whole_version(target)
            except errors.FormatError as exc:
                got = None
                lost.append(f"the target is refused at open: {exc}")
            if got != version and not lost:
                lost.append(f"the target holds neither the previous file nor version {version} whole")
    elif previous is not None:
        lost.append("the previous version of the target is gone")
    elif completed:
        lost.append("the write completed but the target is missing")
    temps = leftovers(folder)
    if temps and signame == "INT":
        lost.append(f"SIGINT left temporary files {temps!r}")
    for name in temps:
        try:
            got = whole_version(folder / name)
        except errors.FormatError:
            continue  # refused at open: fine, never read as if whole
        if got is None:
            lost.append(f"the temporary file {name} opens as whole but holds wrong data")
    if temps:
        # The next run removes what a killed writer left.
        deadline = time.monotonic() + 10
        while True:
            w = h5feed.DatasetWriter(target, sample_shape=(1,), dtype="float32", overwrite=True)
            w.abort()
            if not leftovers(folder) or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # an orphaned isolated child still alive
        if leftovers(folder):
            lost.append(f"the next run did not remove {leftovers(folder)!r}")
    if completed and target.exists():
        try:
            if whole_version(target) != version:
                lost.append("the completed write left a wrong target")
        except errors.FormatError as exc:
            lost.append(f"the completed write left a target refused at open: {exc}")
    return lost


def _writers_alive(folder: Path) -> bool:
    """Whether a process that owns a temporary file in ``folder`` still runs."""
    from h5feed._proc import pid_alive as _alive

    for name in leftovers(folder):
        parts = name.rsplit(".", 4)  # .<base>.<host>.<pid>.<rand>.h5feed-tmp
        if len(parts) == 5 and parts[2].isdigit() and _alive(int(parts[2])):
            return True
    return False


def sweep(folder: Path, *, random_kills: int, seed: int = 0, modes=("arrays", "stream", "isolated")) -> list[Outcome]:
    """Every deterministic point with both signals, plus ``random_kills``."""
    outcomes = []
    k = 0
    for point, version in DETERMINISTIC_POINTS:
        for signame in ("KILL", "INT"):
            mode = "arrays" if (k % 2 == 0) else "stream"
            k += 1
            outcomes.append(kill_once(folder / "d", mode=mode, version=version, signame=signame, point=point))
    for point, version in DETERMINISTIC_POINTS[::3]:
        for signame in ("KILL", "INT"):
            outcomes.append(kill_once(folder / "d", mode="isolated", version=version, signame=signame, point=point))
    rng = np.random.default_rng(seed)
    durations = {mode: write_seconds(folder / "t", mode) for mode in modes}
    for i in range(random_kills):
        mode = modes[i % len(modes)]
        signame = ("KILL", "INT")[(i // len(modes)) % 2]
        # Aim anywhere in the write, from its first instruction to its exit.
        delay = float(rng.uniform(0.0, durations[mode]))
        outcomes.append(kill_once(folder / "d", mode=mode, version=int(rng.integers(0, 2)), signame=signame, delay=delay))
    return outcomes


def write_seconds(folder: Path, mode: str) -> float:
    """How long a write takes here, from READY to exit."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "timing.h5"
    if target.exists():
        target.unlink()
    args = [PYTHON, SCRIPT, str(target), "0", mode]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=CHILD_CWD)
    assert proc.stdout is not None
    proc.stdout.readline()
    start = time.perf_counter()
    proc.communicate(timeout=120)
    return time.perf_counter() - start


# -- the real command ------------------------------------------------------------

HOOKS = str(FAULTS / "_hooks")


def cli_sources(folder: Path, version: int) -> list[str]:
    """Write version ``version`` as X.npy, Y.npy, IDS.txt; the convert arguments."""
    src = folder / f"src{version}"
    src.mkdir(parents=True, exist_ok=True)
    ids, x, y = writer_script.expected(version)
    np.save(src / "x.npy", x)
    np.save(src / "y.npy", y)
    (src / "ids.txt").write_text("\n".join(ids) + "\n")
    return [str(src / "x.npy"), str(src / "y.npy"), "--ids", str(src / "ids.txt"), "--classes", "7"]


def kill_cli_once(
    folder: Path,
    *,
    version: int,
    signame: str,
    point: str | None = None,
    delay: float | None = None,
    checksum: bool = False,
    slow: float = 0.0,
    timeout: float = 60.0,
) -> Outcome:
    """``h5feed convert arrays`` version ``version`` to ``folder/data.h5``, killed.

    With ``point`` the hook fires in whichever process of the command reaches
    it first (the writing child, for every writing point); with ``delay``
    the signal goes to the command itself ``delay`` seconds after its
    writing child created the temporary file (the write is under way: a
    signal during the seconds of start-up would test nothing). ``slow``
    pauses that many seconds after each block written (``H5FEED_TEST_SLOW_WRITES``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out"
    out.mkdir(exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    target = out / "data.h5"
    previous = write_version(target, 0) if version == 1 else None
    args = [PYTHON, "-m", "h5feed", "convert", "arrays", *cli_sources(folder, version), "-o", str(target), "--quiet"]
    if version == 1:
        args.append("--overwrite")
    if checksum:
        args += ["--checksum", "--compression", "gzip", "--chunk-rows", "100"]
    env = child_env(PYTHONPATH=os.pathsep.join(filter(None, [HOOKS, os.environ.get("PYTHONPATH")])))
    once = folder / "fired"
    if once.exists():
        once.unlink()
    if point is not None:
        env["H5FEED_TEST_KILL_POINT"] = f"{point} {signame}"
        env["H5FEED_TEST_KILL_ONCE"] = str(once)
    if slow:
        env["H5FEED_TEST_SLOW_WRITES"] = str(slow)
    case = f"h5feed convert v{version} {signame} at {point or f'{delay:.3f}s into the write'}"
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=CHILD_CWD)
    started = True
    try:
        if delay is not None:
            deadline = time.monotonic() + timeout
            while not leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            started = bool(leftovers(out))
            time.sleep(delay)
            try:
                proc.send_signal(SIGNALS[signame])
            except ProcessLookupError:
                pass
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Outcome(case, -1, False, [f"the command hung for {timeout} s after the signal"], timeout)
    seconds = time.perf_counter() - start
    rc = proc.returncode
    # A timed signal may come after the write is done (a fast writer), even
    # while Python exits: the write completed.
    completed = rc == 0 or (delay is not None and "WRITTEN" in stdout)
    lost = judge(out, target, previous, version, signame, rc, completed, stderr)
    # Every writing point is reached in the command's writing child.
    missed = [] if completed and point is None else aim_problems(
        signame=signame, rc=rc, stderr=stderr, point=point, in_child=point is not None, ready=started)
    return Outcome(case, rc, completed, lost, seconds, missed)


SIGNALS = {"KILL": signal.SIGKILL, "INT": signal.SIGINT}
