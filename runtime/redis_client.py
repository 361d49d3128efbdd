"""The one way celeriac opens Redis clients: a pool that waits for a connection when all are
busy, instead of failing; and :func:`stop_if_cancelled`, for loops whose steps call Redis.

redis-py's default pool allows 100 connections and raises ``MaxConnectionsError`` for the
101st concurrent command; a worker running a thousand tasks that all store a result (or ack a
Redis delivery) at once would fail most of them. A blocking pool of the same size queues them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["MAX_CONNECTIONS", "client_for", "stop_if_cancelled"]

#: Connections one client may open (redis-py's default limit, made to wait instead of fail).
MAX_CONNECTIONS = 100


def client_for(url: str, **options: Any) -> redis.asyncio.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``) on a blocking pool;
    ``options`` go to redis-py's connection (``socket_connect_timeout``, ...)."""
    import redis.asyncio  # noqa: PLC0415 - a worker that never talks to Redis never loads it

    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=None, **options
    )
    return redis.asyncio.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def stop_if_cancelled(loop: str) -> None:
    """Raise ``CancelledError`` if the current task was cancelled during a step that lost the
    cancellation; call it after every step of a loop that runs until cancelled.

    redis-py 8.1 sends each command through ``asyncio.wait_for`` (its ``socket_timeout`` is 5 s
    by default), which on Python 3.11 returns the send's result when the cancellation lands in
    the turn the send completes: the task counts the cancel request (``cancelling()``) but
    nothing is raised, and a loop would go round for ever. Seen in CI as a controller that
    never exited on SIGTERM, its watch loop going round with ``cancelling() == 1``.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError(f"{loop}: cancelled during a step")
