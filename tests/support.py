"""Helpers shared by Ensemble's own tests (imported as ``support``).

``score_dict`` builds score mappings with fast defaults (no retry delay, no
pacing); ``EventLog`` collects observer events and lets a test wait for them;
``TimerClock`` is a ManualClock that tells a test when timers have been armed,
so ``advance`` never races the runtime; ``wait_until`` waits for a condition
that nothing signals (a file a child process writes).
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import gevent
import pytest
from loguru import logger

import runtime
from runtime.clock import ManualClock
from runtime.events import Event
from runtime.plan import Plan, build_plan
from runtime.score import Score, score_from_mapping

WAIT_SECONDS = 20.0


def score_dict(
    workspace: str | Path,
    *,
    name: str = "job",
    sheets: int = 3,
    size: int = 1,
    dependencies: Mapping[int, list[int]] | None = None,
    independent: bool = False,
    instrument: str | None = "mock",
    template: str = "sheet {{ sheet_num }}",
    max_retries: int = 3,
    retry_delay: float = 0.0,
    max_concurrent: int | None = 10,
    timeout_seconds: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A score mapping with fast defaults.

    ``max_concurrent=None`` disables ``parallel``. ``independent=True`` declares
    ``dependencies: {1: []}``: with a dependency map, sheets missing from it
    have no dependencies (S3), so every sheet is independent whatever the
    no-map default is. ``extra`` keys are merged in last (nested dicts merged).
    """
    score: dict[str, Any] = {
        "name": name,
        "workspace": str(workspace),
        "sheet": {"size": size, "total_items": sheets * size},
        "prompt": {"template": template},
        "retry": {
            "max_retries": max_retries,
            "base_delay_seconds": retry_delay,
            "max_delay_seconds": max(retry_delay, 1.0),
            "jitter": False,
        },
        "parallel": (
            {"enabled": True, "max_concurrent": max_concurrent}
            if max_concurrent is not None
            else {"enabled": False}
        ),
    }
    if instrument is not None:
        score["instrument"] = instrument
    if "pause_between_sheets_seconds" in Score.model_fields:
        score["pause_between_sheets_seconds"] = 0
    if independent:
        score["sheet"]["dependencies"] = {1: []}
    if dependencies is not None:
        score["sheet"]["dependencies"] = {key: list(value) for key, value in dependencies.items()}
    if timeout_seconds is not None:
        score["backend"] = {"timeout_seconds": timeout_seconds}
    _merge(score, extra)
    return score


def _merge(target: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


class ScoreFactory(Protocol):
    def __call__(self, **overrides: Any) -> dict[str, Any]: ...


class RuntimeFactory(Protocol):
    def __call__(
        self,
        backends: Mapping[str, Any] | None = None,
        *,
        max_concurrent_sheets: int = 10,
        clock: Any = None,
        state_dir: Path | None = None,
        durability: str = "process",
        **options: Any,
    ) -> runtime.Runtime: ...


@contextlib.contextmanager
def captured_logs(level: str) -> Iterator[list[str]]:
    """The runtime's log messages at ``level`` and above while the block runs."""
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level=level)
    try:
        yield messages
    finally:
        logger.remove(sink)


def plan_of(workspace: Path, sheet: Mapping[str, Any], **extra: Any) -> Plan:
    """The plan of a minimal score with this ``sheet`` section (and ``extra`` keys)."""
    data = {
        "name": "demo",
        "workspace": str(workspace),
        "sheet": dict(sheet),
        "prompt": {"template": "x"},
        **extra,
    }
    return build_plan(score_from_mapping(data, base_dir=workspace, source_name="<test>"))


def subscribed(rt: runtime.Runtime) -> EventLog:
    """A new EventLog subscribed to every event of ``rt``."""
    log = EventLog()
    rt.subscribe(log)
    return log


class EventLog:
    """Collects observer events from ``Runtime.subscribe``; thread-safe."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self._condition:
            self._events.append(event)
            self._condition.notify_all()

    @property
    def events(self) -> list[Event]:
        with self._condition:
            return list(self._events)

    def names(self, job_id: str | None = None, sheet_num: int | None = None) -> list[str]:
        return [
            event.event
            for event in self.events
            if (job_id is None or event.job_id == job_id)
            and (sheet_num is None or event.sheet_num == sheet_num)
        ]

    def named(self, name: str, job_id: str | None = None) -> list[Event]:
        """The events called ``name`` so far (of one job, if given)."""
        return [
            e for e in self.events if e.event == name and (job_id is None or e.job_id == job_id)
        ]

    def wait_for_event(self, name: str, count: int = 1, job_id: str | None = None) -> Event:
        """Wait for the ``count``-th event called ``name`` and return it."""
        self.wait_for_count(name, count, job_id)
        return self.named(name, job_id)[count - 1]

    def wait_for(
        self, predicate: Callable[[list[Event]], bool], timeout: float = WAIT_SECONDS
    ) -> list[Event]:
        """Block until ``predicate(events)`` holds; fail the test after ``timeout``."""
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(self._events), timeout):
                pytest.fail(f"events never matched; got {[e.event for e in self._events]}")
            return list(self._events)

    def wait_for_count(
        self, name: str, count: int, job_id: str | None = None, timeout: float = WAIT_SECONDS
    ) -> list[Event]:
        return self.wait_for(
            lambda events: (
                sum(1 for e in events if e.event == name and (job_id is None or e.job_id == job_id))
                >= count
            ),
            timeout,
        )


class TimerClock(ManualClock):
    """A ManualClock whose wait for armed timers fails the test on timeout.

    Backends and jobs arm their timers on the hub after a request was recorded
    or an event published; advancing before that would skip them.
    """

    def wait_for_pending(self, count: int, timeout: float = WAIT_SECONDS) -> None:
        """Block until at least ``count`` uncancelled timers are waiting."""
        if not self.wait_for_timers(count, timeout):
            pytest.fail(f"only {self.pending_timers()} timer(s) armed, expected {count}")


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
    """Wait for a condition nothing signals (a file written by a child process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout:g} s")
        time.sleep(0.02)


T = TypeVar("T")


def in_hub_thread(function: Callable[[], T], timeout: float = WAIT_SECONDS) -> T:
    """Run ``function`` in a greenlet of a fresh hub in its own OS thread, as the
    runtime runs its actors, and return its result (or raise its exception)."""
    results: queue.Queue[tuple[bool, Any]] = queue.Queue()

    def main() -> None:
        try:
            results.put((True, gevent.spawn(function).get()))
        except BaseException as exc:
            results.put((False, exc))
        finally:
            gevent.get_hub().destroy(destroy_loop=True)

    thread = threading.Thread(target=main, name="test-hub", daemon=True)
    thread.start()
    ok, value = results.get(timeout=timeout)
    thread.join(timeout)
    assert not thread.is_alive(), "hub thread did not finish"
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def wait_for_exit(pid: int, timeout: float, what: str) -> None:
    """Wait on a pidfd until process ``pid`` has exited (or is already gone);
    fail naming ``what`` after ``timeout`` seconds. A zombie counts as exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        assert poller.poll(timeout * 1000), f"{what} is still alive"
    finally:
        os.close(pidfd)


def live_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # Exited while we were listing.
        # The command name may contain spaces; the fields after it are fixed:
        # state, ppid, pgrp, ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def assert_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Every member of the group exits within `timeout`.

    Not `os.killpg(pgid, 0)` alone: orphaned members killed by SIGKILL stay
    zombies until PID 1 reaps them, which can take over a second in some
    containers, and signalling a zombie succeeds. A zombie is not alive, so we
    wait (on a pidfd) for each live member to exit instead.
    """
    for member in live_members(pgid):
        wait_for_exit(member, timeout, f"process {member} of group {pgid}")
    assert live_members(pgid) == []
