"""The one way celeriac opens Redis clients: a pool that waits for a connection when all are
busy, instead of failing.

redis-py's default pool allows 100 connections and raises ``MaxConnectionsError`` for the
101st concurrent command; a worker running a thousand tasks that all store a result (or ack a
Redis delivery) at once would fail most of them. A blocking pool of the same size queues them.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio

__all__ = ["MAX_CONNECTIONS", "client_for"]

#: Connections one client may open (redis-py's default limit, made to wait instead of fail).
MAX_CONNECTIONS = 100


def client_for(url: str, **options: Any) -> redis.asyncio.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``) on a blocking pool;
    ``options`` go to redis-py's connection (``socket_connect_timeout``, ...)."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=None, **options
    )
    return redis.asyncio.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
