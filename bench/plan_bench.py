"""Planning benchmark: load and plan a 10,000-sheet score, print the timings as JSON.

Two shapes: a plain score (size 1, the S3 chain of 10,000 sheets) and a fan-out
score (100 stages of 100 voices, N->N and N->1 dependencies, per-sheet instrument
maps, aliases and validations). Each is planned ``--repeat`` times; the best and
median wall-clock times and the best CPU time
are reported (CPU time is steadier on a busy machine). Usage::

    .venv/bin/python bench/plan_bench.py [--sheets 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.plan import build_plan
from runtime.score import score_from_mapping


def plain_score(sheets: int) -> dict[str, Any]:
    return {
        "name": "plain",
        "workspace": "/tmp/plan-bench",
        "instrument": "claude-code",
        "sheet": {"size": 1, "total_items": sheets},
        "prompt": {"template": "item {{ start_item }}"},
    }


def fan_out_score(sheets: int) -> dict[str, Any]:
    voices = 100
    stages = max(1, sheets // voices)
    dependencies = {stage: [stage - 1] for stage in range(2, stages + 1)}
    if stages >= 3:
        dependencies[stages] = [stages - 1, 1]  # an extra N->N edge
    return {
        "name": "fan-out",
        "workspace": "/tmp/plan-bench",
        "instrument": "writer",
        "instruments": {
            "writer": {"profile": "claude-code", "config": {"timeout_seconds": 600}},
            "reviewer": {"profile": "gemini-cli", "config": {"model": "gemini-flash"}},
        },
        "instrument_fallbacks": ["reviewer"],
        "movements": {stage: {"name": f"stage {stage}"} for stage in range(1, stages + 1)},
        "sheet": {
            "size": 1,
            "total_items": stages,
            "fan_out": {stage: voices for stage in range(1, stages + 1)},
            "dependencies": dependencies,
            "instrument_map": {"reviewer": list(range(2, sheets, 7))},
            "per_sheet_instrument_config": {
                n: {"timeout_seconds": 30} for n in range(1, sheets, 11)
            },
        },
        "prompt": {"template": "stage {{ stage }} voice {{ voice }}"},
        "validations": [
            {
                "type": "file_exists",
                "path": "{workspace}/out-{sheet_num}.md",
                "condition": "stage >= 2",
            }
        ],
    }


def measure(data: dict[str, Any], repeat: int) -> dict[str, Any]:
    load_times, plan_times, plan_cpu = [], [], []
    plan = None
    for _ in range(repeat):
        started = time.perf_counter()
        score = score_from_mapping(data, base_dir=Path("/tmp"), source_name="<bench>")
        loaded = time.perf_counter()
        cpu = time.process_time()
        plan = build_plan(score)
        plan_cpu.append(time.process_time() - cpu)
        planned = time.perf_counter()
        load_times.append(loaded - started)
        plan_times.append(planned - loaded)
    assert plan is not None
    edges = sum(len(deps) for deps in plan.dependencies.values())
    return {
        "sheets": plan.total_sheets,
        "stages": plan.total_stages,
        "dependency_edges": edges,
        "load_seconds_best": round(min(load_times), 4),
        "plan_seconds_best": round(min(plan_times), 4),
        "plan_seconds_median": round(statistics.median(plan_times), 4),
        "plan_cpu_seconds_best": round(min(plan_cpu), 4),
        "sheets_per_second": round(plan.total_sheets / min(plan_times)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    result = {
        "benchmark": "plan",
        "python": sys.version.split()[0],
        "plain": measure(plain_score(args.sheets), args.repeat),
        "fan_out": measure(fan_out_score(args.sheets), args.repeat),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
