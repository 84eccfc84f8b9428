"""The performance benchmarks still run and print the figures the README names.

Each runs tiny, as a real subprocess, only to keep the scripts from rotting:
the figures themselves are measured by ``make bench``, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, *arguments: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCH.parent,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    printed: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return printed


@pytest.mark.timeout(150)
@pytest.mark.parametrize("scripted", [False, True], ids=["processes", "scripted"])
def test_subprocess_fanout_prints_its_figures(scripted: bool) -> None:
    options = ["--scripted"] if scripted else []
    figures = run_bench(
        "subprocess_fanout.py", "--sheets", "6", "--seconds", "0", "--concurrency", "3", *options
    )
    assert set(figures) == {
        "sheets", "concurrency", "seconds", "ideal_seconds", "overhead_pct", "peak_rss_mb",
    }  # fmt: skip
    assert (figures["sheets"], figures["concurrency"], figures["ideal_seconds"]) == (6, 3, 0)


@pytest.mark.timeout(150)
def test_process_floor_prints_its_figures() -> None:
    figures = run_bench(
        "process_floor.py", "--processes", "6", "--seconds", "0.1", "--concurrency", "3"
    )
    assert set(figures) == {
        "processes", "concurrency", "seconds", "ideal_seconds", "overhead_pct",
        "parent_cpu_s", "children_cpu_s",
    }  # fmt: skip
    assert (figures["processes"], figures["concurrency"], figures["ideal_seconds"]) == (6, 3, 0.2)


@pytest.mark.timeout(150)
def test_throughput_prints_its_figures() -> None:
    figures = run_bench("throughput.py", "--sheets", "20", "--shape", "chain")
    assert set(figures) == {"shape", "sheets", "seconds", "sheets_per_s", "peak_rss_mb"}
    assert (figures["shape"], figures["sheets"]) == ("chain", 20)
