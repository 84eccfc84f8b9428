"""The EventBus actor: fans observer events out to subscribers (S34).

Owns the subscriber list and one delivery thread per runtime. Host callbacks
run on that thread, never on the hub, so a slow or blocking subscriber delays
only later deliveries and never stalls an actor; a failing subscriber is logged
and isolated. Deliveries keep the order in which events were published, and a
``Notify`` callback runs after every event published before it — that is how a
job's waiter wakes only after its final events were delivered.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from actors.base import ActorContext, EnsembleActor
from actors.hub import in_pool
from runtime.events import Event
from runtime.messages import Publish, Recipient, Subscribe, Unsubscribe

Subscriber = Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class Notify:
    """Run ``callback`` on the delivery thread after all events published so far."""

    callback: Callable[[], None]


_STOP = object()
# How long stopping the bus waits for subscribers to take what was published.
DELIVERY_DRAIN_SECONDS = 10.0


class EventBus(EnsembleActor):
    def __init__(self, context: ActorContext, *, parent: Recipient | None = None) -> None:
        super().__init__(context, parent=parent, key=("service", "event bus"))
        self._subscribers: dict[int, Subscriber] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.delivery_thread = threading.Thread(
            target=self._deliver, name="ensemble-events", daemon=True
        )
        self.delivery_thread.start()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Publish):
            if self._subscribers:
                self._queue.put(message.events)
        elif isinstance(message, Notify):
            self._queue.put(message.callback)
        elif isinstance(message, Subscribe):
            with self._lock:
                self._subscribers[message.subscription_id] = message.callback
        elif isinstance(message, Unsubscribe):
            with self._lock:
                self._subscribers.pop(message.subscription_id, None)
        else:
            return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        # Everything published before the stop is delivered before stop() returns;
        # the join waits in the thread pool, not on the hub.
        self._queue.put(_STOP)
        in_pool(self.delivery_thread.join, DELIVERY_DRAIN_SECONDS)

    def on_failure(self, *_exc_info: Any) -> None:
        self._queue.put(_STOP)

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if callable(item):
                _call_safely(item, who="a job waiter")
                continue
            with self._lock:
                subscribers = list(self._subscribers.values())
            for event in item:
                for subscriber in subscribers:
                    _call_safely(subscriber, who=subscriber, argument=event)


def _call_safely(function: Callable[..., Any], *, who: object, argument: Any = _STOP) -> None:
    try:
        if argument is _STOP:
            function()
        else:
            function(argument)
    except BaseException:
        # Also SystemExit and the like: a host callback must never end the
        # delivery thread, or no later event and no job's waiter would wake.
        logger.exception("event subscriber {!r} raised; it stays subscribed", who)
