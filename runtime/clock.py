"""Clocks: where the runtime gets the time and schedules its timers (DESIGN rule 6).

Owns the ``Clock`` protocol and ``ManualClock``, a clock that only moves when a
test calls ``advance``. The real clock, whose timers live on the gevent hub,
is ``actors.hub.HubClock``: this module imports no gevent.

A timer callback always runs on the runtime's hub. A clock is bound to a hub by
the runtime (``bind``) before its first timer is armed.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall time, so deadlines survive a restart)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` on the hub after ``delay`` seconds of this clock's time."""
        ...


@dataclass(order=True)
class _ManualTimer:
    due: float
    order: int
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock for tests: time stands still until ``advance`` moves it.

    ``advance`` fires due timers in order of their due time, each with the clock
    set to that time, handing each callback to the hub (bound) or calling it
    (unbound). A callback handed to the hub runs there soon after, and what it
    sets off (a message to an actor) may see a later time: tests wait for the
    outcome before they advance again. Safe to call from any thread.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._timers: list[_ManualTimer] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._armed = threading.Condition()
        self._run_on_hub: Callable[[Callable[[], object]], None] | None = None

    def bind(self, run_on_hub: Callable[[Callable[[], object]], None]) -> None:
        self._run_on_hub = run_on_hub

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        with self._lock:
            timer = _ManualTimer(self._now + max(0.0, delay), next(self._order), callback)
            heapq.heappush(self._timers, timer)
        with self._armed:
            self._armed.notify_all()
        return timer

    def pending_timers(self) -> int:
        with self._lock:
            return sum(1 for timer in self._timers if not timer.cancelled)

    def wait_for_timers(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` timers are armed (for tests: the runtime
        arms timers asynchronously, so advance only once they exist)."""
        deadline = time.monotonic() + timeout
        with self._armed:
            while self.pending_timers() < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._armed.wait(remaining)
            return True

    def advance(self, seconds: float) -> int:
        """Move time forward, firing every timer due by then; returns how many fired."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            target = self._now + seconds
        fired = 0
        while True:
            with self._lock:
                if not self._timers or self._timers[0].due > target:
                    # Under the lock: a timer armed concurrently is either seen
                    # by this check or armed relative to the new time.
                    self._now = max(self._now, target)
                    break
                timer = heapq.heappop(self._timers)
                self._now = max(self._now, timer.due)
            if timer.cancelled:
                continue
            fired += 1
            if self._run_on_hub is None:
                timer.callback()
            else:
                self._run_on_hub(timer.callback)
        return fired
