"""Who watches a worker's tasks: the observer seam, and the Celery events that watch through it.

The worker tells every :class:`TaskObserver` what happens to each message (received,
started, finished, revoked, rejected, dead-lettered). Observers are plain synchronous calls
that never wait for I/O, so a worker with none pays nothing and one with several pays for
building a few values. :class:`WorkerEvents` turns them into Celery's ``task-*`` events and
sends ``worker-online``, ``worker-heartbeat`` and ``worker-offline`` (:mod:`runtime.events`);
:class:`runtime.worker.metrics.WorkerMetrics` counts them for Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from protocol import State, TaskMessage
from protocol.events import HEARTBEAT_FREQ, safe_repr, task_received_fields
from runtime.events import EventDispatcher, heartbeats

if TYPE_CHECKING:
    from runtime.transports.base import Broadcasting

    from .outcome import Outcome

__all__ = ["TaskObserver", "WorkerEvents"]


class TaskObserver(Protocol):
    """What the worker reports about each message it handles. ``queue`` is the queue the
    message came from."""

    def received(self, message: TaskMessage, queue: str) -> None:
        """A message for a registered task arrived."""

    def started(self, message: TaskMessage, queue: str) -> None:
        """The task is about to run."""

    def finished(self, message: TaskMessage, queue: str, outcome: Outcome) -> None:
        """The run ended: SUCCESS, FAILURE or RETRY (an unknown task fails here too)."""

    def revoked(self, message: TaskMessage, queue: str, *, reason: str) -> None:
        """The task was not run, or was ended: ``revoked``, ``expired`` or ``terminated``."""

    def rejected(self, message: TaskMessage, queue: str, *, requeue: bool) -> None:
        """An ``acks_late`` message was rejected after its run (requeued or not)."""

    def dead_lettered(self, queue: str, *, reason: str) -> None:
        """A message went to ``<queue>.dead``: ``malformed``, ``unknown_task`` or
        ``worker_error``."""


class WorkerEvents:
    """A worker's Celery events: ``worker-*`` always, ``task-*`` while :attr:`task_events`."""

    def __init__(
        self,
        transport: Broadcasting,
        hostname: str,
        *,
        task_events: bool,
        heartbeats: bool = True,
        active: Callable[[], int],
        processed: Callable[[], int],
        freq: float = HEARTBEAT_FREQ,
    ) -> None:
        self.dispatcher = EventDispatcher(transport, hostname, task_events=task_events)
        self.freq = freq
        self._heartbeats = heartbeats
        self._active = active
        self._processed = processed
        self._beating: asyncio.Task[None] | None = None

    @property
    def task_events(self) -> bool:
        """Whether ``task-*`` events are sent."""
        return self.dispatcher.task_events

    @task_events.setter
    def task_events(self, enabled: bool) -> None:
        self.dispatcher.task_events = enabled

    def start(self) -> None:
        """Start sending; unless heartbeats are off, send ``worker-online`` and start them."""
        self.dispatcher.start()
        if not self._heartbeats:
            return
        self._worker_event("worker-online")
        beating = heartbeats(
            self.dispatcher, active=self._active, processed=self._processed, freq=self.freq
        )
        self._beating = asyncio.create_task(beating, name="celeriac-event-heartbeat")

    def heartbeat(self) -> None:
        """Send a ``worker-heartbeat`` now (the ``heartbeat`` control command)."""
        self._worker_event("worker-heartbeat")

    async def aclose(self) -> None:
        """Stop the heartbeats, send ``worker-offline`` and what is still waiting."""
        if (beating := self._beating) is not None:
            self._beating = None
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            self._worker_event("worker-offline")
        await self.dispatcher.aclose()

    def _worker_event(self, event_type: str) -> None:
        self.dispatcher.send_worker(
            event_type, freq=self.freq, active=self._active(), processed=self._processed()
        )

    # -- TaskObserver ---------------------------------------------------------------------

    def received(self, message: TaskMessage, queue: str) -> None:
        """``task-received``."""
        if self.dispatcher.task_events:
            self.dispatcher.send("task-received", **task_received_fields(message))

    def started(self, message: TaskMessage, queue: str) -> None:
        """``task-started``."""
        if self.dispatcher.task_events:
            self.dispatcher.send("task-started", uuid=message.id)

    def finished(self, message: TaskMessage, queue: str, outcome: Outcome) -> None:
        """``task-succeeded``, ``task-failed`` or ``task-retried``."""
        if not self.dispatcher.task_events:
            return
        if outcome.state is State.SUCCESS:
            self.dispatcher.send(
                "task-succeeded", uuid=message.id, result=safe_repr(outcome.value),
                runtime=outcome.runtime,
            )  # fmt: skip
            return
        kind = "task-retried" if outcome.state is State.RETRY else "task-failed"
        self.dispatcher.send(
            kind, uuid=message.id, exception=safe_repr(outcome.exception),
            traceback=outcome.traceback or "",
        )  # fmt: skip

    def revoked(self, message: TaskMessage, queue: str, *, reason: str) -> None:
        """``task-revoked``."""
        if self.dispatcher.task_events:
            terminated = reason == "terminated"
            self.dispatcher.send(
                "task-revoked", uuid=message.id, terminated=terminated,
                signum=15 if terminated else None, expired=reason == "expired",
            )  # fmt: skip

    def rejected(self, message: TaskMessage, queue: str, *, requeue: bool) -> None:
        """``task-rejected``."""
        if self.dispatcher.task_events:
            self.dispatcher.send("task-rejected", uuid=message.id, requeue=requeue)

    def dead_lettered(self, queue: str, *, reason: str) -> None:
        """Celery has no event for it (an unknown task was reported ``task-failed``)."""
