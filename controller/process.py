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
from dataclasses import dataclass
from typing import Any

import structlog

from runtime.errors import BrokerConnectionError
from runtime.redis_client import client_for
from runtime.transports.urls import masked_url

from .keys import DEFAULT_PREFIX, Keys
from .project import Project
from .scheduler import DEFAULT_GRACE, DEFAULT_LEASE_TTL, Scheduler

__all__ = ["ControllerOptions", "default_controller_id", "run"]


@dataclass(frozen=True, slots=True)
class ControllerOptions:
    """How to run: the Redis holding the controller's state, and the scheduler's timings."""

    redis_url: str
    controller_id: str
    lease_ttl: float = DEFAULT_LEASE_TTL
    grace: float = DEFAULT_GRACE
    prefix: str = DEFAULT_PREFIX


def default_controller_id() -> str:
    """``controller@<host>.<pid>``: unique among the controllers sharing a Redis."""
    return f"controller@{socket.gethostname()}.{os.getpid()}"


async def run(project: Project, options: ControllerOptions) -> int:
    """Run the scheduler for ``project`` until SIGTERM or SIGINT; the exit status."""
    log = structlog.get_logger("celeriac.controller")
    redis = client_for(options.redis_url, socket_connect_timeout=5)
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
        scheduler = Scheduler(
            project.schedules,
            project.app.send_task,
            redis,
            controller_id=options.controller_id,
            keys=Keys(options.prefix),
            lease_ttl=options.lease_ttl,
            grace=options.grace,
            route=project.route,
        )
        log.info(
            "controller_started", controller=options.controller_id,
            schedules=[f"{s.name}: {s.task} {s.describe}" for s in project.schedules],
            redis=masked_url(options.redis_url), broker=masked_url(project.app.broker_url),
        )  # fmt: skip
        await _until_signal(scheduler.run(), log)
        log.info("controller_stopped", controller=options.controller_id, fired=scheduler.fired)
        return 0
    finally:
        await project.app.aclose()
        await redis.aclose()


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
