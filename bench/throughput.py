"""Control-plane throughput: one job of N sheets on a backend that succeeds at once.

Persistence is on, with its default durability. Like the ``ensemble`` command,
the script tunes the garbage collector before it starts the runtime
(``runtime.gc_tuning``: the objects its imports made are frozen out of the
scans, and young-generation passes run less often); ``--no-gc-tuning``
measures with CPython's defaults.
Prints one JSON line: {"shape", "sheets", "seconds", "sheets_per_s", "peak_rss_mb"}.

    python bench/throughput.py --sheets 10000 --shape independent|chain|fanout
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import runtime
from runtime.gc_tuning import tune_for_long_runs
from runtime.testing import ScriptedBackend


def build_score(sheets: int, shape: str, workspace: Path) -> dict[str, Any]:
    if shape == "independent":
        # An empty map would mean "no map": stages then form a chain (S3).
        dependencies: dict[int, list[int]] = {1: []}
    elif shape == "chain":
        dependencies = {n: [n - 1] for n in range(2, sheets + 1)}
    elif shape == "fanout":
        # One source, N-2 parallel workers, one join.
        dependencies = {n: [1] for n in range(2, sheets)}
        dependencies[sheets] = list(range(2, sheets))
    else:
        raise SystemExit(f"unknown shape {shape!r}: use independent, chain or fanout")
    return {
        "name": f"bench-{shape}",
        "workspace": str(workspace),
        "instrument": "bench",
        "sheet": {"size": 1, "total_items": sheets, "dependencies": dependencies},
        "prompt": {"template": "sheet {{ sheet_num }}"},
        "parallel": {"enabled": True, "max_concurrent": sheets},
        "pause_between_sheets_seconds": 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets", type=int, default=1000)
    parser.add_argument(
        "--shape", default="independent", choices=["independent", "chain", "fanout"]
    )
    parser.add_argument("--max-concurrent", type=int, default=1000)
    parser.add_argument(
        "--no-gc-tuning", action="store_true", help="keep the garbage collector's defaults"
    )
    args = parser.parse_args(argv)
    if not args.no_gc_tuning:
        tune_for_long_runs()
    with tempfile.TemporaryDirectory(prefix="ensemble-bench-") as tmp:
        score = build_score(args.sheets, args.shape, Path(tmp) / "workspace")
        with runtime.start(
            Path(tmp) / "state",
            backends={"bench": ScriptedBackend()},
            max_concurrent_sheets=args.max_concurrent,
        ) as rt:
            started = time.perf_counter()
            result = rt.submit(score).wait(timeout=600)
            seconds = time.perf_counter() - started
    if result.status is not runtime.JobStatus.COMPLETED:
        print(f"job ended {result.status.value}", file=sys.stderr)
        return 1
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "shape": args.shape,
                "sheets": args.sheets,
                "seconds": round(seconds, 3),
                "sheets_per_s": round(args.sheets / seconds, 1),
                "peak_rss_mb": round(peak_rss_mb, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
