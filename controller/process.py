"""Running the controller as a process: connect, run its loops, stop on a signal.

Exit statuses: 0 after SIGTERM or SIGINT, 1 when Redis or the broker cannot be reached at
start, 2 for configuration that cannot work (:class:`controller.project.ConfigError`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from runtime.errors import BrokerConnectionError
from runtime.probes import ProbeServer
from runtime.redis_client import client_for
from runtime.results.runs import RunRegistry
from runtime.transports.urls import masked_url

from . import watch
from .keys import DEFAULT_PREFIX, Keys
from .metrics import ControllerMetrics
from .project import Project
from .reconciler import DEFAULT_INTERVAL, DEFAULT_STALE_AFTER, Reconciler
from .recovery import Recovery
from .scheduler import DEFAULT_GRACE, DEFAULT_LEASE_TTL, Scheduler

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["ControllerOptions", "default_controller_id", "run"]


@dataclass(frozen=True, slots=True)
class ControllerOptions:
    """How to run: the Redis holding the controller's state, which loops run (``scheduler``,
    ``reconciler``), and their timings. The run registry is in ``run_registry_url`` (the
    controller's Redis unless said otherwise)."""

    redis_url: str
    controller_id: str
    loops: tuple[str, ...] = ("scheduler",)
    lease_ttl: float = DEFAULT_LEASE_TTL
    grace: float = DEFAULT_GRACE
    prefix: str = DEFAULT_PREFIX
    run_registry_url: str | None = None
    stale_after: float = DEFAULT_STALE_AFTER
    stale_after_by_queue: Mapping[str, float] = field(default_factory=dict)
    reconcile_interval: float = DEFAULT_INTERVAL
    http_port: int | None = None
    watch_queues: tuple[str, ...] = ()
    watch_grace: float = watch.DEFAULT_GRACE
    watch_interval: float = watch.DEFAULT_INTERVAL


def default_controller_id() -> str:
    """``controller@<host>.<pid>``: unique among the controllers sharing a Redis."""
    return f"controller@{socket.gethostname()}.{os.getpid()}"


async def run(project: Project, options: ControllerOptions) -> int:
    """Run the scheduler for ``project`` until SIGTERM or SIGINT; the exit status."""
    log = structlog.get_logger("celeriac.controller")
    redis = client_for(options.redis_url, socket_connect_timeout=5)
    separate = options.run_registry_url not in (None, options.redis_url)
    registry = (
        client_for(options.run_registry_url) if options.run_registry_url and separate else redis
    )
    try:
        try:
            await redis.ping()
        except Exception as exc:  # redis-py's errors, or the socket's
            print(
                f"celeriac: cannot reach the controller's Redis at "
                f"{masked_url(options.redis_url)}: {exc}",
                file=sys.stderr,
            )
            return 1
        try:
            await project.app.connect()
        except BrokerConnectionError as exc:
            print(f"celeriac: cannot reach the broker: {exc}", file=sys.stderr)
            return 1
        metrics = ControllerMetrics()
        loops = _loops(project, options, redis, registry, metrics)
        if options.http_port is not None:
            probes = ProbeServer(metrics.registry, ready=metrics.ready, port=options.http_port)
            try:
                await probes.start()
            except OSError as exc:
                print(f"celeriac: cannot serve probes on port {options.http_port}: {exc}",
                      file=sys.stderr)  # fmt: skip
                return 2
            loops["probes"] = _serve_until_cancelled(probes)
        log.info(
            "controller_started", controller=options.controller_id, loops=sorted(loops),
            schedules=[f"{s.name}: {s.task} {s.describe}" for s in project.schedules],
            redis=masked_url(options.redis_url), broker=masked_url(project.app.broker_url),
        )  # fmt: skip
        await _until_signal(_together(loops.values()), log)
        log.info("controller_stopped", controller=options.controller_id)
        return 0
    finally:
        await project.app.aclose()
        if registry is not redis:
            await registry.aclose()
        await redis.aclose()


def _loops(
    project: Project,
    options: ControllerOptions,
    redis: redis.asyncio.Redis,
    registry: redis.asyncio.Redis,
    metrics: ControllerMetrics,
) -> dict[str, Coroutine[Any, Any, None]]:
    loops: dict[str, Coroutine[Any, Any, None]] = {}
    common: dict[str, Any] = {"controller_id": options.controller_id, "metrics": metrics}
    if "scheduler" in options.loops and project.schedules:
        loops["scheduler"] = Scheduler(
            project.schedules, project.app.send_task, redis, keys=Keys(options.prefix),
            lease_ttl=options.lease_ttl, grace=options.grace, route=project.route, **common,
        ).run()  # fmt: skip
    if "reconciler" in options.loops:
        runs = RunRegistry(registry, prefix=options.prefix)
        loops["watch"] = watch.QueueWatch(
            project.app, runs, queues={*project.queues, *options.watch_queues},
            grace=options.watch_grace, interval=options.watch_interval, metrics=metrics,
        ).run()  # fmt: skip
        loops["recovery"] = Recovery(runs, project.app, **common).run()
        loops["reconciler"] = Reconciler(
            runs, project.app, stale_after=options.stale_after,
            per_queue=options.stale_after_by_queue, interval=options.reconcile_interval, **common,
        ).run()  # fmt: skip
    return loops


async def _serve_until_cancelled(probes: ProbeServer) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await probes.aclose()


async def _together(loops: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the loops until one fails (its error ends the rest) or all are cancelled."""
    async with asyncio.TaskGroup() as group:
        for loop in loops:
            group.create_task(loop)


async def _until_signal(main: Any, log: Any) -> None:
    """Run coroutine ``main`` until SIGTERM or SIGINT cancels it."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
