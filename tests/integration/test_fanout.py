"""The transports' broadcasting on real brokers: fanout that survives a lost connection, replies
nobody waits for, a node name already in use, and revoked ids kept in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

import aio_pika
import pytest
import redis.asyncio

from protocol import WireMessage
from runtime.errors import BrokerConnectionError
from runtime.results.revoked import RevokedStore
from runtime.transports.amqp.transport import AmqpTransport
from runtime.transports.redis.options import RedisOptions
from runtime.transports.redis.transport import RedisTransport
from tests.proxy import TcpProxy

pytestmark = [pytest.mark.integration]


class Open(Protocol):
    """Makes a connected transport on the broker, or through the proxy at ``target``."""

    def __call__(self, target: str | None = None, /) -> Awaitable[Any]: ...


def _message(n: int) -> WireMessage:
    return WireMessage(b'{"n": %d}' % n, "application/json", "utf-8", {"n": n})


@pytest.fixture(params=["amqp", "redis"])
async def broker(
    request: pytest.FixtureRequest, unique_name: str
) -> AsyncIterator[tuple[str, Open]]:
    """``(url, open)``: ``open(url)`` makes a transport on the broker (or through a proxy),
    connected, and closes it after the test."""
    opened: list[Any] = []
    if request.param == "amqp":
        url = request.getfixturevalue("amqp_url")

        def make(target: str | None) -> Any:
            return AmqpTransport(target or url)
    else:
        url = request.getfixturevalue("redis_url")

        def make(target: str | None) -> Any:
            return RedisTransport(target or url, {"global_keyprefix": f"{unique_name}:"})

    async def open_(target: str | None = None) -> Any:
        transport = make(target)
        await transport.connect()
        opened.append(transport)
        return transport

    yield url, open_
    for transport in opened:
        await transport.aclose()
    if request.param == "amqp":
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel()
            for name in (f"{unique_name}.pidbox", f"reply.{unique_name}.pidbox"):
                await channel.exchange_delete(name)


async def _next(messages: Any, timeout: float = 5) -> WireMessage:
    return await asyncio.wait_for(anext(messages), timeout)


async def test_a_broadcast_reaches_every_listener(
    broker: tuple[str, Open], unique_name: str
) -> None:
    _, open_ = broker
    exchange = f"{unique_name}.pidbox"
    first = await (await open_()).broadcasts(exchange, f"a@{unique_name}.pidbox")
    second = await (await open_()).broadcasts(exchange, f"b@{unique_name}.pidbox")
    sender = await open_()

    await sender.broadcast(_message(1), exchange=exchange)

    assert (await _next(first)).headers == (await _next(second)).headers == {"n": 1}
    await first.aclose()
    await second.aclose()


async def test_a_broadcast_sent_once_the_listener_is_set_up_reaches_it(
    broker: tuple[str, Open], unique_name: str
) -> None:
    """Set up means subscribed, even behind a slow link: a broadcast sent at once on another
    connection is not lost (redis-py's PSUBSCRIBE returns when it is written, not read)."""
    url, open_ = broker
    exchange = f"{unique_name}.pidbox"
    proxy = TcpProxy(url, delay=0.1)
    try:
        messages = await (await open_(proxy.url)).broadcasts(exchange, f"a@{unique_name}.pidbox")
        sender = await open_()

        await sender.broadcast(_message(1), exchange=exchange)

        assert (await _next(messages)).headers == {"n": 1}
        await messages.aclose()
    finally:
        proxy.close()


async def test_a_listener_comes_back_after_a_lost_connection(
    broker: tuple[str, Open], unique_name: str
) -> None:
    url, open_ = broker
    exchange = f"{unique_name}.pidbox"
    proxy = TcpProxy(url)
    try:
        messages = await (await open_(proxy.url)).broadcasts(exchange, f"a@{unique_name}.pidbox")
        sender = await open_()
        await sender.broadcast(_message(1), exchange=exchange)
        assert (await _next(messages)).headers == {"n": 1}

        proxy.drop()
        deadline, n, received = time.monotonic() + 20, 1, None
        waiting = asyncio.ensure_future(anext(messages))
        while received is None:
            assert time.monotonic() < deadline, "no broadcast arrived after the reconnect"
            n += 1
            await sender.broadcast(_message(n), exchange=exchange)
            done, _ = await asyncio.wait({waiting}, timeout=0.5)
            if done:
                received = waiting.result()

        assert received.headers["n"] > 1
        await messages.aclose()
    finally:
        proxy.close()


async def test_a_reply_nobody_waits_for_is_dropped(
    broker: tuple[str, Open], unique_name: str
) -> None:
    _, open_ = broker
    transport = await open_()

    await transport.reply(_message(1), exchange=f"reply.{unique_name}.pidbox", routing_key="gone")
    await transport.reply(_message(2), exchange=f"reply.{unique_name}.pidbox", routing_key="gone")


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
async def test_a_node_name_in_use_is_refused(broker: tuple[str, Open], unique_name: str) -> None:
    _, open_ = broker
    exchange, queue = f"{unique_name}.pidbox", f"a@{unique_name}.pidbox"
    holder = await (await open_()).broadcasts(exchange, queue)
    other = await open_()

    with pytest.raises(BrokerConnectionError, match=r"RESOURCE_LOCKED|locked"):
        await other.broadcasts(exchange, queue)
    await other.broadcast(_message(1), exchange=exchange)  # the transport is still usable
    assert (await _next(holder)).headers == {"n": 1}
    await holder.aclose()


def test_the_fanout_prefix_option_is_kombus() -> None:
    def prefix(value: Any) -> str:
        return RedisOptions.from_mapping({"fanout_prefix": value}).layout.fanout_prefix

    assert prefix(True) == prefix("true") == RedisOptions().layout.fanout_prefix == "/{db}."
    assert prefix(False) == prefix("False") == prefix("") == ""
    assert prefix("/fan.") == "/fan."


@pytest.fixture
async def revoked_store(redis_url: str, unique_name: str) -> AsyncIterator[Any]:
    client = redis.asyncio.Redis.from_url(redis_url)
    clock = [1_000_000.0]
    store = RevokedStore(
        client, f"{unique_name}:revoked", maxlen=3, expires=60, clock=lambda: clock[0]
    )
    store.clock = clock  # type: ignore[attr-defined]
    async with client:
        yield store
        await client.delete(store.key)


async def test_the_store_keeps_ids_for_their_lifetime_and_bounds_them(revoked_store: Any) -> None:
    clock = revoked_store.clock
    await revoked_store.add(["a", "b"])
    clock[0] += 30
    await revoked_store.add(["c", "d"])
    await revoked_store.add([])

    assert await revoked_store.load() == [("b", 30.0), ("c", 60.0), ("d", 60.0)]  # a: trimmed
    clock[0] += 45
    assert await revoked_store.load() == [("c", 15.0), ("d", 15.0)]
    ttl = await revoked_store._client.ttl(revoked_store.key)
    assert 0 < ttl <= 60


async def test_the_store_says_when_redis_is_away() -> None:
    client = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    store = RevokedStore(client, "k")
    async with client:
        with pytest.raises(ConnectionError, match="revoked"):
            await store.add(["a"])
        with pytest.raises(ConnectionError, match="revoked"):
            await store.load()
    with contextlib.suppress(Exception):
        await client.aclose()
