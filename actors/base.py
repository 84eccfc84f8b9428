"""The gevent actor base every Ensemble actor derives from.

Owns: pykka's three private hooks (inbox, future, actor loop) implemented on
gevent without monkey-patching; thread-safe entry for messages and futures that
cross from host threads into the hub; crash handling that never lets a gevent
``Timeout`` or ``GreenletExit`` escape a handler, never calls pykka's
``ActorRegistry.stop_all()`` and tells the actor's parent instead; the
runtime's own registry of its actors (DESIGN rule 7); and tasks, greenlets an
actor spawns for blocking work whose outcome comes back as a message (rule 4).

It decides nothing about jobs or sheets.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import gevent
import gevent.event
import gevent.queue
import greenlet
import pykka
from gevent import GreenletExit
from loguru import logger
from pykka import ActorDeadError, ActorRef

from actors.hub import HubThread, on_hub_thread
from runtime.clock import Clock
from runtime.messages import ChildFailed, Recipient

if TYPE_CHECKING:
    from pykka._envelope import Envelope
    from pykka._types import OptExcInfo


class ActorRegistry:
    """The actors of one runtime, by URN. Thread-safe; O(1) per change."""

    def __init__(self) -> None:
        self._refs: dict[str, ActorRef[Any]] = {}
        self._lock = threading.Lock()

    def register(self, ref: ActorRef[Any]) -> None:
        with self._lock:
            self._refs[ref.actor_urn] = ref

    def unregister(self, ref: ActorRef[Any]) -> None:
        with self._lock:
            self._refs.pop(ref.actor_urn, None)

    def alive(self) -> list[ActorRef[Any]]:
        with self._lock:
            return [ref for ref in self._refs.values() if ref.is_alive()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._refs)


@dataclass(frozen=True)
class ActorContext:
    """What every actor of one runtime shares."""

    hub: HubThread
    registry: ActorRegistry
    clock: Clock


class _Inbox:
    """A gevent queue that accepts messages from any thread.

    Puts from a foreign thread are handed to the hub with a thread-safe
    callback, which also keeps messages from one thread in order.
    """

    __slots__ = ("_hub_ident", "_loop", "_queue")

    def __init__(self) -> None:
        if not on_hub_thread():
            raise RuntimeError("Ensemble actors must be created on the runtime's hub thread")
        self._queue: gevent.queue.SimpleQueue[Envelope[Any]] = gevent.queue.SimpleQueue()
        self._hub_ident = threading.get_ident()
        self._loop = gevent.get_hub().loop

    def put(self, envelope: Envelope[Any], /) -> None:
        if threading.get_ident() == self._hub_ident:
            self._queue.put(envelope)
        else:
            self._loop.run_callback_threadsafe(self._queue.put, envelope)

    def get(self) -> Envelope[Any]:
        envelope: Envelope[Any] = self._queue.get()
        return envelope

    def empty(self) -> bool:
        return bool(self._queue.empty())


class GeventFuture(pykka.Future[Any]):
    """A future set on the hub and awaited from the hub or from any host thread.

    A greenlet on the hub waits on a gevent event (other greenlets keep
    running); a host thread waits on a threading event. gevent's own
    AsyncResult is not safe across threads, hence both.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._result: tuple[Any, OptExcInfo | None] | None = None
        self._green_waiter: gevent.event.Event | None = None
        self._green_loop: Any = None
        self._green_ident = 0
        self._thread_waiter: threading.Event | None = None

    def get(self, *, timeout: float | None = None) -> Any:
        try:
            return super().get(timeout=timeout)
        except NotImplementedError:
            pass
        if self._result is None and not self._wait(timeout):
            raise pykka.Timeout(f"{timeout} seconds")
        assert self._result is not None
        value, exc_info = self._result
        if exc_info is not None:
            exc_type, exc_value, exc_traceback = exc_info
            assert exc_type is not None
            if exc_value is None:
                exc_value = exc_type()
            raise exc_value.with_traceback(exc_traceback)
        return value

    def _wait(self, timeout: float | None) -> bool:
        if on_hub_thread():
            with self._lock:
                if self._result is not None:
                    return True
                if self._green_waiter is None:
                    self._green_waiter = gevent.event.Event()
                    self._green_loop = gevent.get_hub().loop
                    self._green_ident = threading.get_ident()
                green = self._green_waiter
            return bool(green.wait(timeout))
        with self._lock:
            if self._result is not None:
                return True
            if self._thread_waiter is None:
                self._thread_waiter = threading.Event()
            waiter = self._thread_waiter
        return waiter.wait(timeout)

    def set(self, value: Any | None = None) -> None:
        self._complete((value, None))

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        self._complete((None, exc_info if exc_info is not None else sys.exc_info()))

    def set_get_hook(self, func: Callable[[float | None], Any]) -> None:
        with self._lock:
            if self._result is not None:
                raise queue.Full
            super().set_get_hook(func)

    def _complete(self, result: tuple[Any, OptExcInfo | None]) -> None:
        with self._lock:
            if self._result is not None or self._get_hook is not None:
                raise queue.Full
            self._result = result
            green, thread = self._green_waiter, self._thread_waiter
        if thread is not None:
            thread.set()
        if green is not None:
            if threading.get_ident() == self._green_ident:
                green.set()
            else:
                self._green_loop.run_callback_threadsafe(green.set)


class _StoppedFlag:
    """The ``actor_stopped`` flag pykka's ActorRef reads, cheaper than a threading.Event.

    Set once, on the hub; read from any thread (a plain attribute read).
    ``wait`` is for rare host-side use and builds its event on demand.
    """

    __slots__ = ("_event", "_lock", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None
        self._lock = threading.Lock()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._lock:
            self._set = True
            event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            if self._set:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)


_actor_numbers = itertools.count(1)


def send(recipient: Recipient | None, message: Any) -> bool:
    """Tell ``recipient``; a recipient that is gone is logged, not an error."""
    if recipient is None:
        return False
    try:
        recipient.tell(message)
    except ActorDeadError:
        logger.trace("dropped {} for a stopped actor", type(message).__name__)
        return False
    return True


@dataclass(frozen=True, slots=True)
class TaskDone:
    """A task spawned by ``spawn_task`` ended; exactly one of value/error is meaningful."""

    task_id: int
    value: Any
    error: BaseException | None


_task_ids = itertools.count(1)


def _spawn_raw(function: Callable[..., None], *args: Any) -> greenlet.greenlet:
    """Start ``function(*args)`` in a bare greenlet on this thread's hub, soon."""
    hub = gevent.get_hub()
    task = greenlet.greenlet(function, parent=hub)
    hub.loop.run_callback(task.switch, *args)
    return task


class EnsembleActor(pykka.Actor):
    """Base of every actor of a runtime: runs as a greenlet on the runtime's hub.

    ``parent`` hears about this actor's crash as ``ChildFailed(urn, key, error)``.
    Subclasses implement ``on_receive`` and, for tasks, ``on_task_done``.
    """

    def __init__(
        self, context: ActorContext, *, parent: Recipient | None = None, key: Any = None
    ) -> None:
        # pykka's own __init__ builds a uuid4 URN and a threading.Event per actor,
        # together about 10 µs: a third of an actor's start. The fields are the same.
        self.actor_urn = f"urn:ensemble:{next(_actor_numbers)}"
        self.actor_inbox = self._create_actor_inbox()
        self.actor_stopped = _StoppedFlag()  # type: ignore[assignment]
        self._actor_ref = ActorRef(self)
        self.context = context
        self.parent = parent
        self.key = key
        self._tasks: dict[int, greenlet.greenlet] = {}

    # --- pykka hooks ------------------------------------------------------------------

    @staticmethod
    def _create_actor_inbox() -> _Inbox:
        return _Inbox()

    @staticmethod
    def _create_future() -> GeventFuture:
        return GeventFuture()

    def _start_actor_loop(self) -> None:
        # A bare greenlet, not gevent.spawn: gevent records the spawning stack of
        # each Greenlet, which cost ~50 µs per actor here. _run_loop lets nothing
        # escape, so the hub never sees an exception from it.
        _spawn_raw(self._run_loop)

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> ActorRef[Self]:
        """Start the actor on the hub, in the runtime's registry (not pykka's global one)."""
        actor = cls(*args, **kwargs)
        actor.context.registry.register(actor.actor_ref)
        actor._start_actor_loop()
        return actor.actor_ref

    def _run_loop(self) -> None:
        try:
            self._actor_loop()
        except BaseException:
            logger.opt(exception=True).critical("{}: actor loop failed", self)
            self.context.registry.unregister(self.actor_ref)
            self.actor_stopped.set()

    def _actor_loop(self) -> None:
        try:
            self._actor_loop_setup()
            inbox, stopped = self.actor_inbox, self.actor_stopped
            while not stopped.is_set():
                envelope = inbox.get()
                try:
                    response = self._handle_receive(envelope.message)
                    if envelope.reply_to is not None:
                        envelope.reply_to.set(response)
                except GreenletExit:
                    raise
                except BaseException:
                    if envelope.reply_to is not None:
                        # An ask: the caller gets the error, the actor lives on (as pykka).
                        envelope.reply_to.set_exception()
                    else:
                        self._handle_failure(*sys.exc_info())
                        self._call_on_failure(*sys.exc_info())
        except GreenletExit:
            # Killed from outside (runtime shutdown): stop quietly.
            if not self.actor_stopped.is_set():
                self.context.registry.unregister(self.actor_ref)
                self.actor_stopped.set()
        self._kill_tasks()
        self._actor_loop_teardown()

    def _call_on_failure(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.on_failure(exc_type, exc_value, traceback)
        except Exception:
            logger.exception("{}: on_failure raised", self)

    def _stop(self) -> None:
        self.context.registry.unregister(self.actor_ref)
        self.actor_stopped.set()
        self._kill_tasks()
        try:
            self.on_stop()
        except Exception:
            self._handle_failure(*sys.exc_info())

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        logger.opt(exception=(exception_type, exception_value, traceback)).error("{} crashed", self)
        self.context.registry.unregister(self.actor_ref)
        self.actor_stopped.set()
        send(
            self.parent,
            ChildFailed(
                self.actor_urn, self.key, f"{type(exception_value).__name__}: {exception_value}"
            ),
        )

    # --- tasks ---------------------------------------------------------------------

    def spawn_task(self, function: Callable[..., Any], *args: Any) -> int:
        """Run ``function(*args)`` in its own greenlet; its end arrives as ``TaskDone``."""
        task_id = next(_task_ids)
        self._tasks[task_id] = _spawn_raw(self._task_body, task_id, function, args)
        return task_id

    def _task_body(self, task_id: int, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            value, error = function(*args), None
        except GreenletExit:
            return
        except BaseException as exc:
            value, error = None, exc
        send(self.actor_ref, TaskDone(task_id, value, error))

    def _kill_tasks(self) -> None:
        tasks, self._tasks = self._tasks, {}
        for task in tasks.values():
            if not task.dead:
                gevent.kill(task)

    def _handle_receive(self, message: Any) -> Any:
        if isinstance(message, TaskDone):
            if self._tasks.pop(message.task_id, None) is None:
                return None
            return self.on_task_done(message)
        return super()._handle_receive(message)

    def on_task_done(self, done: TaskDone) -> None:
        """Handle the end of a task started with ``spawn_task``."""
