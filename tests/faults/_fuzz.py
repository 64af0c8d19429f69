"""The damaged-file fuzz campaign: seeded mutants of sound files, each opened,
read and verified in a child process with a timeout.

A *base set* is one sound h5feed file of each storage layout in
:data:`LAYOUTS` (200 rows of 16 float32, 4 classes, two splits: the file of
issue 19's campaign), plus, for ``merged``, the two part files its virtual
datasets read. Mutant ``i`` of a layout is fully determined by
``(seed, layout, i)`` (:func:`mutate`): one of

- ``bytes``: 1 to 64 random bytes overwritten at random places;
- ``run``: a run of 1 to 64 random bytes;
- ``zero``: a block of 8 bytes to 4 KiB set to zero;
- ``truncate``: the file cut at a random length;

aimed, half the time, at the file's metadata (every byte that is not the raw
storage of a dataset: the superblock, object headers, B-trees, local and
global heaps -- the IDs' strings live there), where the parser lives;
otherwise anywhere. A merged
set damages its merged file or one of its parts.

:func:`check` opens the mutant with ``h5feed.open_file``, reads every row of
every column through the reader (in shuffled batches), the IDs, each split
and some rows by ID (as ``H5Sequence`` selects them), then runs ``h5feed info`` and ``h5feed
verify --json`` through the CLI's ``main``, and classifies the outcome
(:data:`OUTCOMES`). :func:`campaign` runs mutants in child processes
(:func:`_child`), each mutant under its own deadline: a child that dies
is a crash, one that stops answering is a hang, and the campaign goes on
with the next mutant in a fresh child.

Reproduce one mutant (and see what became of it): ``python
tests/faults/_fuzz.py --layouts checksummed --first 1234 --mutants 1 -v``;
``tests/faults/measure.py --fuzz N`` runs the large campaign.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FAULTS = Path(__file__).resolve().parent

LAYOUTS = ("contiguous", "chunked", "compressed", "checksummed", "merged")
ROWS, FEATURES, CLASSES = 200, 16, 4
MAIN = "data.h5"  # the file of a base set that is opened

# What can become of one mutant. The targets: no raw, unnamed, crash, hang or
# verify_missed anywhere; no data_wrong where the data is checksummed.
OUTCOMES = (
    "refused",  # open_file raised an h5feed error naming the file
    "read_error",  # it opened; reading raised an h5feed error naming the file
    "read_same",  # it opened and everything read back as written
    "data_wrong",  # x or y read back different, without an error
    "meta_wrong",  # x and y right, but IDs or split rows read back different
    "raw",  # an exception that is not an h5feed error escaped
    "unnamed",  # an h5feed error that names no file of the set
    "crash",  # the child died (a signal, a non-zero exit)
    "hang",  # no answer before the deadline
)
# Problems with `h5feed verify` and `h5feed info`, counted beside the outcome.
VERIFY_MISSED = "verify_missed"  # verify said sound, yet the file did not read back whole
CLI_BAD = "cli_bad"  # an exit status other than 0/1, or a traceback on stderr
VERIFY_QUIET = "verify_quiet"  # exit 1 without naming a problem


def expected() -> dict[str, Any]:
    """The data every base file holds."""
    rng = np.random.default_rng(19)
    x = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, ROWS)
    rows = np.arange(ROWS)
    return {
        "ids": [f"sample-{i:04d}" for i in range(ROWS)],
        "x": x,
        "y": y,
        "splits": {"train": rows[rows % 4 != 0], "validation": rows[rows % 4 == 0]},
    }


def write_base(folder: Path, layout: str) -> Path:
    """Write the sound set of ``layout`` into ``folder``; return its main file."""
    import h5feed

    folder.mkdir(parents=True, exist_ok=True)
    data = expected()
    ids, x, y, splits = data["ids"], data["x"], data["y"], data["splits"]
    target = folder / MAIN
    if layout == "merged":
        from h5feed.merge import merge_files

        half = ROWS // 2
        parts = []
        for k, (lo, hi) in enumerate(((0, half), (half, ROWS))):
            part = folder / f"part-{k}.h5"
            local = {name: rows[(rows >= lo) & (rows < hi)] - lo for name, rows in splits.items()}
            h5feed.write_arrays(part, ids[lo:hi], x[lo:hi], y[lo:hi], splits=local, n_classes=CLASSES)
            parts.append(part)
        merge_files(parts, target)
        return target
    options: dict[str, Any] = {
        "contiguous": {},
        "compressed": {"compression": "gzip", "chunk_rows": 25},
        "checksummed": {"checksum": True, "chunk_rows": 25},
    }.get(layout, {})
    if layout == "chunked":
        # chunk_rows alone does not chunk a file of known length: stream it.
        with h5feed.DatasetWriter(target, sample_shape=(FEATURES,), dtype="float32", n_classes=CLASSES,
                                  chunk_rows=25) as w:
            w.extend(ids, x, y)
            for name, rows in splits.items():
                w.add_split(name, rows)
        return target
    h5feed.write_arrays(target, ids, x, y, splits=splits, n_classes=CLASSES, **options)
    return target


def data_ranges(path: Path) -> list[tuple[int, int]]:
    """``(start, stop)`` byte ranges of the raw storage of every dataset in ``path``.

    (The strings of the IDs live in HDF5's global heap, which is metadata:
    the IDs' raw storage holds references into it.)
    """
    import h5py

    ranges = []
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visit(names.append)
        for name in names:
            dset = f[name]
            if not isinstance(dset, h5py.Dataset) or dset.is_virtual:
                continue
            if dset.chunks is None:
                offset = dset.id.get_offset()
                if offset is not None:
                    ranges.append((int(offset), int(offset) + int(dset.id.get_storage_size())))
            else:
                for i in range(dset.id.get_num_chunks()):
                    info = dset.id.get_chunk_info(i)
                    ranges.append((int(info.byte_offset), int(info.byte_offset) + int(info.size)))
    return sorted(ranges)


@dataclass
class BaseSet:
    """A sound set, held in memory: file name -> bytes, and where its metadata lies."""

    layout: str
    files: dict[str, bytes]
    metadata: dict[str, np.ndarray] = field(default_factory=dict)  # file -> offsets of metadata bytes

    @classmethod
    def load(cls, folder: Path, layout: str) -> BaseSet:
        files = {p.name: p.read_bytes() for p in sorted(folder.glob("*.h5"))}
        metadata = {}
        for name, raw in files.items():
            keep = np.ones(len(raw), dtype=bool)
            for start, stop in data_ranges(folder / name):
                keep[start:stop] = False
            metadata[name] = np.flatnonzero(keep)
        return cls(layout, files, metadata)


KINDS = ("bytes", "run", "zero", "truncate")
KIND_WEIGHTS = (0.35, 0.25, 0.2, 0.2)


def mutate(base: BaseSet, seed: int, index: int) -> tuple[dict[str, bytes], str]:
    """Mutant ``index`` of ``base``: the damaged set and what was done to it."""
    rng = np.random.default_rng([seed, LAYOUTS.index(base.layout), index])
    names = sorted(base.files)
    target = MAIN if len(names) == 1 or rng.random() < 0.5 else str(rng.choice([n for n in names if n != MAIN]))
    raw = bytearray(base.files[target])
    size = len(raw)
    kind = str(rng.choice(KINDS, p=KIND_WEIGHTS))
    aim = "metadata" if rng.random() < 0.5 else "anywhere"
    meta = base.metadata[target]

    def position() -> int:
        return int(meta[rng.integers(meta.size)]) if aim == "metadata" else int(rng.integers(size))

    if kind == "bytes":
        count = int(rng.integers(1, 65))
        where = sorted({position() for _ in range(count)})
        for at in where:
            raw[at] = int(rng.integers(256))
        what = f"{len(where)} random byte(s) at {where[:4]}{'...' if len(where) > 4 else ''}"
    elif kind == "run":
        count = int(rng.integers(1, 65))
        at = min(position(), size - count)
        raw[at : at + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
        what = f"a run of {count} random byte(s) at {at}"
    elif kind == "zero":
        count = 1 << int(rng.integers(3, 13))
        at = min(position(), max(0, size - count))
        raw[at : at + count] = bytes(min(count, size - at))
        what = f"{count} zero byte(s) at {at}"
    else:
        at = position() if aim == "metadata" else int(rng.integers(size))
        del raw[at:]
        what = f"cut to {at} of {size} bytes"
    damaged = dict(base.files)
    damaged[target] = bytes(raw)
    return damaged, f"{base.layout} #{index}: {target}: {what} ({aim})"


# -- one mutant, in the child ------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def check(folder: Path, allow_virtual: bool) -> dict[str, Any]:
    """Open, read and verify the set in ``folder``; classify what happened."""
    import h5feed
    from h5feed import _select
    from h5feed._parts import make_reader
    from h5feed.cli import main as cli_main

    path = str(folder / MAIN)
    files = [str(p) for p in folder.glob("*.h5")]
    want = expected()
    answer: dict[str, Any] = {"outcome": None, "detail": "", "problems": []}

    def named(exc: BaseException) -> bool:
        return any(name in str(exc) for name in files)

    def fail(stage: str, exc: BaseException) -> None:
        if not isinstance(exc, h5feed.H5FeedError):
            answer["outcome"], answer["detail"] = "raw", f"{stage}: {_first_line(exc)}"
        elif not named(exc):
            answer["outcome"], answer["detail"] = "unnamed", f"{stage}: {_first_line(exc)}"
        else:
            answer["outcome"] = "refused" if stage == "open" else "read_error"
            answer["detail"] = f"{stage}: {_first_line(exc)}"

    options = {"allow_virtual": True} if allow_virtual else {}
    stage = "open"
    try:
        layout = h5feed.open_file(path, **options)
        stage = "read"
        reader = make_reader(layout)
        try:
            order = np.random.default_rng(0).permutation(layout.n_rows)
            got = {}
            for name in ("x", "y"):
                col = layout.column(name)
                out = np.empty(col.shape, dtype=col.dtype)
                for start in range(0, layout.n_rows, 16):
                    rows = order[start : start + 16]
                    out[rows] = reader.read(name, rows)
                got[name] = out
            ids = reader.read_ids(np.arange(layout.n_rows))
        finally:
            reader.close()
        splits = {name: _select.select_rows(path, name, None, allow_virtual=allow_virtual)[1].array()
                  for name in layout.splits}
        # A lookup by ID (through the sorted index, and the IDs it reads back).
        some = list(range(0, ROWS, 7))
        found = _select.select_rows(path, None, [want["ids"][i] for i in some], allow_virtual=allow_virtual)[1]
        same_data = all(
            got[name].shape == want[name].shape and np.array_equal(got[name], want[name]) for name in ("x", "y")
        )
        same_meta = (
            ids == want["ids"]
            and found.array().tolist() == some
            and set(splits) == set(want["splits"])
            and all(np.array_equal(splits[name], want["splits"][name]) for name in splits)
        )
        answer["outcome"] = "read_same" if same_data and same_meta else "meta_wrong" if same_data else "data_wrong"
    except Exception as exc:  # noqa: BLE001 - classifying it is the point
        fail(stage, exc)
    # The commands: never a traceback, exit 0 or 1, verify's verdict true.
    for command in (["info", path], ["verify", "--json", "-q", path]):
        if allow_virtual:
            command.insert(1, "--allow-virtual")
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = cli_main(command)
        except Exception as exc:  # noqa: BLE001
            answer["problems"].append(CLI_BAD)
            if answer["outcome"] != "raw":
                answer["outcome"], answer["detail"] = "raw", f"h5feed {command[0]}: {_first_line(exc)}"
            continue
        if rc not in (0, 1) or "Traceback" in err.getvalue():
            answer["problems"].append(CLI_BAD)
            answer["detail"] += f" | h5feed {command[0]} exit {rc}: {err.getvalue()[-300:]}"
            continue
        if command[0] == "verify":
            if rc == 1 and not err.getvalue().strip():
                report = json.loads(out.getvalue())
                answer["verify"] = "DAMAGED" if report["problems"] else "?"
                if not report["problems"]:
                    answer["problems"].append(VERIFY_QUIET)
            elif rc == 1:
                answer["verify"] = "error"  # a file that is not there (never for a mutant)
                answer["problems"].append(VERIFY_QUIET)
            else:
                answer["verify"] = "sound"
                if answer["outcome"] != "read_same":
                    answer["problems"].append(VERIFY_MISSED)
    return answer


def _child() -> None:
    """Serve one campaign's mutants: ``START i`` before each, ``DONE <json>`` after."""
    job = json.loads(sys.stdin.readline())
    limit = job.get("memory_limit")
    if limit:
        # A damaged file must not make h5feed allocate without bound: with
        # the cap, such an allocation fails loudly instead of swapping.
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (int(limit), resource.RLIM_INFINITY))
    import h5feed.cli  # noqa: F401 - imports are not part of any mutant's time

    base = BaseSet.load(Path(job["base"]), job["layout"])
    work = Path(job["work"])
    for index in job["indices"]:
        print(f"START {index}", flush=True)
        damaged, what = mutate(base, job["seed"], index)
        folder = work / f"m{index}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, raw in damaged.items():
            (folder / name).write_bytes(raw)
        start = time.perf_counter()
        answer = check(folder, allow_virtual=job["layout"] == "merged")
        answer.update(index=index, what=what, seconds=time.perf_counter() - start)
        shutil.rmtree(folder, ignore_errors=True)
        print("DONE " + json.dumps(answer), flush=True)


# -- the campaign, in the parent ---------------------------------------------------------


@dataclass
class Tally:
    """One layout's figures."""

    layout: str
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    problems: collections.Counter = field(default_factory=collections.Counter)
    verify: collections.Counter = field(default_factory=collections.Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)  # every mutant that missed a target
    answers: list[dict[str, Any]] = field(default_factory=list)  # every mutant
    slowest: float = 0.0
    slowest_what: str = ""

    @property
    def mutants(self) -> int:
        return sum(self.outcomes.values())

    def failures(self, checksummed: bool | None = None) -> list[dict[str, Any]]:
        """The mutants that missed a target (see :data:`OUTCOMES`)."""
        strict = self.layout == "checksummed" if checksummed is None else checksummed
        bad = {"raw", "unnamed", "crash", "hang"} | ({"data_wrong"} if strict else set())
        return [
            e for e in self.examples
            if e["outcome"] in bad or {VERIFY_MISSED, CLI_BAD, VERIFY_QUIET} & set(e.get("problems", []))
        ]

    def add(self, answer: dict[str, Any]) -> None:
        self.answers.append(answer)
        self.outcomes[answer["outcome"]] += 1
        for problem in answer.get("problems", []):
            self.problems[problem] += 1
        if "verify" in answer:
            self.verify[answer["verify"]] += 1
        if float(answer.get("seconds", 0.0)) > self.slowest:
            self.slowest, self.slowest_what = float(answer["seconds"]), answer.get("what", "")
        if answer["outcome"] in ("raw", "unnamed", "crash", "hang", "data_wrong") or answer.get("problems"):
            self.examples.append(answer)


def _python() -> str:
    return sys.executable


def _start_child(job: dict[str, Any], stderr: Any) -> subprocess.Popen:
    code = f"import sys; sys.path.insert(0, {str(FAULTS)!r}); import _fuzz; _fuzz._child()"
    env = dict(os.environ, PYTHONFAULTHANDLER="1", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    # stderr goes to a file: a pipe nobody reads could fill and stall the child.
    proc = subprocess.Popen(
        [_python(), "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
        env=env, cwd=str(FAULTS),
    )
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(job) + "\n").encode())
    proc.stdin.close()
    return proc


class _Lines:
    """Lines from a child's stdout, each awaited until a deadline.

    Reads the raw descriptor (not a buffered file, whose buffer could hold
    a line that ``select`` no longer reports).
    """

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.fd, selectors.EVENT_READ)

    def next(self, deadline: float) -> str | None:
        """The next line; ``""`` at end of output; None when the deadline passed."""
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(timeout=left):
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode() + "\n"

    def close(self) -> None:
        self.sel.close()


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.kill()
    rc = proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return rc


def run_layout(
    folder: Path,
    layout: str,
    indices: list[int],
    *,
    seed: int = 0,
    timeout: float = 30.0,
    memory_limit: int = 2 << 30,
    startup_timeout: float = 120.0,
) -> Tally:
    """Run mutants ``indices`` of ``layout`` (base set written under ``folder``).

    One child serves the mutants in turn; each must be answered within
    ``timeout`` seconds. A child that dies (a crash) or stops answering (a
    hang, then killed) is recorded against its current mutant, and a fresh
    child goes on with the next.
    """
    base = folder / f"base-{layout}"
    if not (base / MAIN).exists():
        write_base(base, layout)
    tally = Tally(layout)
    todo = list(indices)
    while todo:
        job = {"base": str(base), "layout": layout, "seed": seed, "indices": todo,
               "work": str(folder / f"work-{layout}"), "memory_limit": memory_limit}
        with tempfile.TemporaryFile() as err:
            proc = _start_child(job, err)
            lines = _Lines(proc)
            current: int | None = None
            deadline = time.monotonic() + startup_timeout
            try:
                while todo:
                    line = lines.next(deadline)
                    if line is None or line == "":
                        rc = _stop(proc)
                        err.seek(0)
                        stderr = err.read().decode(errors="replace")[-1500:]
                        if current is None:
                            raise RuntimeError(f"the fuzz child failed before its first mutant (exit {rc}): {stderr}")
                        outcome = "hang" if line is None else "crash"
                        detail = f"no answer within {timeout} s" if line is None else f"exit status {rc}: {stderr}"
                        tally.add({"index": current, "outcome": outcome, "detail": detail,
                                   "what": _describe(base, layout, seed, current)})
                        todo = todo[todo.index(current) + 1 :]
                        break
                    if line.startswith("START "):
                        current = int(line.split()[1])
                        deadline = time.monotonic() + timeout
                    elif line.startswith("DONE "):
                        answer = json.loads(line[5:])
                        tally.add(answer)
                        todo = todo[todo.index(answer["index"]) + 1 :]
                        current = None
            finally:
                lines.close()
                _stop(proc)
    shutil.rmtree(folder / f"work-{layout}", ignore_errors=True)
    return tally


def _describe(base: Path, layout: str, seed: int, index: int) -> str:
    return mutate(BaseSet.load(base, layout), seed, index)[1]


def campaign(folder: Path, layouts: tuple[str, ...] = LAYOUTS, mutants: int = 100, *, first: int = 0,
             seed: int = 0, timeout: float = 30.0) -> dict[str, Tally]:
    """Mutants ``first .. first+mutants-1`` of each layout; one :class:`Tally` per layout."""
    return {
        layout: run_layout(folder, layout, list(range(first, first + mutants)), seed=seed, timeout=timeout)
        for layout in layouts
    }


def table(tallies: dict[str, Tally]) -> str:
    """The campaign as a Markdown table (the one in issue 19, with more columns)."""
    head = ("| layout | mutants | refused at open | error while reading | raw exception | read back same "
            "| x/y read back wrong | IDs/splits read back wrong | crash | hang | verify DAMAGED | verify missed "
            "| CLI traceback |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    total: collections.Counter = collections.Counter()
    for layout, t in tallies.items():
        row = [t.mutants, t.outcomes["refused"], t.outcomes["read_error"], t.outcomes["raw"] + t.outcomes["unnamed"],
               t.outcomes["read_same"], t.outcomes["data_wrong"], t.outcomes["meta_wrong"], t.outcomes["crash"],
               t.outcomes["hang"], t.verify["DAMAGED"], t.problems[VERIFY_MISSED], t.problems[CLI_BAD]]
        total.update(dict(enumerate(row)))
        lines.append(f"| {layout} | " + " | ".join(str(v) for v in row) + " |")
    if len(tallies) > 1:
        lines.append("| all | " + " | ".join(str(total[i]) for i in range(12)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """A small campaign from the command line (``measure.py --fuzz`` runs big ones)."""
    import argparse

    parser = argparse.ArgumentParser(description="fuzz h5feed with damaged files")
    parser.add_argument("--mutants", type=int, default=50)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tallies = campaign(Path(tmp), tuple(args.layouts), args.mutants, first=args.first, seed=args.seed)
    print(table(tallies))
    for t in tallies.values():
        for e in t.failures() if not args.verbose else t.answers:
            print(f"  {e['outcome']:10} {e.get('what', '')}: {e.get('detail', '')} {e.get('problems', '')}")
    return 1 if any(t.failures() for t in tallies.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
