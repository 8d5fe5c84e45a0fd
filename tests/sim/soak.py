"""
Run simulated histories: ``python -m tests.sim.soak [--histories N] [--seed S] [-v]``.

Each history is fixed by its seed; a failure prints the seed, the history's trace and the
command that replays it. Prints histories/s at the end. Runs under PYTHONHASHSEED=0
(re-executing itself if needed): fakeredis keeps sets as Python sets, whose iteration
order follows the hash seed, so a fixed hash seed makes a seed replay the same history
in any process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

from . import oracle
from .world import World

REPLAY = ".venv/bin/python -m tests.sim.soak --seed {seed} -v"


def run_history(seed: int) -> tuple[World, list[str]]:
    world = World(seed).run()
    return world, oracle.check(world)


def report(world: World, violations: list[str]) -> str:
    lines = [f"seed {world.seed}: {world.p.describe()}"]
    lines += [f"  VIOLATION {v}" for v in violations]
    lines += ["  trace:"] + [f"    {t}" for t in world.trace]
    lines.append(f"  replay: {REPLAY.format(seed=world.seed)}")
    return "\n".join(lines)


def _one(args: tuple[int, bool]) -> tuple[int, list[str], str]:
    seed, verbose = args
    world, violations = run_history(seed)
    return seed, violations, report(world, violations) if violations or verbose else ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(
            sys.executable, [sys.executable, "-m", "tests.sim.soak", *argv], {**os.environ, "PYTHONHASHSEED": "0"}
        )
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--histories", type=int, default=100_000)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="run this one seed only")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the trace even when it passes")
    parser.add_argument("-q", "--quiet", action="store_true", help="one line per failing seed, no trace")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--max-failures", type=int, default=20, help="stop after this many failing seeds")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.histories)
    print(f"core mode: {oracle.mode()}", flush=True)
    failures, done, began = [], 0, time.perf_counter()
    pool = multiprocessing.get_context("fork").Pool(args.jobs) if args.jobs > 1 and len(seeds) > 1 else None
    results = (
        pool.imap(_one, ((s, args.verbose) for s in seeds), chunksize=4)
        if pool
        else map(_one, ((s, args.verbose) for s in seeds))
    )
    try:
        for seed, violations, text in results:
            done += 1
            if args.quiet and violations:
                more = f" (+{len(violations) - 1})" if len(violations) > 1 else ""
                print(f"seed {seed}: {violations[0]}{more}", flush=True)
            elif text:
                print(text, flush=True)
            if violations:
                failures.append(seed)
                if len(failures) >= args.max_failures:
                    break
            if done % 1000 == 0:
                rate = done / (time.perf_counter() - began)
                print(f"  {done} histories, {len(failures)} failing, {rate:.1f} histories/s", flush=True)
    finally:
        if pool:
            pool.terminate()
    elapsed = time.perf_counter() - began
    print(f"{done} histories in {elapsed:.1f}s: {done / elapsed:.1f} histories/s; failing seeds: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
