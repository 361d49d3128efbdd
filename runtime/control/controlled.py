"""What remote control sees of a worker: the seam its commands are written against.

The worker imports remote control and hands itself over as a :class:`ControlledWorker`;
remote control never imports the worker. :class:`RunningTask` is what the worker lists for
each task it is executing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runtime.app import App
    from runtime.ratelimit import RateLimits
    from runtime.request import Request
    from runtime.results.backend import RedisResultBackend
    from runtime.results.revoked import Revocations

__all__ = ["ConsumerSet", "ControlledWorker", "RunningTask"]


@dataclass(slots=True, eq=False)
class RunningTask:
    """A task the worker is executing: what ``inspect active`` lists and ``revoke(...,
    terminate=True)`` ends. ``started`` is a Unix time."""

    request: Request
    runner: asyncio.Task[Any] = field(repr=False)
    started: float
    acknowledged: bool
    terminated: bool = False


class ConsumerSet(Protocol):
    """The queues a worker consumes, as ``add_consumer`` and ``cancel_consumer`` change them
    (:class:`runtime.worker.consuming.Consumers`)."""

    @property
    def queues(self) -> Sequence[str]:
        """The queues consumed now."""

    async def add(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str | None = None,
        routing_key: str | None = None,
    ) -> bool:
        """Declare ``queue`` and consume it too; ``False`` if it is consumed already.
        ``ValueError`` for a binding celeriac does not declare."""

    def cancel(self, queue: str) -> bool:
        """Stop consuming ``queue``; ``False`` if it was not consumed."""


class ControlledWorker(Protocol):
    """A worker as remote-control commands read and drive it (:class:`runtime.worker.Worker`)."""

    @property
    def app(self) -> App:
        """The app whose tasks the worker runs."""

    @property
    def hostname(self) -> str:
        """The node name (``celeriac@host``)."""

    @property
    def queues(self) -> Sequence[str]:
        """The queues it consumes."""

    @property
    def concurrency(self) -> int:
        """How many tasks it runs at once (its slots)."""

    @property
    def consumers(self) -> ConsumerSet:
        """Its queues, changed at run time."""

    @property
    def rate_limits(self) -> RateLimits:
        """Its token buckets, one per rate-limited task type."""

    #: ``autoscale``'s ``(max, min)`` once it was called; ``None`` before.
    autoscale_limits: tuple[int, int] | None

    #: Whether it sends Celery's ``task-*`` events (``enable_events``, ``disable_events``).
    task_events: bool

    @property
    def started_at(self) -> float:
        """When it started, as a Unix time."""

    @property
    def total(self) -> Counter[str]:
        """Tasks started, by name."""

    @property
    def running(self) -> Mapping[str, RunningTask]:
        """The tasks executing now, by id."""

    @property
    def revocations(self) -> Revocations:
        """The task ids it treats as revoked."""

    @property
    def backend(self) -> RedisResultBackend | None:
        """Where results are stored, if anywhere."""

    def scheduled_requests(self) -> list[Request]:
        """The requests held for their ETA."""

    def terminate_task(self, task_id: str, signal: str = "SIGTERM") -> bool:
        """End the running task ``task_id``; ``False`` if it is not running here."""

    def resize(self, concurrency: int) -> None:
        """Run ``concurrency`` tasks at once from now on (``pool_grow``, ``pool_shrink``,
        ``autoscale``)."""

    def send_heartbeat(self) -> bool:
        """Send a ``worker-heartbeat`` event now; ``False`` if its broker carries no events."""

    def stop(self) -> None:
        """Stop consuming and finish running tasks (warm shutdown)."""
