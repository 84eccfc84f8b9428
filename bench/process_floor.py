"""Process floor: ``sleep SECONDS`` run many at once through Ensemble's process
runner alone, without the rest of the runtime (no actors, leases or journal).

This is the floor under ``bench/subprocess_fanout.py``: the same children, with
the environment the ``cli`` instrument gives them, started, drained and reaped
by ``actors.process.run_process`` from greenlets on one hub. What the fan-out
takes beyond this is the runtime's own cost; what this takes beyond the ideal
is the machine's cost of starting processes. It also reports where the CPU
went: in this process (the hub and the threads that start children) and in
the children themselves (exec, loading, closing their copy of our descriptor
table). Like the fan-out, it tunes the garbage collector first. Prints one
JSON line: {"processes", "concurrency", "seconds", "ideal_seconds",
"overhead_pct", "parent_cpu_s", "children_cpu_s"}.

    python bench/process_floor.py --processes 1000 --seconds 1 --concurrency 500
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time

import gevent.pool

from actors.process import run_process, start_spawn_threads
from runtime.gc_tuning import tune_for_long_runs
from runtime.instruments import build_environment, builtin_profiles


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.0, help="how long each child sleeps")
    parser.add_argument("--concurrency", type=int, default=500)
    args = parser.parse_args(argv)
    if args.processes < 1 or args.concurrency < 1 or args.seconds < 0:
        parser.error("--processes and --concurrency must be at least 1, --seconds not negative")
    tune_for_long_runs()
    environment = build_environment(builtin_profiles()["cli"], os.environ)
    argv_of_child = ["sleep", f"{args.seconds:g}"]
    failures: list[str] = []

    def one(workspace: str) -> None:
        result = run_process(argv_of_child, cwd=workspace, env=environment, timeout=60)
        if result.exit_code != 0:
            failures.append(result.spawn_error or f"exit code {result.exit_code}")

    start_spawn_threads()  # as the cli backend does when it starts
    with tempfile.TemporaryDirectory(prefix="ensemble-bench-") as workspace:
        parent_before = _cpu_seconds(resource.RUSAGE_SELF)
        children_before = _cpu_seconds(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        pool = gevent.pool.Pool(args.concurrency)
        for _ in range(args.processes):
            pool.spawn(one, workspace)
        pool.join()
        seconds = time.perf_counter() - started
        parent_cpu = _cpu_seconds(resource.RUSAGE_SELF) - parent_before
        children_cpu = _cpu_seconds(resource.RUSAGE_CHILDREN) - children_before
    if failures:
        print(f"{len(failures)} children failed; first: {failures[0]}", file=sys.stderr)
        return 1
    ideal = math.ceil(args.processes / args.concurrency) * args.seconds
    print(
        json.dumps(
            {
                "processes": args.processes,
                "concurrency": args.concurrency,
                "seconds": round(seconds, 3),
                "ideal_seconds": round(ideal, 3),
                "overhead_pct": round(100.0 * (seconds - ideal) / ideal, 1) if ideal else None,
                "parent_cpu_s": round(parent_cpu, 3),
                "children_cpu_s": round(children_cpu, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
