"""Sending Celery events to monitors (Flower, ``celery events``): :class:`EventDispatcher`.

Sending never waits for the broker: :meth:`EventDispatcher.send` puts the event in a buffer
and a task of the dispatcher's own publishes what has gathered, several task events as one
``task.multi`` list (as Celery's worker buffers them), worker events one by one. So a task's
path pays for building a dict, not for a broker round trip, and a burst of tasks costs a
handful of publishes.

Events are monitoring data, lossy as kombu's are: what is published while no monitor
listens is dropped by the broker, and what cannot be published (the broker away) is logged
and dropped here, as is anything beyond :data:`BUFFER_LIMIT` waiting events. Nothing a task
needs ever waits on them.

``worker-*`` events are always sent; ``task-*`` events only while :attr:`task_events` is on
(``-E``, ``worker_send_task_events``, the ``enable_events`` command), as Celery's worker
does. :func:`heartbeats` sends ``worker-heartbeat`` every ``freq`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import structlog

from protocol.control import LamportClock
from protocol.events import (
    EVENT_EXCHANGE,
    HEARTBEAT_FREQ,
    encode_events,
    event,
    utcoffset,
    worker_fields,
)
from runtime.errors import BrokerConnectionError

if TYPE_CHECKING:
    from runtime.transports.base import Broadcasting

__all__ = ["BUFFER_LIMIT", "EventDispatcher", "heartbeats"]

#: The most events waiting to be published; beyond it new ones are dropped (and counted).
BUFFER_LIMIT = 10_000
#: The most task events one ``task.multi`` message carries.
BATCH = 100


def local_utcoffset() -> int:
    """This machine's offset now, in the hours west of UTC that events carry."""
    return utcoffset(
        is_dst=time.localtime().tm_isdst > 0, timezone=time.timezone, altzone=time.altzone
    )


class EventDispatcher:
    """Publishes the events of node ``hostname`` through ``transport``; see the module
    docstring. :meth:`start` before sending, :meth:`aclose` to publish what is left and stop.
    """

    def __init__(
        self,
        transport: Broadcasting,
        hostname: str,
        *,
        task_events: bool = False,
        exchange: str = EVENT_EXCHANGE,
        clock: LamportClock | None = None,
        logger: Any = None,
    ) -> None:
        self.transport = transport
        self.hostname = hostname
        #: Whether ``task-*`` events are sent.
        self.task_events = task_events
        self.exchange = exchange
        self.clock = clock or LamportClock()
        self.log = logger or structlog.get_logger("celeriac.events")
        #: Events dropped: the buffer was full, or the broker refused them.
        self.dropped = 0
        #: The process's id, in every event.
        self.pid = os.getpid()
        self._offset = local_utcoffset()
        self._tasks: list[dict[str, Any]] = []
        self._workers: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._failing = False
        self._version = version("celeriac")

    def send(self, event_type: str, **fields: Any) -> None:
        """Queue an event of ``event_type`` (a ``task-*`` one only while :attr:`task_events`
        is on); it is published shortly, by the dispatcher's own task."""
        is_task = event_type.startswith("task-")
        if is_task and not self.task_events:
            return
        if len(self._tasks) + len(self._workers) >= BUFFER_LIMIT:
            self.dropped += 1
            return
        try:
            built = event(
                event_type, hostname=self.hostname, clock=self.clock.forward(), pid=self.pid,
                timestamp=time.time(), offset=self._offset, **fields,
            )  # fmt: skip
        except Exception as exc:  # a monitoring bug must never fail the task it reports on
            self.dropped += 1
            self.log.exception("event_not_built", type=event_type, error=repr(exc))
            return
        (self._tasks if is_task else self._workers).append(built)
        self._wake.set()

    def send_worker(self, event_type: str, *, freq: float, active: int, processed: int) -> None:
        """Queue ``worker-online``, ``worker-heartbeat`` or ``worker-offline`` with the worker's
        figures."""
        fields = worker_fields(freq=freq, active=active, processed=processed, version=self._version)
        self.send(event_type, **fields)

    def start(self) -> None:
        """Start publishing what is sent."""
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="celeriac-events")

    async def aclose(self, *, timeout: float = 5.0) -> None:
        """Publish what is waiting (for at most ``timeout`` seconds), then stop."""
        if (flusher := self._flusher) is not None:
            self._flusher = None
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.flush()

    async def flush(self) -> None:
        """Publish every event waiting now."""
        while self._workers:
            await self._publish([self._workers.pop(0)])
        while self._tasks:
            batch, self._tasks = self._tasks[:BATCH], self._tasks[BATCH:]
            await self._publish(batch)

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def _publish(self, events: list[dict[str, Any]]) -> None:
        message, key = encode_events(events, hostname=self.hostname)
        try:
            await self.transport.emit(message, exchange=self.exchange, routing_key=key)
        except (BrokerConnectionError, RuntimeError) as exc:  # RuntimeError: not connected
            self.dropped += len(events)
            if not self._failing:  # once per outage, not once per event
                self.log.warning("events_not_sent", count=len(events), error=str(exc))
            self._failing = True
        else:
            self._failing = False


async def heartbeats(
    dispatcher: EventDispatcher,
    *,
    active: Callable[[], int],
    processed: Callable[[], int],
    freq: float = HEARTBEAT_FREQ,
) -> None:
    """Send ``worker-heartbeat`` every ``freq`` seconds until cancelled. Flower shows a worker
    online while its last heartbeat is under ``2 * freq`` seconds old."""
    while True:
        await asyncio.sleep(freq)
        dispatcher.send_worker(
            "worker-heartbeat", freq=freq, active=active(), processed=processed()
        )
