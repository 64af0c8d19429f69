"""Re-measure the reliability figures on a larger sweep than the tests run.

Usage (from the repository root)::

    python tests/faults/measure.py [--random-kills 30] [--corruptions 60] [--seed 0]
    python tests/faults/measure.py --fuzz 2000 [--fuzz-only] [--layouts ...] [--first 0] [--jobs 2]

Prints how many kill points were tried and how many lost data, how many
corruptions were read back with checksums and how many came back silently
wrong (and the same without checksums, for contrast), and the longest time
any fault took to surface as an error. With ``--fuzz N`` it also runs the
damaged-file campaign (``_fuzz.py``): N mutants of the sample file in each
storage layout, and prints its table and every mutant that missed a target
(reproduce one with ``--fuzz-only --layouts L --first I --fuzz 1``).
Exit status 1 when data was lost, a checksummed corruption read back
silently wrong, or a mutant missed a target.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import h5feed  # noqa: E402
from _harness import run_case  # noqa: E402
from _killing import sweep  # noqa: E402
import _fuzz  # noqa: E402


CLI_POINTS = [("write#1", 0), ("write#2:after", 1), ("attr", 1), ("close:after", 0), ("link", 0),
              ("unlink", 0), ("replace", 1), ("replace:after", 1), ("fsync#2", 1)]


def cli_sweep(folder: Path, *, random_kills: int, seed: int):
    """Kill the real ``h5feed convert`` at each point and at random moments."""
    from _killing import kill_cli_once

    outcomes = []
    for point, version in CLI_POINTS:
        for signame in ("KILL", "INT"):
            outcomes.append(kill_cli_once(folder, version=version, signame=signame, point=point,
                                          checksum=point.startswith("write")))
    rng = np.random.default_rng(seed)
    for i in range(random_kills):
        # Slowed writes (20 ms after each block, over a second in all); the
        # delay counts from the temporary file's creation, so most land
        # mid-write and the rest around closing and publishing.
        outcomes.append(kill_cli_once(folder, version=i % 2, signame=("KILL", "INT")[(i // 2) % 2],
                                      delay=float(rng.uniform(0.0, 1.5)), checksum=True, slow=0.02))
    return outcomes


def _corruption_file(folder: Path, name: str, options: dict) -> Path:
    rng = np.random.default_rng(1)
    n = 600
    path = folder / f"{name}.h5"
    h5feed.write_arrays(path, [f"s{i}" for i in range(n)], rng.standard_normal((n, 24)).astype(np.float32),
                        rng.integers(0, 4, n), n_classes=4, **options)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random-kills", type=int, default=30)
    parser.add_argument("--corruptions", type=int, default=60, help="per checksummed layout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuzz", type=int, default=0, metavar="N", help="damaged-file mutants per layout")
    parser.add_argument("--fuzz-only", action="store_true", help="skip the kill and corruption sweeps")
    parser.add_argument("--layouts", nargs="+", default=list(_fuzz.LAYOUTS), choices=_fuzz.LAYOUTS)
    parser.add_argument("--first", type=int, default=0, help="the first mutant's index")
    parser.add_argument("--jobs", type=int, default=1, help="layouts fuzzed at once")
    args = parser.parse_args(argv)
    missed = fuzz(args) if args.fuzz else 0
    if args.fuzz_only:
        return 1 if missed else 0
    worst = (0.0, "")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        outcomes = sweep(folder / "kill", random_kills=args.random_kills, seed=args.seed)
        try:
            import h5feed.convert.npy  # noqa: F401
        except ImportError:
            print("(the converters are not installed: the h5feed convert command is not killed)")
        else:
            outcomes += cli_sweep(folder / "cli", random_kills=max(4, args.random_kills // 3), seed=args.seed)
        killed = [o for o in outcomes if not o.completed]
        lost = [o for o in killed if o.lost]
        print(f"kill points tried: {len(killed)} ({len(outcomes) - len(killed)} random kills landed "
              f"after the write finished and are not counted), that lost data: {len(lost)} "
              f"[{time.perf_counter() - start:.0f} s]")
        for o in lost:
            print(f"  LOST  {o.case}: {o.lost}")
        astray = [o for o in outcomes if o.missed]
        print(f"kills that did not land where aimed (point not reached, or not death by the signal): {len(astray)}")
        for o in astray:
            print(f"  ASTRAY  {o.case}: {o.missed}")
        for o in killed:
            if o.seconds > worst[0]:
                worst = (o.seconds, f"killed writer exiting ({o.case})")
        totals = {"checked": [0, 0, 0], "unchecked": [0, 0, 0]}  # tried, silent, misnamed
        layouts = {
            "checked": {
                "checksum": {"checksum": True, "chunk_rows": 25},
                "checksum-gzip": {"checksum": True, "compression": "gzip", "chunk_rows": 40},
                "checksum-lzf": {"checksum": True, "compression": "lzf", "chunk_rows": 64},
            },
            "unchecked": {
                "contiguous": {},
                "gzip": {"compression": "gzip", "chunk_rows": 40},
            },
        }
        for kind, table in layouts.items():
            for name, options in table.items():
                path = _corruption_file(folder, name, options)
                result = run_case("corrupt_and_read", path=str(path), trials=args.corruptions,
                                  seed=args.seed, columns=["x", "y"], timeout=600)
                out = result["value"]["outcomes"]
                totals[kind][0] += sum(out.values())
                totals[kind][1] += out["silent"]
                totals[kind][2] += out["misnamed"]
                if result["value"]["worst_s"] > worst[0]:
                    worst = (result["value"]["worst_s"], f"corruption in {name}")
        tried, silent, misnamed = totals["checked"]
        print(f"corruptions read with checksums: {tried}, read back silently wrong: {silent}, "
              f"errors not naming the exact chunk rows: {misnamed}")
        tried_u, silent_u, _ = totals["unchecked"]
        print(f"(without checksums: {tried_u} corruptions, {silent_u} read back silently wrong)")
    print(f"longest time for a fault to surface as an error: {worst[0]:.2f} s ({worst[1]})")
    print("(a worker SIGKILLed mid-epoch is timed by "
          "tests/faults/test_faults_workers.py::test_worker_killed_mid_epoch_fails_fit_within_60s_naming_the_worker)")
    return 1 if lost or astray or silent or missed else 0


def fuzz(args: argparse.Namespace) -> int:
    """The damaged-file campaign; prints its table; returns the mutants that missed a target."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    indices = list(range(args.first, args.first + args.fuzz))
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max(1, args.jobs)) as pool:
        # Each layout's mutants run in their own child processes; threads only wait on them.
        futures = {layout: pool.submit(_fuzz.run_layout, Path(tmp), layout, indices, seed=args.seed)
                   for layout in args.layouts}
        tallies = {layout: future.result() for layout, future in futures.items()}
    print(f"damaged-file fuzz: mutants {args.first}..{args.first + args.fuzz - 1} of each layout, seed "
          f"{args.seed} [{time.perf_counter() - start:.0f} s]")
    print(_fuzz.table(tallies))
    slowest = max(tallies.values(), key=lambda t: t.slowest)
    print(f"slowest mutant: {slowest.slowest:.2f} s ({slowest.slowest_what})")
    missed = 0
    for tally in tallies.values():
        for e in tally.failures():
            missed += 1
            print(f"  MISSED  {e['outcome']} {e.get('problems', '')}: {e['what']}: {e['detail']}")
    return missed


if __name__ == "__main__":
    sys.exit(main())
