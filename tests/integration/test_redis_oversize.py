"""Payloads over the size limit on Redis: dead-lettered by the claim script, never read whole.

The limit is lowered to a few KiB here so that every shape of payload can be tried cheaply;
``tests/interop/test_worker.py::test_oversize_message_is_dead_lettered`` sends a real 16 MiB
body from a Celery client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from importlib.resources import files
from typing import Any, cast

import pytest
import redis.asyncio

from protocol import WireMessage, decode_envelope, encode_envelope
from protocol.errors import LimitExceeded
from protocol.kombu_redis import RedisLayout
from protocol.limits import Limits
from runtime.transports.base import Delivery, QueueSpec
from runtime.transports.redis import transport as redis_transport
from runtime.transports.redis.transport import RedisTransport
from runtime.worker.slots import Slots
from tests.consumer import SlotConsumer

pytestmark = [pytest.mark.integration]

LARGEST = 4096
BODY = "QUJD" * 1200  # base64, as kombu's bodies are: > LARGEST on its own


def _pairs(data: bytes) -> Any:
    """``data`` parsed keeping member order, duplicate names and every digit of a number."""
    return json.loads(data, object_pairs_hook=list, parse_float=Decimal)


def _envelope(headers_json: str, *, body: str = BODY, headers_first: bool = False) -> bytes:
    properties = '{"body_encoding": "base64", "delivery_tag": "t-1", "priority": 0}'
    members = [f'"body": "{body}"', f'"headers": {headers_json}', f'"properties": {properties}']
    if headers_first:
        members.reverse()
    return ("{" + ", ".join(members) + "}").encode()


_VALID = WireMessage(b"{}", "application/json", "utf-8", {"n": 1}, {})

#: Payloads with a top-level headers object: the reason is added to it, the rest is kept.
WITH_HEADERS = {
    "kombu's envelope": encode_envelope(
        WireMessage(b"x" * 4000, "application/json", "utf-8", {"task": "t.add", "id": "1"}, {}),
        exchange="",
        routing_key="q",
        delivery_tag="t-1",
    ),
    "empty headers": _envelope("{}"),
    "headers before the body": _envelope('{"task": "t"}', headers_first=True),
    "tricky header values": _envelope(
        '{"s": "a \\"headers\\": {\\"x\\": 1} } ] \\\\", "nested": {"headers": {"deep": [1, {}]}},'
        ' "empty": [], "big": 12345678901234567, "float": 0.30000000000000004, "n": null}'
    ),
    "an escaped quote before a brace": _envelope('{"s": "\\"}", "t": 1}'),
    "a string ending in a backslash": _envelope('{"s": "\\\\", "t": "}"}'),
    "a body quoting a headers member": _envelope(
        '{"task": "t"}', body='\\"headers\\": {\\"task\\": \\"evil\\"}' + "A" * 5000
    ),
    "an earlier reason": _envelope('{"x-celeriac-reason": "old", "x-celeriac-queue": "old"}'),
}

#: Payloads without one: kept byte for byte (nowhere to put a reason).
WITHOUT_HEADERS = {
    "not JSON": b"\x00\xff" * 3000,
    "headers not an object": _envelope('"nope"'),
    "headers only in properties": (
        b'{"body": "' + BODY.encode() + b'", "properties": {"headers": {"a": 1}}}'
    ),
    "unterminated string": b'{"body": "' + BODY.encode(),
}


@pytest.fixture
def layout(unique_name: str) -> RedisLayout:
    """Where this test's keys are."""
    return RedisLayout(global_keyprefix=f"{unique_name}:")


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client, to push payloads and look at the keys."""
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
async def transport(
    redis_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RedisTransport]:
    """A transport on ``unique_name`` whose claims refuse payloads over ``LARGEST`` bytes."""
    monkeypatch.setattr(redis_transport, "_LARGEST", LARGEST)
    transport = RedisTransport(redis_url, {"global_keyprefix": f"{unique_name}:"})
    await transport.connect()
    await transport.declare([QueueSpec(unique_name)])
    yield transport
    await transport.aclose()


async def _first_delivery_after(
    payloads: Sequence[bytes], transport: RedisTransport, raw: redis.asyncio.Redis, queue: str
) -> tuple[Delivery, list[bytes]]:
    """Push ``payloads`` then a valid message onto ``queue``; the first delivery a consumer
    gets, and the dead letters then, oldest first."""
    layout = transport.layout
    for payload in payloads:
        await raw.lpush(layout.queue_key(queue), payload)
    await transport.publish(_VALID, routing_key=queue)
    consumer = SlotConsumer(transport, [queue], Slots(1))
    delivery = await consumer.get()
    dead = await raw.lrange(layout.dead_key(queue), 0, -1)
    await consumer.stop()
    # A client without decode_responses reads bytes; LPUSHed in the order they were taken.
    return delivery, cast(list[bytes], dead[::-1])


def _reason(payload: bytes) -> str:
    """The sentence the worker writes when it refuses an envelope this size itself."""
    return f"unreadable: {LimitExceeded('size', len(payload), LARGEST, field='envelope')}"


async def test_oversize_payloads_are_dead_lettered_with_their_reason_and_never_claimed(
    transport: RedisTransport,
    raw: redis.asyncio.Redis,
    layout: RedisLayout,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    payloads = {**WITH_HEADERS, **WITHOUT_HEADERS}
    assert all(len(payload) > LARGEST for payload in payloads.values())

    delivery, dead = await _first_delivery_after(
        list(payloads.values()), transport, raw, unique_name
    )

    assert delivery.message.headers == {"n": 1}
    assert await raw.hkeys(layout.unacked) == [delivery.handle.tag]  # none of them claimed
    assert len(dead) == len(payloads)
    for (name, payload), letter in zip(payloads.items(), dead, strict=True):
        if name in WITHOUT_HEADERS:
            assert letter == payload, name
            continue
        expected = _pairs(payload)
        headers = next(value for key, value in expected if key == "headers")
        headers += [("x-celeriac-reason", _reason(payload)), ("x-celeriac-queue", unique_name)]
        assert _pairs(letter) == expected, name
    assert sum("is over the limit" in r.getMessage() for r in caplog.records) == len(payloads)


def _utf8_envelope(text: str) -> bytes:
    """An envelope whose body is JSON text (no body_encoding), written with \\u escapes."""
    properties = {"delivery_tag": "t-2", "delivery_info": {"exchange": "", "routing_key": "q"}}
    document = {"body": text, "headers": {"task": "t"}, "properties": properties}
    return json.dumps(document).encode()


def _b64_envelope(size: int) -> bytes:
    message = WireMessage(b"x" * size, "application/json", "utf-8", {"task": "t"}, {})
    return encode_envelope(message, exchange="", routing_key="q", delivery_tag="t-3")


@pytest.mark.parametrize(
    ("payload", "over"),
    [
        *((_b64_envelope(size), size > 1000) for size in (999, 1000, 1001, 1002, 1003)),
        (_utf8_envelope("é" * 500), False),  # 1,000 bytes once decoded
        (_utf8_envelope("é" * 501), True),
    ],
)
async def test_a_body_over_the_limit_is_dead_lettered_as_the_worker_would(  # noqa: PLR0917
    transport: RedisTransport,
    raw: redis.asyncio.Redis,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    payload: bytes,
    over: bool,
) -> None:
    """The script sizes the body as decoded (base64 or UTF-8) without decoding it, and refuses
    exactly the bodies :func:`decode_envelope` would, with the same sentence."""
    monkeypatch.setattr(redis_transport, "_LARGEST", 10**6)
    monkeypatch.setattr(redis_transport, "_LARGEST_BODY", 1000)
    try:
        decode_envelope(payload, limits=Limits(max_body_bytes=1000))
        refused = None
    except LimitExceeded as exc:
        refused = f"unreadable: {exc}"
    assert (refused is not None) == over

    first, dead = await _first_delivery_after([payload], transport, raw, unique_name)

    if refused is None:
        assert first.message.headers == {"task": "t"}
        assert dead == []
    else:
        assert first.message.headers == {"n": 1}
        assert [json.loads(letter)["headers"]["x-celeriac-reason"] for letter in dead] == [refused]


async def test_an_earlier_reason_is_overridden_for_json_readers(
    transport: RedisTransport, raw: redis.asyncio.Redis, unique_name: str
) -> None:
    """A message dead-lettered before and sent again: the last of two names wins in JSON."""
    payload = WITH_HEADERS["an earlier reason"]

    _, (letter,) = await _first_delivery_after([payload], transport, raw, unique_name)

    headers = json.loads(letter)["headers"]
    assert headers == {"x-celeriac-reason": _reason(payload), "x-celeriac-queue": unique_name}


async def test_the_claim_reply_carries_no_oversize_payload(
    raw: redis.asyncio.Redis, layout: RedisLayout, unique_name: str
) -> None:
    """The script's reply for an oversize payload is its queue and the reason: the worker
    receives a sentence, not the megabytes."""
    claim = raw.register_script(
        (files("runtime.transports.redis") / "lua" / "redis_claim.lua").read_text()
    )
    payload = WITH_HEADERS["kombu's envelope"]
    await raw.lpush(layout.queue_key(unique_name), payload)
    keys = [layout.unacked, layout.unacked_index, *layout.step_keys(unique_name)]
    keys.append(layout.dead_key(unique_name))
    steps = len(layout.step_keys(unique_name))

    first, items = await claim(keys=keys, args=[0, 10, 1, steps, 0, LARGEST, unique_name])

    assert (first, items) == (0, [[0, _reason(payload).encode()]])
    assert await raw.llen(layout.dead_key(unique_name)) == 1
