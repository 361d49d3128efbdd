"""The queue watch: depth and consumers of every known queue, and an alert for each queue
whose messages nobody consumes.

Every ``interval`` seconds it asks the broker (through the transport's ``queue_depth``) about
each known queue: the app's (its routes and schedules, :func:`controller.topology.queues_of_app`),
those ``--watch-queues`` names, and those the workers' heartbeats list. A queue that holds
messages and has had no consumer for longer than ``grace`` seconds raises an alert: a
``queue_unconsumed`` log event naming the queue, its depth and the age of its oldest message
(from the run registry, among the 200 runs queued longest, when producers record runs). The
alert is logged when it starts and when it clears, and every snapshot is kept in Redis for
``celeriac queues``.

It also logs ``run_stuck`` for each run the registry has as started longer than its hard time
limit plus ``grace``: a task the limit could not end (a thread blocked in C code, a coroutine
that never yields), or a worker that lost track of it.

Consumers on RabbitMQ are the broker's own count. On Redis, where the broker keeps none, they
are the celeriac workers registered on the queue or beating with it in their heartbeat (a
Celery worker on a Redis queue is not seen). On SQS they are the heartbeats' alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from runtime import App
from runtime.errors import BrokerConnectionError, translate_redis_errors
from runtime.results.runs import Run, RunRegistry

from .loops import every
from .metrics import ControllerMetrics
from .recovery import DEAD_AFTER_BEATS

__all__ = ["DEFAULT_GRACE", "DEFAULT_INTERVAL", "QueueState", "QueueWatch"]

#: Seconds a queue may hold messages with no consumer before the alert.
DEFAULT_GRACE = 60.0
#: Seconds between two looks.
DEFAULT_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class QueueState:
    """One queue as last seen: ``depth`` messages waiting, ``consumers`` (``None``: unknown),
    the age in seconds of its oldest recorded run, since when it has gone unconsumed, and
    whether that raised the alert."""

    queue: str
    depth: int
    consumers: int | None
    oldest_age: float | None
    unconsumed_since: float | None
    alert: bool
    seen_at: float


class QueueWatch:
    """Watches ``queues`` (and the app's, and the heartbeats') on ``app``'s broker."""

    def __init__(
        self,
        app: App,
        runs: RunRegistry,
        *,
        queues: Iterable[str] = (),
        grace: float = DEFAULT_GRACE,
        interval: float = DEFAULT_INTERVAL,
        metrics: ControllerMetrics | None = None,
        logger: Any = None,
    ) -> None:
        self.app = app
        self.runs = runs
        self.queues = set(queues)
        self.grace = grace
        self.interval = interval
        self.log = logger or structlog.get_logger("celeriac.watch")
        self.metrics = metrics or ControllerMetrics()
        self._since: dict[str, float] = {}  # queue -> first seen unconsumed with messages
        self._alerting: set[str] = set()
        self._stuck_seen: set[str] = set()

    @property
    def snapshot_key(self) -> str:
        """The Redis hash of the last look: queue -> JSON of its :class:`QueueState`."""
        return f"{self.runs.prefix}queues"

    async def run(self) -> None:
        """Look now, then every ``interval`` seconds, until cancelled."""
        await every(
            self.interval,
            self.look,
            log=self.log,
            failed="queue_watch_failed",
            metrics=self.metrics,
        )

    async def look(self) -> list[QueueState]:
        """One look at every known queue; their states (alerts raised and cleared, logged)."""
        now = time.time()
        workers = await self.runs.workers()
        beating: dict[str, int] = {}
        for worker in workers:
            if self._beating(worker, now):
                for name in (worker.get("queues") or "").split(","):
                    if name:
                        beating[name] = beating.get(name, 0) + 1
        oldest: dict[str, float] = {}
        for run in reversed(await self.runs.oldest_queued()):  # the oldest wins
            queued_on, queued_at = run.get("queue"), run.get("queued_at")
            if queued_on and queued_at:
                oldest[queued_on] = round(now - float(queued_at), 1)
        transport = await self.app.connect()
        states = []
        for queue in sorted(self.queues | set(beating)):
            try:
                depth, counted = await transport.queue_depth(queue)
            except BrokerConnectionError:
                depth, counted = 0, None  # not declared yet: nothing waits in it
            consumers = max(counted or 0, beating.get(queue, 0))
            age = oldest.get(queue) if depth else None
            states.append(self._judge(queue, depth, consumers, age, now))
        await self._keep(states)
        await self._stuck(now)
        self._measure(states, alive=sum(1 for w in workers if self._beating(w, now)))
        return states

    @staticmethod
    def _beating(worker: Run, now: float) -> bool:
        beat_at = float(worker.get("beat_at") or 0)
        return now - beat_at <= DEAD_AFTER_BEATS * float(worker.get("interval") or 0)

    def _measure(self, states: list[QueueState], *, alive: int) -> None:
        metrics = self.metrics
        metrics.workers_alive.set(alive)
        for state in states:
            metrics.queue_depth.labels(state.queue).set(state.depth)
            metrics.queue_consumers.labels(state.queue).set(state.consumers or 0)
            metrics.queue_unconsumed.labels(state.queue).set(int(state.alert))
            metrics.queue_oldest_age.labels(state.queue).set(state.oldest_age or 0)

    async def _stuck(self, now: float) -> None:
        """Log each run still started past its hard time limit plus the grace, once."""
        for run in await self.runs.started_on():
            hard, started = run.get("hard_limit"), run.get("started_at")
            if not hard or not started or run.task_id in self._stuck_seen:
                continue
            over = now - float(started) - float(hard)
            if over > self.grace:
                self._stuck_seen.add(run.task_id)
                self.metrics.runs_stuck.inc()
                self.log.warning(
                    "run_stuck", task_id=run.task_id, task=run.get("task"), queue=run.get("queue"),
                    worker=run.get("worker"), hard_limit=float(hard), over_by=round(over, 1),
                )  # fmt: skip

    def _judge(
        self, queue: str, depth: int, consumers: int, oldest: float | None, now: float
    ) -> QueueState:
        if depth and not consumers:
            since = self._since.setdefault(queue, now)
        else:
            self._since.pop(queue, None)
            since = None
        alert = since is not None and now - since >= self.grace
        unconsumed_for = round(now - since, 1) if since is not None else None
        if alert and queue not in self._alerting:
            self._alerting.add(queue)
            self.log.warning(
                "queue_unconsumed", queue=queue, depth=depth, unconsumed_for=unconsumed_for,
                oldest_age=oldest,
            )  # fmt: skip
        elif not alert and queue in self._alerting:
            self._alerting.discard(queue)
            self.log.info("queue_consumed_again", queue=queue, depth=depth, consumers=consumers)
        return QueueState(queue, depth, consumers, oldest, since, alert, now)

    async def _keep(self, states: list[QueueState]) -> None:
        if not states:
            return
        client = self.runs.client
        values: dict[Any, Any] = {s.queue: json.dumps(asdict(s)) for s in states}
        with translate_redis_errors("keep the queue snapshot", what="controller state"):
            await client.hset(self.snapshot_key, mapping=values)
