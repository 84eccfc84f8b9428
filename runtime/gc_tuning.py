"""Garbage-collector settings for a process whose main work is running Ensemble.

Owns one function, `tune_for_long_runs`, which the ``ensemble`` command and the
benchmarks call once after their imports. It changes process-wide state, so the
library itself must never call it: an application that embeds the runtime owns
its collector and may call it, or not, at start-up.

Why: CPython's collector runs a young-generation pass every 700 net
allocations of container objects. A job of a thousand sheets allocates tens
of thousands of such objects that live as long as the job (sheet states,
checkpoint records, actors), so the passes keep rescanning them, and a full
pass over everything the imports made costs tens of milliseconds, each time
holding the GIL that the hub and the process starters need.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_GENERATION_THRESHOLD", "tune_for_long_runs"]

# Net container allocations between young-generation passes (CPython's default
# is 700). Short-lived objects are freed by reference counting long before a
# pass, so a larger budget costs little memory: only cyclic garbage waits.
YOUNG_GENERATION_THRESHOLD = 50_000


def tune_for_long_runs() -> None:
    """Freeze what exists now out of the collector's scans and collect less often.

    Call once, after the imports and before starting the runtime. Objects made
    so far (modules, classes, pydantic schemas) live as long as the process;
    ``gc.freeze`` keeps every later pass from scanning them again.
    """
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)
