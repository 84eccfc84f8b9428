"""Subprocess fan-out: one job whose sheets each run ``sleep SECONDS`` through the
``cli`` instrument, many at once.

Measures what the runtime adds on top of the instrument's own time: spawning,
reaping and draining child processes from the hub, leases, the journal.
Persistence is on, with its default durability. Like bench/throughput.py and
the ``ensemble`` command, it tunes the garbage collector before it starts the
runtime (``runtime.gc_tuning``); ``--no-gc-tuning`` measures with CPython's
defaults. ``--scripted`` runs the same job on a scripted backend whose answers
take SECONDS, without any process: the runtime's own share of the time
(``bench/process_floor.py`` measures the processes' share). Prints one JSON line:
{"sheets", "concurrency", "seconds", "ideal_seconds", "overhead_pct", "peak_rss_mb"}.

    python bench/subprocess_fanout.py --sheets 1000 --seconds 1 --concurrency 500
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import runtime
from runtime.gc_tuning import tune_for_long_runs
from runtime.testing import ScriptedBackend, Succeed


def build_score(sheets: int, seconds: float, concurrency: int, workspace: Path) -> dict[str, Any]:
    return {
        "name": "bench-subprocess-fanout",
        "workspace": str(workspace),
        "instrument": "cli",
        # An empty map for sheet 1 makes every sheet independent (S3).
        "sheet": {"size": 1, "total_items": sheets, "dependencies": {1: []}},
        "prompt": {"template": f"sleep {seconds:g}"},
        "parallel": {"enabled": True, "max_concurrent": concurrency},
        "backend": {"timeout_seconds": max(60.0, seconds * 10)},
        "pause_between_sheets_seconds": 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sheets", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.0, help="how long each sheet sleeps")
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument(
        "--no-gc-tuning", action="store_true", help="keep the garbage collector's defaults"
    )
    parser.add_argument(
        "--scripted",
        action="store_true",
        help="answer every sheet from a scripted backend after SECONDS, starting no process",
    )
    args = parser.parse_args(argv)
    if not args.no_gc_tuning:
        tune_for_long_runs()
    if args.sheets < 1 or args.concurrency < 1 or args.seconds < 0:
        parser.error("--sheets and --concurrency must be at least 1, --seconds not negative")
    with tempfile.TemporaryDirectory(prefix="ensemble-bench-") as tmp:
        workspace = Path(tmp) / "workspace"
        workspace.mkdir()
        score = build_score(args.sheets, args.seconds, args.concurrency, workspace)
        backends = None
        if args.scripted:
            backends = {"cli": ScriptedBackend(default=Succeed(delay=args.seconds))}
        with runtime.start(
            Path(tmp) / "state", max_concurrent_sheets=args.concurrency, backends=backends
        ) as rt:
            started = time.perf_counter()
            result = rt.submit(score).wait(timeout=600)
            seconds = time.perf_counter() - started
    if result.status is not runtime.JobStatus.COMPLETED:
        failed = [
            s for s in result.sheets.values() if s.status is not runtime.SheetStatus.COMPLETED
        ]
        print(f"job ended {result.status.value}; first failure: {failed[:1]}", file=sys.stderr)
        return 1
    ideal = math.ceil(args.sheets / args.concurrency) * args.seconds
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "sheets": args.sheets,
                "concurrency": args.concurrency,
                "seconds": round(seconds, 3),
                "ideal_seconds": round(ideal, 3),
                "overhead_pct": round(100.0 * (seconds - ideal) / ideal, 1) if ideal else None,
                "peak_rss_mb": round(peak_rss_mb, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
