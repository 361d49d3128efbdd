"""The controller's figures for Prometheus, and whether it is ready.

Served on ``--http-port`` by :class:`runtime.probes.ProbeServer`: ``/metrics``, ``/healthz``
(the event loop answers) and ``/readyz`` (every loop's last pass reached Redis and the broker).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ControllerMetrics"]


class ControllerMetrics:
    """The gauges and counters the controller's loops keep, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.queue_depth = Gauge(
            "celeriac_queue_depth", "Messages waiting in the queue", ["queue"], registry=registry
        )
        self.queue_consumers = Gauge(
            "celeriac_queue_consumers", "Consumers of the queue", ["queue"], registry=registry
        )
        self.queue_unconsumed = Gauge(
            "celeriac_queue_unconsumed",
            "1 while the queue has held messages with no consumer for longer than the grace "
            "(the alert)",
            ["queue"],
            registry=registry,
        )
        self.queue_oldest_age = Gauge(
            "celeriac_queue_oldest_message_age_seconds",
            "Age of the oldest run the registry has queued on the queue",
            ["queue"],
            registry=registry,
        )
        self.workers_alive = Gauge(
            "celeriac_workers_alive", "Workers whose heart beats", registry=registry
        )
        self.leader = Gauge(
            "celeriac_controller_leader",
            "1 while this controller holds the scheduler's lease",
            registry=registry,
        )
        self.fires = Counter(
            "celeriac_schedule_fires", "Ticks this controller fired", ["schedule"],
            registry=registry,
        )  # fmt: skip
        self.runs_skipped = Counter(
            "celeriac_runs_skipped", "Runs skipped for staying queued too long", registry=registry
        )
        self.runs_recovered = Counter(
            "celeriac_runs_recovered",
            "Runs of dead workers: returned to their queue, or recorded lost",
            ["outcome"],
            registry=registry,
        )
        self.runs_stuck = Counter(
            "celeriac_runs_stuck", "Runs seen started past their hard limit", registry=registry
        )
        self.loop_failures = Counter(
            "celeriac_controller_loop_failures",
            "Passes of a loop that failed (Redis or the broker away)",
            ["loop"],
            registry=registry,
        )
        self._failing: set[str] = set()

    def passed(self, loop: str) -> None:
        """``loop``'s last pass succeeded."""
        self._failing.discard(loop)

    def failed(self, loop: str) -> None:
        """``loop``'s last pass failed."""
        self._failing.add(loop)
        self.loop_failures.labels(loop).inc()

    def ready(self) -> bool:
        """Whether every loop's last pass succeeded."""
        return not self._failing
