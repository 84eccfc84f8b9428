"""The gevent hub the runtime's actors live on, and the real clock.

Owns the dedicated OS thread that runs the hub (the default, so threaded
programs, gevent programs and the CLI all work without monkey-patching), the
thread-safe way into it, ``in_pool`` for blocking work, and ``HubClock``,
whose timers are hub timers. It knows nothing about actors.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
import gevent.event

T = TypeVar("T")


def in_pool(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in the current hub's thread pool, from a greenlet;
    its result, or its exception raised here.

    Not the pool's ``apply`` alone: gevent also prints the traceback of any
    exception a pool task raises, and an expected one (a missing folder, a
    full disk) is the caller's to report in its own words.
    """

    def guarded() -> tuple[bool, Any]:
        try:
            return True, function(*args)
        except Exception as exc:
            return False, exc

    succeeded, value = gevent.get_hub().threadpool.apply(guarded)
    if succeeded:
        return value  # type: ignore[no-any-return]
    raise value


# Thread idents of every thread running an Ensemble hub; read without a lock
# because set membership tests are atomic and the set changes only at start/stop.
_HUB_THREADS: set[int] = set()


def on_hub_thread() -> bool:
    return threading.get_ident() in _HUB_THREADS


class HubThread:
    """A gevent hub running in its own daemon thread until ``stop``."""

    def __init__(self, name: str = "ensemble-hub") -> None:
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._stop_requested: gevent.event.Event | None = None
        self._failure: BaseException | None = None
        self.ident = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the gevent hub thread did not start within 30 s")
        if self._failure is not None:
            raise RuntimeError(f"the gevent hub thread failed to start: {self._failure!r}")

    def _run(self) -> None:
        try:
            hub = gevent.get_hub()
            self.loop = hub.loop
            self.ident = threading.get_ident()
            _HUB_THREADS.add(self.ident)
            self._stop_requested = gevent.event.Event()
            # An active async watcher keeps the loop alive while nothing else is scheduled.
            keepalive = self.loop.async_()
            keepalive.start(lambda: None)
            # Made now rather than by a job's first file operation, which would
            # otherwise wait for gevent to import and build the pool (~10 ms).
            hub.threadpool  # noqa: B018

        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._stop_requested.wait()
        finally:
            keepalive.close()
            _HUB_THREADS.discard(self.ident)
            hub.destroy(destroy_loop=True)
            self._stopped.set()

    @property
    def is_alive(self) -> bool:
        return not self._stopped.is_set()

    def in_hub(self) -> bool:
        return threading.get_ident() == self.ident

    def call_soon(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` on the hub, soon; callable from any thread."""
        if self.in_hub():
            self.loop.run_callback(function, *args)
        else:
            self.loop.run_callback_threadsafe(function, *args)

    def run(self, function: Callable[..., T], *args: Any, timeout: float | None = 30.0) -> T:
        """Run ``function`` in a new greenlet on the hub and wait for its result.

        For host threads only (in the hub, call the function directly).
        """
        if self.in_hub():
            raise RuntimeError("HubThread.run() called from the hub itself")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def body() -> None:
            try:
                future.set_result(function(*args))
            except BaseException as exc:
                future.set_exception(exc)

        self.call_soon(gevent.spawn, body)
        return future.result(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self._stopped.is_set():
            return
        stop_requested = self._stop_requested
        if stop_requested is not None:
            self.call_soon(stop_requested.set)
        self._thread.join(timeout)


class _HubTimer:
    __slots__ = ("_hub", "_watcher")

    def __init__(self, hub: HubThread, delay: float, callback: Callable[[], object]) -> None:
        self._hub = hub
        self._watcher: Any = None
        hub.call_soon(self._arm, delay, callback)

    def _arm(self, delay: float, callback: Callable[[], object]) -> None:
        if self._watcher is False:  # cancelled before it was armed
            return
        watcher = self._hub.loop.timer(max(0.0, delay))
        self._watcher = watcher

        def fire() -> None:
            watcher.close()
            callback()

        watcher.start(fire)

    def cancel(self) -> None:
        self._hub.call_soon(self._disarm)

    def _disarm(self) -> None:
        if self._watcher:
            self._watcher.close()
        self._watcher = False


class HubClock:
    """Wall-clock time with timers on the hub: the runtime's default clock."""

    def __init__(self, hub: HubThread) -> None:
        self._hub = hub

    def now(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], object]) -> _HubTimer:
        return _HubTimer(self._hub, delay, callback)
