"""celeriac's Redis clients queue commands beyond their pool instead of failing them."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from runtime.redis_client import MAX_CONNECTIONS, client_for

pytestmark = [pytest.mark.integration]


async def test_more_concurrent_commands_than_connections_wait_instead_of_failing(
    redis_url: str, unique_name: str
) -> None:
    """Each BLPOP holds a connection for 0.2 s: the last 20 wait for one to come back."""
    async with client_for(redis_url) as client:
        replies = await asyncio.gather(*(
            client.blpop([f"{unique_name}:empty"], timeout=0.2)
            for _ in range(MAX_CONNECTIONS + 20)
        ))  # fmt: skip

    assert replies == [None] * (MAX_CONNECTIONS + 20)


async def test_redis_pys_own_default_pool_would_have_failed(
    redis_url: str, unique_name: str
) -> None:
    """The reason for the above: redis-py's default pool refuses the 101st connection."""
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        replies = await asyncio.gather(*(
            client.blpop([f"{unique_name}:empty"], timeout=0.2)
            for _ in range(MAX_CONNECTIONS + 20)
        ), return_exceptions=True)  # fmt: skip

    refused = [r for r in replies if isinstance(r, redis.exceptions.ConnectionError)]
    assert len(refused) == 20
    assert all("Too many connections" in str(r) for r in refused)
