"""The Redis transport against a real Redis, with Celery and kombu on the other side.

Each test keeps every key under a prefix of its own (``global_keyprefix``), which kombu
honours too, so the tests share one server without sharing an ``unacked`` hash.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio
from celery import Celery
from kombu import Connection

from protocol import WireMessage, encode_envelope
from protocol.kombu_redis import RedisLayout
from runtime.errors import BrokerConnectionError
from runtime.transports.base import QueueSpec
from runtime.transports.redis.options import RedisOptions
from runtime.transports.redis.transport import RedisTransport
from runtime.worker.slots import Slots
from tests.consumer import SlotConsumer
from tests.proxy import TcpProxy

pytestmark = [pytest.mark.integration]

Open = Callable[..., Awaitable[RedisTransport]]


@pytest.fixture
def prefix(unique_name: str) -> str:
    """This test's key prefix."""
    return f"{unique_name}:"


@pytest.fixture
def layout(prefix: str) -> RedisLayout:
    """Where this test's keys are."""
    return RedisLayout(global_keyprefix=prefix)


@pytest.fixture
async def open_transport(redis_url: str, prefix: str, unique_name: str) -> AsyncIterator[Open]:
    """Opens connected transports (queue ``unique_name`` declared); all close at the end."""
    opened: list[RedisTransport] = []

    async def open_(url: str | None = None, **options: Any) -> RedisTransport:
        transport = RedisTransport(url or redis_url, {"global_keyprefix": prefix, **options})
        await transport.connect()
        await transport.declare([QueueSpec(unique_name)])
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        await transport.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client, to look at the keys."""
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def proxy(redis_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of Redis, to cut it off."""
    proxy = TcpProxy(redis_url)
    yield proxy
    proxy.close()


@pytest.fixture
def celery_client(redis_url: str, prefix: str) -> Celery:
    """A stock Celery client on this test's keys (its pool is dropped after the test)."""
    app = Celery("client", broker=redis_url, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    return app


@pytest.fixture
def kombu_sweep(redis_url: str, prefix: str) -> Callable[[float], Awaitable[None]]:
    """What a Celery worker on the same Redis does now and then: restore the deliveries
    older than its visibility timeout (run in a thread: kombu blocks)."""

    def sweep(visibility_timeout: float) -> None:
        options = {"global_keyprefix": prefix, "visibility_timeout": visibility_timeout}
        with Connection(redis_url, transport_options=options) as conn:
            conn.default_channel.qos.restore_visible(num=100, interval=1)

    return lambda visibility_timeout: asyncio.to_thread(sweep, visibility_timeout)


def _message(n: int, priority: int | None = None) -> WireMessage:
    properties: dict[str, Any] = {"correlation_id": f"id-{n}", "delivery_mode": 2}
    if priority is not None:
        properties["priority"] = priority
    return WireMessage(b'{"n": %d}' % n, "application/json", "utf-8", {"n": n}, properties)


async def _eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


async def test_a_celery_message_is_recorded_as_kombu_records_it_until_acked(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout,
    celery_client: Celery, unique_name: str,
) -> None:  # fmt: skip
    sent = celery_client.send_task("billing.charge", args=(7, 250), queue=unique_name)
    transport = await open_transport()
    before = time.time()
    consumer = SlotConsumer(transport, [unique_name], Slots(1))

    delivery = await consumer.get()
    tag = delivery.handle.tag
    value = await raw.hget(layout.unacked, tag)
    score = await raw.zscore(layout.unacked_index, tag)

    assert delivery.message.headers["id"] == sent.id
    assert delivery.message.headers["task"] == "billing.charge"
    assert (delivery.queue, delivery.exchange, delivery.routing_key) == (
        unique_name,
        "",
        unique_name,
    )
    assert value is not None
    payload, exchange, routing_key = json.loads(value)
    assert (exchange, routing_key) == ("", unique_name)
    assert payload["properties"]["delivery_tag"].encode() == tag
    assert payload["headers"]["id"] == sent.id
    assert score is not None
    assert before - 1 <= score <= time.time() + 1

    await transport.ack(delivery)
    await consumer.stop()

    assert await raw.hlen(layout.unacked) == 0
    assert await raw.zcard(layout.unacked_index) == 0


async def test_what_celeriac_publishes_kombu_consumes(
    open_transport: Open, redis_url: str, prefix: str, unique_name: str
) -> None:
    transport = await open_transport()
    await transport.publish(_message(1, priority=0), routing_key=unique_name)

    options = {"global_keyprefix": prefix}
    with Connection(redis_url, transport_options=options) as conn:
        got = conn.default_channel.basic_get(queue=unique_name, no_ack=True)

    assert got is not None
    assert got.body == b'{"n": 1}'
    assert got.headers == {"n": 1}
    assert got.properties["correlation_id"] == "id-1"
    assert got.delivery_info["routing_key"] == unique_name


async def test_priorities_use_kombus_step_lists_lowest_number_first(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout,
    celery_client: Celery, unique_name: str,
) -> None:  # fmt: skip
    """On Redis a lower number means a higher priority (kombu's BRPOP order)."""
    for priority in (9, 5, 0):
        celery_client.send_task("t", args=(priority,), queue=unique_name, priority=priority)
    transport = await open_transport()
    await transport.publish(_message(1, priority=4), routing_key=unique_name)

    lengths = [await raw.llen(key) for key in layout.step_keys(unique_name)]
    consumer = SlotConsumer(transport, [unique_name], Slots(1), auto=True)
    order = [(await consumer.get()).message.properties["priority"] for _ in range(4)]
    await consumer.stop()

    assert lengths == [1, 2, 0, 1]  # steps 0, 3, 6, 9
    assert order[0] == 0
    assert sorted(order[1:3]) == [4, 5]
    assert order[3] == 9


async def test_several_queues_are_served_in_turn(
    open_transport: Open, raw: redis.asyncio.Redis, unique_name: str
) -> None:
    other = f"{unique_name}-b"
    transport = await open_transport()
    await transport.declare([QueueSpec(other)])
    for n in range(4):
        await transport.publish(_message(n), routing_key=unique_name)
        await transport.publish(_message(n), routing_key=other)

    consumer = SlotConsumer(transport, [unique_name, other], Slots(1), auto=True)
    queues = [(await consumer.get()).queue for _ in range(8)]
    await consumer.stop()

    assert queues == [unique_name, other] * 4


async def test_claims_no_more_than_the_free_slots(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout, unique_name: str
) -> None:
    transport = await open_transport()
    for n in range(10):
        await transport.publish(_message(n), routing_key=unique_name)
    slots = Slots(3)

    consumer = SlotConsumer(transport, [unique_name], slots)
    handed = [await consumer.get() for _ in range(3)]
    await consumer.nothing_more()

    assert await raw.llen(layout.queue_key(unique_name)) == 7
    assert await raw.hlen(layout.unacked) == 3
    assert [d.message.headers["n"] for d in handed] == [0, 1, 2]  # FIFO
    await consumer.stop()


async def test_unreadable_payloads_go_to_the_dead_list_and_never_reach_a_slot(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout, unique_name: str
) -> None:
    not_json = b"\x00not json"
    untagged = b'{"body": "e30=", "properties": {}}'
    bad_body = json.dumps({
        "body": "%%% not base64", "headers": {"task": "t"},
        "properties": {"body_encoding": "base64", "delivery_tag": "bad-1"},
    }).encode()  # fmt: skip
    # Tagged, so claimed and recorded; not UTF-8, so unreadable: it must still be settled.
    not_utf8 = b'{"body": "e30=", "properties": {"delivery_tag": "tag-\xff"}}'
    for payload in (not_json, untagged, bad_body, not_utf8):
        await raw.lpush(layout.queue_key(unique_name), payload)
    transport = await open_transport()
    await transport.publish(_message(1), routing_key=unique_name)

    consumer = SlotConsumer(transport, [unique_name], Slots(1))
    delivery = await consumer.get()
    dead = await raw.lrange(layout.dead_key(unique_name), 0, -1)

    assert delivery.message.headers == {"n": 1}
    assert len(dead) == 4
    assert not_json in dead  # byte for byte
    assert untagged in dead
    assert not_utf8 in dead
    (rewritten,) = [json.loads(d) for d in dead if d not in (not_json, untagged, not_utf8)]
    assert rewritten["headers"]["x-celeriac-reason"].startswith(
        "unreadable: envelope.body: body is not base64"
    )
    assert rewritten["headers"]["x-celeriac-queue"] == unique_name
    assert rewritten["body"] == "%%% not base64"
    assert await raw.hkeys(layout.unacked) == [delivery.handle.tag]
    await consumer.stop()


async def test_two_messages_with_one_delivery_tag_are_claimed_and_settled_apart(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout, unique_name: str
) -> None:
    """A producer that reuses a delivery tag (a resend, or a hostile one): each copy gets a
    claim of its own, holding its own payload for a sweep to restore, so settling one copy
    leaves the others claimed."""
    payloads = [
        encode_envelope(_message(n), exchange="", routing_key=unique_name, delivery_tag="same")
        for n in (1, 2, 3)
    ]
    await raw.lpush(layout.queue_key(unique_name), *payloads)
    transport = await open_transport()
    consumer = SlotConsumer(transport, [unique_name], Slots(3))
    first, second, third = [await consumer.get() for _ in range(3)]

    assert [d.message.headers["n"] for d in (first, second, third)] == [1, 2, 3]
    claims = await raw.hgetall(layout.unacked)
    assert sorted(claims) == [b"same", b"same#1", b"same#2"]
    assert sorted(json.loads(v)[0]["headers"]["n"] for v in claims.values()) == [1, 2, 3]
    assert await raw.zcard(layout.unacked_index) == 3
    await transport.dead_letter(first, "malformed: test")
    await transport.reject(second, requeue=False)
    assert await raw.hkeys(layout.unacked) == [third.handle.tag]  # the third still claimed
    dead = await raw.lrange(layout.dead_key(unique_name), 0, -1)
    assert [json.loads(d)["headers"]["n"] for d in dead] == [1]
    await transport.ack(third)
    assert await raw.hlen(layout.unacked) == 0
    await consumer.stop()


async def test_a_renewed_claim_survives_kombus_sweep_and_a_lapsed_one_does_not(  # noqa: PLR0917
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout,
    kombu_sweep: Callable[[float], Awaitable[None]], proxy: TcpProxy, unique_name: str,
) -> None:  # fmt: skip
    """A long task is not restored by a Celery worker's sweep while its worker lives; once
    the worker is cut off from Redis (as dead), the same sweep gives the message back."""
    holder = await open_transport(proxy.url, visibility_timeout=1, unacked_mutex_expire=1)
    await holder.publish(_message(1), routing_key=unique_name)
    consumer = SlotConsumer(holder, [unique_name], Slots(1))
    held = await consumer.get()

    for _ in range(5):  # 2.5 s: past the visibility timeout, twice
        await asyncio.sleep(0.5)
        await kombu_sweep(1)
    assert await raw.llen(layout.queue_key(unique_name)) == 0

    proxy.refuse()  # the holder can no longer renew: as if it died
    await asyncio.sleep(1.5)

    async def swept() -> bool:
        # Cut off mid-sweep, the holder leaves the sweep mutex held until it expires (1 s
        # here, kombu's 300 s by default), and a sweep meanwhile skips: sweep again, as a
        # Celery worker does every interval.
        await kombu_sweep(1)
        return bool(await raw.llen(layout.queue_key(unique_name)))

    await _eventually(swept)
    other = await open_transport()
    again = await SlotConsumer(other, [unique_name], Slots(1)).get()

    assert again.redelivered
    assert again.message.body == held.message.body
    proxy.allow()
    await holder.ack(held)  # too late: it is no longer ours, and nothing is pushed
    await other.ack(again)
    assert await raw.llen(layout.queue_key(unique_name)) == 0
    assert await raw.hlen(layout.unacked) == 0
    await consumer.stop()


async def test_stale_deliveries_of_a_dead_kombu_consumer_are_restored_first(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout,
    celery_client: Celery, unique_name: str,
) -> None:  # fmt: skip
    """A Celery worker died holding a message: our sweep puts it back at the consuming end,
    with kombu's redelivered flags, under kombu's mutex."""
    dead_one = celery_client.send_task("t", args=(1,), queue=unique_name)
    celery_client.send_task("t", args=(2,), queue=unique_name)
    payload = await raw.rpop(layout.queue_key(unique_name))  # as kombu's BRPOP did
    assert isinstance(payload, bytes)
    tag = json.loads(payload)["properties"]["delivery_tag"]
    await raw.hset(layout.unacked, tag, b"[" + payload + b', "", "' + unique_name.encode() + b'"]')
    await raw.zadd(layout.unacked_index, {tag: time.time() - 10})
    transport = await open_transport(visibility_timeout=5)

    assert await transport.restore_visible() == 1
    first = await SlotConsumer(transport, [unique_name], Slots(1)).get()

    assert first.message.headers["id"] == dead_one.id
    assert first.redelivered
    assert first.message.headers["redelivered"] is True


async def test_the_sweep_leaves_fresh_and_locked_deliveries_alone(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout, unique_name: str
) -> None:
    transport = await open_transport(visibility_timeout=5)
    await transport.publish(_message(1), routing_key=unique_name)
    consumer = SlotConsumer(transport, [unique_name], Slots(1))
    await consumer.get()
    await raw.zadd(layout.unacked_index, {"orphan": time.time() - 60})  # no unacked record

    assert await transport.restore_visible() == 0  # fresh: left alone; the orphan dropped
    assert await raw.zscore(layout.unacked_index, "orphan") is None
    await raw.set(layout.unacked_mutex, "someone else", ex=5)
    await raw.zadd(layout.unacked_index, {"orphan": time.time() - 60})
    assert await transport.restore_visible() == 0  # another consumer is sweeping
    assert await raw.zscore(layout.unacked_index, "orphan") is not None
    await consumer.stop()


async def test_an_ack_while_redis_is_away_is_applied_when_it_is_back(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout,
    proxy: TcpProxy, unique_name: str,
) -> None:  # fmt: skip
    transport = await open_transport(proxy.url, visibility_timeout=1)
    await transport.publish(_message(1), routing_key=unique_name)
    consumer = SlotConsumer(transport, [unique_name], Slots(1))
    delivery = await consumer.get()

    proxy.refuse()
    await transport.ack(delivery)  # does not raise: kept, and retried
    assert await raw.hexists(layout.unacked, delivery.handle.tag)
    proxy.allow()

    async def settled() -> bool:
        return not await raw.hexists(layout.unacked, delivery.handle.tag)

    await _eventually(settled)
    assert await raw.llen(layout.queue_key(unique_name)) == 0
    await consumer.stop()


async def test_closing_gives_back_in_order_at_the_consuming_end(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout, unique_name: str
) -> None:
    transport = await open_transport()
    for n in range(3):
        await transport.publish(_message(n), routing_key=unique_name)
    consumer = SlotConsumer(transport, [unique_name], Slots(2))
    await consumer.get()
    await consumer.get()
    await consumer.stop()
    await transport.aclose()

    other = await open_transport()
    consumer = SlotConsumer(other, [unique_name], Slots(3), auto=True)
    again = [await consumer.get() for _ in range(3)]

    assert [d.message.headers["n"] for d in again] == [1, 0, 2]
    assert [d.redelivered for d in again] == [True, True, False]
    await consumer.stop()


async def test_publishing_through_a_named_exchange_follows_its_bindings(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout, unique_name: str
) -> None:
    transport = await open_transport()
    await raw.sadd(layout.binding_key("ex"), layout.binding_member("rk", unique_name))

    await transport.publish(_message(1), routing_key="rk", exchange="ex")
    with pytest.raises(BrokerConnectionError, match="no queue is bound to exchange 'ex'"):
        await transport.publish(_message(2), routing_key="other", exchange="ex")

    assert await raw.llen(layout.queue_key(unique_name)) == 1


async def test_declare_binds_as_kombu_does(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout, unique_name: str
) -> None:
    await open_transport()

    member = f"{unique_name}\x06\x16\x06\x16{unique_name}".encode()
    assert await raw.smembers(layout.binding_key(unique_name)) == {member}
    assert await raw.smembers(layout.permanent_binding_key(unique_name)) == {member}


async def test_a_list_that_is_not_a_list_stops_the_consumer_with_a_clear_error(
    open_transport: Open, raw: redis.asyncio.Redis, layout: RedisLayout, unique_name: str
) -> None:
    await raw.set(layout.queue_key(unique_name), "a string")
    transport = await open_transport()

    with pytest.raises(BrokerConnectionError, match=r"cannot consume from .*WRONGTYPE"):
        async for _ in transport.consume([unique_name], Slots(1)):
            pass


def test_options_from_the_url_win_and_the_rest_goes_to_redis_py() -> None:
    transport = RedisTransport(
        "redis://127.0.0.1:6379/3?visibility_timeout=60&global_keyprefix=p:&socket_timeout=5",
        {"visibility_timeout": 10, "unacked_key": "u"},
    )

    assert transport.options.visibility_timeout == 60
    assert transport.layout.global_keyprefix == "p:"
    assert transport.layout.unacked == "p:u"
    assert transport._url == "redis://127.0.0.1:6379/3?socket_timeout=5"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"visibility_timeout": "soon"}, "visibility_timeout must be a positive number"),
        ({"visibility_timeout": 0}, "visibility_timeout must be a positive number"),
        ({"unacked_mutex_expire": -1}, "unacked_mutex_expire must be a positive number"),
        ({"priority_steps": "0,x"}, "priority_steps must be integers"),
        ({"priority_steps": [3, 6]}, "priority_steps must rise from 0"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisOptions.from_mapping(options)


def test_renewal_and_sweep_periods_follow_the_visibility_timeout() -> None:
    assert (RedisOptions().renew_every, RedisOptions().sweep_every) == (10.0, 60.0)
    short = RedisOptions.from_mapping({"visibility_timeout": "2", "priority_steps": "0,5"})
    assert (short.renew_every, short.sweep_every) == (0.5, 1.0)
    assert short.layout.priority_steps == (0, 5)


async def test_an_unreachable_redis_fails_fast_naming_where() -> None:
    transport = RedisTransport("redis://127.0.0.1:1/0")

    with pytest.raises(BrokerConnectionError, match=r"broker: cannot connect to 127.0.0.1:1"):
        await transport.connect()
    await transport.aclose()
