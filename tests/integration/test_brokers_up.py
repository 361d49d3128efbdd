"""Smoke tests: the broker fixtures hand out servers that actually work."""

from __future__ import annotations

import aio_pika
import pytest
import redis


@pytest.mark.integration
def test_redis_set_get_del(redis_url: str, unique_name: str) -> None:
    """A key written to the fixture's Redis can be read back and deleted."""
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        try:
            assert client.set(unique_name, b"celeriac", ex=60)
            assert client.get(unique_name) == b"celeriac"
        finally:
            client.delete(unique_name)
        assert client.exists(unique_name) == 0


@pytest.mark.integration
@pytest.mark.asyncio
async def test_amqp_publish_and_get(amqp_url: str, unique_name: str) -> None:
    """A message published to a fresh queue on the fixture's broker comes back."""
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(unique_name, auto_delete=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"celeriac", message_id=unique_name), routing_key=unique_name
        )
        # The channel uses publisher confirms, so once publish() returns the
        # broker has enqueued the message and basic.get must find it.
        message = await queue.get(no_ack=True, timeout=5)
        assert message.body == b"celeriac"
        assert message.message_id == unique_name
        await queue.delete(if_unused=False, if_empty=False)
