"""A worker's figures for Prometheus, and whether it is ready: what ``--http-port`` serves.

:class:`WorkerMetrics` watches the worker's tasks as a
:class:`~runtime.worker.observers.TaskObserver` (counts by task and state, run times as a
histogram, dead letters by queue and reason) and reads the rest when scraped (slots busy and
free, tasks held for their ETA, broker connected, reconnects), so nothing is kept twice.
:meth:`WorkerMetrics.watch_loop_lag` measures how late the event loop runs a timer.
Served with :class:`runtime.probes.ProbeServer`: ``/readyz`` is :meth:`WorkerMetrics.ready`,
the broker connected and the worker consuming.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol import State, TaskMessage

if TYPE_CHECKING:
    from .loop import Worker
    from .outcome import Outcome

__all__ = ["WorkerMetrics"]

#: Run-time buckets, in seconds: from a no-op to the longest time-limited queue's hour.
RUNTIME_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
#: The label of a task name no task is registered under (hostile input must not grow the
#: number of series without bound).
UNREGISTERED = "<unregistered>"
_STATES = {State.SUCCESS: "succeeded", State.FAILURE: "failed", State.RETRY: "retried"}


class WorkerMetrics:
    """The figures of ``worker``, in a registry of their own; see the module docstring."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.registry = CollectorRegistry()
        registry = self.registry
        self.tasks = Counter(
            "celeriac_tasks",
            "Tasks by name and state (received, started, succeeded, failed, retried, revoked, "
            "rejected)",
            ["task", "state"],
            registry=registry,
        )
        self.runtime = Histogram(
            "celeriac_task_runtime_seconds", "How long task runs took", ["task"],
            buckets=RUNTIME_BUCKETS, registry=registry,
        )  # fmt: skip
        self.dead_letters = Counter(
            "celeriac_dead_lettered",
            "Messages moved to <queue>.dead, by reason (malformed, unknown_task, worker_error)",
            ["queue", "reason"],
            registry=registry,
        )
        self.loop_lag = Gauge(
            "celeriac_event_loop_lag_seconds",
            "How late the event loop last ran a timer (a task that never yields shows here)",
            registry=registry,
        )
        registry.register(_Live(worker))

    def ready(self) -> bool:
        """Whether the worker is connected to its broker and consuming."""
        worker = self.worker
        return worker.consuming and worker.transport.health.connected

    async def watch_loop_lag(self, interval: float = 0.5) -> None:
        """Measure the loop's lag every ``interval`` seconds until cancelled."""
        while True:
            due = time.monotonic() + interval
            await asyncio.sleep(interval)
            self.loop_lag.set(max(0.0, time.monotonic() - due))

    def _task(self, message: TaskMessage) -> str:
        return message.task if message.task in self.worker.app.tasks else UNREGISTERED

    # -- TaskObserver ---------------------------------------------------------------------

    def received(self, message: TaskMessage, queue: str) -> None:
        """Count it received."""
        self.tasks.labels(self._task(message), "received").inc()

    def started(self, message: TaskMessage, queue: str) -> None:
        """Count it started."""
        self.tasks.labels(self._task(message), "started").inc()

    def finished(self, message: TaskMessage, queue: str, outcome: Outcome) -> None:
        """Count how it ended and how long it ran."""
        task = self._task(message)
        self.tasks.labels(task, _STATES.get(outcome.state, "failed")).inc()
        self.runtime.labels(task).observe(outcome.runtime)

    def revoked(self, message: TaskMessage, queue: str, *, reason: str) -> None:
        """Count it revoked."""
        self.tasks.labels(self._task(message), "revoked").inc()

    def rejected(self, message: TaskMessage, queue: str, *, requeue: bool) -> None:
        """Count it rejected."""
        self.tasks.labels(self._task(message), "rejected").inc()

    def dead_lettered(self, queue: str, *, reason: str) -> None:
        """Count the dead letter."""
        self.dead_letters.labels(queue, reason).inc()


class _Live(Collector):
    """What is read from the worker at each scrape."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        worker = self.worker
        slots = GaugeMetricFamily(
            "celeriac_worker_slots", "Task slots, busy or free", labels=["state"]
        )
        slots.add_metric(["busy"], worker.slots.busy)
        slots.add_metric(["free"], max(0, worker.slots.free))
        yield slots
        yield GaugeMetricFamily(
            "celeriac_eta_held",
            "Tasks held by the worker for their ETA (unacknowledged, without a slot)",
            value=len(worker.scheduled_requests()),
        )
        health = worker.transport.health
        yield GaugeMetricFamily(
            "celeriac_broker_connected", "1 while the broker answers", value=int(health.connected)
        )
        yield CounterMetricFamily(
            "celeriac_broker_reconnects",
            "Times the broker connection came back after an outage",
            value=health.reconnects,
        )
